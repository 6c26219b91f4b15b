"""The flag detectors of a run's candidate (``core.flags``), fitted on its own training and validation images,
and the flags they raise on cached images — what ``core.inference.Predictor.assess`` gives for the same pixels.

``train.trainer.run`` fits them at the end of every run; ``python -m train.evaluation.detector`` refits them for a
version trained before detectors existed.
"""

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression

from core import CLASS_NAMES
from core.flags import BORDERLINE_CONFIDENCE, FLAGS, Assessment, FlagDetector, add_model_flags
from core.inference import embedding_model, softmax
from core.operating_point import threshold_interval
from train.trainer.datasets import EXTERNAL, SPLIT_NAMES
from train.trainer.shift import shift_figures

__all__ = [
    "transformed",
    "model_outputs",
    "fit_detector",
    "fit_flags",
    "assess_images",
    "flag_rates",
]

OOD_QUANTILE = 0.99  # validation images above this distance are flagged: ~1 % of in-distribution images
ORIENTATION_FALSE_FLAGS = 0.01  # rotated / inverted thresholds flag at most this share of upright validation images
UNCERTAIN_QUANTILE = 0.98  # mirror disagreement above this validation quantile is 'uncertain'
FIT_IMAGES = 3000  # training images used for the class means and the orientation heads
BATCH = 256


def transformed(images: np.ndarray, quarter_turns: int, invert: bool) -> np.ndarray:
    """uint8 (N, S, S) turned by ``quarter_turns`` × 90° and optionally with inverted greys."""
    turned = np.rot90(images, quarter_turns, axes=(1, 2))
    return 255 - turned if invert else turned


def model_outputs(forward, images_uint8: np.ndarray, temperature: float) -> dict:
    """Calibrated probabilities, penultimate embeddings and orientation features of uint8 (N, S, S) inputs,
    through ``forward`` (a ``core.inference.embedding_model``)."""
    parts = {"probabilities": [], "embeddings": [], "features": []}
    for start in range(0, len(images_uint8), BATCH):
        batch = np.repeat(images_uint8[start : start + BATCH, ..., None].astype(np.float32) / 255.0, 3, axis=-1)
        logits, embeddings, features = forward(batch)
        parts["probabilities"].append(softmax(logits.numpy(), temperature))
        parts["embeddings"].append(embeddings.numpy().astype(np.float64))
        parts["features"].append(features.numpy().astype(np.float64))
    return {name: np.concatenate(values) for name, values in parts.items()}


def _logistic(features, targets, mean, scale):
    head = LogisticRegression(C=1.0, max_iter=2000).fit((features - mean) / scale, targets)
    return np.concatenate([head.coef_[0], head.intercept_])


def fit_detector(
    model, temperature: float, train_images, train_labels, val_images, val_labels, operating_point=None, seed: int = 0
):
    """(FlagDetector, card ``flags`` entry, the operating point with its ``threshold_interval``) from uint8
    images at the input size. The orientation heads learn from copies turned by 0/90/180/270° and inverted,
    so their labels are free."""
    model = embedding_model(model)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(train_images))[:FIT_IMAGES]
    train_images, train_labels = train_images[rows], np.asarray(train_labels)[rows]
    train = model_outputs(model, train_images, temperature)
    means = np.stack([train["embeddings"][train_labels == i].mean(axis=0) for i in range(len(CLASS_NAMES))])
    centred = train["embeddings"] - means[train_labels]
    precision = LedoitWolf().fit(centred).precision_

    copies, rotated, inverted = [], [], []
    for turns in range(4):
        for invert in (False, True):
            copies.append(model_outputs(model, transformed(train_images, turns, invert), temperature)["features"])
            rotated += [turns > 0] * len(train_images)
            inverted += [invert] * len(train_images)
    features = np.concatenate(copies)
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    rotated_weights = _logistic(features, np.array(rotated), mean, scale)
    inverted_weights = _logistic(features, np.array(inverted), mean, scale)
    detector = FlagDetector(means, precision, mean, scale, rotated_weights, inverted_weights, settings={})

    val = model_outputs(model, val_images, temperature)
    mirrored = model_outputs(model, val_images[:, :, ::-1], temperature)
    upright = detector.scores(val["embeddings"], val["features"], val["probabilities"], mirrored["probabilities"])
    turned = model_outputs(model, transformed(val_images, 1, False), temperature)["features"]
    negative = model_outputs(model, transformed(val_images, 0, True), temperature)["features"]
    settings = {
        "out_of_distribution": _quantile_flag(
            upright["mahalanobis"],
            OOD_QUANTILE,
            "squared Mahalanobis distance of the penultimate embedding to the nearest "
            "training class mean (shared Ledoit-Wolf covariance)",
        ),
        "uncertain": _quantile_flag(
            upright["disagreement"],
            UNCERTAIN_QUANTILE,
            "largest change of a class probability between the image and its mirror image",
        ),
    }
    for name, scores, shifted in (
        ("rotated", upright["rotated"], detector.orientation_probability(turned, rotated_weights)),
        ("inverted", upright["inverted"], detector.orientation_probability(negative, inverted_weights)),
    ):
        threshold = max(0.5, float(np.quantile(scores, 1 - ORIENTATION_FALSE_FLAGS)))
        settings[name] = {
            "threshold": threshold,
            "validation_rate": float((scores > threshold).mean()),
            "validation_detected": float((shifted > threshold).mean()),
            "score": f"logistic head on the model's features; detected = share of validation images "
            f"{'turned 90°' if name == 'rotated' else 'with inverted greys'} flagged",
        }
    if operating_point:
        index = (
            CLASS_NAMES.index(operating_point["positive_class"])
            if operating_point["positive_class"] in CLASS_NAMES
            else None
        )
        if index is not None:
            truth, score = np.asarray(val_labels) == index, val["probabilities"][:, index]
            operating_point = {
                **operating_point,
                "threshold_interval": threshold_interval(
                    truth, score, operating_point["threshold"], confidence=BORDERLINE_CONFIDENCE
                ),
            }
    detector = FlagDetector(means, precision, mean, scale, rotated_weights, inverted_weights, settings)
    any_flag = np.zeros(len(val_images), bool)
    for name, key in (
        ("out_of_distribution", "mahalanobis"),
        ("uncertain", "disagreement"),
        ("rotated", "rotated"),
        ("inverted", "inverted"),
    ):
        any_flag |= upright[key] > settings[name]["threshold"]
    settings["validation_any_model_flag"] = float(any_flag.mean())
    settings["fitted_on"] = {"train_images": int(len(train_images)), "validation_images": int(len(val_images))}
    return detector, settings, operating_point


def _quantile_flag(scores, quantile: float, description: str) -> dict:
    threshold = float(np.quantile(scores, quantile))
    return {
        "threshold": threshold,
        "validation_rate": float((scores > threshold).mean()),
        "quantile": quantile,
        "score": description,
    }


def fit_flags(model, data, evaluation: dict) -> None:
    """Fit the version's flag detector on a run's ``train.trainer.run.PreparedData``, measure its flag rates on the test
    (and external) images, and add the external split's shift figures with the flags; all into ``evaluation``."""
    detector, settings, point = fit_detector(
        model,
        evaluation["temperature"],
        data.train_inputs,
        data.labels["train"],
        data.images["val"],
        data.labels["val"],
        evaluation["operating_point"],
    )
    settings["rates"] = {}
    for split in [s for s in data.splits if s in ("test", EXTERNAL)]:
        _, assessments = assess_images(
            model, evaluation["temperature"], detector, CLASS_NAMES, point, data.images[split]
        )
        settings["rates"][SPLIT_NAMES[split]] = flag_rates(assessments)
        if split == EXTERNAL:
            rows = data.frame["split"] == EXTERNAL
            evaluation["metrics"][EXTERNAL]["shift"] = shift_figures(
                data.labels[EXTERNAL],
                evaluation["probabilities"][EXTERNAL],
                point,
                data.frame.loc[rows, "population"].to_numpy(),
                [a.out_of_depth for a in assessments],
            )
    evaluation.update(operating_point=point, flags=settings, detector=detector)


def assess_images(model, temperature: float, detector: FlagDetector, class_names, point, images_uint8) -> tuple:
    """(calibrated probabilities, [Assessment]) of cached uint8 images at the input size: the detector's flags
    and ``borderline`` at the operating ``point`` — what ``Predictor.assess`` gives for the same pixels."""
    model = embedding_model(model)
    outputs = model_outputs(model, images_uint8, temperature)
    mirrored = model_outputs(model, images_uint8[:, :, ::-1], temperature)
    scores = detector.scores(
        outputs["embeddings"], outputs["features"], outputs["probabilities"], mirrored["probabilities"]
    )
    assessments = [Assessment() for _ in images_uint8]
    add_model_flags(assessments, outputs["probabilities"], class_names, point, detector, scores)
    return outputs["probabilities"], assessments


def flag_rates(assessments) -> dict:
    """The share of images with any flag, with a flag that puts the model out of its depth, and per code."""
    n = max(1, len(assessments))
    rates = {
        "n": len(assessments),
        "any": sum(bool(a.flags) for a in assessments) / n,
        "out_of_depth": sum(a.out_of_depth for a in assessments) / n,
    }
    rates.update(
        {
            code: sum(code in a.flags for a in assessments) / n
            for code in FLAGS
            if any(code in a.flags for a in assessments)
        }
    )
    return rates
