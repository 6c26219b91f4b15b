"""The Diagnose page in a real browser: `streamlit run app.py` in a subprocess, Debian's chromium driven by
playwright, real full-resolution CXRs uploaded through the page's file input; the viewer's zoom and window, the
worklist and its exports. Screenshots go to test-artifacts/."""

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.served_app import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import FULLRES, REPO, needs_chromium

CXR = FULLRES / "COVID19__covid-19-pneumonia-15-PA.jpg"
ARTIFACTS = REPO / "test-artifacts"
SCREENSHOT = ARTIFACTS / "diagnose.png"
SELECTION_CELL_X, TABLE_HEADER_PX, TABLE_ROW_PX = 15, 35, 35  # Streamlit's dataframe: row-selection column, row heights
FILE_CELL_X = 120  # past the selection and thumbnail columns: the file name
VIEWPORT = {"width": 1440, "height": 900}
PAGE_TIMEOUT_MS = 240_000  # generous: CI machines are small and shared

pytestmark = [pytest.mark.slow, needs_chromium]


def open_page(playwright, app_url):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(app_url)
    page.wait_for_selector("input[type=file]", state="attached")
    return browser, page


def viewer_state(page) -> dict:
    """The film viewer's state as it publishes it: the study, the film's x and y ranges on screen, the zoom, the
    window (display greys), invert and overlay."""
    return json.loads(page.evaluate("() => document.querySelector('.cxr-viewer').dataset.state || '{}'"))


def wait_for_viewer(page, study=None) -> None:
    """Until the viewer shows a film (``study``'s, when given)."""
    page.wait_for_function(
        """(study) => {
        const viewer = document.querySelector('.cxr-viewer');
        if (!viewer || !viewer.dataset.state) return false;
        const state = JSON.parse(viewer.dataset.state);
        return state.ready && (!study || state.study === study);
    }""",
        arg=study,
    )


def wait_for_rerun(page) -> None:
    """Until the page's reruns are over: the script not running, twice half a second apart (a rerun can start
    another, e.g. the worklist's tick following the study)."""
    for _ in range(2):
        page.wait_for_timeout(500)
        page.wait_for_function(
            """() => document.querySelector('[data-testid="stApp"]').dataset.testScriptState === 'notRunning'"""
        )


def wait_for_card(page, name: str) -> None:
    """Until the study card beside the viewer is ``name``'s."""
    page.wait_for_function(
        """(name) => [...document.querySelectorAll('[data-testid="stMarkdownContainer"] strong')]
        .some(strong => strong.textContent === name)""",
        arg=name,
    )


def ticked(page, x: float, y: float, settle_ms=5000) -> bool:
    """Whether the worklist's selection cell at (x, y) shows its tick (a filled red circle) on the canvas, within
    ``settle_ms`` (the table redraws a moment after the rerun that moved the tick)."""
    for _ in range(settle_ms // 250):
        shot = page.screenshot(clip={"x": x - 3, "y": y - 3, "width": 6, "height": 6})
        red, green, _ = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), float).reshape(-1, 3).mean(axis=0)
        if red > 150 and green < 120:
            return True
        page.wait_for_timeout(250)
    return False


def test_upload_a_cxr_and_see_probabilities_and_overlay(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser, page = open_page(playwright, app_url)
        try:
            page.set_input_files("input[type=file]", str(CXR))
            page.wait_for_selector(".js-plotly-plot .bars")
            wait_for_viewer(page)
            assert page.get_by_text(re.compile(r"^Called ")).count() == 1
            assert page.locator(".cxr-viewer-colorbar").is_visible()  # the overlay's colour scale
            assert viewer_state(page)["overlay"] is True
            assert page.locator('[data-testid="stException"]').count() == 0
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 0


def test_the_view_survives_every_control_and_the_worklist_never_lies(app_url):
    """Five real films: a wheel zoom, then a window preset, the overlay toggled, an opacity change (a rerun of
    the page) and the filter opened and closed leave the film's x-range as it was; a right-drag sets the
    window; the keyboard opens the next study, whose row is then the ticked one; a click on a row's file name
    opens that study; every study stays listed; the worklist exports a CSV in its order, the study a PDF."""
    from playwright.sync_api import sync_playwright

    films = [CXR, *sorted(path for path in FULLRES.glob("*.jp*g") if path != CXR)[:4]]
    with sync_playwright() as playwright:
        browser, page = open_page(playwright, app_url)
        try:
            page.set_input_files("input[type=file]", [str(path) for path in films])
            wait_for_viewer(page)
            page.wait_for_selector('[data-testid="stDataFrame"]')
            wait_for_rerun(page)
            canvas = page.locator(".cxr-viewer canvas")
            canvas.scroll_into_view_if_needed()
            box = canvas.bounding_box()
            assert box["width"] > 0.5 * VIEWPORT["width"] and box["height"] > 0.75 * VIEWPORT["height"]  # film first
            before = viewer_state(page)
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            for _ in range(4):
                page.mouse.wheel(0, -200)
            page.wait_for_timeout(200)
            zoomed = viewer_state(page)
            assert zoomed["x"][1] - zoomed["x"][0] < 0.5 * (before["x"][1] - before["x"][0])
            page.screenshot(path=str(ARTIFACTS / "viewer_zoomed.png"))

            page.locator(".cxr-viewer-toolbar button", has_text="lung").click()
            page.keyboard.press("o")  # the overlay off, from the keyboard
            lung = viewer_state(page)
            assert (lung["level"], lung["width"]) != (before["level"], before["width"]) and not lung["overlay"]
            page.locator(".cxr-viewer-toolbar button", has_text="overlay").click()  # and on again
            page.get_by_test_id("stExpandSidebarButton").click()
            opacity = page.get_by_test_id("stSidebar").get_by_role("slider", name="Opacity")
            opacity.focus()
            page.keyboard.press("ArrowRight")  # a rerun of the whole page
            wait_for_rerun(page)
            page.get_by_test_id("stSidebar").hover()
            page.get_by_test_id("stSidebarCollapseButton").locator("button").click()
            page.get_by_role("button", name="Filter").click()
            page.keyboard.press("Escape")
            wait_for_rerun(page)
            page.wait_for_timeout(500)  # the sidebar's animation: the canvas back to its width
            kept = viewer_state(page)
            assert kept["study"] == zoomed["study"] and kept["overlay"] and kept["zoom"] == zoomed["zoom"]
            assert kept["x"] == pytest.approx(zoomed["x"], abs=1e-6)
            assert (kept["level"], kept["width"]) == (lung["level"], lung["width"])

            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down(button="right")
            page.mouse.move(box["x"] + box["width"] / 2 + 40, box["y"] + box["height"] / 2 + 20, steps=4)
            page.mouse.up(button="right")
            dragged = viewer_state(page)
            assert dragged["width"] > kept["width"] and dragged["level"] > kept["level"]
            assert page.locator(".cxr-viewer-readout").inner_text().startswith(f"W {dragged['width']} · L ")

            worklist = page.locator('[data-testid="stDataFrame"]')
            assert page.get_by_text(f"Worklist ({len(films)} studies)").is_visible()
            assert page.get_by_text("hidden by the filter").count() == 0
            page.locator(".cxr-viewer").focus()
            page.keyboard.press("ArrowDown")  # the next study in the worklist's order
            page.wait_for_function(
                "(study) => JSON.parse(document.querySelector('.cxr-viewer').dataset.state).study !== study",
                arg=kept["study"],
            )
            wait_for_rerun(page)
            worklist.screenshot(path=str(ARTIFACTS / "worklist.png"))
            with page.expect_download() as csv_download:
                page.get_by_role("button", name="Export CSV").click()
            names = [row["file"] for row in csv.DictReader(open(csv_download.value.path()))]  # the table's order
            assert sorted(names) == sorted(path.name for path in films)
            wait_for_card(page, names[1])
            grid = worklist.bounding_box()  # the table is a canvas: the second row is ticked, the first is not
            second_row_y = grid["y"] + TABLE_HEADER_PX + 1.5 * TABLE_ROW_PX
            assert ticked(page, grid["x"] + SELECTION_CELL_X, second_row_y)
            assert not ticked(page, grid["x"] + SELECTION_CELL_X, second_row_y - TABLE_ROW_PX, settle_ms=250)

            page.mouse.click(grid["x"] + FILE_CELL_X, second_row_y + TABLE_ROW_PX)  # the third row's file name
            wait_for_card(page, names[2])
            wait_for_rerun(page)
            worklist.screenshot(path=str(ARTIFACTS / "worklist_clicked.png"))
            assert ticked(page, grid["x"] + SELECTION_CELL_X, second_row_y + TABLE_ROW_PX)
            with page.expect_download() as pdf_download:
                page.get_by_role("button", name="Report (PDF)").click()
            assert Path(pdf_download.value.path()).read_bytes().startswith(b"%PDF")
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(ARTIFACTS / "diagnose_reading_room.png"))
        finally:
            browser.close()
