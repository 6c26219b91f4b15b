"""End to end on a tiny dataset: train → candidate (card, predictions) → publish; resume; CLI errors."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core import registry
from core.card import ModelCard
from train.__main__ import main
from train.trainer.checkpoints import read_state
from train.trainer.progress import read_events

pytestmark = pytest.mark.slow  # trains end to end

PER_CLASS = 14


@pytest.fixture
def tiny_dataset(tmp_path):
    """Three visually different classes, two images per patient, with a manifest."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    rows = []
    for label, pattern in (("COVID19", 0), ("NORMAL", 1), ("PNEUMONIA", 2)):
        (root / label).mkdir(parents=True)
        for index in range(PER_CLASS):
            image = rng.integers(0, 60, (100, 90)).astype(np.uint8)
            image[:, pattern * 30 : pattern * 30 + 30] += 150
            name = f"{label}/{label.lower()}_{index}.png"
            Image.fromarray(image).save(root / name)
            rows.append((name, label, f"{label}-p{index // 2}", "synthetic" if index % 2 else "other"))
    pd.DataFrame(rows, columns=["path", "label", "patient_id", "source"]).to_csv(root / "manifest.csv", index=False)
    return root


def test_train_publish_and_card(tiny_dataset, isolated_folders, monkeypatch):
    monkeypatch.setenv("CXR_DATA_ROOT", str(tiny_dataset.parent))
    run_dir = isolated_folders / "runs" / "r1"
    code = main(
        [
            "--data",
            str(tiny_dataset),
            "--arch",
            "dcnn80-compact",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr-schedule",
            "warmup-cosine",
            "--class-weights",
            "balanced",
            "--run-dir",
            str(run_dir),
            "--publish",
            "v-test",
            "--activate",
            "--quiet",
        ]
    )
    assert code == 0
    assert registry.active_version() == "v-test"
    card = registry.load_card()
    for key in (
        "version",
        "architecture",
        "input_size",
        "class_names",
        "preprocessing",
        "training",
        "seed",
        "data",
        "libraries",
        "temperature",
        "gradcam_layer",
        "metrics",
        "caveat",
    ):
        assert getattr(card, key) not in (None, "", {}, []), key
    assert card.class_names == ("COVID-19", "Normal", "Pneumonia")
    # the folders as named under the data root, so the recipe means the same data on another machine
    assert card.training["data"] == [tiny_dataset.name] and card.data["root"] == tiny_dataset.name
    assert [folder["root"] for folder in card.data["folders"]] == [tiny_dataset.name]
    assert card.training["class_weight_values"]["COVID-19"] == pytest.approx(1.0, rel=0.3)
    split_sizes = card.data["split_sizes"]
    assert sum(split_sizes.values()) == 3 * PER_CLASS
    test = card.metrics["test"]
    assert {"accuracy", "per_class", "confusion_matrix", "ece", "ece_uncalibrated", "per_source"} <= set(test)
    assert set(test["per_source"]) <= {"synthetic", "other"}
    predictions = pd.read_csv(registry.version_dir("v-test") / registry.VAL_PREDICTIONS)
    assert list(predictions.columns) == [
        "path",
        "label",
        "source",
        "population",
        "p_COVID-19",
        "p_Normal",
        "p_Pneumonia",
    ]
    assert len(predictions) == split_sizes["val"]
    assert np.allclose(predictions.filter(like="p_").sum(axis=1), 1.0, atol=1e-4)
    events = [e["event"] for e in read_events(run_dir)]
    assert events[0] == "start" and events.count("epoch") == 2 and events[-1] == "published"
    assert (registry.version_dir("v-test") / "detector.npz").is_file()
    for flag in ("out_of_distribution", "rotated", "inverted", "uncertain"):
        assert 0.0 <= card.flags[flag]["validation_rate"] <= 1.0 and np.isfinite(card.flags[flag]["threshold"])
    point = card.operating_point
    assert point["positive_class"] == "COVID-19" and point["chosen_on"] == "validation"
    assert point["threshold_interval"][0] <= point["threshold"] <= point["threshold_interval"][1]
    split = pd.read_csv(run_dir / "split.csv")
    by_split = split.groupby("split")["patient_id"].apply(set)
    assert not (by_split["train"] & by_split["test"]) and not (by_split["val"] & by_split["test"])


@pytest.fixture
def second_hospital(tmp_path):
    """Normal and Pneumonia only, from one other 'hospital' with its own patients."""
    rng = np.random.default_rng(1)
    root = tmp_path / "adult"
    rows = []
    for label, pattern in (("NORMAL", 1), ("PNEUMONIA", 2)):
        (root / label).mkdir(parents=True)
        for index in range(30):
            image = rng.integers(0, 60, (100, 90)).astype(np.uint8)
            image[:, pattern * 30 : pattern * 30 + 30] += 120
            name = f"{label}/h_{index}.png"
            Image.fromarray(image).save(root / name)
            rows.append((name, label, f"h-{label}-{index}", "hospital", "adult"))
    pd.DataFrame(rows, columns=["path", "label", "patient_id", "source", "population"]).to_csv(
        root / "manifest.csv", index=False
    )
    return root


def test_two_folders_leave_one_source_out_and_the_table(tiny_dataset, second_hospital, isolated_folders, capsys):
    from train.evaluation.crosshospital import main as table

    run_dir = isolated_folders / "runs" / "loso"
    code = main(
        [
            "--data",
            str(tiny_dataset),
            str(second_hospital),
            "--leave-out-source",
            "hospital",
            "--arch",
            "dcnn80-compact",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--sampling",
            "class-source",
            "--class-weights",
            "none",
            "--intensity",
            "clahe",
            "--rotation",
            "5",
            "--jpeg-quality",
            "70",
            "--run-dir",
            str(run_dir),
            "--quiet",
        ]
    )
    assert code == 0
    card = ModelCard.load(run_dir / "candidate" / registry.CARD_FILE)
    assert sorted(f["images"] for f in card.data["folders"]) == [3 * PER_CLASS, 60]
    assert all(
        len(f["manifest_sha256"]) == 64 and f["manifest_sha256"] != card.data["manifest_sha256"]
        for f in card.data["folders"]
    )
    assert card.data["split_sizes"]["external"] == 60 and card.data["held_out_source"] == "hospital"
    assert card.preprocessing["intensity"] == "clahe"
    shift = card.metrics["external"]["shift"]
    assert shift["n"] == 60 and set(shift["per_population"]) == {"adult"}
    called = shift["non_covid_called_covid"]["k"] + shift["normal_called_normal"]["k"]
    assert shift["called"]["COVID-19"] == shift["non_covid_called_covid"]["k"] and called <= 60
    external = pd.read_csv(run_dir / "candidate" / "external_predictions.csv")
    assert len(external) == 60 and external["path"].str.startswith("adult/").all()
    capsys.readouterr()
    assert table([str(run_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| held out") and len(lines) == 4  # header, rule, all, adult
    assert lines[2].startswith("| hospital | loso | 1 | all | 60 |")


def test_resume_continues_from_the_last_checkpoint(tiny_dataset, isolated_folders):
    run_dir = isolated_folders / "runs" / "r2"
    assert (
        main(
            [
                "--data",
                str(tiny_dataset),
                "--arch",
                "dcnn80-compact",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--run-dir",
                str(run_dir),
                "--quiet",
            ]
        )
        == 0
    )
    config = json.loads((run_dir / "config.json").read_text())
    config["epochs"] = 2  # as if the run had been interrupted after its first of two epochs
    (run_dir / "config.json").write_text(json.dumps(config))
    assert main(["--resume", str(run_dir), "--quiet"]) == 0
    assert read_state(run_dir)["epoch"] == 2
    epochs = [e["epoch"] for e in read_events(run_dir) if e["event"] == "epoch"]
    assert epochs == [0, 1]


def test_bad_dataset_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "cats").mkdir()
    Image.fromarray(np.zeros((90, 90), np.uint8)).save(tmp_path / "cats" / "a.png")
    assert main(["--data", str(tmp_path), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    assert "Accepted class names" in capsys.readouterr().err
