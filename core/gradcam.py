"""Class probabilities and their explanation from ONE forward/backward pass: Grad-CAM and Grad-CAM++.

Both maps use the gradients of the explained class's *logit* (not its softmax) with respect to a named
convolution layer's output. Grad-CAM (Selvaraju et al. 2017) weighs each channel by its mean gradient;
Grad-CAM++ (Chattopadhay et al. 2018) uses the closed form that the exponential of the logit allows, so its
second- and third-order terms are powers of the same first-order gradients. Maps are ReLU'd and normalised to
[0, 1] at the layer's resolution; ``overlay`` stretches a map over the whole full-resolution image (the model saw
the whole image squashed to a square, so the map covers it all).
"""

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import tensorflow as tf

from core import png
from core.inference import LOGITS_LAYER, softmax
from core.operating_point import decide

GRADCAM = "Grad-CAM"
GRADCAM_PLUS_PLUS = "Grad-CAM++"
METHODS = (GRADCAM, GRADCAM_PLUS_PLUS)
TOP_CLASS = -1  # as a target: explain the class with the highest logit
COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "hot": cv2.COLORMAP_HOT,
}
# The same maps as 256-entry RGB lookup tables (OpenCV's own are BGR), so overlays come out in RGB directly.
RGB_COLORMAPS = {
    name: np.ascontiguousarray(cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, np.newaxis], code)[..., ::-1])
    for name, code in COLORMAPS.items()
}
DEFAULT_COLORMAP = "jet"
DEFAULT_OPACITY = 0.4
EPSILON = 1e-7
EXPLAINER_CACHE_SIZE = 16
JPEG_DISPLAY = [cv2.IMWRITE_JPEG_QUALITY, 90]
DISPLAY_WIDTH = 1024  # Streamlit re-encodes images wider than 1460 px on every rerun; send them smaller


@dataclass(frozen=True)
class Explanation:
    """The result of one pass. For a batch: probabilities (N, C), targets (N,), maps {method: (N, h, w)};
    for a single image the leading N is dropped. Probabilities are calibrated; targets are the explained
    class indices; maps are in [0, 1] at the convolution layer's resolution."""

    probabilities: np.ndarray
    targets: np.ndarray
    maps: dict


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


@functools.lru_cache(maxsize=EXPLAINER_CACHE_SIZE)
def explainer(model, layer: str):
    """The compiled pass of ``model`` explained at conv layer ``layer``:
    (images (N, S, S, 3) float32, targets (N,) int32; -1 = top class) → (logits, targets, Grad-CAM, Grad-CAM++)."""
    import keras

    feature_map = model.get_layer(layer).output
    if len(feature_map.shape) != 4:
        raise ValueError(f"Layer '{layer}' is not a convolution layer; Grad-CAM needs a spatial feature map.")
    gradient_model = keras.Model(model.inputs, [feature_map, model.get_layer(LOGITS_LAYER).output])
    signature = [tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32), tf.TensorSpec([None], tf.int32)]

    @tf.function(input_signature=signature)
    def run(images, targets):
        with tf.GradientTape() as tape:
            features, logits = gradient_model(images, training=False)
            targets = tf.where(targets < 0, tf.argmax(logits, axis=-1, output_type=tf.int32), targets)
            score = tf.reduce_sum(logits * tf.one_hot(targets, tf.shape(logits)[-1], dtype=logits.dtype))
        grads = tf.cast(tape.gradient(score, features), tf.float32)
        features = tf.cast(features, tf.float32)
        return logits, targets, gradcam_map(features, grads), gradcam_plus_plus_map(features, grads)

    return run


def explain(predictor, images, targets=TOP_CLASS, layer=None) -> Explanation:
    """Calibrated probabilities and both maps for ``images`` ((S, S, 3) or (N, S, S, 3) model inputs) in one pass.

    targets: a class index per image (or one for all); ``TOP_CLASS`` explains each image's most probable class.
    layer: a conv layer name; default the card's ``gradcam_layer``.
    """
    images = np.asarray(images, dtype=np.float32)
    batch = images[np.newaxis] if images.ndim == 3 else images
    targets = np.broadcast_to(np.asarray(targets, dtype=np.int32), (len(batch),))
    run = explainer(predictor.model, layer or predictor.card["gradcam_layer"])
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


def explain_call(predictor, image, explained_class=None, layer=None, card=None):
    """``(Explanation, Decision)`` for one model input. The class named ``explained_class`` is explained when
    given; otherwise the class called at the version's operating point (from ``card`` when given — the card
    as now on disk — else the one loaded with the model): one pass, plus a second only when the operating point
    calls a class other than the most probable one."""
    names = predictor.class_names
    target = TOP_CLASS if explained_class is None else names.index(explained_class)
    explanation = explain(predictor, image, targets=target, layer=layer)
    decision = decide(explanation.probabilities, card or predictor.card)
    called = names.index(decision.label)
    if explained_class is None and called != explanation.targets:
        explanation = explain(predictor, image, targets=called, layer=layer)
    return explanation, decision


def to_uint8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats to 0–255 bytes (rounded, saturated)."""
    return cv2.convertScaleAbs(values, alpha=255.0)


def overlay(grey: np.ndarray, cam: np.ndarray, colormap=DEFAULT_COLORMAP, opacity=DEFAULT_OPACITY, out=None):
    """``grey`` (H, W) in [0, 1] with ``cam`` (h, w) in [0, 1] stretched to (H, W), coloured and blended over it:
    (H, W, 3) RGB uint8, written into ``out`` when given. Blended in 8 bits as round((1 - opacity) · grey) +
    round(opacity · colour), the second term by lookup, so a pixel may be one level off the exactly rounded
    blend (three 8-bit passes instead of a floating-point blend of 12 MB for a 4-megapixel radiograph)."""
    height, width = grey.shape
    opacity = float(opacity)
    heat = cv2.resize(to_uint8(np.asarray(cam, dtype=np.float32)), (width, height), interpolation=cv2.INTER_LINEAR)
    weighted_colours = np.round(RGB_COLORMAPS[colormap] * np.float32(opacity)).astype(np.uint8)
    out = cv2.cvtColor(cv2.convertScaleAbs(grey, alpha=255.0 * (1.0 - opacity)), cv2.COLOR_GRAY2RGB, dst=out)
    return cv2.add(out, cv2.applyColorMap(heat, weighted_colours), dst=out)


def overlay_png(grey: np.ndarray, cam: np.ndarray, colormap=DEFAULT_COLORMAP, opacity=DEFAULT_OPACITY) -> bytes:
    """The full-resolution overlay as a lossless PNG (stored, not deflated: see ``core.png``), drawn straight
    into the PNG's scanlines."""
    height, width = grey.shape
    scanlines = np.empty((height, 1 + 3 * width), dtype=np.uint8)
    scanlines[:, 0] = 0  # filter type "none"
    overlay(grey, cam, colormap, opacity, out=scanlines[:, 1:].reshape(height, width, 3))
    return png.rgb_png(scanlines)


def overlay_jpeg(grey: np.ndarray, cam: np.ndarray, colormap=DEFAULT_COLORMAP, opacity=DEFAULT_OPACITY) -> bytes:
    """The overlay as a JPEG, for showing on screen (usually of a ``display_copy``)."""
    return encode_jpeg(cv2.cvtColor(overlay(grey, cam, colormap, opacity), cv2.COLOR_RGB2BGR))


def grey_jpeg(grey: np.ndarray) -> bytes:
    """A greyscale image in [0, 1] as a JPEG, for showing on screen."""
    return encode_jpeg(to_uint8(grey))


def display_copy(grey: np.ndarray, width=DISPLAY_WIDTH) -> np.ndarray:
    """``grey`` shrunk (aspect kept) to at most ``width`` pixels wide: what a screen shows of it."""
    height, full_width = grey.shape
    if full_width <= width:
        return grey
    return cv2.resize(grey, (width, round(height * width / full_width)), interpolation=cv2.INTER_AREA)


def encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes of a greyscale or BGR uint8 image."""
    return cv2.imencode(".jpg", image, JPEG_DISPLAY)[1].tobytes()
