"""Reading radiographs from bytes or files into greyscale pixels.

Every failure to use a file raises ``UnusableImageError`` whose message is meant for a radiologist. The file's
content decides how it is read, never its name. DICOM goes through pydicom (modality LUT, VOI LUT or window,
BitsStored, MONOCHROME1 inverted, compressed syntaxes via the pylibjpeg plugins). JPEG, PNG, BMP, TIFF, WebP and
GIF are decoded by OpenCV, which applies the EXIF orientation and converts colour to luminance, after their
header (JPEG: read here; others: Pillow's lazy open) has passed the size checks: nothing is decoded before its
declared size is known to be safe. Images with transparency are composited onto black by Pillow, in 8 bits.
"""

import io
import os
import struct
from dataclasses import dataclass, field

import cv2
import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

MIN_SIDE_PX = 64  # below this a file cannot be a radiograph
# Below this it is a thumbnail: accepted, with a hint. The pool's own images are 224–320 px, so a size the model
# was trained on never raises it.
SMALL_SIDE_PX = 160
MAX_PIXELS = 80_000_000  # declared sizes above this are refused before decoding (decompression bombs)

ACCEPTED_FORMATS = "DICOM, PNG, JPEG, BMP, TIFF, WebP or GIF"
PILLOW_FORMATS = ("PNG", "BMP", "TIFF", "WEBP", "GIF")  # JPEG is recognised, and its header read, here
ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
CV2_GREY = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH  # luminance, 16-bit kept, EXIF orientation applied
FULL_RANGE_SCALES = {np.dtype(np.uint8): np.float32(1 / 255), np.dtype(np.uint16): np.float32(1 / 65535)}

DICOM_PREAMBLE_BYTES = 128
DICOM_MAGIC = b"DICM"
DICOM_BARE_STARTS = (b"\x02\x00", b"\x08\x00")  # a DICOM file without preamble starts with group 0002 or 0008
DICOM_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
IMAGE_SIGNATURES = (b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
NOT_IMAGE_SIGNATURES = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"\x1f\x8b", "a gzip-compressed archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
)
TEXT_SNIFF_BYTES = 2048
JPEG_SIGNATURE = b"\xff\xd8\xff"
JPEG_START_OF_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-SOF15 (not DHT, JPG, DAC)
JPEG_START_OF_SCAN = b"\xff\xda"
JPEG_END_OF_IMAGE = b"\xff\xd9"

PROJECTION_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
UNSTATED_MODALITIES = frozenset({"", "OT", "SC"})  # "other" and "secondary capture": accepted, with a hint
MODALITY_NAMES = {"CT": "a CT", "MR": "an MRI", "US": "an ultrasound", "NM": "a nuclear medicine", "PT": "a PET",
                  "MG": "a mammography", "XA": "an angiography", "RF": "a fluoroscopy", "PX": "a dental panoramic",
                  "IO": "an intra-oral dental", "ES": "an endoscopy", "SM": "a microscopy", "OP": "an ophthalmic",
                  "SR": "a structured report", "PR": "a presentation state", "KO": "a key object"}
GREYSCALE_PHOTOMETRICS = frozenset({"MONOCHROME1", "MONOCHROME2"})
FRONTAL_VIEWS = frozenset({"", "PA", "AP"})
DICOM_METADATA_KEYWORDS = (
    "Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
    "Rows", "Columns", "NumberOfFrames", "PresentationIntentType", "Manufacturer", "StudyDescription",
    "SeriesDescription", "PatientName", "PatientID", "PatientSex", "PatientAge", "PatientBirthDate", "StudyDate",
)
PATIENT_DISPLAY_LABELS = {"PatientName": "Patient name", "PatientID": "Patient ID", "PatientSex": "Sex",
                          "PatientAge": "Age", "PatientBirthDate": "Birth date", "StudyDate": "Study date",
                          "StudyDescription": "Study"}
DICOM_DATE_KEYWORDS = frozenset({"PatientBirthDate", "StudyDate"})
RUST_PANIC = "PanicException"

STATS_SIDE_PX = 64  # intensity hints are computed on a copy about this many pixels on its shorter side
STATS_LEVELS = 64
DOMINANT_LEVEL_FRACTION = 0.6
DARK_MEAN, BRIGHT_MEAN = 0.1, 0.9
LOW_STD = 0.04

DAMAGED = "The image file is damaged or incomplete (it may have been cut off while copying or uploading)."
BLANK = "The image is blank: every pixel has the same value."


class UnusableImageError(ValueError):
    """This file cannot be used as a chest radiograph; ``str(error)`` says why, in plain words."""


class Hint(str):
    """A warning text that carries its flag code (``core.flags.FLAGS``); compares and prints as its text."""

    def __new__(cls, text: str, flag: str):
        hint = super().__new__(cls, text)
        hint.flag = flag
        return hint


@dataclass
class Radiograph:
    """A decoded radiograph in display orientation.

    pixels: 2-D float32 in [0, 1] at full resolution (EXIF applied, MONOCHROME1 inverted, LUTs applied).
    format: the detected container ("PNG", "JPEG", "DICOM", ...).
    metadata: header fields of interest (DICOM tags); may hold patient data, so never show it unasked.
    hints: warnings that the image may be out of the model's scope (``Hint``: text with its flag code).
    """

    pixels: np.ndarray
    format: str
    metadata: dict = field(default_factory=dict)
    hints: list = field(default_factory=list)


def read_image(source) -> Radiograph:
    """Decode ``source`` (bytes or a path) into a ``Radiograph``; raise ``UnusableImageError`` if it cannot be
    used."""
    radiograph = _decode(source)
    radiograph.hints += _intensity_hints(radiograph.pixels)
    return radiograph


def read_grey(source) -> np.ndarray:
    """The greyscale pixels of ``source``: 2-D float32 in [0, 1], as ``read_image(source).pixels`` (without
    computing the intensity hints: training reads thousands of files)."""
    return _decode(source).pixels


def dicom_fields_for_display(metadata: dict) -> dict:
    """The patient and study fields of ``metadata`` as {label: plain text}, in a fixed order, empty ones left out.

    Names read "FAMILY, Given", dates "YYYY-MM-DD". The text is not escaped: whoever renders it must."""
    fields = {}
    for keyword, label in PATIENT_DISPLAY_LABELS.items():
        text = "".join(ch for ch in str(metadata.get(keyword, "")) if ch.isprintable()).strip()
        if keyword == "PatientName":
            text = _display_person_name(text)
        elif keyword in DICOM_DATE_KEYWORDS:
            text = _display_date(text)
        if text:
            fields[label] = text
    return fields


def _display_person_name(name: str) -> str:
    family, _, given = name.partition("^")
    given = " ".join(part for part in given.split("^") if part)
    return f"{family}, {given}" if family and given else family or given


def _display_date(date: str) -> str:
    return f"{date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 and date.isdigit() else date


def _decode(source) -> Radiograph:
    """Read, sniff and decode ``source``; every hint except the intensity ones."""
    data = _read_bytes(source)
    if not data:
        raise UnusableImageError("The file is empty.")
    if data[DICOM_PREAMBLE_BYTES:DICOM_PREAMBLE_BYTES + 4] == DICOM_MAGIC:
        return _read_dicom(data)
    if data.startswith(JPEG_SIGNATURE):
        return _read_jpeg(data)
    _refuse_known_non_images(data)
    header = _open_raster(data)
    return _read_unrecognised(data) if header is None else _read_raster(data, header)


def _read_bytes(source) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        with open(os.fspath(source), "rb") as handle:
            return handle.read()
    except OSError as error:
        raise UnusableImageError(f"The file could not be opened: {error.strerror or error}.") from error


# ---- raster images (JPEG, PNG, BMP, TIFF, WebP, GIF) ----

def _read_jpeg(data: bytes) -> Radiograph:
    """The common case (the whole training pool is JPEG). Its header is read here: Pillow's lazy open would add
    a sixth to the decoding time of a pool image."""
    size = _jpeg_size(data)
    if size is None or _jpeg_is_truncated(data):
        raise UnusableImageError(DAMAGED)
    hints = _check_dimensions(*size)
    return _raster_radiograph(_decode_grey(data), "JPEG", hints)


def _jpeg_size(data: bytes):
    """(width, height) from a JPEG's start-of-frame segment, or None when there is none."""
    position = 2
    while (position := data.find(b"\xff", position)) != -1 and position + 9 <= len(data):
        marker = data[position + 1]
        if marker in JPEG_START_OF_FRAME:
            height, width = struct.unpack_from(">HH", data, position + 5)
            return width, height
        if marker == 0xFF:  # fill byte before a marker
            position += 1
        else:
            position += 2 + struct.unpack_from(">H", data, position + 2)[0]
    return None


def _jpeg_is_truncated(data: bytes) -> bool:
    """A complete JPEG has no scan after its last end-of-image marker (0xFF 0xD9 cannot occur inside a scan)."""
    return data.find(JPEG_START_OF_SCAN, data.rfind(JPEG_END_OF_IMAGE) + 2) != -1


def _raster_radiograph(values: np.ndarray, image_format: str, hints: list) -> Radiograph:
    height, width = values.shape
    return Radiograph(pixels=_scale_raster(values), format=image_format,
                      metadata={"Rows": height, "Columns": width}, hints=hints)


def _refuse_known_non_images(data: bytes) -> None:
    for signature, description in NOT_IMAGE_SIGNATURES:
        if data.startswith(signature):
            raise UnusableImageError(f"This file is {description}, not an image. Please upload the radiograph "
                                     f"itself ({ACCEPTED_FORMATS}).")


def _open_raster(data: bytes):
    """Pillow's lazily opened image (headers read, no pixels decoded), or None when Pillow does not recognise
    the file. Refuses animations and stacks."""
    try:
        header = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
        frames = getattr(header, "n_frames", 1)
    except Image.DecompressionBombError as error:
        raise UnusableImageError(_too_large_message()) from error
    except UnidentifiedImageError:
        return None
    except Exception as error:  # whatever a damaged file makes Pillow raise
        raise UnusableImageError(DAMAGED) from error
    if frames > 1:
        raise UnusableImageError(f"This {header.format} holds {frames} frames or pages (an animation or a stack); "
                                 "please upload a single radiograph.")
    return header


def _read_raster(data: bytes, header) -> Radiograph:
    """A single-frame PNG, BMP, TIFF, WebP or GIF whose header Pillow has read."""
    hints = _check_dimensions(*header.size)
    if header.mode in ALPHA_MODES or "transparency" in header.info:
        values = _decode_onto_black(header)
    else:
        values = _decode_grey(data)
    return _raster_radiograph(values, header.format, hints)


def _decode_grey(data: bytes) -> np.ndarray:
    """OpenCV's decode: luminance, 8 or 16 bits (or float for float TIFF), EXIF orientation applied."""
    try:
        values = cv2.imdecode(np.frombuffer(data, np.uint8), CV2_GREY)
    except cv2.error as error:
        raise UnusableImageError(DAMAGED) from error
    if values is None:
        raise UnusableImageError(DAMAGED)
    return values


def _decode_onto_black(header) -> np.ndarray:
    """An image with transparency, as 8-bit luminance composited onto black (the background of a radiograph)."""
    try:
        rgba = ImageOps.exif_transpose(header).convert("RGBA")
    except Exception as error:  # whatever a damaged file makes Pillow raise
        raise UnusableImageError(DAMAGED) from error
    luminance = np.asarray(rgba.convert("L"), np.uint16)
    alpha = np.asarray(rgba.getchannel("A"), np.uint16)
    return ((luminance * alpha + 127) // 255).astype(np.uint8)


# ---- files Pillow does not recognise ----

def _read_unrecognised(data: bytes) -> Radiograph:
    """A file Pillow does not recognise: a DICOM file without preamble, or not an image at all."""
    if data.startswith(DICOM_BARE_STARTS):
        return _read_dicom(data)
    if _looks_like_text(data):
        raise UnusableImageError("This is a text file, not an image. Please upload the radiograph itself "
                                 f"({ACCEPTED_FORMATS}).")
    if data.startswith(IMAGE_SIGNATURES):
        raise UnusableImageError(DAMAGED)
    raise UnusableImageError(f"This file is not an image the app can read ({ACCEPTED_FORMATS} expected).")


def _looks_like_text(data: bytes) -> bool:
    text = data[:TEXT_SNIFF_BYTES].decode("utf-8", errors="replace")
    return text.count("\ufffd") <= 1 and all(ch.isprintable() or ch.isspace() for ch in text)


# ---- DICOM ----

def _read_dicom(data: bytes) -> Radiograph:
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        for _ in dataset.iterall():  # pydicom parses element values lazily: parse them all now
            pass
    except Exception as error:  # whatever a damaged file makes pydicom raise
        raise UnusableImageError(DAMAGED) from error
    if "PixelData" not in dataset and DICOM_PIXEL_DATA_TAG in data:  # pydicom drops pixel data cut off short
        raise UnusableImageError(DAMAGED)
    metadata = _dicom_metadata(dataset)
    _refuse_unusable_dicom(dataset, metadata)
    hints = _check_dimensions(metadata["Columns"], metadata["Rows"]) + _dicom_hints(metadata)
    values, voi_range = _apply_luts(_decode_first_frame(dataset), dataset)
    bounds = _value_bounds(values)
    pixels = _scale(values, *(voi_range or bounds))
    if metadata.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = 1.0 - pixels
    return Radiograph(pixels=pixels, format="DICOM", metadata=metadata, hints=hints)


def _dicom_metadata(dataset) -> dict:
    """The header fields of interest that the file fills, as plain str/int values."""
    metadata = {"TransferSyntax": _transfer_syntax(dataset).name}
    for keyword in DICOM_METADATA_KEYWORDS:
        value = dataset.get(keyword)
        if isinstance(value, MultiValue):
            value = "\\".join(str(item) for item in value)
        if isinstance(value, int):
            metadata[keyword] = int(value)
        elif value is not None and str(value).strip():
            metadata[keyword] = str(value).strip()
    return metadata


def _transfer_syntax(dataset):
    """The stated transfer syntax or, for a file without meta header, the encoding pydicom found."""
    stated = dataset.file_meta.get("TransferSyntaxUID")
    if isinstance(stated, pydicom.uid.UID) and stated:
        return stated
    implicit_vr, little_endian = dataset.original_encoding
    if implicit_vr:
        return pydicom.uid.ImplicitVRLittleEndian
    return pydicom.uid.ExplicitVRLittleEndian if little_endian else pydicom.uid.ExplicitVRBigEndian


def _metadata_text(metadata: dict, keyword: str) -> str:
    return str(metadata.get(keyword, "")).upper()


def _metadata_count(metadata: dict, keyword: str) -> int:
    """An integer field (Rows, Columns, NumberOfFrames); 0 when absent or malformed."""
    value = metadata.get(keyword, 0)
    return value if isinstance(value, int) else 0


def _refuse_unusable_dicom(dataset, metadata: dict) -> None:
    modality = _metadata_text(metadata, "Modality")
    if modality not in PROJECTION_MODALITIES | UNSTATED_MODALITIES:
        kind = MODALITY_NAMES.get(modality, f"a {modality}")
        raise UnusableImageError(f"This DICOM file is {kind} study (modality {modality}), not a projection "
                                 "radiograph; the model reads chest X-rays only.")
    if "PixelData" not in dataset or not _metadata_count(metadata, "Rows") or not _metadata_count(metadata, "Columns"):
        raise UnusableImageError("This DICOM file contains no image (it may be a report, a worklist or a "
                                 "directory file).")
    photometric = _metadata_text(metadata, "PhotometricInterpretation")
    if photometric not in GREYSCALE_PHOTOMETRICS or dataset.get("SamplesPerPixel", 1) != 1:
        raise UnusableImageError(f"This DICOM image is in colour ({photometric or 'unstated colour space'}), "
                                 "not a greyscale radiograph.")
    frames = _metadata_count(metadata, "NumberOfFrames")
    if frames > 1 and modality not in PROJECTION_MODALITIES:
        raise UnusableImageError(f"This DICOM file holds {frames} frames (a series or a cine loop), not a single "
                                 "radiograph.")


def _dicom_hints(metadata: dict) -> list:
    hints = []
    modality, view = _metadata_text(metadata, "Modality"), _metadata_text(metadata, "ViewPosition")
    body_part = _metadata_text(metadata, "BodyPartExamined")
    if modality in UNSTATED_MODALITIES:
        hints.append(Hint(f"The file does not say it is a radiograph (modality: {modality or 'not stated'}); "
                          "check that it is a chest X-ray.", "not_radiograph"))
    if view not in FRONTAL_VIEWS:
        hints.append(Hint(f"The file says the view is {view}, not frontal (PA or AP); the model was trained on "
                          "frontal chest radiographs.", "lateral_view"))
    if body_part not in ("", "CHEST"):
        hints.append(Hint(f"The file says the body part is {body_part}, not the chest.", "not_chest"))
    if _metadata_text(metadata, "PresentationIntentType") == "FOR PROCESSING":
        hints.append(Hint("This is raw detector data ('for processing'), not the image a radiologist would read.",
                          "raw_detector_data"))
    frames = _metadata_count(metadata, "NumberOfFrames")
    if frames > 1:
        hints.append(Hint(f"The file holds {frames} frames; only the first is used.", "multi_frame"))
    return hints


def _decode_first_frame(dataset) -> np.ndarray:
    """Frame 0 of the pixel data, unused high bits cleared (BitsStored), compressed syntaxes via plugins."""
    if not dataset.file_meta.get("TransferSyntaxUID"):
        dataset.file_meta.TransferSyntaxUID = _transfer_syntax(dataset)
    try:
        return pixel_array(dataset, index=0)
    except NotImplementedError as error:
        raise UnusableImageError(f"This DICOM image is compressed as '{_transfer_syntax(dataset).name}', which "
                                 "this app cannot decode.") from error
    except Exception as error:  # whatever damaged pixel data makes pydicom or a plugin raise
        raise UnusableImageError(DAMAGED) from error
    except BaseException as error:  # pylibjpeg-rle is written in Rust, whose panics derive from BaseException
        if type(error).__name__ != RUST_PANIC:
            raise
        raise UnusableImageError(DAMAGED) from error


def _apply_luts(stored: np.ndarray, dataset) -> tuple:
    """The modality LUT (or rescale) then the VOI LUT (or window) applied to ``stored``, as float32, and the
    range the VOI maps onto (None without VOI)."""
    try:
        values = apply_voi_lut(apply_modality_lut(stored, dataset), dataset).astype(np.float32)
        return values, _voi_output_range(dataset)
    except Exception as error:  # pydicom's refusal of a malformed rescale, window or LUT
        raise UnusableImageError("The DICOM file's grey-level settings (rescale, window or lookup table) are "
                                 "invalid.") from error


def _has_voi(dataset) -> bool:
    return bool(dataset.get("VOILUTSequence")) or ("WindowCenter" in dataset and "WindowWidth" in dataset)


def _voi_output_range(dataset):
    """The (low, high) that the VOI LUT or window maps the lowest and highest storable values onto, or None
    when the file has neither (then the image's own range is used)."""
    if not _has_voi(dataset):
        return None
    bits = int(dataset.BitsStored)
    signed = dataset.get("PixelRepresentation", 0) == 1
    lowest = -(1 << (bits - 1)) if signed else 0
    highest = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    storable = np.array([lowest, highest], np.int64)
    ends = apply_voi_lut(apply_modality_lut(storable, dataset), dataset).astype(np.float64)
    return float(ends.min()), float(ends.max())


# ---- shared checks and scaling ----

def _too_large_message() -> str:
    return (f"The image is too large to open safely (more than {MAX_PIXELS // 1_000_000} million pixels); this "
            "can be a damaged or malicious file.")


def _check_dimensions(width: int, height: int) -> list:
    """Refuse declared sizes that are too small or too large to decode; return a hint for thumbnails."""
    if width * height > MAX_PIXELS:
        raise UnusableImageError(_too_large_message())
    if min(width, height) < MIN_SIDE_PX:
        raise UnusableImageError(f"The image is too small to be a radiograph ({width} × {height} pixels; at "
                                 f"least {MIN_SIDE_PX} on each side needed).")
    if min(width, height) < SMALL_SIDE_PX:
        return [Hint(f"The image is small for a radiograph ({width} × {height} pixels): it may be a thumbnail, "
                     "and fine detail is lost.", "thumbnail")]
    return []


def _value_bounds(values: np.ndarray) -> tuple:
    """The (min, max) of 2-D float32 ``values``; refuses non-finite and blank (single-valued) images."""
    if not np.isfinite(values).all():
        raise UnusableImageError("The image contains invalid pixel values (not-a-number or infinite).")
    low, high, _, _ = cv2.minMaxLoc(values)
    if low == high:
        raise UnusableImageError(BLANK)
    return low, high


def _is_blank(values: np.ndarray) -> bool:
    """Whether every pixel has one value; the middle row alone almost always shows it has not (fast path)."""
    low, high, _, _ = cv2.minMaxLoc(values[values.shape[0] // 2])
    if low == high:
        low, high, _, _ = cv2.minMaxLoc(values)
    return low == high


def _scale_raster(values: np.ndarray) -> np.ndarray:
    """8- and 16-bit images scaled by their type's full range, others (float, 32-bit) by their own min and max."""
    full_range_scale = FULL_RANGE_SCALES.get(values.dtype)
    if full_range_scale is None:
        values = values.astype(np.float32)
        return _scale(values, *_value_bounds(values))
    if _is_blank(values):
        raise UnusableImageError(BLANK)
    pixels = values.astype(np.float32)
    pixels *= full_range_scale
    return pixels


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` mapped from [low, high] onto [0, 1] (clipped) as float32."""
    scaled = (values - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _intensity_hints(pixels: np.ndarray) -> list:
    """Warnings about intensity statistics unusual for a chest radiograph, from a downsampled copy."""
    step = max(1, min(pixels.shape) // STATS_SIDE_PX)
    sample = pixels[::step, ::step]
    levels = np.bincount((sample * (STATS_LEVELS - 1) + 0.5).astype(np.intp).ravel(), minlength=STATS_LEVELS)
    mean, std = float(sample.mean()), float(sample.std())
    hints = []
    if levels.max() > DOMINANT_LEVEL_FRACTION * sample.size:
        hints.append(Hint("Most of the image is a single grey level: it may be blank, padded or saturated.",
                          "unusual_intensities"))
    if mean < DARK_MEAN or mean > BRIGHT_MEAN:
        hints.append(Hint(f"The image is unusually {'dark' if mean < DARK_MEAN else 'bright'} for a chest "
                          "radiograph.", "unusual_intensities"))
    if std < LOW_STD:
        hints.append(Hint("The image has very little contrast for a chest radiograph.", "unusual_intensities"))
    return hints
