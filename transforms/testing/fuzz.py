"""Hostile and broken inputs, generated deterministically from a seed, and a memory watchdog.

``fuzz_corpus(seed, count)`` mutates small valid DICOM objects the way attackers and
unlucky exports do, one family at a time (``FAMILIES``): bit flips, truncations anywhere,
corrupted lengths and VRs, huge declared sizes, deflate/zip/gzip bombs, deep nesting,
hostile archive member names, broken duplicates and non-finite rescale/window values.
Each case says how many rows it must produce (``rows``; None when only "at least one" is
known, as for a stream cut short), so a test can check that every input lands in exactly
one row. ``run_watched`` runs a command and samples the resident memory of its whole
process tree from /proc, killing it past a ceiling.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import signal
import struct
import subprocess
import tarfile
import time
import zipfile
import zlib
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

MiB = 1 << 20
FAMILIES = (
    "bitflip",
    "truncate",
    "length",
    "vr",
    "huge_size",
    "deflate_bomb",
    "zip_bomb",
    "gzip_bomb",
    "deep_nesting",
    "hostile_names",
    "duplicates",
    "nonfinite",
)


@dataclass(frozen=True)
class Case:
    """One input file: where to write it, its bytes, its family, the rows it must give."""

    name: str
    data: bytes
    family: str
    rows: int | None = 1


def _uid(rng: random.Random) -> str:
    return f"2.25.{rng.getrandbits(120)}"


def base_dataset(rng: random.Random, size: int = 16) -> Dataset:
    """A small, valid CT image (explicit VR little endian) with a nested sequence."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid.UID(_uid(rng))
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = uid.UID("2.25.1")
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = uid.CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(rng), _uid(rng)
    ds.PatientID = f"FUZZ{rng.randrange(8)}"
    ds.PatientName = "Fuzz^Patient"
    ds.AccessionNumber = f"ACC{rng.randrange(8)}"
    ds.Modality = "CT"
    item = Dataset()
    item.ReferencedSOPClassUID = uid.CTImageStorage
    item.ReferencedSOPInstanceUID = _uid(rng)
    ds.ReferencedImageSequence = Sequence([item])
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    arr = np.asarray(rng.choices(range(4096), k=size * size), dtype=np.uint16)
    ds.PixelData = arr.tobytes()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    with pydicom.config.disable_value_validation():
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def element_headers(data: bytes) -> list[tuple[int, int]]:
    """(offset, header length) of every top-level element after the file meta."""
    ds = pydicom.dcmread(io.BytesIO(data))
    out = []
    tags = sorted(ds.keys())  # tags, not elements: the raw elements keep their offsets
    for tag in tags:
        raw: Any = ds.get_item(tag)  # a RawDataElement: value_tell, length
        header = 12 if raw.VR in ("OB", "OW", "SQ", "UN", "UT", "UC", "UR", "OD", "OF", "OL") else 8
        if raw.length == 0xFFFFFFFF:
            header = 12
        out.append((raw.value_tell - header, header))
    return out


def _zeros_deflated(count: int, wbits: int = -zlib.MAX_WBITS, prefix: bytes = b"") -> bytes:
    """``prefix`` + ``count`` zero bytes, compressed in chunks (never held inflated)."""
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    out = [packer.compress(prefix)]
    chunk = bytes(MiB)
    for start in range(0, count, MiB):
        out.append(packer.compress(chunk[: min(MiB, count - start)]))
    out.append(packer.flush())
    return b"".join(out)


def _zip(members: list[tuple[str, bytes]], compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compress) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return out.getvalue()


def _zip_of_zeros(header: bytes, zeros: int) -> bytes:
    """A zip with one member: ``header`` then ``zeros`` zero bytes, written by streaming."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("member.dcm", "w") as f:
        f.write(header)
        chunk = bytes(MiB)
        for start in range(0, zeros, MiB):
            f.write(chunk[: min(MiB, zeros - start)])
    return out.getvalue()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _gzip_zeros(prefix: bytes, zeros: int) -> bytes:
    body = _zeros_deflated(zeros, 16 + zlib.MAX_WBITS, prefix)
    return body  # a gzip container (wbits 16 + 15)


def _tar(members: Seq[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tf:  # type: ignore[call-overload]
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tf.addfile(info, io.BytesIO(member[1]))
    return out.getvalue()


def nested_sequence(depth: int, tag: int = 0x00081115) -> bytes:
    """A sequence (Referenced Series by default) holding items nested ``depth`` sequences
    deep, undefined lengths throughout."""
    opening = b""
    closing = b""
    for _ in range(depth):
        opening += struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, 0xFFFFFFFF)
        opening += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        closing = (
            struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
            + closing
        )
    return opening + closing


def _splice_before(data: bytes, tag: int, insert: bytes) -> bytes:
    """``insert`` placed before the first top-level element whose tag is above ``tag``."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for offset, _ in element_headers(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if (group << 16 | element) > tag:
            return data[:offset] + insert + data[offset:]
    del ds
    return data + insert


def _family_cases(family: str, rng: random.Random, n: int, scale: int) -> list[Case]:
    """``n`` cases of one family; ``scale`` (bytes) sizes the bombs."""
    cases = []
    for i in range(n):
        name = f"{family}/{i:04d}"
        data = to_bytes(base_dataset(rng))
        if family == "bitflip":
            buf = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(len(buf))
                buf[pos] ^= 1 << rng.randrange(8)
            cases.append(Case(f"{name}.dcm", bytes(buf), family))
        elif family == "truncate":
            heads = element_headers(data)
            offset, header = rng.choice(heads)
            # Inside an element header half the time, anywhere the other half.
            cut = offset + rng.randrange(1, header) if i % 2 else rng.randrange(1, len(data))
            cases.append(Case(f"{name}.dcm", data[:cut], family))
        elif family in ("length", "vr"):
            buf = bytearray(data)
            offset, header = rng.choice(element_headers(data))
            if family == "vr":
                vr = rng.choice([b"SQ", b"UN", b"OB", b"\x00\x00", b"ZZ", b"UT"])
                buf[offset + 4 : offset + 6] = vr
            elif header == 12:
                length = rng.choice([0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF, rng.randrange(1 << 32)])
                struct.pack_into("<I", buf, offset + 8, length)
            else:
                struct.pack_into("<H", buf, offset + 6, rng.choice([0xFFFF, rng.randrange(65536)]))
            cases.append(Case(f"{name}.dcm", bytes(buf), family))
        elif family == "huge_size":
            ds = base_dataset(rng)
            choice = i % 4
            if choice == 0:
                ds.Rows = ds.Columns = 65535
            elif choice == 1:
                ds.NumberOfFrames = rng.choice([2147483647, 100000, 5000])
            elif choice == 2:  # RLE with a huge declared image: a few KB on disk
                ds.Rows = ds.Columns = 65535
                ds.file_meta.TransferSyntaxUID = uid.RLELossless
                rle_header = struct.pack("<16I", 1, 64, *([0] * 14))
                ds.PixelData = encapsulate([rle_header + b"\x81\x00" * 2048])
            else:
                ds.BitsAllocated, ds.SamplesPerPixel = 64, 3
                ds.Rows = ds.Columns = 30000
            cases.append(Case(f"{name}.dcm", to_bytes(ds), family))
        elif family == "deflate_bomb":
            ds = base_dataset(rng)
            ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
            plain = to_bytes(ds)
            start = _meta_end(plain)
            # The dataset, then a private OB element of zeros; deflated in chunks.
            zeros = scale * rng.randint(1, 4)
            body = zlib.decompress(plain[start:], -zlib.MAX_WBITS)
            tail = struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"OB", 0, zeros)
            cases.append(
                Case(
                    f"{name}.dcm",
                    plain[:start] + _zeros_deflated(zeros, prefix=body + tail),
                    family,
                )
            )
        elif family == "zip_bomb":
            if i % 2:
                payload = _zip_of_zeros(data, scale * rng.randint(1, 4))
                cases.append(Case(f"{name}.zip", payload, family))
            else:  # many members of zeros: small each, a bomb together
                members = [(f"m{j}.dcm", data + bytes(scale // 4)) for j in range(8)]
                cases.append(Case(f"{name}.zip", _zip(members), family, rows=8))
        elif family == "gzip_bomb":
            kind = i % 3
            if kind == 0:  # a gzip of zeros: one object, not DICOM (not an empty archive)
                cases.append(Case(f"{name}.gz", _gzip_zeros(b"", scale), family))
            elif kind == 1:
                cases.append(Case(f"{name}.dcm.gz", _gzip_zeros(data, scale * 2), family))
            else:  # a tar.gz of zero-filled members: may stop at the archive limit
                members = [(f"z{j}.dcm", data + bytes(scale // 2)) for j in range(6)]
                cases.append(Case(f"{name}.tar.gz", _tar(members), family, rows=None))
        elif family == "deep_nesting":
            depth = rng.choice([8, 40, 200, 1000, 5000])
            spliced = _splice_before(data, 0x00081115, nested_sequence(depth))
            cases.append(Case(f"{name}.dcm", spliced, family))
        elif family == "hostile_names":
            names = [
                "../../../../etc/evil.dcm",
                "/absolute/path.dcm",
                "a" * 240 + ".dcm",
                "ünïcødé/名前.dcm",
                "back\\slash.dcm",
                "dir/",
            ]
            if i % 2:
                members = [(n, to_bytes(base_dataset(rng))) for n in names if not n.endswith("/")]
                cases.append(Case(f"{name}.zip", _zip(members), family, rows=len(members)))
            else:
                link = tarfile.TarInfo("link-to-passwd.dcm")
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                device = tarfile.TarInfo("dev-null.dcm")
                device.type = tarfile.CHRTYPE
                members = [(n, to_bytes(base_dataset(rng))) for n in names[:5]]
                tar_members: list[tarfile.TarInfo | tuple[str, bytes]] = [*members, link, device]
                tar = _tar(tar_members, mode="w")
                cases.append(Case(f"{name}.tar", tar, family, rows=len(members) + 2))
        elif family == "duplicates":
            # A truncated copy first in sorted order: the complete one must still win.
            cases.append(
                Case(f"{name}-a-cut.dcm", data[: rng.randrange(200, len(data) - 10)], family)
            )
            cases.append(Case(f"{name}-b-whole.dcm", data, family))
        elif family == "nonfinite":
            ds = base_dataset(rng)
            value = rng.choice(["inf", "-inf", "nan", "1e300", "0"])
            keyword = rng.choice(
                ["RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"]
            )
            ds[keyword].value = value
            cases.append(Case(f"{name}.dcm", to_bytes(ds), family))
    return cases


def _meta_end(data: bytes) -> int:
    from transforms.dicom_io.scan import file_meta

    return file_meta(data)[0]


def fuzz_corpus(
    seed: int, count: int, families: tuple[str, ...] = FAMILIES, scale: int = 4 * MiB
) -> list[Case]:
    """About ``count`` cases spread over ``families``, the same for the same arguments."""
    rng = random.Random(seed)
    per_family = max(1, count // len(families))
    cases = []
    for family in families:
        cases += _family_cases(family, rng, per_family, scale)
    return cases


def write_corpus(cases: list[Case], root: str) -> None:
    for case in cases:
        path = os.path.join(root, case.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(case.data)


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return total


@dataclass(frozen=True)
class Watched:
    returncode: int
    peak_rss: int
    seconds: float
    stderr: str
    killed: str | None  # "memory" or "time" when the watchdog stopped it


def run_watched(
    argv: list[str], ceiling_bytes: int, timeout: float, env: dict | None = None
) -> Watched:
    """Runs ``argv``, sampling its process tree's RSS; kills it past the ceiling or time."""
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    peak, killed = 0, None
    import threading

    err: list[bytes] = []
    stderr = proc.stderr
    assert stderr is not None  # opened with stderr=PIPE
    reader = threading.Thread(target=lambda: err.append(stderr.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        if peak > ceiling_bytes or time.monotonic() - start > timeout:
            killed = "memory" if peak > ceiling_bytes else "time"
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    reader.join(10)
    seconds = time.monotonic() - start
    return Watched(proc.returncode, peak, seconds, b"".join(err).decode("utf-8", "replace"), killed)
