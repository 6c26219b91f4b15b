"""core.findings: what a reader's finding stores in the site's set carries no patient identity — DICOM is
recognised by its content (a file without its preamble too) and de-identified, a raster file is re-encoded from
its pixels alone, and what cannot be cleaned is refused, never stored as it came."""

import io

import numpy as np
import pydicom
import pytest
from PIL import Image, PngImagePlugin

from core.findings import FindingError, record_finding
from tests.conftest import DICOM_SAMPLE, FULLRES

NAME = "Doe^Jane"


def stored_files(root):
    return [path for path in (root / "General").rglob("*") if path.is_file() and path.parent.name != "General"]


def record(root, data, name):
    return record_finding("General", data, name, "v1", "Normal", "agrees", "Dr Test", root=root)


def test_a_dicom_without_its_preamble_is_de_identified_not_copied(tmp_path):
    dataset = pydicom.dcmread(DICOM_SAMPLE)
    dataset.PatientName, dataset.PatientID = NAME, "PAT-123"
    full = io.BytesIO()
    dataset.save_as(full)
    bare = full.getvalue()[132:]  # no preamble, no "DICM": as many PACS exports and C-STORE dumps are
    assert bare.startswith(b"\x02\x00")
    relative = record(tmp_path, bare, "export")
    (stored,) = stored_files(tmp_path)
    assert relative.endswith(".dcm") and stored.name == relative.split("/")[-1]
    content = stored.read_bytes()
    assert b"Doe" not in content and b"PAT-123" not in content
    cleaned = pydicom.dcmread(stored)
    assert cleaned.PatientName == "" and cleaned.PatientIdentityRemoved == "YES"


def test_a_raster_file_is_stored_as_its_pixels_alone(tmp_path):
    grey = np.asarray(Image.open(FULLRES / "NORMAL__IM-0636-0001.jpeg").convert("L"))
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", f"Patient {NAME}")
    png = io.BytesIO()
    Image.fromarray(grey).save(png, format="PNG", pnginfo=text)
    exif = Image.Exif()
    exif[0x010E] = f"Patient {NAME}"  # ImageDescription
    jpeg = io.BytesIO()
    Image.fromarray(grey).save(jpeg, format="JPEG", exif=exif)
    for name, data in (("a.png", png.getvalue()), ("b.jpg", jpeg.getvalue())):
        assert NAME.encode() in data
        relative = record(tmp_path, data, name)
        stored = tmp_path / "General" / relative
        assert relative.endswith(".png") and NAME.encode() not in stored.read_bytes()
        again = Image.open(stored)
        assert not again.info.get("exif") and "Comment" not in again.info and again.size == grey.shape[::-1]
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "General" / record(tmp_path, png.getvalue(), "a.png"))), grey
    )


@pytest.mark.parametrize("cut", [400, 2000, None])
def test_what_cannot_be_cleaned_is_refused_and_nothing_is_stored(tmp_path, cut):
    data = DICOM_SAMPLE.read_bytes()[:cut] if cut else b"not an image at all" * 5
    with pytest.raises(FindingError, match="nothing was stored"):
        record(tmp_path, data, "x")
    assert stored_files(tmp_path) == []
