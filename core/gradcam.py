"""Grad-CAM and Grad-CAM++ maps, computed with the class probabilities in ONE compiled forward/backward pass.

The steps are those of the keras.io Grad-CAM example: a model from the input to (a convolution layer's output,
the logits); the gradient of the explained class's *logit* (not its softmax) with respect to that output; channel
weights from the gradients; the weighted sum of the channels, ReLU'd and normalised to [0, 1] at the layer's
resolution. Grad-CAM (Selvaraju et al. 2017) weighs each channel by its mean gradient; Grad-CAM++ (Chattopadhay
et al. 2018) uses the closed form that the exponential of the logit allows, so its second- and third-order terms
are powers of the same first-order gradients. Drawing the maps is ``core.overlay``'s job; which class to explain
(the call at the operating point) is ``core.diagnosis``'s.

The compiled pass of each layer is kept on the ``Predictor`` (``predictor.explainers``), so it lives and dies
with its model.
"""

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from core.inference import LOGITS_LAYER, softmax

__all__ = [
    "Explanation",
    "gradient_model",
    "explainer",
    "compile_explainer",
    "target_score",
    "maps",
    "gradcam_map",
    "gradcam_plus_plus_map",
    "normalise",
    "explain",
    "first",
    "reader_layers",
]

GRADCAM = "Grad-CAM"
GRADCAM_PLUS_PLUS = "Grad-CAM++"
METHODS = (GRADCAM, GRADCAM_PLUS_PLUS)
TOP_CLASS = -1  # as a target: explain the class with the highest logit
EPSILON = 1e-7


@dataclass(frozen=True)
class Explanation:
    """The result of one pass. For a batch: probabilities (N, C), targets (N,), maps {method: (N, h, w)};
    for a single image the leading N is dropped. Probabilities are calibrated; targets are the explained
    class indices; maps are in [0, 1] at the convolution layer's resolution."""

    probabilities: np.ndarray
    targets: np.ndarray
    maps: dict


def gradient_model(model, layer: str):
    """The model from its input to (``layer``'s feature map, the logits); refuses a layer without a spatial map."""
    import keras

    feature_map = model.get_layer(layer).output
    if len(feature_map.shape) != 4:
        raise ValueError(f"Layer '{layer}' is not a convolution layer; Grad-CAM needs a spatial feature map.")
    return keras.Model(model.inputs, [feature_map, model.get_layer(LOGITS_LAYER).output])


def explainer(predictor, layer: str):
    """The compiled pass of ``predictor``'s model explained at conv layer ``layer`` (built once per predictor
    and layer): (images (N, S, S, 3) float32, targets (N,) int32; -1 = top class) → (logits, targets, Grad-CAM,
    Grad-CAM++)."""
    cache = predictor.explainers
    if layer not in cache:
        cache[layer] = compile_explainer(predictor.model, layer)
    return cache[layer]


def compile_explainer(model, layer: str):
    """See ``explainer``."""
    probe = gradient_model(model, layer)
    signature = [tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32), tf.TensorSpec([None], tf.int32)]

    @tf.function(input_signature=signature)
    def run(images, targets):
        with tf.GradientTape() as tape:
            features, logits = probe(images, training=False)
            targets = tf.where(targets < 0, tf.argmax(logits, axis=-1, output_type=tf.int32), targets)
            score = target_score(logits, targets)
        return (logits, targets, *maps(tape, score, features))

    return run


def target_score(logits, targets):
    """The sum over the batch of each image's logit for its target class: the score whose gradient the maps
    weigh (one backward pass explains the whole batch, since images do not interact)."""
    return tf.reduce_sum(logits * tf.one_hot(targets, tf.shape(logits)[-1], dtype=logits.dtype))


def maps(tape, score, features):
    """(Grad-CAM, Grad-CAM++) of the layer ``features`` for ``score``, both recorded on ``tape``."""
    grads = tf.cast(tape.gradient(score, features), tf.float32)
    features = tf.cast(features, tf.float32)
    return gradcam_map(features, grads), gradcam_plus_plus_map(features, grads)


def gradcam_map(features, grads):
    """Grad-CAM: ReLU(Σ_k mean(∂y/∂A_k) · A_k), normalised per image."""
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    return normalise(tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)))


def gradcam_plus_plus_map(features, grads):
    """Grad-CAM++ with y = exp(logit): α = g² / (2g² + Σ_ab A · g³), weights = Σ_ab α · ReLU(g), normalised per
    image (the common factor exp(logit) of ∂y/∂A cancels there)."""
    grads2 = tf.square(grads)
    denominator = 2.0 * grads2 + tf.reduce_sum(features, axis=(1, 2), keepdims=True) * grads2 * grads
    alpha = grads2 / tf.where(denominator != 0.0, denominator, tf.ones_like(denominator))
    weights = tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2), keepdims=True)
    return normalise(tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)))


def normalise(maps):
    """Scale each (h, w) map of a batch to a maximum of 1 (all-zero maps stay zero)."""
    peak = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    return maps / tf.maximum(peak, EPSILON)


def explain(predictor, images, targets=TOP_CLASS, layer=None) -> Explanation:
    """Calibrated probabilities and both maps for ``images`` ((S, S, 3) or (N, S, S, 3) model inputs) in one pass.

    targets: a class index per image (or one for all); ``TOP_CLASS`` explains each image's most probable class.
    layer: a conv layer name; default the card's ``gradcam_layer``.
    """
    images = np.asarray(images, dtype=np.float32)
    batch = images[np.newaxis] if images.ndim == 3 else images
    targets = np.broadcast_to(np.asarray(targets, dtype=np.int32), (len(batch),))
    run = explainer(predictor, layer or predictor.card.gradcam_layer)
    logits, chosen, grad_cam, plus_plus = (t.numpy() for t in run(batch, targets))
    explanation = Explanation(
        probabilities=softmax(logits, predictor.temperature),
        targets=chosen,
        maps={GRADCAM: grad_cam, GRADCAM_PLUS_PLUS: plus_plus},
    )
    return first(explanation) if images.ndim == 3 else explanation


def first(explanation: Explanation) -> Explanation:
    """The single-image view of a batch explanation."""
    return Explanation(
        explanation.probabilities[0],
        explanation.targets[0],
        {method: maps[0] for method, maps in explanation.maps.items()},
    )


def reader_layers(layers, default: str) -> list:
    """The layers offered to a reader: the last of each block (a name up to its last "_" names the block:
    block3_conv3 of block3_conv1..3), in the model's order, and ``default``; a block's earlier layers add
    little for a reader and are for model developers."""
    last_of_block = {name.rsplit("_", 1)[0]: name for name in layers}
    return [name for name in layers if name in last_of_block.values() or name == default] or [default]
