# Dataflow custom container for ingest, inventory, deidentify and CPU scoring: Beam's own
# SDK image (Python 3.11, the boot entrypoint /opt/apache/beam/boot) at the apache-beam
# version setup.py pins, with this package and its pinned stack installed. Workers start
# with everything in place: no --setup_file, no pip on worker start-up.
#   docker build -f deploy/worker.Dockerfile -t REGISTRY/worker:0.1.0 .
#   ... --sdk_container_image=REGISTRY/worker:0.1.0
FROM apache/beam_python3.11_sdk:2.77.0

# OpenCV (the burned-in text detector's image library) loads libGL and GLib at import.
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/dicomflow
# Only what the package needs: the build context may hold virtualenvs and data.
COPY setup.py pyproject.toml ./
COPY pipelines/ pipelines/
COPY transforms/ transforms/
COPY models/ models/
RUN pip install --no-cache-dir . && rm -rf build *.egg-info
