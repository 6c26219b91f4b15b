"""``python -m train.site`` end to end on real films: validate agrees with ``core predict --json``, is recorded in
the card and shown by every call; adapt publishes a site version whose calls say it was validated; bad site sets
publish nothing; a reader's finding grows the site's set in the layout validate reads."""

import json
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from sklearn.metrics import roc_auc_score

from core import CLASS_NAMES, registry
from core.findings import record_finding
from tests.conftest import DICOM_SAMPLE, REPO, needs_shared_data
from tests.test_site import make_site_set

pytestmark = [pytest.mark.slow, needs_shared_data]


def run(module: str, *arguments, env=None):
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, arguments)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=900,
    )


def predict_json(version, files, site=None) -> list:
    done = run("core", "predict", "--model", version, "--json", *files, env={"CXR_SITE": site or ""})
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_validate_gives_the_macro_auc_of_predict_json_and_is_recorded_and_told_on_every_call(shipped_version, tmp_path):
    folder = make_site_set(tmp_path / "site", 8)
    (folder / "NORMAL" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    done = run("train.site", "validate", "--data", folder, "--site", "Test-General", "--who", "tester", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["skipped_files"] == {"NORMAL/broken.png": result["skipped_files"]["NORMAL/broken.png"]}
    files = sorted(p for p in folder.rglob("*.jpg"))
    readings = predict_json(shipped_version, files)
    labels = [
        CLASS_NAMES.index({"COVID19": "COVID-19", "NORMAL": "Normal", "PNEUMONIA": "Pneumonia"}[p.parent.name])
        for p in files
    ]
    probs = np.array([[r["probabilities"][name] for name in CLASS_NAMES] for r in readings])
    independent = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert result["figures"]["macro_auc"]["value"] == pytest.approx(independent, abs=1e-4)
    assert result["figures"]["n"] == 24 and result["verdict"]["code"] in ("fit", "reduced", "unfit")
    low, high = result["figures"]["macro_auc"]["ci95"]
    assert low <= result["figures"]["macro_auc"]["value"] <= high
    assert result["reference"]["macro_auc"]["value"] > 0.9  # the version's own test split
    card = registry.load_card(shipped_version)
    assert card.sites[-1]["site"] == "Test-General" and card.sites[-1]["who"] == "tester"
    (told,) = predict_json(shipped_version, files[:1], site="Test-General")
    assert told["site"]["name"] == "Test-General" and told["site"]["n"] == 24
    assert told["site"]["macro_auc"] == pytest.approx(result["figures"]["macro_auc"]["value"], abs=1e-4)
    assert told["site"]["validated"] == (result["verdict"]["code"] != "unfit")
    (elsewhere,) = predict_json(shipped_version, files[:1], site="Elsewhere")
    assert elsewhere["site"] == {"name": "Elsewhere", "validated": False, "macro_auc": None, "n": None, "verdict": None}
    text = run("train.site", "validate", "--data", folder, "--no-record")
    assert "Verdict:" in text.stdout and "Macro AUC" in text.stdout and "Skipped 1 unreadable" in text.stdout


def test_adapt_publishes_a_site_version_that_calls_say_was_validated_there(shipped_version, tmp_path):
    folder = make_site_set(tmp_path / "site", 12, seed=1)
    done = run(
        "train.site",
        "adapt",
        "--data",
        folder,
        "--site",
        "Test-General",
        "--publish",
        "v-site",
        "--methods",
        "recalibration,head",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["base_version"] == shipped_version and result["method"] in ("recalibration", "head")
    assert "cross-fitted" in result["design"]
    held = result["held_out"]
    assert held["site_version"]["n"] == held["base_version"]["n"] == 36
    card = registry.load_card("v-site")
    assert card.site_adaptation["base_version"] == shipped_version
    assert card.operating_point["chosen_on"] == "site" and card.operating_point["target_sensitivity"] == 0.9
    assert card.flags["fitted_on"]["validation_images"] == 36
    assert registry.active_version() == shipped_version  # published, not activated
    files = sorted(folder.rglob("*.jpg"))[:2]
    site_calls = predict_json("v-site", files, site="Test-General")
    expected = card.sites[-1]["verdict"]["code"] != "unfit"
    assert all(call["site"]["validated"] == expected and call["model_version"] == "v-site" for call in site_calls)
    assert all(call["site"]["validated"] is False for call in predict_json(shipped_version, files, "Test-General"))
    report = run("core", "report", "--model", "v-site")
    assert report.returncode == 0 and "Test-General" in report.stdout, report.stderr
    cams = tmp_path / "cams"
    cam = run("core", "predict", "--model", "v-site", "--json", "--cam-dir", cams, files[0])
    assert cam.returncode == 0 and len(list(cams.glob("*.png"))) == 1


def test_a_site_set_of_one_class_or_a_bad_name_publishes_nothing(shipped_version, tmp_path):
    one_class = make_site_set(tmp_path / "one", 6, classes=("COVID-19",))
    done = run("train.site", "adapt", "--data", one_class, "--site", "General", "--publish", "v-one")
    assert done.returncode == 2 and "1 class(es) only" in done.stderr and "Traceback" not in done.stderr
    two_classes = make_site_set(tmp_path / "two", 6, classes=("Normal", "Pneumonia"))
    done = run("train.site", "adapt", "--data", two_classes, "--site", "General", "--publish", "v-two")
    assert done.returncode == 2 and "fewer than 5 films of COVID-19 (0)" in done.stderr
    done = run("train.site", "adapt", "--data", two_classes, "--site", "../x", "--publish", "v-bad")
    assert done.returncode == 2 and "not a plain site name" in done.stderr
    assert registry.list_versions() == [shipped_version]
    done = run("train.site", "validate", "--data", one_class, "--site", "General")
    assert done.returncode == 2 and "1 class(es) only" in done.stderr
    assert registry.load_card(shipped_version).sites == []


def test_reader_findings_grow_a_set_that_validate_reads(shipped_version, tmp_path, isolated_folders):
    source = make_site_set(tmp_path / "films", 5)
    for path in sorted(source.rglob("*.jpg")):
        label = {"COVID19": "COVID-19", "NORMAL": "Normal", "PNEUMONIA": "Pneumonia"}[path.parent.name]
        record_finding(
            "General",
            path.read_bytes(),
            path.name,
            shipped_version,
            "COVID-19",
            "agrees" if label == "COVID-19" else "corrected",
            "Dr Test",
            corrected_to=label,
        )
    record_finding("General", DICOM_SAMPLE.read_bytes(), "x.dcm", shipped_version, "Pneumonia", "agrees", "Dr Test")
    site_set = isolated_folders / "sites" / "General"
    (stored,) = site_set.rglob("*.dcm")
    dataset = pydicom.dcmread(stored)
    original = pydicom.dcmread(DICOM_SAMPLE)
    assert original.PatientID and dataset.PatientID == "" and dataset.PatientName == ""
    assert dataset.PatientIdentityRemoved == "YES" and dataset.StudyInstanceUID != original.StudyInstanceUID
    done = run("train.site", "validate", "--data", site_set, "--json", "--no-record")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["figures"]["n_per_class"] == {"COVID-19": 5, "Normal": 5, "Pneumonia": 6}


def test_an_adaptation_run_reports_progress_and_a_cancel_publishes_nothing(shipped_version, tmp_path):
    import time

    from train.jobs import supervisor

    folder = make_site_set(tmp_path / "site", 8, seed=2)
    arguments = [
        "adapt",
        "--data",
        str(folder),
        "--site",
        "General",
        "--model",
        shipped_version,
        "--publish",
        "v-cancelled",
        "--methods",
        "finetune",
    ]
    run_dir = supervisor.start_site_run(arguments, "General")
    with pytest.raises(supervisor.RunBusyError):
        supervisor.start_site_run(arguments, "General")  # one heavy job at a time, training included
    deadline = time.monotonic() + 600
    while not any(e["event"] == "site" for e in supervisor.run_info(run_dir).events):
        assert time.monotonic() < deadline and supervisor.run_info(run_dir).status == "running", (
            run_dir / "log.txt"
        ).read_text()
        time.sleep(1)
    assert supervisor.site_runs()[0].path == run_dir and supervisor.list_runs() == []
    assert supervisor.cancel_run(run_dir) == "cancelled"
    assert registry.list_versions() == [shipped_version]
    assert not [p for p in registry.weights_dir().iterdir() if p.name.startswith(".staging")]
