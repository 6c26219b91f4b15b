"""The study viewer as a plotly figure: the radiograph (window/level applied to its display copy) as an image layer
from a JPEG data URI, the Grad-CAM map as a heatmap trace drawn only where the map is high, with its colour bar.
Zoom (wheel) and pan (drag) happen in the browser; opacity, colormap, threshold and window/level only rebuild
this small figure, never run the model.

Chosen over a pre-blended overlay image: the browser keeps the film and the map as separate layers, so the
overlay can be hidden or its opacity changed without a new image, the colour bar comes with the trace, and the
hover shows the map's value. The map travels as a coarse grid (``MAP_COLUMNS`` wide), not per pixel. The film
travels best as a URL the page serves (fetched and cached once by the browser): inside the figure, a
megabyte-sized data URI costs plotly's JSON encoder ~30 ms on every redraw (measured in bench/diagnose_latency.py).
"""

import base64
import io

import numpy as np
from PIL import Image

from core.overlay import LEVELS, RGB_COLORMAPS, encode_jpeg, masked_map, windowed

__all__ = [
    "data_uri",
    "colorscale",
    "map_grid",
    "figure",
    "browser_ready_jpeg",
    "film_jpeg",
    "probability_chart",
    "checked",
]

MAP_COLUMNS = 96  # the heatmap grid's width; its height keeps the film's aspect
COLORSCALE_STOPS = 11
FIGURE_HEIGHT = 820
BACKGROUND = "#111111"
CALL_COLOUR, OTHER_COLOUR = "#2b6cb0", "#a0aec0"
CHART_HEIGHT = 130
JPEG_SIGNATURE = b"\xff\xd8\xff"
MAX_SENT_AS_IS = 2 * 1024**2  # a JPEG upload up to this size goes to the viewer as it is (full resolution)
EXIF_ORIENTATION = 0x0112
CONFIG = {
    "scrollZoom": True,
    "displaylogo": False,
    "doubleClick": "reset",
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d", "toImage"],
}


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


def figure(
    source: str, shape: tuple, cam=None, colormap="jet", opacity=0.45, percentile=80.0, title="", uirevision="study"
) -> dict:
    """The viewer's plotly figure (a dict, as ``st.plotly_chart`` takes it) for a film of display ``shape`` (rows,
    columns) at the URL ``source`` (a served file, or ``data_uri``); ``cam`` None shows the film alone.
    ``uirevision`` keeps the reader's zoom and pan across redraws of the same study."""
    rows, columns = shape
    data = []
    if cam is not None:
        z, dx, dy = map_grid(cam, shape, percentile)
        data.append(
            {
                "type": "heatmap",
                "z": z,
                "x0": dx / 2,
                "dx": dx,
                "y0": dy / 2,
                "dy": dy,
                "zmin": 0.0,
                "zmax": 1.0,
                "colorscale": colorscale(colormap),
                "opacity": opacity,
                "hoverongaps": False,
                "name": "Grad-CAM",
                "zsmooth": "best",
                "hovertemplate": "map %{z:.2f}<extra></extra>",
                "colorbar": {
                    "title": {"text": f"map (drawn ≥ P{percentile:g})", "side": "right"},
                    "thickness": 14,
                    "len": 0.6,
                    "tickvals": [0, 0.25, 0.5, 0.75, 1],
                    "tickfont": {"color": "#dddddd"},
                    "title_font": {"color": "#dddddd"},
                },
            }
        )
    else:  # an invisible trace keeps the axes (and so the zoom) the same as with the overlay
        data.append(
            {
                "type": "scatter",
                "x": [0, columns],
                "y": [0, rows],
                "mode": "markers",
                "marker": {"opacity": 0},
                "hoverinfo": "skip",
                "showlegend": False,
            }
        )
    layout = {
        "height": FIGURE_HEIGHT,
        "margin": {"l": 0, "r": 0, "t": 0, "b": 0},  # a top margin shifts the film (plotly)
        "title": {"text": title, "font": {"size": 13, "color": "#dddddd"}, "x": 0.01, "y": 0.99, "yanchor": "top"},
        "paper_bgcolor": BACKGROUND,
        "plot_bgcolor": BACKGROUND,
        "dragmode": "pan",
        "uirevision": uirevision,
        "xaxis": {"range": [0, columns], "visible": False},
        "yaxis": {"range": [rows, 0], "visible": False, "scaleanchor": "x"},
        "images": [
            {
                "source": source,
                "xref": "x",
                "yref": "y",
                "x": 0,
                "y": 0,
                "sizex": columns,
                "sizey": rows,
                "sizing": "stretch",
                "layer": "below",
            }
        ],
    }
    return {"data": data, "layout": layout}


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


def film_jpeg(data: bytes, display: np.ndarray, level: int, width: int) -> bytes:
    """The film as sent to the viewer: the upload itself when it is a plain JPEG shown at full range (no
    re-encoding, and full resolution for zooming in), else the 8-bit display copy with window/level applied."""
    if (level, width) == (LEVELS // 2, LEVELS) and browser_ready_jpeg(data):
        return data
    return encode_jpeg(windowed(display, level, width))


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
