"""Named recipes the Retrain page starts from, and the page's form as values.

The first is the active version's own recipe, read from its card's ``training`` record (the shipped default, v2,
is the compact DCNN trained 12 epochs on both data folders with class-source sampling and no class weights); the
second is Zhong 2020's, which is ``TrainConfig``'s defaults. ``form_values`` and ``config_from_form`` turn a
recipe into the form's widget values (one per setting, named like it) and back, so that the page holds no
mapping of its own and a round trip gives the recipe unchanged.
"""

from dataclasses import replace
from pathlib import Path

from core import CLASS_NAMES
from train.trainer.config import PAPER_CLASS_WEIGHTS, TrainConfig, parse_class_weights, recipe_from_card

__all__ = [
    "PAPER",
    "NO_SOURCE",
    "CLASS_WEIGHT_MODES",
    "presets",
    "trained_on",
    "form_values",
    "config_from_form",
    "weight_key",
]

PAPER = "Zhong 2020 (the paper's recipe)"
DEFAULTS = TrainConfig()
NO_SOURCE = "(none)"
CLASS_WEIGHT_MODES = ("paper", "balanced", "none", "custom")
FORM_FIELDS = (
    "arch",
    "epochs",
    "batch_size",
    "lr",
    "lr_schedule",
    "warmup_epochs",
    "label_smoothing",
    "limit_per_class",
    "seed",
    "flip",
    "brightness",
    "contrast",
    "intensity",
    "border_crop",
    "sampling",
    "rotation",
    "gamma",
    "blur",
    "noise",
    "jpeg_quality",
    "mixup",
    "val_fraction",
    "test_fraction",
    "checkpoint",
)
CROP = "crop"  # the form's one range slider for crop_scale_min / crop_scale_max
CLASS_WEIGHTS = "class_weights"
LEAVE_OUT = "leave_out_source"


def weight_key(name: str) -> str:
    """The form key of one class's custom weight."""
    return f"weight:{name}"


def presets(card) -> dict:
    """{name: recipe}, the default first: the active version's recipe (when its card has one), then the paper's."""
    found = {}
    recipe = recipe_from_card(card)
    if recipe is not None:
        found[f"{card.version} (the active version's recipe)"] = recipe
    found[PAPER] = TrainConfig()
    return found


def trained_on(config: TrainConfig, folders) -> list:
    """Those of ``folders`` (paths as text, in their order) that ``config`` was trained on."""
    wanted = {Path(path).resolve() for path in config.data}
    return [folder for folder in folders if Path(folder).resolve() in wanted]


def _weights_mode(spec: str):
    if spec in CLASS_WEIGHT_MODES[:-1]:
        return spec, dict(PAPER_CLASS_WEIGHTS)
    return "custom", {**PAPER_CLASS_WEIGHTS, **parse_class_weights(spec, CLASS_NAMES)}


def form_values(config: TrainConfig) -> dict:
    """The Retrain form's widget values for ``config``: one per setting, keyed by its name; the crop range as one
    pair; the class weights as a mode (paper, balanced, none, custom) and one weight per class for custom."""
    values = {name: type(getattr(DEFAULTS, name))(getattr(config, name)) for name in FORM_FIELDS}  # 0 → 0.0 for sliders
    mode, weights = _weights_mode(config.class_weights)
    values.update(
        {
            CROP: (float(config.crop_scale_min), float(config.crop_scale_max)),
            CLASS_WEIGHTS: mode,
            LEAVE_OUT: config.leave_out_source or NO_SOURCE,
        }
    )
    values.update({weight_key(name): float(weight) for name, weight in weights.items()})
    return values


def config_from_form(base: TrainConfig, values: dict, data) -> TrainConfig:
    """``base`` (the chosen preset: it also carries what the form does not show, e.g. precision) with the form's
    ``values`` and the chosen ``data`` folders."""
    chosen = {name: type(getattr(DEFAULTS, name))(values[name]) for name in FORM_FIELDS if name in values}
    low, high = values.get(CROP, (base.crop_scale_min, base.crop_scale_max))
    mode = values.get(CLASS_WEIGHTS, base.class_weights)
    if mode == "custom":
        mode = ",".join(f"{name}={float(values[weight_key(name)]):g}" for name in CLASS_NAMES)
    leave_out = values.get(LEAVE_OUT, base.leave_out_source or NO_SOURCE)
    return replace(
        base,
        **chosen,
        data=list(data),
        crop_scale_min=float(low),
        crop_scale_max=float(high),
        class_weights=mode,
        leave_out_source="" if leave_out == NO_SOURCE else leave_out,
    )
