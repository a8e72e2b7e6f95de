# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) the virtualenv in .venv and install the pinned stack into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo-work
DEMO_PATIENTS ?= 20

.PHONY: demo test lint format clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dicomflow synth --output $(DEMO_DIR)/bucket --patients $(DEMO_PATIENTS) --seed 0
	$(BIN)/dicomflow inventory --input $(DEMO_DIR)/bucket/export --output $(DEMO_DIR)/inventory
	@echo "inventory tables and manifest: $(DEMO_DIR)/inventory"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# pytest exits 5 when it collects nothing: a vanished suite fails, loudly.
	$(BIN)/pytest; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; \
	  exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache *.egg-info
