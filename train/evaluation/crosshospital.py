"""Cross-hospital evaluation: the leave-one-source-out table, and a version on data it never saw.

``python -m train --data DIR [DIR ...] --leave-out-source SOURCE`` trains without SOURCE and stores, in the
candidate's card, ``metrics.external`` with the ``shift`` figures of ``train.trainer.shift``. This module's command
collects such runs into one table (Markdown or JSON) and can store it in a version's card:

    python -m train.evaluation.crosshospital runs/loso-nih runs/loso-ieee [--json] [--into-card weights/V/card.json]
    python -m train.evaluation.crosshospital --evaluate weights/v1-dcnn80-compact --data ../shared/data/cxr-nih-adult
"""

import argparse
import json
import sys
from pathlib import Path

from core.card import ModelCard, finite
from core.registry import CARD_FILE
from core.tables import cross_hospital_table, lever_table
from train.evaluation.evaluate import evaluate_version_on

__all__ = ["fold_row", "recipe_summary", "main"]


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
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluation.crosshospital", description=__doc__.splitlines()[0]
    )
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
