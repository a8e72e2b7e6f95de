# Dataflow custom container for GPUs: the worker image's stack plus the CUDA libraries
# TensorFlow loads, from NVIDIA's pip wheels (tensorflow[and-cuda]), for scoring, and
# onnxruntime-gpu for the burned-in text detector. Built on
# Beam's SDK image, so Python 3.11 and the boot entrypoint /opt/apache/beam/boot match the
# pinned Beam; Dataflow installs the NVIDIA driver on the host when the job asks for it:
#   --sdk_container_image=REGISTRY/worker-gpu:0.1.0 --machine_type=g2-standard-4
#   --dataflow_service_options="worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
FROM apache/beam_python3.11_sdk:2.77.0

# OpenCV (the burned-in text detector's image library) loads libGL and GLib at import.
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/dicomflow
COPY setup.py pyproject.toml ./
COPY pipelines/ pipelines/
COPY transforms/ transforms/
COPY models/ models/
RUN pip install --no-cache-dir . "tensorflow[and-cuda]==2.21.0" && rm -rf build *.egg-info
# Burned-in text on the GPU: onnxruntime-gpu replaces onnxruntime (both are the module
# onnxruntime; its other requirements are already in place). transforms/deid/ocr.py then
# picks the CUDA provider and sends frames of one shape through the detector in batches;
# the CPU images keep onnxruntime.
RUN pip uninstall -y onnxruntime \
 && pip install --no-cache-dir --no-deps "onnxruntime-gpu==1.31.1"
# One SDK process per worker VM shares the one GPU (pass --experiments=no_use_multiple_sdk_containers);
# TensorFlow then takes GPU memory as it needs it instead of all of it at start.
ENV TF_FORCE_GPU_ALLOW_GROWTH=true
