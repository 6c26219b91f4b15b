"""``tf.data`` input pipelines over the cached uint8 arrays.

Training: shuffle (or draw balanced over class and source) → optional JPEG re-compression → batch → per-image
augmentation (Zhong 2020: horizontal flip, brightness, contrast, resize 96 → random crop 80; never a vertical
flip; optionally rotation, gamma, blur, noise and mixup) → prefetch. Saturation, also in the paper, does nothing
to a greyscale image and is left out. Evaluation: the cached arrays at the input size, exactly as
``core.preprocess`` makes them.
"""

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

__all__ = [
    "Augmentation",
    "rotate",
    "gaussian_blur",
    "augment_batch",
    "mixup",
    "balanced_draw_weights",
    "training_dataset",
    "evaluation_dataset",
]

AUTOTUNE = tf.data.AUTOTUNE
BLUR_TAPS = 7  # Gaussian kernels of 7 taps cover sigma up to ~1.5 px


@dataclass(frozen=True)
class Augmentation:
    flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    crop_scale_min: float = 80 / 96
    crop_scale_max: float = 80 / 96
    rotation: float = 0.0
    gamma: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    jpeg_quality: int = 0
    mixup: float = 0.0


NO_AUGMENTATION = Augmentation(flip=False, brightness=0.0, contrast=0.0, crop_scale_min=1.0, crop_scale_max=1.0)


def rotate(images, angles):
    """Rotate each image of (N, H, W, 1) by its angle (radians) about its centre, reflecting at the edges."""
    height, width = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
    cos, sin = tf.cos(angles), tf.sin(angles)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    zeros = tf.zeros_like(angles)
    transforms = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, zeros, zeros], 1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )


def gaussian_blur(images, sigmas):
    """Blur each image of (N, H, W, 1) with its own Gaussian sigma (pixels; 0 leaves it unchanged)."""
    offsets = tf.range(BLUR_TAPS, dtype=tf.float32) - (BLUR_TAPS - 1) / 2
    kernels = tf.exp(-0.5 * tf.square(offsets[None, :] / tf.maximum(sigmas[:, None], 1e-3)))
    kernels /= tf.reduce_sum(kernels, axis=1, keepdims=True)  # (N, taps)
    channels_last = tf.transpose(images, [3, 1, 2, 0])  # the batch as channels of one image: one depthwise conv
    rows = tf.transpose(kernels)[:, None, :, None]
    columns = tf.transpose(kernels)[None, :, :, None]
    blurred = tf.nn.depthwise_conv2d(channels_last, rows, [1, 1, 1, 1], "SAME")
    blurred = tf.nn.depthwise_conv2d(blurred, columns, [1, 1, 1, 1], "SAME")
    return tf.transpose(blurred, [3, 1, 2, 0])


def augment_batch(images, size: int, augmentation: Augmentation, seed=None):
    """Augment a float batch (N, H, W, 1) in [0, 1] and return (N, size, size, 1)."""
    batch = tf.shape(images)[0]

    def uniform(low, high):
        return tf.random.uniform([batch], low, high, seed=seed)

    if augmentation.rotation:
        limit = math.radians(augmentation.rotation)
        images = rotate(images, uniform(-limit, limit))
    scale = uniform(augmentation.crop_scale_min, augmentation.crop_scale_max)
    top, left = uniform(0.0, 1.0) * (1 - scale), uniform(0.0, 1.0) * (1 - scale)
    boxes = tf.stack([top, left, top + scale, left + scale], axis=1)
    if augmentation.flip:
        flipped = uniform(0.0, 1.0) < 0.5
        boxes = tf.where(flipped[:, None], tf.stack([top, left + scale, top + scale, left], axis=1), boxes)
    images = tf.image.crop_and_resize(images, boxes, tf.range(batch), [size, size])
    if augmentation.gamma:
        log_limit = math.log1p(augmentation.gamma)
        gamma = tf.exp(uniform(-log_limit, log_limit))[:, None, None, None]
        images = tf.pow(tf.clip_by_value(images, 1e-6, 1.0), gamma)
    if augmentation.contrast:
        factor = uniform(1 - augmentation.contrast, 1 + augmentation.contrast)[:, None, None, None]
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = (images - mean) * factor + mean
    if augmentation.brightness:
        images += uniform(-augmentation.brightness, augmentation.brightness)[:, None, None, None]
    if augmentation.blur:
        images = gaussian_blur(images, uniform(0.0, augmentation.blur))
    if augmentation.noise:
        images += tf.random.normal(tf.shape(images), seed=seed) * uniform(0.0, augmentation.noise)[:, None, None, None]
    return tf.clip_by_value(images, 0.0, 1.0)


def mixup(images, onehot, weights, alpha: float, seed=None):
    """Mix each example with the batch's reverse order by λ ~ Beta(α, α): images, labels and weights alike."""
    batch = tf.shape(images)[0]
    first, second = tf.random.gamma([batch], alpha, seed=seed), tf.random.gamma([batch], alpha, seed=seed)
    lam = first / (first + second)

    def mix(value, other, shape):
        return lam[shape] * value + (1 - lam[shape]) * other

    return (
        mix(images, tf.reverse(images, [0]), (slice(None), None, None, None)),
        mix(onehot, tf.reverse(onehot, [0]), (slice(None), None)),
        mix(weights, tf.reverse(weights, [0]), slice(None)),
    )


def _to_float(images_uint8):
    return tf.cast(images_uint8, tf.float32)[..., None] / 255.0


def _three_channels(images):
    return tf.repeat(images, 3, axis=-1)


def _recompress(image, label, weight, min_quality):
    recompressed = tf.image.random_jpeg_quality(image[..., None], min_quality, 100)[..., 0]
    return tf.ensure_shape(recompressed, image.shape), label, weight


def balanced_draw_weights(labels, sources) -> tuple:
    """(groups, probabilities) for drawing balanced over classes, then over sources within each class:
    each class 1/k, each of its sources an equal share of that. With the shared pool this gives adult
    and paediatric pneumonia, and each hospital's normals, the same weight, whatever their counts."""
    groups = sorted(set(zip(labels.tolist(), sources.tolist())))
    classes = sorted({label for label, _ in groups})
    per_class = {label: sum(1 for group_label, _ in groups if group_label == label) for label in classes}
    probabilities = [1.0 / len(classes) / per_class[label] for label, _ in groups]
    return groups, probabilities


def training_dataset(images, onehot, weights, size, batch_size, augmentation: Augmentation, seed=0, sources=None):
    """Endless augmented batches of (image, one-hot label, sample weight) from cached uint8 (N, S, S): a
    reshuffled pass over the images, or with ``sources`` draws balanced over (class, source)."""
    tensors = (images, onehot.astype(np.float32), weights.astype(np.float32))
    if sources is None:
        data = tf.data.Dataset.from_tensor_slices(tensors).shuffle(
            len(images), seed=seed, reshuffle_each_iteration=True
        )
        data = data.repeat()
    else:
        labels = onehot.argmax(axis=1)
        groups, probabilities = balanced_draw_weights(labels, np.asarray(sources))
        parts = []
        for label, source in groups:
            rows = np.flatnonzero((labels == label) & (np.asarray(sources) == source))
            part = tf.data.Dataset.from_tensor_slices(tuple(t[rows] for t in tensors))
            parts.append(part.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True).repeat())
        data = tf.data.Dataset.sample_from_datasets(parts, weights=probabilities, seed=seed)
    if augmentation.jpeg_quality:
        data = data.map(lambda x, y, w: _recompress(x, y, w, augmentation.jpeg_quality), num_parallel_calls=AUTOTUNE)
    data = data.batch(batch_size).map(
        lambda x, y, w: (augment_batch(_to_float(x), size, augmentation), y, w), num_parallel_calls=AUTOTUNE
    )
    if augmentation.mixup:
        data = data.map(lambda x, y, w: mixup(x, y, w, augmentation.mixup), num_parallel_calls=AUTOTUNE)
    return data.map(lambda x, y, w: (_three_channels(x), y, w), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def evaluation_dataset(images, onehot=None, batch_size=128):
    """Batches of model inputs from cached uint8 (N, S, S) at the input size (no augmentation)."""
    tensors = images if onehot is None else (images, onehot.astype(np.float32))
    data = tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size)
    if onehot is None:
        data = data.map(lambda x: _three_channels(_to_float(x)), num_parallel_calls=AUTOTUNE)
    else:
        data = data.map(lambda x, y: (_three_channels(_to_float(x)), y), num_parallel_calls=AUTOTUNE)
    return data.prefetch(AUTOTUNE)
