"""The model card: one typed record of what a model version is, how it was trained and how well it does, kept as
``card.json`` beside its weights (torchxrayvision and timm keep such metadata with the weights, too), and the
predictions tables (``val_predictions.csv`` …) written beside it.

Every reader and writer goes through ``ModelCard``: the trainer builds one, the registry loads and saves it, the
pages and the CLI read its attributes. A new field is declared once here — with a ``label`` in its metadata it
also appears in ``facts()``, which the Models page, ``python -m core info`` and the trainer's summary print.
Class names and the decision threshold travel with the weights as attributes of the card.
"""

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from core import atomic

__all__ = [
    "ModelCard",
    "CardError",
    "probability_columns",
    "write_predictions",
    "read_predictions",
    "finite",
    "PREDICTION_COLUMNS",
]

PREDICTION_COLUMNS = ("path", "label", "source", "population")  # before the p_<class> columns
PROBABILITY_DECIMALS = 6


class CardError(ValueError):
    """A card or predictions table that does not have the expected shape; the message says what is wrong."""


def _fact(label: str, kind: str = "text", **kwargs):
    """A card field shown under ``label`` in ``ModelCard.facts()``; ``kind`` (text, number, time, duration) tells
    ``core.report`` how to write its value."""
    return field(metadata={"label": label, "kind": kind}, **kwargs)


@dataclass(kw_only=True)
class ModelCard:
    """A model version's card. ``version`` and ``created`` are None until the version is published."""

    version: str | None = _fact("Version", default=None)
    created: str | None = _fact("Created", kind="time", default=None)
    architecture: str = _fact("Architecture")
    input_size: int = _fact("Input size (px)")
    class_names: tuple = _fact("Classes")
    gradcam_layer: str = _fact("Grad-CAM layer")
    architecture_reference: str = _fact("Reference", default="")
    parameters: int | None = _fact("Parameters", default=None)
    initialisation: str = _fact("Initialisation", default="")
    output: str = field(default="softmax over class_names; layer 'logits' holds the pre-softmax scores")
    preprocessing: dict = field(default_factory=dict)
    conv_layers: list = field(default_factory=list)
    temperature: float = _fact("Temperature (calibration)", kind="number", default=1.0)
    operating_point: dict | None = None
    operating_point_history: list = field(default_factory=list)
    flags: dict | None = None
    training: dict = field(default_factory=dict)
    seed: int | None = _fact("Seed", default=None)
    data: dict = field(default_factory=dict)
    libraries: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    cross_hospital: list = field(default_factory=list)
    sites: list = field(default_factory=list)  # core.site: one entry per validation at a site
    site_adaptation: dict | None = None  # train.site: what a site version was adapted from, how, and on what
    caveat: str = ""

    def __post_init__(self):
        self.class_names = tuple(self.class_names)
        self.validate()

    def validate(self) -> None:
        """Raise ``CardError`` unless the fields a reader relies on have usable values."""
        if not self.class_names or not all(isinstance(name, str) and name for name in self.class_names):
            raise CardError("class_names must be a non-empty list of names.")
        if len(set(self.class_names)) != len(self.class_names):
            raise CardError(f"class_names repeat a name: {list(self.class_names)}.")
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool) or self.input_size <= 0:
            raise CardError(f"input_size must be a positive whole number of pixels, not {self.input_size!r}.")
        if (
            not isinstance(self.temperature, (int, float))
            or not math.isfinite(self.temperature)
            or self.temperature <= 0
        ):
            raise CardError(f"temperature must be a positive number, not {self.temperature!r}.")
        if self.gradcam_layer not in self.conv_layers and self.conv_layers:
            raise CardError(f"gradcam_layer '{self.gradcam_layer}' is not one of conv_layers.")
        point = self.operating_point
        if point is not None:
            if point.get("positive_class") is None or not 0.0 <= float(point.get("threshold", -1)) <= 1.0:
                raise CardError("operating_point needs a positive_class and a threshold in [0, 1].")

    @classmethod
    def from_dict(cls, values: dict) -> "ModelCard":
        """A card from its JSON form; ``CardError`` names unknown or missing fields."""
        if not isinstance(values, dict):
            raise CardError("A model card must be a JSON object.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CardError(f"unknown card field(s): {', '.join(unknown)}.")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if values.get(name) is None]
        if missing:
            raise CardError(f"the card lacks {', '.join(missing)}.")
        try:
            return cls(**{key: value for key, value in values.items() if value is not None or key in _NULLABLE})
        except TypeError as error:
            raise CardError(str(error)) from error

    def to_dict(self) -> dict:
        """The JSON form: non-finite numbers become null, numpy scalars plain numbers."""
        return finite(asdict(self))  # tuples (the class names) become lists

    @classmethod
    def load(cls, path) -> "ModelCard":
        """Read ``path``; ``CardError`` when it is missing, not JSON or not a card."""
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise CardError(str(error)) from error
        return cls.from_dict(values)

    def save(self, path) -> None:
        """Write the card to ``path`` atomically (a reader never sees half a card)."""
        self.validate()
        atomic.write_json(path, self.to_dict())

    @property
    def probability_columns(self) -> list:
        return probability_columns(self.class_names)

    @property
    def threshold(self):
        """The operating point's threshold, or None when calls are the most probable class."""
        return None if self.operating_point is None else float(self.operating_point["threshold"])

    @property
    def positive_class(self):
        return None if self.operating_point is None else self.operating_point["positive_class"]

    def facts(self) -> list:
        """(label, value, kind) for every labelled field that has a value, in declaration order, then the recipe's
        facts; ``core.report.card_summary`` writes the values, by kind."""
        rows = []
        for item in fields(self):
            value = getattr(self, item.name)
            if "label" in item.metadata and value not in (None, "", (), []):
                rows.append((item.metadata["label"], value, item.metadata["kind"]))
        return rows + [
            (label, self.training[key], kind)
            for key, (label, kind) in RECIPE_FACTS.items()
            if self.training.get(key) is not None
        ]


_NULLABLE = {f.name for f in fields(ModelCard) if f.default is None}
RECIPE_FACTS = {  # training record key: (label, kind)
    "epochs_trained": ("Epochs trained", "text"),
    "chosen_epoch": ("Epoch kept", "text"),
    "sampling": ("Sampling", "text"),
    "class_weights": ("Class weights", "text"),
    "label_smoothing": ("Label smoothing", "text"),
    "lr_schedule": ("Learning-rate schedule", "text"),
    "precision": ("Training precision", "text"),
    "device": ("Trained on", "text"),
    "seconds": ("Training time", "duration"),
}


def finite(value) -> object:
    """``value`` with every non-finite float replaced by None and numpy scalars by Python numbers: strict JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


# --- predictions tables -------------------------------------------------------------------------------------


def probability_columns(class_names) -> list:
    """The predictions tables' probability columns, ``p_<class>`` in the card's class order."""
    return [f"p_{name}" for name in class_names]


def write_predictions(path, rows: pd.DataFrame, probabilities: np.ndarray, class_names) -> None:
    """Write ``rows`` (the columns of ``PREDICTION_COLUMNS`` it has) and one ``p_<class>`` column per class,
    rounded to 6 decimals, atomically to ``path``."""
    table = rows[[column for column in PREDICTION_COLUMNS if column in rows]].reset_index(drop=True).copy()
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(table), len(class_names))
    for column, values in zip(probability_columns(class_names), probabilities.T):
        table[column] = np.round(values, PROBABILITY_DECIMALS)
    with atomic.atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)


def read_predictions(path, class_names) -> pd.DataFrame:
    """A predictions table with ``path, label, source`` and the card's ``p_<class>`` columns; ``CardError`` when
    it cannot be read, lacks a column, or holds labels that are not the card's classes."""
    text_columns = {column: str for column in PREDICTION_COLUMNS}
    try:
        frame = pd.read_csv(path, dtype=text_columns, keep_default_na=False)
    except (OSError, ValueError) as error:
        raise CardError(f"cannot be read: {error}") from error
    missing = [column for column in ("label", "source", *probability_columns(class_names)) if column not in frame]
    if missing:
        raise CardError(f"lack the columns {', '.join(missing)}.")
    unknown = sorted(set(frame["label"]) - set(class_names))
    if unknown:
        raise CardError(f"have labels that are not classes of the model: {', '.join(unknown)}.")
    return frame
