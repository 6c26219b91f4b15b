"""The app as a reader meets it: ``streamlit run app.py`` in a subprocess on a free localhost port, and the
Debian chromium that playwright drives against it. Shared by the browser tests and ``bench/sessions.py``."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from core.settings import REPO_ROOT

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "free_port", "served_app"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SERVER_START_S = 90
STOP_S = 30
SERVER_OPTIONS = {
    "server.headless": "true",
    "server.address": "127.0.0.1",
    "browser.gatherUsageStats": "false",
    "server.fileWatcherType": "none",  # watching the whole checkout floods inotify on a busy machine
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer at {url} within {SERVER_START_S} s; see {log_path}")


@contextlib.contextmanager
def served_app(log_path: Path, environment: dict = None, options: dict = None, shipped_config=False):
    """``streamlit run app.py`` on a free localhost port with ``environment`` added to this process's and
    ``options`` added to ``SERVER_OPTIONS`` (to none with ``shipped_config``: the repository's
    .streamlit/config.toml as a department runs it); yields (url, process) once it answers its health check, and
    stops it (terminate, then kill after ``STOP_S``) on leaving. Its output goes to ``log_path``."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    for name, value in {**({} if shipped_config else SERVER_OPTIONS), **(options or {})}.items():
        command += [f"--{name}", str(value)]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(environment or {})},
        )
        try:
            _wait_until_healthy(url, process, log_path)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
