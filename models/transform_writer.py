"""Writes a run's tf.Transform graph without TensorFlow: a copy of the graph built for the
image geometry, with the run's statistics and vocabulary as its assets.

The graph (``models/preprocessing.py``) reads the pixel mean and standard deviation and the
label vocabulary from asset files, so it is the same for every run of one geometry. The
geometries ingest uses by default are shipped built (``models/transform_templates/``);
any other is built once with TensorFlow when a run needs it. What a run writes is then
the layout ``tft_beam.WriteTransformFn`` writes, read by ``tft.TFTransformOutput``:

    transform_fn/             the SavedModel; assets/label and assets/pixel_statistics
    transformed_metadata/     schema.pbtxt (label_id's domain: -1 .. vocabulary size - 1)
                              and asset_map
"""

import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models import features as f

_LOG = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "transform_templates"
SHIPPED_GEOMETRIES = ((224, 1), (224, 3), (64, 1))  # defaults, colour, the demo's
TEMPLATE_VOCABULARY = ("placeholder",)
TRANSFORM_FN, METADATA = "transform_fn", "transformed_metadata"
# What a shipped graph must hold to be copied (fingerprint.pb is not shipped: its random id
# would be every run's); the assets are written fresh.
TEMPLATE_FILES = (
    "transform_fn/saved_model.pb",
    "transform_fn/variables/variables.index",
    "transform_fn/variables/variables.data-00000-of-00001",
    "transformed_metadata/schema.pbtxt",
    "transformed_metadata/asset_map",
)
# Where the shipped graphs are built from, relative to a private working folder: the asset
# paths are part of the table names in the graph, so a fixed name makes a rebuild
# byte-identical (the assets are copied into the SavedModel; nothing points back here).
TEMPLATE_ASSETS = "template-assets"
_LABEL_DOMAIN = re.compile(
    r'(name: "' + f.LABEL_ID + r'"\n  type: INT\n  int_domain \{\n    min: -1\n    max: )-?\d+'
)


def template_name(size: int, channels: int) -> str:
    return f"{size}x{size}x{channels}"


def float32_text(value: float) -> str:
    """The float32 nearest ``value``, written so that parsing it gives that float32 back
    (as ``tf.constant(value, tf.float32)`` would have rounded it)."""
    return repr(float(np.float32(value)))


def statistics_text(pixel_mean: float, pixel_std: float) -> str:
    d, mean, std = f.STATISTICS_DELIMITER, f.PIXEL_MEAN, f.PIXEL_STD
    return f"{mean}{d}{float32_text(pixel_mean)}\n{std}{d}{float32_text(pixel_std)}\n"


def vocabulary_token(label: str) -> bool:
    """Whether ``label`` can be a line of the vocabulary file: not empty, no line break
    (tf.Transform's own vocabulary leaves such tokens out the same way)."""
    return bool(label) and "\n" not in label and "\r" not in label


def write_assets(folder: str, pixel_mean: float, pixel_std: float, labels: Sequence[str]) -> None:
    """The statistics and vocabulary files in ``folder``.

    Raises:
        ValueError: an empty vocabulary, or a label that cannot be a line of it
            (``vocabulary_token``; ingest leaves such labels out).
    """
    if not labels or not all(vocabulary_token(label) for label in labels):
        raise ValueError("the vocabulary needs labels, none empty or with a line break")
    with open(os.path.join(folder, f.STATISTICS_ASSET), "w") as fh:
        fh.write(statistics_text(pixel_mean, pixel_std))
    with open(os.path.join(folder, f.LABEL_VOCABULARY), "wb") as fh:
        fh.write(b"".join(label.encode() + b"\n" for label in labels))


def schema_text(template: str, vocabulary_size: int) -> str:
    """The template's output schema with label_id's domain for ``vocabulary_size`` labels
    (what tf.Transform infers from the vocabulary: -1, the default, to size - 1)."""
    text, found = _LABEL_DOMAIN.subn(rf"\g<1>{vocabulary_size - 1}", template)
    if found != 1:
        raise ValueError("the template's schema has no label_id domain to fill in")
    return text


def write_transform(
    directory: str,
    pixel_mean: float,
    pixel_std: float,
    labels: Sequence[str],
    size: int = f.DEFAULT_IMAGE_SIZE,
    channels: int = f.DEFAULT_IMAGE_CHANNELS,
) -> None:
    """Writes the graph for ``size`` x ``size`` x ``channels`` images under the local
    folder ``directory``, with these statistics and this vocabulary (label id i is
    ``labels[i]``). TensorFlow is imported only for a geometry that is not shipped.

    Raises:
        ValueError: see ``write_assets``.
    """
    shipped = TEMPLATES / template_name(size, channels)
    if all((shipped / name).is_file() for name in TEMPLATE_FILES):
        _fill(str(shipped), directory, pixel_mean, pixel_std, labels)
        return
    if (size, channels) in SHIPPED_GEOMETRIES:
        _LOG.warning("the shipped graph %s is incomplete: building it", shipped.name)
    with tempfile.TemporaryDirectory(prefix="dicomflow-template-") as tmp:
        template, assets = os.path.join(tmp, "graph"), os.path.join(tmp, "assets")
        os.makedirs(assets)
        build_template(template, size, channels, assets)
        _fill(template, directory, pixel_mean, pixel_std, labels)


def _fill(template: str, directory: str, mean: float, std: float, labels: Sequence[str]) -> None:
    # Plain copies (not copy2): a read-only installed package gives writable files.
    skip = shutil.ignore_patterns("fingerprint.pb", f.STATISTICS_ASSET, f.LABEL_VOCABULARY)
    for part in (TRANSFORM_FN, METADATA):
        shutil.copytree(
            os.path.join(template, part),
            os.path.join(directory, part),
            ignore=skip,
            copy_function=shutil.copyfile,
            dirs_exist_ok=True,
        )
    assets = os.path.join(directory, TRANSFORM_FN, "assets")
    os.makedirs(assets, exist_ok=True)
    write_assets(assets, mean, std, labels)
    metadata = os.path.join(directory, METADATA)
    schema = os.path.join(metadata, "schema.pbtxt")
    with open(schema) as fh:
        text = schema_text(fh.read(), len(labels))
    with open(schema, "w") as fh:
        fh.write(text)


def build_template(directory: str, size: int, channels: int, assets: str) -> None:
    """The graph for one geometry with placeholder assets (written into the folder
    ``assets``): what ``write_transform`` copies and fills in. Imports TensorFlow."""
    from models.preprocessing import build_graph  # TensorFlow: only here

    write_assets(assets, 0.0, 0.0, TEMPLATE_VOCABULARY)
    build_graph(directory, assets, size, channels)


def rebuild_shipped(root: Path = TEMPLATES) -> list[Path]:
    """Rebuilds every shipped graph under ``root``; returns their folders. Run from an
    empty private working folder (``python -m models.transform_writer [ROOT]`` makes one):
    the assets are built there under the relative name ``TEMPLATE_ASSETS``. Byte-identical
    to the shipped ones only in a process that has traced nothing before. A graph is
    swapped in only once it is built whole; ``fingerprint.pb`` (a random id on every
    build, which every run's copy would share) is left out."""
    out = []
    for size, channels in SHIPPED_GEOMETRIES:
        target = root / template_name(size, channels)
        building = root / f".{target.name}.building"
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(TEMPLATE_ASSETS, ignore_errors=True)
        os.makedirs(TEMPLATE_ASSETS)
        build_template(str(building), size, channels, TEMPLATE_ASSETS)
        (building / TRANSFORM_FN / "fingerprint.pb").unlink(missing_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        building.rename(target)
        out.append(target)
    return out


if __name__ == "__main__":
    # A fresh process: the traced functions' names count what the process traced before;
    # a private working folder: the assets' relative names are in the graph.
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else TEMPLATES
    with tempfile.TemporaryDirectory(prefix="dicomflow-templates-") as work:
        os.chdir(work)
        for folder in rebuild_shipped(root):
            print(folder, file=sys.stderr)
