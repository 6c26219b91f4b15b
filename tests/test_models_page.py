"""The Models page (AppTest): versions with their cards, activate / roll back, confirmed delete, card download,
SavedModel export for TF Serving; card text is never rendered as markdown."""

import io
import json
import zipfile

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core import registry
from core.inference import Predictor
from tests.conftest import REPO, publish_random_version
from train.archive import ArchiveError, export_saved_model

HOSTILE_CAVEAT = "**bold** [click](javascript:alert(1)) <script>x</script>"


@pytest.fixture
def two_versions(isolated_folders):
    weights = isolated_folders / "weights"
    publish_random_version(weights, "first", seed=1)
    publish_random_version(weights, "second", seed=2, activate=False)
    card = json.loads((weights / "second" / registry.CARD_FILE).read_text())
    card["caveat"] = HOSTILE_CAVEAT
    (weights / "second" / registry.CARD_FILE).write_text(json.dumps(card))
    return weights


def models_page() -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/models.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.slow
def test_activate_roll_back_and_confirmed_delete(two_versions):
    at = models_page()
    assert at.selectbox(key="version_choice").value == "first"  # the active one is shown first
    assert at.dataframe[0].value["version"].tolist() == ["first", "second"]
    at.selectbox(key="version_choice").select("second").run()
    at.button(key="activate_version").click().run()
    assert registry.active_version() == "second"
    at.selectbox(key="version_choice").select("first").run()
    at.button(key="activate_version").click().run()  # roll back
    assert registry.active_version() == "first"

    at.selectbox(key="version_choice").select("second").run()
    assert at.button(key="delete_version").disabled
    at.checkbox(key="confirm_delete:second").check().run()
    at.button(key="delete_version").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert registry.list_versions() == ["first"]
    assert at.selectbox(key="version_choice").value == "first"


@pytest.mark.slow
def test_card_text_is_shown_as_plain_text(two_versions):
    at = models_page()
    at.selectbox(key="version_choice").select("second").run()
    assert HOSTILE_CAVEAT in [t.value for t in at.text]
    rendered = [m.value for m in at.markdown] + [w.value for w in at.warning] + [c.value for c in at.caption]
    assert not any("javascript" in value for value in rendered)


@pytest.mark.slow
def test_export_serves_the_calibrated_probabilities(isolated_folders):
    import tensorflow as tf

    weights = isolated_folders / "weights"
    publish_random_version(weights, "served", temperature=2.5)
    exported = export_saved_model("served", "export")
    assert json.loads((exported / "assets.extra" / "card.json").read_text())["version"] == "served"
    batch = np.random.default_rng(0).random((2, 80, 80, 3), dtype=np.float32)
    loaded = tf.saved_model.load(str(exported))
    served = loaded.serve(tf.constant(batch))["probabilities"].numpy()
    assert np.allclose(served, Predictor("served").probabilities(batch), atol=1e-5)
    with pytest.raises(ArchiveError, match="not empty"):
        export_saved_model("served", "export")


@pytest.mark.slow
def test_page_offers_the_card_and_a_savedmodel_zip(two_versions):
    at = models_page()
    assert len(at.get("download_button")) == 1  # card.json
    at.button(key="export_zip").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("download_button")) == 2
    data = at.session_state["export:first"]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
    assert "first/saved_model.pb" in names and "first/assets.extra/card.json" in names
