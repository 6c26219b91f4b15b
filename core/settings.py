"""Every path and environment variable the project reads, in one place.

Each setting is a function, so a test (or an operator) that sets the variable after import still takes effect.
Paths are resolved against the repository when the variable is unset.
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

WEIGHTS_ENV = "CXR_WEIGHTS_DIR"
DATA_ROOT_ENV = "CXR_DATA_ROOT"
UPLOAD_ENV = "CXR_UPLOAD_DIR"
CACHE_ENV = "CXR_CACHE_DIR"
RUNS_ENV = "CXR_RUNS_DIR"
EXPORT_ENV = "CXR_EXPORT_DIR"
IMAGENET_WEIGHTS_ENV = "CXR_IMAGENET_WEIGHTS_DIR"
SITE_ENV = "CXR_SITE"
SITE_DATA_ENV = "CXR_SITE_DATA_DIR"

__all__ = [
    "REPO_ROOT",
    "weights_dir",
    "data_root",
    "portable_data_path",
    "local_data_path",
    "upload_dir",
    "cache_dir",
    "runs_dir",
    "export_dir",
    "imagenet_weights_dir",
    "site",
    "site_data_dir",
    "quiet_tensorflow",
]


def _path(variable: str, default: Path) -> Path:
    return Path(os.environ.get(variable) or default)


def weights_dir() -> Path:
    """Published model versions and the ACTIVE pointer."""
    return _path(WEIGHTS_ENV, REPO_ROOT / "weights")


def data_root() -> Path:
    """The folder training data must lie under: ../shared/data beside the clone when present, else data/."""
    return _path(DATA_ROOT_ENV, SHARED_DATA if SHARED_DATA.is_dir() else REPO_ROOT / "data").resolve()


def portable_data_path(folder) -> str:
    """How a model card records a training folder: relative to the data root when it lies under it (``cxr``), so
    the record names the same folder on every machine that has the data; any other folder as its absolute path."""
    path = Path(folder).resolve()
    return str(path.relative_to(data_root())) if path.is_relative_to(data_root()) else str(path)


def local_data_path(recorded) -> Path:
    """The folder on this machine that a card's recorded training folder names: a relative record under the data
    root; an absolute one as it is when it exists. An absolute record from another machine (cards written before
    folders were recorded relative: ``/work/shared/data/cxr``) maps to the data root's folder with its longest
    matching tail (``cxr``), else stays as recorded, for the caller's data-root check to refuse plainly."""
    path = Path(recorded)
    if not path.is_absolute():
        return data_root() / path
    if path.exists():
        return path.resolve()
    tails = (Path(*path.parts[start:]) for start in range(1, len(path.parts)))
    return next((data_root() / tail for tail in tails if (data_root() / tail).is_dir()), path)


def upload_dir() -> Path:
    """Where the Retrain page unpacks uploaded training zips."""
    return _path(UPLOAD_ENV, REPO_ROOT / "uploads").resolve()


def cache_dir() -> Path:
    """Decoded, resized training images (train.trainer.cache)."""
    return _path(CACHE_ENV, REPO_ROOT / ".cache")


def runs_dir() -> Path:
    """Training runs: checkpoints, logs, staging cards."""
    return _path(RUNS_ENV, REPO_ROOT / "runs")


def export_dir() -> Path:
    """The only folder SavedModel exports may be written under."""
    return _path(EXPORT_ENV, REPO_ROOT / "exports").resolve()


def imagenet_weights_dir() -> Path | None:
    """A local folder of ImageNet weights for the transfer-learning architectures, or None (never downloaded)."""
    value = os.environ.get(IMAGENET_WEIGHTS_ENV)
    return Path(value) if value else None


def site() -> str | None:
    """The name of the hospital this installation serves (``CXR_SITE``), or None; ``core.site`` checks it."""
    return os.environ.get(SITE_ENV, "").strip() or None


def site_data_dir() -> Path:
    """The sites' labelled films (one folder per site, class folders inside), grown by readers' findings: under
    the data root, so that ``train.site`` and the Retrain page may read them."""
    return _path(SITE_DATA_ENV, data_root() / "sites").resolve()


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up logging; call before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
