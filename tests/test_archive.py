"""The uploaded-zip extractor: a folder-per-class zip unpacks into a dataset the trainer can scan; traversal,
absolute paths, symlinks, too many files and oversized archives are refused before anything is written.
SavedModel exports: a folder name under the exports root, nothing outside it (paths, '..', symlink escapes)."""

import io
import stat
import zipfile

import cv2
import numpy as np
import pytest

from train.jobs import datasource
from train.jobs.archive import ArchiveError, ExportPathError, export_saved_model, export_target, extract_dataset_zip
from train.trainer.datasets import scan_dataset


def png_bytes(value: int) -> bytes:
    return cv2.imencode(".png", np.full((8, 8), value, np.uint8))[1].tobytes()


def make_zip(members: dict, symlinks=()) -> bytes:
    """A zip of ``{name: bytes}`` plus symbolic-link members ``(name, target)``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


DATASET = {
    f"xrays/{label}/{i}.png": png_bytes(40 * i) for label in ("COVID19", "NORMAL", "PNEUMONIA") for i in range(2)
}


def test_a_folder_per_class_zip_unpacks_into_a_scannable_dataset(tmp_path):
    archive = make_zip({**DATASET, "__MACOSX/xrays/._0.png": b"resource fork"})
    folder = extract_dataset_zip(io.BytesIO(archive), tmp_path / "upload")
    assert folder == tmp_path / "upload" / "xrays"
    frame = scan_dataset(folder)
    assert sorted(frame["label"].value_counts().to_dict().items()) == [("COVID-19", 2), ("Normal", 2), ("Pneumonia", 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload"]


@pytest.mark.parametrize(
    "members, symlinks, message",
    [
        ({"../evil.png": b"x"}, (), "outside the archive"),
        ({"xrays/NORMAL/../../../evil.png": b"x"}, (), "outside the archive"),
        ({"/etc/evil.png": b"x"}, (), "absolute path"),
        ({"C:/evil.png": b"x"}, (), "absolute path"),
        ({"xrays\\..\\evil.png": b"x"}, (), "backslashes"),
        ({}, [("xrays/NORMAL/link.png", "/etc/passwd")], "symbolic link"),
    ],
)
def test_unsafe_members_are_refused_and_nothing_is_written(tmp_path, members, symlinks, message):
    archive = make_zip({**DATASET, **members}, symlinks)
    with pytest.raises(ArchiveError, match=message):
        extract_dataset_zip(io.BytesIO(archive), tmp_path / "upload")
    assert list(tmp_path.iterdir()) == []


def test_too_many_files_or_too_many_bytes_are_refused_before_extracting(tmp_path):
    with pytest.raises(ArchiveError, match="at most 5 are accepted"):
        extract_dataset_zip(io.BytesIO(make_zip(DATASET)), tmp_path / "upload", max_files=5)
    bomb = make_zip({**DATASET, "xrays/NORMAL/big.png": bytes(10_000_000)})  # compresses to a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ArchiveError, match="unpacks to"):
        extract_dataset_zip(io.BytesIO(bomb), tmp_path / "upload", max_bytes=1_000_000)
    assert list(tmp_path.iterdir()) == []


def test_not_a_zip_and_existing_destinations_are_refused(tmp_path):
    with pytest.raises(ArchiveError, match="not a readable zip"):
        extract_dataset_zip(io.BytesIO(b"PK not really"), tmp_path / "upload")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ArchiveError, match="already exists"):
        extract_dataset_zip(io.BytesIO(make_zip(DATASET)), tmp_path / "taken")


def test_uploads_land_in_the_upload_folder_and_are_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("CXR_UPLOAD_DIR", str(tmp_path / "uploads"))
    folder = datasource.unpack_upload(io.BytesIO(make_zip(DATASET)), "My X-rays (2024).zip")
    assert folder.parent.parent == tmp_path / "uploads" and folder.parent.name.startswith("My_X-rays_2024-")
    assert datasource.dataset_folders() == [folder]
    assert datasource.summarize_dataset(folder)["classes"]["images"].tolist() == [2, 2, 2]


# ---- SavedModel exports: only under the exports root ----


@pytest.mark.parametrize(
    "name, message",
    [
        ("/tmp/evil", "not a path on the server"),
        ("~/evil", "not a path on the server"),
        ("C:/evil", "not a path on the server"),
        ("\\\\server\\share", "not a path on the server"),
        ("../evil", "'..'"),
        ("v2/../../evil", "'..'"),
        (".hidden", "only letters, digits"),
        ("v2/.ssh", "only letters, digits"),
        ("v2\\..\\evil", "only letters, digits"),
        ("a b", "only letters, digits"),
        ("", "a name"),
    ],
)
def test_export_names_that_would_write_outside_the_exports_root_are_refused(isolated_folders, name, message):
    with pytest.raises(ExportPathError, match=message) as refused:
        export_saved_model("any", name)
    assert isinstance(refused.value, ValueError)
    assert str(isolated_folders) not in str(refused.value)  # no server path in the message
    assert not (isolated_folders / "exports").exists()


def test_a_symbolic_link_out_of_the_exports_root_is_refused(isolated_folders, tmp_path):
    exports = isolated_folders / "exports"
    exports.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (exports / "escape").symlink_to(outside)
    with pytest.raises(ExportPathError, match="outside the exports folder"):
        export_target("escape/v2")
    with pytest.raises(ExportPathError, match="outside the exports folder"):
        export_target("escape")
    assert list(outside.iterdir()) == []


def test_export_names_resolve_under_the_exports_root(isolated_folders):
    exports = (isolated_folders / "exports").resolve()
    assert export_target("v2-dcnn80-balanced") == exports / "v2-dcnn80-balanced"
    assert export_target(" cxr/1 ") == exports / "cxr" / "1"  # TF Serving's <model>/<version> layout


def test_an_existing_non_empty_export_folder_is_never_overwritten(isolated_folders):
    taken = isolated_folders / "exports" / "cxr" / "1"
    taken.mkdir(parents=True)
    (taken / "saved_model.pb").write_bytes(b"someone else's")
    with pytest.raises(ArchiveError, match="already exists"):
        export_saved_model("any", "cxr/1")
    assert (taken / "saved_model.pb").read_bytes() == b"someone else's"
