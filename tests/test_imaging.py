"""core.imaging: every supported encoding decodes to the same greyscale pixels; every unusable file is refused
with a specific, plain message. Fixtures are made here, in memory; real images are only read from shared data."""

import io
import struct
import zipfile
import zlib

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from core.imaging import Radiograph, UnusableImageError, dicom_fields_for_display, read_grey, read_image
from tests.conftest import DICOM_SAMPLE, FULLRES, needs_shared_data

HEIGHT, WIDTH = 300, 260
ORIENTATION_TAG = 0x0112
ROTATED_90_CW = 6  # EXIF orientation: the stored image must be turned 90° clockwise for display
JARGON = ("cv2", "opencv", "pydicom", "pillow", "traceback", "none", "errno", "exception")


def chest_like(height=HEIGHT, width=WIDTH, seed=0) -> np.ndarray:
    """An 8-bit image with radiograph-like statistics (smooth structure plus noise, full range used)."""
    rows, cols = np.mgrid[0:height, 0:width]
    smooth = 0.5 + 0.3 * np.sin(rows / 23.0) * np.cos(cols / 17.0)
    noisy = smooth + np.random.default_rng(seed).normal(0, 0.08, (height, width))
    noisy[0, 0], noisy[-1, -1] = 0.0, 1.0
    return np.clip(noisy * 255 + 0.5, 0, 255).astype(np.uint8)


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def dicom_bytes(stored: np.ndarray, photometric="MONOCHROME2", bits_stored=None, compress_as=None, **elements) -> bytes:
    """A single-frame (or, with a 3-D ``stored``, multi-frame) DICOM file with ``elements`` set."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = generate_uid()
    dataset.Modality = "CR"
    dataset.PatientName = "DOE^JANE"
    dataset.PatientID = "PAT-001"
    bits = bits_stored or stored.dtype.itemsize * 8
    dataset.set_pixel_data(stored, photometric, bits)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    if compress_as is not None:
        dataset.compress(compress_as)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` × ``height`` but carries no image data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def refusal(data) -> str:
    """The refusal message for ``data``, lower-cased, after checking it is free of programmer's jargon."""
    with pytest.raises(UnusableImageError) as caught:
        read_image(data)
    message = str(caught.value).lower()
    assert not any(word in message for word in JARGON), message
    return message


GREY = chest_like()
GREY_UNIT = GREY / 255.0
RAMP_12BIT = (np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) * 4095 // (HEIGHT * WIDTH - 1)).astype(np.uint16)


# ---- raster formats ----


@pytest.mark.parametrize(
    "image_format, options", [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("GIF", {})]
)
def test_lossless_formats_give_the_exact_pixels(image_format, options):
    radiograph = read_image(encode(Image.fromarray(GREY), image_format, **options))
    assert isinstance(radiograph, Radiograph) and radiograph.format == image_format
    assert radiograph.pixels.dtype == np.float32 and radiograph.pixels.shape == (HEIGHT, WIDTH)
    np.testing.assert_allclose(radiograph.pixels, GREY_UNIT, atol=1e-6)
    assert radiograph.metadata == {"Rows": HEIGHT, "Columns": WIDTH}


def test_path_and_bytes_give_the_same_pixels(tmp_path):
    path = tmp_path / "no_extension"
    path.write_bytes(encode(Image.fromarray(GREY), "PNG"))
    np.testing.assert_array_equal(read_grey(path), read_grey(path.read_bytes()))
    np.testing.assert_array_equal(read_grey(str(path)), read_image(path).pixels)


def test_16_bit_png_keeps_its_precision():
    values = (GREY.astype(np.uint16) * 257 + np.arange(WIDTH, dtype=np.uint16) % 200).astype(np.uint16)
    pixels = read_grey(encode(Image.fromarray(values), "PNG"))
    np.testing.assert_allclose(pixels * 65535, values, atol=0.01)


def test_16_bit_colour_png_becomes_16_bit_grey():
    values = (GREY.astype(np.uint16) * 257 + 3).astype(np.uint16)
    ok, encoded = cv2.imencode(".png", np.dstack([values] * 3))
    assert ok
    np.testing.assert_allclose(read_grey(encoded.tobytes()) * 65535, values, atol=1.0)


def test_colour_becomes_luminance():
    red = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    red[..., 0] = 200
    red[0, 0] = 0
    pixels = read_grey(encode(Image.fromarray(red), "PNG"))
    assert pixels[5, 5] == pytest.approx(0.299 * 200 / 255, abs=1 / 255)


def test_palette_png_gives_its_grey_levels():
    palette_image = Image.fromarray(GREY).convert("P")
    expected = np.asarray(palette_image.convert("L")) / 255.0
    np.testing.assert_allclose(read_grey(encode(palette_image, "PNG")), expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_parts_are_composited_onto_black(mode):
    alpha = np.full((HEIGHT, WIDTH), 255, np.uint8)
    alpha[:, : WIDTH // 2] = 0
    alpha[:10] = 128
    grey_channels = [GREY] * (3 if mode == "RGBA" else 1)
    pixels = read_grey(encode(Image.fromarray(np.dstack(grey_channels + [alpha]), mode), "PNG"))
    np.testing.assert_allclose(pixels[10:, WIDTH // 2 :], GREY_UNIT[10:, WIDTH // 2 :], atol=1e-6)
    assert not pixels[10:, : WIDTH // 2].any()
    np.testing.assert_allclose(pixels[:10, WIDTH // 2 :], GREY_UNIT[:10, WIDTH // 2 :] * 128 / 255, atol=1 / 255)


def test_palette_transparency_is_black():
    palette_image = Image.fromarray(GREY).convert("P")
    transparent_index = int(np.asarray(palette_image)[100, 100])
    pixels = read_grey(encode(palette_image, "PNG", transparency=transparent_index))
    assert pixels[100, 100] == pytest.approx(0.0, abs=1e-6) and pixels.max() > 0.9


def test_cmyk_jpeg_matches_pillows_conversion():
    cmyk = Image.fromarray(GREY).convert("CMYK")
    data = encode(cmyk, "JPEG", quality=95)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("L")) / 255.0
    assert np.abs(read_grey(data) - expected).mean() < 1 / 255


def test_progressive_jpeg_matches_baseline():
    image = Image.fromarray(GREY)
    baseline = read_grey(encode(image, "JPEG", quality=95))
    progressive = read_grey(encode(image, "JPEG", quality=95, progressive=True))
    assert np.abs(progressive - baseline).mean() < 1 / 255


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(image_format):
    marked = np.full((HEIGHT, WIDTH), 60, np.uint8)
    marked[:40, :40] = 255  # top-left of the stored image
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = ROTATED_90_CW
    radiograph = read_image(encode(Image.fromarray(marked), image_format, exif=exif.tobytes()))
    assert radiograph.pixels.shape == (WIDTH, HEIGHT)
    assert radiograph.metadata == {"Rows": WIDTH, "Columns": HEIGHT}
    assert radiograph.pixels[:40, -40:].mean() > 0.9  # turned clockwise: now top-right
    assert radiograph.pixels[:40, :40].mean() < 0.3


def test_float_tiff_is_scaled_by_its_range():
    values = GREY.astype(np.float32) * 3.0 - 100.0
    pixels = read_grey(encode(Image.fromarray(values, "F"), "TIFF"))
    np.testing.assert_allclose(pixels, GREY_UNIT, atol=1e-5)


def test_single_frame_gif_is_accepted():
    assert read_image(encode(Image.fromarray(GREY), "GIF")).format == "GIF"


# ---- DICOM ----


def test_monochrome1_is_the_inverse_of_monochrome2():
    monochrome2 = read_grey(dicom_bytes(RAMP_12BIT, "MONOCHROME2", 12))
    monochrome1 = read_grey(dicom_bytes(RAMP_12BIT, "MONOCHROME1", 12))
    np.testing.assert_allclose(monochrome1, 1.0 - monochrome2, atol=1e-6)
    assert [monochrome2[0, 0], monochrome2[-1, -1]] == pytest.approx([0.0, 1.0], abs=1e-6)


def test_window_center_and_width_are_applied():
    pixels = read_grey(dicom_bytes(RAMP_12BIT, bits_stored=12, WindowCenter=2000, WindowWidth=1000))
    np.testing.assert_allclose(pixels[RAMP_12BIT <= 1400], 0.0, atol=1e-6)
    np.testing.assert_allclose(pixels[RAMP_12BIT >= 2600], 1.0, atol=1e-6)
    middle = np.argwhere(RAMP_12BIT == 2000)[0]
    assert pixels[tuple(middle)] == pytest.approx(0.5, abs=0.01)


def test_the_values_shown_black_and_white_are_the_files_own():
    """Window/level is read out in these units: a DICOM's modality values, a raster's own grey levels."""
    windowed = dicom_bytes(RAMP_12BIT, bits_stored=12, WindowCenter=2000, WindowWidth=1000, RescaleIntercept=-1000)
    assert read_image(windowed).value_range == pytest.approx((2000 - 0.5 - 499.5, 2000 - 0.5 + 499.5))  # modality units
    plain = read_image(dicom_bytes(RAMP_12BIT, bits_stored=12))
    assert plain.value_range == (0.0, 4095.0)
    assert read_image(dicom_bytes(RAMP_12BIT, "MONOCHROME1", 12)).value_range == (4095.0, 0.0)
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4096, 0, 12])
    lut.add_new(0x00283006, "US", (np.arange(4096) // 16).tolist())
    assert read_image(dicom_bytes(RAMP_12BIT, bits_stored=12, VOILUTSequence=[lut])).value_range is None
    assert read_image(encode(Image.fromarray(GREY), "PNG")).value_range == (0.0, 255.0)
    assert read_image(encode(Image.fromarray(RAMP_12BIT), "PNG")).value_range == (0.0, 65535.0)


def test_voi_lut_is_applied_and_scaled_by_its_output_range():
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4096, 0, 12])  # LUT Descriptor: 4096 entries from 0, 12 bits each
    lut.add_new(0x00283006, "US", (np.arange(4096) // 16).tolist())  # LUT Data
    pixels = read_grey(dicom_bytes(RAMP_12BIT, bits_stored=12, VOILUTSequence=[lut]))
    np.testing.assert_allclose(pixels, (RAMP_12BIT // 16) / 255.0, atol=1e-6)


def test_rescale_is_applied_before_the_window():
    without_rescale = read_grey(dicom_bytes(RAMP_12BIT, bits_stored=12, WindowCenter=2000, WindowWidth=1000))
    with_rescale = read_grey(
        dicom_bytes(
            RAMP_12BIT,
            bits_stored=12,
            RescaleSlope=2,
            RescaleIntercept=-1000,
            WindowCenter=2 * 2000 - 1000,
            WindowWidth=2 * 1000,
        )
    )
    np.testing.assert_allclose(with_rescale, without_rescale, atol=2e-3)


def test_bits_above_bits_stored_are_ignored():
    clean = dicom_bytes(RAMP_12BIT, bits_stored=12)
    dirty = clean.replace(RAMP_12BIT.tobytes(), (RAMP_12BIT | 0xF000).tobytes())
    assert dirty != clean
    np.testing.assert_array_equal(read_grey(dirty), read_grey(clean))


def test_without_window_the_image_range_is_used():
    narrow = (RAMP_12BIT // 4 + 1000).astype(np.uint16)
    pixels = read_grey(dicom_bytes(narrow, bits_stored=12))
    assert [pixels.min(), pixels.max()] == pytest.approx([0.0, 1.0], abs=1e-6)


# JPEG Baseline is covered by the real sample; pydicom encodes these here (JPEG-LS through pyjpegls).
@pytest.mark.parametrize("transfer_syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_compressed_dicom_decodes_like_uncompressed(transfer_syntax):
    radiograph = read_image(dicom_bytes(RAMP_12BIT, bits_stored=12, compress_as=transfer_syntax))
    np.testing.assert_allclose(radiograph.pixels, read_grey(dicom_bytes(RAMP_12BIT, bits_stored=12)), atol=1e-6)
    assert radiograph.metadata["TransferSyntax"] == transfer_syntax.name


def test_dicom_without_preamble_or_meta_header_is_read():
    data = dicom_bytes(RAMP_12BIT, bits_stored=12)
    expected = read_grey(data)
    np.testing.assert_array_equal(read_grey(data[132:]), expected)
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.file_meta, dataset.preamble = FileMetaDataset(), None
    bare = io.BytesIO()
    pydicom.dcmwrite(bare, dataset, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert bare.getvalue()[:2] == b"\x08\x00"
    np.testing.assert_array_equal(read_grey(bare.getvalue()), expected)


def test_dicom_metadata_holds_plain_values():
    metadata = read_image(dicom_bytes(RAMP_12BIT, bits_stored=12, ViewPosition="PA", StudyDate="20200315")).metadata
    assert metadata["Modality"] == "CR" and metadata["ViewPosition"] == "PA"
    assert metadata["PatientName"] == "DOE^JANE" and metadata["PatientID"] == "PAT-001"
    assert metadata["BitsStored"] == 12 and metadata["Rows"] == HEIGHT and metadata["Columns"] == WIDTH
    assert metadata["TransferSyntax"] == "Explicit VR Little Endian"
    assert all(type(value) in (str, int) for value in metadata.values())


def test_dicom_fields_for_display_are_plain_readable_strings():
    fields = dicom_fields_for_display(
        {
            "PatientName": "DOE^JANE^MARIE",
            "PatientID": "<b>7</b>",
            "StudyDate": "20200315",
            "PatientSex": "",
            "Modality": "CR",
        }
    )
    assert fields == {"Patient name": "DOE, JANE MARIE", "Patient ID": "<b>7</b>", "Study date": "2020-03-15"}
    assert dicom_fields_for_display({}) == {}


@pytest.mark.parametrize(
    "elements, keyword",
    [
        ({"ViewPosition": "LL"}, "view"),
        ({"BodyPartExamined": "HAND"}, "body part"),
        ({"Modality": "OT"}, "modality"),
        ({"PresentationIntentType": "FOR PROCESSING"}, "raw"),
    ],
)
def test_dicom_out_of_scope_hints(elements, keyword):
    radiograph = read_image(dicom_bytes(RAMP_12BIT, bits_stored=12, **elements))
    assert any(keyword in hint.lower() for hint in radiograph.hints)


def test_frontal_chest_cr_has_no_hints():
    data = dicom_bytes(RAMP_12BIT, bits_stored=12, ViewPosition="PA", BodyPartExamined="CHEST")
    assert read_image(data).hints == []


@pytest.mark.parametrize("rows, columns, keyword", [(10_000, 9_000, "too large"), (40, 500, "too small")])
def test_dicom_size_is_checked_before_decoding(rows, columns, keyword):
    assert keyword in refusal(dicom_bytes(RAMP_12BIT, bits_stored=12, Rows=rows, Columns=columns))


def test_multi_frame_radiograph_uses_the_first_frame():
    frames = np.stack([RAMP_12BIT, 4095 - RAMP_12BIT])
    radiograph = read_image(dicom_bytes(frames, bits_stored=12, Modality="DX"))
    np.testing.assert_allclose(radiograph.pixels, read_grey(dicom_bytes(RAMP_12BIT, bits_stored=12)), atol=1e-6)
    assert any("first" in hint for hint in radiograph.hints)


@pytest.mark.parametrize(
    "modality, keyword", [("CT", "ct"), ("MR", "mri"), ("US", "ultrasound"), ("PT", "pet"), ("NM", "nuclear")]
)
def test_non_radiograph_modalities_are_refused(modality, keyword):
    message = refusal(dicom_bytes(RAMP_12BIT, bits_stored=12, Modality=modality))
    assert keyword in message and "radiograph" in message


def test_multi_frame_ct_is_refused():
    assert "ct" in refusal(dicom_bytes(np.stack([RAMP_12BIT] * 3), bits_stored=12, Modality="CT"))


def test_multi_frame_file_of_unstated_modality_is_refused():
    assert "frames" in refusal(dicom_bytes(np.stack([RAMP_12BIT] * 3), bits_stored=12, Modality="OT"))


def test_colour_dicom_is_refused():
    assert "colour" in refusal(dicom_bytes(np.dstack([GREY] * 3), "RGB"))


def test_dicom_without_pixel_data_is_refused():
    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(RAMP_12BIT, bits_stored=12)))
    del dataset.PixelData
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    assert "no image" in refusal(buffer.getvalue())


@needs_shared_data
def test_real_jpeg_baseline_cr_is_a_plausible_radiograph():
    radiograph = read_image(DICOM_SAMPLE)
    assert radiograph.format == "DICOM" and radiograph.pixels.shape == (1024, 1024)
    assert radiograph.metadata["Modality"] == "CR"
    assert radiograph.metadata["TransferSyntax"].startswith("JPEG Baseline")
    assert 0.25 < radiograph.pixels.mean() < 0.75 and radiograph.pixels.std() > 0.1
    assert radiograph.hints == []


@needs_shared_data
@pytest.mark.filterwarnings("ignore:End of file reached")
def test_truncated_dicom_is_refused():
    compressed = DICOM_SAMPLE.read_bytes()
    uncompressed = dicom_bytes(RAMP_12BIT, bits_stored=12)
    for data in (compressed, uncompressed):
        assert "damaged" in refusal(data[: len(data) // 2])


# ---- the same radiograph in every encoding ----


@pytest.fixture(scope="module")
def fullres_jpeg():
    smallest = min(FULLRES.glob("*.jp*g"), key=lambda path: path.stat().st_size)
    return smallest.read_bytes()


@needs_shared_data
def test_fullres_jpeg_matches_its_png_conversion(fullres_jpeg):
    png = encode(Image.open(io.BytesIO(fullres_jpeg)).convert("L"), "PNG")
    assert np.abs(read_grey(fullres_jpeg) - read_grey(png)).mean() < 1 / 255


@needs_shared_data
def test_jpeg_to_16_bit_png_to_dicom_round_trip(fullres_jpeg):
    from_jpeg = read_grey(fullres_jpeg)
    values_16 = np.round(from_jpeg * 65535).astype(np.uint16)
    from_png = read_grey(encode(Image.fromarray(values_16), "PNG"))
    from_dicom = read_grey(dicom_bytes(values_16))
    windowed = read_grey(dicom_bytes(values_16, WindowCenter=32767.5, WindowWidth=65536))
    assert values_16.min() == 0 and values_16.max() == 65535  # so the min-max of the unwindowed DICOM is exact
    for pixels in (from_png, from_dicom, windowed):
        assert np.abs(pixels - from_jpeg).max() < 1e-4


# ---- unusable files ----


def test_missing_file_is_refused(tmp_path):
    assert "could not be opened" in refusal(tmp_path / "absent.dcm")


@pytest.mark.parametrize(
    "data, keyword",
    [
        (b"", "empty"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "pdf"),
        (b"Patient report\nThe lungs are clear.\n", "text"),
        (np.random.default_rng(0).bytes(5000), "not an image"),
    ],
)
def test_non_images_are_refused(data, keyword):
    assert keyword in refusal(data)


def test_zip_archive_is_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("image.png", encode(Image.fromarray(GREY), "PNG"))
    assert "zip" in refusal(buffer.getvalue())


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_truncated_images_are_refused(image_format):
    data = encode(Image.fromarray(GREY), image_format)
    assert "damaged" in refusal(data[: len(data) // 2])
    assert "damaged" in refusal(data[:20])


def test_tiny_image_is_refused_and_small_one_gets_a_hint():
    assert "too small" in refusal(encode(Image.fromarray(chest_like(10, 10)), "PNG"))
    radiograph = read_image(encode(Image.fromarray(chest_like(100, 120)), "PNG"))
    assert any("small" in hint for hint in radiograph.hints)


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (9_000, 9_000)])
def test_declared_huge_png_is_refused_before_decoding(width, height):
    assert "too large" in refusal(png_header_only(width, height))


def test_declared_huge_jpeg_is_refused_before_decoding():
    data = encode(Image.fromarray(GREY), "JPEG")
    start_of_frame = data.index(b"\xff\xc0")
    huge = data[: start_of_frame + 5] + struct.pack(">HH", 60_000, 60_000) + data[start_of_frame + 9 :]
    assert "too large" in refusal(huge)


@pytest.mark.parametrize(
    "image_format, options", [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {})]
)
def test_animations_and_stacks_are_refused(image_format, options):
    frames = [Image.fromarray(chest_like(seed=seed)) for seed in range(3)]
    data = encode(frames[0], image_format, save_all=True, append_images=frames[1:], **options)
    assert "frames" in refusal(data)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_blank_image_is_refused(image_format):
    assert "blank" in refusal(encode(Image.fromarray(np.full((HEIGHT, WIDTH), 77, np.uint8)), image_format))


def test_float_tiff_with_nan_is_refused():
    values = GREY.astype(np.float32)
    values[5, 5] = np.nan
    assert "invalid" in refusal(encode(Image.fromarray(values, "F"), "TIFF"))


@pytest.mark.parametrize("level, keyword", [(8, "dark"), (247, "bright")])
def test_unusual_intensities_get_a_hint(level, keyword):
    values = np.full((HEIGHT, WIDTH), level, np.uint8)
    values[::7, ::5] = level + 5
    hints = read_image(encode(Image.fromarray(values), "PNG")).hints
    assert any(keyword in hint for hint in hints) and any("contrast" in hint for hint in hints)


def test_typical_radiograph_has_no_hints():
    assert read_image(encode(Image.fromarray(chest_like(400, 360)), "PNG")).hints == []
