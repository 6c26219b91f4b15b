"""Model versions on disk.

A version is a folder ``<weights>/<version>/`` holding ``model.keras``, ``card.json`` (everything needed to use
and judge the model) and the calibrated ``val_predictions.csv`` / ``test_predictions.csv``. The active version
is named by the one-line file ``<weights>/ACTIVE``. Versions are published by renaming a finished staging folder
into place, so a reader never sees a half-written version; folders starting with "." are never listed.
Publishing, deleting and activating take one file lock (``<weights>/.registry.lock``), so they are safe to run
from several processes (the app's sessions, a CLI trainer) at once.
"""

import errno
import getpass
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import filelock
import psutil

from core import atomic, settings
from core.card import CardError, ModelCard

__all__ = [
    "ModelVersionError",
    "weights_dir",
    "version_dir",
    "is_complete",
    "list_versions",
    "active_version",
    "set_active",
    "activate",
    "activation_history",
    "resolve_version",
    "load_card",
    "load_model",
    "new_staging_dir",
    "registry_lock",
    "publish",
    "delete_version",
    "stale_folders",
    "remove_stale_staging",
]

ACTIVE_FILE = "ACTIVE"
ACTIVATIONS_FILE = "activations.jsonl"  # who made which version active, when and why: one JSON line each
CARD_FILE = "card.json"
MODEL_FILE = "model.keras"
VAL_PREDICTIONS = "val_predictions.csv"
TEST_PREDICTIONS = "test_predictions.csv"
REQUIRED_FILES = (CARD_FILE, MODEL_FILE)
STAGING_PREFIX = ".staging-"
GRAVEYARD_PREFIX = ".deleting-"
LOCK_FILE = ".registry.lock"
LOCK_TIMEOUT_S = 30


class ModelVersionError(RuntimeError):
    """A model version is missing, incomplete or cannot be loaded; the message says which and why."""


def weights_dir(root=None) -> Path:
    """The weights folder: ``root``, else ``core.settings.weights_dir()``."""
    return Path(root) if root else settings.weights_dir()


def version_dir(version: str, root=None) -> Path:
    if not version or version.startswith(".") or "/" in version or "\\" in version or version in ("..", ACTIVE_FILE):
        raise ModelVersionError(f"'{version}' is not a valid model version name.")
    return weights_dir(root) / version


def is_complete(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED_FILES)


def list_versions(root=None) -> list:
    """Names of the complete versions, oldest first (by the card's ``created`` time)."""
    base = weights_dir(root)
    if not base.is_dir():
        return []
    found = [p for p in base.iterdir() if not p.name.startswith(".") and is_complete(p)]
    return [p.name for p in sorted(found, key=lambda p: (_created(p), p.name))]


def _created(path: Path) -> str:
    try:
        return ModelCard.load(path / CARD_FILE).created or ""
    except CardError:
        return ""


def active_version(root=None):
    """The active version's name, or ``None`` when no valid version is active."""
    pointer = weights_dir(root) / ACTIVE_FILE
    try:
        name = pointer.read_text().strip()
    except OSError:
        return None
    if name and is_complete(weights_dir(root) / name):
        return name
    return None


def set_active(version: str, root=None) -> None:
    """Make ``version`` the active one (an atomic rewrite of the pointer file), under the registry lock: a
    version being deleted or published meanwhile is either complete and activated, or refused."""
    with registry_lock(root):
        _set_active_unlocked(version, root)


def _set_active_unlocked(version: str, root=None) -> None:
    path = version_dir(version, root)
    if not is_complete(path):
        raise ModelVersionError(f"Model version '{version}' does not exist or is incomplete.")
    atomic.write_text(weights_dir(root) / ACTIVE_FILE, version + "\n")


def activate(version: str, reader: str, reason: str, root=None) -> dict:
    """Make ``version`` the active one — every reader's calls change — recording who did it and why, as an
    operating-point change is recorded: the entry (time, from, to, reader, reason) is appended to
    ``<weights>/activations.jsonl`` under the registry lock and returned. ``ValueError`` without a name or a
    reason; ``ModelVersionError`` for a missing version or the one already active."""
    reader, reason = str(reader).strip(), str(reason).strip()
    if not reader or not reason:
        raise ValueError("Activating a version changes every reader's calls: give your name and a reason.")
    with registry_lock(root):
        if version == active_version(root):
            raise ModelVersionError(f"'{version}' is already the active version.")
        return _activate_unlocked(version, reader, reason, root)


def _activate_unlocked(version: str, reader: str, reason: str, root=None) -> dict:
    entry = {"time": _now(), "from": active_version(root), "to": version, "reader": reader, "reason": reason}
    _set_active_unlocked(version, root)
    with open(weights_dir(root) / ACTIVATIONS_FILE, "a+b") as history:
        line = json.dumps(entry).encode("utf-8") + b"\n"
        if history.seek(0, os.SEEK_END) > 0:
            history.seek(-1, os.SEEK_END)
            if history.read(1) != b"\n":  # a line torn by a crash stays apart from this one
                line = b"\n" + line
        history.write(line)
        history.flush()
        os.fsync(history.fileno())
    return entry


def activation_history(root=None) -> list:
    """Every recorded activation, newest first (a line that cannot be read, e.g. cut by a crash, is skipped)."""
    try:
        lines = (weights_dir(root) / ACTIVATIONS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and {"time", "to", "reader", "reason"} <= entry.keys():
            entries.append(entry)
    return entries[::-1]


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def resolve_version(version=None, root=None) -> str:
    """``version`` if given, else the active one; raises ``ModelVersionError`` when there is none."""
    name = version or active_version(root)
    if not name:
        raise ModelVersionError(
            f"No active model version in the weights folder ({weights_dir(root).name}). "
            "Train one with `python -m train --publish NAME`."
        )
    if not is_complete(version_dir(name, root)):
        raise ModelVersionError(
            f"Model version '{name}' does not exist or is incomplete in the weights folder ({weights_dir(root).name})."
        )
    return name


def load_card(version=None, root=None) -> ModelCard:
    """A version's card (default: the active version's); ``ModelVersionError`` when it cannot be read."""
    name = resolve_version(version, root)
    try:
        return ModelCard.load(version_dir(name, root) / CARD_FILE)
    except CardError as error:
        raise ModelVersionError(f"The model card of version '{name}' cannot be read: {error}") from error


def load_model(version=None, root=None):
    """Load a version's Keras model (compile=False: inference only)."""
    import keras

    name = resolve_version(version, root)
    try:
        return keras.saving.load_model(version_dir(name, root) / MODEL_FILE, compile=False)
    except Exception as error:  # keras raises many types for a damaged file
        problem = str(error).replace(str(version_dir(name, root)), name)  # Keras names the file: no server path
        raise ModelVersionError(f"The model file of version '{name}' cannot be loaded: {problem}") from error


def new_staging_dir(root=None) -> Path:
    """An empty hidden folder inside the weights folder (same filesystem, so publishing is one rename), named
    after this process so that ``remove_stale_staging`` never removes one still being filled."""
    base = weights_dir(root)
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=base, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
    staging.chmod(0o755)  # mkdtemp makes it private; a published version is readable like any other folder
    return staging


@contextmanager
def registry_lock(root=None):
    """Hold the weights folder's lock (a file lock: across processes) while versions are published, deleted or
    activated; ``ModelVersionError`` when another process holds it for longer than ``LOCK_TIMEOUT_S``."""
    base = weights_dir(root)
    base.mkdir(parents=True, exist_ok=True)
    try:
        with filelock.FileLock(base / LOCK_FILE, timeout=LOCK_TIMEOUT_S):
            yield
    except filelock.Timeout as error:
        raise ModelVersionError(
            "The model versions are being changed by another user or process; try again in a moment."
        ) from error


def publish(staging: Path, version: str, activate: bool = False, root=None) -> Path:
    """Move a finished staging folder into place as ``version``; optionally make it active (recorded in the
    activation history as this process's user's, "published and activated in one step").

    Two publishes of one name, from any processes: one wins, the other gets ``ModelVersionError`` and its
    staging folder is left to its caller. The rename cannot clobber a version (it only lands on a missing
    name; the registry lock orders the check and the rename)."""
    target = version_dir(version, root)
    if not is_complete(Path(staging)):
        raise ModelVersionError(f"The staging folder {Path(staging).name} is incomplete; nothing was published.")
    taken = ModelVersionError(f"Model version '{version}' already exists; choose another name.")
    with registry_lock(root):
        if os.path.lexists(target):
            raise taken
        try:
            os.rename(staging, target)
        except OSError as error:  # ENOTEMPTY / EEXIST: a folder of that name appeared outside the lock
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise taken from error
            raise ModelVersionError(
                f"Model version '{version}' could not be published: {error.strerror or error}."
            ) from error
        if activate:
            _activate_unlocked(version, getpass.getuser(), "published and activated in one step", root)
    return target


def delete_version(version: str, root=None) -> None:
    """Delete a non-active version: under the registry lock it is renamed into a graveyard folder of its own
    (a unique name, so leftovers of earlier deletes never collide), then removed outside the lock."""
    with registry_lock(root):
        if version == active_version(root):
            raise ModelVersionError(f"'{version}' is the active version; activate another one before deleting it.")
        path = version_dir(version, root)
        if not path.is_dir():
            raise ModelVersionError(f"Model version '{version}' does not exist.")
        graveyard = Path(tempfile.mkdtemp(dir=weights_dir(root), prefix=f"{GRAVEYARD_PREFIX}{version}-"))
        try:
            os.rename(path, graveyard / version)  # a new name inside a new folder: nothing to collide with
        except OSError as error:
            graveyard.rmdir()
            raise ModelVersionError(
                f"Model version '{version}' could not be deleted: {error.strerror or error}."
            ) from error
    shutil.rmtree(graveyard, ignore_errors=True)  # what is left is hidden, and removed by remove_stale_staging


def stale_folders(root=None) -> list:
    """Hidden folders left by a killed publish or delete: every graveyard, and the staging folders whose
    process is gone (a staging folder still being filled by a live process is not stale)."""
    base = weights_dir(root)
    if not base.is_dir():
        return []
    found = []
    for path in base.iterdir():
        if not path.is_dir():
            continue
        if path.name.startswith(GRAVEYARD_PREFIX):
            found.append(path)
        elif path.name.startswith(STAGING_PREFIX) and not _owner_alive(path.name[len(STAGING_PREFIX) :]):
            found.append(path)
    return sorted(found)


def _owner_alive(suffix: str) -> bool:
    """Whether the process named in a staging folder's ``<pid>-<random>`` suffix runs (older names: no)."""
    pid, _, _ = suffix.partition("-")
    return pid.isdigit() and int(pid) != 0 and psutil.pid_exists(int(pid))


def remove_stale_staging(root=None) -> None:
    """Remove the folders left by a killed publish or delete (``stale_folders``)."""
    for path in stale_folders(root):
        shutil.rmtree(path, ignore_errors=True)
