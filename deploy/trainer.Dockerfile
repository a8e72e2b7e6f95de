# Vertex AI training image: `python -m models.trainer` (models/launchers.py sets that command;
# `dicomflow train --launcher vertex --image REGISTRY/trainer:0.1.0`). models/ needs
# TensorFlow, tf.Transform, Keras, pyarrow, matplotlib, scikit-learn, scipy and
# google-cloud-storage, and never the DICOM stack, so only those are installed, at setup.py's
# pins. TensorFlow's CUDA
# wheels come along (Vertex provides the driver); CPU-only jobs simply do not load them.
# apache-beam arrives as a dependency of tensorflow-transform (tfx-bsl); the constraint
# holds it at the version the rest of the project pins.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/dicomflow
RUN echo "apache-beam==2.77.0" > /tmp/constraints.txt \
 && pip install --no-cache-dir -c /tmp/constraints.txt \
      "tensorflow[and-cuda]==2.21.0" \
      "tensorflow-transform==1.21.0" \
      "keras==3.15.1" \
      "pyarrow==25.0.1" \
      "numpy>=2.0,<3" \
      "matplotlib==3.11.2" \
      "scikit-learn==1.9.1" \
      "scipy==1.17.1" \
      "google-cloud-storage==3.17.1" \
 && rm /tmp/constraints.txt
COPY models/ models/
ENTRYPOINT ["python", "-m", "models.trainer"]
