"""core.card: the typed model card (load, save, validate, facts) and the predictions tables beside it."""

import json

import numpy as np
import pandas as pd
import pytest

from core.card import CardError, ModelCard, finite, probability_columns, read_predictions, write_predictions
from core.settings import REPO_ROOT

SHIPPED = sorted((REPO_ROOT / "weights").glob("*/card.json"))
MINIMAL = {
    "architecture": "dcnn80-compact",
    "input_size": 80,
    "class_names": ["COVID-19", "Normal", "Pneumonia"],
    "gradcam_layer": "block4_conv3",
}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_every_shipped_card_loads_and_round_trips(path, tmp_path):
    card = ModelCard.load(path)
    assert card.version == path.parent.name
    assert card.class_names == ("COVID-19", "Normal", "Pneumonia")
    card.save(tmp_path / "card.json")
    again = ModelCard.load(tmp_path / "card.json")
    assert again == card
    original = json.loads(path.read_text())
    assert {key: value for key, value in again.to_dict().items() if key in original} == original


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bogus": 1}, "unknown card field"),
        ({"class_names": None}, "lacks class_names"),
        ({"class_names": []}, "class_names"),
        ({"class_names": ["A", "A"]}, "repeat"),
        ({"input_size": 0}, "input_size"),
        ({"input_size": "80"}, "input_size"),
        ({"temperature": -1.0}, "temperature"),
        ({"conv_layers": ["block1_conv1"]}, "gradcam_layer"),
        ({"operating_point": {"positive_class": "COVID-19", "threshold": 1.5}}, "threshold"),
    ],
)
def test_a_malformed_card_is_refused_with_what_is_wrong(change, message):
    with pytest.raises(CardError, match=message):
        ModelCard.from_dict({**MINIMAL, **change})


def test_load_refuses_a_file_that_is_not_json(tmp_path):
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(CardError):
        ModelCard.load(tmp_path / "card.json")


def test_the_operating_point_travels_with_the_card_as_attributes():
    card = ModelCard.from_dict({**MINIMAL, "operating_point": {"positive_class": "COVID-19", "threshold": 0.29}})
    assert (card.positive_class, card.threshold) == ("COVID-19", pytest.approx(0.29, abs=1e-12))
    assert ModelCard.from_dict(MINIMAL).threshold is None


def test_facts_list_each_labelled_field_that_has_a_value():
    card = ModelCard.from_dict(
        {
            **MINIMAL,
            "version": "v9",
            "parameters": 4277795,
            "temperature": 0.7013599538670596,
            "training": {"sampling": "class-source", "device": {"kind": "CPU", "name": "x86_64"}},
        }
    )
    facts = {label: (value, kind) for label, value, kind in card.facts()}
    assert facts["Version"] == ("v9", "text") and facts["Parameters"] == (4277795, "text")
    assert facts["Temperature (calibration)"] == (0.7013599538670596, "number")
    assert facts["Sampling"] == ("class-source", "text")
    assert facts["Trained on"] == ({"kind": "CPU", "name": "x86_64"}, "text")
    assert "Created" not in facts  # no value, no row


def test_finite_makes_strict_json():
    values = {"a": float("nan"), "b": [np.float32(0.5), float("inf")], "c": np.int64(3)}
    assert finite(values) == {"a": None, "b": [0.5, None], "c": 3}
    json.dumps(finite(values), allow_nan=False)


def test_predictions_round_trip_and_are_checked_against_the_classes(tmp_path):
    names = ("COVID-19", "Normal", "Pneumonia")
    rows = pd.DataFrame(
        {
            "path": ["a.png", "b.png"],
            "label": ["Normal", "COVID-19"],
            "source": ["s", "s"],
            "population": ["adult", "adult"],
            "split": ["val", "val"],
        }
    )
    probabilities = np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1]]) + 1e-9
    write_predictions(tmp_path / "p.csv", rows, probabilities, names)
    frame = read_predictions(tmp_path / "p.csv", names)
    assert list(frame.columns) == ["path", "label", "source", "population", *probability_columns(names)]
    np.testing.assert_allclose(frame[probability_columns(names)].to_numpy(), probabilities, atol=1e-6)
    with pytest.raises(CardError, match="lack the columns p_Other"):
        read_predictions(tmp_path / "p.csv", ("COVID-19", "Other"))
    with pytest.raises(CardError, match="not classes of the model: COVID-19"):
        read_predictions(tmp_path / "p.csv", ("Normal", "Pneumonia"))


def test_a_card_field_reaches_the_trainers_summary_the_models_page_and_core_info(shipped_version, capsys):
    """Every labelled field (``facts``) of the shipped card is printed by the trainer's summary and ``core info``
    and shown on the Models page: declaring a field with a label in ``ModelCard`` is all it takes."""
    from streamlit.testing.v1 import AppTest

    from core import registry
    from core.__main__ import main as core_main
    from train.__main__ import print_summary

    card = registry.load_card(shipped_version)
    labels = [label for label, _, _ in card.facts()]
    assert {"Version", "Architecture", "Parameters", "Temperature (calibration)", "Sampling"} <= set(labels)
    print_summary(card)
    trainer = capsys.readouterr().out
    assert core_main(["info"]) == 0
    info = capsys.readouterr().out
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/models.py").run()
    page = " ".join(str(cell) for table in at.table for cell in table.value.to_numpy().ravel()).replace("\\", "")
    for label in labels:
        assert label in trainer and label in info and label in page, label
