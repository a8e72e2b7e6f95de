"""Parsing a DICOM object completely, with truncation named as such."""

import io
import struct
import zlib

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator

from transforms.deadletter import (
    StageError,
)
from transforms.dicom_io.objects import _EXPLICIT_VRS, _LONG_EXPLICIT_VRS


def parse_dataset(data: bytes) -> Dataset:
    """Parses a DICOM object completely (pixel data stays encoded).

    Raises:
        StageError: ``invalid_dicom`` when it does not parse, ``truncated`` when it ends
            inside an element.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except zlib.error:
        raise StageError("truncated", "deflated dataset is cut short or corrupt") from None
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, struct.error) as e:
        message = f"not a parsable DICOM dataset ({type(e).__name__})"
        raise StageError("invalid_dicom", message) from None
    if len(ds) == 0:
        raise StageError("truncated", "object ends before its dataset begins")
    _check_complete(ds, data)
    return ds


def _check_complete(ds: Dataset, data: bytes) -> None:
    """pydicom silently accepts a file cut short; make sure the dataset ends where the file
    does. Usually the last element tells (its offset and length); otherwise the top level
    is walked again."""
    if _ends_at_end_of_file(ds, data):
        return
    offset = _dataset_offset(data)
    body = data[offset:]
    implicit, little = ds.original_encoding
    if ds.file_meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian:
        try:
            body = zlib.decompress(body, -zlib.MAX_WBITS)
        except zlib.error:
            raise StageError("truncated", "deflated dataset is cut short") from None
    fp = io.BytesIO(body)
    try:
        # ds.original_encoding is known here: the dataset was read from these bytes.
        for elem in data_element_generator(fp, bool(implicit), bool(little), defer_size=256):
            # Sequences come back parsed (DataElement); raw ones keep the declared length.
            length = getattr(elem, "length", 0xFFFFFFFF)
            if length != 0xFFFFFFFF and elem.value is not None and len(elem.value) < length:
                raise StageError("truncated", f"object ends inside element {elem.tag}")
    except (EOFError, struct.error):
        raise StageError("truncated", "object ends inside an undefined-length element") from None
    except StageError:
        raise
    except Exception as e:  # a malformed nested item: pydicom read it leniently, we do not
        raise StageError("invalid_dicom", f"malformed dataset ({type(e).__name__})") from None
    if fp.tell() != len(body):
        raise StageError("truncated", "object ends inside an element")


def _ends_at_end_of_file(ds: Dataset, data: bytes) -> bool:
    """True when the last top-level element is complete and ends exactly at the end of data.

    pydicom drops an undefined-length element it cannot finish, and shortens a defined one,
    so a cut file never passes. False means "look closer", not "truncated".
    """
    if ds.file_meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return False  # offsets refer to the inflated stream
    last = next(reversed(ds.keys()), None)  # type: ignore[call-overload]  # dict_keys
    raw = ds.get_item(last) if last is not None else None
    if not isinstance(raw, RawDataElement) or raw.value is None:
        return False
    undefined = raw.length == 0xFFFFFFFF
    if not undefined and len(raw.value) != raw.length:
        return False
    end = raw.value_tell + len(raw.value) + (8 if undefined else 0)  # + sequence delimiter
    return end == len(data)


def _dataset_offset(data: bytes) -> int:
    """Where the dataset starts: after preamble, 'DICM' and the group 0002 file meta."""
    pos = 132 if data[128:132] == b"DICM" else 0
    while pos + 8 <= len(data):
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_EXPLICIT_VRS:
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12 + length
        elif vr in _EXPLICIT_VRS:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
        else:  # implicit VR file meta (non-conformant, but seen in the wild)
            pos += 8 + struct.unpack_from("<I", data, pos + 4)[0]
    return pos
