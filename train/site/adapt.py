"""A site version from a base version and a site's labelled films.

The films are split by patient: either cross-fitted (default: every film is scored by a model whose whole
procedure — the method's choice included — never saw it; the published model is then fitted on all films) or
with a held-out part (``held_out`` > 0: the published model is the one fitted on the rest, and the held-out part is
scored by it). Inside, the method is chosen by patient-grouped inner cross-validation among ``train.site.methods``'
candidates, on macro AUC; the temperature and the operating point (COVID-19 at the site's target sensitivity) come
from the chosen candidate's cross-validated scores — site data, never the held-out films. The site version's flag
detectors are refitted on its own embedding (replay pool and the site's films).
"""

import datetime
import logging
import shutil
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from core import registry, settings
from core.calibration import fit_temperature, reliability_bins
from core.card import ModelCard, write_predictions
from core.inference import Predictor, logits_model, softmax
from core.metrics import classification_report, per_source_reports
from core.operating_point import called_indices
from core.preprocess import Preprocessing
from core.site import checked_site_name
from train.site.figures import site_figures, validation_entry
from train.site.films import check_classes, read_films
from train.site.methods import (
    METHODS,
    TUNED_PREFIX,
    Candidate,
    FrozenFeatures,
    candidates,
    ensemble_candidate,
    ensemble_model,
    fine_tune,
    fit_head,
    fit_recalibration,
    head_logits,
    head_model,
    recalibrated_logits,
    recalibrated_model,
)
from train.trainer.architectures import conv_layer_names
from train.trainer.cache import load_resized
from train.trainer.datasets import DatasetError, label_indices, scan_datasets
from train.trainer.flags import fit_detector
from train.trainer.progress import CANCEL_REQUESTED
from train.trainer.shift import POSITIVE, automatic_operating_point, present_macro_auc

__all__ = [
    "adapt",
    "SiteContext",
    "patient_folds",
    "cross_validate",
    "ranked",
    "pick",
    "finish",
    "choose",
    "DEFAULT_TARGET",
    "OUTER_FOLDS",
    "INNER_FOLDS",
]

log = logging.getLogger(__name__)

DEFAULT_TARGET = 0.90  # COVID-19 sensitivity; at the AUC ~80 films reach, 97.5 % calls most non-COVID films COVID-19
OUTER_FOLDS = 3
INNER_FOLDS = 4
REPLAY_PER_CLASS = 150
TIE = 0.005  # inner-CV macro AUCs this close are a tie, won by the simpler candidate


@dataclass
class SiteContext:
    """What every candidate reads: the base version, its frozen outputs on the site's films, the replay pool."""

    predictor: Predictor
    inputs: np.ndarray
    labels: np.ndarray
    patients: np.ndarray
    base_logits: np.ndarray
    features: dict
    extractor: FrozenFeatures
    replay_inputs: np.ndarray = None
    replay_labels: np.ndarray = None
    replay_note: str = ""
    progress: object = None

    @property
    def classes(self) -> int:
        return len(self.predictor.class_names)

    def report(self, stage: str, done: int, total: int) -> None:
        if CANCEL_REQUESTED.is_set():
            raise KeyboardInterrupt("cancelled")
        if self.progress:
            self.progress(stage, done, total)


def patient_folds(labels, patients, folds: int, seed: int = 0) -> list:
    """(train rows, scored rows) of a stratified, patient-grouped K-fold: as many folds as the rarest class's
    patients allow, at most ``folds``; ``ValueError`` when fewer than two are possible."""
    labels, patients = np.asarray(labels), np.asarray(patients)
    fewest = min(len(set(patients[labels == c])) for c in np.unique(labels))
    k = min(folds, fewest)
    if k < 2:
        raise ValueError("Too few patients of a class to hold any out; add films of more patients.")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, patients))


class Fitted:
    """A candidate fitted on some films: logits for any films of the set, and the Keras model it publishes as."""

    def __init__(self, candidate, context: SiteContext, rows, seed: int = 0):
        self.candidate, self.context = candidate, context
        labels = context.labels[rows]
        if candidate.method == "ensemble":
            self.members = [
                Fitted(Candidate("head", candidate.settings["head"]), context, rows, seed),
                Fitted(Candidate("finetune", candidate.settings["finetune"]), context, rows, seed),
            ]
        elif candidate.method == "recalibration":
            self.temperature, self.offsets = fit_recalibration(context.base_logits[rows], labels, context.classes)
        elif candidate.method == "head":
            features = {name: values[rows] for name, values in context.features.items()}
            self.head = fit_head(
                features, labels, candidate.settings["features"], candidate.settings["C"], context.classes
            )
        else:
            self.model = fine_tune(
                context.predictor.model,
                context.inputs[rows],
                labels,
                context.replay_inputs,
                context.replay_labels,
                context.classes,
                candidate.settings["lr"],
                candidate.settings["epochs"],
                seed,
            )

    def logits(self, rows) -> np.ndarray:
        context = self.context
        if self.candidate.method == "ensemble":
            return np.mean([member.logits(rows) for member in self.members], axis=0)
        if self.candidate.method == "recalibration":
            return recalibrated_logits(context.base_logits[rows], self.temperature, self.offsets)
        if self.candidate.method == "head":
            return head_logits(self.head, {name: values[rows] for name, values in context.features.items()})
        forward = logits_model(self.model)
        return np.concatenate(
            [
                np.asarray(forward([context.inputs[rows][i : i + 256]], training=False), np.float64)
                for i in range(0, len(rows), 256)
            ]
        )

    def keras_model(self):
        base = self.context.predictor.model
        if self.candidate.method == "ensemble":
            head, tuned = self.members
            return ensemble_model(base, self.context.predictor.card.gradcam_layer, head.head, tuned.model)
        if self.candidate.method == "recalibration":
            return recalibrated_model(base, self.temperature, self.offsets)
        if self.candidate.method == "head":
            return head_model(base, self.context.predictor.card.gradcam_layer, self.head)
        return self.model


@dataclass
class Choice:
    """The outcome of one adaptation procedure on some films."""

    fitted: Fitted
    table: list  # every candidate's inner-CV macro AUC
    rows: np.ndarray
    oof_logits: np.ndarray  # the chosen candidate's inner-CV logits of ``rows``
    temperature: float
    operating_point: dict


def cross_validate(context: SiteContext, rows, pool, seed: int = 0, stage: str = "choosing") -> dict:
    """Every candidate's inner cross-validated logits of ``rows`` (patient-grouped folds of ``rows``)."""
    rows = np.asarray(rows)
    folds = patient_folds(context.labels[rows], context.patients[rows], INNER_FOLDS, seed)
    oof = {candidate: np.zeros((len(rows), context.classes)) for candidate in pool}
    steps, done = len(folds) * len(pool) + 1, 0
    for train, scored in folds:
        for candidate in pool:
            oof[candidate][scored] = Fitted(candidate, context, rows[train], seed).logits(rows[scored])
            done += 1
            context.report(stage, done, steps)
    return oof


def with_ensemble(pool, oof: dict, labels, methods) -> tuple:
    """``pool`` and ``oof`` with the ensemble of the best head and the fine-tuned network, when asked for and both
    are in the pool (its inner-CV logits come free: the mean of theirs)."""
    found = ensemble_candidate(pool, oof, labels, lambda y, logits: present_macro_auc(y, softmax(logits)))
    if "ensemble" not in methods or found is None:
        return pool, oof
    candidate, logits = found
    return [*pool, candidate], {**oof, candidate: logits}


def ranked(pool, oof: dict, labels) -> list:
    """The candidates' inner-CV macro AUCs, best first, each with its ``rank`` (simplicity)."""
    rows = [
        {
            "candidate": c.name,
            "method": c.method,
            "settings": c.settings,
            "rank": c.rank,
            "macro_auc": present_macro_auc(labels, softmax(oof[c])),
        }
        for c in pool
    ]
    return sorted(rows, key=lambda row: (-(row["macro_auc"] or 0.0), row["rank"]))


def pick(pool, table: list, methods=METHODS):
    """The best candidate of ``methods`` by inner-CV macro AUC; within ``TIE`` of the best, the simplest."""
    allowed = [row for row in table if row["method"] in methods]
    best = allowed[0]["macro_auc"] or 0.0
    winner = min((row for row in allowed if (row["macro_auc"] or 0.0) >= best - TIE), key=lambda row: row["rank"])
    return next(c for c in pool if c.name == winner["candidate"])


def finish(context: SiteContext, rows, chosen, oof_logits, table, target: float, seed: int = 0) -> Choice:
    """``chosen`` fitted on all ``rows``, with a temperature and an operating point from its inner-CV logits."""
    rows = np.asarray(rows)
    labels = context.labels[rows]
    fitted = Fitted(chosen, context, rows, seed)
    temperature = fit_temperature(oof_logits, labels)
    point = site_operating_point(labels, softmax(oof_logits, temperature), target)
    table = [{**row, "chosen": row["candidate"] == chosen.name} for row in table]
    return Choice(fitted, table, rows, oof_logits, temperature, point)


def site_operating_point(labels, probs, target: float):
    """COVID-19 at the highest threshold whose sensitivity reaches ``target`` on the site's cross-validated scores
    (the plain estimate: measured against a bootstrap-lowered threshold on held-out halves, it kept the target
    with far fewer non-COVID films called COVID-19); None without COVID-19 films."""
    point = automatic_operating_point(labels, probs, POSITIVE, target)
    if point is None:
        return None
    return {
        **point,
        "chosen_on": "site",  # "chosen on site data"
        "scores": "cross-validated (inner, patient-grouped folds) scores of the site's adaptation films",
    }


def choose(context: SiteContext, rows, methods, target: float, seed: int = 0, stage: str = "choosing") -> Choice:
    """Inner cross-validation of every candidate of ``methods`` on ``rows``; the best (ties to the simpler) fitted
    on all ``rows``, with a temperature and an operating point from its cross-validated scores."""
    rows = np.asarray(rows)
    pool = candidates(methods, context.extractor.has_pooled)
    oof = cross_validate(context, rows, pool, seed, stage)
    pool, oof = with_ensemble(pool, oof, context.labels[rows], methods)
    table = ranked(pool, oof, context.labels[rows])
    chosen = pick(pool, table, methods)
    choice = finish(context, rows, chosen, oof[chosen], table, target, seed)
    context.report(stage, 1, 1)
    return choice


def site_context(predictor, films, progress=None, replay_per_class=REPLAY_PER_CLASS, seed=0) -> SiteContext:
    extractor = FrozenFeatures(predictor.model, predictor.card.gradcam_layer)
    logits, features = extractor(films.inputs)
    replay_inputs, replay_labels, note = replay_pool(predictor.card, replay_per_class, seed)
    return SiteContext(
        predictor,
        films.inputs,
        films.labels(predictor.class_names),
        films.patients,
        logits,
        features,
        extractor,
        replay_inputs,
        replay_labels,
        note,
        progress,
    )


def replay_pool(card, per_class: int, seed: int = 0) -> tuple:
    """(model inputs, labels, note) of up to ``per_class`` films per class from the base version's training
    folders (its held-out source left out), through the training cache; (None, None, why) without them."""
    folders = [settings.local_data_path(folder) for folder in card.training.get("data", [])]
    folders = [folder for folder in folders if folder.is_dir()]
    if not folders or per_class <= 0:
        return None, None, "no replay: the base version's training folders are not on this machine"
    try:
        frame = scan_datasets(folders, every_class=False)
    except DatasetError as error:
        return None, None, f"no replay: {error}"
    held_out = card.training.get("leave_out_source")
    if held_out:
        frame = frame[frame["source"] != held_out]
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(
            np.flatnonzero(frame["label"] == name), min(per_class, int((frame["label"] == name).sum())), replace=False
        )
        for name in card.class_names
        if (frame["label"] == name).any()
    ]
    frame = frame.iloc[np.sort(np.concatenate(picked))]
    size = int(card.input_size)
    arrays, readable, _ = load_resized(frame["path"].tolist(), (size,), preprocessing=Preprocessing.from_card(card))
    images = arrays[size][readable].astype(np.float32) / 255.0
    labels = label_indices(frame["label"][readable], card.class_names)
    names = ", ".join(settings.portable_data_path(folder) for folder in folders)
    return np.repeat(images[..., None], 3, axis=-1), labels, f"{len(labels)} films of {names} replayed"


def held_out_scores(context: SiteContext, methods, target: float, held_out: float, seed: int) -> tuple:
    """(final Choice, held-out rows, their probabilities, their calls, folds note). Cross-fitted when
    ``held_out`` is 0, else one patient-grouped held-out part of about that fraction."""
    names = list(context.predictor.class_names)
    everything = np.arange(len(context.labels))
    if held_out > 0:
        folds = patient_folds(context.labels, context.patients, max(2, round(1 / held_out)), seed)
        adaptation, scored = folds[0]
        choice = choose(context, adaptation, methods, target, seed)
        probs = softmax(choice.fitted.logits(scored), choice.temperature)
        return (
            choice,
            scored,
            probs,
            called_indices(probs, names, choice.operating_point),
            (f"held-out part: {len(scored)} films of patients never used to adapt"),
        )
    rows, probs, calls = [], [], []
    outer = patient_folds(context.labels, context.patients, OUTER_FOLDS, seed)
    for index, (adaptation, scored) in enumerate(outer):
        fold = choose(context, adaptation, methods, target, seed, stage=f"cross-fitting {index + 1}/{len(outer)}")
        fold_probs = softmax(fold.fitted.logits(scored), fold.temperature)
        rows.append(scored)
        probs.append(fold_probs)
        calls.append(called_indices(fold_probs, names, fold.operating_point))
    choice = choose(context, everything, methods, target, seed, stage="fitting on all films")
    order = np.concatenate(rows)
    return (
        choice,
        order,
        np.concatenate(probs),
        np.concatenate(calls),
        (
            f"cross-fitted over {len(outer)} patient-grouped folds: each film scored by a model whose method, "
            "temperature and operating point were chosen without it"
        ),
    )


def adapt(
    folder,
    site: str,
    publish: str,
    base_version=None,
    activate=False,
    held_out=0.0,
    target=DEFAULT_TARGET,
    methods=METHODS,
    who: str = "",
    seed: int = 0,
    progress=None,
    root=None,
) -> dict:
    """Make, measure and publish the site version ``publish``; returns its summary (what the CLI prints)."""
    site = checked_site_name(site)
    registry.version_dir(publish, root)  # a valid name, before any work
    if registry.version_dir(publish, root).exists():
        raise registry.ModelVersionError(f"Model version '{publish}' already exists; choose another name.")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(f"Unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}.")
    predictor = Predictor(base_version, root)
    names = list(predictor.class_names)
    films = read_films(folder, predictor, names)
    check_classes(films.counts(names), films.skipped, films.root, every_class=True)
    context = site_context(predictor, films, progress, seed=seed)
    choice, scored, probs, calls, design = held_out_scores(context, methods, target, held_out, seed)
    labels = context.labels[scored]
    base_probs = softmax(context.base_logits[scored], predictor.temperature)
    site_version = site_figures(labels, probs, names, None, context.patients[scored], called=calls)
    base_figures = site_figures(labels, base_probs, names, predictor.card.operating_point, context.patients[scored])
    model = choice.fitted.keras_model()
    context.report("refitting the flags", 0, 1)
    detector, flags, point = refit_flags(model, choice, context)
    held = {"labels": labels, "probabilities": probs, "site_version": site_version, "base_version": base_figures}
    card = site_card(
        predictor.card,
        model,
        choice,
        point,
        flags,
        site,
        who,
        films,
        design,
        held,
        context.replay_note,
        held_out,
        target,
    )
    staging = registry.new_staging_dir(root)
    try:
        model.save(staging / registry.MODEL_FILE)
        detector.save(staging)
        write_site_predictions(
            staging / registry.VAL_PREDICTIONS,
            films.frame.iloc[choice.rows],
            softmax(choice.oof_logits, choice.temperature),
            names,
            site,
        )
        write_site_predictions(staging / registry.TEST_PREDICTIONS, films.frame.iloc[scored], probs, names, site)
        card.version = publish
        card.created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        card.save(staging / registry.CARD_FILE)
        registry.publish(staging, publish, activate=activate, root=root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    context.report("published", 1, 1)
    return {
        "version": publish,
        "base_version": predictor.version,
        "site": site,
        "activated": activate,
        **card.site_adaptation,
        "skipped_files": films.skipped,
    }


def refit_flags(model, choice: Choice, context: SiteContext) -> tuple:
    """The site version's flag detector, fitted on its own embedding: the replay pool and the site's films as the
    'training' images, the adaptation films as the validation images that set the flag thresholds."""

    def uint8(inputs):
        return np.round(np.asarray(inputs)[..., 0] * 255).astype(np.uint8)

    site_images, site_labels = uint8(context.inputs[choice.rows]), context.labels[choice.rows]
    train_images, train_labels = site_images, site_labels
    if context.replay_inputs is not None:
        train_images = np.concatenate([uint8(context.replay_inputs), site_images])
        train_labels = np.concatenate([context.replay_labels, site_labels])
    return fit_detector(
        model, choice.temperature, train_images, train_labels, site_images, site_labels, choice.operating_point
    )


def write_site_predictions(path, frame, probs, class_names, site: str) -> None:
    rows = frame.assign(path=[f"{site}/{name}" for name in frame["name"]], source=site, population="site")
    write_predictions(path, rows, probs, class_names)


def site_report(labels, probs, class_names, site: str) -> dict:
    """A card's figures for one split of site films (``core.metrics``), with the site as its one source."""
    report = classification_report(labels, probs, class_names)
    report["ece_uncalibrated"] = None
    report["reliability"] = reliability_bins(labels, probs)
    for column in ("source", "population"):
        report[f"per_{column}"] = per_source_reports(labels, probs, np.full(len(labels), site), class_names)
    return report


def site_card(
    base: ModelCard,
    model,
    choice: Choice,
    point,
    flags,
    site,
    who,
    films,
    design,
    held: dict,
    replay_note,
    held_out,
    target,
) -> ModelCard:
    """The site version's card: the base's facts, the adaptation, and the held-out figures beside the base's
    (``held``: the held-out films' labels and probabilities, and both versions' figures on them)."""
    names = list(base.class_names)
    oof_probs = softmax(choice.oof_logits, choice.temperature)
    oof_labels = label_indices(films.frame["label"].iloc[choice.rows], names)
    entry = validation_entry(
        site,
        who,
        held["site_version"],
        held["base_version"],
        films.data_sha256,
        films.skipped,
        kind="adaptation (held-out films)",
        trained_elsewhere=False,
    )
    chosen = next(row for row in choice.table if row["chosen"])
    adaptation = {
        "base_version": base.version,
        "site": site,
        "method": chosen["method"],
        "settings": chosen["settings"],
        "candidates": choice.table,
        "design": design,
        "held_out_fraction": held_out,
        "target_sensitivity": target,
        "films": films.counts(names),
        "patients": int(len(set(films.patients.tolist()))),
        "data_sha256": films.data_sha256,
        "replay": replay_note if chosen["method"] == "finetune" else "not used by the chosen method",
        "flags": "refitted on the site version's own embedding (replay pool and the site's adaptation films)",
        "held_out": {"site_version": held["site_version"], "base_version": held["base_version"]},
        "who": who,
    }
    return ModelCard(
        architecture=base.architecture,
        architecture_reference=f"{base.architecture_reference}; adapted to {site} ({chosen['candidate']})",
        parameters=int(model.count_params()),
        initialisation=f"{base.version}, adapted to site {site} by train.site",
        input_size=base.input_size,
        class_names=base.class_names,
        gradcam_layer=TUNED_PREFIX + base.gradcam_layer if chosen["method"] == "ensemble" else base.gradcam_layer,
        conv_layers=conv_layer_names(model),
        preprocessing=base.preprocessing,
        temperature=choice.temperature,
        operating_point=point,
        flags=flags,
        training=base.training,
        seed=base.seed,
        data=base.data,
        libraries=base.libraries,
        metrics={
            "validation": site_report(oof_labels, oof_probs, names, site),
            "test": site_report(held["labels"], held["probabilities"], names, site),
        },
        sites=[entry],
        site_adaptation=adaptation,
        caveat=f"{base.caveat} Adapted to {site} on {len(films.frame)} of its films; measured there on held-out "
        "films only (see site_adaptation).",
    )
