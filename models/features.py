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
