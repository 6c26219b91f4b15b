"""Zip archives in and out of the app: a safe extractor for uploaded folder-per-class datasets, and the export
of a model version as a TF SavedModel (for TF Serving) zipped for download.

Every member of an uploaded zip is checked before anything is written: no absolute paths, no ``..``, no
symbolic links, no encrypted members, at most ``MAX_FILES`` files and ``MAX_TOTAL_BYTES`` uncompressed (and no
more than the free disk space). Members are written into a hidden partial folder that is renamed into place
once complete, so a dataset folder is never half there.
"""

import io
import json
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from core import registry

MAX_TOTAL_BYTES = 4 * 1024**3
MAX_FILES = 50_000
COPY_CHUNK_BYTES = 1024 * 1024
SKIPPED_TOP_FOLDERS = ("__MACOSX",)
SERVING_CARD = "assets.extra/card.json"


class ArchiveError(ValueError):
    """The archive cannot be used; the message says why."""


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
        raise ArchiveError(f"The archive unpacks to {total / 1e9:.2f} GB; at most {max_bytes / 1e9:.2f} GB is accepted.")
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


def export_saved_model(version: str, destination: Path, root=None) -> Path:
    """Export ``version`` as a TF SavedModel in the new folder ``destination`` for TF Serving.

    The served signature maps a float32 batch (N, S, S, 3) in [0, 1], preprocessed as the card says, to the
    *calibrated* probabilities the app shows (logits / temperature → softmax). The card is copied to
    ``assets.extra/card.json``."""
    import keras

    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()):
        raise ArchiveError(f"{destination} exists and is not empty; choose a new folder.")
    card = registry.load_card(version, root)
    model = registry.load_model(version, root)
    logits = model.get_layer("logits").output
    scaled = keras.layers.Rescaling(1.0 / float(card.get("temperature", 1.0)), name="temperature")(logits)
    probabilities = keras.layers.Activation("softmax", dtype="float32", name="calibrated_probabilities")(scaled)
    keras.Model(model.inputs[0], probabilities, name=f"{model.name}_serving").export(str(destination), verbose=False)
    (destination / SERVING_CARD).parent.mkdir(exist_ok=True)
    (destination / SERVING_CARD).write_text(json.dumps(card, indent=2) + "\n")
    return destination
