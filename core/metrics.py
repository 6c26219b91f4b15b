"""Classification figures with their uncertainty: Wilson intervals, ROC AUC with bootstrap intervals,
sensitivity at a fixed specificity, confusion matrices, per-source breakdowns.

Curves and intervals come from scikit-learn and statsmodels; only the bookkeeping is ours.
"""

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve
from statsmodels.stats.proportion import proportion_confint

from core.calibration import expected_calibration_error

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
TARGET_SPECIFICITY = 0.95


def wilson_interval(successes: int, total: int, confidence: float = CONFIDENCE):
    """Wilson score interval for a proportion; (nan, nan) when ``total`` is 0."""
    if total == 0:
        return (float("nan"), float("nan"))
    low, high = proportion_confint(successes, total, alpha=1 - confidence, method="wilson")
    return (float(low), float(high))


def proportion(successes: int, total: int) -> dict:
    """A proportion with its count and Wilson 95 % interval."""
    successes, total = int(successes), int(total)
    value = successes / total if total else float("nan")
    return {"value": value, "ci95": list(wilson_interval(successes, total)), "k": successes, "n": total}


def bootstrap_ci(statistic, arrays, resamples=BOOTSTRAP_RESAMPLES, seed=0, confidence=CONFIDENCE):
    """Percentile bootstrap interval of ``statistic(*arrays)`` resampling rows; resamples where the statistic
    is undefined (e.g. one class only) are skipped."""
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    values = []
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        try:
            values.append(statistic(*(a[rows] for a in arrays)))
        except ValueError:
            continue
    if not values:
        return [float("nan"), float("nan")]
    tail = (1 - confidence) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def bootstrap_auc_intervals(labels, probs, resamples=BOOTSTRAP_RESAMPLES, seed=0, confidence=CONFIDENCE):
    """Percentile bootstrap intervals of every one-vs-rest AUC and of their macro mean, all resamples at once.

    Each resample's AUC is the Mann–Whitney statistic from scipy's ranks (equal to scikit-learn's ROC AUC,
    ties included); resamples lacking a class's positives or negatives are skipped for that class, and for
    the macro mean. Returns ({class index: [low, high]}, [low, high])."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    rows = np.random.default_rng(seed).integers(0, len(labels), (resamples, len(labels)))
    tail = (1 - confidence) / 2 * 100
    interval = lambda values: [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))] \
        if len(values) else [float("nan"), float("nan")]
    per_class, all_valid, aucs = {}, np.ones(resamples, bool), []
    for index in range(probs.shape[1]):
        positive = labels[rows] == index
        n_pos = positive.sum(axis=1)
        n_neg = positive.shape[1] - n_pos
        valid = (n_pos > 0) & (n_neg > 0)
        ranks = rankdata(probs[rows, index], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = ((ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        per_class[index] = interval(auc[valid])
        all_valid &= valid
        aucs.append(auc)
    return per_class, interval(np.mean(aucs, axis=0)[all_valid])


def one_vs_rest_auc(labels, scores, positive):
    positives = np.asarray(labels) == positive
    return float(roc_auc_score(positives, scores))


def macro_auc(labels, probs):
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=np.arange(probs.shape[1])))


def sensitivity_at_specificity(labels, scores, positive, specificity=TARGET_SPECIFICITY):
    """The highest sensitivity whose specificity is ≥ ``specificity``, with the threshold that reaches it
    (positive means score ≥ threshold) and its Wilson interval."""
    positives = np.asarray(labels) == positive
    if positives.all() or not positives.any():
        return None
    fpr, tpr, thresholds = roc_curve(positives, scores)
    allowed = fpr <= 1 - specificity
    best = int(np.flatnonzero(allowed)[np.argmax(tpr[allowed])])
    result = proportion(round(tpr[best] * positives.sum()), positives.sum())
    result.update(threshold=float(min(thresholds[best], 1.0)), specificity=float(1 - fpr[best]))
    return result


def classification_report(labels, probs, class_names, seed=0, resamples=BOOTSTRAP_RESAMPLES) -> dict:
    """Everything the model card reports for one split (argmax decisions, calibrated ``probs``)."""
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    predicted = probs.argmax(axis=1)
    present = set(labels.tolist())
    class_cis, macro_ci = bootstrap_auc_intervals(labels, probs, resamples, seed) if len(labels) else ({}, None)
    matrix = confusion_matrix(labels, predicted, labels=np.arange(len(class_names)))
    report = {
        "n": int(len(labels)),
        "accuracy": proportion((predicted == labels).sum(), len(labels)),
        "confusion_matrix": matrix.tolist(),
        "per_class": {},
        "macro_auc": None,
        "ece": expected_calibration_error(labels, probs) if len(labels) else None,
    }
    for index, name in enumerate(class_names):
        true_pos = int(matrix[index, index])
        entry = {
            "support": int(matrix[index].sum()),
            "recall": proportion(true_pos, matrix[index].sum()),
            "precision": proportion(true_pos, matrix[:, index].sum()),
            "specificity": proportion(
                matrix.sum() - matrix[index].sum() - matrix[:, index].sum() + true_pos,
                matrix.sum() - matrix[index].sum(),
            ),
            "auc": None,
            "mean_probability_when_true": _mean_with_ci(probs[labels == index, index]),
        }
        if index in present and len(present) > 1:
            entry["auc"] = {"value": one_vs_rest_auc(labels, probs[:, index], index), "ci95": class_cis[index]}
        report["per_class"][name] = entry
    if len(present) == len(class_names):
        report["macro_auc"] = {"value": macro_auc(labels, probs), "ci95": macro_ci}
    if 0 in present and len(present) > 1:
        report["covid_sensitivity_at_95_specificity"] = sensitivity_at_specificity(labels, probs[:, 0], 0)
    return report


def _mean_with_ci(values):
    """Mean with a t-based 95 % interval (as Zhong 2020 reports the mean probability per true class)."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return None
    if len(values) == 1:
        return {"value": float(values[0]), "ci95": [float("nan"), float("nan")]}
    low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return {"value": float(values.mean()), "ci95": [float(low), float(high)]}


def per_source_reports(labels, probs, sources, class_names, seed=0, resamples=200) -> dict:
    """``classification_report`` for each source separately."""
    labels, probs, sources = np.asarray(labels), np.asarray(probs), np.asarray(sources)
    return {
        str(source): classification_report(labels[sources == source], probs[sources == source], class_names, seed, resamples)
        for source in sorted(set(sources.tolist()))
    }
