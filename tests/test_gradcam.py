"""Grad-CAM / Grad-CAM++: shapes, class-logit consistency, localisation on a model trained to find a square,
the model-randomisation sanity check (Adebayo et al. 2018), the compiled passes living on their Predictor, the
one-pass reading (``core.diagnosis``) and the full-resolution overlay (``core.overlay``)."""

import gc
import json
import weakref
from dataclasses import replace

import cv2
import numpy as np
import pytest

from core import CLASS_NAMES, diagnosis, gradcam, overlay
from core.card import ModelCard
from core.imaging import read_image
from core.inference import LOGITS_LAYER, Predictor
from core.operating_point import decide
from tests.conftest import FULLRES, publish_random_version

SQUARE_IMAGE = 32
SQUARE_SIDE = 6
SQUARE_TRAINING_IMAGES = 512
SQUARE_CARD = ModelCard(
    version="square",
    architecture="square test model",
    class_names=("empty", "square"),
    input_size=SQUARE_IMAGE,
    gradcam_layer="block2_conv1",
)


@pytest.fixture
def predictor(tiny_version):
    return Predictor(tiny_version)


def square_images(count, rng):
    """Noise images; every odd one has a bright square at a random place. Returns images, labels, boxes."""
    images = rng.uniform(0.0, 0.4, size=(count, SQUARE_IMAGE, SQUARE_IMAGE)).astype(np.float32)
    labels = np.arange(count) % 2
    boxes = rng.integers(0, SQUARE_IMAGE - SQUARE_SIDE, size=(count, 2))
    for image, label, (row, col) in zip(images, labels, boxes):
        if label:
            image[row : row + SQUARE_SIDE, col : col + SQUARE_SIDE] = 1.0
    return np.repeat(images[..., np.newaxis], 3, axis=-1), labels, boxes


def square_model(seed):
    """A flat two-conv classifier with a linear ``logits`` layer, as the project's architectures have."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SQUARE_IMAGE, SQUARE_IMAGE, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv1")(inputs)
    x = layers.MaxPooling2D(2, name="block1_pool")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="block2_conv1")(x)
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    logits = layers.Dense(2, name=LOGITS_LAYER)(x)
    return keras.Model(inputs, layers.Activation("softmax", name="probabilities")(logits))


@pytest.fixture(scope="module")
def square_detector():
    """A model trained (a few seconds) to say whether a bright square is present, and held-out test images."""
    import keras

    rng = np.random.default_rng(0)
    images, labels, _ = square_images(SQUARE_TRAINING_IMAGES, rng)
    model = square_model(seed=0)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images, labels, epochs=4, batch_size=32, verbose=0)
    test = square_images(64, rng)
    assert model.evaluate(test[0], test[1], verbose=0)[1] > 0.95
    return Predictor(model=model, card=SQUARE_CARD), test


def with_square(test):
    images, labels, boxes = test
    return images[labels == 1], boxes[labels == 1]


def upsampled(maps):
    return np.stack([cv2.resize(m, (SQUARE_IMAGE, SQUARE_IMAGE), interpolation=cv2.INTER_LINEAR) for m in maps])


def square_masks(boxes):
    masks = np.zeros((len(boxes), SQUARE_IMAGE, SQUARE_IMAGE), dtype=bool)
    for mask, (row, col) in zip(masks, boxes):
        mask[row : row + SQUARE_SIDE, col : col + SQUARE_SIDE] = True
    return masks


def test_shapes_for_a_batch_a_single_image_and_another_layer(predictor):
    batch = np.random.default_rng(0).random((3, 80, 80, 3), dtype=np.float32)
    explanation = gradcam.explain(predictor, batch)
    assert explanation.probabilities.shape == (3, 3) and explanation.targets.shape == (3,)
    for maps in explanation.maps.values():
        assert maps.shape == (3, 10, 10) and maps.min() >= 0.0 and maps.max() <= 1.0
    single = gradcam.explain(predictor, batch[0], layer="block1_conv1")
    assert single.probabilities.shape == (3,) and np.ndim(single.targets) == 0
    assert set(single.maps) == set(gradcam.METHODS)
    assert all(m.shape == (80, 80) for m in single.maps.values())


def test_probabilities_are_the_predictors_calibrated_ones(isolated_folders):
    version = publish_random_version(isolated_folders / "weights", name="hot", temperature=2.5)
    predictor = Predictor(version)
    batch = np.random.default_rng(1).random((4, 80, 80, 3), dtype=np.float32)
    explanation = gradcam.explain(predictor, batch)
    np.testing.assert_allclose(explanation.probabilities, predictor.probabilities(batch), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(explanation.targets, predictor.logits(batch).argmax(axis=1))


def reference_gradcam(predictor, image, class_index, layer):
    """Grad-CAM written out eagerly: gradient of logit ``class_index`` w.r.t. ``layer``'s output."""
    import keras
    import tensorflow as tf

    model = predictor.model
    probe = keras.Model(model.inputs, [model.get_layer(layer).output, model.get_layer(LOGITS_LAYER).output])
    with tf.GradientTape() as tape:
        features, logits = probe([image[np.newaxis]], training=False)
        score = logits[0, class_index]
    grads = tape.gradient(score, features)[0].numpy()
    cam = np.maximum((grads.mean(axis=(0, 1)) * features[0].numpy()).sum(axis=-1), 0.0)
    return cam / max(cam.max(), gradcam.EPSILON)


def test_the_map_for_class_k_uses_logit_k(predictor):
    image = np.random.default_rng(2).random((80, 80, 3), dtype=np.float32)
    for k in range(len(CLASS_NAMES)):
        explanation = gradcam.explain(predictor, image, targets=k, layer="block3_conv3")
        assert explanation.targets == k
        expected = reference_gradcam(predictor, image, k, "block3_conv3")
        np.testing.assert_allclose(explanation.maps[gradcam.GRADCAM], expected, atol=1e-4)


def test_per_image_targets_in_a_batch(predictor):
    batch = np.random.default_rng(3).random((3, 80, 80, 3), dtype=np.float32)
    together = gradcam.explain(predictor, batch, targets=[0, 1, 2])
    for k in range(3):
        alone = gradcam.explain(predictor, batch[k], targets=k)
        plus_plus = gradcam.GRADCAM_PLUS_PLUS
        np.testing.assert_allclose(together.maps[plus_plus][k], alone.maps[plus_plus], atol=1e-4)


def test_a_layer_without_a_feature_map_is_refused(predictor):
    with pytest.raises(ValueError, match="not a convolution layer"):
        gradcam.explain(predictor, np.zeros((80, 80, 3), np.float32), layer="dense1")


@pytest.mark.slow  # trains the square detector
@pytest.mark.parametrize("method", gradcam.METHODS)
def test_the_square_detectors_map_peaks_on_the_square(square_detector, method):
    detector, test = square_detector
    images, boxes = with_square(test)
    maps = upsampled(gradcam.explain(detector, images, targets=1).maps[method])
    masks = square_masks(boxes)
    peaks = [mask.flat[m.argmax()] for m, mask in zip(maps, masks)]
    assert np.mean(peaks) >= 0.9
    assert maps[masks].mean() > 3 * maps[~masks].mean()


@pytest.mark.slow
def test_the_map_changes_when_the_weights_are_randomised(square_detector):
    """Adebayo et al.'s model-parameter randomisation test: an explanation that survives randomising the
    weights explains the image, not the model."""
    detector, test = square_detector
    images, _ = with_square(test)
    trained = gradcam.explain(detector, images, targets=1).maps[gradcam.GRADCAM]
    randomised = gradcam.explain(Predictor(model=square_model(seed=7), card=SQUARE_CARD), images, targets=1)
    correlations = [correlation(a, b) for a, b in zip(trained, randomised.maps[gradcam.GRADCAM])]
    assert np.mean(correlations) < 0.5


def correlation(a, b) -> float:
    """Pearson correlation of two maps; 0 when one is flat (a flat map says nothing about the square)."""
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("positive", ["other", "abnormal", None])
def test_the_reading_explains_the_class_called_at_the_operating_point(tiny_version, positive):
    """The call made in the graph is ``decide``'s, for a class's and for the "abnormal" operating point, and the
    map is that class's Grad-CAM, as ``explain`` gives it."""
    predictor = Predictor(tiny_version)
    images = np.random.default_rng(4).random((4, 80, 80, 3), dtype=np.float32)
    top = gradcam.explain(predictor, images).targets
    point = None
    if positive == "other":
        point = {"positive_class": CLASS_NAMES[(int(top[0]) + 1) % 3], "threshold": 0.0}
    elif positive == "abnormal":
        point = {"positive_class": "abnormal", "threshold": 0.5}
    card = replace(predictor.card, operating_point=point)
    looks = diagnosis.look_batch(predictor, images, card)
    for look, image in zip(looks, images):
        assert look.decision == decide(look.probabilities, card.class_names, point)
        assert CLASS_NAMES[look.target] == look.decision.label
        expected = gradcam.explain(predictor, image, targets=look.target)
        np.testing.assert_allclose(look.maps[gradcam.GRADCAM], expected.maps[gradcam.GRADCAM], atol=1e-5)
        np.testing.assert_allclose(look.probabilities, expected.probabilities, atol=1e-6)
    if positive == "other":
        assert looks[0].decision.label == point["positive_class"]


def test_another_class_can_be_explained_and_the_flags_match_the_predictors(tiny_version):
    predictor = Predictor(tiny_version)
    image = np.random.default_rng(5).random((80, 80, 3), dtype=np.float32)
    reading = diagnosis.read(predictor, image)
    other = CLASS_NAMES[(reading.look.target + 1) % 3]
    (look,) = diagnosis.look_batch(predictor, image[np.newaxis], explained_class=other)
    assert look.target == CLASS_NAMES.index(other) and look.decision == reading.look.decision
    _, (expected,) = predictor.assess(image[np.newaxis])
    assert reading.assessment.flags == expected.flags


def test_compiled_passes_die_with_their_model(tiny_version):
    """The explainers are kept on the Predictor, not in a module-level cache that would keep an evicted model
    (and its weights) alive."""
    predictor = Predictor(tiny_version)
    gradcam.explain(predictor, np.zeros((80, 80, 3), np.float32))
    diagnosis.look_batch(predictor, np.zeros((1, 80, 80, 3), np.float32))
    assert set(predictor.explainers) == {predictor.card.gradcam_layer, (diagnosis.READING_PASS, "block4_conv3")}
    model = weakref.ref(predictor.model)
    del predictor
    gc.collect()
    assert model() is None


def test_overlay_is_drawn_only_where_the_map_is_high():
    grey = np.full((30, 50), 0.5, np.float32)
    cam = np.linspace(0.0, 1.0, 25, dtype=np.float32).reshape(5, 5)  # 1 at the bottom right
    rgb = overlay.overlay(grey, cam, colormap="jet", opacity=0.5, percentile=90)
    assert rgb.shape == (30, 50, 3) and rgb.dtype == np.uint8
    hot = rgb[-1, -1]
    assert hot[0] > hot[2]  # jet: red where the map is 1
    np.testing.assert_array_equal(rgb[0, 0], [128, 128, 128])  # below the cut: the film untouched
    assert (rgb != 128).any(axis=-1).mean() < 0.2
    np.testing.assert_array_equal(overlay.overlay(grey, cam, opacity=0.0), np.full((30, 50, 3), 128, np.uint8))
    everywhere = overlay.overlay(grey, cam, colormap="jet", opacity=0.5, percentile=0)
    assert everywhere[0, 0, 2] > everywhere[0, 0, 0]  # percentile 0: the whole film tinted (jet blue at 0)


def test_overlay_png_of_a_real_radiograph_keeps_its_size_and_has_a_colour_scale(predictor):
    grey = read_image(sorted(FULLRES.glob("*.jp*g"))[0]).pixels
    explanation = gradcam.explain(predictor, predictor.preprocess(grey))
    cam = explanation.maps[gradcam.GRADCAM]
    png = overlay.overlay_png(grey, cam, colormap="inferno", opacity=0.3)
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    height, width = grey.shape
    assert decoded.shape[1] == width and decoded.shape[0] > height
    np.testing.assert_array_equal(decoded[:height], overlay.overlay(grey, cam, "inferno", 0.3))
    scale = decoded[height + 1]  # the band's top row, above its labels
    np.testing.assert_array_equal(scale[-1], overlay.RGB_COLORMAPS["inferno"][255, 0])
    np.testing.assert_array_equal(scale[0], [128, 128, 128])  # below the cut: grey (not drawn)
    assert (decoded[height:] == 255).all(axis=-1).any()  # white label text


def test_the_display_copy_is_eight_bit_and_at_most_the_display_width():
    grey = read_image(FULLRES / "COVID19__covid-19-pneumonia-15-PA.jpg").pixels
    display = overlay.display_copy(grey)
    assert display.dtype == np.uint8 and display.shape[1] <= overlay.MAX_DISPLAY_WIDTH
    factor = grey.shape[1] // display.shape[1]
    expected = cv2.resize(
        grey[: display.shape[0] * factor, : display.shape[1] * factor],
        display.shape[::-1],
        interpolation=cv2.INTER_AREA,
    )
    np.testing.assert_allclose(display, expected * 255, atol=1)


def test_window_level_maps_the_window_to_the_full_grey_range():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    shown = overlay.windowed(levels, level=100, width=50)
    assert shown[levels <= 75].max() == 0 and shown[levels >= 125].min() == 255
    assert shown[levels == 100][0] in (127, 128)
    lung_level, lung_width = overlay.window_for(levels, "lung")
    mediastinum_level, _ = overlay.window_for(levels, "mediastinum")
    assert lung_level < mediastinum_level and lung_width < 256


def test_cli_cam_dir_writes_overlays_and_keeps_the_json(tiny_version, tmp_path, capsys):
    from core.__main__ import main

    cxr = sorted(FULLRES.glob("PNEUMONIA*"))[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert main(["predict", "--json", str(cxr), str(broken)]) == 1
    plain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["predict", "--json", "--cam-dir", str(tmp_path / "cams"), str(cxr), str(broken)]) == 1
    with_cams = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r.keys() for r in with_cams] == [r.keys() for r in plain] and with_cams[1] == plain[1]
    assert with_cams[0]["prediction"] == plain[0]["prediction"]
    assert with_cams[0]["probabilities"] == pytest.approx(plain[0]["probabilities"], abs=1e-5)
    written = sorted(p.name for p in (tmp_path / "cams").iterdir())
    assert written == [f"{cxr.stem}_gradcam.png"]
    drawn = cv2.imread(str(tmp_path / "cams" / written[0]))
    height, width = read_image(cxr).pixels.shape
    assert drawn.shape[1] == width and drawn.shape[0] > height  # the colour scale under the image


def test_a_reader_is_offered_the_last_layer_of_each_block_and_the_default():
    layers = ["block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2", "block3_conv1", "block3_conv2"]
    assert gradcam.reader_layers(layers, "block3_conv1") == [
        "block1_conv2",
        "block2_conv2",
        "block3_conv1",
        "block3_conv2",
    ]
    assert gradcam.reader_layers(["conv"], "conv") == ["conv"]
    assert gradcam.reader_layers([], "x") == ["x"]
