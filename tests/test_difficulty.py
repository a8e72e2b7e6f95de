"""The lesion task's difficulty: presets, parsing, pixel-only changes, and the SKE mode."""

import io
import math

import numpy as np
import pydicom
import pytest

from transforms import testing as synth
from transforms.testing import difficulty as d
from transforms.testing.difficulty import Difficulty


def test_parse_presets_and_overrides():
    assert Difficulty.parse("easy") == Difficulty()
    assert Difficulty.parse("") == d.DEFAULT == synth.DEFAULT_DIFFICULTY
    assert Difficulty.parse("hard,noise=4") == Difficulty(0.4, 0.8, 4.0)
    assert Difficulty.parse("contrast=0.5") == Difficulty(0.5, d.DEFAULT.size, d.DEFAULT.noise)
    ske = Difficulty.parse("ske,contrast=2")
    assert ske.mode == d.SKE and ske.contrast == 2 and str(ske) == "ske,contrast=2,size=1,noise=1"
    for bad, match in (
        ("medium", "use a preset"),
        ("contrast=x", "not a number"),
        ("noise=0", "must be a number > 0"),
        ("size=-1", "must be a number > 0"),
    ):
        with pytest.raises(ValueError, match=match):
            Difficulty.parse(bad)


def test_ske_d_prime_is_the_signal_energy_over_the_noise():
    ske = Difficulty(mode=d.SKE)
    # A gaussian of peak A and width w sums, squared, to about A² π w² (its tails fit in 64 px).
    approx = d.SKE_AMPLITUDE * math.sqrt(math.pi) * d.SKE_SIGMA / d.SKE_NOISE
    assert ske.d_prime() == pytest.approx(approx, rel=1e-3)
    assert Difficulty(contrast=2, mode=d.SKE).d_prime() == pytest.approx(2 * ske.d_prime())
    assert Difficulty(noise=2, mode=d.SKE).d_prime() == pytest.approx(ske.d_prime() / 2)
    assert ske.ideal_auc() == pytest.approx(0.5 * (1 + math.erf(ske.d_prime() / 2)))
    assert 0.85 < ske.ideal_auc() < 0.95
    assert ske.describe()["ideal_auc"] == ske.ideal_auc()


def test_the_matched_filter_reaches_the_ideal_auc_on_generated_images():
    ske = Difficulty(mode=d.SKE)
    rng = np.random.default_rng(0)
    signal = ske.ske_signal()
    n = 1500
    t_pos = [np.sum(signal * ske.ske_image(rng, True)) for _ in range(n)]
    t_neg = [np.sum(signal * ske.ske_image(rng, False)) for _ in range(n)]
    auc = np.mean(np.asarray(t_pos)[:, None] > np.asarray(t_neg)[None, :])
    assert auc == pytest.approx(ske.ideal_auc(), abs=0.02)


def _pixels_and_rest(part):
    """Per loose file: its pixel data, and everything else in the dataset."""
    out = {}
    for file in part.files:
        if file.path.endswith((".zip", ".tar.gz")):
            continue
        ds = pydicom.dcmread(io.BytesIO(file.data))
        pixels = ds.PixelData
        del ds.PixelData
        # A JPEG's compression ratio depends on what it compressed: part of the pixels.
        ds.pop("LossyImageCompressionRatio", None)
        out[file.path] = (pixels, ds)
    return out


def test_difficulty_changes_lesion_pixels_only():
    easy = synth.synth_patient(5, 3, 1.0, Difficulty())
    hard = synth.synth_patient(5, 3, 1.0, d.PRESETS["hard"])
    assert [f.path for f in easy.files] == [f.path for f in hard.files]
    assert easy.labels == hard.labels and easy.phi == hard.phi
    a, b = _pixels_and_rest(easy), _pixels_and_rest(hard)
    assert a  # some loose files to compare
    for path in a:
        assert a[path][1] == b[path][1], path  # every attribute but the pixels
    assert any(a[path][0] != b[path][0] for path in a)
    # The corpus generator's default is the standard task; the phantom's own default is
    # the original (easy) appearance that older fixtures were generated with.
    assert synth.synth_patient(5, 3, 1.0) == synth.synth_patient(5, 3, 1.0, d.DEFAULT)


def test_ske_mode_writes_dx_images_of_the_ske_size():
    part = synth.synth_patient(0, 1, 0.5, Difficulty(mode=d.SKE))  # patient 0: loose files
    loose = _pixels_and_rest(part)
    assert loose
    for _, ds in loose.values():
        assert ds.Modality == "DX" and (ds.Rows, ds.Columns) == (d.SKE_SIZE, d.SKE_SIZE)
