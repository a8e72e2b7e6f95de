# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) the virtualenv in .venv and install the pinned stack into it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# A separate virtualenv for Airflow: its dependencies conflict with Beam's. The DAG in
# deploy/airflow/ is imported in it by tests/test_deploy.py.
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed-stamp
DEMO_DIR ?= demo-work
DEMO_PATIENTS ?= 60
# Material for MkDocs prints a banner about MkDocs 2.0 on every build unless told not to.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs

.PHONY: demo static test check docs lint format clean airflow-venv transform-templates

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(AIRFLOW_STAMP): deploy/airflow/requirements.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -r deploy/airflow/requirements.txt
	touch $(AIRFLOW_STAMP)

airflow-venv: $(AIRFLOW_STAMP)

demo: $(STAMP)
	@# synth → ingest → train → score on DirectRunner, then a summary and report.html.
	@# The demo makes its own throwaway key (the only command that may) and says so.
	$(BIN)/dicomflow demo --workdir $(DEMO_DIR) --patients $(DEMO_PATIENTS)

# Lint, format, types (config in pyproject.toml [tool.mypy]), the one-way import rule
# pipelines → transforms → models (pyproject.toml [tool.importlinter]) and the docs site.
static: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	@# The docs site: --strict fails on a broken link, a page left out of the nav or an API
	@# name that is gone; --quiet prints only those.
	$(MKDOCS) build --strict --quiet

# The whole suite, on every core (pytest-xdist; a test file stays on one worker, so its
# module fixtures are built once). pytest exits 5 when it collects nothing: a vanished
# suite fails, loudly.
test: static $(AIRFLOW_STAMP)
	@start=$$(date +%s); \
	  $(BIN)/pytest -n auto --dist loadfile --no-loadscope-reorder; rc=$$?; \
	  echo "make test: pytest took $$(( $$(date +%s) - start ))s"; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; \
	  exit $$rc

# The inner loop of a change: static checks and the tests not marked slow (whole
# pipelines, servers, training), in about two minutes.
check: static
	$(BIN)/pytest -n auto --dist loadfile --no-loadscope-reorder -m "not slow" -q; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make check: pytest collected no tests"; exit 1; fi; \
	  exit $$rc

# The documentation site (mkdocs.yml, docs/) into site/; open site/index.html.
docs: $(STAMP)
	$(MKDOCS) build --strict --quiet
	@echo "docs: site/index.html"

# After a change to models/preprocessing.py: rebuild the graphs shipped per image geometry
# (tests/test_transform_writer.py fails until they match).
transform-templates: $(STAMP)
	$(BIN)/python -m models.transform_writer

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .

clean:
	rm -rf $(DEMO_DIR) site .pytest_cache .ruff_cache .mypy_cache .import_linter_cache *.egg-info
