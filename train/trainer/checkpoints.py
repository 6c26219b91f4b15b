"""Crash-safe checkpoints: each epoch's weights (model + optimizer) go to a new file, then ``state.json`` is
atomically rewritten to point at it, then files no longer pointed at are removed. A kill at any moment leaves
a state that names complete files."""

import json
import math
from pathlib import Path

import keras

from core import atomic

__all__ = ["read_state", "EpochCheckpoint", "remove_unreferenced"]

STATE_FILE = "state.json"


def read_state(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {"epoch": 0, "checkpoint": None, "best": None, "best_val_loss": None, "best_epoch": None}


class EpochCheckpoint(keras.callbacks.Callback):
    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = run_dir
        self.state = read_state(run_dir)

    def on_epoch_end(self, epoch, logs=None):
        name = f"epoch-{epoch + 1:03d}.weights.h5"
        with atomic.atomic_path(self.run_dir / name, suffix=".weights.h5") as temporary:
            self.model.save_weights(temporary)
        val_loss = float((logs or {}).get("val_loss", math.nan))
        best = self.state.get("best_val_loss")
        state = dict(self.state, epoch=epoch + 1, checkpoint=name)
        if math.isfinite(val_loss) and (best is None or val_loss < best):
            state.update(best=name, best_val_loss=val_loss, best_epoch=epoch + 1)
        atomic.write_json(self.run_dir / STATE_FILE, state)
        self.state = state
        remove_unreferenced(self.run_dir, state)


def remove_unreferenced(run_dir: Path, state: dict) -> None:
    keep = {state.get("checkpoint"), state.get("best")}
    for path in run_dir.glob("*.weights.h5"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
    for path in run_dir.glob(".*.tmp"):  # left by a kill in the middle of an atomic write
        path.unlink(missing_ok=True)
