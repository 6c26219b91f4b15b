"""core.tables: a version's figures as the Markdown tables the README quotes (``python -m core report``)."""

import numpy as np
from scipy.special import softmax

from core import CLASS_NAMES
from core.metrics import classification_report, per_source_reports
from core.tables import cross_hospital_table, flags_table, lever_table, markdown_report
from tests.conftest import small_card

SHIFT = {
    "n": 40,
    "macro_auc_present": 0.61234,
    "non_covid_called_covid": {"value": 0.25, "k": 10, "n": 40},
    "normal_called_normal": {"value": 0.5, "k": 10, "n": 20},
    "wrong_confident": None,
    "per_population": {"adult": {"n": 40, "macro_auc_present": None}},
}


def test_report_renders_every_split_class_and_source():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    probs = softmax(rng.normal(size=(300, 3)) + 2 * np.eye(3)[labels], axis=1)
    sources = np.where(labels == 2, "kermany", "radiography_db")
    metrics = {}
    for split in ("validation", "test"):
        report = classification_report(labels, probs, CLASS_NAMES, resamples=20)
        report.update(
            ece_uncalibrated=0.2, per_source=per_source_reports(labels, probs, sources, CLASS_NAMES, resamples=5)
        )
        metrics[split] = report
    card = small_card(version="v1", parameters=10, temperature=1.5, metrics=metrics)
    text = markdown_report(card)
    accuracy = 100 * (probs.argmax(1) == labels).mean()
    assert f"| accuracy % | {accuracy:.1f}" in text
    for name in CLASS_NAMES:
        assert f"| {name} recall %" in text
    assert "| kermany | " in text and "| radiography_db | " in text
    assert "0.200 →" in text


def test_the_cross_hospital_and_lever_tables_show_each_fold_and_population():
    fold = {
        "held_out_source": "nih",
        "run": "r1",
        "epochs": 3,
        "shift": SHIFT,
        "validation": {"accuracy": {"value": 0.9, "k": 90, "n": 100}, "macro_auc": {"value": 0.97}},
    }
    lines = cross_hospital_table([fold]).splitlines()
    assert lines[0].startswith("| held out | run | epochs | population | n | macro AUC (classes present) |")
    assert lines[2].startswith("| nih | r1 | 3 | all | 40 | 0.612 | 25.0 (10/40) | 50.0 (10/20) |")
    assert lines[3].startswith("| nih | r1 | 3 | adult | 40 | — | — |")
    lever = lever_table([{**fold, "recipe": "balanced"}]).splitlines()
    assert lever[2] == "| r1 | balanced | 90.0 (90/100) | 0.970 | 0.612 | 25.0 (10/40) | 50.0 (10/20) | — |"


def test_the_flags_table_puts_the_summary_rows_first():
    card = small_card(flags={"rates": {"test": {"n": 10, "rotated": 0.1, "any": 0.3, "out_of_depth": 0.2}}})
    lines = flags_table(card).splitlines()
    assert lines[0] == "| flag | test (n = 10) |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| any", "| out_of_depth", "| rotated"]
    assert flags_table(small_card()) == "No flag rates in this card."
