"""The Diagnose page in a real browser: `streamlit run app.py` in a subprocess, Debian's chromium driven by
playwright, a real full-resolution CXR uploaded through the page's file input."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core import registry
from tests.conftest import FULLRES, REPO, publish_random_version

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
CXR = FULLRES / "COVID19__covid-19-pneumonia-15-PA.jpg"
SCREENSHOT = REPO / "test-artifacts" / "diagnose.png"
SERVER_START_S = 60
PAGE_TIMEOUT_MS = 240_000  # generous: CI machines are small and shared

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (run `make browser`)")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer at {url} within {SERVER_START_S} s")


@pytest.fixture
def app_url(isolated_folders, tmp_path):
    """The app served on a free port, on the shipped version when one is active, else a random-weight one."""
    weights = REPO / "weights"
    if registry.active_version(weights) is None:
        weights = isolated_folders / "weights"
        publish_random_version(weights)
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    log = (tmp_path / "streamlit.log").open("w")
    process = subprocess.Popen(command, cwd=REPO, env=dict(os.environ, CXR_WEIGHTS_DIR=str(weights)),
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_upload_a_cxr_and_see_probabilities_and_overlay(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(app_url)
            page.wait_for_selector("input[type=file]", state="attached")
            page.set_input_files("input[type=file]", str(CXR))
            page.wait_for_selector(".js-plotly-plot .bars")
            overlay = page.locator('[data-testid="stImage"] img').nth(1)
            overlay.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=overlay.element_handle())
            assert page.get_by_text("Call:").count() == 1
            assert page.locator('[data-testid="stException"]').count() == 0
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 0
