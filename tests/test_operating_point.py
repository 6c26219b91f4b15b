"""Operating points: figures against scikit-learn / statsmodels / scipy, the one ``p ≥ t`` rule shared by the
threshold table and the full confusion matrix, saving into the card (with its history, under a file lock, from two
processes at once), the page's own tests are in ``test_operating_point_page.py``."""

import json
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from statsmodels.stats.proportion import proportion_confint

from core import CLASS_NAMES, registry
from core import operating_point as op
from tests.conftest import REPO

POSITIVES = ("COVID-19", "Pneumonia", "abnormal")
FEW_RESAMPLES = 50
EXACT = 1e-9
PAGE = "pages/operating_point.py"
APP_TIMEOUT = 60
SHOWN = 0.0005 + EXACT  # the page shows proportions to 3 decimals
THRESHOLD_SHOWN = 0.00005 + EXACT  # and thresholds to 4
INTERVAL = re.compile(r"(-?\d+\.\d+) \((-?\d+\.\d+)–(-?\d+\.\d+)\)")


@pytest.fixture
def synthetic():
    """300 cases with tied scores (rounded to 2 decimals) and two sources."""
    rng = np.random.default_rng(7)
    labels = np.array(CLASS_NAMES)[rng.integers(0, 3, 300)]
    boost = np.stack([labels == name for name in CLASS_NAMES], axis=1) * 1.5
    probs = rng.dirichlet(np.ones(3), size=300) + boost
    probs = np.round(probs / probs.sum(axis=1, keepdims=True), 2)
    frame = pd.DataFrame(
        {"path": [f"{i}.png" for i in range(300)], "label": labels, "source": rng.choice(["alpha", "beta"], 300)}
    )
    for index, name in enumerate(CLASS_NAMES):
        frame[f"p_{name}"] = probs[:, index]
    return frame


def sklearn_figures(truth, scores, threshold) -> dict:
    called = scores >= threshold
    return {
        "sensitivity": recall_score(truth, called, zero_division=np.nan),
        "specificity": recall_score(truth, called, pos_label=False, zero_division=np.nan),
        "ppv": precision_score(truth, called, zero_division=np.nan),
        "npv": precision_score(truth, called, pos_label=False, zero_division=np.nan),
        "accuracy": accuracy_score(truth, called),
        "f1": f1_score(truth, called, zero_division=np.nan),
    }


def assert_figures_match_sklearn(truth, scores, threshold):
    found = op.figures(truth, scores, threshold, resamples=FEW_RESAMPLES)
    tn, fp, fn, tp = confusion_matrix(truth, scores >= threshold, labels=[False, True]).ravel()
    assert (found["tp"], found["fp"], found["tn"], found["fn"]) == (tp, fp, tn, fn)
    for key, expected in sklearn_figures(truth, scores, threshold).items():
        np.testing.assert_allclose(found[key]["value"], expected, atol=EXACT, err_msg=key)


def observed_thresholds(scores, most=25):
    """Up to ``most`` distinct observed scores, spread over their range."""
    unique = np.unique(scores)
    return unique[np.linspace(0, len(unique) - 1, min(most, len(unique))).astype(int)]


# --- figures against the reference libraries ---------------------------------------------------------------


@pytest.mark.parametrize("positive", POSITIVES)
def test_figures_match_sklearn_on_synthetic_data(synthetic, positive):
    scores, truth = op.scores_and_truth(synthetic, positive)
    for threshold in (0.0, 0.25, 0.5, 0.9, 1.0, *observed_thresholds(scores, 5)):
        assert_figures_match_sklearn(truth, scores, threshold)


def test_abnormal_score_is_one_minus_normal(synthetic):
    scores, truth = op.scores_and_truth(synthetic, "abnormal")
    np.testing.assert_array_equal(scores, 1.0 - synthetic["p_Normal"].to_numpy())
    np.testing.assert_array_equal(truth, synthetic["label"].to_numpy() != "Normal")


def test_wilson_intervals_match_statsmodels_and_scipy(synthetic):
    scores, truth = op.scores_and_truth(synthetic, "COVID-19")
    found = op.figures(truth, scores, 0.4, resamples=FEW_RESAMPLES)
    for key in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
        k, n = found[key]["k"], found[key]["n"]
        statsmodels_ci = proportion_confint(k, n, alpha=0.05, method="wilson")
        np.testing.assert_allclose(found[key]["ci95"], statsmodels_ci, atol=EXACT)
        scipy_ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        np.testing.assert_allclose(found[key]["ci95"], [scipy_ci.low, scipy_ci.high], atol=EXACT)
    low, high = found["f1"]["ci95"]
    assert low <= found["f1"]["value"] <= high


def test_curves_match_sklearn(synthetic):
    scores, truth = op.scores_and_truth(synthetic, "Pneumonia")
    curve = op.roc(truth, scores, resamples=FEW_RESAMPLES)
    for found, expected in zip((curve["fpr"], curve["tpr"], curve["thresholds"]), roc_curve(truth, scores)):
        np.testing.assert_array_equal(found, expected)
    assert curve["auc"]["value"] == pytest.approx(roc_auc_score(truth, scores), abs=EXACT)
    assert curve["auc"]["ci95"][0] <= curve["auc"]["value"] <= curve["auc"]["ci95"][1]
    pr = op.precision_recall(truth, scores)
    expected_pr = precision_recall_curve(truth, scores)
    for found, expected in zip((pr["precision"], pr["recall"], pr["thresholds"]), expected_pr):
        np.testing.assert_array_equal(found, expected)
    assert pr["average_precision"] == pytest.approx(average_precision_score(truth, scores), abs=EXACT)
    assert op.roc(np.ones(4, bool), np.linspace(0, 1, 4)) is None


@pytest.mark.parametrize("positive", POSITIVES)
def test_table_picks_the_highest_threshold_reaching_each_target(synthetic, positive):
    scores, truth = op.scores_and_truth(synthetic, positive)
    rows = op.sensitivity_table(truth, scores)
    assert [row["target_sensitivity"] for row in rows] == list(op.TARGET_SENSITIVITIES)
    for row in rows:
        threshold, target = row["threshold"], row["target_sensitivity"]
        assert threshold in scores
        assert recall_score(truth, scores >= threshold) >= target - EXACT
        higher = scores[scores > threshold]
        if len(higher):
            assert recall_score(truth, scores >= higher.min()) < target
        assert row["specificity"]["value"] == pytest.approx(
            recall_score(truth, scores >= threshold, pos_label=False), abs=EXACT
        )
    assert op.threshold_for_sensitivity(np.zeros(3, bool), np.ones(3), 0.9) is None


@pytest.mark.parametrize("positive", POSITIVES)
def test_confusion_matrix_agrees_with_table_at_observed_scores(synthetic, positive):
    scores, truth = op.scores_and_truth(synthetic, positive)
    table_thresholds = [row["threshold"] for row in op.sensitivity_table(truth, scores)]
    for threshold in (*observed_thresholds(scores), *table_thresholds):
        matrix = op.decision_matrix(synthetic, CLASS_NAMES, positive, threshold)
        assert matrix.sum() == len(synthetic)
        assert op.collapse(matrix, CLASS_NAMES, positive) == op.counts(truth, scores, threshold)


def test_predictive_values_follow_bayes(synthetic):
    scores, truth = op.scores_and_truth(synthetic, "COVID-19")
    found = op.figures(truth, scores, 0.3, resamples=FEW_RESAMPLES)
    at_sample = op.predictive_values_at(found, truth.mean())  # the sample's own prevalence gives its PPV / NPV
    assert at_sample["ppv"]["value"] == pytest.approx(found["ppv"]["value"], abs=EXACT)
    assert at_sample["npv"]["value"] == pytest.approx(found["npv"]["value"], abs=EXACT)
    sensitivity, specificity, prevalence = 0.9, 0.8, 0.05
    ppv, npv = op.predictive_values(sensitivity, specificity, prevalence)
    assert ppv == pytest.approx(0.9 * 0.05 / (0.9 * 0.05 + 0.2 * 0.95), abs=EXACT)
    assert npv == pytest.approx(0.8 * 0.95 / (0.8 * 0.95 + 0.1 * 0.05), abs=EXACT)
    at_low = op.predictive_values_at(found, prevalence)
    for key in ("ppv", "npv"):
        low, high = at_low[key]["range"]
        assert low <= at_low[key]["value"] <= high


def test_per_source_rows_are_the_figures_of_each_source(synthetic):
    rows = op.per_source(synthetic, "abnormal", 0.5)
    assert [row["source"] for row in rows] == ["alpha", "beta"]
    for row in rows:
        subset = synthetic[synthetic["source"] == row["source"]]
        scores, truth = op.scores_and_truth(subset, "abnormal")
        assert {k: row[k] for k in ("tp", "fp", "tn", "fn")} == op.counts(truth, scores, 0.5)
        assert row["sensitivity"]["value"] == pytest.approx(recall_score(truth, scores >= 0.5), abs=EXACT)


# --- the decision rule ------------------------------------------------------------------------------------


def test_decide_uses_greater_or_equal_and_falls_back_to_the_other_classes():
    assert op.decide([0.2, 0.5, 0.3], CLASS_NAMES, None).label == "Normal"
    point = {"positive_class": "COVID-19", "threshold": 0.2}
    assert op.decide([0.2, 0.5, 0.3], CLASS_NAMES, point).label == "COVID-19"
    assert op.decide([0.19, 0.3, 0.51], CLASS_NAMES, point).label == "Pneumonia"
    point = {"positive_class": "abnormal", "threshold": 0.5}
    assert op.decide([0.1, 0.5, 0.4], CLASS_NAMES, point).label == "Pneumonia"  # 1 − 0.5 ≥ 0.5: most probable abnormal
    assert op.decide([0.3, 0.6, 0.1], CLASS_NAMES, point).label == "Normal"


def test_positive_class_choices_and_errors():
    assert op.positive_classes(CLASS_NAMES) == ["COVID-19", "Pneumonia", "abnormal"]
    with pytest.raises(ValueError):
        op.positive_members(CLASS_NAMES, "Normal")


# --- on published versions ---------------------------------------------------------------------------------


def read_csv_independently(version: str, filename=registry.VAL_PREDICTIONS) -> pd.DataFrame:
    return pd.read_csv(registry.version_dir(version) / filename)


def test_figures_match_sklearn_on_the_version(version):
    frame = op.load_predictions(version)
    assert list(frame.columns[:3]) == ["path", "label", "source"]
    assert len(frame) == len(read_csv_independently(version))
    for positive in POSITIVES:
        scores, truth = op.scores_and_truth(frame, positive)
        for threshold in (0.1, 0.5, *observed_thresholds(scores, 3)):
            assert_figures_match_sklearn(truth, scores, threshold)
        assert op.roc(truth, scores, resamples=FEW_RESAMPLES)["auc"]["value"] == pytest.approx(
            roc_auc_score(truth, scores), abs=EXACT
        )
        for row in op.sensitivity_table(truth, scores):
            matrix = op.decision_matrix(frame, CLASS_NAMES, positive, row["threshold"])
            assert op.collapse(matrix, CLASS_NAMES, positive) == {k: row[k] for k in ("tp", "fp", "tn", "fn")}


def test_save_reload_and_clear(version):
    threshold = float(np.median(read_csv_independently(version)["p_COVID-19"]))
    history_before = list(registry.load_card(version).operating_point_history)
    stored = op.save_operating_point(version, "COVID-19", threshold, reader="Dr A. Reader", reason="local audit")
    card = registry.load_card(version)
    assert card.operating_point == stored
    entry = card.operating_point_history[-1]
    assert len(card.operating_point_history) == len(history_before) + 1
    assert (entry["reader"], entry["reason"], entry["old"]) == ("Dr A. Reader", "local audit", None)
    assert entry["new"] == {"positive_class": "COVID-19", "threshold": threshold} and entry["time"] == stored["saved"]
    assert card.operating_point["chosen_on"] == "validation"
    assert card.operating_point["threshold"] == threshold
    scores, truth = op.scores_and_truth(op.load_predictions(version), "COVID-19")
    assert card.operating_point["figures"]["sensitivity"]["value"] == pytest.approx(
        recall_score(truth, scores >= threshold), abs=EXACT
    )
    assert op.decide([threshold, 0.9, 0.1], card.class_names, card.operating_point).label == "COVID-19"
    json.loads((registry.version_dir(version) / registry.CARD_FILE).read_text(), parse_constant=pytest.fail)
    op.clear_operating_point(version, reader="Dr B", reason="back to argmax")
    card = registry.load_card(version)
    assert card.operating_point is None
    assert card.operating_point_history[-1]["old"] == entry["new"] and card.operating_point_history[-1]["new"] is None
    op.clear_operating_point(version, reader="Dr B", reason="again")  # nothing to clear: nothing recorded
    assert len(registry.load_card(version).operating_point_history) == len(history_before) + 2


@pytest.mark.parametrize(
    "positive, threshold, note",
    [
        ("Normal", 0.5, {"reader": "A", "reason": "r"}),
        ("COVID-19", 1.5, {"reader": "A", "reason": "r"}),
        ("COVID-19", 0.5, {"reader": "  ", "reason": "r"}),
        ("COVID-19", 0.5, {"reader": "A", "reason": ""}),
    ],
)
def test_save_rejects_a_bad_point_or_a_missing_name_or_reason(tiny_version, positive, threshold, note):
    before = (registry.version_dir(tiny_version) / registry.CARD_FILE).read_bytes()
    with pytest.raises(ValueError):
        op.save_operating_point(tiny_version, positive, threshold, **note)
    assert (registry.version_dir(tiny_version) / registry.CARD_FILE).read_bytes() == before


def test_history_entry_records_who_when_what_and_why():
    old, new = (
        {"positive_class": "COVID-19", "threshold": 0.29, "figures": {}},
        {"positive_class": "abnormal", "threshold": 0.5},
    )
    entry = op.history_entry(old, new, "  Dr   Who ", "audit\nof May", when="2026-01-02T03:04:05+00:00")
    assert entry == {
        "time": "2026-01-02T03:04:05+00:00",
        "reader": "Dr Who",
        "reason": "audit of May",
        "old": {"positive_class": "COVID-19", "threshold": 0.29},
        "new": new,
    }
    assert op.history_entry(None, None, "a", "b")["time"].endswith("+00:00")
    for reader, reason in (("", "b"), ("a", None), ("a", " \t ")):
        with pytest.raises(ValueError, match="name|reason"):
            op.history_entry(old, new, reader, reason)


def test_a_held_card_lock_refuses_with_a_message_and_changes_nothing(tiny_version, monkeypatch):
    import filelock

    path = registry.version_dir(tiny_version) / registry.CARD_FILE
    before = path.read_bytes()
    monkeypatch.setattr(op, "CARD_LOCK_TIMEOUT_S", 0.2)
    with filelock.FileLock(f"{path}.lock"):
        with pytest.raises(registry.ModelVersionError, match="being changed by someone else"):
            op.save_operating_point(tiny_version, "COVID-19", 0.4, reader="A", reason="r")
    assert path.read_bytes() == before


CONCURRENT_WORKER = """
import sys, time
from pathlib import Path
from core import operating_point as op
worker, version, appends, saves = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
go = Path(sys.argv[5])
while not go.exists():
    time.sleep(0.01)
for i in range(saves):
    op.save_operating_point(version, "COVID-19", 0.2 + i / 100, reader=f"worker {worker}", reason=f"save {i}")
for i in range(appends):
    op.update_card(version, lambda card, i=i: card.operating_point_history.append(
        op.history_entry(None, None, f"worker {worker}", f"append {i}")))
"""


@pytest.mark.slow
def test_two_processes_saving_at_once_lose_nothing(tiny_version, tmp_path):
    """Two real processes save operating points and append history entries as fast as they can: every one is in
    the card at the end and the card is strict JSON (without the lock, most appends are lost)."""
    appends, saves = 150, 2
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_WORKER, name, tiny_version, str(appends), str(saves), str(go)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("A", "B")
    ]
    time.sleep(1.0)  # both are importing; start them together
    go.touch()
    for worker in workers:
        assert worker.wait(timeout=240) == 0, worker.stderr.read()
    card = json.loads((registry.version_dir(tiny_version) / registry.CARD_FILE).read_text(), parse_constant=pytest.fail)
    notes = [(entry["reader"], entry["reason"]) for entry in card["operating_point_history"]]
    for name in ("A", "B"):
        assert sorted(r for w, r in notes if w == f"worker {name}" and r.startswith("append")) == sorted(
            f"append {i}" for i in range(appends)
        )
        assert [r for w, r in notes if w == f"worker {name}" and r.startswith("save")] == [
            f"save {i}" for i in range(saves)
        ]
    assert card["operating_point"]["threshold"] == pytest.approx(0.2 + (saves - 1) / 100, abs=EXACT)


def test_the_shipped_operating_point_was_chosen_on_validation(shipped_version):
    """The shipped card's point is COVID-19 at the highest threshold reaching 97.5 % validation sensitivity."""
    point = registry.load_card(shipped_version).operating_point
    scores, truth = op.scores_and_truth(op.load_predictions(shipped_version, "val"), "COVID-19")
    assert point["positive_class"] == "COVID-19" and point["chosen_on"] == "validation"
    assert point["threshold"] == pytest.approx(op.threshold_for_sensitivity(truth, scores, 0.975), abs=1e-9)
    assert point["figures"]["sensitivity"]["value"] >= 0.975


def test_the_f1_interval_at_once_equals_the_resample_by_resample_bootstrap():
    from core.metrics import bootstrap_ci

    rng = np.random.default_rng(4)
    truth = rng.random(300) < 0.2
    scores = np.clip(truth * 0.3 + rng.random(300) * 0.7, 0, 1)
    called = scores >= 0.5

    def f1_of(resampled_truth, resampled_called):
        return op.f1(resampled_truth, resampled_called)

    assert op.f1_interval(truth, called, 200, seed=3) == bootstrap_ci(f1_of, (truth, called), 200, seed=3)
    no_positives = np.zeros(10, bool)
    assert all(np.isnan(op.f1_interval(no_positives, no_positives, 20)))  # undefined everywhere: no interval
