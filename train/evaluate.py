"""Evaluate a finished model version (or a run's candidate) on dataset folders it never saw."""

import json
from pathlib import Path

import numpy as np

from core import registry
from core.inference import softmax
from core.preprocess import Preprocessing
from train.cache import load_resized
from train.crosshospital import shift_figures
from train.datasets import label_indices, scan_datasets


def version_probabilities(folder: Path, frame):
    """(card, calibrated probabilities, readable mask) of the version in ``folder`` for the frame's images,
    preprocessed as its card says (through the training cache, so the arrays are those training would use)."""
    import keras

    from train.run import predict_logits

    card = json.loads((folder / registry.CARD_FILE).read_text())
    model = keras.saving.load_model(folder / registry.MODEL_FILE, compile=False)
    size = int(card["input_size"])
    arrays, readable, _ = load_resized(frame["path"].tolist(), (size,), settings=Preprocessing.from_card(card))
    logits = predict_logits(model, arrays[size][readable])
    return card, softmax(logits, float(card.get("temperature", 1.0))), readable


def evaluate_version_on(folder: Path, data_folders) -> dict:
    """``train.crosshospital.shift_figures`` of the version in ``folder`` on every image of ``data_folders``,
    at the version's saved operating point."""
    frame = scan_datasets(data_folders, every_class=False)
    card, probs, readable = version_probabilities(folder, frame)
    frame = frame[readable]
    return shift_figures(label_indices(frame["label"]), probs, card.get("operating_point"),
                         frame["population"].to_numpy())
