"""Objects and archive members: sniff what a file is, stream zip/tar/gzip members."""

import gzip
import io
import os
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.deadletter import (
    STAGE_READ,
    DeadLetter,
    StageError,
)
from transforms.dicom_io.objects import (
    _ARCHIVE_KINDS,
    _EXPLICIT_VRS,
    _HEAD_BYTES,
    DEFAULT_MAX_OBJECT_BYTES,
    KIND_DICOM,
    KIND_EMPTY,
    KIND_GZIP,
    KIND_TAR,
    KIND_UNKNOWN,
    KIND_ZIP,
    MAX_ARCHIVE_DEPTH,
    SourceObject,
)


def sniff(head: bytes) -> str:
    """Recognises an object by its first bytes, never by its name."""
    if not head:
        return KIND_EMPTY
    if len(head) >= 132 and head[128:132] == b"DICM":
        return KIND_DICOM
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return KIND_ZIP
    if head.startswith(b"\x1f\x8b"):
        return KIND_GZIP  # a gzipped tar, or one gzipped object
    if head.startswith((b"BZh", b"\xfd7zXZ\x00")):
        return KIND_TAR
    if len(head) >= 262 and head[257:262] == b"ustar":
        return KIND_TAR
    if _looks_like_bare_dataset(head):
        return KIND_DICOM
    return KIND_UNKNOWN


def _looks_like_bare_dataset(head: bytes) -> bool:
    """A dataset written without preamble and file meta (old PACS exports do this)."""
    if len(head) < 8:
        return False
    for order in "<>":
        group, element = struct.unpack(order + "HH", head[:4])
        if group not in (0x0002, 0x0008) or element > 0x0020:
            continue
        if head[4:6] in _EXPLICIT_VRS:
            return True
        (length,) = struct.unpack(order + "I", head[4:8])  # implicit VR: a 4-byte length
        if length < 1024:
            return True
    return False


def iter_objects(
    path: str, size: int, max_bytes: int = DEFAULT_MAX_OBJECT_BYTES
) -> Iterator[SourceObject | DeadLetter]:
    """Yields every DICOM candidate in the object at ``path``, and a dead letter for the rest.

    Each member of an archive gets its own item; a loose archive is read in place (zip
    through its central directory, tar as a stream), never loaded whole.

    Args:
        path: the object's URI, as FileSystems names it.
        size: its size in bytes, from the listing.
        max_bytes: the cap for one loose object or one archive member.
    """
    if size == 0:
        yield DeadLetter(path, None, STAGE_READ, KIND_EMPTY, "object is empty (0 bytes)")
        return
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        head = f.read(_HEAD_BYTES)
        kind = sniff(head)
        if kind in _ARCHIVE_KINDS:
            f.seek(0)
            yield from _iter_archive(f, kind, path, None, max_bytes, depth=1)
        else:
            yield _leaf(f, head, kind, size, path, None, max_bytes)


@dataclass(frozen=True)
class _Nested:
    """An archive found inside an archive: its bytes (at most the cap) and its kind."""

    kind: str
    data: bytes


class _Readable(Protocol):
    """What a member is read from: a file, a zip or tar member stream, a gzip stream."""

    def read(self, size: int = -1, /) -> bytes: ...


def _leaf(
    stream: _Readable,
    head: bytes,
    kind: str,
    size: int | None,
    source: str,
    member: str | None,
    max_bytes: int,
) -> SourceObject | DeadLetter:
    """A non-archive object: DICOM is read (up to the cap); anything else is refused unread."""
    if kind == KIND_EMPTY:
        return DeadLetter(source, member, STAGE_READ, KIND_EMPTY, "object is empty (0 bytes)")
    if kind == KIND_UNKNOWN:
        message = "content is not DICOM and not a known archive"
        return DeadLetter(source, member, STAGE_READ, "not_dicom", message)
    try:
        return SourceObject(source, member, _read_capped(stream, head, size, max_bytes))
    except StageError as e:
        return DeadLetter(source, member, STAGE_READ, e.error_type, e.message)


def _read_member(
    stream: _Readable, size: int | None, source: str, member: str, max_bytes: int, depth: int
) -> SourceObject | DeadLetter | _Nested:
    """Reads one archive member. Errors of the stream itself propagate to the caller."""
    head = stream.read(_HEAD_BYTES)
    kind = sniff(head)
    if kind not in _ARCHIVE_KINDS:
        return _leaf(stream, head, kind, size, source, member, max_bytes)
    if depth >= MAX_ARCHIVE_DEPTH:
        message = "archive nested deeper than supported"
        return DeadLetter(source, member, STAGE_READ, "nested_archive", message)
    try:
        return _Nested(kind, _read_capped(stream, head, size, max_bytes))
    except StageError as e:
        return DeadLetter(source, member, STAGE_READ, e.error_type, e.message)


def _expand(
    item: SourceObject | DeadLetter | _Nested, source: str, member: str, max_bytes: int, depth: int
) -> Iterator[SourceObject | DeadLetter]:
    if isinstance(item, _Nested):
        archive = io.BytesIO(item.data)
        yield from _iter_archive(archive, item.kind, source, member, max_bytes, depth + 1)
    else:
        yield item


def _read_capped(stream: _Readable, head: bytes, size: int | None, max_bytes: int) -> bytes:
    if size is not None and size > max_bytes:
        raise StageError("too_large", f"object is {size} bytes, over the cap of {max_bytes}")
    rest = stream.read(max_bytes + 1 - len(head))
    if len(head) + len(rest) > max_bytes:
        raise StageError("too_large", f"object is over the cap of {max_bytes} bytes")
    return head + rest


def _join_member(outer: str | None, inner: str) -> str:
    return inner if outer is None else f"{outer}!/{inner}"


def _iter_archive(
    archive: BinaryIO,
    kind: str,
    source: str,
    outer: str | None,
    max_bytes: int,
    depth: int,
) -> Iterator[SourceObject | DeadLetter]:
    """Every member of one archive; an archive with no files at all still gets a row."""
    if kind == KIND_ZIP:
        members = _iter_zip(archive, source, outer, max_bytes, depth)
    else:
        members = _iter_tar(archive, kind, source, outer, max_bytes, depth)
    empty = True
    for item in members:
        empty = False
        yield item
    if empty:
        yield DeadLetter(source, outer, STAGE_READ, "empty_archive", "archive holds no files")


def _iter_zip(
    archive: BinaryIO, source: str, outer: str | None, max_bytes: int, depth: int
) -> Iterator[SourceObject | DeadLetter]:
    try:
        zf = zipfile.ZipFile(archive)
    except Exception:  # BadZipFile, or the stream failing under it
        message = "zip central directory is unreadable"
        yield DeadLetter(source, outer, STAGE_READ, "corrupt_archive", message)
        return
    with zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            member = _join_member(outer, info.filename)
            if info.flag_bits & 0x1:
                message = "zip member is encrypted"
                yield DeadLetter(source, member, STAGE_READ, "encrypted_member", message)
                continue
            if info.file_size == 0:
                yield DeadLetter(source, member, STAGE_READ, KIND_EMPTY, "member is empty")
                continue
            # Read the member completely inside the try: zip checks the CRC at the end, and
            # any codec (deflate, bzip2, lzma) may fail on damaged bytes.
            try:
                with zf.open(info) as stream:
                    item = _read_member(stream, info.file_size, source, member, max_bytes, depth)
            except Exception as e:
                message = f"zip member cannot be decompressed ({type(e).__name__})"
                item = DeadLetter(source, member, STAGE_READ, "corrupt_archive_member", message)
            yield from _expand(item, source, member, max_bytes, depth)


def _iter_tar(
    archive: BinaryIO, kind: str, source: str, outer: str | None, max_bytes: int, depth: int
) -> Iterator[SourceObject | DeadLetter]:
    try:
        tar = tarfile.open(fileobj=archive, mode="r|*")  # noqa: SIM115 - closed below
    except Exception:
        if kind != KIND_GZIP:
            message = "archive cannot be opened"
            yield DeadLetter(source, outer, STAGE_READ, "corrupt_archive", message)
            return
        # Not a tarball: a single gzip-compressed object (e.g. IMG0001.dcm.gz).
        archive.seek(0)
        inner = _join_member(outer, os.path.basename(outer or source).removesuffix(".gz"))
        try:
            with gzip.GzipFile(fileobj=archive) as gz:
                item = _read_member(gz, None, source, inner, max_bytes, depth)
        except Exception as e:
            message = f"gzip stream is corrupt ({type(e).__name__})"
            item = DeadLetter(source, inner, STAGE_READ, "corrupt_archive", message)
        yield from _expand(item, source, inner, max_bytes, depth)
        return
    done = 0
    with tar:
        members = iter(tar)
        while True:
            member = None
            try:
                info = next(members, None)
                if info is None:
                    return
                if info.isdir():
                    continue
                member = _join_member(outer, info.name)
                if not info.isfile():
                    message = "tar member is a link or device, not a file"
                    item = DeadLetter(source, member, STAGE_READ, "unsupported_member", message)
                elif info.size == 0:
                    item = DeadLetter(source, member, STAGE_READ, KIND_EMPTY, "member is empty")
                else:
                    stream = tar.extractfile(info)
                    assert stream is not None  # None only for a member that is not a file
                    item = _read_member(stream, info.size, source, member, max_bytes, depth)
            except Exception as e:
                # A broken stream hides whatever follows it: one row stands for the rest.
                where = "inside this member" if member else "between members"
                message = (
                    f"archive stream breaks {where} after {done} members ({type(e).__name__}); "
                    "later members cannot be listed"
                )
                yield DeadLetter(source, member or outer, STAGE_READ, "corrupt_archive", message)
                return
            done += 1
            yield from _expand(item, source, member, max_bytes, depth)
