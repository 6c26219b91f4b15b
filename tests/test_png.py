"""core.png: the stored-block PNG writer decodes, exactly, in every reader we ship."""

import io
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from core import png


def scanlines_of(rgb: np.ndarray) -> np.ndarray:
    height, width, _ = rgb.shape
    scanlines = np.zeros((height, 1 + 3 * width), np.uint8)
    scanlines[:, 1:] = rgb.reshape(height, -1)
    return scanlines


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (200, 150), (64, 30000)])
def test_rgb_png_round_trips_exactly_through_pillow_and_opencv(shape):
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    data = png.rgb_png(scanlines_of(rgb))
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # verifies every chunk's CRC-32 and the zlib stream's Adler-32
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), rgb)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1], rgb)


def test_rgb_png_stores_blocks_of_at_most_64_kib_and_a_valid_zlib_stream():
    rgb = np.random.default_rng(0).integers(0, 256, (300, 100, 3), dtype=np.uint8)  # 90,300 scanline bytes
    data = png.rgb_png(scanlines_of(rgb))
    chunks, position = [], len(png.PNG_SIGNATURE)
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        assert int.from_bytes(data[position + 8 + length : position + 12 + length], "big") == zlib.crc32(kind + body)
        chunks.append((kind, body))
        position += 12 + length
    assert [kind for kind, _ in chunks] == [b"IHDR"] + [b"IDAT"] * 4 + [b"IEND"]
    stream = b"".join(body for kind, body in chunks if kind == b"IDAT")
    assert zlib.decompress(stream) == scanlines_of(rgb).tobytes()
    assert max(len(body) for kind, body in chunks if kind == b"IDAT") == 5 + png.STORED_BLOCK_MAX


@pytest.mark.parametrize("low", [0.0, 0.02, 0.5, 0.97, 1.0])
def test_the_colour_scale_labels_never_overprint(low, monkeypatch):

    from core import overlay

    written = []
    real = cv2.putText

    def recording(image, text, origin, font, scale, colour, weight, *rest):
        if colour == (255, 255, 255):
            (width, _), _ = cv2.getTextSize(text, font, scale, weight)
            written.append((origin[0], origin[0] + width, text))
        return real(image, text, origin, font, scale, colour, weight, *rest)

    monkeypatch.setattr(overlay.cv2, "putText", recording)
    band = np.zeros((30, 300, 3), np.uint8)
    overlay.label_scale(band, [(0.0, "map 0"), (low, f"drawn from {low:.2f}"), (1.0, "1")])
    texts = [text for _, _, text in written]
    assert texts[0] == "map 0" and texts[-1] == "1"  # the ends always
    assert all(end <= start for (_, end, _), (start, _, _) in zip(written, written[1:]))
    assert all(0 <= start and end <= 300 for start, end, _ in written)
