"""Every output folder and file name, in one place: what each command writes under its
output root, and the run ids that name runs.

In models/ because the trainer reads ingest's layout and needs no DICOM stack; pipelines/
and transforms/ write what it names. The model directory's own names (versions, ``latest``,
``model.json``, ...) live with the code that writes and reads them, models/export.py.
"""

import time
import uuid

# --- every command -----------------------------------------------------------------------
MANIFEST_NAME = "manifest.json"  # written last, when the tables are done
ERRORS_TABLE = "errors"  # errors/part-*.parquet: one row per dead letter

# --- inventory ---------------------------------------------------------------------------
INVENTORY_TABLE = "inventory"

# --- deidentify --------------------------------------------------------------------------
DEID_DIR = "deid_dicom"  # deid_dicom/<pseudonymous SOPInstanceUID>.dcm

# --- ingest (read by the trainer) --------------------------------------------------------
TFRECORDS_DIR = "tfrecords"  # tfrecords/<split>/part-*.tfrecord.gz
TFRECORD_SUFFIX = ".tfrecord.gz"
TFRECORD_SHARDS = "part-*" + TFRECORD_SUFFIX  # the shards of one split
TRANSFORM_DIR = "transform"  # tft.TFTransformOutput
INDEX_DIR = "index"  # index/part-*.parquet

# --- score -------------------------------------------------------------------------------
SCORES_TABLE = "scores"  # scores/model_version=V/run_id=R/part-*.parquet
EXPLANATIONS_DIR = "explanations"  # explanations/V/R/<sop_instance_uid>-<frame>.png
SEG_DIR = "seg"  # seg/model_version=V/run_id=R/<sop_instance_uid>.dcm (--write-seg)

# --- run, under the config's output root -------------------------------------------------
LOCK_NAME = "_lock"
STATE_NAME = "state.json"
INGEST_DIR = "ingest"  # ingest's outputs
MODELS_DIR = "models"  # train's model directory
RUNS_DIR = "runs"  # runs/<run_id>/
RUN_RECORD = "run.json"  # runs/<run_id>/run.json
SCORE_DIR = "score"  # runs/<run_id>/score/: score's outputs


def new_run_id(prefix: str = "") -> str:
    """A run id: sortable (UTC time first), unique (a random suffix), lower case, so it is
    also a valid Vertex AI label value; e.g. ``train-20261206-232510-1f0c9a2b``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{prefix}{stamp}-{uuid.uuid4().hex[:8]}"
