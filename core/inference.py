"""Calibrated class probabilities from a published model version, batched through one compiled forward pass,
with the flags (``core.flags``) that say when not to trust them."""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from core import registry
from core.flags import POOLED_FEATURES_LAYER, Assessment, FlagDetector, add_model_flags, from_hints
from core.imaging import UnusableImageError, read_image
from core.preprocess import Preprocessing, to_model_input

__all__ = ["softmax", "FileResult", "Predictor", "logits_model", "embedding_model", "flag_features"]

LOGITS_LAYER = "logits"
DEFAULT_BATCH_SIZE = 64
ORIENTATION_THUMBNAIL = 16


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass
class FileResult:
    """One file's outcome: probabilities and flags, or the message why it could not be read. ``pixels`` (the
    decoded full-resolution greys) only when asked for."""

    path: object
    probabilities: np.ndarray = None
    assessment: Assessment = None
    error: str = None
    pixels: np.ndarray = None


class Predictor:
    """A loaded model version: its card, its logits model, a compiled forward pass and its flag detector."""

    def __init__(self, version=None, root=None, model=None, card=None, detector=None):
        import tensorflow as tf

        self.card = card or registry.load_card(version, root)
        self.version = self.card.version
        self.model = model or registry.load_model(self.version, root)
        self.class_names = tuple(self.card.class_names)
        self.input_size = int(self.card.input_size)
        self.temperature = float(self.card.temperature)
        self.preprocessing = Preprocessing.from_card(self.card)
        if detector is None and card is None:
            detector = FlagDetector.load(registry.version_dir(self.version, root), self.card.flags)
        self.detector = detector
        self.logits_model = logits_model(self.model)
        signature = [tf.TensorSpec([None, self.input_size, self.input_size, 3], tf.float32)]
        self._forward = tf.function(lambda x: self.logits_model(x, training=False), input_signature=signature)
        self._embed = embedding_model(self.model) if self.detector is not None else None
        # Compiled Grad-CAM passes by layer (core.gradcam, core.diagnosis): they die with the model.
        self.explainers = {}

    def preprocess(self, grey: np.ndarray) -> np.ndarray:
        return to_model_input(grey, self.input_size, self.preprocessing)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(np.asarray(batch, dtype=np.float32)).numpy()

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (temperature-scaled softmax) for a (N, S, S, 3) batch."""
        return softmax(self.logits(batch), self.temperature)

    def assess(self, batch: np.ndarray, hints=None, card=None) -> tuple:
        """(calibrated probabilities (N, C), [Assessment] per image) for a (N, S, S, 3) batch: the hints'
        flags (``hints``: one list per image), then the detector's (one pass over the batch and its mirror
        images), then ``borderline`` at the operating point of ``card`` (default: the loaded one)."""
        batch = np.asarray(batch, dtype=np.float32)
        card = card or self.card
        hints = hints if hints is not None else [[] for _ in batch]
        assessments = [from_hints(image_hints) for image_hints in hints]
        scores = None
        if self._embed is None:
            probabilities = self.probabilities(batch)
        else:
            logits, embeddings, features = (t.numpy() for t in self._embed(np.concatenate([batch, batch[:, :, ::-1]])))
            both = softmax(logits, self.temperature)
            probabilities, mirrored = both[: len(batch)], both[len(batch) :]
            scores = self.detector.scores(embeddings[: len(batch)], features[: len(batch)], probabilities, mirrored)
        add_model_flags(assessments, probabilities, self.class_names, card.operating_point, self.detector, scores)
        return probabilities, assessments

    def assess_files(self, paths, batch_size=DEFAULT_BATCH_SIZE, workers=None, keep_pixels=False):
        """Yield a ``FileResult`` per path, in input order (decoding in parallel, the model in batches)."""
        paths = list(paths)
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                loaded = list(pool.map(lambda path: self._load_one(path, keep_pixels), chunk))
                good = [item for item in loaded if item[0] is not None]
                if good:
                    probabilities, assessments = self.assess(np.stack([g[0] for g in good]), [g[1] for g in good])
                    outputs = iter(zip(probabilities, assessments))
                for path, (image, _hints, pixels, error) in zip(chunk, loaded):
                    if image is None:
                        yield FileResult(path, error=error)
                        continue
                    probs, assessment = next(outputs)
                    yield FileResult(path, probs, assessment, pixels=pixels)

    def _load_one(self, path, keep_pixels: bool):
        """(model input, hints, full-resolution pixels only when kept, error): a batch of 64 full-resolution
        radiographs would otherwise hold ~1 GB of float32 pixels nobody reads."""
        try:
            radiograph = read_image(path)
        except UnusableImageError as error:
            return None, None, None, str(error)
        pixels = radiograph.pixels if keep_pixels else None
        return self.preprocess(radiograph.pixels), radiograph.hints, pixels, None


def logits_model(model):
    """The model up to its pre-softmax ``logits`` layer (the model itself if it ends in logits)."""
    import keras

    try:
        layer = model.get_layer(LOGITS_LAYER)
    except ValueError:
        return model
    return keras.Model(model.inputs, layer.output, name=f"{model.name}_logits")


def embedding_model(model):
    """A compiled pass (N, S, S, 3) → (logits, penultimate embedding, orientation features). The embedding is
    the input of the ``logits`` layer. The orientation features add the DCNN's pooled block features when it has
    them and a 16 × 16 thumbnail of the input: global pools barely change when a film is turned, the thumbnail's
    layout does (on v1, a 90° turn detected at 1 % false flags: 79 % without the thumbnail, 95 % with it)."""
    import keras
    import tensorflow as tf

    logits = model.get_layer(LOGITS_LAYER)
    embedding = logits.input
    try:
        parts = [embedding, model.get_layer(POOLED_FEATURES_LAYER).output]
    except ValueError:
        parts = [embedding]
    outputs = keras.Model(model.inputs, [logits.output, embedding, *parts[1:]])
    signature = [tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32)]

    @tf.function(input_signature=signature)
    def forward(images):
        logits_out, embedding_out, *pooled = outputs(images, training=False)
        return logits_out, embedding_out, flag_features(images, embedding_out, pooled)

    return forward


def flag_features(images, embedding, pooled):
    """The orientation features (see ``embedding_model``) of a batch, as a tensor (N, F)."""
    import tensorflow as tf

    thumbnail = tf.image.resize(images[..., :1], (ORIENTATION_THUMBNAIL, ORIENTATION_THUMBNAIL), method="area")
    return tf.concat([embedding, *pooled, tf.reshape(thumbnail, [tf.shape(images)[0], -1])], axis=1)
