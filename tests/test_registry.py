"""core.registry: versions, the active pointer, atomic publishing; publish / delete / activate from two real
processes at once, and with the leftovers of killed ones."""

import json
import multiprocessing
import shutil
import subprocess
import sys
import time

import pytest

from core import registry
from tests.conftest import publish_random_version


def test_publish_activate_and_list(isolated_folders):
    root = isolated_folders / "weights"
    publish_random_version(root, "v1")
    publish_random_version(root, "v2", activate=False)
    assert registry.list_versions(root) == ["v1", "v2"]
    assert registry.active_version(root) == "v1"
    registry.set_active("v2", root)
    assert registry.active_version(root) == "v2"
    assert registry.load_card(root=root).version == "v2"
    assert registry.load_model("v1", root).count_params() > 0


def test_incomplete_and_staging_folders_are_never_listed(isolated_folders):
    root = isolated_folders / "weights"
    publish_random_version(root, "v1")
    staging = registry.new_staging_dir(root)
    (staging / registry.CARD_FILE).write_text("{}")
    (root / "half").mkdir()
    (root / "half" / registry.CARD_FILE).write_text("{}")
    assert registry.list_versions(root) == ["v1"]
    with pytest.raises(registry.ModelVersionError, match="incomplete"):
        registry.publish(staging, "v2", root=root)
    registry.remove_stale_staging(root)
    assert staging.exists()  # its process (this one) still runs: it may still be filling it


def test_active_version_and_deleting(isolated_folders):
    root = isolated_folders / "weights"
    publish_random_version(root, "v1")
    publish_random_version(root, "v2", activate=False)
    with pytest.raises(registry.ModelVersionError, match="active"):
        registry.delete_version("v1", root)
    registry.delete_version("v2", root)
    assert registry.list_versions(root) == ["v1"]
    with pytest.raises(registry.ModelVersionError, match="already exists"):
        publish_random_version(root, "v1")


def test_missing_weights_give_a_clear_error(isolated_folders):
    with pytest.raises(registry.ModelVersionError, match=r"No active model version in the weights folder \(weights\)"):
        registry.load_card()
    with pytest.raises(registry.ModelVersionError, match="not a valid"):
        registry.version_dir("../etc")


def test_damaged_model_file_is_a_model_version_error(isolated_folders):
    root = isolated_folders / "weights"
    publish_random_version(root, "v1")
    (root / "v1" / registry.MODEL_FILE).write_bytes(b"not a keras file")
    with pytest.raises(registry.ModelVersionError, match="cannot be loaded") as caught:
        registry.load_model("v1", root)
    assert str(isolated_folders) not in str(caught.value)  # the pages show it: no server path


# ---- two processes at once, and leftovers ----

ROUNDS = 12
RACE_TIMEOUT_S = 120
CHECK_DELAY_S = 0.05


def fake_staging(root, marker: str):
    """A staging folder that is complete for the registry (card and model files present; not loadable)."""
    staging = registry.new_staging_dir(root)
    (staging / registry.CARD_FILE).write_text(json.dumps({"version": marker}))
    (staging / registry.MODEL_FILE).write_bytes(b"weights of " + marker.encode())
    return staging


def _publish_rounds(root, marker, barrier, results):
    """In a child process: for each round, prepare a staging folder, wait for the other process, publish it
    under the round's name; report "published" or the error's type and message."""
    for round_ in range(ROUNDS):
        staging = fake_staging(root, marker)
        barrier.wait()
        try:
            registry.publish(staging, f"race-{round_}", root=root)
            results.put((round_, marker, "published", ""))
        except Exception as error:  # the test wants to see anything that escapes, not only the expected error
            shutil.rmtree(staging, ignore_errors=True)  # what train.trainer.run.publish_candidate does
            results.put((round_, marker, type(error).__name__, str(error)))


def _race(target, argument_sets):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(argument_sets)), context.Queue()
    processes = [context.Process(target=target, args=(*arguments, barrier, results)) for arguments in argument_sets]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=RACE_TIMEOUT_S) for _ in range(ROUNDS * len(processes))]
    for process in processes:
        process.join(RACE_TIMEOUT_S)
        assert process.exitcode == 0
    return outcomes


@pytest.mark.slow
def test_two_processes_publishing_one_name_one_wins_the_other_gets_a_clear_error(isolated_folders):
    root = isolated_folders / "weights"
    root.mkdir()
    outcomes = _race(_publish_rounds, [(root, "first"), (root, "second")])
    for round_ in range(ROUNDS):
        results = sorted((status, message, marker) for r, marker, status, message in outcomes if r == round_)
        assert [status for status, _, _ in results] == ["ModelVersionError", "published"], results
        assert "already exists; choose another name" in results[0][1]
        winner = results[1][2]
        assert json.loads((root / f"race-{round_}" / registry.CARD_FILE).read_text()) == {"version": winner}
    assert registry.list_versions(root) == sorted(f"race-{r}" for r in range(ROUNDS))
    assert not [p.name for p in root.iterdir() if p.name.startswith(registry.STAGING_PREFIX)]


def _slowed(function):
    def slow(*args, **kwargs):
        result = function(*args, **kwargs)
        time.sleep(CHECK_DELAY_S)
        return result

    return slow


def _delete_or_activate_rounds(root, action, barrier, results):
    """In a child process: each round, once both are ready, delete (or activate) that round's version. The
    registry's checks are slowed down here, so that without a lock the two would interleave between a check
    and the change it guards (activate a version as it is being deleted, delete one just activated)."""
    registry.is_complete = _slowed(registry.is_complete)
    registry.active_version = _slowed(registry.active_version)
    for round_ in range(ROUNDS):
        barrier.wait()
        try:
            getattr(registry, action)(f"doomed-{round_}", root)
            results.put((round_, action, "done", ""))
        except Exception as error:
            results.put((round_, action, type(error).__name__, str(error)))


@pytest.mark.slow
def test_activating_a_version_while_another_process_deletes_it_fails_cleanly(isolated_folders):
    root = isolated_folders / "weights"
    root.mkdir()
    registry.publish(fake_staging(root, "keeper"), "keeper", activate=True, root=root)
    for round_ in range(ROUNDS):
        registry.publish(fake_staging(root, f"doomed-{round_}"), f"doomed-{round_}", root=root)
    outcomes = _race(_delete_or_activate_rounds, [(root, "delete_version"), (root, "set_active")])
    for round_ in range(ROUNDS):
        by_action = {action: (status, message) for r, action, status, message in outcomes if r == round_}
        if by_action["delete_version"][0] == "done":  # the delete came first: the activation is refused
            assert by_action["set_active"] == ("ModelVersionError", by_action["set_active"][1])
            assert "does not exist" in by_action["set_active"][1]
            assert not (root / f"doomed-{round_}").exists()
        else:  # the activation came first: the delete is refused, the version stays and is whole
            assert by_action["set_active"][0] == "done"
            assert by_action["delete_version"][0] == "ModelVersionError"
            assert "is the active version" in by_action["delete_version"][1]
            assert registry.is_complete(root / f"doomed-{round_}")
    assert registry.active_version(root) is not None  # the pointer never names a deleted version


def test_a_leftover_graveyard_does_not_make_a_delete_fail(isolated_folders):
    root = isolated_folders / "weights"
    registry.publish(fake_staging(root, "keeper"), "keeper", activate=True, root=root)
    for name in ("v2", "v3"):
        registry.publish(fake_staging(root, name), name, root=root)
    leftover = root / ".deleting-v2"  # left by a delete killed midway (the old fixed name)
    leftover.mkdir()
    (leftover / registry.CARD_FILE).write_text("{}")
    registry.delete_version("v2", root)
    registry.publish(fake_staging(root, "v2 again"), "v2", root=root)
    registry.delete_version("v2", root)  # a second delete of the same name
    registry.delete_version("v3", root)
    assert registry.list_versions(root) == ["keeper"]
    assert [p.name for p in registry.stale_folders(root)] == [".deleting-v2"]
    registry.remove_stale_staging(root)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [registry.ACTIVE_FILE, registry.ACTIVATIONS_FILE, registry.LOCK_FILE, "keeper"]
    )


def test_a_publish_onto_a_folder_that_appeared_is_refused_without_clobbering(isolated_folders):
    root = isolated_folders / "weights"
    squatter = root / "v2"
    squatter.mkdir(parents=True)
    (squatter / "notes.txt").write_text("not a version, but someone's")
    staging = fake_staging(root, "v2")
    with pytest.raises(registry.ModelVersionError, match="already exists"):
        registry.publish(staging, "v2", root=root)
    assert (squatter / "notes.txt").read_text() == "not a version, but someone's"
    assert registry.is_complete(staging)


def test_only_staging_folders_of_dead_processes_are_stale(isolated_folders):
    root = isolated_folders / "weights"
    live = registry.new_staging_dir(root)  # this process: still being filled
    dead = root / f"{registry.STAGING_PREFIX}{dead_pid()}-abc"
    old_style = root / f"{registry.STAGING_PREFIX}x1y2z3"
    for folder in (dead, old_style):
        folder.mkdir()
    assert registry.stale_folders(root) == sorted([dead, old_style])
    registry.remove_stale_staging(root)
    assert live.is_dir() and not dead.exists() and not old_style.exists()


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_activation_needs_a_name_and_a_reason_and_is_recorded(isolated_folders):
    root = isolated_folders / "weights"
    publish_random_version(root, "v1")
    publish_random_version(root, "v2", activate=False)
    registry.set_active("v1", root)
    with pytest.raises(ValueError, match="name and a reason"):
        registry.activate("v2", "Dr A", "  ", root)
    with pytest.raises(registry.ModelVersionError, match="already the active"):
        registry.activate("v1", "Dr A", "again", root)
    assert registry.active_version(root) == "v1"
    (published,) = registry.activation_history(root)  # publish --activate records itself
    assert (published["from"], published["to"], published["reason"]) == (
        None,
        "v1",
        "published and activated in one step",
    )
    entry = registry.activate("v2", " Dr A ", "try v2", root)
    assert registry.active_version(root) == "v2"
    assert (entry["from"], entry["to"], entry["reader"], entry["reason"]) == ("v1", "v2", "Dr A", "try v2")
    with open(root / registry.ACTIVATIONS_FILE, "a") as history:
        history.write('{"cut by a crash"')  # a torn last line is skipped, never fatal
    registry.activate("v1", "Dr B", "roll back", root)
    assert [e["to"] for e in registry.activation_history(root)] == ["v1", "v2", "v1"]
