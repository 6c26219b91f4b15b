"""What a run will do before it starts: how many images it trains on, its learning-rate curve, and how fast
it will go (measured on earlier runs, else benchmarked on one batch) — for the Retrain page's duration estimate."""

import math
import time

import numpy as np
import pandas as pd

from core import CLASS_NAMES
from train.jobs.supervisor import list_runs
from train.trainer.config import TrainConfig

__all__ = ["expected_training_images", "planned_lr", "benchmark_speed", "measured_speed", "training_seconds"]

LR_CURVE_POINTS = 200
SPEED_STEPS = 3


def expected_training_images(classes: pd.DataFrame, config: TrainConfig) -> int:
    """About how many images the run will train on (after the per-class limit and the held-out splits)."""
    counts = classes["images"].clip(upper=config.limit_per_class or None)
    return max(1, round(counts.sum() * (1 - config.val_fraction - config.test_fraction)))


def planned_lr(config: TrainConfig, training_images: int) -> pd.DataFrame:
    """The learning rate the run will use (columns epoch, lr) at up to ``LR_CURVE_POINTS`` steps plus the
    first and last step of every epoch (evaluating a Keras schedule costs ~1 ms a step)."""
    from train.trainer.schedules import make_schedule

    steps_per_epoch = max(1, math.ceil(training_images / config.batch_size))
    schedule = make_schedule(config.lr_schedule, steps_per_epoch, config.epochs, config.lr, config.warmup_epochs)
    boundaries = np.arange(config.epochs + 1) * steps_per_epoch
    total = config.epochs * steps_per_epoch
    steps = np.unique(
        np.concatenate([np.linspace(0, total - 1, LR_CURVE_POINTS).round(), boundaries[:-1], boundaries[1:] - 1])
    )
    rates = [float(schedule(int(step))) if callable(schedule) else float(schedule) for step in steps]
    return pd.DataFrame({"epoch": steps / steps_per_epoch, "lr": rates})


def benchmark_speed(arch: str, batch_size: int, steps: int = SPEED_STEPS) -> float:
    """Training images/s of ``arch`` on random tensors of one batch (after one warm-up step)."""
    from train.trainer.architectures import ARCHITECTURES, build_model

    size = ARCHITECTURES[arch]["input_size"]
    model = build_model(arch, len(CLASS_NAMES))
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.random((batch_size, size, size, 3), dtype=np.float32)
    labels = np.eye(len(CLASS_NAMES), dtype=np.float32)[rng.integers(0, len(CLASS_NAMES), batch_size)]
    model.train_on_batch(images, labels)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    return steps * batch_size / (time.perf_counter() - start)


def measured_speed(arch: str, batch_size: int, runs=None):
    """Median training images/s of earlier runs' epochs (``runs``, default all) with this architecture and batch
    size, or None."""
    speeds = [
        event["images_per_s"]
        for info in (list_runs() if runs is None else runs)
        if info.config.get("arch") == arch and info.config.get("batch_size") == batch_size
        for event in info.events
        if event["event"] == "epoch" and event.get("images_per_s")
    ]
    return float(np.median(speeds)) if speeds else None


def training_seconds(config: TrainConfig, training_images: int, images_per_second: float):
    """The training time the plan expects: every epoch passes over the training images once at the measured
    speed (data loading, validation and the final evaluation come on top: a minute or two here). None without
    a speed."""
    if not images_per_second or images_per_second <= 0:
        return None
    return config.epochs * training_images / images_per_second
