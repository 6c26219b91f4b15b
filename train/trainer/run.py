"""One training run: data → fit (with checkpoints and progress events) → calibration and evaluation on the
validation and test splits → a complete candidate version in ``<run>/candidate`` → optionally published.

A run folder holds config.json, split.csv, events.jsonl, state.json, the epoch checkpoints, log.txt (when
started by the app) and, once finished, candidate/ (model.keras, card.json, val/test predictions).
"""

import datetime
import logging
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core import CLASS_NAMES, atomic, registry, settings
from core.calibration import expected_calibration_error, fit_temperature, reliability_bins
from core.card import ModelCard, write_predictions
from core.inference import softmax
from core.metrics import classification_report, per_source_reports
from train.trainer.checkpoints import EpochCheckpoint, read_state
from train.trainer.config import TrainConfig, parse_class_weights
from train.trainer.datasets import (
    EXTERNAL,
    SPLIT_NAMES,
    SPLITS,
    DatasetError,
    label_indices,
    manifest_hash,
    scan_datasets,
    split_by_patient,
)
from train.trainer.flags import fit_flags
from train.trainer.progress import CANCEL_REQUESTED, ProgressEvents, StopWhenCancelled, write_event
from train.trainer.shift import automatic_operating_point

__all__ = [
    "PreparedData",
    "cache_size",
    "prepare_data",
    "assign_splits",
    "device_description",
    "training_precision",
    "distribution_strategy",
    "compile_model",
    "fit",
    "float32_copy",
    "predict_logits",
    "evaluate",
    "library_versions",
    "write_candidate",
    "publish_candidate",
    "new_run_dir",
    "run",
]

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
CONFIG_FILE = "config.json"  # the run's recipe
SPLIT_FILE = "split.csv"  # the run's patient-level split, reused on resume
CACHE_SCALE = 1.2  # training images are cached this much larger than the input, then randomly cropped back
EXTERNAL_PREDICTIONS = "external_predictions.csv"
MIN_EXTERNAL_IMAGES = 50
CAVEAT = (
    "Research and demonstration use only; not a medical device and not for diagnosis. Trained on public data "
    "from few sources: in the shared pool almost every pneumonia image is a child's (Kermany, aged 1–5) and every "
    "COVID-19 image an adult's from two public collections, so the model can use age, hospital and positioning "
    "cues instead of disease. Measured across hospitals (leave one source out, 'cross_hospital' in this card), "
    "radiographs from a source it never saw were mostly called COVID-19: expect much worse results on a new "
    "hospital than the figures measured on this pool. The flags catch gross shift (not a chest, rotated, "
    "inverted, unlike the training images) and the model's own doubt, not a new hospital's look; read flagged "
    "calls without the model. Probabilities are calibrated on the validation split of the training sources only."
)


@dataclass
class PreparedData:
    frame: pd.DataFrame  # path, label, patient_id, source, population, root, split
    images: dict  # split -> uint8 (N, S, S); train at the cache size, val/test/external at the input size
    labels: dict  # split -> int (N,)
    train_inputs: np.ndarray  # the training images at the input size, as inference sees them (for the detector)
    manifest_sha256: str  # of the union (equal to the folder's own hash for one folder)
    skipped: dict  # unreadable path -> message
    folders: list  # per dataset folder: root, manifest_sha256, images

    @property
    def splits(self) -> tuple:
        return SPLITS + ((EXTERNAL,) if EXTERNAL in self.labels else ())


def cache_size(config: TrainConfig, input_size: int) -> int:
    """The side of the cached training images: ``config.cache_size``, or when 0 (the default) 1.2 × the
    architecture's input size (96 for the 80-px models)."""
    return config.cache_size or round(input_size * CACHE_SCALE)


def prepare_data(config: TrainConfig, input_size: int, split_file: Path = None) -> PreparedData:
    """Scan and merge the dataset folders, decode once (cached), drop unreadable files, hold out
    ``config.leave_out_source`` as the external split, and split the rest by patient (or reuse a run's split)."""
    from train.trainer.cache import load_resized

    if split_file is not None and split_file.is_file():
        frame = pd.read_csv(split_file, dtype=str, keep_default_na=False)
        if "root" not in frame.columns:  # runs from before several folders were allowed
            frame["root"] = str(Path(config.data[0]).resolve())
        if "population" not in frame.columns:
            frame["population"] = "unknown"
    else:
        frame = scan_datasets(config.data)
        if config.limit_per_class:
            shuffled = frame.sample(frac=1.0, random_state=config.seed)
            frame = shuffled.groupby("label").head(config.limit_per_class).sort_values("path").reset_index(drop=True)
    train_size = cache_size(config, input_size)
    sizes = (train_size, input_size)
    arrays, readable, skipped = load_resized(frame["path"].tolist(), sizes, preprocessing=config.preprocessing())
    frame = frame[readable].reset_index(drop=True)
    arrays = {size: array[readable] for size, array in arrays.items()}
    if "split" not in frame.columns:
        frame["split"] = assign_splits(frame, config)
    images, labels = {}, {}
    for split in SPLITS + ((EXTERNAL,) if config.leave_out_source else ()):
        rows = (frame["split"] == split).to_numpy()
        images[split] = arrays[train_size if split == "train" else input_size][rows]
        labels[split] = label_indices(frame.loc[rows, "label"])
    folders = [
        {"root": root, "manifest_sha256": manifest_hash(part), "images": int(len(part))}
        for root, part in frame.groupby("root", sort=True)
    ]
    train_inputs = arrays[input_size][(frame["split"] == "train").to_numpy()]
    return PreparedData(frame, images, labels, train_inputs, manifest_hash(frame), skipped, folders)


def assign_splits(frame: pd.DataFrame, config: TrainConfig) -> np.ndarray:
    """'train' / 'val' / 'test' by patient over the union of the folders; with ``leave_out_source`` that
    source's images are all 'external' and the patient split is made over the others."""
    split = np.full(len(frame), EXTERNAL, dtype=object)
    kept = np.ones(len(frame), bool)
    if config.leave_out_source:
        kept = (frame["source"] != config.leave_out_source).to_numpy()
        known = sorted(set(frame["source"]))
        if kept.all():
            raise DatasetError(
                f"No images of source '{config.leave_out_source}' to leave out; the sources are {', '.join(known)}."
            )
        if (~kept).sum() < MIN_EXTERNAL_IMAGES:
            raise DatasetError(
                f"Source '{config.leave_out_source}' has only {(~kept).sum()} images; at least "
                f"{MIN_EXTERNAL_IMAGES} are needed for an external test."
            )
    rest = frame[kept].reset_index(drop=True)
    missing = [name for name in CLASS_NAMES if name not in set(rest["label"])]
    if missing:
        raise DatasetError(
            f"Without source '{config.leave_out_source}' no images of {', '.join(missing)} are left to train on."
        )
    split[kept] = split_by_patient(rest, config.val_fraction, config.test_fraction, config.seed).to_numpy()
    return split


def device_description() -> dict:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return {"kind": "CPU", "name": platform.processor() or platform.machine(), "count": 0}
    details = tf.config.experimental.get_device_details(gpus[0])
    return {"kind": "GPU", "name": details.get("device_name", gpus[0].name), "count": len(gpus)}


def training_precision(config: TrainConfig, device: dict) -> str:
    """The Keras dtype policy: ``config.precision``, or for "auto" mixed float16 on a GPU, mixed bfloat16 on a
    CPU with bfloat16 matrix units (AMX or AVX512-BF16: 1.4–2.2× the float32 images/s of the compact DCNN
    on this repository's 2-core machine), else float32. Weights stay float32 either way."""
    if config.precision != "auto":
        return config.precision
    if device["kind"] == "GPU":
        return "mixed_float16"
    return "mixed_bfloat16" if _cpu_has_bfloat16() else "float32"


def _cpu_has_bfloat16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def distribution_strategy(device: dict):
    """Several machines (TF_CONFIG), several GPUs or one device: ``train.trainer.distribute.training_strategy``."""
    from train.trainer.distribute import training_strategy

    return training_strategy(device["count"] if device["kind"] == "GPU" else 0)


def compile_model(config: TrainConfig, steps_per_epoch: int):
    import keras

    from train.trainer.architectures import build_model
    from train.trainer.schedules import make_schedule

    model = build_model(config.arch, len(CLASS_NAMES))
    schedule = make_schedule(config.lr_schedule, steps_per_epoch, config.epochs, config.lr, config.warmup_epochs)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    return model


def fit(config: TrainConfig, data: PreparedData, run_dir: Path, verbose: bool = True):
    """Train (or continue training) and return the model holding the weights chosen by ``config.checkpoint``."""
    import keras

    from train.trainer.architectures import ARCHITECTURES
    from train.trainer.pipeline import Augmentation, evaluation_dataset, training_dataset

    device = device_description()
    strategy = distribution_strategy(device)  # first: a multi-worker strategy must precede every TensorFlow op
    precision = training_precision(config, device)
    keras.mixed_precision.set_global_policy(precision)
    device = {**device, "precision": precision, "replicas": strategy.num_replicas_in_sync}
    keras.utils.set_random_seed(config.seed)
    input_size = ARCHITECTURES[config.arch]["input_size"]
    train_counts = {name: int((data.labels["train"] == i).sum()) for i, name in enumerate(CLASS_NAMES)}
    class_weights = parse_class_weights(config.class_weights, CLASS_NAMES, train_counts)
    onehot = np.eye(len(CLASS_NAMES), dtype=np.float32)
    weights = np.array([class_weights[name] for name in CLASS_NAMES], np.float32)[data.labels["train"]]
    augmentation = Augmentation(
        config.flip,
        config.brightness,
        config.contrast,
        config.crop_scale_min,
        config.crop_scale_max,
        config.rotation,
        config.gamma,
        config.blur,
        config.noise,
        config.jpeg_quality,
        config.mixup,
    )
    sources = None
    if config.sampling == "class-source":
        sources = data.frame.loc[data.frame["split"] == "train", "source"].to_numpy()
    train_data = training_dataset(
        data.images["train"],
        onehot[data.labels["train"]],
        weights,
        input_size,
        config.batch_size,
        augmentation,
        config.seed,
        sources,
    )
    val_data = evaluation_dataset(data.images["val"], onehot[data.labels["val"]])
    steps = int(np.ceil(len(data.labels["train"]) / config.batch_size))

    with strategy.scope():
        model = compile_model(config, steps)
    state = read_state(run_dir)
    if state.get("checkpoint"):
        model.optimizer.build(model.trainable_variables)
        model.load_weights(run_dir / state["checkpoint"])
    write_event(
        run_dir,
        "start",
        device=device,
        epochs=config.epochs,
        initial_epoch=state["epoch"],
        steps_per_epoch=steps,
        n=({s: int(len(data.labels[s])) for s in SPLITS}),
        class_weights=class_weights,
        parameters=int(model.count_params()),
    )
    callbacks = [
        StopWhenCancelled(),
        ProgressEvents(run_dir, config.epochs, steps, config.batch_size, len(data.labels["train"])),
        EpochCheckpoint(run_dir),
    ]
    if CANCEL_REQUESTED.is_set():
        raise KeyboardInterrupt("cancelled")
    if state["epoch"] < config.epochs:
        model.fit(
            train_data,
            epochs=config.epochs,
            initial_epoch=state["epoch"],
            steps_per_epoch=steps,
            validation_data=val_data,
            callbacks=callbacks,
            verbose=1 if verbose else 0,
        )
    state = read_state(run_dir)
    chosen = state["best"] if config.checkpoint == "best" and state.get("best") else state["checkpoint"]
    model.load_weights(run_dir / chosen)
    keras.mixed_precision.set_global_policy("float32")
    return float32_copy(model, config.arch), class_weights, device, state


def float32_copy(model, arch: str):
    """The model rebuilt in float32 with the trained weights: what is published, so evaluation, calibration,
    thresholds and detectors are measured on exactly what the app runs, whatever precision trained it."""
    from train.trainer.architectures import build_model

    copy = build_model(arch, len(CLASS_NAMES))
    copy.set_weights(model.get_weights())
    return copy


def predict_logits(model, images_uint8: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits for cached uint8 images at the input size (the same arrays ``core.preprocess`` yields)."""
    import tensorflow as tf

    from core.inference import logits_model
    from train.trainer.pipeline import evaluation_dataset

    forward = tf.function(lambda x: logits_model(model)(x, training=False))
    outputs = [forward(batch).numpy() for batch in evaluation_dataset(images_uint8, batch_size=batch_size)]
    return np.concatenate(outputs).astype(np.float64) if outputs else np.zeros((0, len(CLASS_NAMES)))


def evaluate(model, data: PreparedData) -> dict:
    """Temperature fitted on validation; the COVID-19 operating point at 97.5 % validation sensitivity; figures
    for validation and test (overall, per source and per population) and for the external split when a source
    was left out (``train.trainer.flags.fit_flags`` adds its shift figures)."""
    splits = [split for split in data.splits if split != "train"]
    logits = {split: predict_logits(model, data.images[split]) for split in splits}
    temperature = fit_temperature(logits["val"], data.labels["val"])
    result = {"temperature": temperature, "metrics": {}, "probabilities": {}}
    for split in splits:
        labels = data.labels[split]
        raw, calibrated = softmax(logits[split]), softmax(logits[split], temperature)
        rows = data.frame["split"] == split
        report = classification_report(labels, calibrated, CLASS_NAMES)
        report["ece_uncalibrated"] = expected_calibration_error(labels, raw)
        report["reliability"] = reliability_bins(labels, calibrated)
        for column in ("source", "population"):
            report[f"per_{column}"] = per_source_reports(
                labels, calibrated, data.frame.loc[rows, column].to_numpy(), CLASS_NAMES
            )
        result["metrics"][SPLIT_NAMES[split]] = report
        result["probabilities"][split] = calibrated
    result["operating_point"] = automatic_operating_point(data.labels["val"], result["probabilities"]["val"])
    return result


def library_versions() -> dict:
    import cv2
    import keras
    import sklearn
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "scikit-learn": sklearn.__version__,
    }


def write_candidate(model, config, data, evaluation, class_weights, device, state, run_dir: Path) -> Path:
    """A complete version folder (card version unset) in ``<run>/candidate``, written then renamed."""
    from train.trainer.architectures import ARCHITECTURES, conv_layer_names, initialisation

    spec = ARCHITECTURES[config.arch]
    partial = run_dir / f".{CANDIDATE}-partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    export = model
    export.save(partial / registry.MODEL_FILE)
    evaluation["detector"].save(partial)
    files = {"val": registry.VAL_PREDICTIONS, "test": registry.TEST_PREDICTIONS, EXTERNAL: EXTERNAL_PREDICTIONS}
    for split in evaluation["probabilities"]:
        rows = data.frame[data.frame["split"] == split]
        named = len(data.folders) > 1
        paths = [_relative(path, root, named) for path, root in zip(rows["path"], rows["root"])]
        write_predictions(
            partial / files[split], rows.assign(path=paths), evaluation["probabilities"][split], CLASS_NAMES
        )
    card = ModelCard(
        architecture=config.arch,
        architecture_reference=spec["reference"],
        parameters=int(export.count_params()),
        initialisation=initialisation(config.arch),
        input_size=spec["input_size"],
        class_names=CLASS_NAMES,
        preprocessing=config.preprocessing().describe(),
        gradcam_layer=spec["gradcam_layer"],
        conv_layers=conv_layer_names(export),
        temperature=evaluation["temperature"],
        operating_point=evaluation["operating_point"],
        flags=evaluation["flags"],
        training={
            **asdict(config),
            "data": [settings.portable_data_path(folder) for folder in config.data],
            "cache_size": cache_size(config, spec["input_size"]),
            "class_weight_values": class_weights,
            "device": device,
            "epochs_trained": state["epoch"],
            "chosen_epoch": state.get("best_epoch") if config.checkpoint == "best" else state["epoch"],
            "best_val_loss": state.get("best_val_loss"),
            "run": run_dir.name,
            "seconds": _training_seconds(run_dir),
        },
        seed=config.seed,
        data=_data_facts(config, data),
        libraries=library_versions(),
        metrics=evaluation["metrics"],
        caveat=CAVEAT,
    )
    card.save(partial / registry.CARD_FILE)
    target = run_dir / CANDIDATE
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _data_facts(config: TrainConfig, data: PreparedData) -> dict:
    """The card's ``data`` section: the folders and their manifest hashes, the split and its sizes."""
    splits = data.splits
    return {
        "root": settings.portable_data_path(config.data[0]) if len(config.data) == 1 else None,
        "folders": [{**folder, "root": settings.portable_data_path(folder["root"])} for folder in data.folders],
        "manifest_sha256": data.manifest_sha256,
        "held_out_source": config.leave_out_source or None,
        "split": "patient-level, stratified by class (sklearn StratifiedGroupKFold)",
        "split_sizes": {s: int(len(data.labels[s])) for s in splits},
        "class_counts": {s: {n: int((data.labels[s] == i).sum()) for i, n in enumerate(CLASS_NAMES)} for s in splits},
        "patients": {s: int(data.frame.loc[data.frame["split"] == s, "patient_id"].nunique()) for s in splits},
        "unreadable_skipped": len(data.skipped),
    }


def _relative(path: str, root: str, named: bool) -> str:
    """``path`` relative to its dataset folder, prefixed by the folder's name when there are several."""
    try:
        relative = Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return str(path)
    return str(Path(Path(root).name) / relative) if named else str(relative)


def _training_seconds(run_dir: Path) -> float:
    from train.trainer.progress import read_events

    return float(sum(e.get("seconds", 0.0) for e in read_events(run_dir) if e["event"] == "epoch"))


def publish_candidate(run_dir: Path, version: str, activate: bool = False, root=None) -> Path:
    """Copy a run's candidate into the weights folder as ``version`` (staged, then one rename)."""
    candidate = run_dir / CANDIDATE
    if not registry.is_complete(candidate):
        raise registry.ModelVersionError(f"Run {run_dir.name} has no finished candidate to publish.")
    registry.version_dir(version, root)  # validates the name
    if registry.version_dir(version, root).exists():
        raise registry.ModelVersionError(f"Model version '{version}' already exists; choose another name.")
    staging = registry.new_staging_dir(root)
    try:
        for item in candidate.iterdir():
            shutil.copy2(item, staging / item.name)
        card = ModelCard.load(staging / registry.CARD_FILE)
        card.version = version
        card.created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        card.save(staging / registry.CARD_FILE)
        target = registry.publish(staging, version, activate=activate, root=root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_event(run_dir, "published", version=version, activated=activate)
    return target


def new_run_dir(config: TrainConfig, runs_root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = runs_root / f"{stamp}-{config.arch}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = runs_root / f"{stamp}-{config.arch}-{suffix}"
    run_dir.mkdir(parents=True)
    return run_dir


def run(config: TrainConfig, run_dir: Path, verbose: bool = True) -> Path:
    """Train, evaluate and write the candidate for ``run_dir`` (new or interrupted); returns the candidate."""
    from train.trainer.architectures import ARCHITECTURES

    atomic.write_json(run_dir / CONFIG_FILE, asdict(config))
    input_size = ARCHITECTURES[config.arch]["input_size"]
    data = prepare_data(config, input_size, split_file=run_dir / SPLIT_FILE)
    if not (run_dir / SPLIT_FILE).is_file():
        with atomic.atomic_path(run_dir / SPLIT_FILE) as temporary:
            data.frame.to_csv(temporary, index=False)
    model, class_weights, device, state = fit(config, data, run_dir, verbose)
    if CANCEL_REQUESTED.is_set():  # a cancel that arrived while Keras or TensorFlow code swallowed it
        raise KeyboardInterrupt("cancelled")
    write_event(run_dir, "evaluating")
    evaluation = evaluate(model, data)
    fit_flags(model, data, evaluation)
    candidate = write_candidate(model, config, data, evaluation, class_weights, device, state, run_dir)
    test = evaluation["metrics"]["test"]
    write_event(
        run_dir,
        "done",
        candidate=str(candidate),
        temperature=evaluation["temperature"],
        val_accuracy=evaluation["metrics"]["validation"]["accuracy"]["value"],
        test_accuracy=test["accuracy"]["value"],
        test_macro_auc=(test["macro_auc"] or {}).get("value"),
    )
    return candidate
