"""core.report: the Markdown tables the README quotes, rendered from a card's metrics."""

import numpy as np
from scipy.special import softmax

from core import CLASS_NAMES
from core.metrics import classification_report, per_source_reports
from core.report import markdown_report


def test_report_renders_every_split_class_and_source():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    probs = softmax(rng.normal(size=(300, 3)) + 2 * np.eye(3)[labels], axis=1)
    sources = np.where(labels == 2, "kermany", "radiography_db")
    metrics = {}
    for split in ("validation", "test"):
        report = classification_report(labels, probs, CLASS_NAMES, resamples=20)
        report.update(ece_uncalibrated=0.2, per_source=per_source_reports(labels, probs, sources, CLASS_NAMES, resamples=5))
        metrics[split] = report
    card = {"version": "v1", "architecture": "dcnn80-compact", "parameters": 10, "temperature": 1.5,
            "class_names": list(CLASS_NAMES), "metrics": metrics}
    text = markdown_report(card)
    accuracy = 100 * (probs.argmax(1) == labels).mean()
    assert f"| accuracy % | {accuracy:.1f}" in text
    for name in CLASS_NAMES:
        assert f"| {name} recall %" in text
    assert "| kermany | " in text and "| radiography_db | " in text
    assert "0.200 →" in text
