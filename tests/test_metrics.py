"""core.metrics and core.calibration against scikit-learn / statsmodels on fixtures."""

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import accuracy_score, confusion_matrix, precision_score, recall_score, roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from core import CLASS_NAMES
from core.calibration import expected_calibration_error, fit_temperature
from core.metrics import classification_report, per_source_reports, sensitivity_at_specificity, wilson_interval

EXACT = 1e-9  # the same figure computed two ways: equal up to float64 round-off


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3)) + 2.0 * np.eye(3)[labels]
    return labels, softmax(logits, axis=1)


def test_report_matches_sklearn(predictions):
    labels, probs = predictions
    report = classification_report(labels, probs, CLASS_NAMES, resamples=50)
    predicted = probs.argmax(1)
    assert report["accuracy"]["value"] == pytest.approx(accuracy_score(labels, predicted), abs=EXACT)
    assert report["confusion_matrix"] == confusion_matrix(labels, predicted).tolist()
    recalls = recall_score(labels, predicted, average=None)
    precisions = precision_score(labels, predicted, average=None)
    for index, name in enumerate(CLASS_NAMES):
        entry = report["per_class"][name]
        assert entry["recall"]["value"] == pytest.approx(recalls[index], abs=EXACT)
        assert entry["precision"]["value"] == pytest.approx(precisions[index], abs=EXACT)
        negatives = labels != index
        assert entry["specificity"]["value"] == pytest.approx((predicted[negatives] != index).mean(), abs=EXACT)
        assert entry["auc"]["value"] == pytest.approx(roc_auc_score(labels == index, probs[:, index]), abs=EXACT)
        low, high = entry["auc"]["ci95"]
        assert low <= entry["auc"]["value"] <= high
    assert report["macro_auc"]["value"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"), abs=EXACT)


def test_wilson_matches_statsmodels():
    for k, n in ((0, 10), (7, 10), (98, 100), (100, 100)):
        assert wilson_interval(k, n) == pytest.approx(proportion_confint(k, n, method="wilson"), abs=EXACT)
    assert np.isnan(wilson_interval(0, 0)).all()


def test_sensitivity_at_specificity_respects_the_constraint(predictions):
    labels, probs = predictions
    result = sensitivity_at_specificity(labels, probs[:, 0], 0, 0.95)
    negatives = labels != 0
    called = probs[:, 0] >= result["threshold"]
    assert (~called[negatives]).mean() >= 0.95
    assert called[~negatives].mean() == pytest.approx(result["value"], abs=EXACT)


def test_per_source_reports_handle_single_class_sources(predictions):
    labels, probs = predictions
    sources = np.where(labels == 2, "kids", "adults")
    reports = per_source_reports(labels, probs, sources, CLASS_NAMES, resamples=20)
    assert reports["kids"]["n"] == (labels == 2).sum()
    assert reports["kids"]["macro_auc"] is None
    assert reports["kids"]["per_class"]["Pneumonia"]["recall"]["n"] == (labels == 2).sum()


def test_temperature_scaling_recovers_overconfidence():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 3000)
    scores = rng.normal(size=(3000, 3)) + 1.5 * np.eye(3)[labels]
    # With unit-variance noise the true posterior is softmax(1.5 · scores), so 3 · scores needs T = 2.
    logits = 3.0 * scores
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.0, rel=0.1)
    calibrated = expected_calibration_error(labels, softmax(logits / temperature, axis=1))
    assert calibrated < expected_calibration_error(labels, softmax(logits, axis=1))


@pytest.mark.slow
def test_vectorised_bootstrap_auc_matches_sklearn_resample_by_resample(predictions):
    from core.metrics import bootstrap_auc_intervals, bootstrap_ci, one_vs_rest_auc

    labels, probs = predictions
    probs = np.round(probs, 2)  # ties
    per_class, macro = bootstrap_auc_intervals(labels, probs, resamples=200, seed=5)
    for index in range(3):
        reference = bootstrap_ci(lambda y, s, i=index: one_vs_rest_auc(y, s, i), (labels, probs[:, index]), 200, 5)
        assert per_class[index] == pytest.approx(reference, abs=EXACT)
    macro_value = np.mean([one_vs_rest_auc(labels, probs[:, i], i) for i in range(3)])
    assert macro[0] < macro_value < macro[1]


def test_rank_auc_is_sklearns_auc_for_one_problem_and_for_a_stack_of_resamples(predictions):
    from core.metrics import macro_auc, rank_auc, rank_macro_auc, resample_rows

    labels, probs = predictions
    assert rank_macro_auc(labels, probs) == pytest.approx(macro_auc(labels, probs), abs=1e-12)
    probs = np.round(probs, 2)  # ties count half in both
    assert rank_auc(labels == 0, probs[:, 0]) == pytest.approx(roc_auc_score(labels == 0, probs[:, 0]), abs=1e-12)
    rows = resample_rows(len(labels), resamples=5, seed=2)
    stacked = rank_macro_auc(labels[rows], probs[rows])
    assert stacked.shape == (5,)
    reference = [np.mean([roc_auc_score(labels[r] == k, probs[r, k]) for k in range(3)]) for r in rows]
    assert stacked == pytest.approx(reference, abs=1e-12)


def test_rank_auc_is_nan_without_positives_or_negatives():
    from core.metrics import rank_auc, rank_macro_auc

    scores = np.array([0.2, 0.4, 0.9])
    assert np.isnan(rank_auc(np.zeros(3, bool), scores)) and np.isnan(rank_auc(np.ones(3, bool), scores))
    assert np.isnan(rank_macro_auc(np.array([0, 1, 1]), np.full((3, 3), 1 / 3)))  # class 2 absent


def test_binary_bootstrap_auc_interval_matches_sklearn_resample_by_resample(predictions):
    from core.metrics import bootstrap_auc_interval, bootstrap_ci

    labels, probs = predictions
    truth, scores = labels == 1, np.round(probs[:, 1], 2)
    reference = bootstrap_ci(lambda t, s: roc_auc_score(t, s), (truth, scores), 200, 7)
    assert bootstrap_auc_interval(truth, scores, resamples=200, seed=7) == pytest.approx(reference, abs=EXACT)
