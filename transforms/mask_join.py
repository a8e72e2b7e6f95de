"""The Beam shell of segmentation labels: ingest's mask join.

Mask objects are read (``masks.read_mask_object``) into parts keyed by a digest of the
image UID they reference, joined with the images as a side input and laid on each image's
grid (``mask_geometry.label_maps``); what does not fit, and parts whose image never shows
up, are dead letters of their objects. The class names the objects give are counted into
the manifest's (``ClassNames``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from pydicom.dataset import Dataset

from transforms.composite import NamedOutputs
from transforms.deadletter import DEAD_LETTER, DeadLetter, DeadLetterFn, StageError, unexpected
from transforms.deid.content import ContentCheck
from transforms.dicom_io import METRICS_NAMESPACE, quiet_pydicom
from transforms.mask_classes import MaskClasses, renumbering
from transforms.mask_geometry import contours_on_image, label_maps
from transforms.masks import (
    MASK_GEOMETRY_MISMATCH,
    MASK_WITHOUT_IMAGE,
    STAGE_MASKS,
    MaskError,
    MaskPart,
    class_names,
    mask_kind,
    read_mask_object,
)


@dataclass(frozen=True)
class MaskLabel:
    """An image's segmentation label, joined on its original UID: the label maps on the
    image's own grid of the frames its masks mark (``label_maps``: by 0-based frame index,
    any other frame all background), and what it came from (``seg`` or ``rtstruct``)."""

    maps: dict[int, np.ndarray]
    kind: str

    def frame(self, index: int, rows: int, cols: int) -> np.ndarray:
        """Frame ``index``'s map (all background where no mask marks that frame)."""
        found = self.maps.get(index)
        return found if found is not None else np.zeros((rows, cols), np.uint8)


def uid_digest(uid: str) -> bytes:
    """What the join keys on: no original identifier goes through a shuffle or side input."""
    return hashlib.sha256(uid.strip().encode()).digest()[:16]


Parsed = tuple[tuple[str, str | None], Dataset]


CLASS_NAMES = "class_names"  # ReadMaskPartsFn's output of (class value, checked name)


class ReadMaskPartsFn(DeadLetterFn):
    """((source, member), Dataset) of a SEG/RTSTRUCT → (digest of referenced UID, MaskPart);
    on ``CLASS_NAMES``, (class value, name) for each class the object names, as
    ``class_names`` checks them (the content check is built once per worker), or with
    ``classes`` (``--mask-classes``) as the user named them."""

    stage = STAGE_MASKS
    failed_counter = "mask_objects_dead_letters"

    def __init__(self, classes: MaskClasses | None = None):
        super().__init__()
        self._classes = classes

    def setup(self):
        quiet_pydicom()  # highdicom logs the UIDs it reads
        self._check = ContentCheck.load()

    def where(self, element: Parsed) -> tuple[str, str | None]:
        return element[0]

    def work(self, element: Parsed) -> Iterator:
        (source, member), ds = element
        for part in read_mask_object(ds, source, member, self._classes):
            yield uid_digest(part.referenced), part
        if self._classes is not None:  # the user's names, for the classes the object has
            values = renumbering(ds, self._classes, str(mask_kind(ds))).values()
            named = {v: self._classes.names[v - 1] for v in values}
        else:
            named = class_names(ds, self._check)
        for value, name in sorted(named.items()):
            yield beam.pvalue.TaggedOutput(CLASS_NAMES, (value, name))


class NotAMaskFn(DeadLetterFn):
    """An image found where only masks were expected (``--masks``): a dead letter."""

    stage = STAGE_MASKS

    def where(self, element: Parsed) -> tuple[str, str | None]:
        return element[0]

    def work(self, element: Parsed) -> Iterator:
        raise MaskError("not_a_mask_object", "not a SEG or RTSTRUCT object, in the masks input")
        yield  # a generator, like every work()


class SegmentationObjectFn(DeadLetterFn):
    """A SEG or RTSTRUCT in a task that reads no masks: never a training image."""

    stage = STAGE_MASKS

    def where(self, element: Parsed) -> tuple[str, str | None]:
        return element[0]

    def work(self, element: Parsed) -> Iterator:
        raise MaskError(
            "segmentation_object",
            "a SEG or RTSTRUCT object: a label of images, never an image itself "
            "(ingest --task segmentation reads it)",
        )
        yield


class JoinMasksFn(beam.DoFn):
    """((source, member), Dataset) of an image + the parts referencing it (side input) →
    ((source, member), (Dataset, MaskLabel or None)); the digest of every matched UID on
    ``MATCHED``; a mask object that does not fit (any of its parts) is one dead letter of
    that object, and the image keeps the masks that do fit, or goes on without one."""

    def setup(self):
        self._masked = Metrics.counter(METRICS_NAMESPACE, "masks_matched")
        self._unmasked = Metrics.counter(METRICS_NAMESPACE, "masks_missing")

    def process(self, element: Parsed, parts):
        key, ds = element
        digest = uid_digest(str(ds.get("SOPInstanceUID", "")))
        found = list(parts[digest])  # a multimap side input: empty for an unknown key
        if found:
            yield beam.pvalue.TaggedOutput(MATCHED, digest)
        series = uid_digest(str(ds.get("SeriesInstanceUID", "")))
        by_series = [p for p in parts[series] if p.by_plane]  # contours naming no image
        if by_series:
            found += by_series
            yield beam.pvalue.TaggedOutput(MATCHED, series)
        label = None
        by_object: dict[tuple[str, str | None], list[MaskPart]] = {}
        for part in found:  # a SEG of a multi-frame image gives a part per frame
            by_object.setdefault((part.source, part.member), []).append(part)
        for (source, member), own in by_object.items():  # one that does not fit spoils itself
            loose = [p for p in own if p.by_plane]
            try:
                maps = label_maps(ds, own)
                placed = bool(loose) and contours_on_image(ds, loose)
            except Exception as e:  # a referenced SR or KO has no pixel grid, say
                error = e if isinstance(e, StageError) else unexpected(e)
                letter = DeadLetter(source, member, STAGE_MASKS, error.error_type, error.message)
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
                continue
            if placed:
                yield beam.pvalue.TaggedOutput(PLACED, (source, member))
            if not maps and len(loose) == len(own):
                continue  # the series' contours lie on other images: this one is unlabeled
            if label is None:
                label = MaskLabel(maps, own[0].kind)
            else:
                merged = dict(label.maps)
                for index, pixels in maps.items():
                    before = merged.get(index)
                    merged[index] = pixels if before is None else np.maximum(before, pixels)
                label = MaskLabel(merged, label.kind)
        (self._masked if label is not None else self._unmasked).inc()
        yield key, (ds, label)


MATCHED = "matched"
PLACED = "placed"  # (source, member) of an object a contour naming no image landed from


def _unplaced_letters(element: tuple[tuple[str, str | None], dict]) -> Iterator[DeadLetter]:
    (source, member), grouped = element
    if grouped["loose"] and not grouped["placed"]:
        yield DeadLetter(
            source,
            member,
            STAGE_MASKS,
            MASK_GEOMETRY_MISMATCH,
            "no contour that names no image lies on an image of the series it references",
        )


def _unmatched_letters(element: tuple[bytes, dict]) -> Iterator[DeadLetter]:
    _, grouped = element
    if grouped["matched"]:
        return
    for source, member in sorted(set(grouped["parts"])):
        yield DeadLetter(
            source,
            member,
            STAGE_MASKS,
            MASK_WITHOUT_IMAGE,
            "the mask references an image that is not in the input",
        )


class Joined(NamedTuple):
    joined: beam.PCollection
    dead_letters: beam.PCollection[DeadLetter]


class JoinMasks(NamedOutputs):
    """Images ``((source, member), Dataset)`` joined with the masks that reference them, on
    the images' original SOP Instance UIDs (before de-identification, as labels are).

    The parts travel keyed by a digest of the UID they reference, as a side input (one
    label map per labelled image: the images stay spread over the workers). Parts whose
    image never shows up are dead letters ``mask_without_image`` of their objects; an object
    whose contours name no image and none of them lies on an image of its series is a dead
    letter ``mask_geometry_mismatch``.

    Args:
        parts: ``(digest, MaskPart)`` from ``ReadMaskPartsFn``.
    """

    def __init__(self, parts: beam.PCollection):
        super().__init__()
        self._parts = parts

    def expand(self, images: beam.PCollection) -> Joined:
        side = beam.pvalue.AsMultiMap(self._parts)
        joined = images | "Lookup" >> beam.ParDo(JoinMasksFn(), side).with_outputs(
            MATCHED, PLACED, DEAD_LETTER, main="joined"
        )
        where = self._parts | "PartSources" >> beam.Map(
            lambda kv: (kv[0], (kv[1].source, kv[1].member))
        )
        matched = _keys(joined[MATCHED], "Matched")
        unmatched = (
            {"parts": where, "matched": matched}
            | "GroupByImage" >> beam.CoGroupByKey()
            | "Unmatched" >> beam.FlatMap(_unmatched_letters)
        )
        loose = self._parts | "LooseParts" >> beam.FlatMap(
            lambda kv: [(kv[1].source, kv[1].member)] if kv[1].by_plane else []
        )
        unplaced = (
            {"loose": _keys(loose, "Loose"), "placed": _keys(joined[PLACED], "Placed")}
            | "GroupByObject" >> beam.CoGroupByKey()
            | "Unplaced" >> beam.FlatMap(_unplaced_letters)
        )
        dead = (joined[DEAD_LETTER], unmatched, unplaced) | "MaskDeadLetters" >> beam.Flatten()
        return Joined(joined.joined, dead)


def _keys(keys: beam.PCollection, name: str) -> beam.PCollection:
    """Each distinct key once, as ``(key, True)``: one side of a CoGroupByKey."""
    return (
        keys | f"Distinct{name}" >> beam.Distinct() | f"{name}Keys" >> beam.Map(lambda k: (k, True))
    )


def name_classes(counted: list[tuple[tuple[int, str], int]]) -> dict[str, str]:
    """((class value, checked name), how many objects gave it) → {"value": name}: the name
    most objects give that class (ties: the first in sorted order), in numeric order."""
    counts: dict[int, dict[str, int]] = {}
    for (value, name), n in counted:
        names = counts.setdefault(int(value), {})
        names[name] = names.get(name, 0) + n
    return {
        str(value): min(names, key=lambda name: (-names[name], name))
        for value, names in sorted(counts.items())
    }


class ClassNames(beam.PTransform):
    """``CLASS_NAMES`` pairs → a one-element PCollection: the manifest's class names
    (``name_classes``; empty when no object was read)."""

    def expand(self, pairs: beam.PCollection) -> beam.PCollection[dict[str, str]]:
        return (
            pairs
            | "Count" >> beam.combiners.Count.PerElement()
            | "All" >> beam.combiners.ToList()
            | "Name" >> beam.Map(name_classes)
        )
