"""The Models page (AppTest): versions with their cards, activate / roll back, confirmed delete, card download,
SavedModel export for TF Serving; card text is never rendered as markdown; numbers rounded, no server path, the
operating-point history and the cross-hospital figures shown."""

import io
import json
import re
import zipfile

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core import operating_point, registry, settings
from core.card import ModelCard
from core.inference import Predictor
from tests.conftest import REPO, publish_random_version
from train.jobs.archive import ArchiveError, export_saved_model

HOSTILE_CAVEAT = "**bold** [click](javascript:alert(1)) <script>x</script>"


@pytest.fixture
def two_versions(isolated_folders):
    weights = isolated_folders / "weights"
    publish_random_version(weights, "first", seed=1)
    publish_random_version(weights, "second", seed=2, activate=False)
    card = ModelCard.load(weights / "second" / registry.CARD_FILE)
    card.caveat = HOSTILE_CAVEAT
    card.save(weights / "second" / registry.CARD_FILE)
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
    assert at.dataframe[0].value["Version"].tolist() == ["first", "second"]
    at.selectbox(key="version_choice").select("second").run()
    at.button(key="activate_version").click().run()
    assert registry.active_version() == "first"  # nothing changes before the confirmation
    comparison = at.dataframe[1].value
    assert list(comparison.columns) == ["Split", "Figure", "Active now", "After"]  # what changes, before → after
    at.button(key="activation_confirm").click().run()  # without a name and a reason: refused
    assert registry.active_version() == "first" and "your name and a reason" in at.error[0].value
    at.text_input(key="models_activation_reader").input("Dr A. Reader")
    at.text_input(key="models_activation_reason").input("compare v2 on this week's films").run()
    at.button(key="activation_confirm").click().run()
    assert not at.exception and registry.active_version() == "second"

    at.selectbox(key="version_choice").select("first").run()
    at.button(key="activate_version").click().run()  # roll back: the name is remembered, the reason is asked
    assert at.text_input(key="models_activation_reader").value == "Dr A. Reader"
    at.text_input(key="models_activation_reason").input("roll back").run()
    at.button(key="activation_confirm").click().run()
    assert registry.active_version() == "first"
    history = registry.activation_history()
    assert [(entry["from"], entry["to"], entry["reason"]) for entry in history[:2]] == [
        ("second", "first", "roll back"),
        ("first", "second", "compare v2 on this week's films"),
    ]
    shown = [table.value for table in at.table if "Reason" in table.value.columns][0]
    assert [re.sub(r"\\(.)", r"\1", shown[column].iloc[0]) for column in ("Change", "Reader")] == [
        "second → first",
        "Dr A. Reader",
    ]

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


def page_text(at: AppTest) -> str:
    """Everything the page shows as text: messages, captions, tables and data frames."""
    parts = [
        element.value
        for kind in ("markdown", "caption", "text", "success", "info", "warning", "error")
        for element in getattr(at, kind)
    ]
    parts += [element.value.to_string() for element in (*at.table, *at.dataframe)]
    return re.sub(r"\\(.)", r"\1", "\n".join(parts))  # st.table cells are Markdown-escaped


@pytest.mark.slow
def test_the_shipped_card_reads_rounded_without_server_paths_with_its_history(shipped_version):
    operating_point.save_operating_point(
        shipped_version, "COVID-19", 0.0612, reader="Dr A. Reader", reason="department audit"
    )
    at = models_page()
    text = page_text(at)
    card = registry.load_card(shipped_version)
    for absolute in {str(settings.REPO_ROOT), str(settings.data_root()), "/work/", "/tmp/"}:
        assert absolute not in text
    assert not re.search(r"\d\.\d{5,}", text), re.search(r".{40}\d\.\d{5,}.{10}", text)  # no unrounded floats
    facts = dict(zip(*[column.tolist() for _, column in at.table[0].value.items()]))
    facts = {re.sub(r"\\(.)", r"\1", key): re.sub(r"\\(.)", r"\1", value) for key, value in facts.items()}
    assert facts["Temperature (calibration)"] == f"{card.temperature:.3f}"
    assert facts["Parameters"] == f"{card.parameters:,}"
    assert facts["Operating point"] == "COVID-19 when p(COVID-19) ≥ 0.0612"
    for folder in card.data["folders"]:
        assert f"{folder['root'].rsplit('/', 1)[-1]} ({folder['images']:,} images)" in facts["Data"]
    assert "Caveat" not in facts and "caveat" not in " ".join(facts)  # the caveat is shown once, as text
    history = at.table[1].value
    assert re.sub(r"\\(.)", r"\1", history["Reader"].iloc[0]) == "Dr A. Reader"
    assert "→ COVID-19 when p(COVID-19) ≥ 0.0612" in re.sub(r"\\(.)", r"\1", history["Change"].iloc[0])
    assert "department audit" in text
    accuracy = card.metrics["test"]["accuracy"]
    low, high = accuracy["ci95"]
    assert f"{accuracy['value']:.3f} ({low:.3f}–{high:.3f})" in text
    assert card.cross_hospital and any("held out" in frame.value.columns for frame in at.dataframe)
