"""What a version does on a site's films, beside what it does on its own test split: discrimination (macro and
per-class AUC, patient-level bootstrap intervals), the calls at its operating point (sensitivity, specificity, PPV,
NPV with Wilson intervals; the confusion matrix; non-COVID films called COVID-19), calibration (ECE, reliability
diagram), the share of films flagged, and a plain verdict (``core.site.verdict``)."""

import datetime

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

from core import registry
from core.calibration import expected_calibration_error, reliability_bins
from core.card import finite, read_predictions
from core.metrics import BOOTSTRAP_RESAMPLES, percentile_interval, proportion
from core.operating_point import ABNORMAL, NORMAL, called_indices, counts, rates
from core.site import verdict
from train.trainer.datasets import label_indices
from train.trainer.shift import CONFIDENT, POSITIVE, present_macro_auc

__all__ = ["site_figures", "reference_figures", "validation_entry", "present_auc", "patient_bootstrap_aucs"]


def present_auc(labels, probs, index):
    """One-vs-rest AUC of class ``index`` (None when it lacks positives or negatives here)."""
    truth = np.asarray(labels) == index
    return float(roc_auc_score(truth, np.asarray(probs)[:, index])) if 0 < truth.sum() < len(truth) else None


def patient_bootstrap_aucs(labels, probs, patients, resamples=BOOTSTRAP_RESAMPLES, seed=0) -> tuple:
    """Percentile 95 % intervals of every class's AUC and of the macro AUC, resampling *patients* with
    replacement (all films of a drawn patient together). Returns ({class index: [low, high]}, [low, high])."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    _, groups = np.unique(np.asarray(patients), return_inverse=True)
    members = [np.flatnonzero(groups == g) for g in range(groups.max() + 1)]
    rng = np.random.default_rng(seed)
    per_class, macro = {i: [] for i in range(probs.shape[1])}, []
    for _ in range(resamples):
        rows = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        values = [present_auc(labels[rows], probs[rows], i) for i in range(probs.shape[1])]
        for index, value in enumerate(values):
            if value is not None:
                per_class[index].append(value)
        present = [v for v in values if v is not None]
        if present:
            macro.append(np.mean(present))
    return {i: percentile_interval(v) for i, v in per_class.items()}, percentile_interval(macro)


def site_figures(labels, probs, class_names, point, patients=None, flagged=None, called=None) -> dict:
    """Every figure of a site report for class-index ``labels`` and calibrated ``probs`` (N, C), the calls at
    ``point`` (argmax when None; or the class indices ``called``, when each film had its own rule), ``patients``
    (one id per film; None: one per film) and ``flagged`` (one boolean per film, or None)."""
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=np.float64)
    names = list(class_names)
    patients = np.arange(len(labels)) if patients is None else np.asarray(patients)
    class_cis, macro_ci = patient_bootstrap_aucs(labels, probs, patients)
    called = called_indices(probs, names, point) if called is None else np.asarray(called, dtype=int)
    positive = POSITIVE if point is None or point["positive_class"] == ABNORMAL else point["positive_class"]
    positive = positive if positive in names else names[0]
    p = names.index(positive)
    found = counts(labels == p, (called == p).astype(float), 0.5)
    macro = present_macro_auc(labels, probs)
    wrong_confident = (called != labels) & (probs[np.arange(len(labels)), called] >= CONFIDENT)
    figures = {
        "n": int(len(labels)),
        "patients": int(len(set(patients.tolist()))),
        "n_per_class": {name: int((labels == i).sum()) for i, name in enumerate(names)},
        "macro_auc": {
            "value": macro,
            "ci95": macro_ci,
            "classes": [n for i, n in enumerate(names) if present_auc(labels, probs, i) is not None],
        },
        "per_class_auc": {
            name: {"value": present_auc(labels, probs, i), "ci95": class_cis[i]} for i, name in enumerate(names)
        },
        "operating_point": None
        if point is None
        else {"positive_class": point["positive_class"], "threshold": float(point["threshold"])},
        "positive_class": positive,
        **{name: value for name, value in rates(**found).items()},
        "confusion_matrix": confusion_matrix(labels, called, labels=np.arange(len(names))).tolist(),
        "non_covid_called_covid": _called_as(labels, called, names, POSITIVE, negate=True),
        "normal_called_normal": _called_as(labels, called, names, NORMAL),
        "wrong_confident": proportion(int(wrong_confident.sum()), len(labels)),
        "ece": expected_calibration_error(labels, probs) if len(labels) else None,
        "reliability": reliability_bins(labels, probs),
        "flagged": None if flagged is None else proportion(int(np.sum(flagged)), len(labels)),
    }
    return finite(figures)


def _called_as(labels, called, names, name, negate=False):
    """Among films whose true class is (not, with ``negate``) ``name``, the share called ``name``."""
    if name not in names:
        return None
    index = names.index(name)
    among = labels != index if negate else labels == index
    return proportion(int((among & (called == index)).sum()), int(among.sum()))


def reference_figures(version: str, card, root=None) -> dict:
    """The same figures on the version's own test split (its ``test_predictions.csv``; rows as patients), with its
    test flag rate from the card; None when the version has no test predictions."""
    path = registry.version_dir(version, root) / registry.TEST_PREDICTIONS
    if not path.is_file():
        return None
    frame = read_predictions(path, card.class_names)
    labels = label_indices(frame["label"], card.class_names)
    probs = frame[card.probability_columns].to_numpy(dtype=np.float64)
    figures = site_figures(labels, probs, card.class_names, card.operating_point)
    rate = ((card.flags or {}).get("rates") or {}).get("test", {}).get("any")
    figures["flagged"] = None if rate is None else {"value": rate}
    figures.pop("reliability")
    return figures


def validation_entry(
    site: str,
    who: str,
    figures: dict,
    reference,
    data_sha256: str,
    skipped: dict,
    kind: str = "validation",
    trained_elsewhere: bool = True,
) -> dict:
    """A card's ``sites`` entry: who measured what, on which films, and the verdict — against the ``reference``
    figures where the version was trained (``trained_elsewhere``), else (a site version, whose reference is its
    base on the same films) on the site's figures alone."""
    reference_auc = ((reference or {}).get("macro_auc") or {}).get("value") if trained_elsewhere else None
    code, sentence = verdict(figures["macro_auc"]["value"], reference_auc)
    return {
        "site": site,
        "kind": kind,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "who": who,
        "n": figures["n"],
        "patients": figures["patients"],
        "n_per_class": figures["n_per_class"],
        "data_sha256": data_sha256,
        "skipped": len(skipped),
        "figures": figures,
        "reference": reference,
        "verdict": {"code": code, "text": sentence},
    }
