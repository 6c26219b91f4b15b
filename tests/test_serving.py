"""The SavedModel export that TF Serving loads: written only under the exports root, its ``serving_default``
signature takes the preprocessed batch ``image`` (N, S, S, 3) and returns the app's calibrated ``probabilities``
for real radiographs (≤ 1e-5 against ``core.inference.Predictor``); the zip download holds the same model; the
Models page refuses a server path and names the export by its folder name only."""

import io
import zipfile

import numpy as np
import pytest

from core.card import ModelCard
from core.imaging import read_grey
from core.inference import Predictor
from tests.conftest import CXR_POOL, REPO, needs_shared_data, publish_random_version
from tests.test_models_page import models_page
from train.jobs.archive import SERVING_INPUT, SERVING_OUTPUT, export_saved_model, savedmodel_zip

TOLERANCE = 1e-5
slow_export = pytest.mark.slow  # exporting and loading a SavedModel takes seconds
IMAGES_PER_CLASS = 2


def real_batch(predictor: Predictor) -> np.ndarray:
    """A few real pool radiographs, preprocessed the way a TF Serving client must (``to_model_input``)."""
    paths = [
        path
        for label in ("COVID19", "NORMAL", "PNEUMONIA")
        for path in sorted((CXR_POOL / label).glob("*.jpg"))[:IMAGES_PER_CLASS]
    ]
    return np.stack([predictor.preprocess(read_grey(path)) for path in paths])


def serving_probabilities(folder, batch: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    assert signature.structured_input_signature[1][SERVING_INPUT].shape.as_list() == [None, *batch.shape[1:]]
    return signature(**{SERVING_INPUT: tf.constant(batch)})[SERVING_OUTPUT].numpy()


@slow_export
@needs_shared_data
def test_the_serving_signature_gives_the_apps_probabilities_on_real_radiographs(isolated_folders):
    publish_random_version(isolated_folders / "weights", "served", temperature=2.5, seed=3)
    exported = export_saved_model("served", "cxr/1")
    assert exported == (isolated_folders / "exports" / "cxr" / "1").resolve()
    assert sorted(p.name for p in exported.parent.iterdir()) == ["1"]  # no partial folder left beside it
    card = ModelCard.load(exported / "assets.extra" / "card.json")
    assert card.version == "served" and card.temperature == 2.5

    predictor = Predictor("served")
    batch = real_batch(predictor)
    served = serving_probabilities(exported, batch)
    np.testing.assert_allclose(served, predictor.probabilities(batch), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=TOLERANCE)


@slow_export
@needs_shared_data
def test_the_zip_download_holds_the_same_servable_model(isolated_folders, tmp_path):
    publish_random_version(isolated_folders / "weights", "zipped", temperature=0.7, seed=4)
    with zipfile.ZipFile(io.BytesIO(savedmodel_zip("zipped"))) as archive:
        assert {"zipped/saved_model.pb", "zipped/assets.extra/card.json"} <= set(archive.namelist())
        archive.extractall(tmp_path)
    assert not (isolated_folders / "exports").exists()  # a download leaves nothing on the server
    predictor = Predictor("zipped")
    batch = real_batch(predictor)
    np.testing.assert_allclose(
        serving_probabilities(tmp_path / "zipped", batch), predictor.probabilities(batch), atol=TOLERANCE, rtol=0
    )


@slow_export
def test_the_models_page_writes_exports_only_under_the_exports_root(isolated_folders, tmp_path):
    publish_random_version(isolated_folders / "weights", "first", seed=1)
    at = models_page()
    at.text_input(key="export_folder").input(str(tmp_path / "evil")).run()
    at.button(key="export_write").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "not a path on the server" in at.error[0].value
    assert not (tmp_path / "evil").exists()
    at.text_input(key="export_folder").input("cxr/1").run()
    at.button(key="export_write").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert (isolated_folders / "exports" / "cxr" / "1" / "saved_model.pb").is_file()
    shown = [element.value for element in (*at.success, *at.error, *at.markdown, *at.caption, *at.text)]
    assert any("exports folder as 'cxr/1'" in value for value in shown)
    assert not any(str(isolated_folders) in value for value in shown)  # no server path on the page


def test_the_app_listens_on_this_machine_only_by_default():
    """`streamlit run app.py` reads .streamlit/config.toml: serving a department goes through an authenticating
    proxy or st.login (README, "Serving a department"), never an open address."""
    import tomllib

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"].get("enableXsrfProtection", True)
