"""train.trainer.datasets: labels from class folders or the manifest, patient-level stratified splits."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.settings import REPO_ROOT
from tests.conftest import CXR_POOL, needs_shared_data
from train.trainer.datasets import DatasetError, canonical_label, manifest_hash, scan_dataset, split_by_patient


def write_png(path, value=128, size=96):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


@pytest.mark.parametrize(
    "folder, label",
    [
        ("COVID19", "COVID-19"),
        ("COVID-19", "COVID-19"),
        ("covid", "COVID-19"),
        ("NORMAL", "Normal"),
        ("normal", "Normal"),
        ("PNEUMONIA", "Pneumonia"),
        ("Pneumonia", "Pneumonia"),
    ],
)
def test_class_aliases(folder, label):
    assert canonical_label(folder) == label


def test_labels_come_from_class_folder_not_the_path(tmp_path):
    root = tmp_path / "COVID19-collection"  # a parent folder name that a path regex would mislabel
    for folder in ("covid", "NORMAL", "Pneumonia"):
        write_png(root / folder / "sub" / f"{folder}-a.png")
    frame = scan_dataset(root)
    assert sorted(frame["label"]) == ["COVID-19", "Normal", "Pneumonia"]
    assert (frame["source"] == "unknown").all()


def test_unknown_class_folder_is_a_clear_error(tmp_path):
    for folder in ("COVID19", "NORMAL", "PNEUMONIA", "tuberculosis"):
        write_png(tmp_path / folder / "a.png")
    with pytest.raises(DatasetError, match="tuberculosis.*Accepted class names"):
        scan_dataset(tmp_path)


def test_empty_class_folder_is_a_clear_error(tmp_path):
    for folder in ("COVID19", "NORMAL"):
        write_png(tmp_path / folder / "a.png")
    (tmp_path / "PNEUMONIA").mkdir()
    with pytest.raises(DatasetError, match="PNEUMONIA.*empty"):
        scan_dataset(tmp_path)


def test_dataset_errors_name_folders_without_the_servers_path(tmp_path, monkeypatch):
    """The Retrain page shows these messages: a folder reads as under the data root or the uploads, never as the
    server's absolute path."""
    from train.jobs.datasource import checked_data_folder

    monkeypatch.setenv("CXR_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("CXR_UPLOAD_DIR", str(tmp_path / "uploads"))
    for folder in (tmp_path / "data" / "site-a", tmp_path / "uploads" / "site-b"):
        folder.mkdir(parents=True)
    cases = [
        (lambda: scan_dataset(tmp_path / "data" / "site-a"), "site-a has no class folders"),
        (lambda: scan_dataset(tmp_path / "uploads" / "site-b"), "uploads/site-b has no class folders"),
        (lambda: scan_dataset(tmp_path / "data" / "gone"), "The dataset folder gone does not exist"),
        (lambda: checked_data_folder(tmp_path / "elsewhere"), "…/elsewhere is outside the data folder"),
    ]
    for make, message in cases:
        with pytest.raises(DatasetError) as caught:
            make()
        assert str(caught.value).startswith(message) and str(tmp_path) not in str(caught.value), str(caught.value)


def test_manifest_labels_patients_and_missing_files(tmp_path, caplog):
    for name in ("COVID19/x.png", "NORMAL/y.png", "PNEUMONIA/z.png"):
        write_png(tmp_path / name)
    pd.DataFrame(
        {
            "path": ["COVID19/x.png", "NORMAL/y.png", "PNEUMONIA/z.png", "NORMAL/gone.png"],
            "label": ["COVID19", "NORMAL", "PNEUMONIA", "NORMAL"],
            "patient_id": ["p1", "p2", "p3", "p4"],
            "source": ["s1", "s2", "s2", "s2"],
        }
    ).to_csv(tmp_path / "manifest.csv", index=False)
    with caplog.at_level(logging.WARNING):
        frame = scan_dataset(tmp_path)
    assert list(frame["label"]) == ["COVID-19", "Normal", "Pneumonia"]
    assert list(frame["patient_id"]) == ["p1", "p2", "p3"]
    assert "gone.png" in caplog.text


def synthetic_frame(patients=300, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        label = ("COVID-19", "Normal", "Pneumonia")[p % 3]
        rows += [(f"/d/{p}-{i}.png", label, f"pt{p}", "s") for i in range(rng.integers(1, 5))]
    return pd.DataFrame(rows, columns=["path", "label", "patient_id", "source"])


def test_split_is_patient_disjoint_stratified_and_seeded():
    frame = synthetic_frame()
    split = split_by_patient(frame, 0.15, 0.15, seed=3)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(frame.patient_id[split == a]) & set(frame.patient_id[split == b])
    fractions = split.value_counts(normalize=True)
    assert 0.1 < fractions["test"] < 0.2 and 0.1 < fractions["val"] < 0.2
    for name in ("train", "val", "test"):
        assert set(frame.label[split == name]) == {"COVID-19", "Normal", "Pneumonia"}
    assert split.equals(split_by_patient(frame, 0.15, 0.15, seed=3))
    assert not split.equals(split_by_patient(frame, 0.15, 0.15, seed=4))


@pytest.mark.slow
@needs_shared_data
def test_real_pool_split_has_no_patient_in_two_splits():
    frame = scan_dataset(CXR_POOL)
    assert len(frame) == 11020
    assert set(frame["source"]) == {"radiography_db", "ieee8023", "kermany"}
    split = split_by_patient(frame, seed=0)
    patients = {name: set(frame.patient_id[split == name]) for name in ("train", "val", "test")}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    # The shipped v1 was trained on exactly this pool: its card recorded the same manifest hash.
    v1 = json.loads((REPO_ROOT / "weights" / "v1-dcnn80-compact" / "card.json").read_text())
    assert manifest_hash(frame) == v1["data"]["manifest_sha256"]
    relabelled = frame.copy()
    relabelled.loc[relabelled.index[0], "label"] = "Pneumonia" if frame["label"].iloc[0] != "Pneumonia" else "Normal"
    assert manifest_hash(relabelled) != manifest_hash(frame)


def write_manifest_folder(root, source, labels, prefix):
    rows = []
    for index, label in enumerate(labels):
        name = f"{label}/{prefix}{index}.png"
        write_png(root / name, value=40 + index)
        rows.append((name, label, f"{source}-p{index}", source, "adult"))
    pd.DataFrame(rows, columns=["path", "label", "patient_id", "source", "population"]).to_csv(
        root / "manifest.csv", index=False
    )


def test_several_folders_merge_and_a_folder_may_lack_a_class(tmp_path):
    from train.trainer.datasets import scan_datasets

    write_manifest_folder(tmp_path / "pool", "pool_src", ["COVID19", "NORMAL", "PNEUMONIA"] * 2, "a")
    write_manifest_folder(tmp_path / "adult", "hospital", ["NORMAL", "PNEUMONIA"] * 2, "b")
    frame = scan_datasets([tmp_path / "pool", tmp_path / "adult"])
    assert len(frame) == 10 and set(frame["source"]) == {"pool_src", "hospital"}
    assert set(frame["root"]) == {str((tmp_path / "pool").resolve()), str((tmp_path / "adult").resolve())}
    assert (frame["population"] == "adult").all()
    with pytest.raises(DatasetError, match="COVID-19"):
        scan_datasets([tmp_path / "adult"])  # alone it lacks a class
    assert len(scan_datasets([tmp_path / "adult"], every_class=False)) == 4
    with pytest.raises(DatasetError, match="twice"):
        scan_datasets([tmp_path / "pool", tmp_path / "pool"])


def test_leave_one_source_out_holds_out_every_image_of_it(tmp_path):
    from train.trainer.config import TrainConfig
    from train.trainer.datasets import EXTERNAL, scan_datasets
    from train.trainer.run import assign_splits

    write_manifest_folder(tmp_path / "pool", "pool_src", ["COVID19", "NORMAL", "PNEUMONIA"] * 30, "a")
    write_manifest_folder(tmp_path / "adult", "hospital", ["NORMAL", "PNEUMONIA"] * 30, "b")
    frame = scan_datasets([tmp_path / "pool", tmp_path / "adult"])
    split = assign_splits(frame, TrainConfig(leave_out_source="hospital"))
    assert (split[frame["source"] == "hospital"] == EXTERNAL).all()
    assert EXTERNAL not in set(split[frame["source"] == "pool_src"])
    assert {"train", "val", "test"} <= set(split)
    with pytest.raises(DatasetError, match="sources are"):
        assign_splits(frame, TrainConfig(leave_out_source="elsewhere"))
    with pytest.raises(DatasetError, match="COVID-19"):
        assign_splits(frame, TrainConfig(leave_out_source="pool_src"))  # nothing left to learn COVID-19 from


@pytest.mark.slow  # scans the real pool
@needs_shared_data
def test_the_adult_folder_joins_the_pool_with_its_own_patients():
    from train.trainer.datasets import scan_datasets

    adult = CXR_POOL.parent / "cxr-nih-adult"
    frame = scan_datasets([CXR_POOL, adult])
    nih = frame[frame["source"] == "nih_cxr14"]
    assert len(nih) == 857 and set(nih["label"]) == {"Normal", "Pneumonia"} and (nih["population"] == "adult").all()
    assert not set(nih["patient_id"]) & set(frame.loc[frame["source"] != "nih_cxr14", "patient_id"])
    split = split_by_patient(frame, seed=0)
    assert frame.groupby("patient_id").apply(lambda g: split[g.index].nunique()).max() == 1
