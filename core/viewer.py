"""The study viewer as a plotly figure: the radiograph (window/level applied to its display copy) as an image layer
from a JPEG data URI, the Grad-CAM map as a heatmap trace drawn only where the map is high, with its colour bar.
Zoom (wheel) and pan (drag) happen in the browser; opacity, colormap, threshold and window/level only rebuild
this small figure, never run the model.

Chosen over a pre-blended overlay image: the browser keeps the film and the map as separate layers, so the
overlay can be hidden or its opacity changed without a new image, the colour bar comes with the trace, and the
hover shows the map's value. The map travels as a coarse grid (``MAP_COLUMNS`` wide), not per pixel.
"""

import base64

import numpy as np

from core.overlay import RGB_COLORMAPS, masked_map

MAP_COLUMNS = 96  # the heatmap grid's width; its height keeps the film's aspect
COLORSCALE_STOPS = 11
FIGURE_HEIGHT = 820
BACKGROUND = "#111111"
CONFIG = {"scrollZoom": True, "displaylogo": False, "doubleClick": "reset",
          "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d", "toImage"]}


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


def figure(jpeg: bytes, shape: tuple, cam=None, colormap="jet", opacity=0.45, percentile=80.0,
           title="", uirevision="study") -> dict:
    """The viewer's plotly figure (a dict, as ``st.plotly_chart`` takes it) for a display copy of ``shape`` (rows,
    columns) encoded as ``jpeg``; ``cam`` None shows the film alone. ``uirevision`` keeps the reader's zoom and
    pan across redraws of the same study."""
    rows, columns = shape
    data = []
    if cam is not None:
        z, dx, dy = map_grid(cam, shape, percentile)
        data.append({
            "type": "heatmap", "z": z, "x0": dx / 2, "dx": dx, "y0": dy / 2, "dy": dy, "zmin": 0.0, "zmax": 1.0,
            "colorscale": colorscale(colormap), "opacity": opacity, "hoverongaps": False, "name": "Grad-CAM",
            "hovertemplate": "map %{z:.2f}<extra></extra>",
            "colorbar": {"title": {"text": f"map (drawn ≥ P{percentile:g})", "side": "right"}, "thickness": 14,
                         "len": 0.6, "tickvals": [0, 0.25, 0.5, 0.75, 1], "tickfont": {"color": "#dddddd"},
                         "title_font": {"color": "#dddddd"}},
        })
    else:  # an invisible trace keeps the axes (and so the zoom) the same as with the overlay
        data.append({"type": "scatter", "x": [0, columns], "y": [0, rows], "mode": "markers",
                     "marker": {"opacity": 0}, "hoverinfo": "skip", "showlegend": False})
    layout = {
        "height": FIGURE_HEIGHT, "margin": {"l": 0, "r": 0, "t": 30 if title else 0, "b": 0},
        "title": {"text": title, "font": {"size": 13, "color": "#dddddd"}, "x": 0.01},
        "paper_bgcolor": BACKGROUND, "plot_bgcolor": BACKGROUND, "dragmode": "pan", "uirevision": uirevision,
        "xaxis": {"range": [0, columns], "visible": False, "constrain": "domain"},
        "yaxis": {"range": [rows, 0], "visible": False, "scaleanchor": "x", "constrain": "domain"},
        "images": [{"source": data_uri(jpeg), "xref": "x", "yref": "y", "x": 0, "y": 0, "sizex": columns,
                    "sizey": rows, "sizing": "stretch", "layer": "below"}],
    }
    return {"data": data, "layout": layout}
