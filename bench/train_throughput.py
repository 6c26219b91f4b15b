"""Training throughput (images/s) of the same model fed three ways, measured side by side, interleaved:

- cached:  our pipeline — every image decoded and resized once (train.trainer.cache), then tf.data augmentation;
- published: Zhong 2020's own input pipeline, which decodes every file every epoch (tf.data map over
           read_file → decode_jpeg(channels=3) → flip/brightness/contrast/saturation at full size → resize 96 →
           crop 80 → resize 80, parallel, prefetching), labels from our list instead of its path regex;
- decode:  a stronger decode-every-epoch baseline: our cv2 decode + resize to 96 per file (parallel), then our
           batched augmentation;
- random:  random tensors already in memory — the model's compute-bound rate.

On the pool (small JPEGs) and on full-resolution originals (../shared/data/fullres repeated to a few hundred
files). Run: ``python bench/train_throughput.py [--arch dcnn80-compact] [--steps 8] [--rounds 3]``.
"""

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from core.imaging import read_grey  # noqa: E402
from core.preprocess import resize_grey  # noqa: E402
from train.trainer.cache import load_resized  # noqa: E402
from train.trainer.config import TrainConfig  # noqa: E402
from train.trainer.pipeline import AUTOTUNE, Augmentation, augment_batch, training_dataset  # noqa: E402
from train.trainer.run import compile_model  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
CACHE_SIZE, INPUT_SIZE, BATCH = 96, 80, 32
AUGMENTATION = Augmentation()


def decode_every_epoch_dataset(paths, labels):
    """Reads and decodes each file each time it is drawn (no cache), parallel, then the same augmentation."""

    def load(path):
        grey = read_grey(path.decode())
        return (resize_grey(grey, CACHE_SIZE) * 255).astype(np.uint8)

    onehot = np.eye(3, dtype=np.float32)[labels]
    data = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], onehot, np.ones(len(paths), np.float32)))
    data = data.shuffle(len(paths)).repeat()
    data = data.map(lambda p, y, w: (tf.numpy_function(load, [p], tf.uint8), y, w), num_parallel_calls=AUTOTUNE)
    data = data.batch(BATCH).map(
        lambda x, y, w: (
            tf.repeat(
                augment_batch(
                    tf.cast(tf.reshape(x, [-1, CACHE_SIZE, CACHE_SIZE])[..., None], tf.float32) / 255.0,
                    INPUT_SIZE,
                    AUGMENTATION,
                ),
                3,
                -1,
            ),
            y,
            w,
        ),
        num_parallel_calls=AUTOTUNE,
    )
    return data.prefetch(AUTOTUNE)


def published_dataset(paths, labels):
    """The published code's ``load_image`` for training images, per file and per epoch."""

    def load(path, label, weight):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        image = tf.cast(image, tf.float32) / 255.0
        image = tf.image.random_flip_left_right(image)
        image = tf.image.random_brightness(image, 0.1)
        image = tf.image.random_contrast(image, 0.1, 0.2)
        image = tf.image.random_saturation(image, 0, 5)
        image = tf.image.resize(image, (CACHE_SIZE, CACHE_SIZE))
        image = tf.image.random_crop(image, [INPUT_SIZE, INPUT_SIZE, 3])
        return tf.image.resize(image, (INPUT_SIZE, INPUT_SIZE)), label, weight

    onehot = np.eye(3, dtype=np.float32)[labels]
    data = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], onehot, np.ones(len(paths), np.float32)))
    data = data.repeat().map(load, num_parallel_calls=AUTOTUNE).shuffle(1280).batch(BATCH)
    return data.prefetch(AUTOTUNE)


def cached_dataset(paths, labels):
    arrays, readable, _ = load_resized(paths, (CACHE_SIZE,))
    images = arrays[CACHE_SIZE][readable]
    onehot = np.eye(3, dtype=np.float32)[labels[readable]]
    return training_dataset(images, onehot, np.ones(len(images)), INPUT_SIZE, BATCH, AUGMENTATION).repeat()


def random_dataset():
    x = np.random.default_rng(0).random((BATCH * 4, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(BATCH * 4) % 3]
    return tf.data.Dataset.from_tensor_slices((x, y, np.ones(BATCH * 4, np.float32))).batch(BATCH).cache().repeat()


def train_step(model, iterator):
    x, y, w = next(iterator)
    model.train_on_batch(x, y, sample_weight=w)


def images_per_second(model, iterator, steps):
    """Training images/s over ``steps`` batches drawn from a running (prefetching) pipeline."""
    train_step(model, iterator)  # absorb the switch from the previous feed
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, iterator)
    return steps * BATCH / (time.perf_counter() - start)


def pool_files(limit):
    import pandas as pd

    frame = pd.read_csv(SHARED / "cxr" / "manifest.csv").sample(limit, random_state=0)
    labels = frame["label"].map({"COVID19": 0, "NORMAL": 1, "PNEUMONIA": 2}).to_numpy()
    return [SHARED / "cxr" / p for p in frame["path"]], labels


def fullres_files(folder, copies):
    originals = sorted((SHARED / "fullres").glob("*.jp*g"))
    paths = []
    for copy in range(copies):
        for original in originals:
            target = folder / f"{copy:03d}_{original.name}"
            shutil.copyfile(original, target)
            paths.append(target)
    return paths, np.arange(len(paths)) % 3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="dcnn80-compact")
    parser.add_argument("--steps", type=int, default=8, help="training steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of each measurement")
    parser.add_argument("--pool-images", type=int, default=2000)
    parser.add_argument("--fullres-copies", type=int, default=22, help="copies of the 14 originals (22 → 308 files)")
    args = parser.parse_args()

    model = compile_model(TrainConfig(arch=args.arch), steps_per_epoch=100)
    workdir = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    os.environ.setdefault("CXR_CACHE_DIR", str(workdir / "cache"))
    try:
        sets = {"pool": pool_files(args.pool_images), "fullres": fullres_files(workdir, args.fullres_copies)}
        feeds, cache_seconds = {}, {}
        for name, (paths, labels) in sets.items():
            start = time.perf_counter()
            feeds[(name, "cached")] = iter(cached_dataset(paths, labels))
            cache_seconds[name] = time.perf_counter() - start
            feeds[(name, "published")] = iter(published_dataset(paths, labels))
            feeds[(name, "decode")] = iter(decode_every_epoch_dataset(paths, labels))
        feeds[("any", "random")] = iter(random_dataset())
        results = {key: [] for key in feeds}
        for _ in range(args.rounds):
            for key, iterator in feeds.items():
                results[key].append(images_per_second(model, iterator, args.steps))
        median = {key: statistics.median(values) for key, values in results.items()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, "
        f"GPU: {bool(tf.config.list_physical_devices('GPU'))}; arch {args.arch}, batch {BATCH}, "
        f"{args.steps} steps x {args.rounds} interleaved rounds"
    )
    print(f"{'feed':<22}{'median img/s':>14}{'runs':>30}")
    for (dataset, feed), value in median.items():
        runs = ", ".join(f"{v:.1f}" for v in results[(dataset, feed)])
        print(f"{dataset + ' / ' + feed:<22}{value:>14.1f}{runs:>30}")
    compute = median[("any", "random")]
    for dataset, (paths, _) in sets.items():
        cached, published, decode = (median[(dataset, feed)] for feed in ("cached", "published", "decode"))
        print(
            f"{dataset}: cached / published pipeline = {cached / published:.2f}x;  cached / cv2 decode-every-epoch "
            f"= {cached / decode:.2f}x;  cached / compute-bound = {cached / compute:.2f};  one-time decode of "
            f"{len(paths)} files: {cache_seconds[dataset]:.1f} s"
        )


if __name__ == "__main__":
    main()
