"""training.evaluate's age and gender metrics on a few faces, every expected number worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluate import age_metrics, gender_metrics


def test_age_errors_and_interval_coverage():
    true = np.array([10.0, 20.0, 30.0])
    pred = np.array([12.0, 17.0, 30.0])  # errors +2, -3, 0
    # 10 sits on its interval's low end, 30 on its high end (both held: the ends count); 20 is below its interval.
    low, high = np.array([10.0, 21.0, 25.0]), np.array([14.0, 25.0, 30.0])
    m = age_metrics(true, pred, low, high)
    assert m["n"] == 3
    assert m["mae"] == pytest.approx(5 / 3)  # (2 + 3 + 0) / 3
    assert m["mse"] == pytest.approx(13 / 3)  # (4 + 9 + 0) / 3
    assert m["rmse"] == pytest.approx(math.sqrt(13 / 3))
    assert m["coverage"] == pytest.approx(2 / 3)
    assert m["width"] == pytest.approx(13 / 3)  # (4 + 4 + 5) / 3


def test_age_metrics_of_the_two_face_example_and_without_an_interval():
    m = age_metrics(np.array([10.0, 20.0]), np.array([12.0, 17.0]))
    assert (m["mae"], m["mse"]) == pytest.approx((2.5, 6.5))
    assert m["rmse"] == pytest.approx(math.sqrt(6.5))
    # An age model without a distributional head gives NaN ends: no coverage claimed rather than a coverage of 0.
    nan = np.full(2, np.nan)
    assert "coverage" not in age_metrics(np.array([10.0, 20.0]), np.array([12.0, 17.0]), nan, nan)
    assert age_metrics(np.zeros(0), np.zeros(0))["mae"] is None


def test_gender_confusion_precision_recall_f1_and_ece():
    # Genders as UTKFace labels them: 1 female, 0 male. Three women, two men; the 0.24 woman is called a man.
    true = np.array([1, 1, 1, 0, 0])
    prob = np.array([0.92, 0.98, 0.24, 0.34, 0.04])
    m = gender_metrics(true, prob)
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(4 / 5)
    # Rows: true male, true female; columns: predicted male, predicted female.
    assert m["confusion_matrix"] == [[2, 0], [1, 2]]
    female, male = m["per_class"]["female"], m["per_class"]["male"]
    # Female: 2 found of 3 (recall 2/3), no man called a woman (precision 1); F1 = 2 * 1 * 2/3 / (1 + 2/3) = 4/5.
    assert (female["precision"], female["recall"], female["f1"]) == pytest.approx((1.0, 2 / 3, 4 / 5))
    # Male: both men found (recall 1), one of the three called men is a woman (precision 2/3); F1 = 4/5 likewise.
    assert (male["precision"], male["recall"], male["f1"]) == pytest.approx((2 / 3, 1.0, 4 / 5))
    assert (female["support"], male["support"]) == (3, 2)
    # ECE, bins 0.1 wide: 0.92 and 0.98 share bin 0.9-1.0 (mean 0.95, both women: gap 0.05, weight 2/5); the
    # others are alone with gaps 0.76 (0.24, a woman), 0.34 and 0.04 (men):
    # 2/5 * 0.05 + 1/5 * (0.76 + 0.34 + 0.04) = 0.02 + 0.228 = 0.248.
    calibration = m["calibration"]
    assert calibration["ece"] == pytest.approx(0.248)
    assert [b["low"] for b in calibration["bins"]] == pytest.approx([0.0, 0.2, 0.3, 0.9])  # empty bins left out
    assert [(b["n"], b["observed"]) for b in calibration["bins"]] == [(1, 0.0), (1, 1.0), (1, 0.0), (2, 1.0)]
    assert calibration["bins"][-1]["mean_p"] == pytest.approx(0.95)


def test_gender_metrics_of_no_faces():
    m = gender_metrics(np.zeros(0, int), np.zeros(0))
    assert m["accuracy"] is None and m["calibration"]["ece"] is None
    assert m["confusion_matrix"] == [[0, 0], [0, 0]]
