"""The training recipe. Defaults reproduce Zhong 2020."""

import argparse
import json
from dataclasses import asdict, dataclass, field, fields

from train.architectures import ARCHITECTURES
from train.schedules import SCHEDULES

PAPER_CLASS_WEIGHTS = {"COVID-19": 10.0, "Normal": 3.0, "Pneumonia": 1.0}


PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
SAMPLINGS = ("shuffle", "class-source")


@dataclass
class TrainConfig:
    data: list = field(default_factory=list)  # one or more dataset folders, merged into one manifest
    leave_out_source: str = ""  # train without this source and evaluate on all of its images ("external")
    arch: str = "dcnn80"
    epochs: int = 12
    batch_size: int = 32
    lr: float = 4e-4
    lr_schedule: str = "paper"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.12
    class_weights: str = "paper"
    flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    crop_scale_min: float = 80 / 96
    crop_scale_max: float = 80 / 96
    rotation: float = 0.0  # max degrees of a random rotation
    gamma: float = 0.0  # gamma drawn log-uniformly from [1 / (1 + g), 1 + g]
    blur: float = 0.0  # max Gaussian blur sigma, in input pixels
    noise: float = 0.0  # max standard deviation of added Gaussian noise
    jpeg_quality: int = 0  # when > 0, re-compress each image as JPEG at a random quality in [jpeg_quality, 100)
    mixup: float = 0.0  # Beta(α, α) of mixup (Zhang et al. 2018); 0 disables it
    sampling: str = "shuffle"  # or "class-source": batches balanced over classes, then over sources within a class
    intensity: str = "none"  # intensity normalisation in the one preprocessing path: none | clahe | equalize
    border_crop: float = 0.0  # fraction cut from each side in the one preprocessing path
    precision: str = "auto"  # auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with bf16 units, else float32
    cache_size: int = 0  # side of the cached training images; 0: round(1.2 × input size), 96 for the 80-px models
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    checkpoint: str = "best"
    seed: int = 0
    limit_per_class: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if isinstance(values.get("data"), str):  # configs written before several folders were allowed
            values["data"] = [values["data"]] if values["data"] else []
        return cls(**values)

    def preprocessing(self):
        from core.preprocess import Preprocessing

        return Preprocessing(self.intensity, self.border_crop)


def parse_class_weights(spec: str, class_names, train_counts=None) -> dict:
    """'paper', 'balanced' (n / (k · n_class) on the training split), 'none', or 'COVID-19=10,Normal=3,Pneumonia=1'."""
    from train.datasets import canonical_label

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
                f"Class weights '{spec}' not understood: use paper, balanced, none or e.g. COVID-19=10,Normal=3,Pneumonia=1."
            ) from error
    missing = [name for name in class_names if name not in weights]
    if missing:
        raise ValueError(f"Class weights '{spec}' miss {', '.join(missing)}.")
    return weights


def argument_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a CXR Triage model (defaults: Zhong 2020's recipe) and optionally publish it.",
    )
    parser.add_argument("--data", nargs="+", metavar="DIR",
                        help="dataset folder(s): one folder per class, optional manifest.csv; several are merged")
    parser.add_argument("--leave-out-source", default="", metavar="SOURCE",
                        help="train without SOURCE (a manifest source, e.g. nih_cxr14) and report every one of its "
                        "images as an external test")
    parser.add_argument("--arch", default=d.arch, choices=sorted(ARCHITECTURES), help="; ".join(
        f"{name}: {spec['reference']}" for name, spec in sorted(ARCHITECTURES.items())))
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (paper: 4e-4)")
    parser.add_argument("--lr-schedule", default=d.lr_schedule, choices=SCHEDULES)
    parser.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="for warmup-cosine")
    parser.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    parser.add_argument("--class-weights", default=d.class_weights, help="paper | balanced | none | C=w,...")
    parser.add_argument("--no-flip", dest="flip", action="store_false", help="disable horizontal flips")
    parser.add_argument("--brightness", type=float, default=d.brightness, help="max brightness shift")
    parser.add_argument("--contrast", type=float, default=d.contrast, help="max contrast change (fraction)")
    parser.add_argument("--crop-scale-min", type=float, default=d.crop_scale_min, help="smallest crop side / image side")
    parser.add_argument("--crop-scale-max", type=float, default=d.crop_scale_max, help="largest crop side / image side")
    parser.add_argument("--rotation", type=float, default=d.rotation, help="max random rotation, degrees")
    parser.add_argument("--gamma", type=float, default=d.gamma, help="random gamma in [1/(1+g), 1+g]")
    parser.add_argument("--blur", type=float, default=d.blur, help="max Gaussian blur sigma (input pixels)")
    parser.add_argument("--noise", type=float, default=d.noise, help="max Gaussian noise standard deviation")
    parser.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality,
                        help="re-compress as JPEG at a random quality >= this (0: off)")
    parser.add_argument("--mixup", type=float, default=d.mixup, help="mixup Beta(a, a); 0: off")
    parser.add_argument("--sampling", default=d.sampling, choices=SAMPLINGS,
                        help="class-source: batches balanced over classes and, within a class, over sources")
    parser.add_argument("--intensity", default=d.intensity, choices=("none", "clahe", "equalize"),
                        help="intensity normalisation in the shared preprocessing (training and inference)")
    parser.add_argument("--border-crop", type=float, default=d.border_crop,
                        help="fraction cut from each side in the shared preprocessing")
    parser.add_argument("--precision", default=d.precision, choices=PRECISIONS)
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction)
    parser.add_argument("--test-fraction", type=float, default=d.test_fraction)
    parser.add_argument("--checkpoint", default=d.checkpoint, choices=("best", "last"),
                        help="publish the epoch with the lowest validation loss, or the last one")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--limit-per-class", type=int, default=0, help="use at most N images per class (quick runs)")
    parser.add_argument("--run-dir", help="where the run's files go (default: runs/<time>-<arch>)")
    parser.add_argument("--resume", metavar="RUN", help="continue an interrupted run (its folder)")
    parser.add_argument("--publish", metavar="NAME", help="publish the trained model as version NAME")
    parser.add_argument("--activate", action="store_true", help="make the published version active")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser
