"""The training recipe. Defaults reproduce Zhong 2020."""

import argparse
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from core import settings
from core.preprocess import INTENSITY_METHODS
from train.trainer.architectures import ARCHITECTURES
from train.trainer.schedules import SCHEDULES

__all__ = ["TrainConfig", "parse_class_weights", "argument_parser", "config_from_arguments", "recipe_from_card"]

PAPER_CLASS_WEIGHTS = {"COVID-19": 10.0, "Normal": 3.0, "Pneumonia": 1.0}


PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
SAMPLINGS = ("shuffle", "class-source")
INTENSITIES = INTENSITY_METHODS
CHECKPOINTS = ("best", "last")


def _setting(default, help: str, choices=None, **kwargs):
    """A recipe field with what its command-line option says (the CLI is generated from these)."""
    metadata = {"help": help, "choices": choices}
    if callable(default):
        return field(default_factory=default, metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class TrainConfig:
    """One training run's recipe; every field is also a ``python -m train`` option (``--field-name``)."""

    data: list = _setting(list, "dataset folder(s): one folder per class, optional manifest.csv; several are merged")
    leave_out_source: str = _setting(
        "",
        "train without this source (a manifest source, e.g. nih_cxr14) and "
        "report every one of its images as an external test",
    )
    arch: str = _setting(
        "dcnn80",
        "the architecture; "
        + "; ".join(f"{name}: {spec['reference']}" for name, spec in sorted(ARCHITECTURES.items())),
        choices=tuple(sorted(ARCHITECTURES)),
    )
    epochs: int = _setting(12, "epochs to train")
    batch_size: int = _setting(32, "images per batch")
    lr: float = _setting(4e-4, "peak learning rate (paper: 4e-4)")
    lr_schedule: str = _setting("paper", "learning-rate schedule", choices=tuple(SCHEDULES))
    warmup_epochs: float = _setting(1.0, "warm-up epochs (warmup-cosine)")
    label_smoothing: float = _setting(0.12, "label smoothing of the cross-entropy")
    class_weights: str = _setting("paper", "paper | balanced | none | C=w,...")
    flip: bool = _setting(True, "random horizontal flips")
    brightness: float = _setting(0.1, "max brightness shift")
    contrast: float = _setting(0.2, "max contrast change (fraction)")
    crop_scale_min: float = _setting(80 / 96, "smallest crop side / image side")
    crop_scale_max: float = _setting(80 / 96, "largest crop side / image side")
    rotation: float = _setting(0.0, "max random rotation, degrees")
    gamma: float = _setting(0.0, "random gamma drawn log-uniformly from [1/(1+g), 1+g]")
    blur: float = _setting(0.0, "max Gaussian blur sigma (input pixels)")
    noise: float = _setting(0.0, "max standard deviation of added Gaussian noise")
    jpeg_quality: int = _setting(0, "re-compress as JPEG at a random quality >= this (0: off)")
    mixup: float = _setting(0.0, "mixup Beta(a, a) (Zhang et al. 2018); 0: off")
    sampling: str = _setting(
        "shuffle", "class-source: batches balanced over classes and, within a class, over sources", choices=SAMPLINGS
    )
    intensity: str = _setting(
        "none", "intensity normalisation in the shared preprocessing (training and inference)", choices=INTENSITIES
    )
    border_crop: float = _setting(0.0, "fraction cut from each side in the shared preprocessing")
    precision: str = _setting(
        "auto",
        "auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with bf16 units, else float32",
        choices=PRECISIONS,
    )
    cache_size: int = _setting(0, "side of the cached training images; 0: round(1.2 x input size), 96 for 80 px")
    val_fraction: float = _setting(0.15, "fraction of patients for validation")
    test_fraction: float = _setting(0.15, "fraction of patients for test")
    checkpoint: str = _setting(
        "best", "publish the epoch with the lowest validation loss, or the last one", choices=CHECKPOINTS
    )
    seed: int = _setting(0, "random seed (split, initialisation, augmentation)")
    limit_per_class: int = _setting(0, "use at most N images per class (quick runs); 0: all")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A recipe from its JSON form; ``ValueError`` names any unknown setting (a typo must not be dropped)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown training setting(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
        values = dict(values)
        if isinstance(values.get("data"), str):  # configs written before several folders were allowed
            values["data"] = [values["data"]] if values["data"] else []
        return cls(**values)

    def preprocessing(self):
        from core.preprocess import Preprocessing

        return Preprocessing(self.intensity, self.border_crop)


def parse_class_weights(spec: str, class_names, train_counts=None) -> dict:
    """'paper', 'balanced' (n / (k · n_class) on the training split), 'none', or 'COVID-19=10,Normal=3,Pneumonia=1'."""
    from train.trainer.datasets import canonical_label

    if spec == "paper":
        return dict(PAPER_CLASS_WEIGHTS)
    if spec == "none":
        return {name: 1.0 for name in class_names}
    if spec == "balanced":
        total = sum(train_counts.values())
        return {name: total / (len(class_names) * train_counts[name]) for name in class_names}
    weights = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        try:
            weights[canonical_label(name)] = float(value)
        except ValueError as error:
            raise ValueError(
                f"Class weights '{spec}' not understood: use paper, balanced, none or e.g. "
                "COVID-19=10,Normal=3,Pneumonia=1."
            ) from error
    missing = [name for name in class_names if name not in weights]
    if missing:
        raise ValueError(f"Class weights '{spec}' miss {', '.join(missing)}.")
    return weights


def argument_parser() -> argparse.ArgumentParser:
    """``python -m train``'s options: one per ``TrainConfig`` field (defaults, types, choices and help from the
    field), then the run's own options."""
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a CXR Triage model (defaults: Zhong 2020's recipe) and optionally publish it.",
    )
    for item in fields(TrainConfig):
        option = "--" + item.name.replace("_", "-")
        help_text, choices = item.metadata["help"], item.metadata["choices"]
        if item.name == "data":
            parser.add_argument(option, nargs="+", metavar="DIR", help=help_text)
        elif item.type is bool:
            parser.add_argument(f"--no-{item.name}", dest=item.name, action="store_false", help=f"no {help_text}")
        else:
            parser.add_argument(
                option,
                type=item.type,
                default=item.default,
                choices=choices,
                help=f"{help_text} (default: {item.default:.4g})"
                if item.type is float
                else f"{help_text} (default: {item.default})",
            )
    parser.add_argument("--run-dir", help="where the run's files go (default: runs/<time>-<arch>)")
    parser.add_argument("--resume", metavar="RUN", help="continue an interrupted run (its folder)")
    parser.add_argument("--publish", metavar="NAME", help="publish the trained model as version NAME")
    parser.add_argument("--activate", action="store_true", help="make the published version active")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def config_from_arguments(args: argparse.Namespace) -> TrainConfig:
    """The recipe given on the command line (``data`` folders resolved)."""
    values = {item.name: getattr(args, item.name) for item in fields(TrainConfig)}
    values["data"] = [str(Path(folder).resolve()) for folder in values["data"] or []]
    return TrainConfig(**values)


def recipe_from_card(card):
    """The recipe a version was trained with (its ``ModelCard``'s ``training`` record, less what the trainer
    added: the device, timings, the epoch kept), its data folders as this machine's paths; None when there is no
    card or it has no record."""
    training = card.training if card is not None else {}
    known = {item.name for item in fields(TrainConfig)}
    recipe = {key: value for key, value in training.items() if key in known}
    if not recipe:
        return None
    config = TrainConfig.from_dict(recipe)
    return replace(config, data=[str(settings.local_data_path(folder)) for folder in config.data])
