"""Operating points: figures against scikit-learn / statsmodels / scipy, the one ``p ≥ t`` rule shared by the
threshold table and the full confusion matrix, saving into the card, and the Streamlit page end to end."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix, f1_score,
                             precision_recall_curve, precision_score, recall_score, roc_auc_score, roc_curve)
from statsmodels.stats.proportion import proportion_confint

from core import CLASS_NAMES, registry
from core import operating_point as op
from tests.conftest import REPO

POSITIVES = ("COVID-19", "Pneumonia", "abnormal")
FEW_RESAMPLES = 50
EXACT = 1e-9
PAGE = "pages/operating_point.py"
APP_TIMEOUT = 60


@pytest.fixture
def synthetic():
    """300 cases with tied scores (rounded to 2 decimals) and two sources."""
    rng = np.random.default_rng(7)
    labels = np.array(CLASS_NAMES)[rng.integers(0, 3, 300)]
    boost = np.stack([labels == name for name in CLASS_NAMES], axis=1) * 1.5
    probs = rng.dirichlet(np.ones(3), size=300) + boost
    probs = np.round(probs / probs.sum(axis=1, keepdims=True), 2)
    frame = pd.DataFrame({"path": [f"{i}.png" for i in range(300)], "label": labels,
                          "source": rng.choice(["alpha", "beta"], 300)})
    for index, name in enumerate(CLASS_NAMES):
        frame[f"p_{name}"] = probs[:, index]
    return frame


@pytest.fixture(params=["tiny_version", "shipped_version"])
def version(request):
    """Every version-based test runs on the tiny random version and on (a copy of) the shipped one, each
    starting without a saved operating point (the shipped card carries one)."""
    name = request.getfixturevalue(request.param)
    op.clear_operating_point(name)
    return name


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
        assert row["specificity"]["value"] == pytest.approx(recall_score(truth, scores >= threshold, pos_label=False), abs=EXACT)
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
    card = {"class_names": list(CLASS_NAMES), "operating_point": None}
    assert op.decide([0.2, 0.5, 0.3], card).label == "Normal"
    card["operating_point"] = {"positive_class": "COVID-19", "threshold": 0.2}
    assert op.decide([0.2, 0.5, 0.3], card).label == "COVID-19"
    assert op.decide([0.19, 0.3, 0.51], card).label == "Pneumonia"
    card["operating_point"] = {"positive_class": "abnormal", "threshold": 0.5}
    assert op.decide([0.1, 0.5, 0.4], card).label == "Pneumonia"  # 1 − 0.5 ≥ 0.5: most probable abnormal class
    assert op.decide([0.3, 0.6, 0.1], card).label == "Normal"


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
            roc_auc_score(truth, scores), abs=EXACT)
        for row in op.sensitivity_table(truth, scores):
            matrix = op.decision_matrix(frame, CLASS_NAMES, positive, row["threshold"])
            assert op.collapse(matrix, CLASS_NAMES, positive) == {k: row[k] for k in ("tp", "fp", "tn", "fn")}


def test_save_reload_and_clear(version):
    threshold = float(np.median(read_csv_independently(version)["p_COVID-19"]))
    stored = op.save_operating_point(version, "COVID-19", threshold)
    card = registry.load_card(version)
    assert card["operating_point"] == stored
    assert card["operating_point"]["chosen_on"] == "validation"
    assert card["operating_point"]["threshold"] == threshold
    scores, truth = op.scores_and_truth(op.load_predictions(version), "COVID-19")
    assert card["operating_point"]["figures"]["sensitivity"]["value"] == pytest.approx(
        recall_score(truth, scores >= threshold), abs=EXACT)
    assert op.decide([threshold, 0.9, 0.1], card).label == "COVID-19"
    json.loads((registry.version_dir(version) / registry.CARD_FILE).read_text(), parse_constant=pytest.fail)
    op.clear_operating_point(version)
    assert registry.load_card(version)["operating_point"] is None


def test_save_rejects_a_bad_point(version):
    with pytest.raises(ValueError):
        op.save_operating_point(version, "Normal", 0.5)
    with pytest.raises(ValueError):
        op.save_operating_point(version, "COVID-19", 1.5)
    assert registry.load_card(version)["operating_point"] is None


# --- the page ---------------------------------------------------------------------------------------------


def open_page():
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=APP_TIMEOUT)
    app.run()
    app.switch_page(PAGE).run()
    assert not app.exception
    return app


def independent_figures(frame: pd.DataFrame, positive: str, threshold: float) -> dict:
    """Sensitivity, specificity, PPV, NPV and accuracy with Wilson intervals, straight from the CSV."""
    if positive == "abnormal":
        scores, truth = 1.0 - frame["p_Normal"].to_numpy(), frame["label"].to_numpy() != "Normal"
    else:
        scores, truth = frame[f"p_{positive}"].to_numpy(), frame["label"].to_numpy() == positive
    called = scores >= threshold
    tp, fp = np.sum(truth & called), np.sum(~truth & called)
    tn, fn = np.sum(~truth & ~called), np.sum(truth & ~called)
    pairs = {"Sensitivity (recall)": (tp, tp + fn), "Specificity": (tn, tn + fp), "PPV (precision)": (tp, tp + fp),
             "NPV": (tn, tn + fn), "Accuracy": (tp + tn, len(frame))}
    return {name: (k / n, *proportion_confint(k, n, method="wilson")) for name, (k, n) in pairs.items() if n}


def assert_page_shows(app, frame, positive, threshold, table_index=0):
    """The figures table (the first one: validation; the second last: the test report) equals the CSV's."""
    table = app.dataframe[table_index].value.set_index("figure")
    for name, expected in independent_figures(frame, positive, threshold).items():
        shown = table.loc[name, ["value", "ci95_low", "ci95_high"]].to_numpy(dtype=float)
        np.testing.assert_allclose(shown, expected, atol=EXACT, err_msg=name)


@pytest.mark.slow
def test_page_figures_equal_an_independent_computation(version):
    frame = read_csv_independently(version)
    app = open_page()
    assert any("argmax used" in info.value for info in app.info)
    slider = app.slider(key=f"op_threshold_{version}")
    observed = float(np.sort(frame["p_COVID-19"])[len(frame) // 3])
    for threshold in (0.3, 0.85, observed):
        slider.set_value(threshold).run()
        assert not app.exception
        assert_page_shows(app, frame, "COVID-19", threshold)
    app.selectbox(key=f"op_positive_{version}").select("abnormal").run()
    assert_page_shows(app, frame, "abnormal", observed)

    app.slider(key=f"op_prevalence_{version}").set_value(10.0).run()
    figures = independent_figures(frame, "abnormal", observed)
    ppv, npv = op.predictive_values(figures["Sensitivity (recall)"][0], figures["Specificity"][0], 0.10)
    shown = [float(metric.value) for metric in app.metric[:2]]  # shown to 3 decimals
    assert shown == pytest.approx([ppv, npv], abs=0.0005 + EXACT)
    assert all(metric.value == f"{float(metric.value):.3f}" for metric in app.metric[:2])


@pytest.mark.slow
def test_page_target_sensitivity_save_and_restart(version):
    frame = read_csv_independently(version)
    app = open_page()
    app.number_input(key=f"op_target_{version}").set_value(95.0).run()
    app.button(key="op_apply_target").click().run()
    scores, truth = op.scores_and_truth(frame, "COVID-19")
    expected = op.threshold_for_sensitivity(truth, scores, 0.95)
    positive_scores = np.sort(scores[truth])[::-1]
    assert expected == positive_scores[math.ceil(0.95 * len(positive_scores) - EXACT) - 1]  # the k-th highest
    assert app.slider(key=f"op_threshold_{version}").value == pytest.approx(expected, abs=EXACT)
    assert_page_shows(app, frame, "COVID-19", expected)
    table = app.dataframe[1].value
    assert table.loc[table["target_sensitivity"] == 0.95, "threshold"].item() == pytest.approx(expected, abs=EXACT)

    app.button(key="op_save").click().run()
    assert not app.exception
    point = registry.load_card(version)["operating_point"]
    assert (point["positive_class"], point["chosen_on"]) == ("COVID-19", "validation")
    assert point["threshold"] == pytest.approx(expected, abs=EXACT)

    restarted = open_page()
    assert restarted.slider(key=f"op_threshold_{version}").value == pytest.approx(expected, abs=EXACT)
    assert any(f"{expected:.6f}" in message.value for message in restarted.success)
    assert not any("argmax used" in info.value for info in restarted.info)
    assert_page_shows(restarted, frame, "COVID-19", expected)
    test_frame = read_csv_independently(version, registry.TEST_PREDICTIONS)
    assert_page_shows(restarted, test_frame, "COVID-19", expected, table_index=-2)

    restarted.button(key="op_clear").click().run()
    assert registry.load_card(version)["operating_point"] is None
    assert any("argmax used" in info.value for info in restarted.info)


def test_the_shipped_operating_point_was_chosen_on_validation(shipped_version):
    """The shipped card's point is COVID-19 at the highest threshold reaching 97.5 % validation sensitivity."""
    point = registry.load_card(shipped_version)["operating_point"]
    scores, truth = op.scores_and_truth(op.load_predictions(shipped_version, "val"), "COVID-19")
    assert point["positive_class"] == "COVID-19" and point["chosen_on"] == "validation"
    assert point["threshold"] == pytest.approx(op.threshold_for_sensitivity(truth, scores, 0.975), abs=1e-9)
    assert point["figures"]["sensitivity"]["value"] >= 0.975
