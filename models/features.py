"""Every column and feature name, and the Parquet schemas, in one place."""

import pyarrow as pa

# Where a row comes from. Raw locations (object URIs often carry patient names) are
# allowed only in the inventory and errors tables, never in index or score tables.
SOURCE = "source"
MEMBER = "member"

# errors/ (dead letters), shared by every pipeline.
STAGE = "stage"
ERROR_TYPE = "error_type"
MESSAGE = "message"

ERRORS_SCHEMA = pa.schema(
    [
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(MEMBER, pa.string()),
        pa.field(STAGE, pa.string(), nullable=False),
        pa.field(ERROR_TYPE, pa.string(), nullable=False),
        pa.field(MESSAGE, pa.string(), nullable=False),
    ]
)

# inventory/: one row per readable DICOM object or archive member. Only facts that do
# not identify a patient; no UIDs, names, dates or free text from the dataset.
SIZE_BYTES = "size_bytes"
PARSE_STATUS = "parse_status"
HAS_PREAMBLE = "has_preamble"
SOP_CLASS_UID = "sop_class_uid"
SOP_CLASS_NAME = "sop_class_name"
MODALITY = "modality"
TRANSFER_SYNTAX_UID = "transfer_syntax_uid"
TRANSFER_SYNTAX_NAME = "transfer_syntax_name"
ROWS = "rows"
COLUMNS = "columns"
FRAMES = "frames"
SAMPLES_PER_PIXEL = "samples_per_pixel"
BITS_ALLOCATED = "bits_allocated"
PHOTOMETRIC_INTERPRETATION = "photometric_interpretation"
HAS_PIXEL_DATA = "has_pixel_data"
BURNED_IN_ANNOTATION = "burned_in_annotation"
DECODER_AVAILABLE = "decoder_available"

# parse_status values.
STATUS_IMAGE = "image"  # has pixel data
STATUS_NO_PIXEL_DATA = "no_pixel_data"  # a valid dataset without pixels (SR, KO, PR, ...)
STATUS_DICOMDIR = "dicomdir"  # a media directory: counted, never imaged

INVENTORY_SCHEMA = pa.schema(
    [
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(MEMBER, pa.string()),
        pa.field(SIZE_BYTES, pa.int64(), nullable=False),
        pa.field(PARSE_STATUS, pa.string(), nullable=False),
        pa.field(HAS_PREAMBLE, pa.bool_(), nullable=False),
        pa.field(SOP_CLASS_UID, pa.string()),
        pa.field(SOP_CLASS_NAME, pa.string()),
        pa.field(MODALITY, pa.string()),
        pa.field(TRANSFER_SYNTAX_UID, pa.string()),
        pa.field(TRANSFER_SYNTAX_NAME, pa.string()),
        pa.field(ROWS, pa.int32()),
        pa.field(COLUMNS, pa.int32()),
        pa.field(FRAMES, pa.int32()),
        pa.field(SAMPLES_PER_PIXEL, pa.int32()),
        pa.field(BITS_ALLOCATED, pa.int32()),
        pa.field(PHOTOMETRIC_INTERPRETATION, pa.string()),
        pa.field(HAS_PIXEL_DATA, pa.bool_(), nullable=False),
        pa.field(BURNED_IN_ANNOTATION, pa.string()),
        pa.field(DECODER_AVAILABLE, pa.bool_()),
    ]
)

# --- index/ (ingest) and the TFRecord examples -------------------------------------------
# The minimum index columns (docs/contracts.md); every identifier is a pseudonym.
SOP_INSTANCE_UID = "sop_instance_uid"
SERIES_INSTANCE_UID = "series_instance_uid"
STUDY_INSTANCE_UID = "study_instance_uid"
PATIENT_ID = "patient_id"
SPLIT = "split"
LABEL = "label"
# What evaluation slices by (models/slices.py): values as they survive de-identification.
MANUFACTURER = "manufacturer"
BODY_PART_EXAMINED = "body_part_examined"
LABEL_SOURCE = "label_source"  # the label file's key column (sop_instance_uid, ...), if labeled
# Pixel facts.
FRAME = "frame"
WINDOW_CENTER = "window_center"
WINDOW_WIDTH = "window_width"

# Burned-in text redaction (pixels.policy redact): counts only, never the text found.
PIXEL_REDACTION = "pixel_redaction"  # the mode (all_text | identifying_text), else null
REDACTED_REGIONS = "redacted_regions"  # text regions blanked, over all frames
REDACTED_AREA = "redacted_area"  # pixels blanked, over all frames
REDACTED_FRACTION = "redacted_fraction"  # redacted_area / (rows x columns x frames)

# Segmentation (ingest --task segmentation): where an image's mask came from, and the share
# of its own pixels the mask marks (null for a classification ingest).
MASK_SOURCE = "mask_source"  # seg | rtstruct | none
FOREGROUND_FRACTION = "foreground_fraction"

INDEX_SCHEMA = pa.schema(
    [
        pa.field(SOP_INSTANCE_UID, pa.string(), nullable=False),
        pa.field(SERIES_INSTANCE_UID, pa.string()),
        pa.field(STUDY_INSTANCE_UID, pa.string()),
        pa.field(PATIENT_ID, pa.string(), nullable=False),
        pa.field(MODALITY, pa.string()),
        pa.field(SPLIT, pa.string(), nullable=False),
        pa.field(LABEL, pa.string()),
        pa.field(FRAME, pa.int32(), nullable=False),
        pa.field(ROWS, pa.int32()),
        pa.field(COLUMNS, pa.int32()),
        pa.field(PHOTOMETRIC_INTERPRETATION, pa.string()),
        pa.field(TRANSFER_SYNTAX_UID, pa.string()),
        pa.field(WINDOW_CENTER, pa.float32()),
        pa.field(WINDOW_WIDTH, pa.float32()),
        pa.field(PIXEL_REDACTION, pa.string()),
        pa.field(REDACTED_REGIONS, pa.int32()),
        pa.field(REDACTED_AREA, pa.int64()),
        pa.field(REDACTED_FRACTION, pa.float32()),
        pa.field(MANUFACTURER, pa.string()),
        pa.field(BODY_PART_EXAMINED, pa.string()),
        pa.field(LABEL_SOURCE, pa.string()),
        pa.field(MASK_SOURCE, pa.string()),
        pa.field(FOREGROUND_FRACTION, pa.float32()),
    ]
)

# Raw tf.train.Example features, as ingest writes them and serving receives them (the
# tf.Transform graph is applied on top, in training and in the exported model alike).
IMAGE = "image"  # bytes: uint8 pixels, height x width x channels, row-major
DEFAULT_IMAGE_SIZE = 224  # default geometry (ingest's pixel config can change it)
DEFAULT_IMAGE_CHANNELS = 1
IMAGE_HEIGHT = "image_height"
IMAGE_WIDTH = "image_width"
IMAGE_CHANNELS = "image_channels"
# Segmentation examples also carry the label map: uint8 bytes, height x width, row-major,
# 0 background, else the segment (SEG) or ROI (RTSTRUCT) number; all 0 when unlabeled.
MASK = "mask"

# Outputs of the preprocessing (models.preprocessing.make_preprocessing_fn).
IMAGE_NORMALIZED = "image_normalized"  # float32, zero mean / unit variance over train
LABEL_ID = "label_id"  # int64 index into the label vocabulary, -1 when unlabeled
LABEL_VOCABULARY = "label"  # vocabulary file name under transform/
# The graph's other asset: the train split's pixel statistics, one "name<TAB>value" a line
# (written by models/transform_writer.py, read by the graph of models/preprocessing.py).
STATISTICS_ASSET = "pixel_statistics"
STATISTICS_DELIMITER = "\t"
PIXEL_MEAN, PIXEL_STD = "pixel_mean", "pixel_std"


def mask_feature_spec() -> dict:
    """A segmentation example's features: the raw spec and the ``mask`` label map."""
    import tensorflow as tf

    return {**raw_feature_spec(), MASK: tf.io.FixedLenFeature([], tf.string)}


def raw_feature_spec() -> dict:
    """The TFRecord schema: every feature name lives here, read by ingest, trainer, scoring.

    Every example carries every feature (tf.Transform's schema allows no defaults): an
    unlabeled example has label "", a missing identifier is "".
    """
    import tensorflow as tf

    return {
        IMAGE: tf.io.FixedLenFeature([], tf.string),
        IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
        IMAGE_CHANNELS: tf.io.FixedLenFeature([], tf.int64),
        LABEL: tf.io.FixedLenFeature([], tf.string),
        SOP_INSTANCE_UID: tf.io.FixedLenFeature([], tf.string),
        SERIES_INSTANCE_UID: tf.io.FixedLenFeature([], tf.string),
        STUDY_INSTANCE_UID: tf.io.FixedLenFeature([], tf.string),
        PATIENT_ID: tf.io.FixedLenFeature([], tf.string),
        MODALITY: tf.io.FixedLenFeature([], tf.string),
        FRAME: tf.io.FixedLenFeature([], tf.int64),
    }


# --- splits (ingest's output layout: models/layout.py) ---------------------------------------
TRAIN, EVAL, TEST = "train", "eval", "test"

# --- scores/ (score) ------------------------------------------------------------------------
# One row per scored image (an instance, or one of its frames under frame_policy "all").
SCORE = "score"  # binary: the positive label's probability; else the predicted label's
SCORES = "scores"  # every label's probability, in model.json "labels" order
PREDICTED_LABEL = "predicted_label"
MODEL_VERSION = "model_version"
RUN_ID = "run_id"
SCORED_AT = "scored_at"
EXPLANATION = "explanation"  # URI of the Grad-CAM PNG (--explain-top), else null

SCORES_SCHEMA = pa.schema(
    [
        pa.field(SOP_INSTANCE_UID, pa.string(), nullable=False),
        pa.field(SERIES_INSTANCE_UID, pa.string()),
        pa.field(STUDY_INSTANCE_UID, pa.string()),
        pa.field(PATIENT_ID, pa.string(), nullable=False),
        pa.field(MODALITY, pa.string()),
        pa.field(FRAME, pa.int32(), nullable=False),
        pa.field(SCORE, pa.float32(), nullable=False),
        pa.field(SCORES, pa.list_(pa.float32()), nullable=False),
        pa.field(PREDICTED_LABEL, pa.string(), nullable=False),
        pa.field(MODEL_VERSION, pa.string(), nullable=False),
        pa.field(RUN_ID, pa.string(), nullable=False),
        pa.field(SCORED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field(EXPLANATION, pa.string()),
    ]
)


# One row per scored image of a segmentation model (``--task segmentation``). Per-class
# lists are in ``model.json`` ``labels[1:]`` order (label 0 is background); areas and boxes
# are in the source image's own pixels (the prediction mapped back through the geometry).
FOREGROUND_AREA = "foreground_area"  # predicted pixels per class
COMPONENT_COUNT = "component_count"  # connected components per class
BOUNDING_BOXES = "bounding_boxes"  # one per component: class, row/column min and max
MAX_PROBABILITY = "max_probability"  # per class, the highest pixel probability
SEG_URI = "seg_uri"  # the DICOM SEG written for the image (--write-seg), else null
BOX_CLASS, ROW_MIN, COLUMN_MIN, ROW_MAX, COLUMN_MAX = (
    "class",
    "row_min",
    "column_min",
    "row_max",
    "column_max",
)

SEGMENTATION_SCORES_SCHEMA = pa.schema(
    [
        pa.field(SOP_INSTANCE_UID, pa.string(), nullable=False),
        pa.field(SERIES_INSTANCE_UID, pa.string()),
        pa.field(STUDY_INSTANCE_UID, pa.string()),
        pa.field(PATIENT_ID, pa.string(), nullable=False),
        pa.field(MODALITY, pa.string()),
        pa.field(FRAME, pa.int32(), nullable=False),
        pa.field(FOREGROUND_AREA, pa.list_(pa.int64()), nullable=False),
        pa.field(COMPONENT_COUNT, pa.list_(pa.int32()), nullable=False),
        pa.field(
            BOUNDING_BOXES,
            pa.list_(
                pa.struct(
                    [
                        pa.field(BOX_CLASS, pa.string(), nullable=False),
                        pa.field(ROW_MIN, pa.int32(), nullable=False),
                        pa.field(COLUMN_MIN, pa.int32(), nullable=False),
                        pa.field(ROW_MAX, pa.int32(), nullable=False),
                        pa.field(COLUMN_MAX, pa.int32(), nullable=False),
                    ]
                )
            ),
            nullable=False,
        ),
        pa.field(MAX_PROBABILITY, pa.list_(pa.float32()), nullable=False),
        pa.field(MODEL_VERSION, pa.string(), nullable=False),
        pa.field(RUN_ID, pa.string(), nullable=False),
        pa.field(SCORED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field(SEG_URI, pa.string()),
    ]
)


# The classifiers ``--network`` names (built in models/networks.py; recorded in model.json).
CNN = "cnn"
RESNET50 = "resnet50"
DENSENET121 = "densenet121"
NETWORKS = (CNN, RESNET50, DENSENET121)
# Segmentation's network (models/unet.py), its default size and its losses.
UNET = "unet"
UNET_DEPTH, UNET_WIDTH = 3, 16  # down-sampling steps; filters of the first level
SEG_LOSSES = ("dice_ce", "dice_focal")
