"""The viewer's plotly figures (valid for plotly, the map transparent below its cut, the colour scale ours) and the
film sent to it (the upload itself when a browser shows it as we read it, else the windowed display copy)."""

import io

import cv2
import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from core import overlay, viewer
from tests.conftest import FULLRES

CAM = np.linspace(0.0, 1.0, 100, dtype=np.float32).reshape(10, 10)


def test_the_viewer_figure_is_valid_plotly_and_draws_the_map_only_above_its_cut():
    figure = viewer.figure("/media/film.jpg", (1000, 800), CAM, "inferno", 0.6, 75, title="Grad-CAM of Normal")
    go.Figure(figure)  # plotly's own validation: the page sends these figures without it (viewer.checked)
    heatmap = figure["data"][0]
    z = heatmap["z"]
    assert z.shape == (round(1000 * viewer.MAP_COLUMNS / 800), viewer.MAP_COLUMNS)
    assert np.nanmin(z) >= overlay.cut(CAM, 75) and 0.15 < np.isfinite(z).mean() < 0.35
    assert heatmap["opacity"] == 0.6 and heatmap["colorbar"]["title"]["text"] == "map (drawn ≥ P75)"
    first, last = heatmap["colorscale"][0], heatmap["colorscale"][-1]
    assert last[1] == "rgb({},{},{})".format(*overlay.RGB_COLORMAPS["inferno"][255, 0])
    assert first[1] == "rgb({},{},{})".format(*overlay.RGB_COLORMAPS["inferno"][0, 0])
    layout = figure["layout"]
    assert layout["images"][0]["source"] == "/media/film.jpg" and layout["dragmode"] == "pan"
    assert layout["yaxis"]["range"] == [1000, 0] and layout["yaxis"]["scaleanchor"] == "x"
    assert viewer.CONFIG["scrollZoom"] is True


def test_without_the_overlay_the_axes_stay_the_same():
    with_map = viewer.figure("x", (600, 500), CAM)
    without = viewer.figure("x", (600, 500), None)
    go.Figure(without)
    assert all(trace["type"] != "heatmap" for trace in without["data"])
    assert without["layout"]["xaxis"] == with_map["layout"]["xaxis"]


def test_the_probability_chart_colours_only_the_called_class():
    chart = viewer.probability_chart(["COVID-19", "Normal", "Pneumonia"], [0.41, 0.57, 0.02], "COVID-19")
    go.Figure(chart)
    assert chart["data"][0]["marker"]["color"] == [viewer.CALL_COLOUR, viewer.OTHER_COLOUR, viewer.OTHER_COLOUR]


def test_a_plain_jpeg_upload_goes_to_the_viewer_as_it_is_and_a_window_re_encodes_the_display_copy():
    data = (FULLRES / "COVID19__2cd63b76.jpg").read_bytes()
    display = np.full((100, 80), 100, np.uint8)
    assert viewer.film_jpeg(data, display, overlay.LEVELS // 2, overlay.LEVELS) is data
    windowed = viewer.film_jpeg(data, display, 100, 50)
    decoded = cv2.imdecode(np.frombuffer(windowed, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert decoded.shape == (100, 80) and abs(int(decoded.mean()) - 128) <= 2


@pytest.mark.parametrize("orientation, as_is", [(1, True), (6, False)])
def test_an_exif_turned_jpeg_is_re_encoded(orientation, as_is):
    stream = io.BytesIO()
    exif = Image.Exif()
    exif[viewer.EXIF_ORIENTATION] = orientation
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(stream, format="JPEG", exif=exif)
    assert viewer.browser_ready_jpeg(stream.getvalue()) is as_is
    assert not viewer.browser_ready_jpeg(b"\x89PNG\r\n\x1a\n")
