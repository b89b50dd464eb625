"""Metric math against hand-counted confusion matrices, and the threshold choice."""

from __future__ import annotations

import numpy as np
import pytest

from pneumonia.evaluate import choose_threshold
from pneumonia.metrics import classification_metrics, confusion_counts


def test_confusion_counts_by_hand():
    labels = [1, 1, 1, 0, 0, 1, 0, 0]
    predicted = [1, 0, 1, 1, 0, 1, 0, 0]
    assert confusion_counts(labels, predicted) == {"tp": 3, "fp": 1, "tn": 3, "fn": 1}


def test_metrics_by_hand():
    # 10 images: 6 pneumonia, 4 normal. At threshold 0.5: tp=5, fn=1, tn=3, fp=1.
    labels = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    probs = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.2, 0.1, 0.3, 0.4, 0.65])
    m = classification_metrics(labels, probs, threshold=0.5)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (5, 1, 3, 1)
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["sensitivity"] == m["recall"] == pytest.approx(5 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(5 / 6)
    assert m["f1"] == pytest.approx(2 * 5 / (2 * 5 + 1 + 1))
    # AUC by hand: of the 24 (pos, neg) pairs, the positive scores higher in all but
    # (0.6 vs 0.65), (0.55 vs 0.65), (0.2 vs 0.3), (0.2 vs 0.4), (0.2 vs 0.65): 19 / 24.
    assert m["roc_auc"] == pytest.approx(19 / 24)
    assert m["threshold"] == 0.5 and m["n"] == 10


def test_probability_equal_to_threshold_counts_as_positive():
    m = classification_metrics(np.array([1, 0]), np.array([0.5, 0.49]), threshold=0.5)
    assert m["tp"] == 1 and m["tn"] == 1


def test_degenerate_cases_do_not_divide_by_zero():
    m = classification_metrics(np.array([1, 1]), np.array([0.1, 0.2]), threshold=0.9)
    assert m["precision"] == 0.0 and m["specificity"] == 0.0 and m["roc_auc"] is None


def test_min_sensitivity_threshold_is_the_highest_that_keeps_the_floor():
    labels = np.array([1] * 10 + [0] * 5)
    probs = np.array(
        [0.99, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.45, 0.2, 0.1, 0.05, 0.01]
    )
    # 90% of 10 positives = 9 must be flagged: the 9th highest positive score is 0.4.
    t = choose_threshold(labels, probs, "min_sensitivity", min_sensitivity=0.9)
    assert t == pytest.approx(0.4)
    m = classification_metrics(labels, probs, t)
    assert m["sensitivity"] == pytest.approx(0.9) and m["fp"] == 1  # only the 0.45 negative
    # Any higher threshold breaks the floor.
    assert classification_metrics(labels, probs, t + 1e-6)["sensitivity"] < 0.9


def test_youden_threshold_maximises_sensitivity_plus_specificity():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    t = choose_threshold(labels, probs, "youden")
    m = classification_metrics(labels, probs, t)
    best = max(
        classification_metrics(labels, probs, c)["sensitivity"]
        + classification_metrics(labels, probs, c)["specificity"]
        for c in probs
    )
    assert m["sensitivity"] + m["specificity"] == pytest.approx(best)


def test_threshold_needs_both_classes_and_a_known_method():
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.array([1, 1]), np.array([0.2, 0.3]), "youden")
    with pytest.raises(ValueError, match="threshold_method"):
        choose_threshold(np.array([0, 1]), np.array([0.2, 0.3]), "f1")


def test_fitted_temperature_undoes_overconfidence():
    from pneumonia.evaluate import expected_calibration_error, fit_temperature
    from pneumonia.serving import positive_probability

    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, size=(4000, 2))
    p = np.exp(true_logits[:, 1]) / np.exp(true_logits).sum(1)
    labels = (rng.random(4000) < p).astype(int)  # labels drawn from the true probabilities
    overconfident = true_logits * 3.0
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(labels, positive_probability(overconfident))
    after = expected_calibration_error(labels, positive_probability(overconfident / t))
    assert before > 0.1 and after < 0.03


def test_reliability_bins_and_ece_by_hand():
    from pneumonia.evaluate import expected_calibration_error, reliability

    labels = np.array([0, 0, 1, 1, 1, 0])
    prob = np.array([0.05, 0.05, 0.95, 0.95, 0.55, 0.55])
    rows = reliability(labels, prob, bins=10)
    assert rows == [(0.05, 0.0, 2), (0.55, 0.5, 2), (0.95, 1.0, 2)]
    # |0.05 - 0| * 2 + |0.55 - 0.5| * 2 + |0.95 - 1| * 2 over 6 images
    assert expected_calibration_error(labels, prob, bins=10) == pytest.approx(0.05)


def test_platt_calibration_undoes_a_prior_shift_that_temperature_cannot():
    from pneumonia.evaluate import calibrate, calibrated_probability, expected_calibration_error

    rng = np.random.default_rng(1)
    true_margin = rng.normal(1.0, 2.5, size=5000)
    labels = (rng.random(5000) < 1 / (1 + np.exp(-true_margin))).astype(int)
    # What class weighting does: margins pushed towards the minority class, and overconfident.
    seen = 2.0 * (true_margin - 1.5)
    logits = np.stack([np.zeros_like(seen), seen], axis=1)
    scale, bias = calibrate(logits, labels, "platt")
    assert scale == pytest.approx(0.5, rel=0.1) and bias == pytest.approx(1.5, abs=0.2)
    platt = expected_calibration_error(labels, calibrated_probability(logits, scale, bias))
    t_scale, t_bias = calibrate(logits, labels, "temperature")
    temperature = expected_calibration_error(labels, calibrated_probability(logits, t_scale, 0))
    assert t_bias == 0.0 and platt < 0.02 < temperature


def test_calibrated_probability_is_softmax_without_calibration_and_never_overflows():
    from pneumonia.evaluate import calibrated_probability
    from pneumonia.serving import positive_probability

    logits = np.array([[0.3, 2.0], [1.0, -1.0], [900.0, -900.0], [-900.0, 900.0]])
    assert calibrated_probability(logits, 1.0, 0.0) == pytest.approx(positive_probability(logits))
    assert calibrated_probability(logits, 1.0, 0.0)[2:].tolist() == [0.0, 1.0]


def test_calibration_method_none_and_unknown():
    from pneumonia.evaluate import calibrate

    logits = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert calibrate(logits, np.array([1, 0]), "none") == (1.0, 0.0)
    with pytest.raises(ValueError, match="evaluate.calibration"):
        calibrate(logits, np.array([1, 0]), "isotonic")
    for method in ("temperature", "platt"):
        with pytest.raises(ValueError, match="both classes"):
            calibrate(logits, np.array([1, 1]), method)


def test_errors_are_listed_by_class_most_confident_first(tmp_path):
    from pneumonia.evaluate import write_errors
    from pneumonia.prepared import PreparedSplit

    split = PreparedSplit(
        images=np.zeros((5, 2, 2), np.uint8),
        labels=np.array([0, 0, 1, 1, 0]),
        files=["n1.jpeg", "n2.jpeg", "p1.jpeg", "p2.jpeg", "n3.jpeg"],
        patients=list("abcde"),
    )
    prob = np.array([0.6, 0.9, 0.1, 0.3, 0.2])
    write_errors(split, prob, 0.5, tmp_path / "errors.csv")
    lines = (tmp_path / "errors.csv").read_text().splitlines()
    assert lines == [
        "actual,file,predicted,probability",
        "NORMAL,n2.jpeg,PNEUMONIA,0.9",
        "NORMAL,n1.jpeg,PNEUMONIA,0.6",
        "PNEUMONIA,p1.jpeg,NORMAL,0.1",
        "PNEUMONIA,p2.jpeg,NORMAL,0.3",
    ]


def test_figures_are_drawn_by_scikit_learns_displays(tmp_path):
    from PIL import Image

    from pneumonia.evaluate import write_figures
    from pneumonia.metrics import classification_metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probabilities = np.clip(labels * 0.6 + rng.normal(0.2, 0.2, 200), 0, 1)
    metrics = classification_metrics(labels, probabilities, 0.5)
    paths = write_figures(
        labels, probabilities, metrics, tmp_path, {"validation": (labels, probabilities)}
    )
    assert [p.name for p in paths] == ["roc.png", "pr.png", "confusion.png", "reliability.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 400
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something was drawn


def test_calibration_is_fitted_on_validation_or_on_the_sites_cases(tmp_path, monkeypatch):
    from dataclasses import replace

    from pneumonia import config
    from pneumonia.evaluate import (
        EmptySiteError,
        calibrate,
        calibrated_probability,
        calibration_cases,
    )
    from pneumonia.model import build_model, predict_logits
    from pneumonia.params import load as load_params
    from pneumonia.prepared import PreparedSplit, write_split
    from tests.bundles import real_images
    from tests.conftest import REPO

    params = load_params(REPO / "params.yaml").evaluate
    monkeypatch.setattr(config, "PREPARED_DIR", tmp_path)
    model = build_model("none").eval()
    labels = np.array([0] * 4 + [1] * 4)
    val = PreparedSplit(real_images("val", 4, 32), labels, [""] * 8, [""] * 8)
    val_logits = predict_logits(model, val.images)
    logits, fit_labels, fitted_on = calibration_cases(params, model, val, val_logits)
    assert logits is val_logits and fitted_on == "validation (8 images)"
    site_params = replace(params, calibrate_on="site")
    with pytest.raises(EmptySiteError, match="pneumonia.ingest EXPORT_FOLDER --split site"):
        calibration_cases(site_params, model, val, val_logits)
    site = PreparedSplit(
        real_images("test", 3, 32), np.array([0] * 3 + [1] * 3), [""] * 6, [""] * 6
    )
    write_split(site, tmp_path, "site")
    logits, fit_labels, fitted_on = calibration_cases(site_params, model, val, val_logits)
    assert fitted_on == "site (6 images)" and np.array_equal(fit_labels, site.labels)
    assert np.allclose(logits, predict_logits(model, site.images))
    # a recalibration keeps validation's decisions: the same images above the threshold
    scale, bias = calibrate(logits, fit_labels, "platt")
    val_scale, val_bias = calibrate(val_logits, labels, "platt")
    order = np.argsort(calibrated_probability(val_logits, val_scale, val_bias))
    assert np.array_equal(order, np.argsort(calibrated_probability(val_logits, scale, bias)))


def test_fit_calibrates_on_the_given_cases_and_chooses_the_threshold_on_these():
    from pneumonia.evaluate import (
        calibrate,
        calibrated_probability,
        expected_calibration_error,
        fit,
    )
    from pneumonia.params import load as load_params
    from tests.conftest import REPO

    params = load_params(REPO / "params.yaml").evaluate
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    logits = np.stack([np.zeros(200), 3 * labels - 1.5 + rng.normal(0, 1.2, 200)], axis=1)
    site_labels = rng.integers(0, 2, 80)
    site = np.stack([np.zeros(80), 1.5 * site_labels + rng.normal(0, 1, 80)], axis=1)

    own = fit(logits, labels, params)
    assert (own.scale, own.bias) == pytest.approx(calibrate(logits, labels, params.calibration))
    shifted = fit(logits, labels, params, calibrate_on=(site, site_labels))
    scale, bias = calibrate(site, site_labels, params.calibration)
    assert (shifted.scale, shifted.bias) == pytest.approx((scale, bias))
    expected = choose_threshold(
        labels,
        calibrated_probability(logits, scale, bias),
        params.threshold_method,
        params.min_sensitivity,
    )
    assert shifted.threshold == pytest.approx(expected)
    scores = shifted.score(logits, labels)
    assert scores["threshold"] == pytest.approx(expected)
    assert scores["sensitivity"] >= params.min_sensitivity  # chosen on these very cases
    probabilities = shifted.probabilities(logits)
    assert scores["ece"] == pytest.approx(expected_calibration_error(labels, probabilities))
