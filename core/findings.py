"""A reader's finding on a study, and the site's labelled set that findings grow.

When a reader records a finding (agrees with the call, corrects it to a class, or finds the film not assessable),
the study is stored — de-identified — in the site's set under ``core.settings.site_data_dir()/<site>/``, in the
layout ``train.site`` reads: class folders (``COVID19/``, ``NORMAL/``, ``PNEUMONIA/``) and a ``manifest.csv`` whose
patient ids are hashes of the DICOM PatientID (taken before it is removed; one per file for raster images).
Every finding, not-assessable ones included, is logged with who and when in ``findings.csv``. A DICOM file is
stored without its identifying attributes (pydicom: private tags removed, patient, staff, institution and
accession attributes blanked or removed, new UIDs) — DICOM is recognised by its content, with or without the
preamble; a raster file as a new PNG of its pixels alone (no EXIF, text chunks or comments; text burnt into the
pixels stays). What cannot be de-identified or re-encoded is refused, never stored as it came.
"""

import csv
import hashlib
import io
from datetime import UTC, datetime
from pathlib import Path

import filelock

from core import settings
from core.imaging import is_dicom
from core.site import SiteError, checked_site_name

__all__ = [
    "FINDINGS",
    "FindingError",
    "record_finding",
    "deidentified_dicom",
    "clean_raster",
    "site_counts",
    "CLASS_FOLDERS",
]

FINDINGS = ("agrees", "corrected", "not assessable")
CLASS_FOLDERS = {"COVID-19": "COVID19", "Normal": "NORMAL", "Pneumonia": "PNEUMONIA"}
MANIFEST = "manifest.csv"
FINDINGS_LOG = "findings.csv"
MANIFEST_COLUMNS = ("path", "label", "patient_id", "source", "population")
LOG_COLUMNS = ("time", "reader", "study_sha256", "model_version", "model_call", "finding", "label", "stored")
LOCK_TIMEOUT_S = 30
BLANKED = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyID", "ReferringPhysicianName")
REMOVED = (
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "MedicalRecordLocator",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "RequestAttributesSequence",
    "PatientComments",
    "AdditionalPatientHistory",
    "ReferencedPatientSequence",
)
NEW_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class FindingError(ValueError):
    """A finding that cannot be recorded; nothing was stored. The message says why."""


def _dicom(data: bytes):
    """The DICOM dataset of ``data`` when it is DICOM by its content (with or without the preamble, as the app
    reads it), else None (a raster upload); ``FindingError`` when it is DICOM that pydicom cannot parse."""
    import pydicom

    if not is_dicom(data):
        return None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        for _ in dataset.iterall():  # parse every element now: a damaged one fails here, not half-way through
            pass
    except Exception as error:  # whatever a damaged file makes pydicom raise
        raise FindingError(
            f"The DICOM file could not be read to de-identify it ({error}); nothing was stored."
        ) from None
    if "PixelData" not in dataset:
        raise FindingError("The DICOM file holds no image (it may be cut short); nothing was stored.")
    return dataset


def clean_raster(data: bytes) -> bytes:
    """A raster upload's pixels, upright, as a new PNG with no metadata (EXIF, PNG text chunks, ICC profile and
    comments stay behind); ``FindingError`` when it cannot be decoded: never a verbatim copy."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened)
            if image.mode not in ("1", "L", "I;16", "I", "RGB"):
                image = image.convert("RGB")
            pixels = Image.frombytes(image.mode, image.size, image.tobytes())  # pixels only, no .info
    except Exception as error:  # whatever a damaged file makes Pillow raise
        raise FindingError(
            f"The image could not be re-encoded without its metadata ({error}); nothing was stored."
        ) from None
    stream = io.BytesIO()
    pixels.save(stream, format="PNG")
    return stream.getvalue()


def deidentified_dicom(dataset) -> bytes:
    """``dataset`` without its identifying attributes, as DICOM file bytes (the dataset is changed in place)."""
    from pydicom.uid import generate_uid

    dataset.remove_private_tags()
    for keyword in REMOVED:
        if keyword in dataset:
            delattr(dataset, keyword)
    for keyword in BLANKED:
        if keyword in dataset:
            setattr(dataset, keyword, "")
    for keyword in NEW_UIDS:
        if keyword in dataset:
            setattr(dataset, keyword, generate_uid())
    if getattr(dataset, "file_meta", None) is not None and "SOPInstanceUID" in dataset:
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = "CXR Triage: identifying attributes removed"  # LO: at most 64 characters
    stream = io.BytesIO()
    dataset.save_as(stream, enforce_file_format=True)  # a standard file: preamble and file meta, whatever came in
    return stream.getvalue()


def record_finding(
    site: str,
    data: bytes,
    name: str,
    model_version: str,
    model_call: str,
    finding: str,
    reader: str,
    corrected_to=None,
    class_names=tuple(CLASS_FOLDERS),
    root=None,
):
    """Log the finding and, unless the film is not assessable, store the study in the site's set under the class
    the reader gave (the model's call when the reader agrees). A second finding on the same study replaces the
    first. Returns the stored file's path relative to the site's folder, or None. ``FindingError`` for a finding
    that cannot be recorded; ``SiteError`` for a bad site name."""
    site = checked_site_name(site)
    reader = " ".join(str(reader or "").split())
    if not reader:
        raise FindingError("Enter your name: a finding records who made it.")
    if finding not in FINDINGS:
        raise FindingError(f"A finding is one of {', '.join(FINDINGS)}.")
    label = model_call if finding == "agrees" else corrected_to
    if finding != "not assessable" and (label not in class_names or label not in CLASS_FOLDERS):
        raise FindingError(f"Choose the class the film shows: one of {', '.join(class_names)}.")
    folder = (Path(root) if root else settings.site_data_dir()) / site
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    try:
        with filelock.FileLock(folder / ".findings.lock", timeout=LOCK_TIMEOUT_S):
            stored = None
            if finding != "not assessable":
                stored = _store(folder, data, name, digest, label, site)
            else:
                _forget(folder, digest)
            _append(
                folder / FINDINGS_LOG,
                LOG_COLUMNS,
                {
                    "time": datetime.now(UTC).isoformat(timespec="seconds"),
                    "reader": reader,
                    "study_sha256": digest,
                    "model_version": model_version,
                    "model_call": model_call,
                    "finding": finding,
                    "label": label or "",
                    "stored": stored or "",
                },
            )
    except filelock.Timeout:
        raise FindingError("The site's set is being written by another reader; try again in a moment.") from None
    return stored


def _store(folder: Path, data: bytes, name: str, digest: str, label: str, site: str) -> str:
    dataset = _dicom(data)
    if dataset is not None:
        patient = str(dataset.get("PatientID", "") or "").strip()
        patient_id = f"dicom:{hashlib.sha256(patient.encode()).hexdigest()[:16]}" if patient else f"file:{digest[:16]}"
        content, suffix = deidentified_dicom(dataset), ".dcm"
    else:
        patient_id, content, suffix = f"file:{digest[:16]}", clean_raster(data), ".png"
    _forget(folder, digest)
    relative = f"{CLASS_FOLDERS[label]}/{digest[:16]}{suffix}"
    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
    (folder / relative).write_bytes(content)
    _append(
        folder / MANIFEST,
        MANIFEST_COLUMNS,
        {"path": relative, "label": label, "patient_id": patient_id, "source": site, "population": "unknown"},
    )
    return relative


def _forget(folder: Path, digest: str) -> None:
    """Remove an earlier stored copy of the study (any class) and its manifest row."""
    rows = _rows(folder / MANIFEST)
    kept = [row for row in rows if not Path(row["path"]).name.startswith(digest[:16])]
    for row in rows:
        if row not in kept:
            (folder / row["path"]).unlink(missing_ok=True)
    if len(kept) != len(rows):
        _write(folder / MANIFEST, MANIFEST_COLUMNS, kept)


def _rows(path: Path) -> list:
    if not path.is_file():
        return []
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def _write(path: Path, columns, rows) -> None:
    from core import atomic

    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, stream.getvalue())


def _append(path: Path, columns, row: dict) -> None:
    _write(path, columns, [*_rows(path), row])


def site_counts(site: str, root=None) -> dict:
    """Films per class in the site's set ({class: n}); zeros when it has none yet."""
    try:
        site = checked_site_name(site)
    except SiteError:
        return {name: 0 for name in CLASS_FOLDERS}
    rows = _rows((Path(root) if root else settings.site_data_dir()) / site / MANIFEST)
    return {name: sum(row["label"] == name for row in rows) for name in CLASS_FOLDERS}
