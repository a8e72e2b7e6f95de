"""Whole instances: parsed dataset in, de-identified result (and linkage row) out."""

import zlib
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import UID, AllTransferSyntaxes, DeflatedExplicitVRLittleEndian

from transforms.deadletter import (
    StageError,
)
from transforms.deid.config import PixelPolicy
from transforms.deid.engine import Deidentifier
from transforms.deid.pixels import burned_in_risk, mask_pixels
from transforms.deid.redact import Redaction, redact_pixels
from transforms.deid.values import _text
from transforms.dicom_io import parse_dataset
from transforms.dicom_io.write import write_dataset, write_file_meta

# pydicom's own list: pynetdicom adds newer syntaxes to pydicom's UID table on import (so
# ``is_transfer_syntax`` says yes to JPEG XL) without a decoder for them.
_PYDICOM_SYNTAXES = frozenset(AllTransferSyntaxes)


def _defined(syntax: UID) -> bool:
    return syntax.is_transfer_syntax and (syntax.is_private or syntax in _PYDICOM_SYNTAXES)


@dataclass(frozen=True)
class DeidResult:
    """A de-identified instance: pseudonymous identifiers and its Part 10 bytes."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    modality: str
    data: bytes | None  # None when the caller did not ask for the encoded file
    # What was removed or changed beyond the table: ((counter, count), ...), counters as
    # engine.Deidentifier.deidentify_counted names them, and redaction's audit counts
    # (redaction_counts).
    net_counts: tuple[tuple[str, int], ...] = ()
    redaction: Redaction | None = None  # what pixels.policy redact did (counts only)


def deidentify_object(data: bytes, engine: Deidentifier) -> tuple[DeidResult, dict[str, str]]:
    """Bytes in, de-identified Part 10 bytes out, with the linkage row.

    Raises:
        StageError: from parsing (``truncated``, ``invalid_dicom``) or from
            ``deidentify_dataset``.
    """
    return deidentify_dataset(parse_dataset(data), engine)


def deidentify_dataset(
    ds: Dataset, engine: Deidentifier, encode: bool = True
) -> tuple[DeidResult, dict[str, str]]:
    """A parsed dataset (changed in place) → de-identified Part 10 bytes and the linkage row.

    ``encode=False`` skips writing the Part 10 bytes (``data`` is None): ingest uses the
    de-identified dataset in place and would throw the bytes away; encoding costs about
    as much as the de-identification itself.

    Raises:
        StageError: ``not_an_instance`` (a DICOMDIR), ``unsupported_transfer_syntax``,
            ``burned_in_annotation`` (policy exclude, or mask without a region for the
            modality), ``burned_in_text_remaining`` and ``redact_failed`` (policy
            redact), ``mask_failed``, ``deid_failed``, ``write_failed``.
    """
    if "SOPInstanceUID" not in ds or "DirectoryRecordSequence" in ds:
        # A DICOMDIR (or other media file) indexes instances; it is not one.
        raise StageError("not_an_instance", "no SOP instance (e.g. a DICOMDIR); not de-identified")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and not _defined(syntax):
        # A syntax this pydicom does not define (JPEG XL, say, which only pynetdicom
        # names): no decoder here reads its pixels; refused, named.
        message = f"transfer syntax {syntax} is not supported by this installation"
        raise StageError("unsupported_transfer_syntax", message)
    pixels = engine.config.pixels
    risk = burned_in_risk(ds, pixels)
    state = "kept" if risk else "clean"
    redaction = None
    if risk and pixels.policy == "redact":
        state = "redacted"
        redaction = _redact(ds, pixels)
    elif risk and pixels.policy != "keep":
        modality = str(ds.get("Modality", "") or "").strip().upper()
        boxes = pixels.mask_regions.get(modality)
        if pixels.policy == "exclude":
            raise StageError("burned_in_annotation", f"{risk}; pixel policy is exclude")
        if not boxes:
            raise StageError(
                "burned_in_annotation", f"{risk}; no mask region configured for {modality}"
            )
        state = "masked"
        try:
            mask_pixels(ds, boxes)
        except Exception as e:
            raise StageError(
                "mask_failed", f"pixels cannot be masked ({type(e).__name__})"
            ) from None
    link = engine.linkage(ds)
    counts = dict(engine.deidentify_counted(ds, state))
    counts.update(redaction_counts(ds, redaction))
    data = None
    if encode:
        try:
            data = encode_part10(ds)
        except Exception as e:
            message = f"cannot encode the result ({type(e).__name__})"
            raise StageError("write_failed", message) from None
    result = DeidResult(
        # Read from the values as stored: the engine leaves its replacements encoded.
        sop_instance_uid=_text(ds, 0x00080018),
        series_instance_uid=_text(ds, 0x0020000E),
        study_instance_uid=_text(ds, 0x0020000D),
        patient_id=_text(ds, 0x00100020),
        modality=_text(ds, 0x00080060),
        data=data,
        net_counts=tuple(sorted(counts.items())),
        redaction=redaction,
    )
    return result, link


# Counter prefixes (engine.Deidentifier.deidentify_counted) → manifest count names.
MANIFEST_COUNTS = {
    "patient_identifier": "deid_identifiers_removed",
    "content": "deid_content_changed",
    "vr": "deid_vr_invalid",
    "code": "deid_local_codes",
    "override": "deid_overrides",
    "pixels": "deid_pixel_streams",
    "redacted": "redacted_images_by_modality",
    "redacted_height": "redacted_images_by_region_height",
}


def redaction_counts(ds: Dataset, redaction: Redaction | None) -> dict[str, int]:
    """The audit counts of an image whose burned-in text was blanked: one under its
    modality, and one under each size band of its blanked regions (the manifest's
    ``redacted_images_by_modality`` and ``redacted_images_by_region_height``)."""
    if redaction is None or not redaction.regions:
        return {}
    modality = str(ds.get("Modality", "") or "").strip() or "none"
    return {f"redacted:{modality}": 1, **{f"redacted_height:{b}": 1 for b in redaction.bands}}


def encode_part10(ds: Dataset) -> bytes:
    """The dataset as a Part 10 file: preamble, the file meta the engine built (group
    length added, required elements checked) and the dataset in its transfer syntax.

    What ``save_as(enforce_file_format=True)`` writes, without its deep copy of the file
    meta (a third of the encoding time): the engine has just built a new, complete one.
    """
    meta = ds.file_meta
    syntax = meta.TransferSyntaxUID
    fp = DicomBytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta(fp, meta)
    fp.is_implicit_VR, fp.is_little_endian = syntax.is_implicit_VR, syntax.is_little_endian
    if "PixelData" in ds:  # PS3.5 A.4: encapsulated Pixel Data has undefined length
        ds["PixelData"].is_undefined_length = syntax.is_compressed
    if syntax != DeflatedExplicitVRLittleEndian:
        write_dataset(fp, ds)
        return fp.getvalue()
    body = DicomBytesIO()  # PS3.5 A.5: the dataset encoded, then deflated
    body.is_implicit_VR, body.is_little_endian = False, True
    write_dataset(body, ds)
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    deflated = compressor.compress(body.getvalue()) + compressor.flush()
    fp.write(deflated + (b"\x00" if len(deflated) % 2 else b""))
    return fp.getvalue()


def count_keys(net_counts: tuple[tuple[str, int], ...]) -> list:
    """Manifest keys for what de-identification removed or changed beyond the table:
    keywords and counts only, never values."""
    keys: list = []
    for name, n in net_counts:
        prefix, _, rest = name.partition(":")
        if name == "invalid_modality":
            keys += ["invalid_modality"] * n
        elif rest and prefix in MANIFEST_COUNTS:
            keys += [(MANIFEST_COUNTS[prefix], rest)] * n
        else:
            keys += [("deid_net_removed", name)] * n
    return keys


def _redact(ds: Dataset, pixels: PixelPolicy) -> Redaction:
    try:
        return redact_pixels(ds, pixels)
    except StageError:
        raise
    except Exception as e:  # the OCR package missing or failing: never pass the pixels on
        raise StageError("redact_failed", f"OCR redaction failed ({type(e).__name__})") from None


# ---------------------------------------------------------------------------------------
# Beam
