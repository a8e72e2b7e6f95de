# Dataflow Flex Template launcher image, one per template (TEMPLATE=ingest or score): Google's
# Python 3.11 launcher base with this package and its pinned stack, so the launcher builds
# the job graph with the same code the workers run (pass the worker image as
# sdk_container_image when launching). deploy/flex_main.py is the program it runs.
#   docker build -f deploy/flex-template.Dockerfile --build-arg TEMPLATE=ingest \
#     -t REGISTRY/flex-ingest:0.1.0 .
# Pin the launcher base by digest for reproducible builds (LAUNCHER_BASE=...@sha256:...).
ARG LAUNCHER_BASE=gcr.io/dataflow-templates-base/python311-template-launcher-base:latest
FROM ${LAUNCHER_BASE}
ARG TEMPLATE

WORKDIR /template
COPY setup.py pyproject.toml ./
COPY pipelines/ pipelines/
COPY transforms/ transforms/
COPY models/ models/
COPY deploy/flex_main.py deploy/flex_main.py
RUN test -n "${TEMPLATE}" || { echo "build with --build-arg TEMPLATE=ingest or score" >&2; exit 1; } \
 && pip install --no-cache-dir . && rm -rf build *.egg-info
# The launcher runs this file with the template's parameters; no setup file or requirements
# to install at launch time.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/deploy/flex_main.py \
    DICOMFLOW_TEMPLATE=${TEMPLATE}
