"""A structural walk over a DICOM object's bytes, before pydicom parses it.

pydicom reads leniently: a file cut short loses its last element without a word, nested
sequences recurse until Python's stack gives out, a deflated dataset is inflated whole,
and a run of zero bytes becomes millions of empty elements. This walk reads only element
headers (no values are copied), so it is cheap, and it refuses, with a named error type:

- ``truncated``: the bytes end inside an element header, a value, an item or a sequence;
- ``too_deep``: sequences nested deeper than ``Limits.max_sequence_depth``;
- ``inflate_limit``: a deflated dataset inflating past ``Limits.max_inflated_bytes``
  (inflated incrementally, never past the limit);
- ``parse_timeout``: a walk that takes more than ``Limits.parse_seconds`` of CPU;
- ``invalid_dicom``: malformed items, elements out of order, kilobytes of zero padding.
"""

from __future__ import annotations

import struct
import zlib

from pydicom.datadict import dictionary_VR

from transforms.deadletter import StageError
from transforms.dicom_io.limits import (
    INFLATE_LIMIT,
    TOO_DEEP,
    Deadline,
    Limits,
    inflate_message,
)
from transforms.dicom_io.objects import _EXPLICIT_VRS, _LONG_EXPLICIT_VRS

DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_TRANSFER_SYNTAX = 0x00020010
_ZERO_PADDING_OK = 1024  # trailing zero bytes tolerated after a dataset
_CHECK_EVERY = 1024  # elements between two looks at the clock
_VR_CACHE: dict[int, str] = {}


def _truncated(where: str) -> StageError:
    return StageError("truncated", f"object ends inside {where}")


def _invalid(why: str) -> StageError:
    return StageError("invalid_dicom", why)


def _dictionary_vr(tag: int) -> str:
    vr = _VR_CACHE.get(tag)
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
        _VR_CACHE[tag] = vr
    return vr


def inflate(raw: bytes, limit: int) -> bytes:
    """A raw deflate stream inflated, refusing (before allocating more) past ``limit`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error:
        raise StageError("truncated", "deflated dataset is cut short or corrupt") from None
    if len(out) > limit:
        raise StageError(INFLATE_LIMIT, f"deflated dataset {inflate_message(limit)}")
    if not inflater.eof:
        raise StageError("truncated", "deflated dataset is cut short")
    return out


def file_meta(data: bytes) -> tuple[int, str | None]:
    """Where the dataset starts (after preamble, 'DICM' and group 0002) and the transfer
    syntax the file meta names (None without one)."""
    pos = 132 if data[128:132] == b"DICM" else 0
    syntax = None
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_EXPLICIT_VRS:
            if pos + 12 > len(data):
                raise _truncated("the file meta information")
            start = pos + 12
            length = struct.unpack_from("<I", data, pos + 8)[0]
        elif vr in _EXPLICIT_VRS:
            start = pos + 8
            length = struct.unpack_from("<H", data, pos + 6)[0]
        else:  # implicit VR file meta (non-conformant, but seen in the wild)
            start = pos + 8
            length = struct.unpack_from("<I", data, pos + 4)[0]
        if length == _UNDEFINED or start + length > len(data):
            raise _truncated("the file meta information")
        if (group << 16 | element) == _TRANSFER_SYNTAX:
            syntax = data[start : start + length].decode("ascii", "replace").strip(" \0")
        pos = start + length
    if data[128:132] == b"DICM" and pos < len(data) and len(data) - pos < 8:
        raise _truncated("the first element header")
    return pos, syntax


class _Walker:
    def __init__(self, data: bytes, little: bool, limits: Limits, deadline: Deadline):
        self.data = data
        self.end = len(data)
        self.order = "<" if little else ">"
        self.delimiter = struct.pack(self.order + "HHI", 0xFFFE, 0xE0DD, 0)
        self.limits = limits
        self.deadline = deadline
        self.elements = 0

    def _tag_length(self, pos: int, end: int, where: str) -> tuple[int, int]:
        if pos + 8 > end:
            raise _truncated(where)
        group, element, length = struct.unpack_from(self.order + "HHI", self.data, pos)
        return group << 16 | element, length

    def dataset(self, pos: int, end: int, depth: int, implicit: bool, item: bool) -> int:
        """Walks elements from ``pos``; an undefined-length item ends at its delimiter.
        Returns the position after the dataset."""
        previous = -1
        data, order = self.data, self.order
        while pos < end:
            self.elements += 1
            if self.elements % _CHECK_EVERY == 0:
                self.deadline.check()
            if pos + 8 > end:
                raise _truncated("an element header")
            group, element = struct.unpack_from(order + "HH", data, pos)
            tag = group << 16 | element
            if group == 0xFFFE:  # item and delimiter tags: no VR, a 4-byte length
                if tag == _ITEM_END and item:
                    return pos + 8
                raise _invalid("malformed dataset (a delimiter out of place)")
            if depth == 0 and tag <= previous:
                if tag == 0 and data.count(0, pos) == end - pos:
                    if end - pos > _ZERO_PADDING_OK:
                        raise _invalid(f"dataset is followed by {end - pos} zero bytes")
                    return end
                raise _invalid("elements out of order (damaged or not DICOM)")
            previous = tag
            vr = None
            if implicit:
                length = struct.unpack_from(order + "I", data, pos + 4)[0]
                pos += 8
            else:
                vr = data[pos + 4 : pos + 6]
                if vr in _LONG_EXPLICIT_VRS:
                    if pos + 12 > end:
                        raise _truncated("an element header")
                    length = struct.unpack_from(order + "I", data, pos + 8)[0]
                    pos += 12
                elif vr in _EXPLICIT_VRS:
                    length = struct.unpack_from(order + "H", data, pos + 6)[0]
                    pos += 8
                else:  # pydicom would fail on first access to it, anywhere downstream
                    raise _invalid("an element with an unknown value representation")
            pos = self._value(tag, vr, length, pos, end, depth, implicit)
        if item:
            raise _truncated("a sequence item")
        return pos

    def _value(
        self, tag: int, vr: bytes | None, length: int, pos: int, end: int, depth: int, implicit
    ) -> int:
        if vr is None:
            sequence = _dictionary_vr(tag) == "SQ" or (length == _UNDEFINED and tag != _PIXEL_DATA)
            inner = implicit
        elif vr == b"SQ":
            sequence, inner = True, implicit
        elif vr == b"UN" and tag != _PIXEL_DATA:
            # An unknown-VR sequence holds implicit VR items (PS3.5 6.2.2); pydicom reads
            # one as a sequence when its length is undefined or the dictionary says SQ.
            sequence = length == _UNDEFINED or _dictionary_vr(tag) == "SQ"
            inner = True
        else:
            sequence, inner = False, implicit
        if sequence:
            return self.sequence(pos, end, depth + 1, inner, length)
        if length == _UNDEFINED:  # encapsulated pixel data: fragments up to a delimiter
            found = self.data.find(self.delimiter, pos, end)
            if found < 0:
                raise _truncated("encapsulated pixel data")
            return found + 8
        if pos + length > end:
            raise _truncated(f"the value of element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        return pos + length

    def sequence(self, pos: int, end: int, depth: int, implicit: bool, length: int) -> int:
        if depth > self.limits.max_sequence_depth:
            raise StageError(
                TOO_DEEP, f"sequences nested deeper than {self.limits.max_sequence_depth}"
            )
        undefined = length == _UNDEFINED
        if not undefined:
            if pos + length > end:
                raise _truncated("a sequence")
            end = pos + length
        while True:
            if not undefined and pos == end:
                return pos
            tag, item_length = self._tag_length(pos, end, "a sequence")
            pos += 8
            self.elements += 1
            if tag == _SEQUENCE_END and undefined:
                return pos
            if tag != _ITEM:
                raise _invalid("malformed sequence (an item tag expected)")
            if item_length == _UNDEFINED:
                pos = self.dataset(pos, end, depth, implicit, item=True)
            elif pos + item_length > end:
                raise _truncated("a sequence item")
            else:
                self.dataset(pos, pos + item_length, depth, implicit, item=False)
                pos += item_length


def _little_endian(body: bytes, start: int, syntax: str | None) -> bool:
    if syntax is not None:
        return syntax != BIG_ENDIAN
    # No file meta: guess as pydicom does, from how the first group number reads.
    (little,) = struct.unpack_from("<H", body, start) if start + 2 <= len(body) else (0,)
    return little <= 0x00FF


def check_structure(data: bytes, limits: Limits) -> str | None:
    """Walks the whole object; returns the transfer syntax its file meta names.

    Raises:
        StageError: ``truncated``, ``too_deep``, ``inflate_limit``, ``parse_timeout`` or
            ``invalid_dicom``, as the module docstring says.
    """
    deadline = Deadline(limits.parse_seconds)
    if 128 < len(data) < 132 and b"DICM".startswith(data[128:]):
        raise _truncated("the DICM prefix")
    start, syntax = file_meta(data)
    body = data
    if syntax == DEFLATED:
        body, start = inflate(data[start:], limits.max_inflated_bytes), 0
    if start >= len(body):
        raise StageError("truncated", "object ends before its dataset begins")
    walker = _Walker(body, _little_endian(body, start, syntax), limits, deadline)
    # pydicom, too, believes the bytes over the transfer syntax when they disagree.
    implicit = body[start + 4 : start + 6] not in _EXPLICIT_VRS
    try:
        walker.dataset(start, len(body), 0, implicit, item=False)
    except RecursionError:  # a depth limit set beyond what Python's stack allows
        raise StageError(TOO_DEEP, "sequences nested too deep to walk") from None
    deadline.check()
    return syntax
