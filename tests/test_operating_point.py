"""Threshold rules and the figures at a threshold, against hand-worked examples."""

import numpy as np
import pytest

from models import operating_point as op
from models.operating_point import OperatingPoint

# Ranked by score: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-).
Y = np.array([0, 0, 1, 1])
SCORE = np.array([0.1, 0.4, 0.35, 0.8])


def test_parse_accepts_the_three_rules_and_refuses_the_rest():
    assert OperatingPoint.parse("youden") == OperatingPoint()
    assert OperatingPoint.parse("sensitivity=0.95") == OperatingPoint("sensitivity", 0.95)
    assert str(OperatingPoint.parse("specificity=0.9")) == "specificity=0.9"
    for bad in ("youden=1", "sensitivity", "sensitivity=1.5", "specificity=0", "f1", "x=abc"):
        with pytest.raises(ValueError, match="operating point"):
            OperatingPoint.parse(bad)


def test_youden_takes_the_best_sensitivity_plus_specificity_midway_to_the_next_score():
    # J at >=0.8: 0.5; >=0.4: 0; >=0.35: 0.5; >=0.1: 0. The first (highest) maximum wins.
    assert op.choose_threshold(Y, SCORE, OperatingPoint()) == pytest.approx((0.8 + 0.4) / 2)


def test_sensitivity_and_specificity_targets():
    sens = OperatingPoint("sensitivity", 1.0)  # both positives: down to 0.35
    assert op.choose_threshold(Y, SCORE, sens) == pytest.approx((0.35 + 0.1) / 2)
    spec = OperatingPoint("specificity", 1.0)  # no negative above: only 0.8
    assert op.choose_threshold(Y, SCORE, spec) == pytest.approx(0.6)
    half = OperatingPoint("specificity", 0.5)  # one negative may be above: down to 0.35
    assert op.choose_threshold(Y, SCORE, half) == pytest.approx(0.225)
    # The lowest score: nothing below it to go midway to.
    assert op.choose_threshold([1, 0], [0.2, 0.9], OperatingPoint("sensitivity", 1.0)) == 0.2


def test_one_class_has_no_operating_point():
    with pytest.raises(ValueError, match="both classes"):
        op.choose_threshold([1, 1], [0.2, 0.3], OperatingPoint())


def test_threshold_metrics_count_at_or_above_as_positive():
    m = op.threshold_metrics(Y, SCORE, 0.35)  # predicted: -, +, +, +
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert (m["accuracy"], m["recall"], m["specificity"]) == (0.75, 1.0, 0.5)
    assert m["precision"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(0.8)
    nothing = op.threshold_metrics(Y, SCORE, 0.9)  # nothing predicted positive
    assert nothing["precision"] == 0.0 and nothing["specificity"] == 1.0
