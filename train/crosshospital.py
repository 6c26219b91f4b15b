"""Cross-hospital evaluation: figures on a source the model never trained on, and the leave-one-source-out table.

``python -m train --data DIR [DIR ...] --leave-out-source SOURCE`` trains without SOURCE and stores, in the
candidate's card, ``metrics.external`` with the ``shift`` figures below. This module's command collects such runs
into one table (Markdown or JSON) and can store it in a version's card:

    python -m train.crosshospital runs/loso-nih runs/loso-ieee [--json] [--into-card weights/V/card.json]
    python -m train.crosshospital --evaluate weights/v1-dcnn80-compact --data ../shared/data/cxr-nih-adult
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from core import CLASS_NAMES
from core.card import ModelCard, finite
from core.metrics import proportion
from core.operating_point import decide, figures, threshold_for_sensitivity
from core.registry import CARD_FILE
from core.tables import cross_hospital_table, lever_table

__all__ = [
    "automatic_operating_point",
    "calls",
    "present_macro_auc",
    "shift_figures",
    "fold_row",
    "recipe_summary",
    "main",
]

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


# --- the leave-one-source-out table --------------------------------------------------------------------------


def fold_row(card: ModelCard, run: str) -> dict:
    """One row of the table from a leave-one-source-out candidate's card."""
    training = card.training
    external = card.metrics["external"]
    return {
        "held_out_source": card.data["held_out_source"],
        "run": run,
        "epochs": training.get("epochs_trained"),
        "recipe": recipe_summary(training),
        "trained_on": {s: n for s, n in card.data["split_sizes"].items() if s != "external"},
        "validation": {
            "accuracy": card.metrics["validation"]["accuracy"],
            "macro_auc": card.metrics["validation"].get("macro_auc"),
        },
        "shift": external["shift"],
    }


def recipe_summary(training: dict) -> str:
    """The levers a run used, in a few words (defaults left out)."""
    parts = []
    for key, label in (
        ("intensity", "intensity"),
        ("border_crop", "border crop"),
        ("sampling", "sampling"),
        ("rotation", "rotation°"),
        ("gamma", "gamma"),
        ("blur", "blur σ"),
        ("noise", "noise σ"),
        ("jpeg_quality", "JPEG q≥"),
        ("mixup", "mixup α"),
    ):
        value = training.get(key)
        if value not in (None, 0, 0.0, "none", "shuffle", ""):
            parts.append(f"{label} {value}")
    parts.append(f"class weights {training.get('class_weights')}")
    return ", ".join(parts)


def _card_of(path: Path) -> tuple:
    for candidate in (path / "candidate" / CARD_FILE, path / CARD_FILE, path):
        if candidate.is_file():
            return ModelCard.load(candidate), (path.name if candidate != path else path.parent.name)
    raise FileNotFoundError(f"No card.json in or at {path}.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.crosshospital", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="leave-one-source-out run folders (or their card.json files)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of Markdown")
    parser.add_argument(
        "--levers",
        action="store_true",
        help="one line per run: its recipe, validation figures and the external figures (all images)",
    )
    parser.add_argument("--into-card", metavar="CARD", help="also add the rows to this card's 'cross_hospital'")
    parser.add_argument("--evaluate", metavar="VERSION_DIR", help="evaluate a version folder on --data instead")
    parser.add_argument("--data", nargs="+", help="with --evaluate: dataset folder(s) the version never saw")
    args = parser.parse_args(argv)
    if args.evaluate:
        from train.evaluate import evaluate_version_on

        folder = Path(args.evaluate)
        card = ModelCard.load(folder / CARD_FILE)
        shift = evaluate_version_on(folder, args.data)
        sources = sorted(set(shift.pop("sources")))
        rows = [
            {
                "held_out_source": ", ".join(sources),
                "run": f"{folder.name} (never trained on it)",
                "epochs": card.training.get("epochs_trained"),
                "recipe": recipe_summary(card.training),
                "shift": shift,
            }
        ]
    else:
        rows = []
        for run in args.runs:
            card, name = _card_of(Path(run))
            if "external" not in card.metrics:
                print(f"error: {run} was not trained with --leave-out-source", file=sys.stderr)
                return 2
            rows.append(fold_row(card, name))
    rows = finite(rows)  # NaN (a class absent) → null: strict JSON
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(lever_table(rows) if args.levers else cross_hospital_table(rows))
    if args.into_card:
        path = Path(args.into_card)
        card = ModelCard.load(path)
        replaced = {(row["held_out_source"], row["run"]) for row in rows}
        kept = [row for row in card.cross_hospital or [] if (row["held_out_source"], row["run"]) not in replaced]
        card.cross_hospital = kept + rows
        card.save(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
