"""The Site validation page and the site on Diagnose (AppTest): the site named in the sidebar and on every call,
validation of a labelled folder from the page, a reader's finding stored in the site's set."""

import pytest
from streamlit.testing.v1 import AppTest

from core.findings import site_counts
from tests.conftest import FULLRES, REPO, needs_shared_data
from tests.test_site import make_site_set

pytestmark = needs_shared_data


def open_page(page: str = None) -> AppTest:
    """The app on its default page (Diagnose), or on ``page``; AppTest draws the sidebar on the first run only."""
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    app.run()
    if page:
        app.switch_page(page)
        app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def texts(app) -> str:
    """Every message on the page as the reader sees it (the page backslash-escapes user-derived text)."""
    kinds = ("markdown", "warning", "success", "error", "caption", "info")
    elements = [element for kind in kinds for place in (app, app.sidebar) for element in getattr(place, kind)]
    return " ".join(str(element.value) for element in elements).replace("\\", "")


def test_without_a_site_every_page_says_so_and_a_bad_cxr_site_is_named(tiny_version, monkeypatch):
    app = open_page()
    assert "No site configured (CXR_SITE)" in texts(app)
    monkeypatch.setenv("CXR_SITE", "a/b")
    app = open_page()
    assert "not a plain site name" in texts(app)


def test_diagnose_says_the_version_is_not_validated_here(tiny_version, monkeypatch):
    monkeypatch.setenv("CXR_SITE", "General")
    app = open_page()
    assert "Not validated at General: measured on other hospitals only." in texts(app)
    assert "`General`" in texts(app)


@pytest.mark.slow
def test_the_page_validates_a_folder_and_records_it_in_the_card(tiny_version, monkeypatch, isolated_folders):
    from core import registry

    monkeypatch.setenv("CXR_SITE", "General")
    folder = make_site_set(isolated_folders / "uploads" / "general-films", 6)
    app = open_page("pages/site.py")
    choice = next(box for box in app.selectbox if box.key == "validate_folder")
    choice.set_value(next(option for option in choice.options if "general-films" in option)).run()
    app.text_input(key="validate_who").input("Dr Test").run()
    next(button for button in app.button if button.label == "Validate").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("where it was trained" in str(element.value) for element in [*app.error, *app.warning, *app.success])
    card = registry.load_card(tiny_version)
    assert card.sites[-1]["site"] == "General" and card.sites[-1]["n"] == 18 and card.sites[-1]["who"] == "Dr Test"
    assert folder.is_dir()


@pytest.mark.slow
def test_a_recorded_finding_stores_the_study_in_the_sites_set(tiny_version, monkeypatch):
    monkeypatch.setenv("CXR_SITE", "General")
    app = open_page()
    cxr = FULLRES / "NORMAL__IM-0636-0001.jpeg"
    app.get("file_uploader")[0].set_value([(cxr.name, cxr.read_bytes(), "image/jpeg")])
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    kind = next(radio for radio in app.radio if radio.label == "Finding")
    kind.set_value("corrected")
    next(box for box in app.selectbox if box.label == "The film shows").set_value("Normal")
    app.text_input(key="finding_reader").input("Dr Test")
    next(button for button in app.button if button.label == "Record").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert site_counts("General") == {"COVID-19": 0, "Normal": 1, "Pneumonia": 0}
    assert any("Stored" in str(element.value) for element in app.success)
