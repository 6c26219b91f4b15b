"""Speed as a reader feels it, in a real browser (Debian chromium, 1440 × 900) against ``streamlit run app.py`` on
the shipped default, with the repository's own ``.streamlit/config.toml`` (no option overridden but the port):

  first visit       a fresh server answers its health check → the Diagnose uploader is on screen (a new server
                    each try: the first visit pays for Python's imports)
  upload → call     a full-resolution CXR given to the uploader → its call sentence on screen
  slider → idle     Operating point: the threshold slider moved one step (the keyboard) → the page's last change
                    (no DOM change for ``QUIET_MS``); "feedback" is the slider's exact-threshold caption updated
  page switch       a page of the top bar clicked → that page's last change, for each page
  idle CPU          the server's CPU time (its process and children) over ``IDLE_S`` seconds after the visits,
                    the tab left open, as % of one core; and the lines it logged meanwhile

Each figure is the median of ``--tries`` tries in this one run (the machine is shared: compare only within a run).

    .venv/bin/python bench/reader_felt.py [--tries 5] [--idle 60] [--json]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.served_app import CHROMIUM, CHROMIUM_ARGS, served_app  # noqa: E402
from core.settings import SHARED_DATA  # noqa: E402

VIEWPORT = {"width": 1440, "height": 900}
CXR = SHARED_DATA / "fullres" / "COVID19__covid-19-pneumonia-15-PA.jpg"
PAGES = ["Operating point", "Models", "Site validation", "Retrain", "Diagnose"]
QUIET_MS = 400  # no DOM change for this long: the page is idle
TIMEOUT_MS = 120_000
BARS = {"first visit (s)": 5.0, "slider → idle (ms)": 300.0, "page switch (ms)": 500.0, "idle CPU (% of a core)": 3.0}
# The DOM's changes after an action, timed in the page: when the last one happened, with nothing for QUIET_MS.
WATCH_CHANGES = """() => {
    window.__lastChange = performance.now();
    window.__changes = new MutationObserver(() => { window.__lastChange = performance.now(); });
    window.__changes.observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
}"""
QUIET = f"() => performance.now() - window.__lastChange > {QUIET_MS}"
# When the slider's exact-threshold caption first shows another value than ``before``.
WATCH_FEEDBACK = """(before) => {
    window.__feedback = null;
    const watch = new MutationObserver(() => {
        const moved = [...document.querySelectorAll('p')]
            .some(p => p.textContent.startsWith('Exact threshold') && p.textContent !== before);
        if (moved) { window.__feedback = performance.now(); watch.disconnect(); }
    });
    watch.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def open_tab(playwright, url: str):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    return browser, page


def until_idle(page, action) -> tuple:
    """(start, ms from ``action()`` to the page's last DOM change, then ``QUIET_MS`` of none)."""
    page.evaluate(WATCH_CHANGES)
    start = page.evaluate("() => performance.now()")
    action()
    page.wait_for_timeout(QUIET_MS)
    page.wait_for_function(QUIET, polling=50)
    page.wait_for_function("""() => !document.querySelector('[data-testid="stStatusWidget"]')""")
    return start, page.evaluate("() => window.__lastChange") - start


def first_visit(playwright, log_dir: Path, tries: int) -> list:
    """Seconds from a fresh server's health answer to the uploader on screen, one fresh server per try."""
    seconds = []
    for number in range(tries):
        with served_app(log_dir / f"first_visit_{number}.log", shipped_config=True) as (url, _):
            browser, page = open_tab(playwright, url)
            try:
                start = time.perf_counter()
                page.goto(url)
                page.get_by_text("Chest X-rays, or a zip").wait_for()
                seconds.append(time.perf_counter() - start)
            finally:
                browser.close()
    return seconds


def upload_to_call(page) -> float:
    """ms from giving the uploader a film to its call sentence on screen."""
    start = page.evaluate("() => performance.now()")
    page.set_input_files("input[type=file]", str(CXR))
    page.get_by_text("Called ", exact=False).first.wait_for()
    return page.evaluate("() => performance.now()") - start


def slider_changes(page, tries: int) -> tuple:
    """(feedback ms, idle ms) per threshold step on the Operating point page, alternating right and left."""
    page.get_by_role("link", name="Operating point").click()
    slider = page.get_by_role("slider").first
    slider.wait_for()
    page.wait_for_timeout(1000)
    feedback, idle = [], []
    for number in range(tries):
        page.evaluate(WATCH_FEEDBACK, page.get_by_text("Exact threshold").first.inner_text())
        slider.focus()
        key = "ArrowRight" if number % 2 == 0 else "ArrowLeft"
        start, to_idle = until_idle(page, lambda key=key: page.keyboard.press(key))
        idle.append(to_idle)
        feedback.append(page.evaluate("() => window.__feedback") - start)
    return feedback, idle


def page_switches(page, tries: int) -> dict:
    """ms from a top-bar click to the page's last change, per page, ``tries`` rounds through ``PAGES``."""
    times = {name: [] for name in PAGES}
    for _ in range(tries):
        for name in PAGES:
            link = page.get_by_role("link", name=name, exact=True)
            times[name].append(until_idle(page, link.click)[1])
    return times


def idle_cpu(process: psutil.Process, seconds: float, log_path: Path) -> tuple:
    """(% of one core the server used over ``seconds``, lines it logged meanwhile)."""

    def cpu() -> float:
        total = 0.0
        for member in [process, *process.children(recursive=True)]:
            times = member.cpu_times()
            total += times.user + times.system
        return total

    lines_before = log_path.read_text(errors="replace").count("\n")
    before, start = cpu(), time.perf_counter()
    time.sleep(seconds)
    used, elapsed = cpu() - before, time.perf_counter() - start
    return 100.0 * used / elapsed, log_path.read_text(errors="replace").count("\n") - lines_before


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idleness measured")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    results = {}
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        log_dir = Path(folder)
        results["first visit (s)"] = first_visit(playwright, log_dir, min(args.tries, 3))
        log_path = log_dir / "reader.log"
        with served_app(log_path, shipped_config=True) as (url, process):
            browser, page = open_tab(playwright, url)
            try:
                page.goto(url)
                page.get_by_text("Chest X-rays, or a zip").wait_for()
                results["upload → call (ms)"] = [upload_to_call(page)]
                feedback, idle = slider_changes(page, args.tries)
                results["slider → feedback (ms)"], results["slider → idle (ms)"] = feedback, idle
                for name, times in page_switches(page, args.tries).items():
                    results[f"page switch → {name} (ms)"] = times
                results["page switch (ms)"] = [t for name in PAGES for t in results[f"page switch → {name} (ms)"]]
                cpu, lines = idle_cpu(psutil.Process(process.pid), args.idle, log_path)
                results["idle CPU (% of a core)"], results["log lines while idle"] = [cpu], [lines]
            finally:
                browser.close()
    medians = {name: statistics.median(values) for name, values in results.items()}
    if args.json:
        print(json.dumps({"medians": medians, "tries": results}, indent=1))
        return 0
    print(f"{'measure':34} {'median':>9}  {'bar':>6}  tries")
    for name, median in medians.items():
        bar = BARS.get(name)
        verdict = "" if bar is None else ("met" if median <= bar else "NOT met")
        tries = ", ".join(f"{value:.0f}" if value >= 10 else f"{value:.2f}" for value in results[name])
        print(f"{name:34} {median:9.2f}  {'' if bar is None else f'≤ {bar:g}':>6} {verdict:7}  {tries}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
