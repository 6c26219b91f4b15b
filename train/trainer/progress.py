"""Machine-readable progress: JSON lines appended to ``<run>/events.jsonl`` (read by the Retrain page)."""

import json
import threading
import time

import keras

from core.card import finite

__all__ = ["write_event", "read_events", "current_lr", "StopWhenCancelled", "ProgressEvents"]

EVENTS_FILE = "events.jsonl"
STEP_EVENT_SECONDS = 2.0


def write_event(run_dir, event: str, **fields) -> None:
    record = {"event": event, "time": time.time(), **fields}
    with open(run_dir / EVENTS_FILE, "a") as stream:
        stream.write(json.dumps(finite(record)) + "\n")
        stream.flush()


def read_events(run_dir) -> list:
    """All complete events of a run (a half-written last line is ignored)."""
    try:
        lines = (run_dir / EVENTS_FILE).read_text().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def current_lr(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


CANCEL_REQUESTED = threading.Event()  # set by the trainer's SIGTERM handler


class StopWhenCancelled(keras.callbacks.Callback):
    """Raise ``KeyboardInterrupt`` at the next batch once a cancel was requested: the signal handler raises it
    too, but an exception raised while TensorFlow or Keras code runs can be swallowed there, and the run then
    trained on to the end (seen once in six test runs)."""

    def on_train_batch_end(self, batch, logs=None):
        if CANCEL_REQUESTED.is_set():
            raise KeyboardInterrupt("cancelled")

    on_test_batch_end = on_train_batch_end


class ProgressEvents(keras.callbacks.Callback):
    """Writes a ``step`` event at most every few seconds and an ``epoch`` event at each epoch's end, with
    loss, metrics, learning rate, images/s and the estimated time left."""

    def __init__(self, run_dir, epochs, steps_per_epoch, batch_size, images_per_epoch):
        super().__init__()
        self.run_dir, self.epochs, self.steps = run_dir, epochs, steps_per_epoch
        self.batch_size, self.images_per_epoch = batch_size, images_per_epoch
        self.rate = None  # images/s, measured after each epoch's first (possibly compiling) step

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.epoch_start = time.perf_counter()
        self.rate_start = None
        self.last_event = 0.0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if batch == 0:
            self.rate_start = now
            return
        images = batch * self.batch_size
        self.rate = images / (now - self.rate_start)
        if now - self.last_event >= STEP_EVENT_SECONDS:
            self.last_event = now
            write_event(
                self.run_dir,
                "step",
                epoch=self.epoch,
                step=batch + 1,
                steps=self.steps,
                lr=current_lr(self.model),
                images_per_s=self.rate,
                eta_s=self._eta(batch + 1),
                **{k: float(v) for k, v in (logs or {}).items()},
            )

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.epoch_start
        write_event(
            self.run_dir,
            "epoch",
            epoch=epoch,
            epochs=self.epochs,
            seconds=seconds,
            lr=current_lr(self.model),
            images_per_s=self.rate,
            eta_s=self._eta(self.steps),
            **{k: float(v) for k, v in (logs or {}).items()},
        )

    def _eta(self, step_in_epoch):
        if not self.rate:
            return None
        remaining_images = (self.steps - step_in_epoch) * self.batch_size
        remaining_images += (self.epochs - self.epoch - 1) * self.images_per_epoch
        return remaining_images / self.rate
