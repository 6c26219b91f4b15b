"""core.preprocess: the one resize, fast for large radiographs and equal to OpenCV's area interpolation."""

import cv2
import numpy as np
import pytest

from core.preprocess import resize_grey, to_model_input


@pytest.mark.parametrize("shape", [(3368, 2800), (2000, 2000), (1791, 2276), (928, 1478), (400, 401), (299, 299),
                                   (80, 500), (64, 90)])
@pytest.mark.parametrize("size", [80, 224])
def test_resize_equals_one_pass_area_interpolation(shape, size):
    grey = np.random.default_rng(shape[0]).random(shape, dtype=np.float32)
    expected = np.clip(cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA), 0.0, 1.0)
    np.testing.assert_allclose(resize_grey(grey, size), expected, atol=2e-6)


def test_model_input_is_square_float_three_channel():
    image = to_model_input(np.linspace(0, 1, 300 * 200, dtype=np.float32).reshape(300, 200), 80)
    assert image.shape == (80, 80, 3) and image.dtype == np.float32
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_resize_refuses_colour():
    with pytest.raises(ValueError, match="2-D"):
        resize_grey(np.zeros((100, 100, 3), np.float32), 80)
