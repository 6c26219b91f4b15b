"""The ways to adapt a version to a site's films, each a candidate that ``train.site.adapt`` fits on some films
and scores on others:

- ``recalibration``: a temperature and class offsets on the version's logits (a prior shift; Saerens et al. 2002);
- ``head``: a class-balanced logistic head on frozen features of the version — its penultimate embedding, the
  DCNN's pooled block features, the Grad-CAM layer's average-pooled maps — standardised, L2 strength ``C``;
- ``finetune``: the whole network, end to end at a small learning rate, with replay of the training pool
  (rehearsal) so that it does not forget, flips, class-balanced;
- ``ensemble``: the mean of the logits of the best head and of the fine-tuned network (one flat model holding
  both trunks; its Grad-CAM layer is the fine-tuned trunk's).

Every candidate ends in a plain Keras model whose ``logits`` layer is the new decision: the standardisation and the
temperature of recalibration are folded into that layer's weights, so a site version is a version like any other
(Grad-CAM reaches the same conv layers, the flags refit on its own embedding).
"""

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression

from core.flags import POOLED_FEATURES_LAYER
from core.inference import LOGITS_LAYER
from train.trainer.progress import StopWhenCancelled

__all__ = [
    "ensemble_candidate",
    "ensemble_model",
    "Candidate",
    "candidates",
    "FrozenFeatures",
    "fit_recalibration",
    "fit_head",
    "head_logits",
    "fine_tune",
    "head_model",
    "recalibrated_model",
    "METHODS",
    "FEATURE_SETS",
    "HEAD_STRENGTHS",
]

METHODS = ("recalibration", "head", "finetune", "ensemble")
FEATURE_SETS = ("embedding", "embedding+pooled", "embedding+pooled+gap")
HEAD_STRENGTHS = (0.01, 0.05, 0.2)  # inverse L2 strength of the logistic head, chosen by inner cross-validation
FINETUNE_LR = 3e-5
FINETUNE_EPOCHS = 15
FINETUNE_BATCH = 32
GAP_LAYER = "site_gradcam_gap"
FEATURES_LAYER = "site_features"
TUNED_PREFIX = "tuned_"  # the fine-tuned trunk's layer names inside an ensemble
ABSENT_CLASS_LOGIT = -30.0  # a class without site films is never called by the head


@dataclass(frozen=True)
class Candidate:
    """One method with its settings; ``rank`` orders ties simplest first."""

    method: str
    settings: dict = field(default_factory=dict, hash=False, compare=False)
    rank: int = 0

    @property
    def name(self) -> str:
        shown = ", ".join(f"{key} {value}" for key, value in self.settings.items())
        return f"{self.method} ({shown})" if shown else self.method


def candidates(methods, has_pooled: bool) -> list:
    """The candidates of ``methods``, simplest first: the head over every feature set the model has and every
    strength; fine-tuning at the published setting (Zhong's trunk: LR 3e-5, 15 epochs)."""
    found = []
    if "recalibration" in methods:
        found.append(Candidate("recalibration", {}, 0))
    if "head" in methods or "ensemble" in methods:  # an ensemble is made of the best head and the fine-tuned net
        sets = [name for name in FEATURE_SETS if has_pooled or "pooled" not in name]
        found += [
            Candidate("head", {"features": name, "C": c}, 1 + i)
            for i, (name, c) in enumerate((name, c) for name in sets for c in HEAD_STRENGTHS)
        ]
    if "finetune" in methods or "ensemble" in methods:
        found.append(Candidate("finetune", {"lr": FINETUNE_LR, "epochs": FINETUNE_EPOCHS, "replay": True}, 100))
    return found


class FrozenFeatures:
    """The version's logits and frozen features of a batch, in one compiled pass: ``embedding`` (the input of its
    ``logits`` layer), ``pooled`` (the DCNN's pooled block features, when it has them), ``gap`` (the Grad-CAM layer's
    maps, average-pooled)."""

    def __init__(self, model, gradcam_layer: str):
        import keras

        self.model = model
        self.gradcam_layer = gradcam_layer
        tensors = feature_tensors(model, gradcam_layer)
        self.names = list(tensors)
        outputs = [model.get_layer(LOGITS_LAYER).output, *tensors.values()]
        self._extract = keras.Model(model.inputs, outputs)

    @property
    def has_pooled(self) -> bool:
        return "pooled" in self.names

    def __call__(self, inputs, batch_size: int = 256) -> tuple:
        """(logits (N, C), {feature name: (N, F)}) of model inputs (N, S, S, 3)."""
        parts = [[] for _ in range(len(self.names) + 1)]
        for start in range(0, len(inputs), batch_size):
            outputs = self._extract([np.asarray(inputs[start : start + batch_size], np.float32)], training=False)
            for store, output in zip(parts, outputs):
                store.append(np.asarray(output, dtype=np.float64))
        logits, *features = (np.concatenate(store) for store in parts)
        return logits, dict(zip(self.names, features))


def feature_tensors(model, gradcam_layer: str) -> dict:
    """The symbolic feature tensors of ``model`` a head may read, by name."""
    from keras import layers

    tensors = {"embedding": model.get_layer(LOGITS_LAYER).input}
    try:
        tensors["pooled"] = model.get_layer(POOLED_FEATURES_LAYER).output
    except ValueError:
        pass
    tensors["gap"] = layers.GlobalAveragePooling2D(name=GAP_LAYER)(model.get_layer(gradcam_layer).output)
    return tensors


def feature_matrix(features: dict, feature_set: str) -> np.ndarray:
    return np.concatenate([features[name] for name in _parts(feature_set)], axis=1)


def _parts(feature_set: str) -> list:
    return feature_set.split("+")


def fit_recalibration(logits, labels, classes: int) -> tuple:
    """(temperature, class offsets) minimising the negative log-likelihood of softmax(logits / T + b), class-
    balanced so that the site's class mix is not learnt as a prior; the first offset is fixed at 0."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, int)
    weights = _balanced_weights(labels, classes)

    def nll(params):
        scores = log_softmax(logits / np.exp(params[0]) + np.concatenate([[0.0], params[1:]]), axis=1)
        return -(weights * scores[np.arange(len(labels)), labels]).sum() / weights.sum()

    result = minimize(
        nll,
        np.zeros(classes),
        method="L-BFGS-B",
        bounds=[(np.log(0.05), np.log(20.0))] + [(-10.0, 10.0)] * (classes - 1),
    )
    return float(np.exp(result.x[0])), np.concatenate([[0.0], result.x[1:]])


def recalibrated_logits(logits, temperature: float, offsets) -> np.ndarray:
    return np.asarray(logits, np.float64) / temperature + offsets


def _balanced_weights(labels, classes: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    return (len(labels) / (classes * np.maximum(counts, 1)))[labels]


@dataclass
class Head:
    """A fitted logistic head: standardisation and the linear map to the class logits."""

    feature_set: str
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (C, F)
    intercept: np.ndarray  # (C,)


def fit_head(features: dict, labels, feature_set: str, strength: float, classes: int) -> Head:
    """A class-balanced multinomial logistic head on standardised frozen features."""
    matrix = feature_matrix(features, feature_set)
    mean, scale = matrix.mean(axis=0), matrix.std(axis=0) + 1e-6
    model = LogisticRegression(C=strength, class_weight="balanced", max_iter=5000)
    model.fit((matrix - mean) / scale, labels)
    coef, intercept = np.zeros((classes, matrix.shape[1])), np.full(classes, ABSENT_CLASS_LOGIT)
    if len(model.classes_) == 2:  # scikit-learn's binary form: one row, for the second class
        coef[model.classes_] = np.stack([-model.coef_[0] / 2, model.coef_[0] / 2])
        intercept[model.classes_] = [-model.intercept_[0] / 2, model.intercept_[0] / 2]
    else:
        coef[model.classes_], intercept[model.classes_] = model.coef_, model.intercept_
    return Head(feature_set, mean, scale, coef, intercept)


def head_logits(head: Head, features: dict) -> np.ndarray:
    matrix = (feature_matrix(features, head.feature_set) - head.mean) / head.scale
    return matrix @ head.coef.T + head.intercept


def head_model(base, gradcam_layer: str, head: Head):
    """``base`` with ``head`` as its new ``logits`` layer (the standardisation folded into its weights)."""
    import keras
    from keras import layers

    tensors = feature_tensors(base, gradcam_layer)
    chosen = [tensors[name] for name in _parts(head.feature_set)]
    features = layers.Concatenate(name=FEATURES_LAYER)(chosen) if len(chosen) > 1 else chosen[0]
    dense = layers.Dense(len(head.intercept), name=LOGITS_LAYER)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(dense(features))
    model = keras.Model(base.inputs, outputs, name=f"{base.name}_site")
    kernel = (head.coef / head.scale).T
    dense.set_weights(
        [kernel.astype(np.float32), (head.intercept - head.coef @ (head.mean / head.scale)).astype(np.float32)]
    )
    return model


def recalibrated_model(base, temperature: float, offsets):
    """``base`` whose ``logits`` are divided by ``temperature`` and shifted by ``offsets`` (one new layer)."""
    import keras
    from keras import layers

    old = base.get_layer(LOGITS_LAYER)
    kernel, bias = old.get_weights()
    dense = layers.Dense(kernel.shape[1], name=LOGITS_LAYER)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(dense(old.input))
    model = keras.Model(base.inputs, outputs, name=f"{base.name}_site")
    dense.set_weights([(kernel / temperature).astype(np.float32), (bias / temperature + offsets).astype(np.float32)])
    return model


def ensemble_candidate(pool, oof: dict, labels, macro_auc):
    """(the ensemble of the best head by inner-CV ``macro_auc`` and the fine-tuned network, its inner-CV logits:
    the mean of theirs), or None when the pool lacks either."""
    heads = [c for c in pool if c.method == "head"]
    tuned = next((c for c in pool if c.method == "finetune"), None)
    if not heads or tuned is None:
        return None
    head = max(heads, key=lambda c: (macro_auc(labels, oof[c]) or 0.0, -c.rank))
    candidate = Candidate("ensemble", {"head": head.settings, "finetune": tuned.settings}, 101)
    return candidate, (oof[head] + oof[tuned]) / 2


def ensemble_model(base, gradcam_layer: str, head: Head, tuned):
    """One flat model: ``base``'s frozen features with ``head``, and a copy of the fine-tuned model ``tuned`` (layers
    renamed ``tuned_…``) on the same input; its ``logits`` are the mean of both members' logits."""
    import keras
    from keras import layers

    def prefixed(layer):
        config = layer.get_config()
        config["name"] = TUNED_PREFIX + layer.name
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(tuned, input_tensors=base.inputs[0], clone_function=prefixed)
    copy.set_weights(tuned.get_weights())
    tuned_logits = copy.get_layer(TUNED_PREFIX + LOGITS_LAYER)
    tensors = feature_tensors(base, gradcam_layer)
    features = layers.Concatenate(name=FEATURES_LAYER)(
        [tensors[name] for name in _parts(head.feature_set)] + [tuned_logits.input]
    )
    dense = layers.Dense(len(head.intercept), name=LOGITS_LAYER)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(dense(features))
    model = keras.Model(base.inputs, outputs, name=f"{base.name}_site_ensemble")
    tuned_kernel, tuned_bias = tuned_logits.get_weights()
    kernel = np.concatenate([(head.coef / head.scale).T, tuned_kernel]) / 2
    bias = (head.intercept - head.coef @ (head.mean / head.scale) + tuned_bias) / 2
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


def copy_model(model):
    """An independent float32 copy of ``model`` with its weights."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def fine_tune(
    base,
    inputs,
    labels,
    replay_inputs,
    replay_labels,
    classes: int,
    lr=FINETUNE_LR,
    epochs=FINETUNE_EPOCHS,
    seed: int = 0,
):
    """A copy of ``base`` trained end to end on the site's ``inputs`` (N, S, S, 3) plus, each epoch, as many films
    drawn from the replay pool (when there is one): random horizontal flips, site films class-balanced, Adam."""
    import keras

    model = copy_model(base)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.CategoricalCrossentropy())
    rng = np.random.default_rng(seed)
    site_weights = _balanced_weights(np.asarray(labels, int), classes)
    for _ in range(epochs):
        x, y, w = np.asarray(inputs, np.float32), np.asarray(labels, int), site_weights
        if replay_inputs is not None and len(replay_inputs):
            drawn = rng.choice(len(replay_inputs), min(len(inputs), len(replay_inputs)), replace=False)
            x = np.concatenate([x, replay_inputs[drawn]])
            y = np.concatenate([y, replay_labels[drawn]])
            w = np.concatenate([w, np.ones(len(drawn))])
        flip = rng.random(len(x)) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        order = rng.permutation(len(x))
        model.fit(
            x[order],
            keras.utils.to_categorical(y[order], classes),
            sample_weight=w[order],
            batch_size=FINETUNE_BATCH,
            epochs=1,
            verbose=0,
            callbacks=[StopWhenCancelled()],
        )
    return model
