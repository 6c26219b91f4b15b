"""Many readers at once: concurrent real browser sessions against ``streamlit run app.py`` on localhost.

Each session is its own playwright browser context (its own cookies, so its own Streamlit session) that opens
Diagnose, uploads full-resolution CXRs from ../shared/data/fullres under names that carry the session's number,
waits for every call, and exports the worklist CSV. Reported: errors (exceptions on the page, files missing from
a session's CSV, any other session's file in it), the time from upload to all calls (p50 / p95 over sessions)
and to the first call, and the server's RSS (the streamlit process and its children, sampled every 0.25 s):
the peak, and after the sessions have ended and Streamlit has dropped them (``server.disconnectedSessionTTL``).

    .venv/bin/python bench/sessions.py [--sessions 16] [--files 10] [--json]
"""

import argparse
import asyncio
import csv
import io
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.served_app import CHROMIUM, CHROMIUM_ARGS, served_app  # noqa: E402
from core.settings import SHARED_DATA  # noqa: E402

FULLRES = SHARED_DATA / "fullres"
SESSION_TIMEOUT_S = 600
SAMPLE_SECONDS = 0.25
DISCONNECTED_TTL_S = 10  # how long Streamlit keeps a closed session's state; its default is 120 s
SETTLE_S = 30  # after the TTL: time for Streamlit's session cleanup and Python's garbage collector
EXPORT_BUTTON = "Export CSV"
CALLED_TEXT = re.compile(r"\b(Called|Uncertain) ")  # the call sentence beside the viewer
FILE_COLUMN = "file"
MB = 1024 * 1024


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of ``process`` and its children, in bytes (0 once it is gone)."""
    total = 0
    try:
        for member in [process, *process.children(recursive=True)]:
            try:
                total += member.memory_info().rss
            except psutil.Error:
                continue
    except psutil.Error:
        return 0
    return total


class RssSampler(threading.Thread):
    """Samples a process tree's RSS until stopped; keeps the peak and the latest value."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.latest = 0
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            self.latest = tree_rss(self.process)
            self.peak = max(self.peak, self.latest)
            time.sleep(SAMPLE_SECONDS)


def session_files(folder: Path, session: int, count: int) -> list:
    """``count`` full-resolution CXRs (a different rotation per session) copied under names that start with
    the session's tag, so a study shown to the wrong session is recognisable by its name."""
    sources = sorted(p for p in FULLRES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    chosen = [sources[(session + k) % len(sources)] for k in range(count)]
    target = folder / f"s{session:02d}"
    target.mkdir()
    paths = []
    for index, source in enumerate(chosen):
        path = target / f"s{session:02d}-{index:02d}-{source.name}"
        shutil.copyfile(source, path)
        paths.append(path)
    return paths


async def one_session(browser, url: str, session: int, files: list) -> dict:
    """Upload ``files`` in a fresh context, wait for every call, export the worklist; what the session saw."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = await context.new_page()
    page.set_default_timeout(SESSION_TIMEOUT_S * 1000)
    errors = []
    try:
        await page.goto(url)
        await page.wait_for_selector("input[type=file]", state="attached")
        started = time.perf_counter()
        await page.set_input_files("input[type=file]", [str(path) for path in files])
        await page.get_by_text(CALLED_TEXT).first.wait_for()
        first_call = time.perf_counter() - started
        log(f"session {session}: first call after {first_call:.1f} s")
        export = page.get_by_role("button", name=EXPORT_BUTTON)
        await export.wait_for()
        names = await exported_names(page, export)
        deadline = time.monotonic() + SESSION_TIMEOUT_S
        while len(names) < len(files) and time.monotonic() < deadline:  # the worklist fills as studies are read
            await page.wait_for_timeout(500)
            names = await exported_names(page, export)
        all_calls = time.perf_counter() - started
        if await page.locator('[data-testid="stException"]').count():
            errors.append("an exception is shown on the page")
        own = {path.name for path in files}
        if set(names) != own:
            errors.append(f"the worklist lacks {sorted(own - set(names))}")
        foreign = sorted(name for name in names if not name.startswith(f"s{session:02d}-"))
        if foreign:
            errors.append(f"another session's studies are listed: {foreign}")
        log(f"session {session}: {len(names)} studies listed, all calls after {all_calls:.1f} s")
        return {"session": session, "first_call_s": first_call, "all_calls_s": all_calls, "errors": errors}
    except Exception as error:  # a timeout or a page that broke: count it, keep the other sessions going
        return {
            "session": session,
            "first_call_s": None,
            "all_calls_s": None,
            "errors": errors + [f"{type(error).__name__}: {error}"],
        }
    finally:
        await context.close()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def exported_names(page, export) -> list:
    """The file names in the worklist CSV the page exports now."""
    async with page.expect_download() as download_info:
        await export.click()
    download = await download_info.value
    text = Path(await download.path()).read_text()
    return [row[FILE_COLUMN] for row in csv.DictReader(io.StringIO(text))]


async def all_sessions(url: str, folder: Path, sessions: int, count: int) -> list:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            return await asyncio.gather(
                *(one_session(browser, url, s, session_files(folder, s, count)) for s in range(sessions))
            )
        finally:
            await browser.close()


def percentile(values: list, q: float):
    return float(np.percentile(values, q)) if values else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--files", type=int, default=10, help="full-resolution CXRs uploaded by each session")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cxr-sessions-") as temporary:
        folder = Path(temporary)
        options = {"server.disconnectedSessionTTL": DISCONNECTED_TTL_S}
        with served_app(folder / "streamlit.log", options=options) as (url, server):
            sampler = RssSampler(server.pid)
            try:
                idle = tree_rss(psutil.Process(server.pid))
                sampler.start()
                started = time.perf_counter()
                results = asyncio.run(all_sessions(url, folder, args.sessions, args.files))
                wall = time.perf_counter() - started
                time.sleep(DISCONNECTED_TTL_S + SETTLE_S)
                after = sampler.latest
            finally:
                sampler.stopped.set()
    times = [r["all_calls_s"] for r in results if r["all_calls_s"] is not None]
    firsts = [r["first_call_s"] for r in results if r["first_call_s"] is not None]
    summary = {
        "sessions": args.sessions,
        "files_per_session": args.files,
        "wall_s": round(wall, 1),
        "errors": sum(len(r["errors"]) for r in results),
        "sessions_with_errors": [r for r in results if r["errors"]],
        "all_calls_p50_s": percentile(times, 50),
        "all_calls_p95_s": percentile(times, 95),
        "first_call_p50_s": percentile(firsts, 50),
        "first_call_p95_s": percentile(firsts, 95),
        "rss_idle_mb": round(idle / MB),
        "rss_peak_mb": round(sampler.peak / MB),
        "rss_after_mb": round(after / MB),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:<22} {value if not isinstance(value, float) else round(value, 2)}")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
