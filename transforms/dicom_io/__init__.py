"""Reading layer: match inputs, stream archives member by member, recognise and parse DICOM.

Everything here works through Beam's FileSystems, so a local folder and ``gs://`` read the
same way on DirectRunner and on Dataflow. Loose objects and archive members become
``SourceObject``s (within ``Limits``); whatever cannot be read becomes a
``DeadLetter``. Archives are never held in memory whole: zip members are read one at a
time through the central directory, tar (optionally gzip/bz2/xz compressed) as a stream.
"""

from transforms.dicom_io.archives import iter_objects, sniff
from transforms.dicom_io.dedupe import DropDuplicates, FindDuplicates, instance_digest
from transforms.dicom_io.inventory import InspectDicom, Inspected, InspectFn, describe
from transforms.dicom_io.limits import Limits
from transforms.dicom_io.match import (
    MatchInputs,
    check_inputs,
    has_glob,
    match_uri,
    normalize_uri,
    to_pattern,
)
from transforms.dicom_io.objects import (
    DEFAULT_MAX_OBJECT_BYTES,
    KIND_DICOM,
    KIND_EMPTY,
    KIND_GZIP,
    KIND_TAR,
    KIND_UNKNOWN,
    KIND_ZIP,
    MAX_ARCHIVE_DEPTH,
    METRICS_NAMESPACE,
    MODALITIES,
    PHOTOMETRIC_INTERPRETATIONS,
    ReadOutputs,
    SourceObject,
    quiet_pydicom,
)
from transforms.dicom_io.parse import check_decoded, parse_dataset
from transforms.dicom_io.read import ReadInstances, ReadObjects, ReadObjectsFn

__all__ = [
    "DEFAULT_MAX_OBJECT_BYTES",
    "KIND_DICOM",
    "KIND_EMPTY",
    "KIND_GZIP",
    "KIND_TAR",
    "KIND_UNKNOWN",
    "KIND_ZIP",
    "MAX_ARCHIVE_DEPTH",
    "METRICS_NAMESPACE",
    "MODALITIES",
    "PHOTOMETRIC_INTERPRETATIONS",
    "DropDuplicates",
    "FindDuplicates",
    "InspectDicom",
    "InspectFn",
    "Inspected",
    "Limits",
    "MatchInputs",
    "ReadInstances",
    "ReadObjects",
    "ReadObjectsFn",
    "ReadOutputs",
    "SourceObject",
    "check_decoded",
    "check_inputs",
    "describe",
    "has_glob",
    "instance_digest",
    "iter_objects",
    "match_uri",
    "normalize_uri",
    "parse_dataset",
    "quiet_pydicom",
    "sniff",
    "to_pattern",
]
