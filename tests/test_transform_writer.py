"""The run's graph written from a shipped build: the same graph TensorFlow would build,
the run's statistics and vocabulary as its assets, and no TensorFlow imported to write it."""

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from models import features as f
from models import preprocessing
from models import transform_writer as w
from transforms.tfrecord import make_example

REPO = Path(__file__).resolve().parents[1]
IDS = {f.SOP_INSTANCE_UID: "2.25.1", f.PATIENT_ID: "PATX", f.MODALITY: "CT"}


def files(root: Path) -> dict[str, bytes]:
    # fingerprint.pb holds a random id on every build; everything else must match.
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "fingerprint.pb"
    }


def test_the_shipped_graphs_are_what_the_preprocessing_builds_today(tmp_path):
    """A change to models/preprocessing.py must rebuild them (make transform-templates).
    Rebuilt in a fresh process, as the make target does (traced names count what the
    process traced before)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "models.transform_writer", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    names = [w.template_name(*g) for g in w.SHIPPED_GEOMETRIES]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    for name in names:
        folder, shipped = tmp_path / name, w.TEMPLATES / name
        assert files(folder) == files(shipped), f"{shipped} is stale: make transform-templates"


def constants_graph(directory, mean, std, vocabulary, size, channels):
    """The graph as it was written before: the statistics as float32 constants."""
    from tensorflow_transform import impl_helper

    def fn(inputs):
        image = tf.reshape(
            preprocessing.decode_image(inputs[f.IMAGE]), [-1, size * size * channels]
        )
        normalized = image - tf.constant(mean, tf.float32)
        if std > 0:
            normalized /= tf.constant(std, tf.float32)
        label_id = tft.apply_vocabulary(inputs[f.LABEL], vocabulary, default_value=-1)
        return {f.IMAGE_NORMALIZED: normalized, f.LABEL_ID: label_id}

    specs = f.raw_feature_spec()
    impl_helper.analyze_in_place(
        fn,
        force_tf_compat_v1=False,
        feature_specs=specs,
        type_specs=impl_helper.get_type_specs_from_feature_specs(specs),
        transform_output_path=directory,
    )


def test_the_package_data_globs_ship_every_template_file():
    """setup.py's package_data patterns must keep up with the templates' layout."""
    setup = (REPO / "setup.py").read_text()
    patterns = re.findall(r'"(transform_templates/[^"]+)"', setup)
    models = REPO / "models"
    shipped = [str(p.relative_to(models)) for p in w.TEMPLATES.rglob("*") if p.is_file()]
    assert shipped
    missed = [p for p in shipped if not any(fnmatch.fnmatch(p, pat) for pat in patterns)]
    assert missed == []
    for geometry in w.SHIPPED_GEOMETRIES:
        folder = w.TEMPLATES / w.template_name(*geometry)
        assert all((folder / name).is_file() for name in w.TEMPLATE_FILES)
        assert not (folder / w.TRANSFORM_FN / "fingerprint.pb").exists()


def test_an_incomplete_shipped_graph_is_built_instead(tmp_path, monkeypatch, caplog):
    broken = tmp_path / "templates"
    name = w.template_name(*w.SHIPPED_GEOMETRIES[-1])
    (broken / name / w.TRANSFORM_FN).mkdir(parents=True)
    (broken / name / w.TRANSFORM_FN / "saved_model.pb").write_bytes(b"not a graph")
    monkeypatch.setattr(w, "TEMPLATES", broken)
    w.write_transform(str(tmp_path / "g"), 0.5, 0.5, ["a"], *w.SHIPPED_GEOMETRIES[-1])
    assert "incomplete" in caplog.text
    assert tft.TFTransformOutput(str(tmp_path / "g")).vocabulary_by_name(f.LABEL_VOCABULARY) == [
        b"a"
    ]


def transform(directory: str, records: list[bytes]) -> dict:
    output = tft.TFTransformOutput(directory)
    raw = tf.io.parse_example(tf.constant(records), f.raw_feature_spec())
    return {k: v.numpy() for k, v in output.transform_raw_features(raw).items()}


@pytest.mark.parametrize("std", [0.2123456789, 0.0])
def test_a_shipped_graph_gives_the_numbers_of_one_built_for_the_run(tmp_path, std):
    size, channels = w.SHIPPED_GEOMETRIES[-1]
    mean, labels = 0.3141592653589793, ["lesion", "clear", "other"]
    shipped = str(tmp_path / "shipped")
    w.write_transform(shipped, mean, std, labels, size, channels)
    assets = tmp_path / "assets"
    assets.mkdir()
    w.write_assets(str(assets), mean, std, labels)
    built = str(tmp_path / "built")
    preprocessing.build_graph(built, str(assets), size, channels)
    rng = np.random.default_rng(7)
    images = [rng.random((size, size, channels), np.float32) for _ in range(3)]
    records = [
        make_example(im, IDS, lab, 0) for im, lab in zip(images, ["clear", "", "x"], strict=True)
    ]
    a, b = transform(shipped, records), transform(built, records)
    np.testing.assert_array_equal(a[f.IMAGE_NORMALIZED], b[f.IMAGE_NORMALIZED])
    assert a[f.LABEL_ID].tolist() == b[f.LABEL_ID].tolist() == [1, -1, -1]
    # The numbers of the graph before the statistics became assets (constants in it):
    # within a float32 ulp (TensorFlow may fold a division by a constant into a product).
    constants = str(tmp_path / "constants")
    constants_graph(constants, mean, std, str(assets / f.LABEL_VOCABULARY), size, channels)
    c = transform(constants, records)
    np.testing.assert_allclose(a[f.IMAGE_NORMALIZED], c[f.IMAGE_NORMALIZED], rtol=2e-7, atol=1e-7)
    assert c[f.LABEL_ID].tolist() == [1, -1, -1]
    metadata = "transformed_metadata/schema.pbtxt"
    assert Path(shipped, metadata).read_text() == Path(built, metadata).read_text()
    assert tft.TFTransformOutput(shipped).vocabulary_by_name(f.LABEL_VOCABULARY) == [
        b"lesion",
        b"clear",
        b"other",
    ]


def test_writing_a_shipped_geometry_imports_no_tensorflow(tmp_path):
    code = (
        "import sys; from models.transform_writer import write_transform; "
        f"write_transform({str(tmp_path / 'g')!r}, 0.5, 0.25, ['a'], 224, 1); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'tensorflow_transform', 'keras')))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "g" / "transform_fn" / "assets" / "pixel_statistics").read_text() == (
        "pixel_mean\t0.5\npixel_std\t0.25\n"
    )


def test_a_geometry_not_shipped_is_built(tmp_path):
    w.write_transform(str(tmp_path), 0.5, 0.5, ["a", "b"], size=3, channels=2)
    spec = tft.TFTransformOutput(str(tmp_path)).transformed_feature_spec()
    assert spec[f.IMAGE_NORMALIZED] == tf.io.FixedLenFeature([18], tf.float32)


@pytest.mark.parametrize("labels", [[], [""], ["a\nb"], ["ok", "x\r"]])
def test_a_vocabulary_that_cannot_be_one_label_a_line_is_refused(tmp_path, labels):
    with pytest.raises(ValueError, match="vocabulary"):
        w.write_transform(str(tmp_path / "g"), 0.5, 0.5, labels, 224, 1)


def test_float32_text_parses_back_to_the_float32_rounding():
    rng = np.random.default_rng(3)
    for value in [*rng.random(200), 1 / 3, 0.1, 1e-8, 0.0]:
        assert np.float32(float(w.float32_text(value))) == np.float32(value)
        assert tf.strings.to_number(w.float32_text(value), tf.float32).numpy() == np.float32(value)
