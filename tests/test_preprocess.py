"""core.preprocess: the one resize, fast for large radiographs and equal to OpenCV's area interpolation."""

import cv2
import numpy as np
import pytest

from core.preprocess import resize_grey, to_model_input
from tests.conftest import small_card


@pytest.mark.parametrize(
    "shape", [(3368, 2800), (2000, 2000), (1791, 2276), (928, 1478), (400, 401), (299, 299), (80, 500), (64, 90)]
)
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


def test_preprocessing_settings_default_to_none_and_are_validated():
    from core.preprocess import Preprocessing

    assert Preprocessing.from_card(small_card(preprocessing={"colour": "greyscale"})) == Preprocessing()
    assert Preprocessing.from_card(small_card()) == Preprocessing()
    clahe = small_card(preprocessing=Preprocessing("clahe", 0.05).describe())
    assert Preprocessing.from_card(clahe) == Preprocessing("clahe", 0.05)
    with pytest.raises(ValueError, match="intensity"):
        Preprocessing("sharpen")
    with pytest.raises(ValueError, match="Border crop"):
        Preprocessing(border_crop=0.4)


def test_no_normalisation_is_exactly_the_plain_resize():
    from core.preprocess import prepare_grey

    grey = np.random.default_rng(3).random((300, 240), dtype=np.float32)
    np.testing.assert_array_equal(prepare_grey(grey, 80), resize_grey(grey, 80))


@pytest.mark.parametrize("method, reduction", [("clahe", 2), ("equalize", 5)])
def test_intensity_normalisation_removes_an_exposure_difference(method, reduction):
    """The same film exposed differently (gamma 0.6 and 1.6) comes much closer once equalised — the global
    histogram equalisation almost entirely (it is invariant to any monotone remapping up to 8-bit rounding),
    CLAHE, local and clipped, by half — while the plain path keeps the difference: the shortcut a source's
    exposure look offers."""
    from core.preprocess import Preprocessing, prepare_grey

    rng = np.random.default_rng(0)
    film = cv2.GaussianBlur(rng.random((400, 360), dtype=np.float32), (0, 0), 8)
    film = (film - film.min()) / (film.max() - film.min())
    dark, bright = film**1.6, film**0.6
    plain = np.abs(prepare_grey(dark, 80) - prepare_grey(bright, 80)).mean()
    settings = Preprocessing(method)
    equalised = np.abs(prepare_grey(dark, 80, settings) - prepare_grey(bright, 80, settings)).mean()
    assert equalised < plain / reduction


def test_border_crop_cuts_each_side():
    from core.preprocess import crop_border

    grey = np.zeros((200, 100), np.float32)
    assert crop_border(grey, 0.1).shape == (160, 80)
    assert crop_border(grey, 0.0) is grey
