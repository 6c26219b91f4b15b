"""Classification figures with their uncertainty: Wilson intervals, ROC AUC with bootstrap intervals,
sensitivity at a fixed specificity, confusion matrices, per-source breakdowns.

Curves, AUC values and Wilson intervals come from scikit-learn and statsmodels. Ours: the bookkeeping, and the
rank-form AUC behind every bootstrap interval (vectorised over the resamples; tested equal to scikit-learn's).
"""

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve
from statsmodels.stats.proportion import proportion_confint

from core.calibration import expected_calibration_error

__all__ = [
    "wilson_interval",
    "proportion",
    "bootstrap_ci",
    "percentile_interval",
    "resample_rows",
    "rank_auc",
    "rank_macro_auc",
    "bootstrap_auc_interval",
    "bootstrap_auc_intervals",
    "one_vs_rest_auc",
    "macro_auc",
    "sensitivity_at_specificity",
    "classification_report",
    "per_source_reports",
]

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
TARGET_SPECIFICITY = 0.95


def wilson_interval(successes: int, total: int, confidence: float = CONFIDENCE) -> tuple:
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


def bootstrap_ci(statistic, arrays, resamples=BOOTSTRAP_RESAMPLES, seed=0, confidence=CONFIDENCE) -> tuple:
    """Percentile bootstrap interval of ``statistic(*arrays)`` resampling rows; resamples where the statistic
    is undefined (it raises ``ValueError`` or returns NaN, e.g. with one class only) are skipped."""
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    values = []
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        try:
            values.append(statistic(*(a[rows] for a in arrays)))
        except ValueError:
            continue
    return percentile_interval(values, confidence)


def percentile_interval(values, confidence=CONFIDENCE) -> list:
    """[low, high] percentiles of the finite ``values`` holding ``confidence`` of them; NaNs when none is."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return [float("nan"), float("nan")]
    tail = (1 - confidence) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def resample_rows(n: int, resamples=BOOTSTRAP_RESAMPLES, seed=0) -> np.ndarray:
    """(resamples, n) row indices drawn with replacement: every bootstrap resample at once."""
    return np.random.default_rng(seed).integers(0, n, (resamples, n))


def rank_auc(positive, scores) -> np.ndarray:
    """ROC AUC in its rank (Mann–Whitney) form, ties counting half: scikit-learn's ``roc_auc_score`` value,
    computed along the last axis so that a whole stack of bootstrap resamples (R, n) is one call. NaN where a
    row lacks positives or negatives. For bootstraps; reported values come from scikit-learn."""
    positive = np.asarray(positive, dtype=bool)
    ranks = rankdata(np.asarray(scores, dtype=np.float64), axis=-1)
    n_pos = positive.sum(axis=-1)
    n_neg = positive.shape[-1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * positive).sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def rank_macro_auc(labels, probs) -> np.ndarray:
    """Macro one-vs-rest ``rank_auc`` of class-index ``labels`` (…, n) and ``probs`` (…, n, C); NaN where a
    class lacks positives or negatives."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    return np.mean([rank_auc(labels == index, probs[..., index]) for index in range(probs.shape[-1])], axis=0)


def bootstrap_auc_interval(truth, scores, resamples=BOOTSTRAP_RESAMPLES, seed=0, confidence=CONFIDENCE) -> list:
    """Percentile bootstrap interval of a binary ROC AUC, all resamples at once."""
    rows = resample_rows(len(truth), resamples, seed)
    return percentile_interval(rank_auc(np.asarray(truth, dtype=bool)[rows], np.asarray(scores)[rows]), confidence)


def bootstrap_auc_intervals(labels, probs, resamples=BOOTSTRAP_RESAMPLES, seed=0, confidence=CONFIDENCE) -> tuple:
    """Percentile bootstrap intervals of every one-vs-rest AUC and of their macro mean, all resamples at once;
    resamples lacking a class's positives or negatives are skipped for that class, and for the macro mean.
    Returns ({class index: [low, high]}, [low, high])."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    rows = resample_rows(len(labels), resamples, seed)
    aucs = [rank_auc(labels[rows] == index, probs[rows, index]) for index in range(probs.shape[1])]
    per_class = {index: percentile_interval(auc, confidence) for index, auc in enumerate(aucs)}
    return per_class, percentile_interval(np.mean(aucs, axis=0), confidence)


def one_vs_rest_auc(labels, scores, positive) -> float:
    """ROC AUC (scikit-learn) of class ``positive`` against the rest, from one score per image."""
    positives = np.asarray(labels) == positive
    return float(roc_auc_score(positives, scores))


def macro_auc(labels, probs) -> float:
    """Macro one-vs-rest ROC AUC (scikit-learn) of class-index ``labels`` and probabilities (n, C)."""
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=np.arange(probs.shape[1])))


def sensitivity_at_specificity(labels, scores, positive, specificity=TARGET_SPECIFICITY) -> dict:
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
        str(source): classification_report(
            labels[sources == source], probs[sources == source], class_names, seed, resamples
        )
        for source in sorted(set(sources.tolist()))
    }
