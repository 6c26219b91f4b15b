"""train.trainer.cache and train.trainer.pipeline: decode once, augment per image, evaluate exactly as
core.preprocess."""

import numpy as np
import pytest
from PIL import Image

from core.imaging import read_grey
from core.preprocess import to_model_input
from train.trainer import cache
from train.trainer.pipeline import NO_AUGMENTATION, Augmentation, augment_batch, evaluation_dataset, training_dataset


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for index in range(6):
        path = tmp_path / f"img{index}.png"
        Image.fromarray(rng.integers(0, 256, (120 + index, 100), dtype=np.uint8)).save(path)
        paths.append(path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return paths + [broken]


def test_cache_decodes_once_and_reports_unreadable(image_files, monkeypatch, caplog):
    arrays, readable, errors = cache.load_resized(image_files, (96, 80))
    assert readable.tolist() == [True] * 6 + [False]
    assert list(errors) == [str(image_files[-1])]
    assert "broken.png" in caplog.text
    expected = np.round(to_model_input(read_grey(image_files[0]), 80)[..., 0] * 255)
    np.testing.assert_array_equal(arrays[80][0], expected.astype(np.uint8))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite a cache hit")

    monkeypatch.setattr(cache, "decode_resized", no_decoding)
    again, _, _ = cache.load_resized(image_files, (96, 80))
    np.testing.assert_array_equal(again[96], arrays[96])


def test_cache_key_changes_with_files_and_sizes(image_files):
    key = cache.cache_key(image_files, (96, 80))
    assert key != cache.cache_key(image_files, (96, 64))
    assert key != cache.cache_key(image_files[:-1], (96, 80))


def test_augmentation_shapes_range_and_no_vertical_flip():
    gradient = np.tile(np.linspace(0, 1, 96, dtype=np.float32)[:, None], (1, 96))  # dark top, bright bottom
    batch = np.repeat(gradient[None, ..., None], 64, axis=0)
    out = augment_batch(batch, 80, Augmentation(crop_scale_min=0.75, crop_scale_max=1.0), seed=1).numpy()
    assert out.shape == (64, 80, 80, 1)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (out[:, :10].mean(axis=(1, 2, 3)) < out[:, -10:].mean(axis=(1, 2, 3))).all()


def test_horizontal_flips_happen():
    ramp = np.tile(np.linspace(0, 1, 96, dtype=np.float32)[None, :], (96, 1))
    batch = np.repeat(ramp[None, ..., None], 200, axis=0)
    out = augment_batch(batch, 80, Augmentation(brightness=0, contrast=0), seed=2).numpy()
    flipped = out[:, :, :10].mean(axis=(1, 2, 3)) > out[:, :, -10:].mean(axis=(1, 2, 3))
    assert 0.3 < flipped.mean() < 0.7


def test_without_augmentation_the_crop_is_the_whole_image():
    image = np.random.default_rng(0).random((1, 80, 80, 1)).astype(np.float32)
    out = augment_batch(image, 80, NO_AUGMENTATION).numpy()
    np.testing.assert_allclose(out, image, atol=1e-5)


def test_datasets_yield_model_inputs():
    images = np.random.default_rng(0).integers(0, 256, (10, 96, 96), dtype=np.uint8)
    onehot = np.eye(3, dtype=np.float32)[np.arange(10) % 3]
    x, y, w = next(iter(training_dataset(images, onehot, np.ones(10), 80, 4, Augmentation())))
    assert x.shape == (4, 80, 80, 3) and y.shape == (4, 3) and w.shape == (4,)
    x = next(iter(evaluation_dataset(images[:, :80, :80], batch_size=5)))
    np.testing.assert_allclose(x.numpy()[..., 0], images[:5, :80, :80] / 255.0, atol=1e-6)


def test_extra_augmentations_keep_shape_and_range():
    rng = np.random.default_rng(4)
    batch = rng.random((16, 96, 96, 1), dtype=np.float32)
    strong = Augmentation(rotation=15, gamma=0.5, blur=1.5, noise=0.05, crop_scale_min=0.75, crop_scale_max=1.0)
    out = augment_batch(batch, 80, strong, seed=3).numpy()
    assert out.shape == (16, 80, 80, 1) and out.min() >= 0.0 and out.max() <= 1.0


def test_rotation_turns_and_blur_smooths():
    from train.trainer.pipeline import gaussian_blur, rotate

    bar = np.zeros((1, 41, 41, 1), np.float32)
    bar[0, :, 20] = 1.0  # a vertical line
    turned = rotate(bar, np.array([np.pi / 2], np.float32)).numpy()[0, ..., 0]
    assert turned[20].sum() > 30 and turned[:, 20].sum() < 5  # now horizontal
    noise = np.random.default_rng(0).random((2, 40, 40, 1), dtype=np.float32)
    blurred = gaussian_blur(noise, np.array([0.0, 1.5], np.float32)).numpy()
    np.testing.assert_allclose(blurred[0], noise[0], atol=1e-5)  # sigma 0 leaves the image as it was
    assert blurred[1].std() < noise[1].std() / 2


def test_mixup_mixes_images_labels_and_weights_alike():
    from train.trainer.pipeline import mixup

    images = np.stack([np.zeros((8, 8, 1)), np.ones((8, 8, 1))]).astype(np.float32)
    onehot = np.eye(3, dtype=np.float32)[[0, 2]]
    mixed, labels, weights = (t.numpy() for t in mixup(images, onehot, np.array([1.0, 3.0], np.float32), 0.4))
    lam = 1 - mixed[0].mean()  # image 0 is λ·0 + (1 − λ)·1
    np.testing.assert_allclose(labels[0], [lam, 0, 1 - lam], atol=1e-5)
    np.testing.assert_allclose(weights[0], lam * 1 + (1 - lam) * 3, atol=1e-5)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)


def test_class_source_draws_balance_classes_then_sources():
    from train.trainer.pipeline import balanced_draw_weights

    labels = np.array([0] * 90 + [0] * 10 + [1] * 500 + [2] * 50 + [2] * 5)
    sources = np.array(["a"] * 90 + ["b"] * 10 + ["a"] * 500 + ["c"] * 50 + ["d"] * 5)
    groups, probabilities = balanced_draw_weights(labels, sources)
    share = dict(zip(groups, probabilities))
    assert share[(0, "a")] == pytest.approx(1 / 6, abs=1e-9) and share[(0, "b")] == pytest.approx(1 / 6, abs=1e-9)
    assert share[(1, "a")] == pytest.approx(1 / 3, abs=1e-9)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-9)
    onehot = np.eye(3, dtype=np.float32)[labels]
    images = np.zeros((len(labels), 96, 96), np.uint8)
    data = training_dataset(images, onehot, np.ones(len(labels)), 80, 64, NO_AUGMENTATION, sources=sources)
    drawn = np.concatenate([y.numpy().argmax(axis=1) for _, y, _ in data.take(30)])
    assert np.abs(np.bincount(drawn, minlength=3) / len(drawn) - 1 / 3).max() < 0.06


def test_cache_key_changes_with_the_preprocessing(image_files):
    from core.preprocess import Preprocessing

    assert cache.cache_key(image_files, (96, 80)) != cache.cache_key(image_files, (96, 80), Preprocessing("clahe"))
