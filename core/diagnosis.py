"""One reading of one study, as the reader sees it: calibrated probabilities, the call at the version's operating
point, the Grad-CAM / Grad-CAM++ maps of the called class, and the flags.

``look_batch`` is ONE compiled forward/backward pass: the forward pass gives the logits, the penultimate embedding
and the orientation features the flag detector needs; the operating point's call is made in the graph, so the
backward pass explains the called class straight away (``core.operating_point.decide`` checks it afterwards).
``assess_batch`` adds the flags, which need one more forward pass over the mirror images (the ``uncertain`` flag's
test-time augmentation): the page shows the probabilities and the overlay first and the flags right after. The
maps are ``core.gradcam``'s.
"""

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from core import gradcam
from core.card import ModelCard
from core.flags import POOLED_FEATURES_LAYER, UNCERTAIN_CALL, Assessment, add_model_flags, from_hints, operating_score
from core.gradcam import GRADCAM, GRADCAM_PLUS_PLUS
from core.inference import LOGITS_LAYER, flag_features, softmax
from core.operating_point import ABNORMAL, NORMAL, Decision, decide

__all__ = [
    "Look",
    "Reading",
    "reading_pass",
    "compile_reading_pass",
    "called_classes",
    "rule",
    "look_batch",
    "assess_batch",
    "read_batch",
    "read",
    "number",
    "call_sentence",
]

READING_PASS = "reading"  # key prefix of the compiled pass in ``predictor.explainers``


@dataclass(frozen=True)
class Look:
    """What one pass gives for one image: calibrated probabilities (C,), the call, the explained class's index
    and its maps {method: (h, w)} in [0, 1] at ``layer``'s resolution, and what the flag detector needs."""

    probabilities: np.ndarray
    decision: Decision
    target: int
    maps: dict
    layer: str
    embedding: np.ndarray
    features: np.ndarray


@dataclass(frozen=True)
class Reading:
    """A ``Look`` and the flags (``assessment``), which also need the mirror image's probabilities."""

    look: Look
    assessment: Assessment


def reading_pass(predictor, layer: str):
    """The compiled pass for ``layer`` (built once per predictor and layer; see ``compile_reading_pass``)."""
    key = (READING_PASS, layer)
    if key not in predictor.explainers:
        predictor.explainers[key] = compile_reading_pass(predictor.model, layer, predictor.temperature)
    return predictor.explainers[key]


def compile_reading_pass(model, layer: str, temperature: float):
    """(images (N, S, S, 3), explained (N,) class indices or -1 for the call, rule) → (logits (N, C), targets
    (N,), Grad-CAM (N, h, w), Grad-CAM++ (N, h, w), embeddings (N, D), flag features (N, F)).

    ``rule`` = (index, threshold, abnormal) is the operating point: with ``abnormal`` false, class ``index`` is
    called when its calibrated probability is ≥ threshold and excluded otherwise; with ``abnormal`` true
    (``index`` = Normal), Normal is excluded when 1 − p(Normal) ≥ threshold and called otherwise; the call is
    the most probable class left. Index -1: no operating point (the most probable class). The caller checks the
    target against ``decide`` (float ties could differ) and explains again when it does not match."""
    import keras

    probe = gradcam.gradient_model(model, layer)
    logits_layer = model.get_layer(LOGITS_LAYER)
    try:
        pooled = [model.get_layer(POOLED_FEATURES_LAYER).output]
    except ValueError:
        pooled = []
    probe = keras.Model(model.inputs, [*probe.outputs, logits_layer.input, *pooled])
    signature = [
        tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.float32),
        tf.TensorSpec([], tf.bool),
    ]

    @tf.function(input_signature=signature)
    def run(images, explained, index, threshold, abnormal):
        with tf.GradientTape() as tape:
            features, logits, embeddings, *pools = probe(images, training=False)
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32) / temperature)
            called = called_classes(probabilities, index, threshold, abnormal)
            targets = tf.where(explained < 0, called, explained)
            score = gradcam.target_score(logits, targets)
        return (
            logits,
            targets,
            *gradcam.maps(tape, score, features),
            embeddings,
            flag_features(images, embeddings, pools),
        )

    return run


def called_classes(probabilities, index, threshold, abnormal):
    """The operating point's call of each row of ``probabilities`` in the graph (see ``compile_reading_pass``)."""
    if_positive = tf.where(abnormal, 1.0 - probabilities[:, index], probabilities[:, index]) >= threshold
    force = tf.not_equal(if_positive, abnormal)  # positive class: called; abnormal: Normal called when not
    column = tf.one_hot(index, tf.shape(probabilities)[1], on_value=True, off_value=False)[tf.newaxis]
    extreme = tf.where(force, 2.0, -1.0)[:, tf.newaxis]
    adjusted = tf.where(tf.logical_and(column, index >= 0), extreme, probabilities)
    return tf.argmax(adjusted, axis=-1, output_type=tf.int32)


def rule(card: ModelCard, class_names) -> tuple:
    """The card's operating point as the pass's ``rule`` arguments (index, threshold, abnormal)."""
    point = card.operating_point or {}
    if not point:
        return -1, 0.0, False
    names = list(class_names)
    if point["positive_class"] == ABNORMAL:
        return names.index(NORMAL), float(point["threshold"]), True
    return names.index(point["positive_class"]), float(point["threshold"]), False


def look_batch(predictor, images, card=None, layer=None, explained_class=None) -> list:
    """A ``Look`` per model input of ``images`` (N, S, S, 3) at the operating point of ``card`` (default: the one
    loaded with the model), explaining ``explained_class`` (default: each image's call) at ``layer`` (default:
    the card's Grad-CAM layer): one forward/backward pass, a second only where a float tie made the graph's call
    differ from ``decide``'s."""
    card = card or predictor.card
    layer = layer or card.gradcam_layer
    names = list(predictor.class_names)
    images = np.asarray(images, dtype=np.float32)
    explained = np.full(len(images), -1 if explained_class is None else names.index(explained_class), np.int32)
    run = reading_pass(predictor, layer)
    outputs = [t.numpy() for t in run(images, explained, *rule(card, names))]
    probabilities = softmax(outputs[0], predictor.temperature)
    decisions = [decide(row, names, card.operating_point) for row in probabilities]
    wanted = np.array([names.index(d.label) for d in decisions], np.int32) if explained_class is None else explained
    if not np.array_equal(wanted, outputs[1]):
        outputs = [t.numpy() for t in run(images, wanted, *rule(card, names))]
    _, targets, grad_cams, plus_pluses, embeddings, features = outputs
    return [
        Look(p, d, int(t), {GRADCAM: g, GRADCAM_PLUS_PLUS: pp}, layer, e, f)
        for p, d, t, g, pp, e, f in zip(probabilities, decisions, targets, grad_cams, plus_pluses, embeddings, features)
    ]


def assess_batch(predictor, looks, images, hints=None, card=None) -> list:
    """The flags (an ``Assessment`` each) of images already looked at: the reader's ``hints``, the detector's
    flags (one more forward pass, over the mirror images, for ``uncertain``) and ``borderline`` at ``card``'s
    operating point."""
    card = card or predictor.card
    assessments = [from_hints(image_hints) for image_hints in (hints or [[] for _ in looks])]
    probabilities = np.stack([look.probabilities for look in looks])
    scores = None
    if predictor.detector is not None:
        mirrored = predictor.probabilities(np.asarray(images, dtype=np.float32)[:, :, ::-1])
        scores = predictor.detector.scores(
            np.stack([look.embedding for look in looks]),
            np.stack([look.features for look in looks]),
            probabilities,
            mirrored,
        )
    add_model_flags(assessments, probabilities, predictor.class_names, card.operating_point, predictor.detector, scores)
    return assessments


def read_batch(predictor, images, hints=None, card=None, layer=None) -> list:
    """A ``Reading`` (look and flags) per model input of ``images``; see ``look_batch`` and ``assess_batch``."""
    looks = look_batch(predictor, images, card, layer)
    return [Reading(look, a) for look, a in zip(looks, assess_batch(predictor, looks, images, hints, card))]


def read(predictor, image, hints=(), card=None, layer=None) -> Reading:
    """The ``Reading`` of one model input (S, S, 3)."""
    return read_batch(predictor, np.asarray(image)[np.newaxis], [list(hints)], card, layer)[0]


def number(value: float) -> str:
    """A probability or threshold for reading: two decimals, three below 0.1 (0.055 is not 0.06)."""
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


def call_sentence(decision: Decision, probabilities, assessment: Assessment, class_names, card: ModelCard) -> str:
    """The call in words, with the rule that made it, e.g. "Called COVID-19: p = 0.41 ≥ threshold 0.29, although
    Normal is more probable"; "Uncertain — read without the model" first when a flag says so."""
    names = list(class_names)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    label = decision.label
    most_probable = names[int(np.argmax(probabilities))]
    point = card.operating_point or {}
    if not point:
        sentence = f"Called {label}: the most probable class (no operating point saved)"
    else:
        positive, threshold = point["positive_class"], float(point["threshold"])
        score = operating_score(probabilities, names, point)
        what = "1 − p(Normal)" if positive == ABNORMAL else "p" if label == positive else f"p({positive})"
        if score >= threshold:
            sentence = f"Called {label}: {what} = {number(score)} ≥ threshold {number(threshold)}"
            if positive == ABNORMAL:
                sentence += f"; {label} is the most probable abnormal class"
        else:
            sentence = f"Called {label}: {what} = {number(score)} < threshold {number(threshold)}"
            sentence += "; the most probable other class" if positive != ABNORMAL else ""
        if most_probable != label:
            sentence += f", although {most_probable} is more probable"
    if assessment.out_of_depth:
        return f"{UNCERTAIN_CALL[0].upper()}{UNCERTAIN_CALL[1:]}. The model's output would be: {sentence}"
    return sentence
