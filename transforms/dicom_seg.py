"""DICOM SEG written back: a segmentation model's prediction for one de-identified instance.

The SEG (highdicom) references the instance by the pseudonymous UIDs its de-identified copy
has (``dicomflow deidentify`` under the same key writes that very instance), and takes its
patient and study modules from the de-identified header only: nothing of the original
reaches it. Its own UIDs derive from the model version, the SEG type and the source's
pseudonymous UIDs, so a re-run writes the same SEG again (overwriting, never duplicating).
One segment per foreground class; binary (the most probable class) or fractional (each
class's probability, 0-255). Written for single-frame instances, and for multi-frame
instances with a frame of reference (enhanced CT, MR, ...) whose every frame was scored
(``frame_policy: all``), one SEG frame per source frame; any other multi-frame instance
(a cine run without planes, or some of its frames scored) gets no SEG (a dead letter
says why), its score rows are written as usual.

``build_seg`` is the pure core; ``SegWriter`` is what ``SegmentationRowsFn`` calls;
``stored_seg`` reads a written SEG back as a store sink takes it (``--output-store``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from apache_beam.io.filesystems import FileSystems
from pydicom.dataset import Dataset

from models.uids import is_valid_uid
from transforms.deadletter import STAGE_SCORE, StageError
from transforms.deid.objects import DeidResult
from transforms.deid.pseudonyms import UID_ROOT
from transforms.dicom_io import quiet_pydicom
from transforms.seg_scoring import SourceGrid, source_masks
from transforms.storage import write_bytes

if TYPE_CHECKING:
    from transforms.scoring import ScoreKey

BINARY, FRACTIONAL = "binary", "fractional"
SEG_TYPES = (BINARY, FRACTIONAL)
SEG_FAILED = "seg_failed"
MANUFACTURER = "dicomflow"
MODEL_NAME = "dicomflow segmentation"
SERIES_NUMBER = 900
CONTENT_LABEL = "DICOMFLOW"


def derived_uid(*parts: str) -> str:
    """A UID under 2.25 from the parts (already pseudonyms: no key is needed)."""
    digest = hashlib.sha256("\0".join(("dicomflow-seg", *parts)).encode()).digest()
    return UID_ROOT + str(int.from_bytes(digest[:16], "big"))


def seg_uids(version: str, seg_type: str, series_uid: str, sop_uid: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SEG of instance ``sop_uid`` of series
    ``series_uid`` by this model version: one SEG series per source series and version."""
    return (
        derived_uid("series", version, seg_type, series_uid),
        derived_uid("instance", version, seg_type, sop_uid),
    )


@functools.cache
def _descriptions(names: tuple[str, ...], version: str) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=MODEL_NAME, version=version, family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in enumerate(names, start=1)
    ]


def segment_names(labels: Sequence[str], class_names: dict[str, str] | None) -> list[str]:
    """The segments' labels: the class names the masks had (``model.json``
    ``class_names``, past de-identification's content check), else ``class <id>``."""
    names = class_names or {}
    return [names.get(label) or f"class {label}" for label in labels]


def build_seg(
    source: Dataset,
    masks: np.ndarray,
    seg_type: str,
    labels: Sequence[str],
    version: str,
    software: str,
) -> Dataset:
    """The SEG of one image: of its one frame, or of each of its frames.

    Args:
        source: the de-identified image header (no pixel data needed; a multi-frame
            image's with its frame of reference and per-frame planes).
        masks: rows x columns x segments, or frames x rows x columns x segments for every
            frame of a multi-frame image: 0/1 (binary) or probabilities in [0, 1].
        seg_type: ``binary`` or ``fractional``.
        labels: the segments' labels, one per foreground class (``segment_names``).
        version: the model version (the algorithm's version, and the SEG's UIDs).
        software: the code version, as Software Versions.
    """
    import highdicom as hd

    series_uid, sop_uid = seg_uids(
        version, seg_type, str(source.SeriesInstanceUID), str(source.SOPInstanceUID)
    )
    with warnings.catch_warnings():  # e.g. a pseudonym that is not a "Family^Given" name
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            [source],
            masks if masks.ndim == 4 else masks[np.newaxis],
            seg_type.upper(),  # BINARY or FRACTIONAL
            _descriptions(tuple(labels), version),
            series_instance_uid=series_uid,
            series_number=SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=int(source.get("InstanceNumber") or 1),
            manufacturer=MANUFACTURER,
            manufacturer_model_name=MODEL_NAME,
            software_versions=software[:64],
            device_serial_number=f"model-{version}"[:64],
            content_label=CONTENT_LABEL,
            content_description=f"dicomflow model version {version}"[:64],
            omit_empty_frames=False,
        )
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PlaneOrientationSequence" not in shared and "PatientOrientation" not in seg:
        # A source without patient geometry (a projection image): the General Image
        # module then requires Patient Orientation (Type 2C), the source's or empty.
        seg.PatientOrientation = source.get("PatientOrientation") or ""
    return seg


def encode(seg: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, seg, enforce_file_format=True)
    return buffer.getvalue()


class SegWriter:
    """Builds and writes an instance's SEG as ``<directory>/<source SOPInstanceUID>.dcm``.

    Args:
        directory: ``<output>/seg/model_version=V/run_id=R``.
        labels: ``model.json`` ``labels`` (background first).
        version: the model version.
        seg_type: ``binary`` or ``fractional``.
        software: the code version.
        class_names: ``model.json`` ``class_names`` (class id → name), if any.
    """

    def __init__(
        self,
        directory: str,
        labels: Sequence[str],
        version: str,
        seg_type: str,
        software: str,
        class_names: dict[str, str] | None = None,
    ):
        if seg_type not in SEG_TYPES:
            raise ValueError(f"seg_type must be one of {SEG_TYPES}")
        self._directory = directory
        self._labels = tuple(segment_names(labels[1:], class_names))
        self._version = version
        self._seg_type = seg_type
        self._software = software

    def setup(self) -> None:
        import highdicom  # noqa: F401  (imported once per worker, not per instance)

        quiet_pydicom()  # highdicom logs the UIDs it writes

    def write(self, key: ScoreKey, probabilities: np.ndarray, grids: Sequence[SourceGrid]) -> str:
        """Writes the SEG of one instance; returns its URI.

        Raises:
            StageError: ``seg_failed`` (stage ``score``): a multi-frame instance without a
                frame of reference or not every frame of it scored, a header highdicom
                cannot derive a SEG from, or a write that failed.
        """
        uid = key.sop_instance_uid
        if key.header is None:
            raise _failed("the de-identified header could not be encoded")
        try:
            source = pydicom.dcmread(io.BytesIO(key.header), force=True)
            frames = int(source.get("NumberOfFrames") or 1)
        except Exception as e:
            raise _failed(f"the de-identified header cannot be read ({type(e).__name__})") from None
        if frames > 1 and "FrameOfReferenceUID" not in source:
            raise _failed(
                f"a SEG of a multi-frame instance needs its frame of reference (planes); "
                f"this one of {frames} frames has none (a cine run)"
            )
        if sorted(key.frames) != list(range(frames)):
            raise _failed(
                f"{len(key.frames)} of its {frames} frames were scored: a SEG of a multi-frame "
                "instance is written when every frame is (frame_policy: all)"
            )
        if not is_valid_uid(uid):
            raise _failed("the SOPInstanceUID is not a valid UID; no file name can be made")
        fractional = self._seg_type == FRACTIONAL
        by_frame = sorted(zip(key.frames, probabilities, grids, strict=True), key=lambda t: t[0])
        stack = [source_masks(p, g, fractional) for _, p, g in by_frame]
        masks = stack[0] if frames == 1 else np.stack(stack)
        try:
            seg = build_seg(
                source, masks, self._seg_type, self._labels, self._version, self._software
            )
            data = encode(seg)
        except Exception as e:  # highdicom's messages may quote header values: type only
            raise _failed(
                f"the SEG cannot be built from this instance ({type(e).__name__})"
            ) from None
        uri = FileSystems.join(self._directory, f"{uid}.dcm")
        try:
            write_bytes(uri, data, "application/dicom")
        except Exception as e:
            raise _failed(f"the SEG cannot be written ({type(e).__name__})") from None
        return uri


def stored_seg(uri: str) -> tuple[str, None, DeidResult]:
    """A written SEG as a sink takes an instance: ``(source, member, DeidResult)``, the
    source being the SEG's own URI (a pseudonymous name), for its dead letters."""
    with FileSystems.open(uri, compression_type="uncompressed") as fh:
        data = fh.read()
    seg = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    result = DeidResult(
        sop_instance_uid=str(seg.SOPInstanceUID),
        series_instance_uid=str(seg.SeriesInstanceUID),
        study_instance_uid=str(seg.StudyInstanceUID),
        patient_id=str(seg.get("PatientID", "") or ""),
        modality=str(seg.Modality),
        data=data,
    )
    return uri, None, result


def _failed(message: str) -> StageError:
    return StageError(SEG_FAILED, message, STAGE_SCORE)
