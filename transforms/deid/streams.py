"""The pixel-stream step: Pixel Data and ICC profiles are rebuilt, never copied.

- Encapsulated frames lose their JPEG COM and APPn segments (JPEG, JPEG-LS) and their
  COM marker segments (JPEG 2000) without re-encoding: the entropy-coded data is copied
  as it is, so a lossy frame loses nothing more. An Adobe APP14 segment (12 bytes of
  flags that tell a decoder the colour transform, no room for text) stays.
- Native Pixel Data, Float Pixel Data and Double Float Pixel Data are cut to their
  declared size (no bytes after the last frame).
- Bits above BitsStored (where overlays once lived) are cleared on every transfer syntax:
  in place for native data; a compressed stream whose precision exceeds BitsStored is
  decoded, cleared and stored uncompressed (only when such bits are set).
- ICC profiles lose the text of their text-bearing tags (descriptions, copyright,
  device manufacturer and model descriptions); a profile that does not parse goes.
"""

from __future__ import annotations

import struct

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRBigEndian

from transforms.deid.pixels import store_frames
from transforms.deid.values import _PIXEL_DATA, _element, _has, _set
from transforms.deid.walk import WalkState

ICC_PROFILE = 0x00282000
_FLOAT_PIXELS = {0x7FE00008: 4, 0x7FE00009: 8}  # Float and Double Float Pixel Data
_EXTENDED_OFFSETS = (0x7FE00001, 0x7FE00002)  # ExtendedOffsetTable and its lengths
_NO_LENGTH = {0x01, *range(0xD0, 0xDA)}  # TEM, RSTn, SOI, EOI


def strip_jpeg(frame: bytes) -> bytes:
    """A JPEG or JPEG-LS frame without COM and APPn segments (Adobe APP14 kept) and without
    anything but padding after its EOI; the entropy-coded data, and every other segment,
    copied byte for byte."""
    if not frame.startswith(b"\xff\xd8"):
        return frame
    out = bytearray(b"\xff\xd8")
    i, n = 2, len(frame)
    while i < n:
        if frame[i] != 0xFF:  # entropy-coded data: copy up to the next marker
            j = i
            while j < n:
                j = frame.find(b"\xff", j)
                if j < 0 or j + 1 >= n:
                    j = n
                    break
                if frame[j + 1] == 0x00 or 0xD0 <= frame[j + 1] <= 0xD7 or frame[j + 1] == 0xFF:
                    j += 2 if frame[j + 1] != 0xFF else 1
                    continue
                break
            out += frame[i:j]
            i = j
            continue
        while i + 1 < n and frame[i + 1] == 0xFF:  # fill bytes
            i += 1
        if i + 1 >= n:
            out += frame[i:]
            break
        marker = frame[i + 1]
        if marker in _NO_LENGTH:
            out += frame[i : i + 2]
            i += 2
            if marker == 0xD9:
                rest = frame[i:]
                if not rest.strip(b"\x00"):
                    out += rest  # padding only: kept as the frame had it
                break  # anything else after EOI (text, say) goes
            continue
        if i + 4 > n:
            out += frame[i:]
            break
        length = struct.unpack(">H", frame[i + 2 : i + 4])[0]
        end = i + 2 + length
        segment = frame[i:end]
        adobe = marker == 0xEE and length == 14 and segment[4:9] == b"Adobe"
        if not ((0xE0 <= marker <= 0xEF and not adobe) or marker == 0xFE):
            out += segment
        i = end
    return bytes(out)


def strip_j2k(frame: bytes) -> bytes:
    """A JPEG 2000 codestream without COM segments (main and tile-part headers); tile-part
    lengths follow, and TLM (optional tile-part lengths) goes when a length changed."""
    if not frame.startswith(b"\xff\x4f"):
        return frame
    out = bytearray(b"\xff\x4f")
    i, n = 2, len(frame)
    main: list[bytes] = []
    while i + 4 <= n and frame[i : i + 2] != b"\xff\x90":
        length = struct.unpack(">H", frame[i + 2 : i + 4])[0]
        main.append(frame[i : i + 2 + length])
        i += 2 + length
    tiles: list[bytes] = []
    changed = False
    while i + 12 <= n and frame[i : i + 2] == b"\xff\x90":
        psot = struct.unpack(">I", frame[i + 6 : i + 10])[0]
        end = n - 2 if psot == 0 else i + psot
        header = bytearray(frame[i : i + 12])
        j = i + 12
        while j + 4 <= end and frame[j : j + 2] != b"\xff\x93":
            length = struct.unpack(">H", frame[j + 2 : j + 4])[0]
            if frame[j : j + 2] != b"\xff\x64":
                header += frame[j : j + 2 + length]
            else:
                changed = True
            j += 2 + length
        part = header + frame[j:end]
        if psot:
            part[6:10] = struct.pack(">I", len(part))
        tiles.append(bytes(part))
        i = end
    stripped = [s for s in main if s[:2] != b"\xff\x64"]
    changed = changed or len(stripped) != len(main) or bool(frame[i + 2 :].strip(b"\x00"))
    if not changed:
        return frame
    if any(s[:2] == b"\xff\x55" for s in stripped):
        stripped = [s for s in stripped if s[:2] != b"\xff\x55"]
    out += b"".join(stripped) + b"".join(tiles) + frame[i : i + 2]  # EOC, nothing after it
    return bytes(out)


def _precision(frame: bytes) -> int | None:
    """The sample precision a JPEG, JPEG-LS or JPEG 2000 frame declares."""
    if frame.startswith(b"\xff\x4f"):
        at = frame.find(b"\xff\x51")
        if at < 0 or at + 42 > len(frame):
            return None
        return (frame[at + 40] & 0x7F) + 1  # Ssiz of the first component
    if frame.startswith(b"\xff\xd8"):
        i = 2
        while i + 4 < len(frame):
            if frame[i] != 0xFF:
                return None
            marker = frame[i + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xF7, 0xC9, 0xCA, 0xCB):
                return frame[i + 4]
            if marker in _NO_LENGTH:
                i += 2
                continue
            i += 2 + struct.unpack(">H", frame[i + 2 : i + 4])[0]
    return None


def clean_icc(profile: bytes) -> bytes | None:
    """The profile with the text of its text-bearing tags zeroed (structure and sizes
    unchanged, the profile ID cleared as "not computed"); None if it does not parse."""
    if len(profile) < 132 or profile[36:40] != b"acsp":
        return None
    size = struct.unpack(">I", profile[0:4])[0]
    count = struct.unpack(">I", profile[128:132])[0]
    if size > len(profile) or 132 + 12 * count > len(profile):
        return None
    out = bytearray(profile)
    out[84:100] = b"\x00" * 16  # profile ID (MD5): no longer that of these bytes
    for k in range(count):
        _sig, offset, length = struct.unpack(">4sII", profile[132 + 12 * k : 144 + 12 * k])
        if offset + length > len(profile) or length < 8:
            return None
        kind = bytes(profile[offset : offset + 4])
        if kind in (b"text", b"desc", b"mluc", b"utf8", b"utfz", b"zut8", b"utf6"):
            out[offset + 8 : offset + length] = b"\x00" * (length - 8)
    return bytes(out)


class PixelStreams:
    """Rebuilds Pixel Data (and ICC profiles, at any depth) after the walk; what changed is
    counted as ``pixels:<what>``."""

    def rebuild(self, ds: Dataset, state: WalkState) -> None:
        if _has(ds, _PIXEL_DATA):
            self.pixel_data(ds, state)
        for tag, size in _FLOAT_PIXELS.items():
            if _has(ds, tag):
                self._float_pixels(ds, tag, size, state)

    def _float_pixels(self, ds: Dataset, tag: int, size: int, state: WalkState) -> None:
        """Float and Double Float Pixel Data cut to their declared size (no bytes after the
        last frame); their values are image samples, kept as they are."""
        data = _element(ds, tag).value
        if not isinstance(data, bytes):
            return
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except (AttributeError, TypeError, ValueError):
            return  # the reader's limits and the converter decide about such images
        declared = rows * cols * frames * size  # one sample per pixel (PS3.3 C.7.6.3.1.4)
        if len(data) > declared:
            _set(ds, tag, "OF" if size == 4 else "OD", data[:declared])
            state.counts["pixels:trailing_bytes"] += 1

    def pixel_data(self, ds: Dataset, state: WalkState) -> None:
        elem = ds.get_item(_PIXEL_DATA)
        data = elem.value
        if not isinstance(data, bytes) or not data:
            return
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if syntax is not None and syntax.is_encapsulated:
            self._encapsulated(ds, data, state)
        else:
            self._native(ds, data, big=syntax == ExplicitVRBigEndian, state=state)

    def _native(self, ds: Dataset, data: bytes, big: bool, state: WalkState) -> None:
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            allocated = int(ds.BitsAllocated)
            stored = int(ds.get("BitsStored", allocated) or allocated)
            high = int(ds.get("HighBit", stored - 1))
        except (AttributeError, TypeError, ValueError):
            return  # the reader's limits and the converter decide about such images
        pixels = rows * cols * samples * frames
        size = (pixels + 7) // 8 if allocated == 1 else pixels * (allocated // 8)
        changed = False
        if len(data) > size + (size % 2):
            data = data[:size] + (b"\x00" if size % 2 else b"")
            state.counts["pixels:trailing_bytes"] += 1
            changed = True
        if allocated in (8, 16, 32) and stored < allocated and len(data) >= size:
            dtype = np.dtype(f"{'>' if big else '<'}u{allocated // 8}")
            arr = np.frombuffer(memoryview(data)[:size], dtype=dtype)
            low = max(0, high - stored + 1)
            mask = dtype.type(((1 << stored) - 1) << low)
            # One pass without a copy in the usual layout (stored bits at the bottom).
            above = int(arr.max()) >> stored if low == 0 and arr.size else None
            if above or (above is None and np.any(arr & ~mask)):
                data = (arr & mask).astype(dtype).tobytes() + data[size:]
                state.counts["pixels:bits_above_stored"] += 1
                changed = True
        if changed:
            _set(ds, _PIXEL_DATA, ds.get_item(_PIXEL_DATA).VR or "OW", data)

    def _encapsulated(self, ds: Dataset, data: bytes, state: WalkState) -> None:
        frames_declared = int(ds.get("NumberOfFrames", 1) or 1)
        try:
            frames = list(generate_frames(data, number_of_frames=frames_declared))
        except Exception:
            return  # left to the converter, which dead-letters what it cannot decode
        rebuilt = [strip_j2k(strip_jpeg(f)) for f in frames]
        stored = int(ds.get("BitsStored", 0) or 0)
        precision = max((_precision(f) or 0 for f in rebuilt), default=0)
        if rebuilt != frames:
            _set(ds, _PIXEL_DATA, "OB", encapsulate(rebuilt, has_bot=len(rebuilt) > 1))
            for tag in _EXTENDED_OFFSETS:
                if tag in ds:
                    del ds[tag]
            state.counts["pixels:stream_segments"] += 1
        rle = str(ds.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.5"
        if stored and (precision > stored or (rle and stored < int(ds.BitsAllocated))):
            self._decoded_high_bits(ds, stored, state)

    def _decoded_high_bits(self, ds: Dataset, stored: int, state: WalkState) -> None:
        """A compressed stream that can hold bits above BitsStored: decoded, and if any such
        bit is set, cleared and stored uncompressed (never re-encoded lossy)."""
        if int(ds.get("PixelRepresentation", 0)) == 1:
            return  # decoders sign-extend from BitsStored: nothing above it is read as data
        try:
            arr = ds.pixel_array
        except Exception:
            return
        if arr.dtype.kind not in "ui":
            return
        high = int(ds.get("HighBit", stored - 1))
        low = max(0, high - stored + 1)
        unsigned = arr.view(f"u{arr.dtype.itemsize}")
        mask = unsigned.dtype.type(((1 << stored) - 1) << low)
        if not np.any(unsigned & ~mask):
            return
        frames = unsigned & mask
        if int(ds.get("NumberOfFrames", 1) or 1) == 1:
            frames = frames[np.newaxis]
        store_frames(ds, frames)
        state.counts["pixels:bits_above_stored"] += 1


def rebuild_icc(ds: Dataset, t: int, state: WalkState) -> None:
    """An ICC profile (top level or an optical path item) with its text gone, or removed
    when it does not parse."""
    data = ds.get_item(t).value
    if not isinstance(data, bytes) or not data:
        return
    cleaned = clean_icc(data)
    if cleaned is None:
        state.drop(ds, t, "OB", "pixels:icc_profile_removed")
    elif cleaned != data:
        _set(ds, t, "OB", cleaned)
        state.counts["pixels:icc_profile_text"] += 1
