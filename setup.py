"""dicomflow: Beam pipelines from DICOM archives to de-identified training data and scores.

Beam ships this package to Dataflow workers with ``--setup_file ./setup.py``.
"""

from setuptools import find_packages, setup

# The stack is pinned so that the local run, CI and Dataflow workers run the same code.
INSTALL_REQUIRES = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "tensorflow-transform==1.21.0",
    "pydicom==3.0.2",
    "pylibjpeg==2.1.0",
    "pylibjpeg-openjpeg==2.6.0",
    "pylibjpeg-libjpeg==2.5.0",
    "pylibjpeg-rle==2.2.0",
    "pyjpegls==1.5.1",
    "python-gdcm==3.2.6",
    "numpy>=2.0,<3",
    "pillow==12.3.0",
    "pyarrow==25.0.1",
    "google-cloud-storage==3.17.1",
    "pyyaml==6.0.3",
    "dicomweb-client==0.61.2",  # DICOMweb stores: QIDO-RS, WADO-RS, STOW-RS (transforms/dicomweb)
    "pynetdicom==3.0.4",  # DIMSE: C-FIND, C-GET, C-MOVE, C-STORE (transforms/sources/dimse*.py)
    "cryptography==50.0.2",
    "isal==1.9.1",  # gzip for TFRecords at four times zlib's speed (transforms/tfrecord.py)
    # Training: Keras as TensorFlow 2.21 brings it (model.keras files are read by scoring
    # with the same version), curve plots, and the Vertex AI launcher.
    "keras==3.15.1",
    "matplotlib==3.11.2",
    "google-cloud-aiplatform==1.165.1",
    "rich==15.0.0",  # the demo's progress display
    # Burned-in text (pixels.policy redact): PP-OCRv4 detection/recognition models ship
    # inside this wheel (Apache-2.0, 15 MB) and run on onnxruntime; nothing is downloaded
    # at run time. It brings opencv-python, pyclipper and shapely.
    "rapidocr-onnxruntime==1.4.4",
    "onnxruntime==1.32.0",
    "opencv-python==5.1.0.95",
    # Evaluation (models/calibration.py, uncertainty.py, slices.py): Brier score, the
    # calibration optimizer, midranks and normal quantiles. Not tensorflow-model-analysis:
    # it needs pandas<3 (we have 3.1) and brings ipython, ipywidgets, sacrebleu and
    # rouge-score into the training container, and slices only on features inside the
    # examples (ours are in the index).
    "scikit-learn==1.9.1",
    "scipy==1.17.1",
    # The content check's person-name detector (transforms/deid/content.py): the given and
    # family names of every locale Faker maintains (2 MB, pure Python; names-dataset would
    # cost gigabytes of memory on every worker).
    "faker==40.40.0",
    # DICOM SEG: synth --masks writes them, and reads them back in tests.
    "highdicom==0.28.2",
]

EXTRAS_REQUIRE = {
    # The GPU worker image (deploy/worker-gpu.Dockerfile) swaps onnxruntime for this build
    # with CUDA; its newest release is one minor version behind the CPU pin.
    "gpu": ["onnxruntime-gpu==1.31.1"],
    "test": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",  # make test runs the suite on every core
        "ruff==0.17.6",
        # make test type-checks (mypy) and enforces the one-way import rule (import-linter).
        "mypy==2.4.1",
        "types-PyYAML==6.0.12.20261113",
        "import-linter==2.16",
        "gcp-storage-emulator==2026.7.19",
        # Public DICOM test files that de-identification must survive.
        "deid-data==0.0.20",
        "pydicom-data==1.0.0",  # the wheel holds its files: the leak scan reads them offline
        # RTSTRUCTs written by another tool (rings with holes), read back in tests/test_masks.py.
        "rt-utils==1.2.7",
        # The score tables are queried with DuckDB in a test, as users query them.
        "duckdb==2.0.0",
        # The docs site (mkdocs.yml): make docs, and mkdocs build --strict in make test;
        # the API reference is generated from the code by mkdocstrings.
        "mkdocs==1.6.1",
        "mkdocs-material==9.8.1",
        "mkdocstrings[python]==1.0.8",
        "mkdocstrings-python==2.0.11",
    ],
}

setup(
    name="dicomflow",
    version="0.1.0",
    description="Beam pipelines: DICOM archives to de-identified TFRecords, training and scores",
    python_requires=">=3.11",
    packages=find_packages(
        include=["pipelines", "pipelines.*", "transforms", "transforms.*", "models", "models.*"]
    ),
    package_data={
        "transforms.deid": ["deid_profile.json", "deid_keeplist.json", "deid_vocabulary.json"],
        # The preprocessing graph built per default image geometry (models/transform_writer.py).
        "models": ["transform_templates/*/*/*", "transform_templates/*/*/*/*"],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["dicomflow = pipelines.cli:main"]},
)
