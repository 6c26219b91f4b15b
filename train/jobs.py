"""Training runs started from the app, and what the Retrain page shows around them.

Runs. Each run is its own ``python -m train --resume RUN`` process (a new session, output in ``<run>/log.txt``),
so the page can be left and come back. The run folder and its ``config.json`` are prepared here, so every setting
reaches the trainer exactly. One run at a time: ``<runs>/.training-lock.json`` names the trainer by pid *and*
start time, so neither a dead process nor a new one that reused its pid holds it; taking it is serialised by an
flock on ``.training-lock.guard``. A run's status comes from its events and whether its trainer is alive
(``process.json``, written by the trainer, or the lock): running / finished / failed / cancelled / interrupted.

Around a run: the data root (a dataset must lie under it), dataset summaries, the planned learning-rate curve, a
speed measurement for the duration estimate, and the comparison of a finished run's candidate with a published
version on the rows both were evaluated on. Process checks read ``/proc`` (Linux).
"""

import collections
import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core import CLASS_NAMES, registry
from core.metrics import bootstrap_ci, rank_macro_auc
from core.registry import REPO_ROOT
from train.__main__ import PROCESS_FILE, runs_root
from train.archive import extract_dataset_zip
from train.checkpoints import write_json_atomically
from train.config import TrainConfig
from train.datasets import CLASS_ALIASES, MANIFEST, DatasetError, label_indices, scan_datasets
from train.progress import read_events, write_event
from train.run import CANDIDATE, new_run_dir, publish_candidate

CONFIG_FILE = "config.json"
LOG_FILE = "log.txt"
LOCK_FILE = ".training-lock.json"
GUARD_FILE = ".training-lock.guard"
CANCEL_GRACE_SECONDS = 15.0
TRAINER_NICENESS = 10
POLL_SECONDS = 0.2
START_TOLERANCE_SECONDS = 2.0  # /proc start times are derived from a boot time in whole seconds
LOG_TAIL_LINES = 40
LIFECYCLE_EVENTS = ("start", "done", "failed", "cancelled")
ENDED_STATUS = {"done": "finished", "failed": "failed", "cancelled": "cancelled"}
RESUMABLE = ("cancelled", "interrupted")
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
IMBALANCE_RATIO = 3.0
MIN_CLASS_IMAGES = 50
THUMBNAIL_SIZE = 16
THUMBNAIL_STEP = 16  # grey levels per bucket, so re-encoded copies still match
LR_CURVE_POINTS = 200
SPEED_STEPS = 3
DATASET_SEARCH_DEPTH = 2

_children = []  # trainer processes started by this process, polled so that none stays a zombie


class RunBusyError(RuntimeError):
    """Another training run is in progress; the message names it."""


# --- where data may come from -------------------------------------------------------------------------------


def data_root() -> Path:
    """Datasets must lie under this folder: ``$CXR_DATA_ROOT``, else ``../shared/data`` beside the repository
    when it exists, else ``data/`` in the repository."""
    shared = REPO_ROOT.parent / "shared" / "data"
    return Path(os.environ.get("CXR_DATA_ROOT") or (shared if shared.is_dir() else REPO_ROOT / "data")).resolve()


def uploads_dir() -> Path:
    """Where uploaded zips are unpacked: ``$CXR_UPLOAD_DIR``, else ``uploads/`` in the repository (never inside
    the shared data folder, which is read-only for the app)."""
    return Path(os.environ.get("CXR_UPLOAD_DIR") or REPO_ROOT / "uploads").resolve()


def checked_data_folder(folder) -> Path:
    """``folder`` with symlinks resolved; ``DatasetError`` when that lies outside the data root and uploads."""
    path = Path(folder).resolve()
    if not any(path.is_relative_to(root) for root in (data_root(), uploads_dir())):
        raise DatasetError(f"{path} is outside the data folder {data_root()}; datasets must be placed there.")
    return path


def _looks_like_dataset(folder: Path) -> bool:
    try:
        children = list(folder.iterdir())
    except OSError:
        return False
    return any(c.name == MANIFEST or (c.is_dir() and c.name.lower() in CLASS_ALIASES) for c in children)


def dataset_folders() -> list:
    """Folders holding a manifest.csv or class folders, up to two levels below the data root and uploads."""
    found = set()
    queue = [(root, 0) for root in {data_root(), uploads_dir()} if root.is_dir()]
    while queue:
        folder, depth = queue.pop()
        if _looks_like_dataset(folder):
            with contextlib.suppress(DatasetError):
                found.add(checked_data_folder(folder))
        elif depth < DATASET_SEARCH_DEPTH:
            queue += [(c, depth + 1) for c in folder.iterdir() if c.is_dir() and not c.name.startswith(".")]
    return sorted(found)


def unpack_upload(file, filename: str) -> Path:
    """Unpack an uploaded dataset zip into a new folder under ``uploads_dir()``; returns the dataset folder."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename).stem).strip("._-") or "dataset"
    return extract_dataset_zip(file, uploads_dir() / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")


# --- dataset summary ----------------------------------------------------------------------------------------


def summarize_dataset(folders) -> dict:
    """Images and patients per class and per source over one or several dataset folders (merged as training
    merges them), and warnings (imbalance, missing patient ids, small classes, sources holding one class only).
    Fast: reads the manifests or the folder listings, no pixels."""
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    roots = [checked_data_folder(folder) for folder in folders]
    frame = scan_datasets(roots)
    classes = frame.groupby("label").agg(images=("path", "size"), patients=("patient_id", "nunique"))
    classes = classes.reindex(list(CLASS_NAMES), fill_value=0)
    sources = pd.crosstab(frame["source"], frame["label"]).reindex(columns=list(CLASS_NAMES), fill_value=0)
    warnings = []
    ratio = classes["images"].max() / max(1, classes["images"].min())
    if ratio >= IMBALANCE_RATIO:
        warnings.append(f"Classes are imbalanced (largest / smallest = {ratio:.1f}); consider 'balanced' class weights.")
    small = [name for name, n in classes["images"].items() if n < MIN_CLASS_IMAGES]
    if small:
        warnings.append(f"Few images (< {MIN_CLASS_IMAGES}) in {', '.join(small)}: the figures will be very uncertain.")
    has_manifest = all((root / MANIFEST).is_file() for root in roots)
    missing_ids = int(frame["patient_id"].str.startswith("file:").sum()) if has_manifest else len(frame)
    if missing_ids:
        warnings.append(
            f"{missing_ids:,} image(s) have no patient id{'' if has_manifest else ' (no manifest.csv)'}: each counts as "
            "its own patient, so one patient's images may land in both training and test."
        )
    for source, counts in sources.iterrows():
        present = [name for name, n in counts.items() if n]
        if source != "unknown" and len(present) == 1:
            warnings.append(
                f"Source '{source}' holds only {present[0]} images: the model can learn the source instead of the disease."
            )
    return {"roots": [str(root) for root in roots], "frame": frame, "classes": classes, "sources": sources,
            "warnings": warnings}


def check_images(frame: pd.DataFrame) -> dict:
    """Decode every image (threads; cached on disk) to find unreadable files and near-duplicates (identical
    16×16 thumbnails at 16 grey levels), including near-duplicates filed under different labels."""
    from train.cache import load_resized

    arrays, readable, errors = load_resized(frame["path"].tolist(), (THUMBNAIL_SIZE,))
    thumbnails = arrays[THUMBNAIL_SIZE][readable] // THUMBNAIL_STEP
    keyed = frame[readable].assign(thumbnail=[hashlib.sha1(t.tobytes()).hexdigest() for t in thumbnails])
    copies = keyed[keyed.duplicated("thumbnail", keep=False)].sort_values(["thumbnail", "path"])
    return {
        "unreadable": errors,
        "near_duplicates": int(keyed.duplicated("thumbnail").sum()),
        "conflicting_labels": int((copies.groupby("thumbnail")["label"].nunique() > 1).sum()),
        "duplicate_examples": copies[["thumbnail", "path", "label"]].head(20),
    }


def expected_training_images(classes: pd.DataFrame, config: TrainConfig) -> int:
    """About how many images the run will train on (after the per-class limit and the held-out splits)."""
    counts = classes["images"].clip(upper=config.limit_per_class or None)
    return max(1, round(counts.sum() * (1 - config.val_fraction - config.test_fraction)))


def planned_lr(config: TrainConfig, training_images: int) -> pd.DataFrame:
    """The learning rate the run will use (columns epoch, lr) at up to ``LR_CURVE_POINTS`` steps plus the
    first and last step of every epoch (evaluating a Keras schedule costs ~1 ms a step)."""
    from train.schedules import make_schedule

    steps_per_epoch = max(1, math.ceil(training_images / config.batch_size))
    schedule = make_schedule(config.lr_schedule, steps_per_epoch, config.epochs, config.lr, config.warmup_epochs)
    boundaries = np.arange(config.epochs + 1) * steps_per_epoch
    total = config.epochs * steps_per_epoch
    steps = np.unique(np.concatenate([np.linspace(0, total - 1, LR_CURVE_POINTS).round(), boundaries[:-1], boundaries[1:] - 1]))
    rates = [float(schedule(int(step))) if callable(schedule) else float(schedule) for step in steps]
    return pd.DataFrame({"epoch": steps / steps_per_epoch, "lr": rates})


def benchmark_speed(arch: str, batch_size: int, steps: int = SPEED_STEPS) -> float:
    """Training images/s of ``arch`` on random tensors of one batch (after one warm-up step)."""
    from train.architectures import ARCHITECTURES, build_model

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


def measured_speed(arch: str, batch_size: int):
    """Median training images/s of earlier runs' epochs with this architecture and batch size, or None."""
    speeds = [
        event["images_per_s"]
        for info in list_runs()
        if info.config.get("arch") == arch and info.config.get("batch_size") == batch_size
        for event in info.events
        if event["event"] == "epoch" and event.get("images_per_s")
    ]
    return float(np.median(speeds)) if speeds else None


# --- runs ---------------------------------------------------------------------------------------------------


@dataclass
class RunInfo:
    """One run as the app sees it. ``launched``: when its latest trainer process started (or None)."""

    path: Path
    status: str
    config: dict
    events: list
    pid: int = None
    launched: float = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE

    @property
    def error(self):
        failures = [e for e in self.events if e["event"] == "failed"]
        return failures[-1].get("error") if failures else None

    @property
    def published(self) -> list:
        return [e["version"] for e in self.events if e["event"] == "published"]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _process_started(pid: int):
    """When process ``pid`` started (seconds since the epoch), or None if there is no such live process
    (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    except (OSError, ValueError, StopIteration):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def process_alive(record) -> bool:
    """Whether ``record`` ({"pid", "started"}) names a live process that already existed at ``started``
    (so not a later process that reused the pid)."""
    if not record:
        return False
    created = _process_started(int(record["pid"]))
    return created is not None and created <= float(record["started"]) + START_TOLERANCE_SECONDS


def lock_holder(root=None):
    """The lock's record ({"pid", "started", "run"}) while its trainer lives; None when the lock is free."""
    for child in _children:
        child.poll()
    record = _read_json(Path(root or runs_root()) / LOCK_FILE)
    return record if process_alive(record) else None


def run_info(run_dir) -> RunInfo:
    """The run's status, settings, events and live trainer pid."""
    run_dir = Path(run_dir)
    events = read_events(run_dir)
    lock = _read_json(run_dir.parent / LOCK_FILE)
    records = [_read_json(run_dir / PROCESS_FILE)]
    if lock and lock.get("run") == str(run_dir.resolve()):
        records.append(lock)
    records = [r for r in records if r]
    launched = max((r["started"] for r in records), default=None)
    live = next((r for r in records if process_alive(r)), None)
    if live:
        status = "running"
    else:
        lifecycle = [e for e in events if e["event"] in LIFECYCLE_EVENTS]
        last = lifecycle[-1] if lifecycle else None
        ended = last and last["event"] != "start" and (launched is None or last["time"] >= launched)
        status = ENDED_STATUS[last["event"]] if ended else "interrupted"
    config = _read_json(run_dir / CONFIG_FILE) or {}
    return RunInfo(run_dir, status, config, events, live and int(live["pid"]), launched)


def list_runs() -> list:
    """Every run under the runs folder, newest first."""
    root = runs_root()
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / CONFIG_FILE).is_file()]
    return [run_info(p) for p in sorted(folders, reverse=True)]


@contextlib.contextmanager
def _exclusively(root: Path):
    """Hold the guard flock: one check-and-take of the run lock at a time across app sessions."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / GUARD_FILE, "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        yield


def _refuse_if_busy(root: Path) -> None:
    holder = lock_holder(root)
    if holder:
        raise RunBusyError(
            f"Run {Path(holder['run']).name} is training (process {holder['pid']}); wait for it to end or cancel it."
        )


def _launch(run_dir: Path) -> None:
    """Start the trainer on ``run_dir`` in its own session and take the lock for it (guard held)."""
    with open(run_dir / LOG_FILE, "a") as log:
        process = subprocess.Popen(
            # At a lower CPU priority, so the app's other pages stay responsive while a run trains (`nice` execs
            # the trainer in place, so the pid the lock records is the trainer's).
            ["nice", "-n", str(TRAINER_NICENESS), sys.executable, "-m", "train", "--resume", str(run_dir.resolve()),
             "--quiet"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    _children.append(process)
    write_json_atomically(run_dir.parent / LOCK_FILE, {"pid": process.pid, "started": time.time(), "run": str(run_dir.resolve())})


def start_run(config: TrainConfig) -> Path:
    """Create a run folder for ``config`` and start its trainer in the background; returns the folder.
    Raises ``RunBusyError`` while another run trains, ``DatasetError`` for data outside the data root."""
    folders = [config.data] if isinstance(config.data, str) else config.data
    config = TrainConfig.from_dict({**asdict(config), "data": [str(checked_data_folder(f)) for f in folders]})
    root = runs_root()
    with _exclusively(root):
        _refuse_if_busy(root)
        run_dir = new_run_dir(config, root)
        write_json_atomically(run_dir / CONFIG_FILE, asdict(config))
        _launch(run_dir)
    return run_dir


def resume_run(run_dir) -> None:
    """Start the trainer again on a cancelled or interrupted run; it continues from its last checkpoint."""
    run_dir = Path(run_dir)
    with _exclusively(run_dir.parent):
        _refuse_if_busy(run_dir.parent)
        info = run_info(run_dir)
        if not info.resumable:
            raise ValueError(f"Run {info.name} is {info.status}; only cancelled or interrupted runs can be resumed.")
        _launch(run_dir)


def _cancelled_since(run_dir: Path, since: float) -> bool:
    return any(e["event"] == "cancelled" and e["time"] >= since for e in read_events(run_dir))


def cancel_run(run_dir, grace: float = CANCEL_GRACE_SECONDS) -> str:
    """Ask the trainer to stop (SIGTERM: it records 'cancelled' and exits). SIGKILL it once it has recorded
    that but lingers (tf.data threads can hold up its exit), or after ``grace`` seconds in any case (then
    'cancelled' is recorded here). Returns the run's status afterwards."""
    run_dir = Path(run_dir)
    info = run_info(run_dir)
    if info.pid is None:
        return info.status
    asked = time.time()
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while run_info(run_dir).pid is not None and not _cancelled_since(run_dir, asked) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    if run_info(run_dir).pid == info.pid:
        os.kill(info.pid, signal.SIGKILL)
        while run_info(run_dir).pid is not None:
            time.sleep(POLL_SECONDS)
    if not _cancelled_since(run_dir, asked):
        write_event(run_dir, "cancelled", forced=True)
    return "cancelled"


def log_tail(run_dir, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of the run's log ('' when there is none)."""
    try:
        with open(Path(run_dir) / LOG_FILE, errors="replace") as stream:
            return "".join(collections.deque(stream, maxlen=lines))
    except OSError:
        return ""


def progress(info: RunInfo) -> dict:
    """Where the run's latest trainer is: phase, fraction of the epochs done, ETA, images/s, LR, device."""
    events = [e for e in info.events if info.launched is None or e["time"] >= info.launched]
    starts = [i for i, e in enumerate(events) if e["event"] == "start"]
    if not starts:
        return {"phase": "loading data", "fraction": 0.0}
    start, after = events[starts[-1]], events[starts[-1] :]
    ticks = [e for e in after if e["event"] in ("step", "epoch")]
    latest = ticks[-1] if ticks else {}
    if not latest:
        done = start["initial_epoch"]
    elif latest["event"] == "epoch":
        done = latest["epoch"] + 1
    else:
        done = latest["epoch"] + latest["step"] / latest["steps"]
    evaluating = any(e["event"] == "evaluating" for e in after)
    return {
        "phase": "evaluating" if evaluating else "training",
        "fraction": min(1.0, done / start["epochs"]),
        "epochs_done": done,
        "epochs": start["epochs"],
        "eta_s": None if evaluating else latest.get("eta_s"),
        "images_per_s": latest.get("images_per_s"),
        "lr": latest.get("lr"),
        "device": start["device"],
    }


def training_curves(events) -> pd.DataFrame:
    """One row per step and epoch event (the latest record at each position, as a resumed run may repeat an
    epoch): ``epoch`` as a fraction (1.0 = end of the first), lr, the train loss / accuracy / auc (running
    averages within the epoch) and, at epoch ends, val_loss / val_accuracy / val_auc."""
    rows = [
        {**e, "epoch": e["epoch"] + (e["step"] / e["steps"] if e["event"] == "step" else 1.0)}
        for e in events
        if e["event"] in ("step", "epoch")
    ]
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def publish_run(run_dir, version: str) -> Path:
    """Publish a finished run's candidate as ``version`` (not activated: that is a separate step)."""
    if not VERSION_NAME.fullmatch(version or ""):
        raise registry.ModelVersionError(
            f"'{version}' is not a valid version name: use up to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return publish_candidate(Path(run_dir), version, activate=False)


# --- candidate versus a published version -------------------------------------------------------------------


def _accuracy(labels, probs) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def _covid_recall(labels, probs) -> float:
    covid = labels == CLASS_NAMES.index("COVID-19")
    if not covid.any():
        raise ValueError("no COVID-19 rows")
    return _accuracy(labels[covid], probs[covid])


COMPARED_METRICS = {"accuracy": _accuracy, "macro AUC": rank_macro_auc, "COVID-19 recall": _covid_recall}


def paired_differences(labels, active, candidate) -> pd.DataFrame:
    """Each metric for both models on the same rows, the difference (candidate − active) and its 95 % paired
    bootstrap interval (rows resampled together for both models)."""
    rows = []
    for name, metric in COMPARED_METRICS.items():
        try:
            before, after = float(metric(labels, active)), float(metric(labels, candidate))
        except ValueError:
            continue
        if not (math.isfinite(before) and math.isfinite(after)):  # e.g. the macro AUC with a class absent
            continue
        low, high = bootstrap_ci(lambda y, a, c, m=metric: m(y, c) - m(y, a), (labels, active, candidate))
        rows.append({"metric": name, "active": before, "candidate": after, "difference": after - before,
                     "ci95_low": low, "ci95_high": high, "n": len(labels)})
    return pd.DataFrame(rows)


def _probabilities(frame: pd.DataFrame, suffix: str) -> np.ndarray:
    return frame[[f"p_{name}{suffix}" for name in CLASS_NAMES]].to_numpy(np.float64)


def compare_with_version(run_dir, version=None, root=None) -> dict:
    """Compare a finished run's candidate with ``version`` (default: the active one) on the validation and
    test rows both were evaluated on. Not comparable (with the reasons) when their data or splits differ."""
    candidate = Path(run_dir) / CANDIDATE
    name = registry.resolve_version(version, root)
    published = registry.version_dir(name, root)
    cards = {"candidate": _read_json(candidate / registry.CARD_FILE), "active": registry.load_card(name, root)}
    data = {key: card.get("data") or {} for key, card in cards.items()}
    reasons = []
    hashes = {key: value.get("manifest_sha256") for key, value in data.items()}
    if not hashes["active"] or hashes["active"] != hashes["candidate"]:
        reasons.append("The two models were not trained on the same data (their manifest hashes differ or are missing).")
    if data["candidate"].get("split_sizes") != data["active"].get("split_sizes"):
        reasons.append(f"Their split sizes differ: {data['active'].get('split_sizes')} (published) "
                       f"vs {data['candidate'].get('split_sizes')} (candidate).")
    splits = {}
    for split, filename in (("validation", registry.VAL_PREDICTIONS), ("test", registry.TEST_PREDICTIONS)):
        try:
            mine, theirs = pd.read_csv(candidate / filename), pd.read_csv(published / filename)
        except OSError:
            reasons.append(f"No {split} predictions to compare.")
            continue
        common = mine.merge(theirs, on=["path", "label"], suffixes=("", "_active"))
        if not (len(common) == len(mine) == len(theirs)):
            reasons.append(f"Their {split} images differ ({len(common)} in common of {len(mine)} and {len(theirs)}).")
        if common.empty:
            splits[split] = pd.DataFrame()
            continue
        labels = label_indices(common["label"])
        splits[split] = paired_differences(labels, _probabilities(common, "_active"), _probabilities(common, ""))
    return {"version": name, "comparable": not reasons, "reasons": reasons, "splits": splits, "cards": cards}


def _figure_text(value, low, high) -> str:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def headline_metrics(card: dict) -> pd.DataFrame:
    """Accuracy, macro AUC and per-class recall with 95 % intervals for validation and test, from a card;
    ``figure`` is the value with its interval as text."""
    rows = []
    for split, report in (card.get("metrics") or {}).items():
        if split not in ("validation", "test"):
            continue
        figures = {"accuracy": report.get("accuracy"), "macro AUC": report.get("macro_auc")}
        figures.update({f"{name} recall": entry.get("recall") for name, entry in report.get("per_class", {}).items()})
        for metric, figure in figures.items():
            if figure:
                low, high = figure.get("ci95") or (None, None)
                rows.append({"split": split, "metric": metric, "value": figure["value"], "ci95_low": low,
                             "ci95_high": high, "figure": _figure_text(figure["value"], low, high),
                             "n": report.get("n")})
    return pd.DataFrame(rows, columns=["split", "metric", "value", "ci95_low", "ci95_high", "figure", "n"])
