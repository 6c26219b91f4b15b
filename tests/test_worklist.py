"""The worklist's pieces without a browser: studies keep no full-resolution float pixels, priority, the record
shared with ``predict --json`` and its CSV, the session cap, and safe zip reading."""

import csv
import io
import zipfile

import numpy as np
import pytest

from core import worklist
from core.flags import Assessment
from core.inference import Predictor
from tests.conftest import FULLRES, small_card

CXR = FULLRES / "COVID19__covid-19-pneumonia-15-PA.jpg"  # 2800 × 3368


def zipped(members: dict) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return stream.getvalue()


def test_a_study_keeps_eight_bit_copies_not_full_resolution_floats(tiny_version):
    predictor = Predictor(tiny_version)
    data = CXR.read_bytes()
    study = worklist.decoded_study(CXR.name, data, "digest", predictor)
    assert study.full_shape == (3368, 2800) and study.display.dtype == np.uint8
    assert study.display.shape[1] <= 1460
    float_pixels = 3368 * 2800 * 4
    assert study.nbytes < float_pixels / 5  # bytes, display copy, thumbnail, model input
    png = worklist.full_resolution_png(study, predictor, predictor.card, "Grad-CAM")
    assert png.startswith(b"\x89PNG")


def test_an_unreadable_upload_is_a_study_with_its_message(tiny_version):
    study = worklist.decoded_study("notes.txt", b"hello", "digest", Predictor(tiny_version))
    assert study.error and study.display is None and worklist.priority("", False, error=True) == 4


def test_priority_puts_the_positive_call_then_the_uncertain_first():
    ranks = {worklist.priority("COVID-19", False), worklist.priority("Normal", True)}
    assert ranks == {0, 1}
    assert worklist.priority("Pneumonia", False) < worklist.priority("Normal", False)


def test_the_record_and_its_csv_row():
    assessment = Assessment()
    assessment.add("borderline")
    card = small_card(version="v9", operating_point={"positive_class": "COVID-19", "threshold": 0.29031})
    entry = worklist.record(
        "a.png",
        [0.4, 0.5, 0.1],
        ["COVID-19", "Normal", "Pneumonia"],
        "COVID-19",
        assessment,
        card,
        "2026-01-01T00:00:00Z",
    )
    assert entry["operating_point"] == "COVID-19 at p ≥ 0.2903" and entry["trust"] == "ok"
    (row,) = csv.DictReader(io.StringIO(worklist.to_csv([entry]).decode()))
    assert row["p_COVID-19"] == "0.400000" and row["flags"] == "borderline" and row["model_version"] == "v9"
    assert list(row) == ["file", "p_COVID-19", "p_Normal", "p_Pneumonia", *worklist.CSV_FIXED[1:], "site"]
    assert entry["site"]["name"] is None and row["site"].startswith("No site configured")
    assert worklist.describe_point(small_card()) == "none (most probable class)"


def test_the_session_cap_counts_studies_and_bytes(monkeypatch):
    held = {"a": worklist.Study("a", "a", b"x" * 10)}
    assert worklist.over_cap(held, 10, 1) == ""
    monkeypatch.setattr(worklist, "MAX_SESSION_BYTES", 15)
    assert "Clear studies" in worklist.over_cap(held, 10, 1)
    monkeypatch.setattr(worklist, "MAX_STUDIES", 1)
    assert "can hold 1 studies" in worklist.over_cap({}, 0, 2)


def test_a_zip_of_a_folder_is_read_in_memory_skipping_hidden_files():
    data = zipped({"day/a.png": b"1", "day/.DS_Store": b"2", "__MACOSX/day/._a.png": b"3", "day/sub/b.dcm": b"4"})
    assert worklist.files_of_upload("day.zip", data) == [("day.zip/day/a.png", b"1"), ("day.zip/day/sub/b.dcm", b"4")]
    assert worklist.files_of_upload("a.png", b"plain") == [("a.png", b"plain")]


@pytest.mark.parametrize("name", ["../evil.png", "/etc/evil.png", "a/../../evil.png"])
def test_a_zip_member_outside_the_archive_is_refused(name):
    with pytest.raises(worklist.UploadError, match="points outside"):
        worklist.files_of_upload("x.zip", zipped({name: b"1"}))


def test_zip_caps_on_count_and_size_and_a_lying_header(monkeypatch):
    monkeypatch.setattr(worklist, "MAX_ZIP_MEMBERS", 2)
    with pytest.raises(worklist.UploadError, match="at most 2"):
        worklist.files_of_upload("x.zip", zipped({f"{i}.png": b"1" for i in range(3)}))
    monkeypatch.setattr(worklist, "MAX_ZIP_BYTES", 10)
    with pytest.raises(worklist.UploadError, match="unpacks to more"):
        worklist.files_of_upload("x.zip", zipped({"a.png": b"1" * 11}))
    with pytest.raises(worklist.UploadError, match="damaged"):
        worklist.files_of_upload("x.zip", b"PK\x03\x04" + b"\x00" * 40)
    lying = bytearray(zipped({"a.png": b"123456"}))
    central = lying.rfind(b"PK\x01\x02")
    lying[central + 24 : central + 28] = (2).to_bytes(4, "little")  # uncompressed size in the central directory
    with pytest.raises(worklist.UploadError, match="refused"):
        worklist.files_of_upload("x.zip", bytes(lying))


def test_table_rows_follow_priority_then_p_and_an_unreadable_row_says_why(tiny_version):
    predictor = Predictor(tiny_version)
    files = sorted(FULLRES.glob("*.jp*g"))[:3]
    studies = {}
    for number, path in enumerate(files):
        studies[str(number)] = worklist.decoded_study(path.name, path.read_bytes(), str(number), predictor)
    studies["bad"] = worklist.decoded_study("bad.png", b"not an image" * 4, "bad", predictor)
    rows = worklist.table_rows(studies, predictor, predictor.card)
    assert rows[-1]["file"] == "bad.png" and rows[-1]["p"] is None and rows[-1]["flags"] == studies["bad"].error
    keys = [(row["rank"], -row["p"]) for row in rows[:-1]]
    assert keys == sorted(keys) and len(rows) == 4
    by_call = sorted(studies, key=lambda digest: worklist.call_rank(studies[digest], predictor, predictor.card))
    assert by_call[-1] == "bad"  # opening the most urgent new upload needs no flags, and never an unreadable one


def test_the_filter_never_hides_everything_by_accident():
    rows = [
        {"rank": 0, "file": "a.png"},
        {"rank": 3, "file": "B.dcm"},
        {"rank": 4, "file": "c.png"},
    ]
    assert worklist.filtered(rows, [], "") == rows  # no group chosen: every group
    assert worklist.filtered(rows, ["Normal"], "") == [rows[1]]
    assert worklist.filtered(rows, list(worklist.PRIORITY), " b ") == [rows[1]]
    assert worklist.filtered(rows, ["unreadable"], "a") == []  # the reader's own choice can still show none


def test_titles_and_duplicate_messages_read_as_english():
    assert worklist.studies_title(1) == "Worklist (1 study)"
    assert worklist.studies_title(20) == "Worklist (20 studies)"
    assert "the same file as a.png" in worklist.duplicate_message("b.png", "a.png")
    assert worklist.duplicate_message("a.png", "a.png").startswith("a.png is already in the worklist")
