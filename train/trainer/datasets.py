"""Finding labelled images: a folder-per-class tree, optionally with ``manifest.csv``; patient-level splits.

Labels come from the class folder (first level under the root) or from the manifest's ``label`` column, never
from the rest of the path.
"""

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from core import CLASS_NAMES
from core.report import relative_path

__all__ = [
    "DatasetError",
    "canonical_label",
    "accepted_names",
    "scan_folders",
    "read_manifest",
    "scan_dataset",
    "scan_datasets",
    "manifest_hash",
    "split_by_patient",
    "label_indices",
    "SPLITS",
    "SPLIT_NAMES",
    "EXTERNAL",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"val": "validation", "test": "test", "external": "external"}
EXTERNAL = "external"  # every image of the left-out source: never trained on, never used to choose
CLASS_ALIASES = {
    "covid-19": "COVID-19",
    "covid19": "COVID-19",
    "covid_19": "COVID-19",
    "covid": "COVID-19",
    "normal": "Normal",
    "pneumonia": "Pneumonia",
}
COLUMNS = ["path", "label", "patient_id", "source", "population"]


class DatasetError(ValueError):
    """The dataset folder cannot be used; the message says what is wrong and what is accepted."""


def canonical_label(name: str) -> str:
    """The class name for a folder or manifest label, matched case-insensitively against the aliases."""
    label = CLASS_ALIASES.get(str(name).strip().lower())
    if label is None:
        raise DatasetError(f"Unknown class '{name}'. Accepted class names (any case): {accepted_names()}.")
    return label


def accepted_names() -> str:
    return ", ".join(sorted(set(CLASS_ALIASES) | set(CLASS_NAMES), key=str.lower))


def _visible_files(folder: Path):
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    )


def scan_folders(root: Path) -> pd.DataFrame:
    """Every file under ``root/<class>/``; each image is its own patient and the source is 'unknown'."""
    rows = []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(
            f"{relative_path(root)} has no class folders. Expected one folder per class: {accepted_names()}."
        )
    for folder in class_dirs:
        label = canonical_label(folder.name)
        files = _visible_files(folder)
        if not files:
            raise DatasetError(f"The class folder '{folder.name}' is empty.")
        rows += [(str(f), label, f"{folder.name}/{f.relative_to(folder)}", "unknown", "unknown") for f in files]
    log.warning("No %s in %s: every image is treated as a separate patient.", MANIFEST, root)
    return pd.DataFrame(rows, columns=COLUMNS)


def read_manifest(root: Path) -> pd.DataFrame:
    """The manifest's rows (``path`` relative to ``root``), label from its own column or else its class folder."""
    frame = pd.read_csv(root / MANIFEST, dtype=str, keep_default_na=False)
    missing = {"path", "patient_id"} - set(frame.columns)
    if missing:
        raise DatasetError(
            f"{relative_path(root / MANIFEST)} lacks the column(s) {sorted(missing)}; expected {COLUMNS}."
        )
    if "label" not in frame.columns or (frame["label"] == "").any():
        frame["label"] = [p.replace("\\", "/").split("/")[0] for p in frame["path"]]
    frame["label"] = [canonical_label(label) for label in frame["label"]]
    for column in ("source", "population"):
        if column not in frame.columns:
            frame[column] = "unknown"
        frame[column] = frame[column].replace("", "unknown")
    frame["patient_id"] = [pid or f"file:{path}" for pid, path in zip(frame["patient_id"], frame["path"])]
    exists = np.array([(root / p).is_file() for p in frame["path"]])
    if not exists.all():
        log.warning(
            "%d file(s) listed in the manifest are missing and were skipped: %s",
            (~exists).sum(),
            ", ".join(frame["path"][~exists].head(10)),
        )
    frame = frame[exists].copy()
    frame["path"] = [str(root / p) for p in frame["path"]]
    return frame[COLUMNS].reset_index(drop=True)


def scan_dataset(root) -> pd.DataFrame:
    """All labelled images under ``root``: columns path (absolute), label, patient_id, source, population, root."""
    return scan_datasets([root])


def scan_datasets(roots, every_class: bool = True) -> pd.DataFrame:
    """All labelled images under several dataset folders, merged: the columns of ``scan_dataset`` plus ``root``
    (the folder each image came from). Every class needs images in the union, not in each folder, so a folder
    of one hospital's normals and pneumonias can join a pool that holds the COVID-19 images. Patient ids are
    used as the manifests give them (the shared manifests prefix them with their source). ``every_class=False``
    (for evaluation only) accepts folders that lack a class."""
    roots = [Path(root).resolve() for root in roots]
    if len(set(roots)) < len(roots):
        raise DatasetError("The same dataset folder was given twice.")
    frames = []
    for root in roots:
        if not root.is_dir():
            raise DatasetError(f"The dataset folder {relative_path(root)} does not exist.")
        frame = read_manifest(root) if (root / MANIFEST).is_file() else scan_folders(root)
        frames.append(frame.assign(root=str(root)))
    merged = pd.concat(frames, ignore_index=True)
    where = ", ".join(relative_path(root) for root in roots)
    if merged.empty:
        raise DatasetError(f"No images found in {where}.")
    absent = [name for name in CLASS_NAMES if name not in set(merged["label"])]
    if absent and every_class:
        raise DatasetError(f"No images of class {', '.join(absent)} in {where}; every class needs images.")
    return merged.sort_values("path").reset_index(drop=True)


def manifest_hash(frame: pd.DataFrame) -> str:
    """SHA-256 of the sorted (relative name, label, patient, source) rows: identifies the data a model saw."""
    digest = hashlib.sha256()
    for row in frame.sort_values("path").itertuples(index=False):
        digest.update(f"{Path(row.path).name}\t{row.label}\t{row.patient_id}\t{row.source}\n".encode())
    return digest.hexdigest()


def split_by_patient(frame: pd.DataFrame, val_fraction=0.15, test_fraction=0.15, seed=0) -> pd.Series:
    """'train' / 'val' / 'test' for each row: stratified by label, grouped by patient (no patient in two splits)."""
    labels, groups = frame["label"].to_numpy(), frame["patient_id"].to_numpy()
    split = np.full(len(frame), "train", dtype=object)
    test_rows = _group_fold(labels, groups, test_fraction, seed)
    split[test_rows] = "test"
    rest = np.flatnonzero(split == "train")
    val_rows = _group_fold(labels[rest], groups[rest], val_fraction / (1 - test_fraction), seed + 1)
    split[rest[val_rows]] = "val"
    return pd.Series(split, index=frame.index, name="split")


def _group_fold(labels, groups, fraction, seed):
    folds = max(2, round(1 / fraction))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    _, held_out = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return held_out


def label_indices(labels, class_names=CLASS_NAMES) -> np.ndarray:
    """Each label's index in ``class_names``; ``ValueError`` for a label that is not one of them."""
    names = list(class_names)
    return np.array([names.index(label) for label in labels], dtype=np.int64)
