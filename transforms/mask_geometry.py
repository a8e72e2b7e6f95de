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
    the top-left pixel) taken together, as a bool mask: a pixel is inside when its centre
    is inside (even-odd over all the outlines: a polygon inside another is a hole, as
    rt-utils, Plastimatch and Slicer write a ring) or on an outline (an outline traced
    through the centres of a mask's edge pixels, as rt-utils writes one, gives that mask
    back). One row of centres at a time."""
    mask = np.zeros((rows, cols), bool)
    kept = [np.asarray(p, np.float64) for p in polygons if len(p) >= 3]
    kept = [p for p in kept if np.isfinite(p).all()]
    if not kept:
        return mask
    xs = np.concatenate([p[:, 0] for p in kept])
    ys = np.concatenate([p[:, 1] for p in kept])
    x2 = np.concatenate([np.roll(p[:, 0], -1) for p in kept])
    y2 = np.concatenate([np.roll(p[:, 1], -1) for p in kept])
    low, high = np.minimum(ys, y2), np.maximum(ys, y2)
    flat = np.abs(y2 - ys) < _ON
    centres = np.arange(cols, dtype=np.float64)
    first, last = max(0, int(np.floor(low.min()))), min(rows - 1, int(np.ceil(high.max())))
    for row in range(first, last + 1):
        touching = (low <= row + _ON) & (high >= row - _ON)
        if not touching.any():
            continue
        crosses = (ys <= row) != (y2 <= row)
        x_at = xs[crosses] + (row - ys[crosses]) * (x2[crosses] - xs[crosses]) / (
            y2[crosses] - ys[crosses]
        )
        line = (centres[None, :] < x_at[:, None]).sum(axis=0) % 2 == 1
        on_flat = touching & flat
        for a, b in zip(xs[on_flat], x2[on_flat], strict=True):
            line |= (centres >= min(a, b) - _ON) & (centres <= max(a, b) + _ON)
        slanted = touching & ~flat
        a, b, dx, dy = (
            xs[slanted],
            x2[slanted],
            x2[slanted] - xs[slanted],
            y2[slanted] - ys[slanted],
        )
        x_on = a + (row - ys[slanted]) * dx / dy
        # centres within _ON of the edge itself (not along the row): wider on a shallow edge
        reach = _ON * np.hypot(dx, dy) / np.abs(dy)
        first = np.ceil(np.maximum(x_on - reach, np.minimum(a, b) - _ON))
        last = np.floor(np.minimum(x_on + reach, np.maximum(a, b) + _ON))
        for lo, hi in zip(first, last, strict=True):
            if lo <= hi:
                line[max(0, int(lo)) : max(0, min(cols, int(hi) + 1))] = True
        mask[row] = line
    return mask


_ON = 0.01  # a centre this close to an outline (pixels) lies on it: contours in mm carry
# rounding from the writer's float32 matrices and decimal strings


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

    def nearest(self, points: np.ndarray) -> tuple[int, float]:
        """The frame whose plane is nearest the points, and their largest distance from it."""
        if self._stacked is None:
            planes = [self[i] for i in range(self._count)]
            normals = np.array([np.cross(p.along_row, p.along_col) for p in planes])
            origins = np.array([p.origin for p in planes])
            self._stacked = normals, np.einsum("ij,ij->i", origins, normals)
        normals, offsets = self._stacked
        distances = np.abs(points @ normals.T - offsets[None, :]).max(axis=0)
        index = int(np.argmin(distances))
        return index, float(distances[index])


def _contour_frame(
    frame: int | None, count: int, points: np.ndarray, planes: _FramePlanes
) -> tuple[int, _Plane]:
    """The frame a contour lies on and its plane: the frame it names, else (a multi-frame
    image) the one whose plane holds it."""
    if frame is not None or count == 1:
        index = _frame_index(frame, count, "a contour")
        if planes[index].distance(points) > PLANE_TOLERANCE_MM:
            raise MaskError(MASK_GEOMETRY_MISMATCH, "a contour lies off its image's plane")
        return index, planes[index]
    index, distance = planes.nearest(points)
    if distance > PLANE_TOLERANCE_MM:
        raise MaskError(MASK_GEOMETRY_MISMATCH, "a contour lies off every frame's plane")
    return index, planes[index]


def _on_image(count: int, points: np.ndarray, planes: _FramePlanes) -> bool:
    """Whether a contour lies on the image's plane, or on one of its frames'."""
    distance = planes[0].distance(points) if count == 1 else planes.nearest(points)[1]
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
            index, plane = _contour_frame(part.frame, count, points, planes)
            outlines.setdefault((index, value), []).append(plane.pixels(points))
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
