"""The reader's worklist: studies (decoded uploads) with their readings, sorted by priority; the per-session cap;
reading several files or a zip of a folder safely; and the one record of a reading that the CSV export and
``python -m core predict --json`` share.

A study keeps what the reader needs again and nothing larger: the compressed upload bytes (re-decoded only for a
full-resolution download or report), an 8-bit display copy, a thumbnail and the model's 80 × 80 input. Never the
full-resolution float32 pixels (a 3368 × 2800 film is 38 MB of them).
"""

import csv
import io
import json
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath

import numpy as np

from core import diagnosis, overlay
from core.card import ModelCard
from core.flags import UNCERTAIN_CALL
from core.imaging import UnusableImageError, read_image
from core.site import configured_site, site_notice, site_status

__all__ = [
    "UploadError",
    "Study",
    "now",
    "decoded_study",
    "model_input",
    "look",
    "assessment",
    "study_record",
    "full_resolution_png",
    "point_key",
    "describe_point",
    "record",
    "csv_row",
    "to_csv",
    "priority",
    "shown_call",
    "files_of_upload",
    "wanted_member",
    "read_member",
    "over_cap",
    "duplicate_message",
    "table_rows",
    "call_rank",
    "filtered",
    "studies_title",
]

MAX_STUDIES = 60
MAX_SESSION_BYTES = 300 * 1024**2  # upload bytes held by one browser session
MAX_ZIP_MEMBERS = 200
MAX_ZIP_BYTES = 500 * 1024**2  # unpacked, in memory
ZIP_SIGNATURE = b"PK\x03\x04"
SKIPPED_PARTS = ("__MACOSX",)
POSITIVE_CLASS = "COVID-19"
PRIORITY = ("called COVID-19", "uncertain: read without the model", "other abnormal", "Normal", "unreadable")
CSV_FIXED = ("file", "prediction", "trust", "flags", "warnings", "model_version", "operating_point", "time")


class UploadError(ValueError):
    """An upload that cannot be taken; the message says why."""


@dataclass
class Study:
    """One upload: its bytes, what was decoded from it (or why it could not be), and its readings so far."""

    name: str
    digest: str
    data: bytes
    error: str | None = None
    display: np.ndarray | None = None  # 8-bit display copy
    thumbnail: bytes = b""
    hints: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    full_shape: tuple = ()
    value_range: tuple | None = None  # the file's own values shown black and white (window/level's units)
    presets: dict = field(default_factory=dict)  # window preset → (level, width) in the display copy's greys
    inputs: dict = field(default_factory=dict)  # version → model input (S, S, 3) float32
    looks: dict = field(default_factory=dict)  # (version, operating point, layer, class) → (Look, ms)
    assessments: dict = field(default_factory=dict)  # (version, operating point) → (Assessment, ms)
    decode_ms: float = 0.0
    read_at: str = ""

    @property
    def nbytes(self) -> int:
        """What the study holds in memory (upload bytes, display copy, thumbnail, model inputs), roughly."""
        arrays = [self.display] if self.display is not None else []
        return len(self.data) + len(self.thumbnail) + sum(a.nbytes for a in [*arrays, *self.inputs.values()])


def now() -> str:
    """The time of a reading, as ISO 8601 UTC to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def decoded_study(name: str, data: bytes, digest: str, predictor) -> Study:
    """Decode an upload once into a ``Study`` (an unusable file keeps its reader-facing message). The
    full-resolution pixels are dropped once the display copy and the model input are made."""
    start = time.perf_counter()
    try:
        radiograph = read_image(data)
    except UnusableImageError as error:
        return Study(name, digest, data, error=str(error), read_at=now())
    display = overlay.display_copy(radiograph.pixels)
    study = Study(
        name,
        digest,
        data,
        display=display,
        thumbnail=overlay.thumbnail(display),
        hints=radiograph.hints,
        metadata=radiograph.metadata,
        full_shape=radiograph.pixels.shape,
        value_range=radiograph.value_range,
        presets={name: overlay.window_for(display, name) for name in overlay.PRESETS},
        inputs={predictor.version: predictor.preprocess(radiograph.pixels)},
        read_at=now(),
    )
    study.decode_ms = (time.perf_counter() - start) * 1000.0
    return study


def model_input(study: Study, predictor) -> np.ndarray:
    """The study's input for ``predictor``'s version (another version may preprocess differently: re-decoded)."""
    if predictor.version not in study.inputs:
        study.inputs[predictor.version] = predictor.preprocess(read_image(study.data).pixels)
    return study.inputs[predictor.version]


def look(study: Study, predictor, card: ModelCard, layer=None, explained_class=None) -> tuple:
    """(``core.diagnosis.Look``, ms) of the study for this version, operating point, layer and class (default:
    the card's layer, the called class), computed once."""
    layer = layer or card.gradcam_layer
    key = (predictor.version, point_key(card), layer, explained_class)
    if key not in study.looks:
        start = time.perf_counter()
        (result,) = diagnosis.look_batch(
            predictor, model_input(study, predictor)[np.newaxis], card, layer, explained_class
        )
        study.looks[key] = (result, (time.perf_counter() - start) * 1000.0)
    return study.looks[key]


def assessment(study: Study, predictor, card: ModelCard) -> tuple:
    """(flags ``Assessment``, ms) of the study for this version and operating point, computed once (the flags
    do not depend on the layer or the class explained)."""
    key = (predictor.version, point_key(card))
    if key not in study.assessments:
        first_look, _ = look(study, predictor, card)
        start = time.perf_counter()
        (result,) = diagnosis.assess_batch(
            predictor, [first_look], model_input(study, predictor)[np.newaxis], [study.hints], card
        )
        study.assessments[key] = (result, (time.perf_counter() - start) * 1000.0)
    return study.assessments[key]


def study_record(study: Study, predictor, card: ModelCard) -> dict:
    """The study's ``record`` (as ``predict --json`` gives it for the same file)."""
    called, _ = look(study, predictor, card)
    flags, _ = assessment(study, predictor, card)
    return record(
        study.name, called.probabilities, predictor.class_names, called.decision.label, flags, card, study.read_at
    )


def full_resolution_png(
    study: Study,
    predictor,
    card: ModelCard,
    method: str,
    layer=None,
    explained_class=None,
    colormap=overlay.DEFAULT_COLORMAP,
    opacity=overlay.DEFAULT_OPACITY,
    percentile=overlay.DEFAULT_PERCENTILE,
) -> bytes:
    """The overlay at full resolution as a PNG with its colour scale, re-decoded from the upload's bytes (only
    for a download: the study keeps no full-resolution pixels)."""
    shown, _ = look(study, predictor, card, layer, explained_class)
    return overlay.overlay_png(read_image(study.data).pixels, shown.maps[method], colormap, opacity, percentile)


def point_key(card: ModelCard) -> str:
    """The operating point as a key: a saved change makes new readings."""
    return json.dumps(card.operating_point, sort_keys=True)


def describe_point(card: ModelCard) -> str:
    """The operating point in words, e.g. "COVID-19 at p ≥ 0.0553"."""
    point = card.operating_point
    if not point:
        return "none (most probable class)"
    score = "1 − p(Normal)" if point["positive_class"] == "abnormal" else "p"
    return f"{point['positive_class']} at {score} ≥ {float(point['threshold']):.4g}"


def record(file: str, probabilities, class_names, label: str, assessment, card: ModelCard, when: str) -> dict:
    """One reading as ``predict --json`` prints it and the worklist CSV exports it."""
    return {
        "file": file,
        "probabilities": {n: round(float(p), 6) for n, p in zip(class_names, probabilities)},
        "prediction": label,
        "trust": "uncertain" if assessment.out_of_depth else "ok",
        "flags": list(assessment.flags),
        "warnings": list(assessment.warnings),
        "model_version": card.version,
        "operating_point": describe_point(card),
        "site": site_status(card, configured_site()),
        "time": when,
    }


def csv_row(entry: dict) -> dict:
    """A ``record`` flattened for CSV: a ``p_<class>`` column per class, lists joined."""
    row = {"file": entry["file"]}
    row.update({f"p_{name}": f"{p:.6f}" for name, p in entry["probabilities"].items()})
    row.update({key: entry[key] for key in CSV_FIXED[1:]})
    row["flags"] = ";".join(entry["flags"])
    row["warnings"] = " | ".join(entry["warnings"])
    row["site"] = site_notice(entry["site"])
    return row


def to_csv(entries) -> bytes:
    """The worklist's records as CSV (UTF-8)."""
    rows = [csv_row(entry) for entry in entries]
    if not rows:
        return b""
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return stream.getvalue().encode("utf-8")


def priority(label: str, out_of_depth: bool, error=False) -> int:
    """The rank of a study in the worklist (0 first; see ``PRIORITY``)."""
    if error:
        return 4
    if out_of_depth:
        return 1
    if label == POSITIVE_CLASS:
        return 0
    return 3 if label == "Normal" else 2


def shown_call(label: str, out_of_depth: bool) -> str:
    return UNCERTAIN_CALL if out_of_depth else label


def files_of_upload(name: str, data: bytes) -> list:
    """The (name, bytes) files an upload holds: itself, or a zip's files (a folder zipped), read in memory with
    caps on their number and size; names with ``..`` or an absolute path, links and encrypted members refused,
    hidden files and ``__MACOSX`` skipped. Raises ``UploadError``."""
    if not data.startswith(ZIP_SIGNATURE):
        return [(name, data)]
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [info for info in archive.infolist() if wanted_member(info)]
    except zipfile.BadZipFile as error:
        raise UploadError(f"{name}: the zip archive is damaged ({error}).") from error
    if len(members) > MAX_ZIP_MEMBERS:
        raise UploadError(f"{name} holds {len(members)} files; at most {MAX_ZIP_MEMBERS} are read from one zip.")
    if sum(info.file_size for info in members) > MAX_ZIP_BYTES:
        raise UploadError(f"{name} unpacks to more than {MAX_ZIP_BYTES // 1024**2} MB; please send fewer files.")
    if not members:
        raise UploadError(f"{name} holds no files.")
    return [(f"{name}/{info.filename}", read_member(archive, info, name)) for info in members]


def wanted_member(info: zipfile.ZipInfo) -> bool:
    """Whether a zip member is a file to read; raises ``UploadError`` for one that must not be."""
    path = PurePosixPath(info.filename.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (info.external_attr >> 16) & 0o170000 == 0o120000:
        raise UploadError(f"The zip was refused: '{info.filename}' points outside it or is a link.")
    if info.flag_bits & 0x1:
        raise UploadError(f"The zip was refused: '{info.filename}' is encrypted.")
    hidden = any(part.startswith(".") or part in SKIPPED_PARTS for part in path.parts)
    return not info.is_dir() and not hidden


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> bytes:
    """A member's bytes, never more than its header declares (a lying header is refused)."""
    try:
        with archive.open(info) as stream:
            data = stream.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise UploadError(f"The zip was refused: '{info.filename}' in {name} cannot be read ({error}).") from error
    if len(data) > info.file_size:
        raise UploadError(f"The zip was refused: '{info.filename}' in {name} is larger than its header says.")
    return data


def over_cap(studies: dict, new_bytes: int, new_count: int) -> str:
    """The message why ``new_count`` more studies of ``new_bytes`` do not fit the session, or ''."""
    count = len(studies) + new_count
    held = sum(len(study.data) for study in studies.values()) + new_bytes
    if count <= MAX_STUDIES and held <= MAX_SESSION_BYTES:
        return ""
    return (
        f"This session can hold {MAX_STUDIES} studies and {MAX_SESSION_BYTES // 1024**2} MB of files; these "
        f"uploads would make {count} studies and {held / 1024**2:.0f} MB. Clear studies (or remove some) first."
    )


def duplicate_message(name: str, first: str) -> str:
    """What the reader is told when ``name`` holds the same bytes as ``first``, already in the worklist."""
    if name == first:
        return f"{name} is already in the worklist; it was not added again."
    return f"{name} is the same file as {first}, already in the worklist; it was not added again."


def _p_positive(called, predictor) -> float:
    return float(called.probabilities[list(predictor.class_names).index(POSITIVE_CLASS)])


def table_rows(studies: dict, predictor, card: ModelCard) -> list:
    """The worklist's rows (dicts), in its order: by ``priority``, then p(COVID-19) descending, then name.
    An unreadable study's row has no probability and says why in ``flags``."""
    rows = []
    for digest, study in studies.items():
        row = {"digest": digest, "file": study.name, "thumbnail": study.thumbnail or None}
        if study.error:
            row.update(rank=priority("", False, error=True), call="unreadable", p=None, flags=study.error)
        else:
            called, _ = look(study, predictor, card)
            flags, _ = assessment(study, predictor, card)
            row.update(
                rank=priority(called.decision.label, flags.out_of_depth),
                call=shown_call(called.decision.label, flags.out_of_depth),
                p=_p_positive(called, predictor),
                flags=", ".join(flags.flags),
            )
        rows.append(row)
    rows.sort(key=lambda row: (row["rank"], -(row["p"] if row["p"] is not None else -1.0), row["file"]))
    return rows


def call_rank(study: Study, predictor, card: ModelCard) -> tuple:
    """Where the study's call alone puts it in the worklist (``priority`` without the flags, then p(COVID-19)
    descending): to open the most urgent new upload before its flags are computed. Unreadable studies last."""
    if study.error:
        return (priority("", False, error=True), 0.0)
    called, _ = look(study, predictor, card)
    return (priority(called.decision.label, False), -_p_positive(called, predictor))


def filtered(rows: list, groups, text: str) -> list:
    """The rows in the chosen priority ``groups`` whose file name holds ``text`` (any case). No group chosen
    means every group: a filter never hides the whole worklist by accident."""
    wanted = {PRIORITY.index(group) for group in groups} or set(range(len(PRIORITY)))
    needle = text.strip().lower()
    return [row for row in rows if row["rank"] in wanted and needle in row["file"].lower()]


def studies_title(count: int) -> str:
    return f"Worklist ({count} {'study' if count == 1 else 'studies'})"
