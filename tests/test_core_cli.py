"""python -m core predict / info: one line per file, errors as messages, exit codes."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import FULLRES, REPO, needs_shared_data

pytestmark = pytest.mark.slow  # each test starts `python -m core` (TensorFlow) in a subprocess


def run_core(*args, env=None):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@needs_shared_data
def test_predict_json_on_a_folder_with_bad_files(tiny_version, tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    for source in sorted(FULLRES.glob("*.jp*g"))[:3]:
        shutil.copy(source, folder / source.name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "truncated.jpg").write_bytes(
        (FULLRES / sorted(p.name for p in FULLRES.glob("*.jp*g"))[0]).read_bytes()[:500]
    )
    (folder / "empty.png").write_bytes(b"")
    result = run_core("predict", "--json", str(folder))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 6
    good = [line for line in lines if "probabilities" in line]
    bad = [line for line in lines if "error" in line]
    assert len(good) == 3 and len(bad) == 3
    for line in good:
        assert set(line["probabilities"]) == {"COVID-19", "Normal", "Pneumonia"}
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert line["prediction"] in line["probabilities"]
    for line in bad:
        assert line["error"] and "Traceback" not in line["error"]


@needs_shared_data
def test_predict_exit_zero_when_all_files_read(tiny_version):
    files = [str(p) for p in sorted(FULLRES.glob("*.jp*g"))[:2]]
    result = run_core("predict", *files)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2


def test_info_and_missing_model(tiny_version):
    result = run_core("info", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["version"] == tiny_version
    result = run_core("info", "--model", "nope")
    assert result.returncode == 2 and "nope" in result.stderr and "Traceback" not in result.stderr


@needs_shared_data
def test_predict_prints_no_tensorflow_noise_on_stderr_for_a_good_file(tiny_version):
    result = run_core("predict", "--json", str(sorted(FULLRES.glob("*.jp*g"))[0]))
    assert result.returncode == 0
    assert result.stderr == ""
    (line,) = [json.loads(text) for text in result.stdout.splitlines()]
    assert line["model_version"] == tiny_version and line["operating_point"] == "none (most probable class)"


@needs_shared_data
def test_predict_report_dir_writes_a_pdf_per_readable_file(tiny_version, tmp_path):
    from pypdf import PdfReader

    folder = tmp_path / "inbox"
    (folder / "day1").mkdir(parents=True)
    cxr = sorted(FULLRES.glob("*.jp*g"))[0]
    shutil.copy(cxr, folder / "day1" / cxr.name)
    (folder / "broken.png").write_bytes(b"not an image")
    result = run_core("predict", "--json", "--report-dir", str(tmp_path / "reports"), str(folder))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = next(json.loads(text) for text in result.stdout.splitlines() if "probabilities" in text)
    (report,) = (tmp_path / "reports").rglob("*.pdf")
    assert report.relative_to(tmp_path / "reports").as_posix() == f"day1/{cxr.stem}_report.pdf"
    text = " ".join(" ".join(page.extract_text().split()) for page in PdfReader(report).pages)
    assert f"Called {line['prediction']}" in text and f"Model version: {tiny_version}" in text
    assert "Operating point: none (most probable class)" in text


def test_a_cancelled_run_says_whether_and_how_it_can_be_resumed(tmp_path, monkeypatch):
    from train.__main__ import cancelled_message
    from train.trainer.checkpoints import STATE_FILE

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "20261206-a"
    run_dir.mkdir(parents=True)
    assert "no epoch was saved" in cancelled_message(run_dir) and "--resume" not in cancelled_message(run_dir)
    (run_dir / STATE_FILE).write_text('{"epoch": 3}')
    assert (
        cancelled_message(run_dir) == "cancelled after epoch 3; resume with: python -m train --resume runs/20261206-a"
    )
