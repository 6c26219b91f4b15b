"""Reading radiographs from bytes or files into greyscale pixels.

Every failure to use a file raises ``UnusableImageError`` whose message is meant for a radiologist. The file's
content decides how it is read, never its name. DICOM is read by ``core.dicom`` (pydicom); the checks and
scaling every reader shares, and the ``Radiograph`` they return, live in ``core.radiograph``. JPEG, PNG, BMP,
TIFF, WebP and GIF are decoded by OpenCV, which applies the EXIF orientation and converts colour to luminance,
after their header (JPEG: read here; others: Pillow's lazy open) has passed the size checks: nothing is decoded
before its declared size is known to be safe. Images with transparency are composited onto black by Pillow, in
8 bits.
"""

import io
import os
import struct

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.dicom import dicom_fields_for_display, read_dicom
from core.png import PNG_SIGNATURE
from core.radiograph import (
    DAMAGED,
    SMALL_SIDE_PX,
    Hint,
    Radiograph,
    UnusableImageError,
    check_dimensions,
    intensity_hints,
    scale_raster,
    too_large_message,
)

__all__ = [
    "read_image",
    "read_grey",
    "is_dicom",
    "Radiograph",
    "UnusableImageError",
    "Hint",
    "dicom_fields_for_display",
    "ACCEPTED_FORMATS",
    "SMALL_SIDE_PX",
]

ACCEPTED_FORMATS = "DICOM, PNG, JPEG, BMP, TIFF, WebP or GIF"
PILLOW_FORMATS = ("PNG", "BMP", "TIFF", "WEBP", "GIF")  # JPEG is recognised, and its header read, here
ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
CV2_GREY = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH  # luminance, 16-bit kept, EXIF orientation applied

DICOM_PREAMBLE_BYTES = 128
DICOM_MAGIC = b"DICM"
DICOM_BARE_STARTS = (b"\x02\x00", b"\x08\x00")  # a DICOM file without preamble starts with group 0002 or 0008
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
PNG_CHUNK_OVERHEAD = 12  # length, type and CRC around each chunk's data
JPEG_START_OF_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-SOF15 (not DHT, JPG, DAC)
JPEG_START_OF_SCAN = b"\xff\xda"
JPEG_END_OF_IMAGE = b"\xff\xd9"


def read_image(source) -> Radiograph:
    """Decode ``source`` (bytes or a path) into a ``Radiograph``; raise ``UnusableImageError`` if it cannot be
    used."""
    radiograph = _decode(source)
    radiograph.hints += intensity_hints(radiograph.pixels)
    return radiograph


def read_grey(source) -> np.ndarray:
    """The greyscale pixels of ``source``: 2-D float32 in [0, 1], as ``read_image(source).pixels`` (without
    computing the intensity hints: training reads thousands of files)."""
    return _decode(source).pixels


def is_dicom(data: bytes) -> bool:
    """Whether ``data`` is DICOM by its content, as the reader decides: the "DICM" magic after the preamble, or a
    file without preamble (as PACS exports and C-STORE dumps often are) that starts with group 0002 or 0008."""
    return data[DICOM_PREAMBLE_BYTES : DICOM_PREAMBLE_BYTES + 4] == DICOM_MAGIC or data.startswith(DICOM_BARE_STARTS)


def _decode(source) -> Radiograph:
    """Read, sniff and decode ``source``; every hint except the intensity ones."""
    data = _read_bytes(source)
    if not data:
        raise UnusableImageError("The file is empty.")
    if data[DICOM_PREAMBLE_BYTES : DICOM_PREAMBLE_BYTES + 4] == DICOM_MAGIC:
        return read_dicom(data)
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
    hints = check_dimensions(*size)
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
    pixels, value_range = scale_raster(values)
    return Radiograph(pixels, image_format, {"Rows": height, "Columns": width}, hints, value_range)


def _refuse_known_non_images(data: bytes) -> None:
    for signature, description in NOT_IMAGE_SIGNATURES:
        if data.startswith(signature):
            raise UnusableImageError(
                f"This file is {description}, not an image. Please upload the radiograph itself ({ACCEPTED_FORMATS})."
            )


def _open_raster(data: bytes):
    """Pillow's lazily opened image (headers read, no pixels decoded), or None when Pillow does not recognise
    the file. Refuses animations and stacks."""
    try:
        header = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
        frames = getattr(header, "n_frames", 1)
    except Image.DecompressionBombError as error:
        raise UnusableImageError(too_large_message()) from error
    except UnidentifiedImageError:
        return None
    except Exception as error:  # whatever a damaged file makes Pillow raise
        raise UnusableImageError(DAMAGED) from error
    if frames > 1:
        raise UnusableImageError(
            f"This {header.format} holds {frames} frames or pages (an animation or a stack); "
            "please upload a single radiograph."
        )
    return header


def _read_raster(data: bytes, header) -> Radiograph:
    """A single-frame PNG, BMP, TIFF, WebP or GIF whose header Pillow has read."""
    hints = check_dimensions(*header.size)
    if header.format == "PNG" and not _png_chunks_fit(data):
        raise UnusableImageError(DAMAGED)
    if header.mode in ALPHA_MODES or "transparency" in header.info:
        values = _decode_onto_black(header)
    else:
        values = _decode_grey(data)
    return _raster_radiograph(values, header.format, hints)


def _png_chunks_fit(data: bytes) -> bool:
    """Whether every PNG chunk up to IEND lies within the file. OpenCV allocates and clears a chunk's declared
    length before reading it, so one flipped bit in a length (found by bench/fuzz_reader.py) made a 57 kB file
    take seconds and gigabytes; such a file is damaged, and refused before decoding."""
    position = len(PNG_SIGNATURE)
    while position + PNG_CHUNK_OVERHEAD <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        position += PNG_CHUNK_OVERHEAD + length
        if position > len(data):
            return False
        if kind == b"IEND":
            break
    return True


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
        return read_dicom(data)
    if _looks_like_text(data):
        raise UnusableImageError(
            f"This is a text file, not an image. Please upload the radiograph itself ({ACCEPTED_FORMATS})."
        )
    if data.startswith(IMAGE_SIGNATURES):
        raise UnusableImageError(DAMAGED)
    raise UnusableImageError(f"This file is not an image the app can read ({ACCEPTED_FORMATS} expected).")


def _looks_like_text(data: bytes) -> bool:
    text = data[:TEXT_SNIFF_BYTES].decode("utf-8", errors="replace")
    return text.count("\ufffd") <= 1 and all(ch.isprintable() or ch.isspace() for ch in text)
