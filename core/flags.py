"""Flags on every call: machine-readable codes and the reader's warnings, saying when not to trust the model.

Each model version carries its own detectors, fitted by ``train.trainer.flags`` on that version's training and
validation images and stored beside its weights (``detector.npz``, thresholds in the card's ``flags``):

- ``out_of_distribution``: the Mahalanobis distance (Lee et al. 2018) of the image's penultimate-layer embedding
  to the nearest training class mean, under the classes' shared covariance, above its 99th percentile on
  validation images. It catches gross shift (not a chest, a photograph, a CT scout); radiographs from an unseen
  hospital mostly look in distribution to it.
- ``rotated`` / ``inverted``: two logistic heads on the same features, trained on copies of training images turned
  by 90/180/270° and with inverted greys (free labels), thresholds set for ≤ 1 % false flags on validation.
- ``uncertain``: the image and its mirror image disagree (largest change of a class probability) more than on 98 %
  of validation images: the model's own uncertainty, from test-time augmentation.
- ``borderline``: the operating point's score lies within the central half of its threshold's bootstrap interval
  (where the threshold is as likely to land on another sample of validation patients as not).
- the reader's hints (``core.imaging``): lateral view, not a chest, not a radiograph, raw detector data, unusual
  intensities, thumbnail, several frames.

Image size and file format are never a reason for a flag by themselves: a full-resolution radiograph from a known
hospital is in distribution (``thumbnail`` only marks images too small to show detail).
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Assessment",
    "from_hints",
    "sigmoid",
    "FlagDetector",
    "mahalanobis",
    "add_model_flags",
    "operating_score",
    "is_borderline",
]

DETECTOR_FILE = "detector.npz"
PENULTIMATE = "penultimate"  # the input of the ``logits`` layer
POOLED_FEATURES_LAYER = "pooled_features"  # the DCNN's global max pools of the four blocks, when the model has them

# code: (warning shown to the reader, whether the model is out of its depth: then the call is not to be used)
FLAGS = {
    "out_of_distribution": (
        "This image is unlike the images the model was trained on; its output is not meaningful here.",
        True,
    ),
    "rotated": ("The image seems rotated (not upright); the model was trained on upright frontal films.", True),
    "inverted": ("The greys seem inverted (bones dark); check the export or the MONOCHROME1/2 tag.", True),
    "uncertain": ("The model is unsure: the image and its mirror image give clearly different results.", True),
    "borderline": (
        "The score is within the uncertainty of the operating point's threshold: the call could go either way.",
        False,
    ),
    "lateral_view": ("The file says the view is not frontal (PA or AP).", True),
    "not_chest": ("The file says the body part is not the chest.", True),
    "not_radiograph": ("The file does not say it is a radiograph.", True),
    "raw_detector_data": ("This is raw detector data, not the image a radiologist reads.", True),
    "unusual_intensities": ("The intensities are unusual for a chest radiograph.", False),
    "thumbnail": ("The image is very small; fine detail is lost.", False),
    "multi_frame": ("The file holds several frames; only the first is used.", False),
}
UNCERTAIN_CALL = "uncertain — read without the model"
# The threshold at 97.5 % sensitivity rests on the few lowest-scoring positives, so its bootstrap interval is wide
# (v1: 0.09–0.45 at 95 %, holding 10 % of test images; its central half 0.13–0.36 holds 6.5 %): borderline means
# inside the central half, where the threshold is as likely to land on another sample of patients as not.
BORDERLINE_CONFIDENCE = 0.5


@dataclass
class Assessment:
    """One image's flags: codes in a fixed order and the warnings to show (hint texts first, then the model's)."""

    flags: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def out_of_depth(self) -> bool:
        """Whether a flag says the model's call should not be used."""
        return any(FLAGS[code][1] for code in self.flags)

    def add(self, code: str, warning: str = None) -> None:
        if code not in self.flags:
            self.flags.append(code)
            self.warnings.append(warning or FLAGS[code][0])


def from_hints(hints) -> Assessment:
    """The flags of ``core.imaging`` hints (each carries its code); their own texts are the warnings."""
    assessment = Assessment()
    for hint in hints:
        assessment.add(getattr(hint, "flag", "unusual_intensities"), str(hint))
    return assessment


def sigmoid(values) -> np.ndarray:
    """The logistic function, in float64 (the orientation heads' scores)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(values, dtype=np.float64)))


@dataclass(frozen=True)
class FlagDetector:
    """A version's fitted detectors (see the module docstring). Arrays are float64; ``settings`` is the card's
    ``flags`` entry (thresholds and the validation rates they give)."""

    class_means: np.ndarray  # (C, D) penultimate embedding means of the training classes
    precision: np.ndarray  # (D, D) inverse of their shared covariance
    feature_mean: np.ndarray  # (F,) standardisation of the orientation features
    feature_scale: np.ndarray  # (F,)
    rotated_weights: np.ndarray  # (F + 1,) logistic head: coefficients then intercept
    inverted_weights: np.ndarray  # (F + 1,)
    settings: dict

    @classmethod
    def load(cls, folder: Path, settings):
        """The detector stored in a version folder with its card's ``flags`` ``settings``, or None when the
        version has none (or its card lacks the thresholds)."""
        path = Path(folder) / DETECTOR_FILE
        if not path.is_file() or not settings:
            return None
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name].astype(np.float64) for name in stored.files}
        return cls(
            arrays["class_means"],
            arrays["precision"],
            arrays["feature_mean"],
            arrays["feature_scale"],
            arrays["rotated_weights"],
            arrays["inverted_weights"],
            settings,
        )

    def save(self, folder: Path) -> None:
        np.savez(
            Path(folder) / DETECTOR_FILE,
            class_means=self.class_means.astype(np.float32),
            precision=self.precision.astype(np.float32),
            feature_mean=self.feature_mean.astype(np.float32),
            feature_scale=self.feature_scale.astype(np.float32),
            rotated_weights=self.rotated_weights.astype(np.float32),
            inverted_weights=self.inverted_weights.astype(np.float32),
        )

    def scores(self, embeddings, features, probabilities, flipped_probabilities) -> dict:
        """Per image: Mahalanobis distance², rotated and inverted probabilities, mirror disagreement."""
        return {
            "mahalanobis": mahalanobis(embeddings, self.class_means, self.precision),
            "rotated": self.orientation_probability(features, self.rotated_weights),
            "inverted": self.orientation_probability(features, self.inverted_weights),
            "disagreement": np.abs(np.asarray(probabilities) - np.asarray(flipped_probabilities)).max(axis=1),
        }

    def orientation_probability(self, features, weights):
        """A logistic head's probability (``rotated_weights`` or ``inverted_weights``) for each feature row."""
        standard = (np.asarray(features, dtype=np.float64) - self.feature_mean) / self.feature_scale
        return sigmoid(standard @ weights[:-1] + weights[-1])

    def flag(self, scores: dict, index: int, assessment: Assessment) -> None:
        """Add the model's flags of image ``index`` to ``assessment``."""
        thresholds = {
            name: self.settings[name]["threshold"]
            for name in ("out_of_distribution", "rotated", "inverted", "uncertain")
        }
        if scores["mahalanobis"][index] > thresholds["out_of_distribution"]:
            assessment.add("out_of_distribution")
        if scores["rotated"][index] > thresholds["rotated"]:
            assessment.add("rotated")
        if scores["inverted"][index] > thresholds["inverted"]:
            assessment.add("inverted")
        if scores["disagreement"][index] > thresholds["uncertain"]:
            assessment.add("uncertain")


def mahalanobis(embeddings, class_means, precision) -> np.ndarray:
    """Squared Mahalanobis distance of each embedding to its nearest class mean (shared covariance)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    distances = []
    for mean in class_means:
        centred = embeddings - mean
        distances.append(np.einsum("nd,de,ne->n", centred, precision, centred))
    return np.min(distances, axis=0)


def add_model_flags(assessments, probabilities, class_names, point, detector=None, scores=None) -> None:
    """Add to each image's assessment the detector's flags (from its ``scores``, when there is a detector) and
    ``borderline`` at the operating ``point`` (a card's ``operating_point``, or None): the one rule for the app,
    the CLI and the trainer's figures."""
    for index, (row, assessment) in enumerate(zip(probabilities, assessments)):
        if detector is not None:
            detector.flag(scores, index, assessment)
        if is_borderline(row, class_names, point):
            assessment.add("borderline")


def operating_score(probabilities, class_names, point) -> float | None:
    """The score the operating ``point`` thresholds: p(positive), or 1 − p(Normal) for "abnormal"; None without
    an operating point."""
    if not point:
        return None
    names = list(class_names)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if point["positive_class"] == "abnormal":
        return 1.0 - probabilities[..., names.index("Normal")]
    return probabilities[..., names.index(point["positive_class"])]


def is_borderline(probabilities, class_names, point) -> bool:
    """Whether the operating ``point``'s score of one image lies within its threshold's bootstrap interval."""
    interval = (point or {}).get("threshold_interval")
    if not interval or None in interval:
        return False
    score = float(operating_score(probabilities, class_names, point))
    return interval[0] <= score <= interval[1]
