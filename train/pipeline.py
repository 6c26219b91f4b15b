"""``tf.data`` input pipelines over the cached uint8 arrays.

Training: shuffle → batch → per-image augmentation (Zhong 2020: horizontal flip, brightness, contrast, resize 96
→ random crop 80; never a vertical flip) → prefetch. Saturation, also in the paper, does nothing to a greyscale
image and is left out. Evaluation: the cached arrays at the input size, exactly as ``core.preprocess`` makes them.
"""

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class Augmentation:
    flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    crop_scale_min: float = 80 / 96
    crop_scale_max: float = 80 / 96


NO_AUGMENTATION = Augmentation(flip=False, brightness=0.0, contrast=0.0, crop_scale_min=1.0, crop_scale_max=1.0)


def augment_batch(images, size: int, augmentation: Augmentation, seed=None):
    """Augment a float batch (N, H, W, 1) in [0, 1] and return (N, size, size, 1)."""
    batch = tf.shape(images)[0]
    uniform = lambda low, high: tf.random.uniform([batch], low, high, seed=seed)
    scale = uniform(augmentation.crop_scale_min, augmentation.crop_scale_max)
    top, left = uniform(0.0, 1.0) * (1 - scale), uniform(0.0, 1.0) * (1 - scale)
    boxes = tf.stack([top, left, top + scale, left + scale], axis=1)
    if augmentation.flip:
        flipped = uniform(0.0, 1.0) < 0.5
        boxes = tf.where(flipped[:, None], tf.stack([top, left + scale, top + scale, left], axis=1), boxes)
    images = tf.image.crop_and_resize(images, boxes, tf.range(batch), [size, size])
    if augmentation.contrast:
        factor = uniform(1 - augmentation.contrast, 1 + augmentation.contrast)[:, None, None, None]
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = (images - mean) * factor + mean
    if augmentation.brightness:
        images += uniform(-augmentation.brightness, augmentation.brightness)[:, None, None, None]
    return tf.clip_by_value(images, 0.0, 1.0)


def _to_float(images_uint8):
    return tf.cast(images_uint8, tf.float32)[..., None] / 255.0


def _three_channels(images):
    return tf.repeat(images, 3, axis=-1)


def training_dataset(images, onehot, weights, size, batch_size, augmentation: Augmentation, seed=0):
    """Shuffled, augmented batches of (image, one-hot label, sample weight) from cached uint8 (N, S, S)."""
    data = tf.data.Dataset.from_tensor_slices((images, onehot.astype(np.float32), weights.astype(np.float32)))
    data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    data = data.map(
        lambda x, y, w: (_three_channels(augment_batch(_to_float(x), size, augmentation)), y, w),
        num_parallel_calls=AUTOTUNE,
    )
    return data.prefetch(AUTOTUNE)


def evaluation_dataset(images, onehot=None, batch_size=128):
    """Batches of model inputs from cached uint8 (N, S, S) at the input size (no augmentation)."""
    tensors = images if onehot is None else (images, onehot.astype(np.float32))
    data = tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size)
    if onehot is None:
        data = data.map(lambda x: _three_channels(_to_float(x)), num_parallel_calls=AUTOTUNE)
    else:
        data = data.map(lambda x, y: (_three_channels(_to_float(x)), y), num_parallel_calls=AUTOTUNE)
    return data.prefetch(AUTOTUNE)
