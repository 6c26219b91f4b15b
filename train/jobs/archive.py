"""Zip archives in and out of the app: a safe extractor for uploaded folder-per-class datasets, and the export
of a model version as a TF SavedModel (for TF Serving), zipped for download or written under the exports root
(``$CXR_EXPORT_DIR``, default ``exports/``) and nowhere else.

Every member of an uploaded zip is checked before anything is written: no absolute paths, no ``..``, no
symbolic links, no encrypted members, at most ``MAX_FILES`` files and ``MAX_TOTAL_BYTES`` uncompressed (and no
more than the free disk space). Members are written into a hidden partial folder that is renamed into place
once complete, so a dataset folder is never half there.
"""

import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from core import registry
from core.settings import export_dir

__all__ = [
    "ArchiveError",
    "ExportPathError",
    "checked_members",
    "dataset_folder",
    "extract_dataset_zip",
    "zip_folder",
    "export_target",
    "export_saved_model",
    "savedmodel_zip",
    "write_saved_model",
]

MAX_TOTAL_BYTES = 4 * 1024**3
MAX_FILES = 50_000
COPY_CHUNK_BYTES = 1024 * 1024
SKIPPED_TOP_FOLDERS = ("__MACOSX",)
SERVING_CARD = "assets.extra/card.json"
EXPORT_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SERVING_ENDPOINT = "serve"  # also exported as the default signature, "serving_default"
SERVING_INPUT = "image"
SERVING_OUTPUT = "probabilities"


class ArchiveError(ValueError):
    """The archive cannot be used; the message says why."""


class ExportPathError(ArchiveError):
    """An export folder name that would write outside the exports root; the message says why."""


def _member_problem(info: zipfile.ZipInfo) -> str:
    """Why this member may not be extracted ('' when it may)."""
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "has an absolute path"
    if "\\" in name:
        return "uses backslashes in its path"
    if ".." in PurePosixPath(name).parts:
        return "points outside the archive ('..')"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return ""


def checked_members(archive: zipfile.ZipFile, max_bytes=MAX_TOTAL_BYTES, max_files=MAX_FILES) -> list:
    """The file members to extract, after checking every member and the totals (raises ``ArchiveError``)."""
    members = []
    for info in archive.infolist():
        problem = _member_problem(info)
        if problem:
            raise ArchiveError(f"The archive was refused: '{info.filename}' {problem}.")
        if info.is_dir() or PurePosixPath(info.filename).parts[0] in SKIPPED_TOP_FOLDERS:
            continue
        members.append(info)
    if len(members) > max_files:
        raise ArchiveError(f"The archive holds {len(members):,} files; at most {max_files:,} are accepted.")
    total = sum(info.file_size for info in members)
    if total > max_bytes:
        raise ArchiveError(
            f"The archive unpacks to {total / 1e9:.2f} GB; at most {max_bytes / 1e9:.2f} GB is accepted."
        )
    if not members:
        raise ArchiveError("The archive is empty.")
    return members


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Write one member, never more bytes than its header declares (a lying header is refused)."""
    written = 0
    with archive.open(info) as source, open(target, "wb") as sink:
        while chunk := source.read(COPY_CHUNK_BYTES):
            written += len(chunk)
            if written > info.file_size:
                raise ArchiveError(f"The archive was refused: '{info.filename}' is larger than its header says.")
            sink.write(chunk)


def dataset_folder(extracted: Path) -> Path:
    """The folder holding the class folders: ``extracted`` itself, or its only sub-folder when the zip
    wrapped everything in one top-level folder."""
    children = [p for p in extracted.iterdir() if not p.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return extracted


def extract_dataset_zip(source, destination: Path, max_bytes=MAX_TOTAL_BYTES, max_files=MAX_FILES) -> Path:
    """Extract the zip ``source`` (path or file object) into the new folder ``destination``; return the
    dataset folder inside it (see ``dataset_folder``). Raises ``ArchiveError`` and leaves nothing behind."""
    destination = Path(destination)
    if destination.exists():
        raise ArchiveError(f"{destination.name} already exists; choose another name.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        with zipfile.ZipFile(source) as archive:
            members = checked_members(archive, max_bytes, max_files)
            needed = sum(info.file_size for info in members)
            if needed > shutil.disk_usage(destination.parent).free:
                raise ArchiveError(f"Not enough free disk space to unpack {needed / 1e9:.2f} GB.")
            shutil.rmtree(partial, ignore_errors=True)
            for info in members:
                target = partial.joinpath(*PurePosixPath(info.filename).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                _copy_member(archive, info, target)
        os.replace(partial, destination)
    except zipfile.BadZipFile as error:
        raise ArchiveError(f"This file is not a readable zip archive: {error}.") from error
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return dataset_folder(destination)


def zip_folder(folder: Path) -> bytes:
    """The folder's files as an in-memory zip whose entries start with the folder's name."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                archive.write(path, Path(folder.name) / path.relative_to(folder))
    return buffer.getvalue()


def export_target(name) -> Path:
    """The new export folder ``name`` under the exports root (``core.settings.export_dir()``), symlinks resolved.

    ``name`` is a relative folder name, possibly nested (TF Serving wants ``<model>/<number>``), of letters,
    digits, ``-``, ``_`` and ``.``. An absolute path, ``..``, a hidden or otherwise unsafe part, or a name whose
    resolved path leaves the exports root (through a symbolic link) raises ``ExportPathError``: a user of the
    app may write nowhere else on the server. The messages never echo the text typed, nor a server path."""
    text = str(name).strip()
    if not text:
        raise ExportPathError("Give the export folder a name.")
    if text.startswith(("/", "~", "\\")) or re.match(r"[A-Za-z]:", text):
        raise ExportPathError("Give a folder name inside the exports folder (e.g. v2/1), not a path on the server.")
    parts = text.split("/")
    if ".." in parts:
        raise ExportPathError("The export folder name may not contain '..'; give a folder inside the exports folder.")
    if not all(EXPORT_NAME_PART.fullmatch(part) for part in parts):
        raise ExportPathError(
            "The export folder name may hold only letters, digits, '-', '_' and '.' (not at the "
            "start), with '/' between sub-folders (e.g. v2/1)."
        )
    base = export_dir()
    target = (base / text).resolve()
    if not target.is_relative_to(base):
        raise ExportPathError(
            "That name leads outside the exports folder (through a symbolic link); choose another name."
        )
    return target


def export_saved_model(version: str, name, root=None) -> Path:
    """Export ``version`` as a TF SavedModel into the new folder ``name`` under the exports root (see
    ``export_target``) and return that folder.

    The SavedModel is written into a hidden partial folder beside the target and renamed into place, so the
    target is never half written and an existing non-empty folder is never overwritten."""
    target = export_target(name)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ArchiveError(f"The export folder '{name}' already exists and is not empty; choose a new name.")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        write_saved_model(version, partial / "model", root)
        try:
            os.rename(partial / "model", target)  # onto a missing or empty folder only: never clobbers
        except OSError as error:
            raise ArchiveError(
                f"The export folder '{name}' was filled by someone else meanwhile; choose a new name."
            ) from error
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def savedmodel_zip(version: str, root=None) -> bytes:
    """``version`` exported as a SavedModel, zipped in memory under the folder name ``<version>`` (the download
    for a TF Serving host: nothing is left on the server)."""
    with tempfile.TemporaryDirectory() as scratch:
        return zip_folder(write_saved_model(version, Path(scratch) / version, root))


def write_saved_model(version: str, destination: Path, root=None) -> Path:
    """Write ``version`` as a TF SavedModel into the new folder ``destination`` (unchecked: callers choose
    where) and return it.

    The serving signature ``serving_default`` maps ``image``, a float32 batch (N, S, S, 3) in [0, 1] made by
    ``core.preprocess.to_model_input`` with the version's card (S = its input size), to ``probabilities``: the
    *calibrated* probabilities the app shows (logits / temperature → softmax), in the card's class order. The
    card is copied to ``assets.extra/card.json``."""
    import keras
    import tensorflow as tf

    card = registry.load_card(version, root)
    model = registry.load_model(version, root)
    logits = model.get_layer("logits").output
    scaled = keras.layers.Rescaling(1.0 / float(card.temperature or 1.0), name="temperature")(logits)
    probabilities = keras.layers.Activation("softmax", dtype="float32", name="calibrated_probabilities")(scaled)
    serving = keras.Model(model.inputs[0], probabilities, name=f"{model.name}_serving")
    size = int(card.input_size)
    archive = keras.export.ExportArchive()
    archive.track(serving)
    archive.add_endpoint(
        SERVING_ENDPOINT,
        lambda image: {SERVING_OUTPUT: serving(image, training=False)},
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32, name=SERVING_INPUT)],
    )
    archive.write_out(str(destination), verbose=False)
    (destination / SERVING_CARD).parent.mkdir(exist_ok=True)
    card.save(destination / SERVING_CARD)
    return destination
