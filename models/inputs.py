"""The training input: ingest's TFRecords through the tf.Transform graph, as tf.data.

Training, evaluation and the exported model all turn raw image bytes into network input
the same way: ``raw_features`` → the ingest ``transform/`` graph → ``to_image``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import tensorflow as tf

from models import features as f
from models.layout import INDEX_DIR, MANIFEST_NAME, TFRECORD_SHARDS, TFRECORDS_DIR, TRANSFORM_DIR

PARSE_BATCH = 256  # records parsed and transformed per call (vectorized)
CYCLE_LENGTH = 8  # shards read at once


@dataclass(frozen=True)
class DataInfo:
    """What the trainer needs to know about an ingest output before it reads it."""

    data: str
    image_shape: tuple[int, int, int]  # height, width, channels
    labels: tuple[str, ...]  # the vocabulary, in label-id (= probability column) order
    counts: dict[str, dict[str, int]]  # split -> label -> examples (from the index)
    pixels: dict | None = None  # ingest's pixel settings (its manifest), None if not recorded
    task: str | None = None  # what ingest prepared the data for (its manifest), if recorded
    # Segmentation: class value → the segment or ROI name that passed de-identification's
    # content check (manifest ``masks.classes``); a class without one is not in it.
    class_names: dict[str, str] | None = None

    @property
    def transform_dir(self) -> str:
        return join(self.data, TRANSFORM_DIR)

    def labelled(self, split: str) -> int:
        """Examples of ``split`` whose label is in the vocabulary (what training uses)."""
        return sum(n for label, n in self.counts.get(split, {}).items() if label in self.labels)


def join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts)


def shard_files(data: str, split: str) -> list[str]:
    return sorted(tf.io.gfile.glob(join(data, TFRECORDS_DIR, split, TFRECORD_SHARDS)))


def check_data(data: str) -> None:
    """Raises ValueError (one line) unless ``data`` holds an ingest output with train data."""
    transform_fn = join(data, TRANSFORM_DIR, "transform_fn", "saved_model.pb")
    if not tf.io.gfile.exists(transform_fn):
        raise ValueError(f"{data} is not an ingest output: no {TRANSFORM_DIR}/ graph")
    for split in (f.TRAIN, f.EVAL):
        if not shard_files(data, split):
            raise ValueError(f"{data} has no {split} examples ({TFRECORDS_DIR}/{split}/)")


def read_info(data: str) -> DataInfo:
    """Image geometry (from a train example), label vocabulary and counts (from the index)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow_transform as tft

    check_data(data)
    first = next(iter(tf.data.TFRecordDataset(shard_files(data, f.TRAIN)[:1], "GZIP")))
    example = tf.io.parse_single_example(first, f.raw_feature_spec())
    height, width, channels = (
        int(example[k]) for k in (f.IMAGE_HEIGHT, f.IMAGE_WIDTH, f.IMAGE_CHANNELS)
    )
    shape = (height, width, channels)
    output = tft.TFTransformOutput(join(data, TRANSFORM_DIR))
    pixels = output.transformed_feature_spec()[f.IMAGE_NORMALIZED].shape[0]
    if math.prod(shape) != pixels:
        raise ValueError(f"train images are {shape} but the transform expects {pixels} pixels")
    labels = tuple(v.decode() for v in output.vocabulary_by_name(f.LABEL_VOCABULARY))
    counts: dict[str, dict[str, int]] = {}
    for path in sorted(tf.io.gfile.glob(join(data, INDEX_DIR, "part-*.parquet"))):
        with tf.io.gfile.GFile(path, "rb") as fh:
            buffer = pa.BufferReader(fh.read())  # index shards are small: one row per example
        table = pq.read_table(buffer, columns=[f.SPLIT, f.LABEL]).to_pylist()
        for row in table:
            split = counts.setdefault(row[f.SPLIT], {})
            label = row[f.LABEL] or ""
            split[label] = split.get(label, 0) + 1
    manifest = _manifest(data)
    classes = (manifest.get("masks") or {}).get("classes")
    return DataInfo(
        data, shape, labels, counts, manifest.get("pixels"), manifest.get("task"), classes
    )


def _manifest(data: str) -> dict:
    """Ingest's ``manifest.json``: its ``pixels`` block (size, channels, frame policy,
    windows) says how a raw image must be normalized to be what the model was trained on."""
    uri = join(data, MANIFEST_NAME)
    if not tf.io.gfile.exists(uri):
        return {}
    with tf.io.gfile.GFile(uri) as fh:
        return json.load(fh)


def raw_features(image: tf.Tensor, label: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """The transform graph's input for a batch of raw images (and labels, when known).

    The graph's signature takes every raw feature; the ones it does not use are filled
    with empty values, exactly as the exported model does for a served image.
    """
    n = tf.shape(image)[0]
    raw = {}
    for name, spec in f.raw_feature_spec().items():
        if name == f.IMAGE:
            raw[name] = image
        elif name == f.LABEL and label is not None:
            raw[name] = label
        elif spec.dtype == tf.int64:
            raw[name] = tf.zeros([n], tf.int64)
        else:
            raw[name] = tf.fill([n], "")
    return raw


def to_image(transformed: dict[str, tf.Tensor], shape: tuple[int, int, int]) -> tf.Tensor:
    """The flat ``image_normalized`` as a batch of height x width x channels images."""
    return tf.reshape(transformed[f.IMAGE_NORMALIZED], [-1, *shape])


@dataclass(frozen=True)
class Augment:
    """Train-split augmentation; each part off at its neutral value.

    flip: random left-right flips. rotate: degrees, uniform in [-rotate, rotate].
    crop: the smallest side fraction of a random crop, scaled back to full size (1 = off).
    noise: standard deviation of gaussian noise, in units of the standardized pixels.
    """

    flip: bool = False
    rotate: float = 0.0
    crop: float = 1.0
    noise: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Augment:
        """``"flip,rotate=10,crop=0.9,noise=0.05"``; ``"none"`` or ``""`` for none.

        Raises:
            ValueError: an unknown part or a value out of range.
        """
        values: dict = {}
        for part in (p.strip() for p in text.split(",")):
            if part in ("", "none"):
                continue
            name, _, value = part.partition("=")
            if name == "flip" and not value:
                values["flip"] = True
            elif name in ("rotate", "crop", "noise") and value:
                values[name] = float(value)
            else:
                raise ValueError(f"augmentation {part!r}: use flip, rotate=DEG, crop=F, noise=S")
        augment = cls(**values)
        if not (0 <= augment.rotate <= 180 and 0 < augment.crop <= 1 and augment.noise >= 0):
            raise ValueError("augmentation needs 0 <= rotate <= 180, 0 < crop <= 1, noise >= 0")
        return augment

    def __str__(self) -> str:
        parts = ["flip"] if self.flip else []
        parts += [f"rotate={self.rotate:g}"] if self.rotate else []
        parts += [f"crop={self.crop:g}"] if self.crop < 1 else []
        parts += [f"noise={self.noise:g}"] if self.noise else []
        return ",".join(parts) or "none"

    @property
    def active(self) -> bool:
        return str(self) != "none"

    def __call__(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Augments a batch of images [N, H, W, C], each image drawn independently.

        ``seed``: two integers; the same seed gives the same result (stateless ops, so
        batches can be augmented in parallel and still reproducibly).
        """
        return self.joint(images, None, seed)[0]

    def joint(
        self, images: tf.Tensor, masks: tf.Tensor | None, seed: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Augments images [N, H, W, C] and their label maps [N, H, W, 1] (segmentation)
        with the same draws: the same flip, rotation and crop for an image and its mask,
        the mask resampled by nearest neighbour (no class appears that was not there);
        noise for the image only. With ``masks`` None, exactly ``__call__``."""
        n = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)
        if self.flip:
            flip = tf.random.stateless_uniform([n, 1, 1, 1], seeds[0]) < 0.5
            images = tf.where(flip, tf.reverse(images, axis=[2]), images)
            if masks is not None:
                masks = tf.where(flip, tf.reverse(masks, axis=[2]), masks)
        if self.rotate or self.crop < 1:
            transforms = self._rotate_and_crop(images, seeds[1:5], n)
            images = _resample(images, transforms, "BILINEAR")
            if masks is not None:
                masks = _resample(masks, transforms, "NEAREST")
        if self.noise:
            noise = tf.random.stateless_normal(tf.shape(images), seeds[5], stddev=self.noise)
            images += noise
        return images, masks

    def _rotate_and_crop(self, images, seeds, n):
        # The projective transforms of one resampling for both: output pixel → input pixel
        # through a rotation about the centre, scaled by the crop fraction and shifted
        # within what the crop leaves.
        shape = tf.cast(tf.shape(images), tf.float32)
        height, width = shape[1], shape[2]
        degrees = tf.random.stateless_uniform([n], seeds[0], -self.rotate, self.rotate)
        theta = degrees * (math.pi / 180.0)
        scale = tf.random.stateless_uniform([n], seeds[1], self.crop, 1.0)
        shift = (1.0 - scale) / 2.0
        tx = tf.random.stateless_uniform([n], seeds[2], -1.0, 1.0) * shift * width
        ty = tf.random.stateless_uniform([n], seeds[3], -1.0, 1.0) * shift * height
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        cos, sin = tf.cos(theta) * scale, tf.sin(theta) * scale
        zeros = tf.zeros_like(cos)
        transforms = tf.stack(
            [
                cos,
                -sin,
                cx - cos * cx + sin * cy + tx,
                sin,
                cos,
                cy - sin * cx - cos * cy + ty,
                zeros,
                zeros,
            ],
            axis=1,
        )
        return transforms


def _resample(images: tf.Tensor, transforms: tf.Tensor, interpolation: str) -> tf.Tensor:
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="REFLECT",
    )


def _parsed(files: list[str], parse, training: bool, seed: int) -> tf.data.Dataset:
    """The split's records (shards interleaved in parallel; shuffled shards for training),
    parsed and transformed ``PARSE_BATCH`` at a time by ``parse``, still batched."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(
        lambda path: tf.data.TFRecordDataset(path, "GZIP", buffer_size=1 << 20),
        cycle_length=min(len(files), CYCLE_LENGTH),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(PARSE_BATCH).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def make_dataset(
    info: DataInfo,
    split: str,
    transform_layer,
    batch_size: int,
    *,
    training: bool = False,
    augment: Augment | None = None,
    class_weights: tuple[float, ...] | None = None,
    seed: int = 0,
    cache: bool = False,
) -> tf.data.Dataset:
    """Batches of (image, one-hot label[, sample weight]) from one split.

    Shards are read in parallel (interleaved), records parsed and transformed in vectorized
    batches, examples whose label is not in the vocabulary (unlabeled, or a label train
    never saw) dropped, the transformed examples cached in memory when ``cache``, then (for
    training) shuffled, batched, augmented, and prefetched.

    Args:
        info: the ingest output (``read_info``).
        split: ``train``, ``eval`` or ``test``.
        transform_layer: ``tft.TFTransformOutput(...).transform_features_layer()``.
        batch_size: examples per batch.
        training: shuffle shards and examples and apply ``augment``; off for evaluation,
            where the order is the files' order.
        augment: the augmentation, for ``training`` only.
        class_weights: a weight per label id, yielded as a third element.
        seed: for shuffling and augmentation.
        cache: keep the transformed examples in memory after the first pass.
    """
    files = shard_files(info.data, split)
    if not files:
        raise ValueError(f"no {split} examples under {info.data}")
    num_classes = len(info.labels)
    spec = {k: f.raw_feature_spec()[k] for k in (f.IMAGE, f.LABEL)}

    def parse_and_transform(records):
        parsed = tf.io.parse_example(records, spec)
        out = transform_layer(raw_features(parsed[f.IMAGE], parsed[f.LABEL]))
        return to_image(out, info.image_shape), out[f.LABEL_ID]

    ds = _parsed(files, parse_and_transform, training, seed)
    ds = ds.unbatch().filter(lambda image, label_id: label_id >= 0)
    # The index says how many there are: Keras then knows an epoch's length, and a
    # mismatch between index and records fails loudly.
    ds = ds.apply(tf.data.experimental.assert_cardinality(info.labelled(split)))
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(max(1, min(info.labelled(split), 10_000)), seed=seed)
    ds = ds.batch(batch_size)
    if training and augment is not None and augment.active:
        # A fresh seed pair per batch, a new sequence every epoch, the same for a seed.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda batch, pair: (augment(batch[0], pair), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def finish(image, label_id):
        onehot = tf.one_hot(label_id, num_classes)
        if weights is None:
            return image, onehot
        return image, onehot, tf.gather(weights, label_id)

    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def make_mask_dataset(
    info: DataInfo,
    split: str,
    transform_layer,
    batch_size: int,
    classes: int,
    *,
    training: bool = False,
    augment: Augment | None = None,
    seed: int = 0,
    cache: bool = False,
) -> tf.data.Dataset:
    """Batches of (image, one-hot label map [H, W, classes]) from a segmentation ingest.

    As ``make_dataset``, for the examples with a mask (label in the vocabulary: ingest
    labels a masked image with the highest class it marks; an image without a mask is
    unlabeled and left out). The image goes through the transform graph; the ``mask``
    feature (uint8, H x W class ids) is augmented with it (``Augment.joint``).
    """
    files = shard_files(info.data, split)
    if not files:
        raise ValueError(f"no {split} examples under {info.data}")
    height, width = info.image_shape[:2]
    spec = {k: f.mask_feature_spec()[k] for k in (f.IMAGE, f.LABEL, f.MASK)}

    def parse_and_transform(records):
        parsed = tf.io.parse_example(records, spec)
        out = transform_layer(raw_features(parsed[f.IMAGE], parsed[f.LABEL]))
        masks = tf.reshape(tf.io.decode_raw(parsed[f.MASK], tf.uint8), [-1, height, width, 1])
        return to_image(out, info.image_shape), masks, out[f.LABEL_ID]

    ds = _parsed(files, parse_and_transform, training, seed)
    ds = ds.unbatch().filter(lambda image, mask, label_id: label_id >= 0)
    ds = ds.map(lambda image, mask, label_id: (image, mask))
    ds = ds.apply(tf.data.experimental.assert_cardinality(info.labelled(split)))
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(max(1, min(info.labelled(split), 10_000)), seed=seed)
    ds = ds.batch(batch_size)
    if training and augment is not None and augment.active:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda batch, pair: augment.joint(batch[0], tf.cast(batch[1], tf.float32), pair),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def finish(image, mask):
        ids = tf.cast(tf.round(tf.cast(mask[..., 0], tf.float32)), tf.int32)
        return image, tf.one_hot(tf.clip_by_value(ids, 0, classes - 1), classes)

    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def split_patients(info: DataInfo, split: str) -> list[str]:
    """The patient pseudonym of each labelled example of ``split``, in ``split_keys`` order."""
    spec = {k: f.raw_feature_spec()[k] for k in (f.PATIENT_ID, f.LABEL)}
    files = shard_files(info.data, split)
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda path: tf.data.TFRecordDataset(path, "GZIP"),
        cycle_length=max(1, min(len(files), CYCLE_LENGTH)),
    )
    vocabulary = set(info.labels)
    patients = []
    for batch in ds.batch(PARSE_BATCH).map(lambda r: tf.io.parse_example(r, spec)):
        for patient, label in zip(batch[f.PATIENT_ID].numpy(), batch[f.LABEL].numpy(), strict=True):
            if label.decode() in vocabulary:
                patients.append(patient.decode())
    return patients


def split_keys(info: DataInfo, split: str) -> list[tuple[str, int, str, str]]:
    """(SOP instance UID, frame, modality, label) of each labelled example of ``split``, in
    the order ``make_dataset`` yields them for evaluation (the files' order)."""
    names = (f.SOP_INSTANCE_UID, f.FRAME, f.MODALITY, f.LABEL)
    spec = {k: f.raw_feature_spec()[k] for k in names}
    files = shard_files(info.data, split)
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda path: tf.data.TFRecordDataset(path, "GZIP"),
        cycle_length=max(1, min(len(files), CYCLE_LENGTH)),  # sequential: the same order
    )
    vocabulary = set(info.labels)
    keys = []
    for batch in ds.batch(PARSE_BATCH).map(lambda r: tf.io.parse_example(r, spec)):
        for uid, frame, modality, label in zip(*(batch[k].numpy() for k in names), strict=True):
            if label.decode() in vocabulary:  # what make_dataset keeps
                keys.append((uid.decode(), int(frame), modality.decode(), label.decode()))
    return keys


def split_slices(info: DataInfo, split: str) -> dict[str, list[str | None]]:
    """Per slice column (``models.slices.COLUMNS``), one value per example of ``split``, in
    ``split_keys`` order.

    Modality comes from the examples; manufacturer, body part and label source from the
    index, joined on (SOP instance UID, frame); a column the index lacks is all None.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = split_keys(info, split)
    wanted = (f.MANUFACTURER, f.BODY_PART_EXAMINED, f.LABEL_SOURCE)
    found: dict[tuple[str, int], dict] = {}
    for path in sorted(tf.io.gfile.glob(join(info.data, INDEX_DIR, "part-*.parquet"))):
        with tf.io.gfile.GFile(path, "rb") as fh:
            table = pq.read_table(pa.BufferReader(fh.read()))
        present = [c for c in wanted if c in table.column_names]
        for row in table.select([f.SOP_INSTANCE_UID, f.FRAME, *present]).to_pylist():
            found[(row[f.SOP_INSTANCE_UID], row[f.FRAME])] = row
    columns: dict[str, list[str | None]] = {f.MODALITY: [k[2] or None for k in keys]}
    for name in wanted:
        columns[name] = [found.get(k[:2], {}).get(name) for k in keys]
    return columns


def class_weights(info: DataInfo) -> tuple[float, ...]:
    """Balanced weights from the train counts: n / (classes x n_class), 1.0 for an empty class."""
    train = info.counts.get(f.TRAIN, {})
    counts = [train.get(label, 0) for label in info.labels]
    total = sum(counts)
    return tuple(total / (len(counts) * c) if c else 1.0 for c in counts)
