"""Evaluate a finished model version (or a run's candidate) on dataset folders it never saw."""

from pathlib import Path

from core import registry
from core.card import ModelCard
from core.flags import FlagDetector
from core.inference import softmax
from core.preprocess import Preprocessing
from train.trainer.cache import load_resized
from train.trainer.datasets import label_indices, scan_datasets
from train.trainer.flags import assess_images
from train.trainer.shift import shift_figures

__all__ = ["evaluate_version_on"]


def evaluate_version_on(folder: Path, data_folders) -> dict:
    """``train.trainer.shift.shift_figures`` of the version in ``folder`` on every image of ``data_folders``,
    at the version's saved operating point and with its flags (when it has a detector), plus the images'
    ``sources``. Images are preprocessed as the card says, through the training cache."""
    import keras

    from train.trainer.run import predict_logits  # here, not above: the trainer loads Keras (8 s on 2 cores)

    card = ModelCard.load(folder / registry.CARD_FILE)
    model = keras.saving.load_model(folder / registry.MODEL_FILE, compile=False)
    frame = scan_datasets(data_folders, every_class=False)
    size = int(card.input_size)
    arrays, readable, _ = load_resized(frame["path"].tolist(), (size,), preprocessing=Preprocessing.from_card(card))
    images, frame = arrays[size][readable], frame[readable]
    temperature = float(card.temperature)
    detector = FlagDetector.load(folder, card.flags)
    flagged = None
    if detector is None:
        probs = softmax(predict_logits(model, images), temperature)
    else:
        probs, assessments = assess_images(model, temperature, detector, card.class_names, card.operating_point, images)
        flagged = [assessment.out_of_depth for assessment in assessments]
    labels = label_indices(frame["label"], card.class_names)
    shift = shift_figures(labels, probs, card.operating_point, frame["population"].to_numpy(), flagged)
    return {**shift, "sources": frame["source"].tolist()}
