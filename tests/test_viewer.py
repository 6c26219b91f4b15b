"""What the film viewer gets (the map coloured and transparent below its cut, its colour scale ours, the window
presets and the film's own units) and the film sent to it (the upload itself when a browser shows it as we read
it, else the display copy); the probability bars valid for plotly."""

import base64
import io

import cv2
import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from core import overlay, viewer
from tests.conftest import FULLRES

CAM = np.linspace(0.0, 1.0, 100, dtype=np.float32).reshape(10, 10)
PRESETS = {"full range": (128, 256), "lung": (90, 120)}


def decoded_png(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)


def test_the_viewer_gets_the_map_only_above_its_cut_in_our_colours_with_its_readout_grid():
    data = viewer.viewer_data("s1", "/media/film.jpg", (1000, 800), PRESETS, (0, 4095), CAM, "inferno", 0.6, 75, "t")
    assert (data["id"], data["film"], data["width"], data["height"], data["title"]) == (
        "s1",
        "/media/film.jpg",
        800,
        1000,
        "t",
    )
    assert data["presets"] == {"full range": [128, 256], "lung": [90, 120]}
    assert data["units"] == {"black": 0.0, "white": 4095.0, "name": ""}
    image = decoded_png(data["overlay"]["image"])
    assert image.shape == (round(1000 * viewer.MAP_IMAGE_COLUMNS / 800), viewer.MAP_IMAGE_COLUMNS, 4)
    drawn = image[..., 3] == 255
    assert 0.15 < drawn.mean() < 0.35 and set(np.unique(image[..., 3])) == {0, 255}
    top = image[-1, -1, 2::-1]  # the map's highest corner, as RGB
    assert tuple(top) == tuple(overlay.RGB_COLORMAPS["inferno"][255, 0])
    assert data["overlay"]["opacity"] == 0.6 and data["overlay"]["caption"] == "map (drawn ≥ P75)"
    first_colour = "rgb({},{},{})".format(*overlay.RGB_COLORMAPS["inferno"][0, 0])
    assert data["overlay"]["gradient"].startswith(f"linear-gradient(to top, {first_colour} 0%")
    grid = data["map"]
    assert grid["columns"] == viewer.MAP_COLUMNS and len(grid["values"]) == grid["rows"] * grid["columns"]
    shown = [value for value in grid["values"] if value is not None]
    assert min(shown) >= round(overlay.cut(CAM, 75), 2) - 0.01 and max(shown) <= 1.0
    assert grid["values"][0] is None  # the map's lowest corner is not drawn


def test_without_the_overlay_the_viewer_gets_the_film_alone_and_units_fall_back_to_display_grey():
    data = viewer.viewer_data("s1", "x", (600, 500), PRESETS)
    assert data["overlay"] is None and data["map"] is None
    assert data["units"] == {"black": 0.0, "white": 255.0, "name": "(display grey)"}


def test_the_probability_chart_colours_only_the_called_class():
    chart = viewer.probability_chart(["COVID-19", "Normal", "Pneumonia"], [0.41, 0.57, 0.02], "COVID-19")
    go.Figure(chart)
    assert chart["data"][0]["marker"]["color"] == [viewer.CALL_COLOUR, viewer.OTHER_COLOUR, viewer.OTHER_COLOUR]


def test_a_plain_jpeg_upload_goes_to_the_viewer_as_it_is_and_others_as_the_display_copy():
    data = (FULLRES / "COVID19__2cd63b76.jpg").read_bytes()
    display = np.full((100, 80), 100, np.uint8)
    assert viewer.film_jpeg(data, display) is data
    copy = viewer.film_jpeg(cv2.imencode(".png", display)[1].tobytes(), display)
    decoded = cv2.imdecode(np.frombuffer(copy, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert decoded.shape == (100, 80) and abs(int(decoded.mean()) - 100) <= 2


@pytest.mark.parametrize("orientation, as_is", [(1, True), (6, False)])
def test_an_exif_turned_jpeg_is_re_encoded(orientation, as_is):
    stream = io.BytesIO()
    exif = Image.Exif()
    exif[viewer.EXIF_ORIENTATION] = orientation
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(stream, format="JPEG", exif=exif)
    assert viewer.browser_ready_jpeg(stream.getvalue()) is as_is
    assert not viewer.browser_ready_jpeg(b"\x89PNG\r\n\x1a\n")
