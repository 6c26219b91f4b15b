"""Model builders. Every model is built flat (no nested base model, so Grad-CAM can reach any conv layer),
ends in a linear Dense named ``logits`` followed by a softmax named ``probabilities``, and names its layers.
"""

import keras
from keras import layers

# (filters, convolutions) of the four VGG-style blocks of Zhong 2020.
DCNN80_BLOCKS = ((32, 2), (64, 2), (128, 3), (128, 3))
PAPER_HEAD = ((4096, 0.5), (2048, 0.4))
COMPACT_HEAD = ((256, 0.5), (128, 0.4))


def dcnn80(input_size=80, num_classes=3, head=PAPER_HEAD, name="dcnn80"):
    """Zhong 2020's DCNN: four conv blocks (ELU, 3×3 same, 2×2 max-pool); global max pools of the four pooled
    maps concatenated with the flattened last conv block; a dense head (units, dropout) per layer."""
    inputs = keras.Input((input_size, input_size, 3), name="image")
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
    logits = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=name)


def dcnn80_compact(input_size=80, num_classes=3):
    """The same convolutional trunk and features with a 256 → 128 dense head (~4.3 M parameters, ~17 MB)."""
    return dcnn80(input_size, num_classes, head=COMPACT_HEAD, name="dcnn80_compact")


ARCHITECTURES = {
    "dcnn80": {"build": dcnn80, "input_size": 80, "gradcam_layer": "block4_conv3", "reference": "Zhong 2020"},
    "dcnn80-compact": {
        "build": dcnn80_compact,
        "input_size": 80,
        "gradcam_layer": "block4_conv3",
        "reference": "Zhong 2020 trunk, compact head (this project)",
    },
}


def build_model(architecture: str, num_classes: int = 3, input_size=None):
    spec = ARCHITECTURES[architecture]
    return spec["build"](input_size=input_size or spec["input_size"], num_classes=num_classes)


def conv_layer_names(model) -> list:
    """Names of the model's 2-D convolution layers, input to output (the Grad-CAM candidates)."""
    return [layer.name for layer in model.layers if isinstance(layer, layers.Conv2D)]
