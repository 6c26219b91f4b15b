"""The Diagnose page in a real browser: `streamlit run app.py` in a subprocess, Debian's chromium driven by
playwright, real full-resolution CXRs uploaded through the page's file input; the viewer's zoom and window, the
worklist and its exports. Screenshots go to test-artifacts/."""

import re
from pathlib import Path

import pytest

from bench.served_app import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import FULLRES, REPO, needs_chromium

CXR = FULLRES / "COVID19__covid-19-pneumonia-15-PA.jpg"
ARTIFACTS = REPO / "test-artifacts"
SCREENSHOT = ARTIFACTS / "diagnose.png"
SELECTION_CELL_X, TABLE_HEADER_PX, TABLE_ROW_PX = 15, 35, 35  # Streamlit's dataframe: row-selection column, row heights
PAGE_TIMEOUT_MS = 240_000  # generous: CI machines are small and shared

pytestmark = [pytest.mark.slow, needs_chromium]


def open_page(playwright, app_url):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(app_url)
    page.wait_for_selector("input[type=file]", state="attached")
    return browser, page


def viewer_state(page) -> dict:
    """The viewer's x and y ranges and its film's URL, as plotly holds them in the browser."""
    return page.evaluate("""() => {
        const plot = document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')[0];
        const layout = plot._fullLayout;
        return {x: layout.xaxis.range.slice(), y: layout.yaxis.range.slice(), film: layout.images[0].source};
    }""")


def wait_for_viewer(page) -> None:
    page.wait_for_selector('[data-testid="stPlotlyChart"] .js-plotly-plot .heatmaplayer image', state="attached")
    page.wait_for_function("""() => {
        const image = document.querySelector('[data-testid="stPlotlyChart"] .imagelayer image');
        return image && image.getAttribute('href');
    }""")


def test_upload_a_cxr_and_see_probabilities_and_overlay(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser, page = open_page(playwright, app_url)
        try:
            page.set_input_files("input[type=file]", str(CXR))
            page.wait_for_selector(".js-plotly-plot .bars")
            wait_for_viewer(page)
            assert page.get_by_text(re.compile(r"^Called ")).count() == 1
            assert page.locator(".js-plotly-plot .colorbar").count() == 1  # the overlay's colour scale
            assert page.locator('[data-testid="stException"]').count() == 0
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 0


def test_viewer_zooms_and_windows_and_the_worklist_exports(app_url):
    """A full-resolution CXR and a second film: the wheel zooms the viewer (its axis ranges shrink), the lung
    window changes the film, the worklist shows both studies, a click on a row opens that study, and the
    worklist exports a CSV and the study a PDF report."""
    from playwright.sync_api import sync_playwright

    other = FULLRES / "NORMAL__IM-0636-0001.jpeg"
    with sync_playwright() as playwright:
        browser, page = open_page(playwright, app_url)
        try:
            page.set_input_files("input[type=file]", [str(CXR), str(other)])
            wait_for_viewer(page)
            page.wait_for_selector('[data-testid="stDataFrame"]')
            before = viewer_state(page)
            page.screenshot(path=str(ARTIFACTS / "viewer_before_zoom.png"))
            plot_area = page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot .nsewdrag').first
            plot_area.scroll_into_view_if_needed()
            box = plot_area.bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            for _ in range(5):
                page.mouse.wheel(0, -200)
                page.wait_for_timeout(150)
            page.wait_for_function(
                """(before) => {
                const range = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot')
                    ._fullLayout.xaxis.range;
                return Math.abs(range[1] - range[0]) < 0.9 * Math.abs(before[1] - before[0]);
            }""",
                arg=before["x"],
            )
            zoomed = viewer_state(page)
            assert abs(zoomed["x"][1] - zoomed["x"][0]) < abs(before["x"][1] - before["x"][0])
            page.screenshot(path=str(ARTIFACTS / "viewer_after_zoom.png"))

            page.get_by_role("radio", name="lung").click()
            page.wait_for_function(
                """(film) => document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot')
                ._fullLayout.images[0].source !== film""",
                arg=before["film"],
            )
            page.wait_for_function("""() => {  // the rerun is over: the Width slider shows the lung window's width
                const width = [...document.querySelectorAll('[data-testid="stSlider"]')]
                    .find(slider => slider.textContent.startsWith('Width'));
                return width && !width.textContent.startsWith('Width256');  // label, value, then the range
            }""")
            page.wait_for_function("""() =>  // the rerun's stale copies gone: the viewer and the bars, once each
                document.querySelectorAll('[data-testid="stPlotlyChart"]').length === 2""")
            page.screenshot(path=str(ARTIFACTS / "viewer_lung_window.png"))

            worklist = page.locator('[data-testid="stDataFrame"]')
            assert worklist.is_visible()
            worklist.screenshot(path=str(ARTIFACTS / "worklist.png"))
            grid = worklist.bounding_box()  # the table is a canvas: click the second row's selection cell
            page.mouse.click(grid["x"] + SELECTION_CELL_X, grid["y"] + TABLE_HEADER_PX + 1.5 * TABLE_ROW_PX)
            page.wait_for_function(
                """(name) => [...document.querySelectorAll('[data-testid="stMarkdownContainer"] strong')]
                .some(strong => strong.textContent === name)""",
                arg=other.name,
            )  # the card of the row clicked
            page.wait_for_function("""() => document.querySelectorAll('[data-testid="stPlotlyChart"]').length === 2""")
            with page.expect_download() as csv_download:
                page.get_by_role("button", name="Export CSV").click()
            csv_text = Path(csv_download.value.path()).read_text()
            assert csv_text.startswith("file,p_COVID-19,") and CXR.name in csv_text and other.name in csv_text
            with page.expect_download() as pdf_download:
                page.get_by_role("button", name="Report (PDF)").click()
            assert Path(pdf_download.value.path()).read_bytes().startswith(b"%PDF")
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(ARTIFACTS / "diagnose_reading_room.png"), full_page=True)
        finally:
            browser.close()
