"""Writing a parsed dataset back to bytes, as pydicom writes it but at a fraction of its cost
per element: elements never converted since they were read are copied as read, and the
plain values (strings, text, person names, binary numbers) are encoded here with
pydicom's own rules; anything else goes to pydicom's element writer. pydicom builds a
buffer object per element, raw ones included, which is most of the cost of a write."""

import struct

from pydicom.charset import (
    convert_encodings,
    default_encoding,
    encode_string,
    need_tail_escape_sequence_encodings,
)
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO, DicomIO
from pydicom.filewriter import write_data_element
from pydicom.filewriter import write_dataset as pydicom_write_dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, PersonName

_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_GROUP_LENGTH = 0x00020000
# By byte order: tag, VR and 16-bit length (explicit); tag, VR, reserved and 32-bit length
# (explicit); tag and 32-bit length (implicit, and item headers).
_HEADERS = {
    little: (struct.Struct(f"{o}HH2sH"), struct.Struct(f"{o}HH2sHL"), struct.Struct(f"{o}HHL"))
    for little, o in ((True, "<"), (False, ">"))
}

# pydicom's writers for these VRs, restated for plain values (str, int, float and lists of
# them): write_string (Latin-1, space or NUL padding), write_number_string, write_text
# (encode_string in the dataset's character sets), write_PN and write_numbers.
_STRINGS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UR", "UI"})
_NUMBER_STRINGS = frozenset({"DS", "IS"})
_TEXTS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_EMPTIABLE = (str, bytes, PersonName, list, tuple, MultiValue)
_SPLIT = frozenset({"LO", "SH", "UC", "PN"})  # text VRs whose backslash separates values
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_ONE_NUMBER = {
    (little, code): struct.Struct(("<" if little else ">") + code)
    for little in (True, False)
    for code in _NUMBERS.values()
}


def write_dataset(
    fp: DicomIO, ds: Dataset, parent_encoding: str | list[str] = default_encoding
) -> None:
    """Encodes ``ds`` into ``fp`` in ``fp``'s transfer syntax (``fp.is_implicit_VR`` and
    ``fp.is_little_endian`` must be set): the bytes of ``pydicom.filewriter.write_dataset``.

    A dataset whose syntax or character set differs from the one it was read in goes to
    pydicom whole (its raw values need converting, its ambiguous VRs resolving), unless it
    is a flat one built in memory (the marks' code items) that needs neither.
    """
    as_read = (fp.is_implicit_VR, fp.is_little_endian) == ds.original_encoding and (
        ds.original_character_set == ds._character_set
    )
    if not as_read and not _plain(ds):
        pydicom_write_dataset(fp, ds, parent_encoding)
        return
    _Writer(fp).elements(ds, ds.get("SpecificCharacterSet", parent_encoding))


def _plain(ds: Dataset) -> bool:
    """Built in memory, without sequences, raw elements or undecided VRs ("US or SS")."""
    return ds.original_encoding == (None, None) and all(
        type(e) is DataElement and e.VR != "SQ" and " or " not in e.VR for e in ds._dict.values()
    )


def write_file_meta(fp: DicomIO, meta: FileMetaDataset) -> None:
    """The file meta group as ``pydicom.filewriter.write_file_meta_info(enforce_standard=
    True)`` writes it (required elements checked, the group length set and written).

    Raises:
        AttributeError: a required element is missing or empty (pydicom's error).
        ValueError: an element outside group 2.
    """
    validate_file_meta(meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = False, True
    _Writer(body).elements(meta, default_encoding, skip=_GROUP_LENGTH)
    encoded = body.getvalue()
    meta.FileMetaInformationGroupLength = len(encoded)
    fp.write(b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<L", len(encoded)) + encoded)


class _Writer:
    """Writes the elements of datasets into one file-like, in its transfer syntax."""

    def __init__(self, fp: DicomIO) -> None:
        self.fp = fp
        self.implicit = fp.is_implicit_VR
        self.little = fp.is_little_endian
        self.order = "<" if self.little else ">"
        self.short, self.long, self.plain = _HEADERS[self.little]

    def elements(self, ds: Dataset, encodings, skip: int | None = None) -> None:
        fp = self.fp
        charsets = convert_encodings(encodings or [default_encoding])
        stored = ds._dict  # the elements as stored: get_item would make a Tag of each key
        for tag in sorted(stored, key=int):
            t = int(tag)
            if (t & 0xFFFF == 0 and t >> 16 > 6) or t == skip:
                continue  # retired group lengths are not written (PS3.5 7.2)
            elem = stored[tag]
            if isinstance(elem, RawDataElement):
                value = elem.value
                if value is None or elem.length == _UNDEFINED:  # deferred; encapsulated
                    write_data_element(fp, ds.get_item(tag), encodings)
                elif not self._header(t, elem.VR, len(value)):
                    write_data_element(fp, elem, encodings)  # pydicom's warning or error
                else:
                    fp.write(value)
            elif elem.VR == "SQ":
                self._sequence(t, elem, charsets)
            else:
                value = None if elem.is_undefined_length else _encode(elem, charsets, self.order)
                if value is None or not self._header(t, elem.VR, len(value)):
                    write_data_element(fp, elem, encodings)
                else:
                    fp.write(value)

    def _header(self, t: int, vr: str | None, size: int) -> bool:
        """Writes an element's tag, VR and length; False (nothing written) where pydicom
        would warn (a 16-bit length overflowing) or refuse (an undecided VR)."""
        if self.implicit:
            self.fp.write(self.plain.pack(t >> 16, t & 0xFFFF, size))
        elif vr in _LONG_VRS:
            self.fp.write(self.long.pack(t >> 16, t & 0xFFFF, vr.encode(), 0, size))
        elif vr is not None and len(vr) == 2 and size <= 0xFFFF:
            self.fp.write(self.short.pack(t >> 16, t & 0xFFFF, vr.encode(), size))
        else:
            return False
        return True

    def _sequence(self, t: int, elem: DataElement, charsets: list[str]) -> None:
        """A sequence and its items, laid out as pydicom lays them out: the sequence's
        length undefined if it was read so, each item's length filled in unless the item
        was read with an undefined length."""
        fp, plain = self.fp, self.plain
        undefined = elem.is_undefined_length
        start = fp.tell()
        fp.write(b"\x00" * (plain.size if self.implicit else self.long.size))
        items_from = fp.tell()
        for item in elem.value:
            fp.write(plain.pack(_ITEM >> 16, _ITEM & 0xFFFF, _UNDEFINED))
            length_at = fp.tell()
            write_dataset(fp, item, charsets)
            if getattr(item, "is_undefined_length_sequence_item", False):
                fp.write(plain.pack(_ITEM_END >> 16, _ITEM_END & 0xFFFF, 0))
            else:
                end = fp.tell()
                fp.seek(length_at - 4)
                fp.write((end - length_at).to_bytes(4, "little" if self.little else "big"))
                fp.seek(end)
        end = fp.tell()
        length = _UNDEFINED if undefined else end - items_from
        fp.seek(start)
        if self.implicit:
            fp.write(plain.pack(t >> 16, t & 0xFFFF, length))
        else:
            fp.write(self.long.pack(t >> 16, t & 0xFFFF, b"SQ", 0, length))
        fp.seek(end)
        if undefined:
            fp.write(plain.pack(_SEQUENCE_END >> 16, _SEQUENCE_END & 0xFFFF, 0))


def _encode(elem: DataElement, charsets: list[str], order: str) -> bytes | None:
    return encode_value(elem.VR, elem.value, charsets, order == "<")


def encode_value(vr: str, value, encodings, little: bool) -> bytes | None:
    """The bytes pydicom's writer writes for ``value`` as an element of ``vr`` would hold it
    (str, int, float and lists of them; UID, PersonName, IS and DS objects), padded; None
    where pydicom must encode it (anything unusual: it raises or warns as it would).

    Args:
        encodings: the character sets of the dataset, as SpecificCharacterSet names them
            or as pydicom converts them (only text and person names use them).
        little: the byte order of binary numbers.
    """
    if value is None:
        return b""  # pydicom writes nothing for an empty value
    cls = type(value)
    if cls is str or cls is UID:  # the usual case first: one string
        if not value:
            return b""
        if vr in _STRINGS:
            if not value.isascii():
                return None
            raw = value.encode("ascii")
            return raw + (b"\x00" if vr == "UI" else b" ") * (len(raw) % 2)
        many = "\\" in value and vr in _SPLIT
        values = value.split("\\") if many else [value]  # as DataElement splits it
    elif cls is list or cls is tuple or cls is MultiValue:
        if not value:
            return b""
        many, values = True, value
    elif isinstance(value, _EMPTIABLE) and not value:
        return b""
    else:
        many, values = False, [value]
    if vr in _STRINGS:
        if not all(isinstance(v, str) for v in values):
            return None
        try:
            raw = "\\".join(values).encode(default_encoding)
        except UnicodeEncodeError:
            return None
        return raw + (b"\x00" if vr == "UI" else b" ") * (len(raw) % 2)
    if vr in _NUMBER_STRINGS:
        texts = [_number_string(v) for v in values]
        if any(t is None for t in texts):
            return None
        try:
            raw = "\\".join(texts).encode(default_encoding)  # type: ignore[arg-type]
        except UnicodeEncodeError:
            return None
        return raw + b" " * (len(raw) % 2)
    if vr in _TEXTS or vr == "PN":
        charsets = _charsets(encodings)
        plain = charsets[0] not in need_tail_escape_sequence_encodings
        if plain and not many and cls is str and value.isascii():
            raw = value.encode("ascii")  # what every such character set makes of ASCII
            return raw + b" " * (len(raw) % 2)
        if not all(isinstance(v, (str, PersonName)) for v in values):
            return None
        if plain and all(type(v) is str and v.isascii() for v in values):
            raw = "\\".join(values).encode("ascii")  # what every such character set makes of ASCII
        elif vr == "PN":
            names = [v if isinstance(v, PersonName) else PersonName(v) for v in values]
            raw = b"\\".join(n.encode(charsets) for n in names)
        elif all(isinstance(v, str) for v in values):
            raw = b"\\".join(encode_string(v, charsets) for v in values)
        else:
            return None
        return raw + b" " * (len(raw) % 2)
    code = _NUMBERS.get(vr)
    if code is None or (many and vr == "SS") or isinstance(value, str):
        return None  # LUT descriptors (US or SS) have their own rule in pydicom
    if cls is int:
        try:
            return _ONE_NUMBER[little, code].pack(value)
        except struct.error:
            return None
    if not all(isinstance(v, (int, float)) for v in values):
        return None
    try:
        return struct.pack(f"{'<' if little else '>'}{len(values)}{code}", *values)
    except struct.error:
        return None


def _charsets(encodings) -> list[str]:
    """pydicom's Python codecs for a dataset's character sets (remembered: a corpus has few)."""
    key = encodings if isinstance(encodings, str) or encodings is None else tuple(encodings)
    found = _CHARSETS.get(key)
    if found is None:
        found = _CHARSETS[key] = convert_encodings(encodings or [default_encoding])
    return found


_CHARSETS: dict = {}


def _number_string(value) -> str | None:
    """An IS or DS value as pydicom writes it: the string it was made from, stripped."""
    if hasattr(value, "original_string"):
        return value.original_string
    if isinstance(value, str):
        return value.strip()  # what IS and DS keep of a string they are made from
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (type(value) is not float and isinstance(value, float)):
        return str(value)  # an int, or a DS made from a number (its own str)
    return None  # a plain float: DS would format it its own way
