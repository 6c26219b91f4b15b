"""What the Diagnose page's film viewer (``pages/film_viewer.js``) draws, and the probability bars.

The viewer gets the film as a URL the page serves (fetched and cached once by the browser) and applies
window/level, invert, zoom and pan itself, on a canvas: a window change is a lookup table in the browser, never
a round trip, and the reader's view survives every rerun of the page. The Grad-CAM map travels as a small
transparent PNG (coloured only where the map is at or above its percentile) with its colour scale as a CSS
gradient, and as a coarse grid of its values (``MAP_COLUMNS`` wide) for the pointer's readout; opacity is
applied by the browser. Changing the overlay's controls rebuilds this small payload, never runs the model.
"""

import base64
import io

import cv2
import numpy as np
from PIL import Image

from core.overlay import LEVELS, RGB_COLORMAPS, encode_jpeg, masked_map

__all__ = [
    "data_uri",
    "colorscale",
    "map_grid",
    "png_uri",
    "map_image",
    "gradient",
    "film_units",
    "viewer_data",
    "browser_ready_jpeg",
    "film_jpeg",
    "probability_chart",
    "checked",
]

MAP_COLUMNS = 96  # the readout grid's width; its height keeps the film's aspect
MAP_IMAGE_COLUMNS = 256  # the coloured map's width (the browser smooths it; wider costs PNG time)
COLORSCALE_STOPS = 11
CALL_COLOUR, OTHER_COLOUR = "#2b6cb0", "#a0aec0"
CHART_HEIGHT = 130
JPEG_SIGNATURE = b"\xff\xd8\xff"
MAX_SENT_AS_IS = 2 * 1024**2  # a JPEG upload up to this size goes to the viewer as it is (full resolution)
EXIF_ORIENTATION = 0x0112


def data_uri(jpeg: bytes) -> str:
    """A JPEG as a ``data:`` URI for a plotly image layer."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def colorscale(colormap: str) -> list:
    """Our colormap (the OpenCV table the PNG and the PDF use) as a plotly colorscale."""
    table = RGB_COLORMAPS[colormap][:, 0]
    stops = np.linspace(0.0, 1.0, COLORSCALE_STOPS)
    return [[float(s), "rgb({},{},{})".format(*table[round(s * 255)])] for s in stops]


def map_grid(cam: np.ndarray, shape: tuple, percentile: float) -> tuple:
    """(z, dx, dy): ``cam`` on a coarse grid covering an image of ``shape`` (rows, columns), NaN below the cut;
    dx, dy: the size of a grid cell in image pixels."""
    rows, columns = shape
    grid_columns = min(MAP_COLUMNS, columns)
    grid_rows = max(1, round(rows * grid_columns / columns))
    z = masked_map(cam, (grid_rows, grid_columns), percentile)
    return z, columns / grid_columns, rows / grid_rows


def png_uri(image: np.ndarray) -> str:
    """An RGBA or grey image as a PNG ``data:`` URI."""
    png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()  # fast; small anyway
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def map_image(cam: np.ndarray, shape: tuple, colormap: str, percentile: float) -> np.ndarray:
    """The Grad-CAM map coloured, as BGRA for OpenCV's PNG writer, ``MAP_IMAGE_COLUMNS`` wide (the browser
    smooths it to the film's size), transparent below the cut."""
    rows, columns = shape
    image_columns = min(MAP_IMAGE_COLUMNS, columns)
    image_rows = max(1, round(rows * image_columns / columns))
    z = masked_map(cam, (image_rows, image_columns), percentile)
    drawn = np.isfinite(z)
    levels = np.round(np.nan_to_num(z, nan=0.0).clip(0.0, 1.0) * 255).astype(np.uint8)
    rgb = RGB_COLORMAPS[colormap][levels, 0]
    return np.dstack([rgb[..., ::-1], np.where(drawn, 255, 0).astype(np.uint8)])


def gradient(colormap: str) -> str:
    """Our colormap as a CSS gradient, 0 at the bottom: the viewer's colour scale."""
    return (
        "linear-gradient(to top, "
        + ", ".join(f"{colour} {stop * 100:.0f}%" for stop, colour in colorscale(colormap))
        + ")"
    )


def film_units(value_range) -> dict:
    """How the viewer reads window/level out: the film's own values at black and white (``value_range`` of a
    ``core.radiograph.Radiograph``), or display grey levels when the file gives no linear map."""
    if value_range is None:
        return {"black": 0.0, "white": float(LEVELS - 1), "name": "(display grey)"}
    return {"black": float(value_range[0]), "white": float(value_range[1]), "name": ""}


def viewer_data(
    study_id: str,
    source: str,
    shape: tuple,
    presets: dict,
    value_range=None,
    cam=None,
    colormap="jet",
    opacity=0.45,
    percentile=80.0,
    title="",
) -> dict:
    """What the page's film viewer (pages/film_viewer.js) draws: the film at the URL ``source`` (a served file or
    ``data_uri``) of display ``shape`` (rows, columns), its window ``presets`` (name → (level, width) in display
    greys) and units, and, with a ``cam``, the map as a transparent PNG with its colour scale and a coarse grid
    of its values (hundredths, None where not drawn) for the pointer's readout. ``study_id`` keys the reader's
    zoom, pan and window in the browser."""
    rows, columns = shape
    data = {
        "id": study_id,
        "film": source,
        "width": int(columns),
        "height": int(rows),
        "title": title,
        "presets": {name: [int(level), int(width)] for name, (level, width) in presets.items()},
        "units": film_units(value_range),
        "overlay": None,
        "map": None,
    }
    if cam is not None:
        data["overlay"] = {
            "image": png_uri(map_image(cam, shape, colormap, percentile)),
            "opacity": float(opacity),
            "gradient": gradient(colormap),
            "caption": f"map (drawn ≥ P{percentile:g})",
        }
        z, _, _ = map_grid(cam, shape, percentile)
        hundredths = np.where(np.isfinite(z), np.round(np.nan_to_num(z) * 100), -1).astype(int)
        data["map"] = {
            "columns": int(z.shape[1]),
            "rows": int(z.shape[0]),
            "values": [None if v < 0 else v / 100 for v in hundredths.ravel().tolist()],
        }
    return data


def browser_ready_jpeg(data: bytes) -> bool:
    """Whether an upload is a JPEG a browser shows as we read it: greyscale or RGB, upright (no EXIF turn), and
    small enough to send as it is."""
    if not data.startswith(JPEG_SIGNATURE) or len(data) > MAX_SENT_AS_IS:
        return False
    try:
        header = Image.open(io.BytesIO(data))
        return header.mode in ("L", "RGB") and header.getexif().get(EXIF_ORIENTATION, 1) == 1
    except Exception:  # whatever a damaged header makes Pillow raise: re-encode instead
        return False


def film_jpeg(data: bytes, display: np.ndarray) -> bytes:
    """The film as sent to the viewer: the upload itself when it is a plain JPEG (no re-encoding, and full
    resolution for zooming in), else the 8-bit display copy."""
    if browser_ready_jpeg(data):
        return data
    return encode_jpeg(display)


def probability_chart(class_names, probabilities, called: str) -> dict:
    """Horizontal bars of the calibrated probabilities; only the called class in the call's colour."""
    colours = [CALL_COLOUR if name == called else OTHER_COLOUR for name in class_names]
    bars = {
        "type": "bar",
        "x": [float(p) for p in probabilities],
        "y": list(class_names),
        "orientation": "h",
        "marker": {"color": colours},
        "text": [f"{p:.1%}" for p in probabilities],
        "textposition": "auto",
        "hovertemplate": "%{y}: %{x:.3f}<extra></extra>",
    }
    layout = {
        "height": CHART_HEIGHT,
        "margin": {"l": 0, "r": 10, "t": 4, "b": 0},
        "showlegend": False,
        "xaxis": {"range": [0, 1], "tickformat": ".0%", "title": {"text": "calibrated probability"}},
        "yaxis": {"autorange": "reversed"},
    }
    return {"data": [bars], "layout": layout}


def checked(figure: dict):
    """``figure`` as a plotly Figure built without plotly's per-property validation, which ``st.plotly_chart``
    would otherwise run on every redraw (about half of the figure's cost). Only for this module's figures, whose
    every property the tests validate (tests/test_viewer.py)."""
    import plotly.graph_objects as go

    return go.Figure(figure, _validate=False)
