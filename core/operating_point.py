"""Operating points: a threshold on one class's calibrated probability, stored in a model version's card.

One comparison rule everywhere: a case is positive when ``p ≥ threshold``. The positive class is one of the
classes, or the pseudo-class "abnormal" (anything but Normal) scored by 1 − p(Normal). Every figure used to
choose a threshold comes from the version's validation predictions; test predictions are only reported.
Curves and the AUC come from scikit-learn, intervals from statsmodels and the bootstraps in ``core.metrics``.
"""

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import filelock
import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from core import registry
from core.card import CardError, finite, probability_columns, read_predictions
from core.flags import BORDERLINE_CONFIDENCE
from core.metrics import (
    BOOTSTRAP_RESAMPLES,
    bootstrap_auc_interval,
    percentile_interval,
    proportion,
    resample_rows,
)

__all__ = [
    "Decision",
    "called_indices",
    "decide",
    "predictions_path",
    "load_predictions",
    "positive_classes",
    "positive_members",
    "scores_and_truth",
    "counts",
    "rates",
    "f1",
    "figures",
    "predictive_values",
    "predictive_values_at",
    "roc",
    "precision_recall",
    "threshold_for_sensitivity",
    "threshold_interval",
    "sensitivity_table",
    "calls_matrix",
    "decision_matrix",
    "collapse",
    "per_source",
    "decision_figures",
    "history_entry",
    "update_card",
    "save_operating_point",
    "clear_operating_point",
]

ABNORMAL = "abnormal"
NORMAL = "Normal"
DEFAULT_POSITIVE = "COVID-19"
TARGET_SENSITIVITIES = (1.0, 0.975, 0.95, 0.90)
SENSITIVITY_TOLERANCE = 1e-9  # a sensitivity k/n counts as reaching a target within float rounding
PREDICTION_FILES = {"val": registry.VAL_PREDICTIONS, "test": registry.TEST_PREDICTIONS}
SPLIT_NAMES = {"val": "validation", "test": "test"}
CHOSEN_ON = "validation"
CARD_LOCK_TIMEOUT_S = 30.0  # a save holds the lock for milliseconds; waiting this long means a stuck writer
MAX_NOTE_CHARACTERS = 500  # a reader's name or reason, as stored in the history


@dataclass(frozen=True)
class Decision:
    label: str
    rule: str  # how the label was reached, for display


def called_indices(probabilities, class_names, point) -> np.ndarray:
    """The call of every row of ``probabilities`` (N, C) as a class index, by the rule of ``decide``: the most
    probable class without a point; with a point on class P at threshold t, P where p(P) ≥ t, else the most probable
    other class; for "abnormal", the most probable non-Normal class where 1 − p(Normal) ≥ t, else Normal. Ties go
    to the first class in ``class_names`` order."""
    probabilities = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    if not point:
        return probabilities.argmax(axis=1)
    names = list(class_names)
    positive, threshold = point["positive_class"], float(point["threshold"])
    index = names.index(NORMAL if positive == ABNORMAL else positive)
    others = probabilities.copy()
    others[:, index] = -np.inf
    most_probable_other = others.argmax(axis=1)
    if positive == ABNORMAL:
        return np.where(1.0 - probabilities[:, index] >= threshold, most_probable_other, index)
    return np.where(probabilities[:, index] >= threshold, index, most_probable_other)


def decide(probabilities, class_names, point) -> Decision:
    """The call for one image (``called_indices`` of its probabilities) and the rule that made it, in words."""
    names = list(class_names)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    label = names[int(called_indices(probabilities, names, point)[0])]
    if not point:
        return Decision(label, "most probable class (no saved operating point)")
    positive, threshold = point["positive_class"], float(point["threshold"])
    if positive == ABNORMAL:
        abnormal = 1.0 - probabilities[names.index(NORMAL)]
        if label != NORMAL:
            return Decision(label, f"abnormal: 1 − p(Normal) = {abnormal:.3f} ≥ {threshold:.3f}")
        return Decision(NORMAL, f"1 − p(Normal) = {abnormal:.3f} < {threshold:.3f}")
    score = probabilities[names.index(positive)]
    if label == positive:
        return Decision(positive, f"p({positive}) = {score:.3f} ≥ {threshold:.3f}")
    return Decision(label, f"p({positive}) = {score:.3f} < {threshold:.3f}; most probable other class")


# --- predictions -------------------------------------------------------------------------------------------


def predictions_path(version=None, split="val", root=None) -> Path:
    """Where a version's predictions for ``split`` ("val" or "test") are stored."""
    name = registry.resolve_version(version, root)
    return registry.version_dir(name, root) / PREDICTION_FILES[split]


def load_predictions(version=None, split="val", root=None) -> pd.DataFrame:
    """A version's calibrated predictions for one split: ``path, label, source`` and ``p_<class>`` per class.

    Raises ``registry.ModelVersionError`` when the file is missing or does not match the version's classes.
    """
    card = registry.load_card(version, root)
    try:
        return read_predictions(predictions_path(card.version, split, root), card.class_names)
    except CardError as error:
        raise registry.ModelVersionError(
            f"The {SPLIT_NAMES[split]} predictions of version '{card.version}' {error}"
        ) from error


def positive_classes(class_names) -> list:
    """The choices of positive class: every class but Normal, then "abnormal" (anything but Normal)."""
    return [name for name in class_names if name != NORMAL] + [ABNORMAL]


def positive_members(class_names, positive) -> list:
    """The classes that count as positive: the class itself, or every class but Normal for "abnormal"."""
    if positive == ABNORMAL:
        return [name for name in class_names if name != NORMAL]
    if positive not in class_names or positive == NORMAL:
        raise ValueError(f"'{positive}' cannot be the positive class; choose one of {positive_classes(class_names)}.")
    return [positive]


def scores_and_truth(frame: pd.DataFrame, positive: str):
    """Each case's positive-class score (1 − p(Normal) for "abnormal") and whether it truly is positive."""
    class_names = [column[2:] for column in frame.columns if column.startswith("p_")]
    truth = frame["label"].isin(positive_members(class_names, positive)).to_numpy()
    if positive == ABNORMAL:
        return 1.0 - frame[f"p_{NORMAL}"].to_numpy(np.float64), truth
    return frame[f"p_{positive}"].to_numpy(np.float64), truth


# --- figures at one threshold ------------------------------------------------------------------------------


def counts(truth, scores, threshold) -> dict:
    """TP, FP, TN, FN when a case is called positive at ``score ≥ threshold`` (counted directly: the page
    counts on every move of its threshold slider)."""
    truth, called = np.asarray(truth, dtype=bool), np.asarray(scores) >= threshold
    tp, fp = int(np.sum(truth & called)), int(np.sum(~truth & called))
    positives = int(np.sum(truth))
    return {"tp": tp, "fp": fp, "tn": len(truth) - positives - fp, "fn": positives - tp}


def rates(tp: int, fp: int, tn: int, fn: int) -> dict:
    """Sensitivity, specificity, PPV, NPV and accuracy, each with its count and Wilson 95 % interval."""
    return {
        "sensitivity": proportion(tp, tp + fn),
        "specificity": proportion(tn, tn + fp),
        "ppv": proportion(tp, tp + fp),
        "npv": proportion(tn, tn + fn),
        "accuracy": proportion(tp + tn, tp + fp + tn + fn),
    }


def f1(truth, called) -> float:
    """F1 = 2TP / (2TP + FP + FN); ValueError when undefined (no positive cases and no positive calls)."""
    truth, called = np.asarray(truth, dtype=bool), np.asarray(called, dtype=bool)
    true_positives, wrong = np.sum(truth & called), np.sum(truth != called)
    if true_positives + wrong == 0:
        raise ValueError("F1 is undefined without positive cases or positive calls.")
    return float(2 * true_positives / (2 * true_positives + wrong))


def figures(truth, scores, threshold, resamples=BOOTSTRAP_RESAMPLES, seed=0) -> dict:
    """Everything at one threshold: counts, the Wilson-interval rates, and F1 with a percentile-bootstrap
    95 % interval (F1 is not a proportion, so it has no Wilson interval)."""
    truth, scores = np.asarray(truth, dtype=bool), np.asarray(scores, dtype=np.float64)
    found = counts(truth, scores, threshold)
    try:
        f1_value = f1(truth, scores >= threshold)
    except ValueError:
        f1_value = math.nan

    return {
        "threshold": float(threshold),
        "n": int(len(truth)),
        **found,
        **rates(**found),
        "f1": {"value": f1_value, "ci95": f1_interval(truth, scores >= threshold, resamples, seed)},
    }


def f1_interval(truth, called, resamples=BOOTSTRAP_RESAMPLES, seed=0) -> list:
    """F1's percentile-bootstrap 95 % interval, every resample at once (``resample_rows``: the same resamples
    as ``bootstrap_ci`` draws one by one); resamples without positive cases or calls are skipped."""
    rows = resample_rows(len(truth), resamples, seed)
    resampled_truth, resampled_called = truth[rows], called[rows]
    true_positives = np.sum(resampled_truth & resampled_called, axis=1)
    wrong = np.sum(resampled_truth != resampled_called, axis=1)
    defined = true_positives + wrong > 0
    return percentile_interval(2 * true_positives[defined] / (2 * true_positives[defined] + wrong[defined]))


def predictive_values(sensitivity: float, specificity: float, prevalence: float):
    """(PPV, NPV) at ``prevalence`` by Bayes' rule; nan where a denominator is zero."""
    true_pos, false_pos = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
    true_neg, false_neg = specificity * (1 - prevalence), (1 - sensitivity) * prevalence
    ppv = true_pos / (true_pos + false_pos) if true_pos + false_pos else math.nan
    npv = true_neg / (true_neg + false_neg) if true_neg + false_neg else math.nan
    return ppv, npv


def predictive_values_at(point: dict, prevalence: float) -> dict:
    """PPV and NPV at ``prevalence`` from a ``figures`` result, each with the range spanned by the Wilson
    intervals of sensitivity and specificity (both values rise with both rates, so the bounds map to bounds)."""
    sensitivity, specificity = point["sensitivity"], point["specificity"]
    value = predictive_values(sensitivity["value"], specificity["value"], prevalence)
    low = predictive_values(sensitivity["ci95"][0], specificity["ci95"][0], prevalence)
    high = predictive_values(sensitivity["ci95"][1], specificity["ci95"][1], prevalence)
    return {
        "prevalence": float(prevalence),
        "ppv": {"value": value[0], "range": [low[0], high[0]]},
        "npv": {"value": value[1], "range": [low[1], high[1]]},
    }


# --- curves and threshold tables ---------------------------------------------------------------------------


def roc(truth, scores, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """ROC curve and AUC with a percentile-bootstrap 95 % interval; None when only one class is present."""
    truth, scores = np.asarray(truth, dtype=bool), np.asarray(scores, dtype=np.float64)
    if truth.all() or not truth.any():
        return None
    fpr, tpr, thresholds = roc_curve(truth, scores)
    area = {
        "value": float(roc_auc_score(truth, scores)),
        "ci95": bootstrap_auc_interval(truth, scores, resamples, seed),
    }
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds, "auc": area}


def precision_recall(truth, scores):
    """Precision–recall curve and average precision; None without positive cases."""
    truth = np.asarray(truth, dtype=bool)
    if not truth.any():
        return None
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    return {
        "precision": precision,
        "recall": recall,
        "thresholds": thresholds,
        "average_precision": float(average_precision_score(truth, scores)),
    }


def threshold_for_sensitivity(truth, scores, target: float):
    """The highest threshold whose sensitivity reaches ``target`` (always an observed score, so the cases
    scored exactly at it count as positive); None without positive cases."""
    truth = np.asarray(truth, dtype=bool)
    if not truth.any():
        return None
    _, tpr, thresholds = roc_curve(truth, scores, drop_intermediate=False)
    first = int(np.flatnonzero(tpr >= target - SENSITIVITY_TOLERANCE)[0])
    return float(thresholds[first])


def threshold_interval(truth, scores, threshold: float, resamples=BOOTSTRAP_RESAMPLES, seed=0, confidence=0.95):
    """The bootstrap interval of the threshold that reaches the sensitivity ``threshold`` has on these
    (validation) cases: how far the same choice could have landed on another sample of patients. A score inside
    it is a borderline call. [None, None] without positive cases."""
    truth, scores = np.asarray(truth, dtype=bool), np.asarray(scores, dtype=np.float64)
    if not truth.any():
        return [None, None]
    target = float((scores[truth] >= threshold).mean())
    rows = np.random.default_rng(seed).integers(0, len(truth), (resamples, len(truth)))
    found = [threshold_for_sensitivity(truth[r], scores[r], target) for r in rows if truth[r].any()]
    low, high = np.quantile(found, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [round(float(low), 6), round(float(high), 6)]


def sensitivity_table(truth, scores, targets=TARGET_SENSITIVITIES) -> list:
    """The Deep-COVID table: for each target sensitivity, the highest threshold reaching it and the
    sensitivity and specificity (with Wilson intervals) and counts there."""
    rows = []
    for target in targets:
        threshold = threshold_for_sensitivity(truth, scores, target)
        if threshold is None:
            continue
        found = counts(truth, scores, threshold)
        reached = rates(**found)
        rows.append(
            {
                "target_sensitivity": float(target),
                "threshold": threshold,
                **found,
                "sensitivity": reached["sensitivity"],
                "specificity": reached["specificity"],
            }
        )
    return rows


# --- the full decision -------------------------------------------------------------------------------------


def calls_matrix(frame: pd.DataFrame, class_names, point) -> np.ndarray:
    """The confusion matrix (rows true class, columns call, in ``class_names`` order) when every case is called
    by ``decide`` at ``point`` (None: the most probable class)."""
    names = list(class_names)
    called = called_indices(frame[probability_columns(names)].to_numpy(np.float64), names, point)
    truth = pd.Categorical(frame["label"], categories=names).codes
    known = truth >= 0
    cells = np.bincount(truth[known] * len(names) + called[known], minlength=len(names) ** 2)
    return cells.reshape(len(names), len(names))


def decision_matrix(frame: pd.DataFrame, class_names, positive: str, threshold: float) -> np.ndarray:
    """``calls_matrix`` at the operating point ``positive`` ≥ ``threshold``."""
    return calls_matrix(frame, class_names, {"positive_class": positive, "threshold": threshold})


def collapse(matrix, class_names, positive: str) -> dict:
    """TP, FP, TN, FN of the positive class read off a full confusion matrix."""
    members = np.isin(list(class_names), positive_members(class_names, positive))
    matrix = np.asarray(matrix)
    return {
        "tp": int(matrix[members][:, members].sum()),
        "fp": int(matrix[~members][:, members].sum()),
        "tn": int(matrix[~members][:, ~members].sum()),
        "fn": int(matrix[members][:, ~members].sum()),
    }


def per_source(frame: pd.DataFrame, positive: str, threshold: float) -> list:
    """Counts and Wilson-interval rates at this threshold for each source separately (shortcut check)."""
    rows = []
    for source, group in frame.groupby("source", sort=True):
        scores, truth = scores_and_truth(group, positive)
        found = counts(truth, scores, threshold)
        rows.append(
            {"source": str(source), "n": int(len(group)), "positives": int(truth.sum()), **found, **rates(**found)}
        )
    return rows


def decision_figures(frame: pd.DataFrame, class_names, point, positive: str, prevalence: float) -> dict:
    """What the calls at ``point`` (None: the most probable class) give for ``positive``: counts, the Wilson-interval
    rates and the PPV at ``prevalence`` — read off the full decision, so points on different classes compare on
    the same cases (the confirmation before a change shows the saved point and the new one this way)."""
    found = collapse(calls_matrix(frame, class_names, point), class_names, positive)
    reached = rates(**found)
    return {**found, **reached, "ppv_at_prevalence": predictive_values_at(reached, prevalence)["ppv"]}


# --- saved operating points --------------------------------------------------------------------------------


def _note(text, what: str) -> str:
    text = " ".join(str(text or "").split())
    if not text:
        raise ValueError(f"Give {what}: every change of the operating point records who made it and why.")
    return text[:MAX_NOTE_CHARACTERS]


def _rule(point):
    return None if not point else {"positive_class": point["positive_class"], "threshold": float(point["threshold"])}


def history_entry(old_point, new_point, reader: str, reason: str, when: str = None) -> dict:
    """One line of a card's ``operating_point_history``: when, who (``reader``), the rule before and after (None:
    the most probable class) and why. Raises ``ValueError`` when the name or the reason is blank."""
    return {
        "time": when or datetime.now(UTC).isoformat(timespec="seconds"),
        "reader": _note(reader, "your name"),
        "reason": _note(reason, "a reason"),
        "old": _rule(old_point),
        "new": _rule(new_point),
    }


def update_card(version, change, root=None):
    """Read the version's card, apply ``change(card)`` and write it back, all under the card's file lock
    (``card.json.lock`` beside it), so that two readers' saves never overwrite each other; the write is atomic.
    Returns what ``change`` returns. Raises ``registry.ModelVersionError`` when the lock stays taken."""
    name = registry.resolve_version(version, root)
    path = registry.version_dir(name, root) / registry.CARD_FILE
    try:
        with filelock.FileLock(f"{path}.lock", timeout=CARD_LOCK_TIMEOUT_S):
            card = registry.load_card(name, root)
            result = change(card)
            card.save(path)
    except filelock.Timeout:
        raise registry.ModelVersionError(
            f"The card of version '{name}' is being changed by someone else and stayed locked for "
            f"{CARD_LOCK_TIMEOUT_S:.0f} s; nothing was saved. Try again."
        ) from None
    return result


def save_operating_point(
    version, positive_class: str, threshold: float, *, reader: str, reason: str, root=None
) -> dict:
    """Store ``positive_class`` at ``threshold`` in the version's card with its validation figures, and the change
    (who, when, old → new, why) in its ``operating_point_history``; ``decide`` (the Diagnose page and the CLI) uses
    it from then on. Returns the stored point. ``ValueError`` for a bad class, threshold, name or reason."""
    card = registry.load_card(version, root)
    positive_members(card.class_names, positive_class)
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"A threshold must lie between 0 and 1, not {threshold}.")
    reader, reason = _note(reader, "your name"), _note(reason, "a reason")
    scores, truth = scores_and_truth(load_predictions(card.version, "val", root), positive_class)
    found = figures(truth, scores, threshold)
    point = {
        "positive_class": positive_class,
        "threshold": threshold,
        "threshold_interval": threshold_interval(truth, scores, threshold, confidence=BORDERLINE_CONFIDENCE),
        "chosen_on": CHOSEN_ON,
        "figures": finite(found),  # nan → null: strict JSON
        "saved": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    def store(card):
        card.operating_point_history.append(
            history_entry(card.operating_point, point, reader, reason, when=point["saved"])
        )
        card.operating_point = point

    update_card(card.version, store, root)
    return point


def clear_operating_point(version, *, reader: str, reason: str, root=None) -> None:
    """Remove the version's saved operating point (calls fall back to the most probable class) and record who
    and why in its history; nothing changes (and nothing is recorded) when it has no point."""
    reader, reason = _note(reader, "your name"), _note(reason, "a reason")

    def remove(card):
        if card.operating_point:
            card.operating_point_history.append(history_entry(card.operating_point, None, reader, reason))
        card.operating_point = None

    update_card(version, remove, root)
