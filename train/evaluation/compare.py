"""A finished run's candidate against a published version, on the validation and test rows both were evaluated
on: each metric's paired difference with a bootstrap interval (the cards' own figures are ``core.report``'s)."""

import math
from pathlib import Path

import numpy as np
import pandas as pd

from core import registry
from core.card import CardError, ModelCard, probability_columns, read_predictions
from core.metrics import bootstrap_ci, rank_macro_auc
from train.trainer.datasets import label_indices
from train.trainer.run import CANDIDATE

__all__ = ["COMPARED_METRICS", "paired_differences", "compare_with_version"]

COVID = "COVID-19"


def _accuracy(labels, probs) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def _recall_of(index: int):
    def recall(labels, probs) -> float:
        rows = labels == index
        if not rows.any():
            raise ValueError("no rows of the class")
        return _accuracy(labels[rows], probs[rows])

    return recall


COMPARED_METRICS = {"accuracy": _accuracy, "macro AUC": rank_macro_auc}


def paired_differences(labels, active, candidate, class_names=()) -> pd.DataFrame:
    """Each metric for both models on the same rows — accuracy, macro AUC and the recall of COVID-19 when it is
    one of ``class_names`` — the difference (candidate − active) and its 95 % paired bootstrap interval (rows
    resampled together for both models)."""
    metrics = dict(COMPARED_METRICS)
    if COVID in class_names:
        metrics[f"{COVID} recall"] = _recall_of(list(class_names).index(COVID))
    rows = []
    for name, metric in metrics.items():
        try:
            before, after = float(metric(labels, active)), float(metric(labels, candidate))
        except ValueError:
            continue
        if not (math.isfinite(before) and math.isfinite(after)):  # e.g. the macro AUC with a class absent
            continue
        low, high = bootstrap_ci(lambda y, a, c, m=metric: m(y, c) - m(y, a), (labels, active, candidate))
        rows.append(
            {
                "metric": name,
                "active": before,
                "candidate": after,
                "difference": after - before,
                "ci95_low": low,
                "ci95_high": high,
                "n": len(labels),
            }
        )
    return pd.DataFrame(rows)


def _probabilities(frame: pd.DataFrame, class_names, suffix: str) -> np.ndarray:
    return frame[[column + suffix for column in probability_columns(class_names)]].to_numpy(np.float64)


def _candidate_card(candidate: Path):
    try:
        return ModelCard.load(candidate / registry.CARD_FILE)
    except CardError as error:
        raise registry.ModelVersionError(f"The run's candidate card cannot be read: {error}") from error


def compare_with_version(run_dir, version=None, root=None) -> dict:
    """Compare a finished run's candidate with ``version`` (default: the active one) on the validation and
    test rows both were evaluated on. Not comparable (with the reasons) when their data or splits differ."""
    candidate = Path(run_dir) / CANDIDATE
    name = registry.resolve_version(version, root)
    published = registry.version_dir(name, root)
    cards = {"candidate": _candidate_card(candidate), "active": registry.load_card(name, root)}
    data = {key: card.data for key, card in cards.items()}
    reasons = []
    class_names = cards["active"].class_names
    if cards["candidate"].class_names != class_names:
        reasons.append(f"Their classes differ: {list(class_names)} vs {list(cards['candidate'].class_names)}.")
        return {"version": name, "comparable": False, "reasons": reasons, "splits": {}, "cards": cards}
    hashes = {key: value.get("manifest_sha256") for key, value in data.items()}
    if not hashes["active"] or hashes["active"] != hashes["candidate"]:
        reasons.append(
            "The two models were not trained on the same data (their manifest hashes differ or are missing)."
        )
    if data["candidate"].get("split_sizes") != data["active"].get("split_sizes"):
        reasons.append(
            f"Their split sizes differ: {data['active'].get('split_sizes')} (published) "
            f"vs {data['candidate'].get('split_sizes')} (candidate)."
        )
    splits = {}
    for split, filename in (("validation", registry.VAL_PREDICTIONS), ("test", registry.TEST_PREDICTIONS)):
        try:
            mine, theirs = (read_predictions(folder / filename, class_names) for folder in (candidate, published))
        except CardError as error:
            reasons.append(f"The {split} predictions cannot be compared: they {error}")
            continue
        common = mine.merge(theirs, on=["path", "label"], suffixes=("", "_active"))
        if not (len(common) == len(mine) == len(theirs)):
            reasons.append(f"Their {split} images differ ({len(common)} in common of {len(mine)} and {len(theirs)}).")
        if common.empty:
            splits[split] = pd.DataFrame()
            continue
        labels = label_indices(common["label"], class_names)
        splits[split] = paired_differences(
            labels, _probabilities(common, class_names, "_active"), _probabilities(common, class_names, ""), class_names
        )
    return {"version": name, "comparable": not reasons, "reasons": reasons, "splits": splits, "cards": cards}
