"""The Diagnose bar: real chest radiographs in every supported encoding get, from the shipped model,
probabilities within 0.02 of the same image as an 8-bit PNG.

Each real CXR from ../shared/data/fullres is decoded once to 8-bit grey and re-encoded here in every container
and transfer syntax the app accepts (lossy ones at high quality, as a scanner or PACS would write them)."""

import io

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from core import registry
from core.imaging import read_grey
from core.inference import Predictor
from tests.conftest import FULLRES, REPO, needs_shared_data
from tests.test_imaging import ORIENTATION_TAG, ROTATED_90_CW, dicom_bytes, encode

pytestmark = pytest.mark.slow  # the shipped model on 22 encodings of 6 real radiographs

TOLERANCE = 0.02
IMAGES_PER_CLASS = 2
LONG_SIDE_PX = 1024  # re-encoding 4-megapixel images in a dozen codecs would make this test slow, not stronger
FULL_RANGE_8 = {"WindowCenter": 128, "WindowWidth": 256}  # DICOM's linear window mapping 0..255 onto 0..1
FULL_RANGE_12 = {"WindowCenter": 2048, "WindowWidth": 4096}


def grey_png(grey):
    return encode(Image.fromarray(grey), "PNG")


def palette_png(grey):
    palette = Image.frombytes("P", grey.shape[::-1], grey.tobytes())
    palette.putpalette(np.repeat(np.arange(256, dtype=np.uint8), 3).tobytes())
    return encode(palette, "PNG")


def exif_rotated_jpeg(grey):
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = ROTATED_90_CW  # stored turned a quarter anticlockwise; the reader must turn it back
    return encode(Image.fromarray(np.rot90(grey)), "JPEG", quality=95, exif=exif.tobytes())


def twelve_bit(grey):
    return np.round(grey.astype(np.float64) * 4095 / 255).astype(np.uint16)


def jpeg_baseline_dicom(grey):
    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(grey, **FULL_RANGE_8)))
    dataset.PixelData = encapsulate([cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()])
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


ENCODINGS = {
    "PNG 16-bit": lambda g: encode(Image.fromarray(g.astype(np.uint16) * 257), "PNG"),
    "PNG RGB": lambda g: encode(Image.fromarray(g).convert("RGB"), "PNG"),
    "PNG RGBA (opaque)": lambda g: encode(Image.fromarray(g).convert("RGBA"), "PNG"),
    "PNG palette": palette_png,
    "JPEG q95": lambda g: encode(Image.fromarray(g), "JPEG", quality=95),
    "JPEG progressive q95": lambda g: encode(Image.fromarray(g), "JPEG", quality=95, progressive=True),
    "JPEG RGB q95": lambda g: encode(Image.fromarray(g).convert("RGB"), "JPEG", quality=95),
    "JPEG CMYK q95": lambda g: encode(Image.fromarray(g).convert("CMYK"), "JPEG", quality=95),
    "JPEG EXIF-rotated q95": exif_rotated_jpeg,
    "BMP": lambda g: encode(Image.fromarray(g), "BMP"),
    "TIFF": lambda g: encode(Image.fromarray(g), "TIFF"),
    "TIFF 16-bit": lambda g: encode(Image.fromarray(g.astype(np.uint16) * 257), "TIFF"),
    "WebP lossless": lambda g: encode(Image.fromarray(g), "WEBP", lossless=True),
    "GIF": lambda g: encode(Image.fromarray(g), "GIF"),
    "DICOM 8-bit": lambda g: dicom_bytes(g, **FULL_RANGE_8),
    "DICOM 12-bit": lambda g: dicom_bytes(twelve_bit(g), bits_stored=12, **FULL_RANGE_12),
    "DICOM MONOCHROME1": lambda g: dicom_bytes(255 - g, photometric="MONOCHROME1", **FULL_RANGE_8),
    "DICOM rescaled": lambda g: dicom_bytes(
        g.astype(np.uint16) * 4 + 1000, RescaleSlope=0.25, RescaleIntercept=-250, **FULL_RANGE_8
    ),
    "DICOM RLE": lambda g: dicom_bytes(twelve_bit(g), bits_stored=12, compress_as=RLELossless, **FULL_RANGE_12),
    "DICOM JPEG-LS": lambda g: dicom_bytes(twelve_bit(g), bits_stored=12, compress_as=JPEGLSLossless, **FULL_RANGE_12),
    "DICOM JPEG 2000": lambda g: dicom_bytes(
        twelve_bit(g), bits_stored=12, compress_as=JPEG2000Lossless, **FULL_RANGE_12
    ),
    "DICOM JPEG baseline q95": jpeg_baseline_dicom,
}


@pytest.fixture(scope="module")
def shipped_predictor():
    if registry.active_version(REPO / "weights") is None:
        pytest.skip("no shipped model version in weights/")
    return Predictor(root=REPO / "weights")


@pytest.fixture(scope="module")
def radiographs():
    """8-bit grey versions of real CXRs, IMAGES_PER_CLASS of each class, at most LONG_SIDE_PX on a side."""
    paths = [
        path
        for label in ("COVID19", "NORMAL", "PNEUMONIA")
        for path in sorted(FULLRES.glob(f"{label}__*"))[:IMAGES_PER_CLASS]
    ]
    greys = []
    for path in paths:
        grey = np.round(read_grey(path) * 255).astype(np.uint8)
        scale = LONG_SIDE_PX / max(grey.shape)
        if scale < 1:
            grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        greys.append(grey)
    return greys


@pytest.fixture(scope="module")
def png_probabilities(shipped_predictor, radiographs):
    return probabilities(shipped_predictor, [grey_png(grey) for grey in radiographs])


def probabilities(predictor, files):
    return predictor.probabilities(np.stack([predictor.preprocess(read_grey(data)) for data in files]))


@needs_shared_data
@pytest.mark.parametrize("name", ENCODINGS)
def test_every_encoding_gives_the_probabilities_of_the_png(name, shipped_predictor, radiographs, png_probabilities):
    encoded = probabilities(shipped_predictor, [ENCODINGS[name](grey) for grey in radiographs])
    difference = np.abs(encoded - png_probabilities).max()
    assert difference <= TOLERANCE, f"{name}: probabilities differ from the PNG's by up to {difference:.4f}"


@needs_shared_data
def test_the_comparison_can_tell_a_different_image(shipped_predictor, radiographs, png_probabilities):
    """The bar is not met vacuously: the model's answers move by far more than the tolerance when the pixels do
    (here: the greys inverted, as a MONOCHROME1 file read without its inversion would be)."""
    inverted = probabilities(shipped_predictor, [grey_png(255 - grey) for grey in radiographs])
    assert np.abs(inverted - png_probabilities).max() > 10 * TOLERANCE
