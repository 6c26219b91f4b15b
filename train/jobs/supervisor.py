"""Training runs as processes: start, watch, cancel, resume — one at a time.

Each run is its own ``python -m train --resume RUN`` process (a new session, output in ``<run>/log.txt``), so
the Retrain page can be left and come back; the run folder and its ``config.json`` are prepared here, so every
setting reaches the trainer exactly. One run at a time, whoever starts it (the app or the CLI):
``<runs>/.training-lock.json`` names the trainer by pid *and* start time (psutil), so neither a dead process nor
a new one that reused its pid holds it; checking and taking it is serialised by an flock on
``.training-lock.guard``. A run's status comes from its events and whether its trainer is alive
(``process.json``, written by the trainer, or the lock): running / finished / failed / cancelled / interrupted.
"""

import collections
import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import psutil

from core import atomic, registry, settings
from train.jobs.datasource import checked_data_folder
from train.trainer.config import TrainConfig
from train.trainer.progress import read_events, write_event
from train.trainer.run import CONFIG_FILE, new_run_dir, publish_candidate

__all__ = [
    "RunBusyError",
    "RunInfo",
    "process_alive",
    "reap_children",
    "lock_holder",
    "take_lock",
    "release_lock",
    "run_info",
    "list_runs",
    "start_run",
    "start_site_run",
    "site_runs",
    "resume_run",
    "cancel_run",
    "log_tail",
    "progress",
    "training_curves",
    "publish_run",
    "PROCESS_FILE",
    "CONFIG_FILE",
    "LOCK_FILE",
]

LOG_FILE = "log.txt"
LOCK_FILE = ".training-lock.json"
GUARD_FILE = ".training-lock.guard"
SITE_FILE = "site.json"  # a site run's arguments (train.site), in place of a training run's config.json
PROCESS_FILE = "process.json"  # the live trainer's pid and start time, so the app sees a run is still going
CANCEL_GRACE_SECONDS = 15.0
KILL_WAIT_SECONDS = 10.0
TRAINER_NICENESS = 10
POLL_SECONDS = 0.2
START_TOLERANCE_SECONDS = 1.0  # the lock's time is taken just after the process was created
LOG_TAIL_LINES = 40
LIFECYCLE_EVENTS = ("start", "done", "failed", "cancelled")
ENDED_STATUS = {"done": "finished", "failed": "failed", "cancelled": "cancelled"}
RESUMABLE = ("cancelled", "interrupted")
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_children = []  # trainer processes started by this process, polled so that none stays a zombie


class RunBusyError(RuntimeError):
    """Another training run is in progress; the message names it."""


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


def process_alive(record) -> bool:
    """Whether ``record`` ({"pid", "started"}) names a live process that already existed at ``started`` (so
    not a later process that reused the pid); a zombie counts as gone."""
    if not record:
        return False
    try:
        process = psutil.Process(int(record["pid"]))
        alive = process.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
        return alive and process.create_time() <= float(record["started"]) + START_TOLERANCE_SECONDS
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def reap_children() -> None:
    """Collect the exit status of the trainers this process started that have ended, so that none stays
    <defunct> in the process table."""
    for child in list(_children):
        if child.poll() is not None:
            _children.remove(child)


def lock_holder(root=None):
    """The lock's record ({"pid", "started", "run"}) while its trainer lives; None when the lock is free."""
    reap_children()
    record = _read_json(Path(root or settings.runs_dir()) / LOCK_FILE)
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
    root = settings.runs_dir()
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


def _busy(holder: dict) -> RunBusyError:
    return RunBusyError(
        f"Run {Path(holder['run']).name} is training (process {holder['pid']}); wait for it to end or cancel it."
    )


def _refuse_if_busy(root: Path) -> None:
    holder = lock_holder(root)
    if holder:
        raise _busy(holder)


def take_lock(run_dir) -> None:
    """Take the run lock for this process, the trainer of ``run_dir``: a trainer started from the CLI holds the
    same lock as one the app starts (that one finds the lock already naming it). ``RunBusyError`` while another
    live trainer holds it."""
    root = settings.runs_dir()
    with _exclusively(root):
        holder = lock_holder(root)
        if holder:
            if int(holder["pid"]) == os.getpid():
                return
            raise _busy(holder)
        atomic.write_json(
            root / LOCK_FILE,
            {"pid": os.getpid(), "started": psutil.Process().create_time(), "run": str(Path(run_dir).resolve())},
        )


def release_lock() -> None:
    """Free the run lock if this process holds it (a trainer that ends)."""
    root = settings.runs_dir()
    with _exclusively(root):
        record = _read_json(root / LOCK_FILE)
        if record and int(record.get("pid", -1)) == os.getpid():
            (root / LOCK_FILE).unlink(missing_ok=True)


def _launch(run_dir: Path, command=None) -> None:
    """Start the trainer on ``run_dir`` (or another ``python -m`` ``command`` that writes the run's events) in its
    own session and take the lock for it (guard held)."""
    command = command or ["train", "--resume", str(run_dir.resolve()), "--quiet"]
    with open(run_dir / LOG_FILE, "a") as log:
        process = subprocess.Popen(
            # At a lower CPU priority, so the app's other pages stay responsive while a run trains (`nice` execs
            # the trainer in place, so the pid the lock records is the trainer's).
            ["nice", "-n", str(TRAINER_NICENESS), sys.executable, "-m", *command],
            cwd=settings.REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    _children.append(process)
    atomic.write_json(
        run_dir.parent / LOCK_FILE, {"pid": process.pid, "started": time.time(), "run": str(run_dir.resolve())}
    )


def start_run(config: TrainConfig) -> Path:
    """Create a run folder for ``config`` and start its trainer in the background; returns the folder.
    Raises ``RunBusyError`` while another run trains, ``DatasetError`` for data outside the data root."""
    folders = [config.data] if isinstance(config.data, str) else config.data
    config = TrainConfig.from_dict({**asdict(config), "data": [str(checked_data_folder(f)) for f in folders]})
    root = settings.runs_dir()
    with _exclusively(root):
        _refuse_if_busy(root)
        run_dir = new_run_dir(config, root)
        atomic.write_json(run_dir / CONFIG_FILE, asdict(config))
        _launch(run_dir)
    return run_dir


def start_site_run(arguments: list, name: str) -> Path:
    """Start ``python -m train.site`` with ``arguments`` as a run (``<runs>/<time>-site-<name>``, its events and
    log like a training run's; one at a time with training); returns the folder. ``RunBusyError`` while busy."""
    root = settings.runs_dir()
    with _exclusively(root):
        _refuse_if_busy(root)
        run_dir = root / f"{time.strftime('%Y%m%d-%H%M%S')}-site-{name}"
        run_dir.mkdir(parents=True)
        atomic.write_json(run_dir / SITE_FILE, {"arguments": list(arguments)})
        _launch(run_dir, ["train.site", *arguments, "--run-dir", str(run_dir.resolve())])
    return run_dir


def site_runs() -> list:
    """The site runs (``start_site_run``), newest first."""
    root = settings.runs_dir()
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and (p / SITE_FILE).is_file()]
    return [run_info(p) for p in sorted(folders, reverse=True)]


def resume_run(run_dir) -> None:
    """Start the trainer again on a cancelled or interrupted run; it continues from its last checkpoint."""
    run_dir = Path(run_dir)
    with _exclusively(run_dir.parent):
        _refuse_if_busy(run_dir.parent)
        info = run_info(run_dir)
        if not info.resumable:
            raise ValueError(f"Run {info.name} is {info.status}; only cancelled or interrupted runs can be resumed.")
        _launch(run_dir)


def _cancelled_since(events: list, since: float) -> bool:
    return any(e["event"] == "cancelled" and e["time"] >= since for e in events)


def _signal(pid: int, signum) -> bool:
    """Send ``signum`` to ``pid``; False when the process is already gone."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def _wait_until_gone(run_dir: Path, seconds: float, cancelled_since=None) -> bool:
    """Poll until the run has no live trainer (or, given ``cancelled_since``, has recorded a cancel since then)
    for at most ``seconds``; True when that happened."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info = run_info(run_dir)
        if info.pid is None or (cancelled_since and _cancelled_since(info.events, cancelled_since)):
            return True
        time.sleep(POLL_SECONDS)
    return False


def cancel_run(run_dir, grace: float = CANCEL_GRACE_SECONDS) -> str:
    """Ask the trainer to stop (SIGTERM: it records 'cancelled' and exits). SIGKILL it once it has recorded
    that but lingers (tf.data threads can hold up its exit), or after ``grace`` seconds in any case (then
    'cancelled' is recorded here). A trainer that already ended is not an error. Returns the run's status
    afterwards; raises ``RunBusyError`` if even SIGKILL did not end it within ``KILL_WAIT_SECONDS``."""
    run_dir = Path(run_dir)
    info = run_info(run_dir)
    if info.pid is None:
        return info.status
    asked = time.time()
    if _signal(info.pid, signal.SIGTERM):
        _wait_until_gone(run_dir, grace, cancelled_since=asked)
    if run_info(run_dir).pid == info.pid:
        _signal(info.pid, signal.SIGKILL)
        if not _wait_until_gone(run_dir, KILL_WAIT_SECONDS):
            raise RunBusyError(f"Run {info.name}'s trainer (process {info.pid}) did not end after SIGKILL.")
    if not _cancelled_since(read_events(run_dir), asked):
        write_event(run_dir, "cancelled", forced=True)
    _reap(info.pid, KILL_WAIT_SECONDS)
    return run_info(run_dir).status


def _reap(pid: int, seconds: float) -> None:
    """Wait at most ``seconds`` for this process's trainer ``pid`` to exit, killing it if it outlives them (it
    may linger after recording its cancel: tf.data threads), and collect its exit status: no <defunct> left."""
    for child in [child for child in _children if child.pid == pid]:
        try:
            child.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    reap_children()


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
