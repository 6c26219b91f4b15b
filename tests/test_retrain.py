"""The Retrain page end to end (AppTest, a real 1-epoch background run on a small real subset), and the run
management of ``train.jobs.supervisor``, ``train.jobs.datasource``, ``train.jobs.planning`` and
``train.evaluation.compare``: lock, status, cancel, data root, dataset summary, comparison, schedules."""

import json
import os
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import pandas as pd
import psutil
import pytest
from streamlit.testing.v1 import AppTest

from core import CLASS_NAMES, registry, settings
from core.card import ModelCard
from core.inference import Predictor
from tests.conftest import CXR_POOL, REPO, needs_shared_data, publish_random_version, small_card
from train.evaluation import compare
from train.jobs import datasource, planning, recipes, supervisor
from train.trainer.checkpoints import STATE_FILE
from train.trainer.config import TrainConfig, recipe_from_card
from train.trainer.datasets import DatasetError, scan_dataset
from train.trainer.progress import write_event
from train.trainer.run import CANDIDATE

RUN_TIMEOUT = 300
QUICK = {"arch": "dcnn80-compact", "epochs": 2, "limit_per_class": 40}


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def app_on(page: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.run()
    at.switch_page(page)
    return at.run()


def assert_no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


@pytest.mark.slow
@needs_shared_data
def test_page_trains_compares_publishes_activates_and_models_page_rolls_back(tiny_version):
    at = app_on("pages/retrain.py")
    assert_no_exception(at)
    assert at.multiselect(key="datasets").value == [str(CXR_POOL.resolve())]
    at.selectbox(key="arch").select("dcnn80-compact")
    at.number_input(key="epochs").set_value(1)
    at.number_input(key="limit_per_class").set_value(40)
    at.button(key="start").click()
    at.run()
    assert_no_exception(at)
    run_name = at.selectbox(key="run_choice").value
    run_dir = settings.runs_dir() / run_name
    assert supervisor.run_info(run_dir).status == "running"
    assert at.button(key="start").disabled  # one run at a time

    models = app_on("pages/models.py")  # other pages answer while it trains
    assert_no_exception(models)
    assert supervisor.run_info(run_dir).status == "running"

    deadline = time.monotonic() + RUN_TIMEOUT
    while supervisor.run_info(run_dir).status == "running" and time.monotonic() < deadline:
        at.run()  # what the page's fragment does every few seconds
        assert_no_exception(at)
        time.sleep(2)
    at.run()
    assert_no_exception(at)
    assert supervisor.run_info(run_dir).status == "finished", supervisor.log_tail(run_dir)
    assert any("Not comparable" in w.value for w in at.warning)  # the random test version used other data
    assert len(at.get("plotly_chart")) >= 6  # curves, confusion matrices of both models

    at.text_input(key="version_name").input("retrained-1")
    assert at.button(key="publish").disabled  # a model of a few dozen images: a second thought first
    assert any("unlikely to serve readers" in warning.value for warning in at.warning)
    at.checkbox(key="publish_few").check().run()
    at.button(key="publish").click()
    at.run()
    assert_no_exception(at)
    assert "retrained-1" in registry.list_versions()
    assert registry.active_version() == tiny_version  # publishing does not activate
    at.button(key="activate").click()  # to the Models page's confirmation: what changes, a name and a reason
    at.run()
    assert_no_exception(at)
    assert registry.active_version() == tiny_version and at.title[0].value == "Models"
    at.switch_page("pages/models.py")  # where the browser now is (AppTest keeps the page it was given)
    at.text_input(key="models_activation_reader").input("Dr A. Reader")
    at.text_input(key="models_activation_reason").input("retrained on this week's films").run()
    at.button(key="activation_confirm").click().run()
    assert registry.active_version() == "retrained-1"
    assert Predictor().version == "retrained-1"  # what Diagnose loads

    models = app_on("pages/models.py")
    models.selectbox(key="version_choice").select(tiny_version)
    models.run()
    models.button(key="activate_version").click()
    models.run()
    models.text_input(key="models_activation_reader").input("Dr A. Reader")
    models.text_input(key="models_activation_reason").input("roll back").run()
    models.button(key="activation_confirm").click().run()
    assert_no_exception(models)
    assert registry.active_version() == tiny_version


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_lock_of_a_dead_or_reused_pid_is_free_and_a_live_one_refuses(isolated_folders):
    root = settings.runs_dir()
    root.mkdir(parents=True)
    lock = root / supervisor.LOCK_FILE
    lock.write_text(json.dumps({"pid": dead_pid(), "started": time.time(), "run": "old"}))
    assert supervisor.lock_holder() is None
    lock.write_text(json.dumps({"pid": os.getpid(), "started": 0.0, "run": "old"}))  # pid reused since
    assert supervisor.lock_holder() is None
    lock.write_text(json.dumps({"pid": os.getpid(), "started": time.time(), "run": "other"}))
    assert supervisor.lock_holder()["run"] == "other"
    with pytest.raises(supervisor.RunBusyError, match="other"):
        supervisor.start_run(TrainConfig(data=str(CXR_POOL), **QUICK))


@pytest.mark.slow
@needs_shared_data
def test_stale_lock_is_taken_over_and_a_run_cancels_cleanly(isolated_folders):
    root = settings.runs_dir()
    root.mkdir(parents=True)
    (root / supervisor.LOCK_FILE).write_text(json.dumps({"pid": dead_pid(), "started": time.time(), "run": "crashed"}))
    run_dir = supervisor.start_run(TrainConfig(data=str(CXR_POOL), **QUICK))
    assert supervisor.lock_holder()["run"] == str(run_dir.resolve())
    with pytest.raises(supervisor.RunBusyError):
        supervisor.start_run(TrainConfig(data=str(CXR_POOL), **QUICK))
    wait_until(lambda: (run_dir / "split.csv").exists(), RUN_TIMEOUT, "the trainer to be at work")
    trainer = json.loads((run_dir / supervisor.PROCESS_FILE).read_text())["pid"]
    assert supervisor.cancel_run(run_dir) == "cancelled"
    assert not psutil.pid_exists(trainer)  # ended and reaped: no <defunct> trainer left behind
    info = supervisor.run_info(run_dir)
    assert (info.status, info.resumable, info.pid) == ("cancelled", True, None)
    assert [e for e in info.events if e["event"] == "cancelled"] and not info.events[-1].get("forced")
    assert supervisor.lock_holder() is None


def write_run(root, name, events, process_started=None):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / supervisor.CONFIG_FILE).write_text(json.dumps({"arch": "dcnn80-compact", "batch_size": 32}))
    for event in events:
        write_event(run_dir, event)
    if process_started is not None:
        (run_dir / "process.json").write_text(json.dumps({"pid": dead_pid(), "started": process_started}))
    return run_dir


def test_run_status_from_events_and_process(isolated_folders):
    root = settings.runs_dir()
    write_run(root, "1-finished", ["start", "evaluating", "done", "published"])
    write_run(root, "2-failed", ["start", "failed"])
    write_run(root, "3-cancelled", ["start", "cancelled"])
    write_run(root, "4-killed", ["start"])
    write_run(root, "5-killed-after-resume", ["start", "cancelled"], process_started=time.time() + 1)
    running = write_run(root, "6-running", [])
    (running / "process.json").write_text(json.dumps({"pid": os.getpid(), "started": time.time()}))
    statuses = {info.name: (info.status, info.resumable) for info in supervisor.list_runs()}
    assert statuses == {
        "1-finished": ("finished", False),
        "2-failed": ("failed", False),
        "3-cancelled": ("cancelled", True),
        "4-killed": ("interrupted", True),
        "5-killed-after-resume": ("interrupted", True),
        "6-running": ("running", False),
    }
    assert [info.name for info in supervisor.list_runs()][0] == "6-running"  # newest first
    with pytest.raises(ValueError, match="finished"):
        supervisor.resume_run(root / "1-finished")


def test_progress_and_curves_from_events(isolated_folders):
    events = [
        {"event": "start", "time": 1.0, "epochs": 2, "initial_epoch": 0, "device": {"kind": "CPU"}, "n": {}},
        {
            "event": "step",
            "time": 2.0,
            "epoch": 0,
            "step": 2,
            "steps": 4,
            "lr": 4e-4,
            "loss": 1.0,
            "eta_s": 30.0,
            "images_per_s": 10.0,
        },
        {
            "event": "epoch",
            "time": 3.0,
            "epoch": 0,
            "lr": 4e-4,
            "loss": 0.9,
            "val_loss": 1.1,
            "eta_s": 20.0,
            "images_per_s": 11.0,
        },
        {
            "event": "step",
            "time": 4.0,
            "epoch": 1,
            "step": 1,
            "steps": 4,
            "lr": 2e-4,
            "loss": 0.8,
            "eta_s": 15.0,
            "images_per_s": 12.0,
        },
    ]
    info = supervisor.RunInfo(isolated_folders, "running", {}, events, pid=1, launched=0.5)
    state = supervisor.progress(info)
    assert (state["phase"], state["eta_s"], state["lr"]) == ("training", 15.0, 2e-4)  # copied from the events
    assert state["fraction"] == pytest.approx(0.625, abs=1e-12)
    curves = supervisor.training_curves(events)
    assert curves["epoch"].tolist() == pytest.approx([0.5, 1.0, 1.25], abs=1e-12)
    assert curves["val_loss"].notna().tolist() == [False, True, False]
    assert (
        supervisor.progress(supervisor.RunInfo(isolated_folders, "running", {}, events, launched=5.0))["phase"]
        == "loading data"
    )


def test_data_root_refuses_folders_outside_it_even_through_symlinks(tmp_path, monkeypatch):
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    for folder in (root / "set" / "COVID19", outside / "NORMAL"):
        folder.mkdir(parents=True)
    (root / "escape").symlink_to(outside)
    monkeypatch.setenv("CXR_DATA_ROOT", str(root))
    monkeypatch.setenv("CXR_UPLOAD_DIR", str(root / "uploads"))
    assert datasource.checked_data_folder(root / "set") == (root / "set").resolve()
    for folder in (outside, root / "escape", root / "set" / ".." / ".."):
        with pytest.raises(DatasetError, match="outside"):
            datasource.checked_data_folder(folder)
    assert datasource.dataset_folders() == [(root / "set").resolve()]
    with pytest.raises(DatasetError, match="outside"):
        supervisor.start_run(TrainConfig(data=str(outside)))


@needs_shared_data
def test_summary_of_the_real_pool():
    summary = datasource.summarize_dataset(CXR_POOL)
    assert summary["classes"]["images"].to_dict() == {"COVID-19": 3346, "Normal": 3976, "Pneumonia": 3698}
    assert (summary["classes"]["patients"] <= summary["classes"]["images"]).all()
    assert summary["sources"].loc["kermany", "Pneumonia"] == 3698
    assert any("ieee8023" in warning for warning in summary["warnings"])  # a one-class source: a shortcut


@needs_shared_data
def test_image_check_finds_unreadable_files_and_near_duplicates(tmp_path, monkeypatch):
    pool = scan_dataset(CXR_POOL).groupby("label").head(3)
    monkeypatch.setenv("CXR_DATA_ROOT", str(tmp_path))
    for row in pool.itertuples():
        folder = tmp_path / "set" / row.label
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(row.path, folder)
    covid = sorted((tmp_path / "set" / "COVID-19").iterdir())[0]
    recoded = cv2.imencode(".png", cv2.imread(str(covid), cv2.IMREAD_GRAYSCALE))[1].tobytes()
    (tmp_path / "set" / "Normal" / "same-image.png").write_bytes(recoded)  # a copy filed under another label
    (tmp_path / "set" / "Normal" / "broken.jpg").write_bytes(b"not an image")
    summary = datasource.summarize_dataset(tmp_path / "set")
    assert any("no patient id" in warning for warning in summary["warnings"])
    check = datasource.check_images(summary["frame"])
    assert list(check["unreadable"]) == [str(tmp_path / "set" / "Normal" / "broken.jpg")]
    assert (check["near_duplicates"], check["conflicting_labels"]) == (1, 1)


def test_planned_lr_follows_the_schedule():
    config = TrainConfig(epochs=8, batch_size=10, lr=4e-4, lr_schedule="paper")
    curve = planning.planned_lr(config, training_images=1000)
    assert len(curve) <= planning.LR_CURVE_POINTS + 2 * config.epochs
    last_of_epoch = curve.groupby(curve["epoch"].astype(int))["lr"].last()
    assert np.allclose(last_of_epoch, [4e-4] * 3 + [2e-4] * 3 + [1e-4] * 2)
    cosine = planning.planned_lr(TrainConfig(epochs=4, lr_schedule="warmup-cosine", warmup_epochs=1), 320)
    assert cosine["lr"].iloc[0] < cosine["lr"].max() == pytest.approx(4e-4, rel=0.01)


def fake_finished_run(weights, version, runs_root):
    """A run whose candidate is a copy of a published version (same predictions and card)."""
    run_dir = runs_root / "run"
    shutil.copytree(weights / version, run_dir / CANDIDATE)
    return run_dir


def set_data(weights, version, manifest, sizes):
    card_path = weights / version / registry.CARD_FILE
    card = ModelCard.load(card_path)
    card.data = {"manifest_sha256": manifest, "split_sizes": sizes}
    card.save(card_path)


@pytest.mark.slow
def test_comparison_on_the_same_split_and_flagged_when_not(isolated_folders):
    weights = isolated_folders / "weights"
    publish_random_version(weights, "a", seed=1)
    publish_random_version(weights, "b", seed=2, activate=False)
    sizes = {"train": 100, "val": 60, "test": 60}
    for version in ("a", "b"):
        set_data(weights, version, "same-data", sizes)
    run_dir = fake_finished_run(weights, "b", isolated_folders)
    result = compare.compare_with_version(run_dir)
    assert (result["version"], result["comparable"], result["reasons"]) == ("a", True, [])
    test = result["splits"]["test"].set_index("metric")
    a = pd.read_csv(weights / "a" / registry.TEST_PREDICTIONS)
    b = pd.read_csv(weights / "b" / registry.TEST_PREDICTIONS)
    truth = a["label"].map(CLASS_NAMES.index).to_numpy()

    def accuracy(frame):
        return (frame[[f"p_{c}" for c in CLASS_NAMES]].to_numpy().argmax(1) == truth).mean()

    assert test.loc["accuracy", "difference"] == pytest.approx(accuracy(b) - accuracy(a), abs=1e-9)
    assert test.loc["accuracy", "ci95_low"] <= test.loc["accuracy", "difference"] <= test.loc["accuracy", "ci95_high"]
    assert set(test.index) == {"accuracy", "macro AUC", "COVID-19 recall"} and (test["n"] == 60).all()

    set_data(weights, "a", "other-data", sizes)
    flagged = compare.compare_with_version(run_dir, version="a")
    assert not flagged["comparable"] and "same data" in flagged["reasons"][0]
    same = compare.compare_with_version(run_dir, version="b")["splits"]["validation"]
    np.testing.assert_allclose(same[["difference", "ci95_low"]].to_numpy(dtype=float), 0.0, atol=1e-12)


def test_publish_refuses_bad_names(isolated_folders):
    run_dir = fake_finished_run(
        isolated_folders / "weights", publish_random_version(isolated_folders / "weights"), isolated_folders
    )
    for name in ("", "../x", "a b", ".hidden", "x" * 65):
        with pytest.raises(registry.ModelVersionError):
            supervisor.publish_run(run_dir, name)
    assert supervisor.publish_run(run_dir, "v2.1_ok-1").name == "v2.1_ok-1"


@pytest.mark.slow
def test_a_failed_run_shows_its_error_and_log_tail(isolated_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA_ROOT", str(tmp_path))
    for label in ("COVID19", "NORMAL"):  # no pneumonia: the trainer refuses the data
        (tmp_path / "set" / label).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "set" / label / "a.png"), np.zeros((8, 8), np.uint8))
    run_dir = supervisor.start_run(TrainConfig(data=str(tmp_path / "set"), **QUICK))
    wait_until(lambda: supervisor.run_info(run_dir).status != "running", RUN_TIMEOUT, "the run to fail")
    info = supervisor.run_info(run_dir)
    assert info.status == "failed" and "Pneumonia" in info.error
    assert "error:" in supervisor.log_tail(run_dir)
    at = app_on("pages/retrain.py")
    assert_no_exception(at)
    assert "The run failed." in [e.value for e in at.error]
    assert any("Pneumonia" in block.value for block in at.code)


@pytest.mark.slow
def test_duration_estimate_from_earlier_runs_or_a_timing(isolated_folders):
    root = settings.runs_dir()
    for name, speeds in (("1", [10.0, 30.0]), ("2", [20.0])):
        run_dir = write_run(root, name, [])
        for speed in speeds:
            write_event(run_dir, "epoch", images_per_s=speed)
    assert planning.measured_speed("dcnn80-compact", 32) == pytest.approx(20.0, abs=1e-9)
    assert planning.measured_speed("dcnn80", 32) is None
    assert planning.benchmark_speed("dcnn80-compact", batch_size=4, steps=1) > 0


# --- the recipe the page starts from, the estimate, the honest resume -----------------------------------------


def test_a_recipe_survives_the_form_round_trip_and_the_card_recipe_drops_the_trainers_additions():
    for config in (
        TrainConfig(),
        TrainConfig(
            arch="dcnn80-compact",
            sampling="class-source",
            class_weights="none",
            lr_schedule="warmup-cosine",
            crop_scale_min=0.75,
            crop_scale_max=1.0,
            leave_out_source="nih_cxr14",
            precision="float32",
            cache_size=96,
        ),
        TrainConfig(class_weights="COVID-19=5,Normal=2,Pneumonia=1"),
    ):
        values = recipes.form_values(config)
        assert recipes.config_from_form(config, values, config.data) == config
    custom = recipes.form_values(TrainConfig(class_weights="COVID-19=5,Normal=2,Pneumonia=1"))
    assert (custom["class_weights"], custom["weight:COVID-19"], custom["weight:Normal"]) == ("custom", 5.0, 2.0)
    card = small_card(
        version="v9",
        training={
            "arch": "dcnn80-compact",
            "epochs": 3,
            "rotation": 0,
            "seconds": 12.5,
            "device": {"kind": "CPU"},
            "class_weight_values": {},
            "chosen_epoch": 2,
        },
    )
    recipe = recipe_from_card(card)
    assert (recipe.arch, recipe.epochs, recipe.lr_schedule) == ("dcnn80-compact", 3, TrainConfig().lr_schedule)
    assert isinstance(recipes.form_values(recipe)["rotation"], float)  # a slider over floats needs a float
    assert list(recipes.presets(card)) == ["v9 (the active version's recipe)", recipes.PAPER]
    assert list(recipes.presets(small_card(version="bare"))) == [recipes.PAPER]
    assert recipe_from_card(None) is None


@pytest.mark.parametrize(
    "epochs, images, speed, expected",
    [(12, 8483, 47.0, 12 * 8483 / 47.0), (1, 100, 50.0, 2.0), (3, 10, 0.0, None), (3, 10, None, None)],
)
def test_training_time_estimate(epochs, images, speed, expected):
    found = planning.training_seconds(TrainConfig(epochs=epochs), images, speed)
    assert found == (None if expected is None else pytest.approx(expected, rel=1e-12))


def test_trained_on_keeps_the_folders_the_recipe_used(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    folders = [str(tmp_path / name) for name in ("a", "b", "c")]
    config = TrainConfig(data=[str(tmp_path / "c"), str(tmp_path / "a" / ".." / "b")])
    assert recipes.trained_on(config, folders) == folders[1:]


@pytest.mark.slow
@needs_shared_data
def test_page_starts_from_the_active_versions_recipe_and_offers_the_papers(shipped_version):
    card = registry.load_card(shipped_version)
    trained = card.training
    at = app_on("pages/retrain.py")
    assert_no_exception(at)
    assert at.selectbox(key="recipe_preset").value.startswith(shipped_version)
    for key in ("arch", "epochs", "batch_size", "lr", "lr_schedule", "sampling", "label_smoothing", "intensity"):
        assert at.session_state[key] == trained[key], key
    assert at.radio(key="class_weights").value == trained["class_weights"] == "none"
    assert at.slider(key="crop").value == (trained["crop_scale_min"], trained["crop_scale_max"]) == (0.75, 1.0)
    expected_folders = [
        str(datasource.checked_data_folder(settings.local_data_path(folder))) for folder in trained["data"]
    ]
    assert at.multiselect(key="datasets").value == expected_folders and len(expected_folders) == 2
    assert not any(str(settings.data_root()) in str(option) for option in at.multiselect(key="datasets").options)

    at.selectbox(key="recipe_preset").select(recipes.PAPER).run()
    assert_no_exception(at)
    paper = TrainConfig()
    assert (
        at.selectbox(key="arch").value,
        at.radio(key="class_weights").value,
        at.selectbox(key="sampling").value,
        at.selectbox(key="lr_schedule").value,
    ) == (paper.arch, "paper", "shuffle", "paper")
    assert at.slider(key="crop").value == pytest.approx((80 / 96, 80 / 96), abs=1e-12)


def interrupted_run(root, saved_epochs: int):
    run_dir = write_run(root, f"run-{saved_epochs}", ["start", "cancelled"])
    config = json.loads((run_dir / supervisor.CONFIG_FILE).read_text())
    (run_dir / supervisor.CONFIG_FILE).write_text(json.dumps({**config, "epochs": 5}))
    if saved_epochs:
        (run_dir / STATE_FILE).write_text(json.dumps({"epoch": saved_epochs, "checkpoint": "epoch-002.weights.h5"}))
    return run_dir


@pytest.mark.slow
def test_after_a_cancel_the_page_says_what_can_be_resumed(tiny_version):
    root = settings.runs_dir()
    interrupted_run(root, 0)
    at = app_on("pages/retrain.py")
    assert_no_exception(at)
    assert any("nothing can be resumed" in w.value for w in at.warning)
    assert not any("continues from" in w.value for w in at.warning)
    assert at.button(key="resume").label == "Run again from the start"
    assert ":material/cancel:" in " ".join(m.value for m in at.markdown)  # a Material icon, not an emoji

    interrupted_run(root, 2)
    at = app_on("pages/retrain.py")
    at.selectbox(key="run_choice").select("run-2").run()
    assert any("after epoch 2 of 5" in w.value and "continues from epoch 3" in w.value for w in at.warning)
    assert at.button(key="resume").label == "Resume from epoch 3"
