"""Refit the flag detectors (``train.trainer.flags``) of a version trained before detectors existed:

    python -m train.evaluation.detector weights/v1-dcnn80-compact --data ../shared/data/cxr

(the version's patient-level split is rebuilt from its card's recipe and checked against its manifest hash).
"""

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from core import registry
from core.card import ModelCard
from train.trainer.config import recipe_from_card
from train.trainer.flags import fit_detector
from train.trainer.run import prepare_data

__all__ = ["fit_for_version", "main"]


def fit_for_version(folder: Path, data_folders, split_file: Path = None) -> dict:
    """Fit and store the detector of the version in ``folder`` (its card updated atomically); returns the
    card's new ``flags`` entry."""
    import keras

    card = ModelCard.load(folder / registry.CARD_FILE)
    config = replace(recipe_from_card(card), data=[str(Path(f).resolve()) for f in data_folders])
    data = prepare_data(config, int(card.input_size), split_file=split_file)
    expected = card.data["manifest_sha256"]
    if data.manifest_sha256 != expected:
        raise ValueError(
            f"The data given is not the data {folder.name} was trained on (manifest hash "
            f"{data.manifest_sha256[:12]}…, the card says {expected[:12]}…)."
        )
    model = keras.saving.load_model(folder / registry.MODEL_FILE, compile=False)
    detector, settings, point = fit_detector(
        model,
        float(card.temperature),
        data.train_inputs,
        data.labels["train"],
        data.images["val"],
        data.labels["val"],
        card.operating_point,
    )
    detector.save(folder)
    card.flags = settings
    card.operating_point = point
    card.save(folder / registry.CARD_FILE)
    return settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluation.detector", description=__doc__.splitlines()[0])
    parser.add_argument("version_dir", help="a version folder (weights/<version>) or a run's candidate folder")
    parser.add_argument("--data", nargs="+", required=True, help="the dataset folder(s) it was trained on")
    parser.add_argument("--split", help="the run's split.csv (default: rebuilt from the card's recipe)")
    args = parser.parse_args(argv)
    settings = fit_for_version(Path(args.version_dir), args.data, Path(args.split) if args.split else None)
    print(json.dumps(settings, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
