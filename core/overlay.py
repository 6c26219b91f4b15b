"""Drawing and encoding what the reader sees: the display copy, window/level, the Grad-CAM overlay drawn only where
the map is high (transparent elsewhere, so the anatomy stays readable), its colour scale, and JPEG/PNG encoding.

A map is in [0, 1] at the convolution layer's resolution and is stretched over the whole radiograph (the model saw
the whole image squashed to a square, so the map covers it all). "High" means at or above a percentile of the
map's own values over the image (``cut``); the same cut, colours and opacity are used on screen (``core.viewer``),
in the downloaded PNG and in the PDF report.
"""

import math

import cv2
import numpy as np

from core import png

__all__ = [
    "to_uint8",
    "display_copy",
    "shrunk",
    "window_for",
    "windowed",
    "cut",
    "masked_map",
    "overlay",
    "colour_scale",
    "overlay_png",
    "label_scale",
    "encode_jpeg",
    "rgb_jpeg",
    "thumbnail",
]

COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "hot": cv2.COLORMAP_HOT,
}
# The same maps as 256-entry RGB lookup tables (OpenCV's own are BGR), so overlays come out in RGB directly.
RGB_COLORMAPS = {
    name: np.ascontiguousarray(cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, np.newaxis], code)[..., ::-1])
    for name, code in COLORMAPS.items()
}
DEFAULT_COLORMAP = "jet"
DEFAULT_OPACITY = 0.45
DEFAULT_PERCENTILE = 80  # draw the top 20 % of the map
JPEG_DISPLAY = [cv2.IMWRITE_JPEG_QUALITY, 90]
MAX_DISPLAY_WIDTH = 1460  # Streamlit and the browser handle this comfortably; full resolution is for download
LEVELS = 256
# Window presets as percentiles of the film's own grey levels (8-bit display copies carry no Hounsfield-like
# units): lung spreads the darker part (the aerated lung) over the full grey range, mediastinum the brighter part.
PRESETS = {"full range": None, "lung": (1.0, 65.0), "mediastinum": (45.0, 99.5)}
THUMBNAIL_WIDTH = 96
LEGEND_FRACTION = 0.04  # the PNG's colour-scale band: this fraction of the image height (at least 24 px)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats to 0–255 bytes (rounded, saturated); bytes stay as they are."""
    if values.dtype == np.uint8:
        return values
    return cv2.convertScaleAbs(np.asarray(values, dtype=np.float32), alpha=255.0)


def display_copy(grey: np.ndarray, max_width=MAX_DISPLAY_WIDTH) -> np.ndarray:
    """``grey`` (float in [0, 1] or uint8) as 8-bit levels, shrunk by the smallest whole factor that brings it to
    at most ``max_width`` pixels wide: what a screen shows of it."""
    return to_uint8(shrunk(grey, math.ceil(grey.shape[1] / max_width)))


def shrunk(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` area-averaged over ``factor`` × ``factor`` blocks (a copy). A whole factor lets OpenCV's area
    average take its fast path (0.4 ms instead of 11 for a 2000 × 2000 film); the last few rows and columns that
    do not fill a whole block are left out."""
    if factor <= 1:
        return image.copy()
    height, width = image.shape[:2]
    block = image[: height - height % factor, : width - width % factor]
    return cv2.resize(block, (block.shape[1] // factor, block.shape[0] // factor), interpolation=cv2.INTER_AREA)


def window_for(levels: np.ndarray, preset: str) -> tuple:
    """(level, width) of a window ``preset`` (see ``PRESETS``) for an 8-bit image, in grey levels 0–255."""
    percentiles = PRESETS[preset]
    if percentiles is None:
        return LEVELS // 2, LEVELS
    low, high = np.percentile(levels[::4, ::4], percentiles)
    return int(round((low + high) / 2)), max(1, int(round(high - low)))


def windowed(levels: np.ndarray, level: float, width: float) -> np.ndarray:
    """An 8-bit image with window/level applied: ``level - width/2`` → black, ``level + width/2`` → white."""
    low = level - width / 2.0
    table = np.clip((np.arange(LEVELS, dtype=np.float32) - low) * (255.0 / max(width, 1.0)), 0, 255)
    return cv2.LUT(levels, np.round(table).astype(np.uint8))


def cut(cam: np.ndarray, percentile=DEFAULT_PERCENTILE) -> float:
    """The map value at ``percentile`` of the map's own values (at the layer's resolution): where the stretched
    map is at least this, it is drawn."""
    return float(np.percentile(cam, percentile))


def masked_map(cam: np.ndarray, shape: tuple, percentile=DEFAULT_PERCENTILE) -> np.ndarray:
    """``cam`` stretched to ``shape`` (rows, columns) float32, NaN below the cut (transparent on screen)."""
    stretched = cv2.resize(np.asarray(cam, dtype=np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.where(stretched >= cut(cam, percentile), stretched, np.nan).astype(np.float32)


def overlay(
    grey: np.ndarray,
    cam: np.ndarray,
    colormap=DEFAULT_COLORMAP,
    opacity=DEFAULT_OPACITY,
    percentile=DEFAULT_PERCENTILE,
    out=None,
) -> np.ndarray:
    """``grey`` (H, W) (float in [0, 1] or uint8) as RGB uint8 with ``cam`` stretched over it, coloured and
    blended at ``opacity`` only where the map is at or above its ``percentile`` (elsewhere the film as it is);
    written into ``out`` when given. Blended in 8 bits (a pixel may be one level off the exactly rounded blend)."""
    height, width = grey.shape
    opacity = float(opacity)
    heat = cv2.resize(to_uint8(np.asarray(cam, dtype=np.float32)), (width, height), interpolation=cv2.INTER_LINEAR)
    out = cv2.cvtColor(to_uint8(grey), cv2.COLOR_GRAY2RGB, dst=out)
    colours = cv2.applyColorMap(heat, RGB_COLORMAPS[colormap])
    blended = cv2.addWeighted(out, 1.0 - opacity, colours, opacity, 0.0)
    high = heat >= np.uint8(round(255 * cut(cam, percentile)))
    np.copyto(out, blended, where=high[..., np.newaxis])
    return out


def colour_scale(colormap: str, width: int, height: int, low=0.0) -> np.ndarray:
    """A horizontal RGB colour bar (height, width, 3) for map values 0 → 1, grey below ``low`` (not drawn)."""
    values = np.linspace(0.0, 1.0, width, dtype=np.float32)
    row = RGB_COLORMAPS[colormap][np.round(values * 255).astype(np.uint8), 0]
    row[values < low] = 128
    return np.ascontiguousarray(np.broadcast_to(row[np.newaxis], (height, width, 3)))


def overlay_png(
    grey: np.ndarray, cam: np.ndarray, colormap=DEFAULT_COLORMAP, opacity=DEFAULT_OPACITY, percentile=DEFAULT_PERCENTILE
) -> bytes:
    """The full-resolution overlay as a lossless PNG (stored, not deflated: see ``core.png``), drawn straight
    into the PNG's scanlines, with its colour scale as a labelled band under the image (map value 0 at the left,
    1 at the right; grey where the map is not drawn)."""
    height, width = grey.shape
    band = max(24, round(height * LEGEND_FRACTION))
    scanlines = np.empty((height + band, 1 + 3 * width), dtype=np.uint8)
    scanlines[:, 0] = 0  # filter type "none"
    pixels = scanlines[:, 1:].reshape(height + band, width, 3)
    overlay(grey, cam, colormap, opacity, percentile, out=pixels[:height])
    low = cut(cam, percentile)
    pixels[height:] = colour_scale(colormap, width, band, low=low)
    label_scale(pixels[height:], [(0.0, "map 0"), (low, f"drawn from {low:.2f}"), (1.0, "1")])
    return png.rgb_png(scanlines)


def label_scale(band: np.ndarray, labels) -> None:
    """Write ``(value, text)`` labels (in increasing value) into a colour-scale band (in place), white on a dark
    outline, each at its value's place between flush left (0) and flush right (1), moved aside so that none
    overprints another; a middle label with no room left is not written."""
    height, width = band.shape[:2]
    scale = height / 40.0
    thickness = max(1, round(height / 20))
    gap = 3 * thickness + 4
    sizes = [cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0] for _, text in labels]
    places = [int(2 + value * (width - text_width - 4)) for (value, _), (text_width, _) in zip(labels, sizes)]
    last = len(labels) - 1
    placed = []
    for index, ((_, text), (text_width, text_height), x) in enumerate(zip(labels, sizes, places)):
        if placed:
            x = max(x, placed[-1][1] + gap)  # past the label before
        if index < last:
            x = min(x, places[last] - gap - text_width)  # and clear of the last one, flush right
        if placed and x < placed[-1][1] + gap:
            continue  # no room between its neighbours
        placed.append((x, x + text_width))
        origin = (x, (height + text_height) // 2)
        for colour, weight in (((0, 0, 0), thickness * 3), ((255, 255, 255), thickness)):
            cv2.putText(band, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, weight, cv2.LINE_AA)


def encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes of a greyscale or BGR uint8 image."""
    return cv2.imencode(".jpg", image, JPEG_DISPLAY)[1].tobytes()


def rgb_jpeg(rgb: np.ndarray) -> bytes:
    """JPEG bytes of an RGB uint8 image."""
    return encode_jpeg(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def thumbnail(levels: np.ndarray, width=THUMBNAIL_WIDTH) -> bytes:
    """A small JPEG (about ``width`` pixels wide) of an 8-bit image, for the worklist."""
    return encode_jpeg(shrunk(levels, max(1, levels.shape[1] // width)))
