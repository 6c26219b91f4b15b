"""What a decoded radiograph is, and the checks every reader shares: the error a reader raises (its message is
meant for a radiologist), the size limits checked before decoding, scaling to [0, 1], and the intensity hints."""

from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = [
    "UnusableImageError",
    "Hint",
    "Radiograph",
    "check_dimensions",
    "value_bounds",
    "is_blank",
    "scale_raster",
    "scale",
    "intensity_hints",
    "too_large_message",
    "DAMAGED",
    "BLANK",
    "MIN_SIDE_PX",
    "SMALL_SIDE_PX",
    "MAX_PIXELS",
]

MIN_SIDE_PX = 64  # below this a file cannot be a radiograph
# Below this it is a thumbnail: accepted, with a hint. The pool's own images are 224–320 px, so a size the model
# was trained on never raises it.
SMALL_SIDE_PX = 160
MAX_PIXELS = 80_000_000  # declared sizes above this are refused before decoding (decompression bombs)
FULL_RANGE_SCALES = {np.dtype(np.uint8): np.float32(1 / 255), np.dtype(np.uint16): np.float32(1 / 65535)}

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
    value_range: (the file's own value shown black, the value shown white), e.g. a DICOM's modality values at
        the ends of its window, or None when no linear map exists (a VOI lookup table): what window/level is
        read out in.
    """

    pixels: np.ndarray
    format: str
    metadata: dict = field(default_factory=dict)
    hints: list = field(default_factory=list)
    value_range: tuple | None = None


def too_large_message() -> str:
    """Why a declared size is refused before decoding (a decompression bomb, or a damaged header)."""
    return (
        f"The image is too large to open safely (more than {MAX_PIXELS // 1_000_000} million pixels); this "
        "can be a damaged or malicious file."
    )


def check_dimensions(width: int, height: int) -> list:
    """Refuse declared sizes that are too small or too large to decode; return a hint for thumbnails."""
    if width * height > MAX_PIXELS:
        raise UnusableImageError(too_large_message())
    if min(width, height) < MIN_SIDE_PX:
        raise UnusableImageError(
            f"The image is too small to be a radiograph ({width} × {height} pixels; at "
            f"least {MIN_SIDE_PX} on each side needed)."
        )
    if min(width, height) < SMALL_SIDE_PX:
        return [
            Hint(
                f"The image is small for a radiograph ({width} × {height} pixels): it may be a thumbnail, "
                "and fine detail is lost.",
                "thumbnail",
            )
        ]
    return []


def value_bounds(values: np.ndarray) -> tuple:
    """The (min, max) of 2-D float32 ``values``; refuses non-finite and blank (single-valued) images."""
    if not np.isfinite(values).all():
        raise UnusableImageError("The image contains invalid pixel values (not-a-number or infinite).")
    low, high, _, _ = cv2.minMaxLoc(values)
    if low == high:
        raise UnusableImageError(BLANK)
    return low, high


def is_blank(values: np.ndarray) -> bool:
    """Whether every pixel has one value; the middle row alone almost always shows it has not (fast path)."""
    low, high, _, _ = cv2.minMaxLoc(values[values.shape[0] // 2])
    if low == high:
        low, high, _, _ = cv2.minMaxLoc(values)
    return low == high


def scale_raster(values: np.ndarray) -> tuple:
    """(pixels, value_range): 8- and 16-bit images scaled by their type's full range, others (float, 32-bit) by
    their own min and max; the range is the values shown black and white."""
    full_range_scale = FULL_RANGE_SCALES.get(values.dtype)
    if full_range_scale is None:
        values = values.astype(np.float32)
        bounds = value_bounds(values)
        return scale(values, *bounds), (float(bounds[0]), float(bounds[1]))
    if is_blank(values):
        raise UnusableImageError(BLANK)
    pixels = values.astype(np.float32)
    pixels *= full_range_scale
    return pixels, (0.0, float(round(1 / full_range_scale)))


def scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` mapped from [low, high] onto [0, 1] (clipped) as float32."""
    scaled = (values - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def intensity_hints(pixels: np.ndarray) -> list:
    """Warnings about intensity statistics unusual for a chest radiograph, from a downsampled copy."""
    step = max(1, min(pixels.shape) // STATS_SIDE_PX)
    sample = pixels[::step, ::step]
    levels = np.bincount((sample * (STATS_LEVELS - 1) + 0.5).astype(np.intp).ravel(), minlength=STATS_LEVELS)
    mean, std = float(sample.mean()), float(sample.std())
    hints = []
    if levels.max() > DOMINANT_LEVEL_FRACTION * sample.size:
        hints.append(
            Hint(
                "Most of the image is a single grey level: it may be blank, padded or saturated.", "unusual_intensities"
            )
        )
    if mean < DARK_MEAN or mean > BRIGHT_MEAN:
        hints.append(
            Hint(
                f"The image is unusually {'dark' if mean < DARK_MEAN else 'bright'} for a chest radiograph.",
                "unusual_intensities",
            )
        )
    if std < LOW_STD:
        hints.append(Hint("The image has very little contrast for a chest radiograph.", "unusual_intensities"))
    return hints
