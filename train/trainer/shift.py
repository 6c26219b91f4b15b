"""The calls at an operating point: the candidate's own operating point (chosen on validation), and what goes
wrong under hospital shift — the figures a run stores for a source it never trained on, and that
``train.evaluation`` measures for a version on data it never saw.
"""

import datetime

import numpy as np
from sklearn.metrics import roc_auc_score

from core import CLASS_NAMES
from core.card import finite
from core.metrics import proportion
from core.operating_point import decide, figures, threshold_for_sensitivity

__all__ = ["automatic_operating_point", "calls", "present_macro_auc", "shift_figures"]

POSITIVE = "COVID-19"
TARGET_SENSITIVITY = 0.975  # Deep-COVID's convention, as for the shipped default
CONFIDENT = 0.9  # a wrong call whose called class has at least this probability is a confident error


def automatic_operating_point(labels, probs, positive: str = POSITIVE, target: float = TARGET_SENSITIVITY):
    """The candidate's operating point: ``positive`` when its probability reaches the highest threshold giving
    ``target`` sensitivity on *validation*; None without validation positives."""
    index = CLASS_NAMES.index(positive)
    truth, scores = np.asarray(labels) == index, np.asarray(probs)[:, index]
    threshold = threshold_for_sensitivity(truth, scores, target)
    if threshold is None:
        return None
    found = finite(figures(truth, scores, threshold))
    return {
        "positive_class": positive,
        "threshold": round(threshold, 6),
        "chosen_on": "validation",
        "target_sensitivity": target,
        "figures": found,
        "saved": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def calls(probs, operating_point) -> np.ndarray:
    """Class indices called by ``core.operating_point.decide`` at ``operating_point`` (argmax when None)."""
    return np.array(
        [CLASS_NAMES.index(decide(row, CLASS_NAMES, operating_point).label) for row in np.asarray(probs)], dtype=int
    )


def present_macro_auc(labels, probs):
    """Mean one-vs-rest AUC over the classes that have both positives and negatives here (an external source
    often lacks a class: NIH has no COVID-19); None when no class qualifies."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    aucs = [
        roc_auc_score(labels == i, probs[:, i]) for i in range(probs.shape[1]) if 0 < (labels == i).sum() < len(labels)
    ]
    return float(np.mean(aucs)) if aucs else None


def shift_figures(labels, probs, operating_point, populations=None, flagged=None) -> dict:
    """What goes wrong under hospital shift, at the operating point: how many non-COVID images are called
    COVID-19, how many normals stay Normal, how many abnormal ones are not called Normal, recall per class, and
    the confident errors (wrong, called class at p ≥ 0.9) as a fraction of all images — with ``flagged``
    (booleans per image) also those that carry no flag. Per population (adult / pediatric) too."""
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=np.float64)
    called = calls(probs, operating_point)
    covid, normal = CLASS_NAMES.index(POSITIVE), CLASS_NAMES.index("Normal")
    wrong_confident = (called != labels) & (probs[np.arange(len(labels)), called] >= CONFIDENT)
    result = {
        "n": int(len(labels)),
        "operating_point": None
        if operating_point is None
        else {"positive_class": operating_point["positive_class"], "threshold": operating_point["threshold"]},
        "accuracy": proportion(int((called == labels).sum()), len(labels)),
        "macro_auc_present": present_macro_auc(labels, probs),
        "non_covid_called_covid": proportion(
            int(((called == covid) & (labels != covid)).sum()), int((labels != covid).sum())
        ),
        "normal_called_normal": proportion(
            int(((called == normal) & (labels == normal)).sum()), int((labels == normal).sum())
        ),
        "abnormal_not_called_normal": proportion(
            int(((called != normal) & (labels != normal)).sum()), int((labels != normal).sum())
        ),
        "wrong_confident": proportion(int(wrong_confident.sum()), len(labels)),
        "called": {name: int((called == i).sum()) for i, name in enumerate(CLASS_NAMES)},
    }
    for index, name in enumerate(CLASS_NAMES):
        result[f"recall_{name}"] = proportion(
            int(((called == index) & (labels == index)).sum()), int((labels == index).sum())
        )
    if flagged is not None:
        flagged = np.asarray(flagged, dtype=bool)
        result["flagged"] = proportion(int(flagged.sum()), len(labels))
        result["wrong_confident_unflagged"] = proportion(int((wrong_confident & ~flagged).sum()), len(labels))
    if populations is not None:
        populations = np.asarray(populations)
        result["per_population"] = {
            str(group): shift_figures(
                labels[populations == group],
                probs[populations == group],
                operating_point,
                None,
                None if flagged is None else flagged[populations == group],
            )
            for group in sorted(set(populations.tolist()))
        }
    return result
