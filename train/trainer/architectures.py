"""Model builders. Every model is built flat (no nested base model, so Grad-CAM can reach any conv layer),
ends in a linear Dense named ``logits`` followed by a float32 ``probabilities`` activation, and names its layers.

keras.applications backbones are built on the model's own tensors (``input_tensor=``), so their layers join the
outer graph; each backbone gets its input scaling as a layer, so ``core.preprocess`` ([0, 1] grey repeated to
three channels) stays the one preprocessing path. ImageNet weights are never downloaded: they are read from
``$CXR_IMAGENET_WEIGHTS_DIR`` (or a ``weights_dir`` argument) under the standard keras file names, and the
model card says which initialisation was used (``initialisation``).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import keras
from keras import layers

from core import settings
from core.settings import IMAGENET_WEIGHTS_ENV

__all__ = [
    "Backbone",
    "dcnn80",
    "dcnn80_compact",
    "lxn",
    "imagenet_weights",
    "deep_covid",
    "xception_resnet50v2",
    "fusion",
    "build_model",
    "initialisation",
    "conv_layer_names",
]

log = logging.getLogger(__name__)

RANDOM_INITIALISATION = "random (Glorot uniform); no pretrained weights"

# (filters, convolutions) of the four VGG-style blocks of Zhong 2020.
DCNN80_BLOCKS = ((32, 2), (64, 2), (128, 3), (128, 3))
PAPER_HEAD = ((4096, 0.5), (2048, 0.4))
COMPACT_HEAD = ((256, 0.5), (128, 0.4))

# Umer et al.'s LxN: filters of the four blocks of two 3×3 valid convs, then the dense layer's units.
LXN_FILTERS = (32, 64, 128, 256)
LXN_DENSE = 512

# Rahimzadeh & Attar: the 1×1 conv over the concatenated maps and the dropout before the classifier
# (their published code).
CONCAT_CONV_FILTERS = 1024
CONCAT_DROPOUT = 0.5

# Ji et al.: the backbones whose pooled features are fused (configurable in ``fusion``) and the head's dropout.
FUSION_BACKBONES = ("resnet50", "densenet121", "xception")
FUSION_DROPOUT = 0.5

# ImageNet channel statistics of the "caffe" (BGR means, 0–255) and "torch" (RGB mean/std, 0–1) scalings.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    """A keras.applications network and the affine map ``x * scale + offset`` (per channel) taking our [0, 1]
    input to the scaling it was trained with."""

    application: Callable
    scale: float | tuple
    offset: float | tuple
    weights_file: str  # the standard keras no-top ImageNet weights file name


# "tf" scaling ([-1, 1]) for Xception and ResNet50V2; "torch" for DenseNet; "caffe" for ResNet50, whose RGB→BGR
# swap changes nothing here (the three channels are one grey value) beyond listing the means in BGR order.
BACKBONES = {
    "resnet50": Backbone(
        keras.applications.ResNet50,
        255.0,
        tuple(-m for m in CAFFE_BGR_MEAN),
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "resnet50v2": Backbone(
        keras.applications.ResNet50V2, 2.0, -1.0, "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "densenet121": Backbone(
        keras.applications.DenseNet121,
        tuple(1 / s for s in TORCH_STD),
        tuple(-m / s for m, s in zip(TORCH_MEAN, TORCH_STD)),
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "xception": Backbone(
        keras.applications.Xception, 2.0, -1.0, "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
}


def _image_input(input_size):
    return keras.Input((input_size, input_size, 3), name="image")


def _classifier(features, num_classes):
    """The shared ending: a linear Dense ``logits``, then ``probabilities`` in float32 — a softmax over the
    classes, or a sigmoid for a single (binary) logit."""
    logits = layers.Dense(num_classes, name="logits")(features)
    activation = "sigmoid" if num_classes == 1 else "softmax"
    return layers.Activation(activation, dtype="float32", name="probabilities")(logits)


def dcnn80(input_size=80, num_classes=3, head=PAPER_HEAD, name="dcnn80"):
    """Zhong 2020's DCNN: four conv blocks (ELU, 3×3 same, 2×2 max-pool); global max pools of the four pooled
    maps concatenated with the flattened last conv block; a dense head (units, dropout) per layer."""
    inputs = _image_input(input_size)
    x = inputs
    pooled = []
    for block, (filters, convolutions) in enumerate(DCNN80_BLOCKS, start=1):
        for conv in range(1, convolutions + 1):
            x = layers.Conv2D(filters, 3, padding="same", activation="elu", name=f"block{block}_conv{conv}")(x)
        last_conv = x
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        pooled.append(layers.GlobalMaxPooling2D(name=f"block{block}_global_max")(x))
    features = layers.Concatenate(name="pooled_features")(pooled)
    x = layers.Concatenate(name="features")([features, layers.Flatten(name="last_conv_flat")(last_conv)])
    for index, (units, rate) in enumerate(head, start=1):
        x = layers.Dense(units, activation="elu", name=f"dense{index}")(x)
        x = layers.Dropout(rate, name=f"dropout{index}")(x)
    return keras.Model(inputs, _classifier(x, num_classes), name=name)


def dcnn80_compact(input_size=80, num_classes=3):
    """The same convolutional trunk and features with a 256 → 128 dense head (~4.3 M parameters, ~17 MB)."""
    return dcnn80(input_size, num_classes, head=COMPACT_HEAD, name="dcnn80_compact")


def lxn(input_size=200, num_classes=3):
    """Umer et al.'s LxN: four blocks of two 3×3 valid ReLU convs and a 2×2 max-pool, Flatten, Dense 512 (ReLU).
    ``num_classes=1`` gives the paper's binary COVID-vs-not model (one logit, sigmoid; 9,561,889 parameters)."""
    inputs = _image_input(input_size)
    x = inputs
    for block, filters in enumerate(LXN_FILTERS, start=1):
        for conv in (1, 2):
            x = layers.Conv2D(filters, 3, padding="valid", activation="relu", name=f"block{block}_conv{conv}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(LXN_DENSE, activation="relu", name="dense")(x)
    return keras.Model(inputs, _classifier(x, num_classes), name="lxn")


def imagenet_weights(backbone: str, weights_dir=None):
    """Path of ``backbone``'s standard no-top ImageNet weights file in ``weights_dir`` (default:
    ``core.settings.imagenet_weights_dir()``), or None when no folder is given or the file is not in it."""
    folder = weights_dir or settings.imagenet_weights_dir()
    if not folder:
        return None
    path = Path(folder) / BACKBONES[backbone].weights_file
    if not path.is_file():
        log.warning(
            "No ImageNet weights for %s in %s (expected %s): random initialisation.", backbone, folder, path.name
        )
        return None
    return str(path)


def _join_backbone(backbone: str, inputs, weights_dir=None, pooling=None, prefix="", freeze_pretrained=False):
    """Features of keras.applications ``backbone`` built on ``inputs`` behind its input scaling, so its layers join
    the caller's graph. ``prefix`` is put before its layer names (for backbones whose names collide); ImageNet
    weights are loaded when found, and then the backbone is frozen if ``freeze_pretrained``."""
    spec = BACKBONES[backbone]
    weights = imagenet_weights(backbone, weights_dir)
    scaling = layers.Rescaling(spec.scale, spec.offset, name=f"{backbone}_input_scaling")
    model = spec.application(include_top=False, weights=weights, input_tensor=scaling(inputs), pooling=pooling)
    frozen = weights is not None and freeze_pretrained
    for layer in model.layers:
        if layer is not scaling and not isinstance(layer, layers.InputLayer):
            layer.name = prefix + layer.name
            layer.trainable = not frozen
    return model.output


def deep_covid(backbone: str, input_size=224, num_classes=3, weights_dir=None):
    """Minaee et al.'s Deep-COVID: an ImageNet backbone, globally average-pooled, and a new last layer. With
    ImageNet weights the backbone is frozen (the paper fine-tunes the last layer only); without them nothing is
    frozen, since training only the last layer of a random backbone would be meaningless."""
    inputs = _image_input(input_size)
    features = _join_backbone(backbone, inputs, weights_dir, pooling="avg", freeze_pretrained=True)
    return keras.Model(inputs, _classifier(features, num_classes), name=f"deep_covid_{backbone}")


def xception_resnet50v2(input_size=224, num_classes=3, weights_dir=None):
    """Rahimzadeh & Attar: Xception and ResNet50V2 on the same input, their last feature maps concatenated
    (ResNet50V2's resized to Xception's where the sizes differ), a 1×1 conv (1,024, linear), global average
    pooling, dropout 0.5 and the classifier. Every layer is trained, as in the paper. Their layer names do not
    collide, so the backbones keep the standard keras names."""
    inputs = _image_input(input_size)
    xception = _join_backbone("xception", inputs, weights_dir)
    resnet = _join_backbone("resnet50v2", inputs, weights_dir)
    if resnet.shape[1:3] != xception.shape[1:3]:
        resnet = layers.Resizing(*xception.shape[1:3], name="resnet50v2_resized")(resnet)
    x = layers.Concatenate(name="concatenated_features")([xception, resnet])
    x = layers.Conv2D(CONCAT_CONV_FILTERS, 1, name="concat_conv")(x)
    x = layers.GlobalAveragePooling2D(name="global_average")(x)
    x = layers.Dropout(CONCAT_DROPOUT, name="dropout")(x)
    return keras.Model(inputs, _classifier(x, num_classes), name="xception_resnet50v2")


def fusion(input_size=224, num_classes=3, backbones=FUSION_BACKBONES, weights_dir=None):
    """Ji et al.'s feature fusion: the global-average-pooled features of several backbones concatenated, dropout
    and the classifier. Each backbone's layer names carry its name as a prefix (ResNet50 and DenseNet121 share
    names such as ``conv1_conv``); backbones with ImageNet weights are frozen (fused fixed features, trained head),
    random ones are trained."""
    inputs = _image_input(input_size)
    pooled = [
        _join_backbone(backbone, inputs, weights_dir, pooling="avg", prefix=f"{backbone}_", freeze_pretrained=True)
        for backbone in backbones
    ]
    x = layers.Concatenate(name="fused_features")(pooled)
    x = layers.Dropout(FUSION_DROPOUT, name="dropout")(x)
    return keras.Model(inputs, _classifier(x, num_classes), name="fusion")


IMAGENET_NOTE = (
    "ImageNet weights are read from $" + IMAGENET_WEIGHTS_ENV + " (standard keras.applications *_notop.h5 file "
    "names; never downloaded); without them the backbone starts random (keras defaults)."
)

DEEP_COVID_NOTE = IMAGENET_NOTE + (
    " With them the backbone is frozen and only the last layer is trained (the paper); without them nothing is frozen."
)

ARCHITECTURES = {
    "dcnn80": {
        "build": dcnn80,
        "input_size": 80,
        "gradcam_layer": "block4_conv3",
        "reference": "Zhong 2020",
        "initialisation": RANDOM_INITIALISATION,
    },
    "dcnn80-compact": {
        "build": dcnn80_compact,
        "input_size": 80,
        "gradcam_layer": "block4_conv3",
        "reference": "Zhong 2020 trunk, compact head (this project)",
        "initialisation": RANDOM_INITIALISATION,
    },
    "lxn": {
        "build": lxn,
        "input_size": 200,
        "gradcam_layer": "block4_conv2",
        "reference": "Umer et al. LxN (200 px, eight 3×3 valid convs, Dense 512); a 3-class softmax head here, "
        "where the paper's is binary COVID vs not with one sigmoid unit",
        "initialisation": RANDOM_INITIALISATION,
    },
    "deep-covid-resnet50": {
        "build": partial(deep_covid, "resnet50"),
        "input_size": 224,
        "gradcam_layer": "conv5_block3_3_conv",
        "reference": "Minaee et al. Deep-COVID, ResNet50 (avg-pooled) + a new last layer; 3 classes here, where "
        "the paper's is COVID vs not (its ResNet18 and SqueezeNet are not in keras.applications)",
        "initialisation": DEEP_COVID_NOTE,
        "backbones": ("resnet50",),
    },
    "deep-covid-densenet121": {
        "build": partial(deep_covid, "densenet121"),
        "input_size": 224,
        "gradcam_layer": "conv5_block16_2_conv",
        "reference": "Minaee et al. Deep-COVID, DenseNet-121 (avg-pooled) + a new last layer; 3 classes here, "
        "where the paper's is COVID vs not",
        "initialisation": DEEP_COVID_NOTE,
        "backbones": ("densenet121",),
    },
    "xception-resnet50v2": {
        "build": xception_resnet50v2,
        "input_size": 224,
        "gradcam_layer": "concat_conv",
        "reference": "Rahimzadeh & Attar: Xception + ResNet50V2 maps concatenated, 1×1 conv, global average pool, "
        "dropout, classifier; 224 px here for CPU (paper: 300), pooling where their code flattens",
        "initialisation": IMAGENET_NOTE + " All layers are trained (the paper).",
        "backbones": ("xception", "resnet50v2"),
    },
    "fusion": {
        "build": fusion,
        "input_size": 224,
        "gradcam_layer": "resnet50_conv5_block3_3_conv",
        "reference": "Ji et al. feature fusion: ResNet50 + DenseNet121 + Xception global-average features "
        "concatenated, dropout, classifier (the paper also fuses InceptionV3, VGG19, NASNetLarge and "
        "InceptionResNetV2)",
        "initialisation": IMAGENET_NOTE + " Pretrained backbones are frozen (only the head is trained); random "
        "ones are trained.",
        "backbones": FUSION_BACKBONES,
    },
}


def build_model(architecture: str, num_classes: int = 3, input_size=None):
    spec = ARCHITECTURES[architecture]
    return spec["build"](input_size=input_size or spec["input_size"], num_classes=num_classes)


def initialisation(architecture: str, weights_dir=None) -> str:
    """The model card's account of the starting weights: for ImageNet backbones, which ones were found (and so
    loaded), then the architecture's note."""
    spec = ARCHITECTURES[architecture]
    found = [(name, imagenet_weights(name, weights_dir)) for name in spec.get("backbones", ())]
    used = [
        f"{name}: ImageNet weights from {path}" if path else f"{name}: random (no ImageNet weights)"
        for name, path in found
    ]
    return "; ".join(used + [spec["initialisation"]])


def conv_layer_names(model) -> list:
    """Names of the model's 2-D convolution layers, input to output (the Grad-CAM candidates)."""
    return [layer.name for layer in model.layers if isinstance(layer, layers.Conv2D)]
