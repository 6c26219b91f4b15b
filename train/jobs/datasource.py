"""Where training data may come from, and what it holds: the data root (every dataset must lie under it or
under the uploads folder), dataset discovery, uploaded zips, and the dataset summary and image check the Retrain
page shows before a run."""

import contextlib
import hashlib
import re
import time
from pathlib import Path

import pandas as pd

from core import CLASS_NAMES, settings
from core.report import relative_path
from train.jobs.archive import extract_dataset_zip
from train.trainer.datasets import CLASS_ALIASES, MANIFEST, DatasetError, scan_datasets

__all__ = ["checked_data_folder", "dataset_folders", "unpack_upload", "summarize_dataset", "check_images"]

IMBALANCE_RATIO = 3.0
MIN_CLASS_IMAGES = 50
THUMBNAIL_SIZE = 16
THUMBNAIL_STEP = 16  # grey levels per bucket, so re-encoded copies still match
DATASET_SEARCH_DEPTH = 2


def checked_data_folder(folder) -> Path:
    """``folder`` with symlinks resolved; ``DatasetError`` when that lies outside the data root and uploads."""
    path = Path(folder).resolve()
    if not any(path.is_relative_to(root) for root in (settings.data_root(), settings.upload_dir())):
        raise DatasetError(
            f"{relative_path(path)} is outside the data folder ({settings.data_root().name}; set "
            f"{settings.DATA_ROOT_ENV} to change it) and the uploads; datasets must be placed there."
        )
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
    queue = [(root, 0) for root in {settings.data_root(), settings.upload_dir()} if root.is_dir()]
    while queue:
        folder, depth = queue.pop()
        if _looks_like_dataset(folder):
            with contextlib.suppress(DatasetError):
                found.add(checked_data_folder(folder))
        elif depth < DATASET_SEARCH_DEPTH:
            queue += [(c, depth + 1) for c in folder.iterdir() if c.is_dir() and not c.name.startswith(".")]
    return sorted(found)


def unpack_upload(file, filename: str) -> Path:
    """Unpack an uploaded dataset zip into a new folder under ``core.settings.upload_dir()``; returns the dataset
    folder."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename).stem).strip("._-") or "dataset"
    return extract_dataset_zip(file, settings.upload_dir() / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")


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
        warnings.append(
            f"Classes are imbalanced (largest / smallest = {ratio:.1f}); consider 'balanced' class weights."
        )
    small = [name for name, n in classes["images"].items() if n < MIN_CLASS_IMAGES]
    if small:
        warnings.append(f"Few images (< {MIN_CLASS_IMAGES}) in {', '.join(small)}: the figures will be very uncertain.")
    has_manifest = all((root / MANIFEST).is_file() for root in roots)
    missing_ids = int(frame["patient_id"].str.startswith("file:").sum()) if has_manifest else len(frame)
    if missing_ids:
        warnings.append(
            f"{missing_ids:,} image(s) have no patient id{'' if has_manifest else ' (no manifest.csv)'}: each counts "
            "as its own patient, so one patient's images may land in both training and test."
        )
    for source, counts in sources.iterrows():
        present = [name for name, n in counts.items() if n]
        if source != "unknown" and len(present) == 1:
            warnings.append(
                f"Source '{source}' holds only {present[0]} images: the model can learn the source instead of the "
                "disease."
            )
    return {
        "roots": [str(root) for root in roots],
        "frame": frame,
        "classes": classes,
        "sources": sources,
        "warnings": warnings,
    }


def check_images(frame: pd.DataFrame) -> dict:
    """Decode every image (threads; cached on disk) to find unreadable files and near-duplicates (identical
    16×16 thumbnails at 16 grey levels), including near-duplicates filed under different labels."""
    from train.trainer.cache import load_resized

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
