"""Segmentation label maps on their images' grids, and in the pixels' geometry.

``label_maps`` lays the parts (``masks.MaskPart``) for one image onto that image's own pixel
grid, frame by frame (RTSTRUCT contours filled here, pixel centres inside or on an outline,
inner outlines as holes, from the patient geometry of the image or of its frame; a part of
contours that name no image keeps those on this image's plane) and refuses a mask whose
geometry does not match; ``fit_label_map`` then gives each map the geometry the pixels get
(``pixels.resize_pad``), with nearest neighbour.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from pydicom.dataset import Dataset

from transforms.masks import (
    MASK_GEOMETRY_MISMATCH,
    MASK_UNSUPPORTED,
    MaskError,
    MaskPart,
)

PLANE_TOLERANCE_MM = 0.5  # how far off an image's plane a contour point may lie


def polygon_fill(vertices: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Pixels inside one closed polygon; see ``contours_fill``."""
    return contours_fill([vertices], rows, cols)


def contours_fill(polygons: list[np.ndarray], rows: int, cols: int) -> np.ndarray:
    """Pixels inside closed polygons ((x, y) vertices in pixel units, (0, 0) the centre of
    the top-left pixel) taken together, as a bool mask.

    A pixel is inside an outline when its centre is inside it or on it (an outline traced
    through the centres of a mask's edge pixels, as rt-utils writes one, gives that mask
    back). Outlines nest: one lying inside an odd number of others is a hole, as rt-utils,
    Plastimatch and Slicer write a ring (its outer and inner outline), and an island in
    the hole is filled again; the outline of a hole stays inside. Outlines that merely
    overlap are joined, and an outline given twice counts once."""
    mask = np.zeros((rows, cols), bool)
    kept: dict[bytes, np.ndarray] = {}
    for p in polygons:
        p = np.asarray(p, np.float64).reshape(-1, 2)
        if len(p) >= 3 and np.isfinite(p).all():
            p = np.clip(p, -4.0 * max(rows, cols), 5.0 * max(rows, cols))
            kept.setdefault(np.round(p, 6).tobytes(), p)  # the same outline twice: once
    outlines = list(kept.values())
    if not outlines:
        return mask
    depth = [
        sum(
            j != i and bool(_inside_or_on(outlines[i], outline).all())
            for j, outline in enumerate(outlines)
        )
        for i in range(len(outlines))
    ]
    for i in np.argsort(depth, kind="stable"):  # outer outlines first, holes, islands
        inside, on = _raster(outlines[i], rows, cols)
        if depth[i] % 2 == 0:
            mask |= inside | on
        else:
            mask &= ~inside
            mask |= on
    return mask


_ON = 0.01  # a centre this close to an outline (pixels) lies on it: contours in mm carry
# rounding from the writer's float32 matrices and decimal strings


def _edges(outline: np.ndarray) -> tuple[np.ndarray, ...]:
    xs, ys = outline[:, 0], outline[:, 1]
    return xs, ys, np.roll(xs, -1), np.roll(ys, -1)


def _inside_or_on(points: np.ndarray, outline: np.ndarray) -> np.ndarray:
    """Which points (x, y) lie inside the outline (even-odd) or within _ON of it."""
    xs, ys, x2, y2 = _edges(outline)
    px, py = points[:, :1], points[:, 1:]
    crosses = (ys <= py) != (y2 <= py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = xs + (py - ys) * (x2 - xs) / (y2 - ys)
    inside = (crosses & (px < x_at)).sum(axis=1) % 2 == 1
    dx, dy = x2 - xs, y2 - ys
    t = np.clip(((px - xs) * dx + (py - ys) * dy) / np.maximum(dx * dx + dy * dy, 1e-18), 0, 1)
    near = np.hypot(px - (xs + t * dx), py - (ys + t * dy)).min(axis=1) <= _ON
    return inside | near


def _raster(outline: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres strictly inside the outline, even-odd; centres within _ON of it) as masks,
    built from per-row intervals without a loop over rows: each crossing of a row adds one
    to the centres left of it (the parity is inside), and each edge marks the centres of
    each row it spans that lie within _ON of it."""
    xs, ys, x2, y2 = _edges(outline)
    low, high = np.minimum(ys, y2), np.maximum(ys, y2)
    # strictly inside: a crossing of row r (half-open in y) at x counts for centres c < x
    first = np.maximum(np.ceil(low), 0).astype(np.int64)
    last = np.minimum(np.ceil(high) - 1, rows - 1).astype(np.int64)  # rows with low <= r < high
    span = np.maximum(last - first + 1, 0)
    edge = np.repeat(np.arange(len(xs)), span)
    row = first[edge] + (np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span))
    row_f = row.astype(np.float64)
    steep = ys[edge] != y2[edge]
    edge, row, row_f = edge[steep], row[steep], row_f[steep]
    crossing = (ys[edge] <= row_f) != (y2[edge] <= row_f)
    edge, row, row_f = edge[crossing], row[crossing], row_f[crossing]
    x_at = xs[edge] + (row_f - ys[edge]) * (x2[edge] - xs[edge]) / (y2[edge] - ys[edge])
    right = np.clip(np.ceil(x_at), 0, cols).astype(np.int64)  # centres 0 .. right-1 count
    count = np.zeros((rows, cols + 1), np.int32)
    np.add.at(count, (row, np.zeros_like(row)), 1)
    np.add.at(count, (row, right), -1)
    inside = np.cumsum(count, axis=1)[:, :cols] % 2 == 1
    # on the outline: per edge and row it spans (within _ON), the centres within _ON of it
    first = np.maximum(np.ceil(low - _ON), 0).astype(np.int64)
    last = np.minimum(np.floor(high + _ON), rows - 1).astype(np.int64)
    span = np.maximum(last - first + 1, 0)
    edge = np.repeat(np.arange(len(xs)), span)
    row = first[edge] + (np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span))
    a, b = xs[edge], x2[edge]
    dx, dy = b - a, y2[edge] - ys[edge]
    flat = np.abs(dy) < _ON
    with np.errstate(divide="ignore", invalid="ignore"):
        x_on = np.where(flat, a, a + (row - ys[edge]) * dx / dy)
        reach = np.where(flat, np.inf, _ON * np.hypot(dx, dy) / np.abs(dy))
    lo = np.ceil(np.maximum(x_on - reach, np.minimum(a, b) - _ON))
    hi = np.floor(np.minimum(x_on + reach, np.maximum(a, b) + _ON))
    lo, hi = np.clip(lo, 0, cols), np.clip(hi + 1, 0, cols)
    keep = lo < hi
    marks = np.zeros((rows, cols + 1), np.int32)
    np.add.at(marks, (row[keep], lo[keep].astype(np.int64)), 1)
    np.add.at(marks, (row[keep], hi[keep].astype(np.int64)), -1)
    on = np.cumsum(marks, axis=1)[:, :cols] > 0
    return inside, on


class _Plane(NamedTuple):
    """Where one frame lies in patient coordinates (mm)."""

    origin: np.ndarray  # the centre of its top-left pixel
    along_row: np.ndarray  # unit vector along a row (columns grow)
    along_col: np.ndarray  # unit vector down a column (rows grow)
    row_mm: float  # spacing between rows
    col_mm: float  # spacing between columns

    def distance(self, points: np.ndarray) -> float:
        """The largest distance of the points from this plane."""
        normal = np.cross(self.along_row, self.along_col)
        return float(np.abs((points - self.origin[None, :]) @ normal).max())

    def pixels(self, points: np.ndarray) -> np.ndarray:
        """Patient coordinates → (x = column, y = row) in pixel units."""
        offset = points - self.origin[None, :]
        return np.stack(
            [offset @ self.along_row / self.col_mm, offset @ self.along_col / self.row_mm], axis=1
        )


def _functional(image: Dataset, index: int, sequence: str, keyword: str):
    """A frame's value from its per-frame functional group, else from the shared one."""
    for groups, at in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = image.get(groups) or []
        if at < len(items) and items[at].get(sequence):
            value = items[at].get(sequence)[0].get(keyword)
            if value is not None:
                return value
    return None


def frame_count(image: Dataset) -> int:
    """The image's Number of Frames (1 when absent)."""
    try:
        return max(1, int(image.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        raise MaskError(
            MASK_GEOMETRY_MISMATCH, "the image's Number of Frames is not a number"
        ) from None


def _plane(image: Dataset, index: int) -> _Plane:
    """The plane of frame ``index`` (0-based): an enhanced image's per-frame functional
    groups, else the image's own attributes (one frame only).

    Raises:
        MaskError: ``mask_geometry_mismatch`` without patient geometry; ``mask_unsupported``
            for a multi-frame image that gives no plane per frame.
    """
    if "PerFrameFunctionalGroupsSequence" in image:
        position = _functional(image, index, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _functional(
            image, index, "PlaneOrientationSequence", "ImageOrientationPatient"
        )
        spacing = _functional(image, index, "PixelMeasuresSequence", "PixelSpacing")
    elif frame_count(image) > 1:
        raise MaskError(
            MASK_UNSUPPORTED,
            "contours on a multi-frame image without a plane per frame (no functional groups)",
        )
    else:
        position = image.get("ImagePositionPatient")
        orientation = image.get("ImageOrientationPatient")
        spacing = image.get("PixelSpacing")
    try:
        orientation = np.asarray(orientation, np.float64)
        row_mm, col_mm = (float(v) for v in spacing)
        plane = _Plane(
            np.asarray(position, np.float64).reshape(3), orientation[:3], orientation[3:6],
            row_mm, col_mm,
        )  # fmt: skip
    except (AttributeError, ValueError, TypeError):
        raise MaskError(
            MASK_GEOMETRY_MISMATCH, "contours in patient coordinates on an image without them"
        ) from None
    if (
        orientation.shape != (6,)
        or not np.isfinite([*plane.origin, *orientation, row_mm, col_mm]).all()
    ):
        raise MaskError(
            MASK_GEOMETRY_MISMATCH, "contours in patient coordinates on an image without them"
        )
    return plane


def _frame_index(frame: int | None, count: int, what: str) -> int:
    """A part's frame number (1-based, or None) → the frame's index (0-based)."""
    if frame is None:
        if count > 1:
            raise MaskError(
                MASK_GEOMETRY_MISMATCH, f"{what} that names no frame of a {count}-frame image"
            )
        return 0
    if not 1 <= frame <= count:
        raise MaskError(MASK_GEOMETRY_MISMATCH, f"{what} of frame {frame} of a {count}-frame image")
    return frame - 1


class _FramePlanes:
    """An image's frame planes, each read once; stacked once a contour must be placed by
    its plane (a multi-frame image's contour that names no frame)."""

    def __init__(self, image: Dataset, count: int):
        self._image, self._count = image, count
        self._read: dict[int, _Plane] = {}
        self._stacked: tuple[np.ndarray, np.ndarray] | None = None

    def __getitem__(self, index: int) -> _Plane:
        if index not in self._read:
            self._read[index] = _plane(self._image, index)
        return self._read[index]

    def distances(self, points: np.ndarray) -> np.ndarray:
        """The points' largest distance from each frame's plane."""
        if self._stacked is None:
            planes = [self[i] for i in range(self._count)]
            normals = np.array([np.cross(p.along_row, p.along_col) for p in planes])
            origins = np.array([p.origin for p in planes])
            self._stacked = normals, np.einsum("ij,ij->i", origins, normals)
        normals, offsets = self._stacked
        return np.abs(points @ normals.T - offsets[None, :]).max(axis=0)


def _contour_frames(
    frame: int | None, count: int, points: np.ndarray, planes: _FramePlanes
) -> list[int]:
    """The frames a contour lies on: the frame it names, else (a multi-frame image) every
    frame whose plane holds it (the time points or echoes of one slice share a plane)."""
    if frame is not None or count == 1:
        index = _frame_index(frame, count, "a contour")
        if planes[index].distance(points) > PLANE_TOLERANCE_MM:
            raise MaskError(MASK_GEOMETRY_MISMATCH, "a contour lies off its image's plane")
        return [index]
    on = np.flatnonzero(planes.distances(points) <= PLANE_TOLERANCE_MM)
    if not len(on):
        raise MaskError(MASK_GEOMETRY_MISMATCH, "a contour lies off every frame's plane")
    return [int(i) for i in on]


def _on_image(count: int, points: np.ndarray, planes: _FramePlanes) -> bool:
    """Whether a contour lies on the image's plane, or on one of its frames'."""
    distance = planes[0].distance(points) if count == 1 else planes.distances(points).min()
    return distance <= PLANE_TOLERANCE_MM


def label_maps(image: Dataset, parts: list[MaskPart]) -> dict[int, np.ndarray]:
    """The label maps (rows x cols uint8) of ``image``'s frames that the parts mark, by
    frame index (0-based, as ``pixels.frame_indices`` counts); a frame not in it is all
    background (a SEG leaves out empty frames).

    Args:
        image: the image with its original geometry (Rows, Columns, Number of Frames and
            patient geometry, per frame for an enhanced image).
        parts: one or more parts referencing it.

    Raises:
        MaskError: ``mask_geometry_mismatch`` for a SEG of another size, a frame the image
            does not have, a SEG frame naming no frame of a multi-frame image, or contours
            that are not on the plane of the image or of any of its frames;
            ``mask_unsupported`` for contours on a multi-frame image without per-frame
            planes.
    """
    try:
        rows, cols = int(image.Rows), int(image.Columns)
    except (AttributeError, TypeError, ValueError):
        raise MaskError(
            MASK_GEOMETRY_MISMATCH, "the referenced object has no pixel grid (not an image)"
        ) from None
    count = frame_count(image)
    out: dict[int, np.ndarray] = {}
    planes = _FramePlanes(image, count)  # each read once, however many contours it holds
    for part in parts:
        if part.pixels is not None:
            if part.pixels.shape != (rows, cols):
                shape = "x".join(map(str, part.pixels.shape))
                raise MaskError(
                    MASK_GEOMETRY_MISMATCH, f"a {shape} SEG frame on a {rows}x{cols} image"
                )
            index = _frame_index(part.frame, count, "a SEG frame")
            out[index] = np.maximum(out.get(index, 0), part.pixels).astype(np.uint8)
        outlines: dict[tuple[int, int], list[np.ndarray]] = {}
        for value, points in part.contours:
            if part.by_plane and not _on_image(count, points, planes):
                continue  # a contour of another image of the series
            for index in _contour_frames(part.frame, count, points, planes):
                outlines.setdefault((index, value), []).append(planes[index].pixels(points))
        for (index, value), polygons in sorted(outlines.items()):  # the higher value wins
            inside = contours_fill(polygons, rows, cols)
            label = out.setdefault(index, np.zeros((rows, cols), np.uint8))
            label[inside & (label < value)] = value
    return out


def label_map(image: Dataset, parts: list[MaskPart], frame: int = 0) -> np.ndarray:
    """The label map of one frame (index, 0-based) of ``image``; see ``label_maps``."""
    maps = label_maps(image, parts)
    return maps.get(frame, np.zeros((int(image.Rows), int(image.Columns)), np.uint8))


def fit_label_map(label: np.ndarray, size: int) -> np.ndarray:
    """The map in the pixels' geometry (``pixels.resize_pad``): aspect kept, scaled to fit
    ``size``, padded centred with background; nearest neighbour, so no new class appears."""
    rows, cols = label.shape
    scale = size / max(rows, cols)
    new_rows, new_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    # The source pixel whose centre is nearest each target pixel's centre.
    ys = np.minimum(((np.arange(new_rows) + 0.5) * rows / new_rows).astype(int), rows - 1)
    xs = np.minimum(((np.arange(new_cols) + 0.5) * cols / new_cols).astype(int), cols - 1)
    out = np.zeros((size, size), np.uint8)
    top, left = (size - new_rows) // 2, (size - new_cols) // 2
    out[top : top + new_rows, left : left + new_cols] = label[np.ix_(ys, xs)]
    return out


def contours_on_image(image: Dataset, parts: list[MaskPart]) -> bool:
    """Whether any of the by-plane parts' contours lies on the image (or a frame of it)."""
    count = frame_count(image)
    planes = _FramePlanes(image, count)
    return any(_on_image(count, points, planes) for p in parts for _, points in p.contours)
