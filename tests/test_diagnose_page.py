"""The Diagnose page through Streamlit's AppTest: real uploads (a full-resolution CXR, the real DICOM, a corrupt
file), the controls, and the patient fields."""

import hashlib
import io
import json
import re

import cv2
import numpy as np
import pytest

from core.imaging import UnusableImageError, read_image
from core.inference import Predictor
from core.operating_point import decide
from tests.conftest import DICOM_SAMPLE, FULLRES, REPO

CXR = FULLRES / "NORMAL__IM-0636-0001.jpeg"
CORRUPT = b"this is not an image at all\n" * 8
UPLOADS = "diagnose_uploads"
# The page computes probabilities in another graph than Predictor.probabilities (one forward pass that also gives
# the Grad-CAM maps, per layer): float32 round-off differs in the 7th-8th decimal, so compare with a tolerance.
PROBABILITY_ATOL = 1e-5


def unescaped(text: str) -> str:
    """Markdown text as the reader sees it (the page backslash-escapes user-derived text)."""
    return re.sub(r"\\(.)", r"\1", text)


def upload(app, *files):
    """Upload ``(name, bytes)`` pairs through the page's file uploader and rerun."""
    app.file_uploader(key=UPLOADS).set_value([(name, data, "application/octet-stream") for name, data in files])
    return app.run()


def chart_probabilities(app) -> list:
    return [json.loads(chart.proto.spec)["data"][0]["x"] for chart in app.get("plotly_chart")]


def explanations(app) -> int:
    return sum(len(result.explanations) for result in app.session_state["diagnose_files"].values())


def dicom_reader_or_skip():
    try:
        read_image(DICOM_SAMPLE)
    except UnusableImageError:
        pytest.skip("core.imaging does not read this DICOM (yet)")


@pytest.fixture
def app(tiny_version):
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    assert not app.exception
    return app


def small_png() -> bytes:
    """The CXR shrunk to a thumbnail: usable, but the reader may warn about it."""
    grey = cv2.imread(str(CXR), cv2.IMREAD_GRAYSCALE)
    return cv2.imencode(".png", cv2.resize(grey, (150, 135), interpolation=cv2.INTER_AREA))[1].tobytes()


def test_probabilities_and_overlay_appear_and_a_corrupt_file_does_not_stop_the_others(app, tiny_version):
    upload(app, ("cxr.jpeg", CXR.read_bytes()), ("broken.png", CORRUPT), ("small [1].png", small_png()))
    assert not app.exception
    with pytest.raises(UnusableImageError) as expected:
        read_image(CORRUPT)
    assert [unescaped(error.value) for error in app.error] == [str(expected.value)]
    assert [unescaped(warning.value) for warning in app.warning] == read_image(small_png()).hints
    assert "**small \\[1\\]\\.png**" in [m.value for m in app.markdown]  # a file name is text, not markup

    predictor = Predictor(tiny_version)
    probabilities = predictor.probabilities(predictor.preprocess(read_image(CXR).pixels)[np.newaxis])[0]
    shown = chart_probabilities(app)[0]
    np.testing.assert_allclose(shown, probabilities, atol=PROBABILITY_ATOL)
    call = decide(probabilities, predictor.card).label
    assert any(unescaped(m.value).endswith(f"Call: {call}") for m in app.markdown)
    images = app.get("image")
    assert [image.captions[0] for image in images[:2]] == ["Original", f"Grad-CAM: {call} at block4_conv3"]
    assert len(images) == 4 and len(app.get("download_button")) == 2
    captions = " ".join(unescaped(c.value) for c in app.caption)
    assert "Research use only" in captions and "Model tiny" in captions and predictor.card["caveat"] in captions

    result = app.session_state["diagnose_files"][hashlib.sha256(CXR.read_bytes()).hexdigest()]
    overlay = cv2.imdecode(np.frombuffer(result.overlay[1], np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape[:2] == result.display.shape and result.display.shape[1] == 1024  # aspect kept


@pytest.mark.slow
def test_moving_the_controls_redraws_without_rerunning_the_model_unless_needed(app):
    upload(app, ("cxr.jpeg", CXR.read_bytes()))
    overlay_url = app.get("image")[1].value
    probabilities = chart_probabilities(app)

    app.slider(key="diagnose_opacity").set_value(0.8).run()
    app.selectbox(key="diagnose_colormap").set_value("inferno").run()
    app.radio(key="diagnose_method").set_value("Grad-CAM++").run()
    assert not app.exception
    assert app.get("image")[1].value != overlay_url
    assert app.get("image")[1].captions[0].startswith("Grad-CAM++:")
    assert explanations(app) == 1  # one pass gave both methods; opacity and colormap only redraw

    app.selectbox(key="diagnose_class").set_value("COVID-19").run()
    app.selectbox(key="diagnose_layer").set_value("block3_conv3").run()
    assert not app.exception
    assert app.get("image")[1].captions[0] == "Grad-CAM++: COVID-19 at block3_conv3"
    assert explanations(app) == 3
    np.testing.assert_allclose(chart_probabilities(app), probabilities, atol=PROBABILITY_ATOL)


def test_dicom_renders_and_patient_fields_stay_hidden_until_asked_then_show_as_text(app):
    import pydicom

    dicom_reader_or_skip()
    dataset = pydicom.dcmread(DICOM_SAMPLE)
    dataset.PatientName = "<b>x</b>"
    hostile = io.BytesIO()
    dataset.save_as(hostile)
    upload(app, ("study.dcm", DICOM_SAMPLE.read_bytes()), ("hostile.dcm", hostile.getvalue()))
    assert not app.exception and not app.error
    assert len(chart_probabilities(app)) == 2 and len(app.get("image")) == 4

    def rendered_text():
        return " ".join(str(e.value) for kind in ("markdown", "caption", "code", "text") for e in app.get(kind))

    assert "<b>x</b>" not in rendered_text() and str(dataset.PatientID) not in rendered_text()
    app.checkbox(key="diagnose_patient_fields").check().run()
    assert "Patient name: <b>x</b>" in [line for code in app.code for line in code.value.splitlines()]
    assert not any("<b>" in e.value for kind in ("markdown", "caption") for e in app.get(kind))


@pytest.mark.slow
def test_a_saved_operating_point_changes_the_call_after_a_restart(shipped_version):
    """A borderline image (its COVID-19 probability below the argmax) is called COVID-19 once an operating point
    at that probability (less the round-off tolerance: the page's pass is another graph) is saved — in a new
    session, as after a restart."""
    from streamlit.testing.v1 import AppTest

    from core import operating_point

    predictor = Predictor(shipped_version)
    probabilities = predictor.probabilities(predictor.preprocess(read_image(CXR).pixels)[np.newaxis])[0]
    argmax_call = predictor.class_names[int(np.argmax(probabilities))]
    assert argmax_call != "COVID-19"

    def call_on_the_page():
        app = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
        upload(app, ("cxr.jpeg", CXR.read_bytes()))
        assert not app.exception
        return [unescaped(m.value).split("Call: ")[1] for m in app.markdown if "Call: " in unescaped(m.value)]

    operating_point.clear_operating_point(shipped_version, reader="test", reason="argmax first")
    assert call_on_the_page() == [argmax_call]
    operating_point.save_operating_point(shipped_version, "COVID-19", float(probabilities[0]) - PROBABILITY_ATOL,
                                         reader="test", reason="just below this film")
    assert call_on_the_page() == ["COVID-19"]


@pytest.mark.slow
def test_a_sideways_film_is_called_uncertain_with_its_flag_beside_the_call(shipped_version):
    """The shipped version's detector flags a real radiograph turned 90°: the page says to read it without the
    model and shows why; the upright film keeps its call."""
    from streamlit.testing.v1 import AppTest

    grey = cv2.imread(str(CXR), cv2.IMREAD_GRAYSCALE)
    sideways = cv2.imencode(".png", cv2.rotate(grey, cv2.ROTATE_90_CLOCKWISE))[1].tobytes()
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    upload(app, ("upright.jpeg", CXR.read_bytes()), ("sideways.png", sideways))
    assert not app.exception
    calls = [unescaped(m.value).split("Call: ")[1] for m in app.markdown if "Call: " in unescaped(m.value)]
    assert calls[0] != "uncertain — read without the model" and calls[1] == "uncertain — read without the model"
    assert any("rotated" in unescaped(w.value) for w in app.warning)
    assert any("`rotated`" in c.value for c in app.caption)
