"""train.trainer.architectures: the published models' sizes and layer names, flat graphs that Grad-CAM can reach, the
ImageNet-weights path, and the trainer's wiring (cache size, --arch help). Each model is built once and only the
small ones take a training step: this file must stay cheap on a shared 2-core CPU."""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.legacy.saving import legacy_h5_format

from train.trainer.architectures import (
    ARCHITECTURES,
    BACKBONES,
    IMAGENET_WEIGHTS_ENV,
    RANDOM_INITIALISATION,
    build_model,
    conv_layer_names,
    deep_covid,
    initialisation,
    xception_resnet50v2,
)
from train.trainer.config import TrainConfig, argument_parser
from train.trainer.run import cache_size

CHEAP = ("dcnn80-compact", "lxn")
LXN_PAPER_PARAMETERS = 9_561_889
SMALL_INPUT = 64  # enough for ResNet50, and cheap
KERAS_PREPROCESSING = {  # each backbone's own preprocess_input, which takes 0–255 RGB
    "resnet50": keras.applications.resnet50.preprocess_input,
    "resnet50v2": keras.applications.resnet_v2.preprocess_input,
    "densenet121": keras.applications.densenet.preprocess_input,
    "xception": keras.applications.xception.preprocess_input,
}


@pytest.fixture(autouse=True)
def no_imagenet_weights(monkeypatch):
    """Tests see the machine as it is here: no ImageNet weights unless a test provides them."""
    monkeypatch.delenv(IMAGENET_WEIGHTS_ENV, raising=False)


@pytest.mark.slow  # 63 M parameters
def test_dcnn80_has_the_published_parameter_count():
    model = build_model("dcnn80")
    assert model.count_params() == 63_148_835
    assert model.input_shape == (None, 80, 80, 3)
    assert model.output_shape == (None, 3)


@pytest.mark.slow
def test_compact_shares_the_trunk_and_fits_the_size_budget():
    full, compact = build_model("dcnn80"), build_model("dcnn80-compact")
    assert conv_layer_names(full) == conv_layer_names(compact)
    for name in conv_layer_names(full):
        assert full.get_layer(name).count_params() == compact.get_layer(name).count_params()
    assert compact.count_params() * 4 < 40e6


def test_lxn_binary_variant_has_the_papers_parameter_count():
    model = build_model("lxn", num_classes=1)
    assert model.count_params() == LXN_PAPER_PARAMETERS
    assert model.input_shape == (None, 200, 200, 3)
    assert model.output_shape == (None, 1)
    assert model.get_layer("probabilities").activation.__name__ == "sigmoid"


@pytest.mark.parametrize(
    "arch", [arch if arch in CHEAP else pytest.param(arch, marks=pytest.mark.slow) for arch in sorted(ARCHITECTURES)]
)
def test_every_architecture_is_flat_named_and_explainable(arch):
    spec = ARCHITECTURES[arch]
    model = build_model(arch)
    size = spec["input_size"]
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, 3)
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    assert spec["gradcam_layer"] in conv_layer_names(model)
    assert model.get_layer("logits").activation.__name__ == "linear"
    assert model.layers[-1].name == "probabilities"
    assert model.layers[-1].activation.__name__ == "softmax" and model.layers[-1].dtype == "float32"
    assert all("moving" in weight.name for weight in model.non_trainable_weights), "random: nothing frozen"

    gradient_model = keras.Model(
        model.inputs, [model.get_layer(spec["gradcam_layer"]).output, model.get_layer("logits").output]
    )
    image = tf.random.uniform((1, size, size, 3), seed=0)
    with tf.GradientTape() as tape:
        features, logits = gradient_model(image, training=False)
        score = logits[:, 0]
    grads = tape.gradient(score, features)
    assert grads.shape == features.shape
    assert np.isfinite(grads.numpy()).all() and np.any(grads.numpy() != 0)


@pytest.mark.parametrize("arch", CHEAP)
def test_one_training_step(arch):
    model = build_model(arch)
    size = ARCHITECTURES[arch]["input_size"]
    model.compile(optimizer="adam", loss="categorical_crossentropy", run_eagerly=True)  # no tracing: cheaper
    images = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
    loss = model.train_on_batch(images, np.eye(3, dtype=np.float32)[[0, 2]])
    assert np.isfinite(loss)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_input_scaling_layer_matches_the_backbones_own_preprocessing(backbone):
    grey = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    image = np.repeat(grey, 3, axis=-1)  # what core.preprocess gives every model
    spec = BACKBONES[backbone]
    scaled = keras.layers.Rescaling(spec.scale, spec.offset)(image)
    expected = KERAS_PREPROCESSING[backbone](image * 255.0)
    np.testing.assert_allclose(np.asarray(scaled), np.asarray(expected), rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_concatenated_backbones_are_resized_to_a_common_map():
    """At 97 px Xception's last map is 3×3 and ResNet50V2's 4×4: the latter is resized before concatenation."""
    model = xception_resnet50v2(input_size=97)
    assert model.get_layer("resnet50v2_resized").output.shape[1:3] == (3, 3)
    assert model.get_layer("concat_conv").output.shape == (None, 3, 3, 1024)


@pytest.mark.slow
def test_imagenet_weights_from_a_local_folder_are_loaded_and_freeze_the_backbone(tmp_path):
    stand_in = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(SMALL_INPUT, SMALL_INPUT, 3))
    with h5py.File(tmp_path / BACKBONES["resnet50"].weights_file, "w") as stream:
        legacy_h5_format.save_weights_to_hdf5_group(stream, stand_in)
    model = deep_covid("resnet50", input_size=SMALL_INPUT, weights_dir=tmp_path)
    layer = ARCHITECTURES["deep-covid-resnet50"]["gradcam_layer"]
    np.testing.assert_array_equal(model.get_layer(layer).kernel.numpy(), stand_in.get_layer(layer).kernel.numpy())
    assert [weight.name for weight in model.trainable_weights] == ["kernel", "bias"]  # the last layer only
    assert model.get_layer("logits").trainable
    assert "ImageNet weights from" in initialisation("deep-covid-resnet50", weights_dir=tmp_path)


def test_initialisation_says_which_weights_were_used(tmp_path):
    assert initialisation("dcnn80") == RANDOM_INITIALISATION
    assert initialisation("fusion", weights_dir=tmp_path).count("random (no ImageNet weights)") == 3
    assert "nothing is frozen" in initialisation("deep-covid-densenet121")


@pytest.mark.parametrize(
    ("arch", "expected"), [("dcnn80", 96), ("dcnn80-compact", 96), ("lxn", 240), ("deep-covid-resnet50", 269)]
)
def test_cache_size_follows_the_architecture(arch, expected):
    assert cache_size(TrainConfig(arch=arch), ARCHITECTURES[arch]["input_size"]) == expected
    assert cache_size(TrainConfig(arch=arch, cache_size=300), ARCHITECTURES[arch]["input_size"]) == 300


def test_arch_help_lists_every_architecture_with_its_reference():
    text = "".join(argument_parser().format_help().split())  # ignore where argparse wraps the lines
    for name, spec in ARCHITECTURES.items():
        assert "".join(f"{name}: {spec['reference']}".split()) in text
