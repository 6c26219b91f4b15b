"""A site's labelled films, in the pool's layout: class folders (``COVID19/``, ``NORMAL/``, ``PNEUMONIA/``) of PNG,
JPEG or DICOM files, with or without a ``manifest.csv``. Patients: the manifest's ids when there is one, else the
DICOM PatientID (hashed: it is never shown or stored), else one patient per file."""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.imaging import UnusableImageError, read_image
from core.report import relative_path
from core.site import SiteError
from train.trainer.datasets import MANIFEST, DatasetError, label_indices, scan_datasets

__all__ = ["SiteFilms", "scan_site", "read_films", "check_classes", "MIN_FILMS_PER_CLASS"]

MIN_FILMS_PER_CLASS = 5
MIN_CLASSES = 2


@dataclass
class SiteFilms:
    """The readable films of a site's set, decoded for one version: ``frame`` (path, label, patient_id), model
    ``inputs`` (N, S, S, 3), the images' ``hints``, and the files ``skipped`` as unreadable ({name: why})."""

    root: Path
    frame: pd.DataFrame
    inputs: np.ndarray
    hints: list
    skipped: dict = field(default_factory=dict)
    data_sha256: str = ""

    def labels(self, class_names) -> np.ndarray:
        return label_indices(self.frame["label"], class_names)

    @property
    def patients(self) -> np.ndarray:
        return self.frame["patient_id"].to_numpy()

    def counts(self, class_names) -> dict:
        return {name: int((self.frame["label"] == name).sum()) for name in class_names}


def scan_site(folders) -> pd.DataFrame:
    """Every file of a site's set (one folder, or several merged): path (absolute), label, patient_id, source and
    the ``name`` shown for it (relative to its folder); ``SiteError`` when it is not a set."""
    roots = [Path(folder) for folder in (folders if isinstance(folders, (list, tuple)) else [folders])]
    try:
        frame = scan_datasets(roots, every_class=False)
    except DatasetError as error:
        raise SiteError(str(error)) from error
    unlisted = [not (Path(root) / MANIFEST).is_file() for root in frame["root"]]
    frame.loc[unlisted, "patient_id"] = [
        _dicom_patient(path) or f"file:{Path(path).name}" for path in frame.loc[unlisted, "path"]
    ]
    frame["name"] = [str(Path(path).relative_to(root)) for path, root in zip(frame["path"], frame["root"])]
    return frame[["path", "label", "patient_id", "source", "name"]]


def _dicom_patient(path: str):
    """A hash of the DICOM PatientID of ``path``, or None for a raster file or a DICOM without one."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:  # not DICOM (PNG, JPEG) or unreadable: the reader says which when it decodes it
        return None
    patient = str(dataset.get("PatientID", "") or "").strip()
    return f"dicom:{hashlib.sha256(patient.encode()).hexdigest()[:16]}" if patient else None


def read_films(folders, predictor, class_names, sources=None) -> SiteFilms:
    """Decode every film of the set at ``folders`` (one or several; only the manifest ``sources`` given, if any) for
    ``predictor``'s version (``core.imaging`` and the shared preprocessing: exactly what ``core predict`` does);
    unreadable or non-CXR files are listed and skipped. Raises ``SiteError`` when what is left cannot be measured
    (``check_classes``)."""
    frame = scan_site(folders)
    root = Path(folders[0] if isinstance(folders, (list, tuple)) else folders)
    if sources:
        frame = frame[frame["source"].isin(sources)].reset_index(drop=True)
    inputs, hints, kept, skipped = [], [], [], {}
    for index, (path, name) in enumerate(zip(frame["path"], frame["name"])):
        try:
            radiograph = read_image(path)
        except UnusableImageError as error:
            skipped[name] = str(error)
            continue
        inputs.append(predictor.preprocess(radiograph.pixels))
        hints.append(radiograph.hints)
        kept.append(index)
    frame = frame.iloc[kept].reset_index(drop=True)
    films = SiteFilms(
        root,
        frame,
        np.stack(inputs) if inputs else np.zeros((0, 1, 1, 3), np.float32),
        hints,
        skipped,
        data_hash(frame),
    )
    check_classes(films.counts(class_names), skipped, root)
    return films


def check_classes(counts: dict, skipped: dict, root: Path, every_class: bool = False) -> None:
    """``SiteError`` unless at least two classes (every class, for adaptation) have ``MIN_FILMS_PER_CLASS`` films."""
    where = relative_path(root)
    note = f" ({len(skipped)} unreadable file(s) skipped: {', '.join(list(skipped)[:5])})" if skipped else ""
    present = {name: n for name, n in counts.items() if n}
    if len(present) < MIN_CLASSES:
        raise SiteError(
            f"{where} holds films of {len(present)} class(es) only{note}; a site set needs at least "
            f"{MIN_CLASSES} classes of {MIN_FILMS_PER_CLASS} films or more. Nothing was changed."
        )
    short = [f"{name} ({n})" for name, n in counts.items() if (n or every_class) and n < MIN_FILMS_PER_CLASS]
    if short:
        raise SiteError(
            f"{where} has fewer than {MIN_FILMS_PER_CLASS} films of {', '.join(short)}{note}. Nothing was changed."
        )


def data_hash(frame: pd.DataFrame) -> str:
    """SHA-256 over the sorted (relative name, label, patient, file content hash) rows: identifies the films."""
    digest = hashlib.sha256()
    for row in frame.sort_values("name").itertuples(index=False):
        content = hashlib.sha256(Path(row.path).read_bytes()).hexdigest()
        digest.update(f"{row.name}\t{row.label}\t{row.patient_id}\t{content}\n".encode())
    return digest.hexdigest()
