"""train.jobs.supervisor: one run at a time whoever starts it (the CLI takes the app's lock), and a cancel that is
robust to a trainer that already ended. Real processes, no training."""

import json
import subprocess
import sys
import textwrap
import time

import pytest

from core import settings
from tests.conftest import REPO
from train.jobs import supervisor

HOLD_SECONDS = 60


def hold_the_lock(run_dir) -> subprocess.Popen:
    """Another process that takes the run lock as a CLI trainer does, then waits."""
    code = textwrap.dedent(f"""
        import sys, time
        from train.jobs import supervisor
        supervisor.take_lock({str(run_dir)!r})
        print("locked", flush=True)
        time.sleep({HOLD_SECONDS})
    """)
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_cli_trainer_refuses_to_start_while_another_process_holds_the_lock(isolated_folders, tmp_path, capsys):
    from train.__main__ import main

    holder = hold_the_lock(settings.runs_dir() / "other-run")
    try:
        assert supervisor.lock_holder()["pid"] == holder.pid
        with pytest.raises(supervisor.RunBusyError, match="other-run"):
            supervisor.take_lock(tmp_path / "mine")
        status = main(["--data", str(tmp_path), "--run-dir", str(tmp_path / "mine"), "--quiet"])
        assert status == 3
        assert f"process {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert supervisor.lock_holder() is None  # a dead holder frees the lock
    supervisor.take_lock(tmp_path / "mine")
    assert supervisor.lock_holder()["run"] == str((tmp_path / "mine").resolve())
    supervisor.release_lock()
    assert not (settings.runs_dir() / supervisor.LOCK_FILE).exists()


def test_release_leaves_another_processs_lock_alone(isolated_folders, tmp_path):
    holder = hold_the_lock(tmp_path / "theirs")
    try:
        supervisor.release_lock()
        assert supervisor.lock_holder()["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_cancelling_a_trainer_that_has_just_ended_is_not_an_error(isolated_folders, monkeypatch):
    run_dir = settings.runs_dir() / "run"
    run_dir.mkdir(parents=True)
    (run_dir / supervisor.CONFIG_FILE).write_text("{}")
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    record = {"pid": ended.pid, "started": time.time()}
    (run_dir / supervisor.PROCESS_FILE).write_text(json.dumps(record))
    # The trainer ends between the status check and the signal: os.kill raises ProcessLookupError.
    real_run_info = supervisor.run_info
    first = [True]

    def alive_once(path):
        info = real_run_info(path)
        if first[0]:
            first[0] = False
            info.pid = ended.pid
        return info

    monkeypatch.setattr(supervisor, "run_info", alive_once)
    assert supervisor.cancel_run(run_dir, grace=1.0) == "cancelled"
    assert [e["event"] for e in supervisor.run_info(run_dir).events] == ["cancelled"]
