"""Calibrated class probabilities from a published model version, batched through one compiled forward pass."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core import registry
from core.imaging import UnusableImageError, read_grey
from core.preprocess import to_model_input

LOGITS_LAYER = "logits"
DEFAULT_BATCH_SIZE = 64


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


class Predictor:
    """A loaded model version: its card, its logits model and a compiled forward pass."""

    def __init__(self, version=None, root=None, model=None, card=None):
        import tensorflow as tf

        self.card = card or registry.load_card(version, root)
        self.version = self.card["version"]
        self.model = model or registry.load_model(self.version, root)
        self.class_names = tuple(self.card["class_names"])
        self.input_size = int(self.card["input_size"])
        self.temperature = float(self.card.get("temperature", 1.0))
        self.logits_model = logits_model(self.model)
        signature = [tf.TensorSpec([None, self.input_size, self.input_size, 3], tf.float32)]
        self._forward = tf.function(lambda x: self.logits_model(x, training=False), input_signature=signature)

    def preprocess(self, grey: np.ndarray) -> np.ndarray:
        return to_model_input(grey, self.input_size)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(np.asarray(batch, dtype=np.float32)).numpy()

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (temperature-scaled softmax) for a (N, S, S, 3) batch."""
        return softmax(self.logits(batch), self.temperature)

    def predict_files(self, paths, batch_size=DEFAULT_BATCH_SIZE, workers=None):
        """Yield ``(path, probabilities or None, error message or None)`` in input order."""
        paths = list(paths)
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                loaded = list(pool.map(self._load_one, chunk))
                good = [array for array, _ in loaded if array is not None]
                probs = iter(self.probabilities(np.stack(good))) if good else iter(())
                for path, (array, error) in zip(chunk, loaded):
                    yield (path, next(probs), None) if array is not None else (path, None, error)

    def _load_one(self, path):
        try:
            return self.preprocess(read_grey(path)), None
        except UnusableImageError as error:
            return None, str(error)


def logits_model(model):
    """The model up to its pre-softmax ``logits`` layer (the model itself if it ends in logits)."""
    import keras

    try:
        layer = model.get_layer(LOGITS_LAYER)
    except ValueError:
        return model
    return keras.Model(model.inputs, layer.output, name=f"{model.name}_logits")
