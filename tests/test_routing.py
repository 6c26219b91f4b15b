"""A page's own URL on a fresh server (a bookmark, a reload) opens that page inside the app — navigation, wide
layout and sidebar — not Streamlit's folder-based page list (``pages.common.run_through_app``)."""

import pytest

from bench.served_app import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import needs_chromium
from tests.test_browser import PAGE_TIMEOUT_MS

pytestmark = [pytest.mark.slow, needs_chromium]


def test_a_pages_own_url_as_the_first_request_opens_it_inside_the_app(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(f"{app_url}/operating_point")
            page.get_by_role("heading", name="Operating point").wait_for()
            page.get_by_text("Active model:").wait_for(state="attached")  # the app's sidebar (it starts closed)
            page.locator('[data-testid="stTopNavLink"]').first.wait_for()
            navigation = " ".join(page.locator('[data-testid="stTopNavLink"]').all_inner_texts())
            assert "Diagnose" in navigation and "Models" in navigation
            assert "common" not in navigation and "app" not in navigation.split()
        finally:
            browser.close()
