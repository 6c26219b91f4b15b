"""Crash safety, for real: trainer processes are killed with SIGKILL at five moments (during data loading,
mid-epoch, right after a checkpoint, during evaluation, mid-publish). After each kill the active version is
unchanged and loadable, the version listing holds only complete versions, and ``--resume`` carries the run on;
the last resume finishes it. Kill moments are found by polling the run's files and events (no test hooks)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from core import registry
from tests.conftest import CXR_POOL, REPO, needs_shared_data
from train.jobs import supervisor
from train.trainer.checkpoints import read_state
from train.trainer.config import TrainConfig
from train.trainer.progress import read_events
from train.trainer.run import CANDIDATE

QUICK = {"arch": "dcnn80-compact", "epochs": 2, "limit_per_class": 40, "batch_size": 16}
POLL_SECONDS = 0.02
PHASE_TIMEOUT = 240
PADDING_BYTES = 64 * 1024 * 1024
pytestmark = pytest.mark.slow  # real trainer processes killed and resumed

PUBLISH_LOOP = (
    "import sys; from pathlib import Path; from train.trainer.run import publish_candidate\n"
    "for i in range(1000): publish_candidate(Path(sys.argv[1]), f'copy{i}')"
)


def wait_for(condition, what, timeout=PHASE_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"timed out waiting for {what}")


def has_event(run_dir, name):
    return any(e["event"] == name for e in read_events(run_dir))


def kill_9(run_dir):
    pid = supervisor.run_info(run_dir).pid
    assert pid, "the trainer is not running"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: supervisor.run_info(run_dir).pid is None, "the trainer to die", timeout=20)


def assert_registry_intact(weights, listing_before, active):
    assert sorted(os.listdir(weights)) == listing_before
    assert registry.active_version() == active
    assert registry.list_versions() == [active]
    registry.load_model()


@needs_shared_data
def test_kill_9_during_training_then_resume_finishes(tiny_version, isolated_folders):
    weights = isolated_folders / "weights"
    listing = sorted(os.listdir(weights))
    run_dir = supervisor.start_run(TrainConfig(data=str(CXR_POOL), **QUICK))
    prepared = (run_dir / "config.json").stat().st_ino
    moments = [
        # the trainer rewrites config.json as it starts reading the data; split.csv is written when it is done
        (
            "data loading",
            lambda: (run_dir / "config.json").stat().st_ino != prepared,
            lambda: not (run_dir / "split.csv").exists(),
        ),
        ("mid-epoch", lambda: has_event(run_dir, "step"), lambda: read_state(run_dir)["epoch"] == 0),
        (
            "after a checkpoint",
            lambda: read_state(run_dir)["epoch"] == 1,
            lambda: (run_dir / read_state(run_dir)["checkpoint"]).is_file(),
        ),
        ("evaluation", lambda: has_event(run_dir, "evaluating"), lambda: not (run_dir / CANDIDATE).exists()),
    ]
    for moment, reached, killed_in_time in moments:
        wait_for(reached, moment)
        kill_9(run_dir)
        assert killed_in_time(), f"the kill came too late for '{moment}'"
        assert supervisor.run_info(run_dir).status == "interrupted"
        assert supervisor.lock_holder() is None
        assert_registry_intact(weights, listing, tiny_version)
        supervisor.resume_run(run_dir)

    wait_for(lambda: supervisor.run_info(run_dir).status != "running", "the resumed run to end")
    assert supervisor.run_info(run_dir).status == "finished", supervisor.log_tail(run_dir)
    starts = [e for e in read_events(run_dir) if e["event"] == "start"]
    assert starts[-2]["initial_epoch"] == 1  # the run resumed from the checkpoint of the first epoch
    assert registry.is_complete(run_dir / CANDIDATE)
    assert_registry_intact(weights, listing, tiny_version)
    supervisor.publish_run(run_dir, "after-crashes")
    assert registry.load_model("after-crashes") is not None


def test_kill_9_mid_publish_leaves_only_a_hidden_staging_folder(tiny_version, isolated_folders, tmp_path):
    weights = isolated_folders / "weights"
    run_dir = tmp_path / "run"
    (run_dir / CANDIDATE).mkdir(parents=True)
    for item in (weights / tiny_version).iterdir():
        (run_dir / CANDIDATE / item.name).write_bytes(item.read_bytes())
    (run_dir / CANDIDATE / "padding.bin").write_bytes(bytes(PADDING_BYTES))  # a large file: a slow copy
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISH_LOOP, str(run_dir)], cwd=REPO)
    try:
        wait_for(
            lambda: any((p / "padding.bin").exists() for p in weights.glob(registry.STAGING_PREFIX + "*")),
            "a publish to be copying",
            timeout=120,
        )
        publisher.kill()
        publisher.wait()
    finally:
        publisher.kill()
    staging = list(weights.glob(registry.STAGING_PREFIX + "*"))
    assert staging, "the kill came after the publish finished"
    assert registry.active_version() == tiny_version
    registry.load_model()
    for version in registry.list_versions()[1:]:  # copies published before the kill are complete
        assert (weights / version / "padding.bin").stat().st_size == PADDING_BYTES
    registry.remove_stale_staging()
    assert [p.name for p in weights.glob(".*")] in ([], [registry.LOCK_FILE])  # the lock file may stay
    assert registry.active_version() == tiny_version
