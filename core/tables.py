"""A version's measured figures as the Markdown tables the README quotes (``python -m core report``): the
summary with Wilson intervals and counts, per source, the confusion matrix, the calls at the saved operating point,
the cross-hospital folds and levers, and the flags' rates. The texts of single figures come from ``core.report``."""

from pathlib import Path

import numpy as np

from core import registry
from core.card import ModelCard, read_predictions
from core.report import (
    DASH,
    SHIFT_FIGURES,
    cross_hospital_cells,
    interval_bounds,
    is_missing,
    number_text,
    point_text,
    share_text,
    shift_cell,
)

__all__ = [
    "summary_table",
    "per_source_table",
    "confusion_table",
    "operating_point_table",
    "cross_hospital_table",
    "lever_table",
    "flags_table",
    "markdown_report",
]


def _markdown(header: list, cells: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def _pct(entry) -> str:
    if not entry or is_missing(entry.get("value")):
        return DASH
    low, high = interval_bounds(entry)
    interval = "" if is_missing(low) or is_missing(high) else f" [{100 * low:.1f}, {100 * high:.1f}]"
    count = f" ({entry['k']}/{entry['n']})" if "k" in entry else ""
    return f"{100 * entry['value']:.1f}{interval}{count}"


def _auc(entry) -> str:
    if not entry or is_missing(entry.get("value")):
        return DASH
    low, high = interval_bounds(entry)
    return f"{entry['value']:.3f}" if is_missing(low) else f"{entry['value']:.3f} [{low:.3f}, {high:.3f}]"


def summary_table(card: ModelCard) -> str:
    """Validation and test side by side: accuracy, per-class recall/precision/specificity/AUC, macro AUC,
    COVID-19 sensitivity at 95 % specificity, calibration error. Percentages with Wilson 95 % intervals."""
    splits = [(name, card.metrics[name]) for name in ("validation", "test") if card.metrics.get(name)]
    rows = [("images", lambda m: str(m["n"])), ("accuracy %", lambda m: _pct(m["accuracy"]))]
    for name in card.class_names:
        rows += [
            (f"{name} recall %", lambda m, n=name: _pct(m["per_class"][n]["recall"])),
            (f"{name} precision %", lambda m, n=name: _pct(m["per_class"][n]["precision"])),
            (f"{name} specificity %", lambda m, n=name: _pct(m["per_class"][n]["specificity"])),
            (f"{name} AUC (one-vs-rest)", lambda m, n=name: _auc(m["per_class"][n]["auc"])),
        ]
    rows += [
        ("macro AUC [bootstrap 95 % CI]", lambda m: _auc(m["macro_auc"])),
        ("COVID-19 sensitivity at 95 % specificity %", lambda m: _pct(m.get("covid_sensitivity_at_95_specificity"))),
        (
            "ECE before → after temperature scaling",
            lambda m: f"{number_text(m.get('ece_uncalibrated'))} → {number_text(m.get('ece'))}",
        ),
    ]
    return _markdown(
        ["figure"] + [name for name, _ in splits], [[label] + [render(m) for _, m in splits] for label, render in rows]
    )


def per_source_table(card: ModelCard, split: str = "test") -> str:
    """Per data source: images, accuracy and the recall of each class present (Wilson 95 % intervals)."""
    names = card.class_names
    cells = [
        [source, str(m["n"]), _pct(m["accuracy"])]
        + [_pct(m["per_class"][n]["recall"]) if m["per_class"][n]["support"] else DASH for n in names]
        for source, m in card.metrics[split]["per_source"].items()
    ]
    return _markdown(["source", "images", "accuracy %"] + [f"{n} recall %" for n in names], cells)


def _matrix_markdown(corner: str, names, matrix) -> str:
    return _markdown([corner] + list(names), [[name] + [str(v) for v in row] for name, row in zip(names, matrix)])


def confusion_table(card: ModelCard, split: str = "test") -> str:
    return _matrix_markdown("true \\ predicted", card.class_names, card.metrics[split]["confusion_matrix"])


def operating_point_table(card: ModelCard, folder: Path) -> str:
    """Accuracy, per-class recall and the test confusion matrix when every case is called by ``decide`` at
    the card's saved operating point (chosen on validation), from the version's prediction files."""
    from core.metrics import proportion  # scikit-learn, scipy and statsmodels: only for this table
    from core.operating_point import decision_matrix

    point = card.operating_point
    names = card.class_names
    matrices = {}
    for split, filename in (("validation", registry.VAL_PREDICTIONS), ("test", registry.TEST_PREDICTIONS)):
        frame = read_predictions(folder / filename, names)
        matrices[split] = decision_matrix(frame, names, point["positive_class"], point["threshold"])
    rows = [("accuracy %", lambda m: _pct(proportion(np.trace(m), m.sum())))]
    rows += [(f"{name} recall %", lambda m, i=i: _pct(proportion(m[i, i], m[i].sum()))) for i, name in enumerate(names)]
    return "\n".join(
        [
            f"Called at the saved operating point: {point_text(point)} "
            f"(chosen on {point.get('chosen_on', 'validation')}), otherwise the most probable other class.",
            "",
            _markdown(
                ["figure", "validation", "test"],
                [[label, render(matrices["validation"]), render(matrices["test"])] for label, render in rows],
            ),
            "",
            _matrix_markdown("true \\ called (test)", names, matrices["test"]),
        ]
    )


LEVER_FIGURES = ("macro_auc_present", "non_covid_called_covid", "normal_called_normal", "wrong_confident")


def cross_hospital_table(rows: list) -> str:
    """``core.report.cross_hospital_cells`` as a Markdown table."""
    return _markdown(*cross_hospital_cells(rows))


def lever_table(rows: list) -> str:
    """Recipes side by side on one fold: the recipe, its validation figures (the training sources,
    patient-disjoint) and its figures on the held-out source (all images)."""
    titles = dict(SHIFT_FIGURES)
    header = ["run", "recipe", "validation accuracy %", "validation macro AUC"] + [titles[k] for k in LEVER_FIGURES]
    cells = []
    for row in rows:
        validation = row.get("validation") or {}
        cells.append(
            [
                str(row["run"]),
                row.get("recipe", ""),
                share_text(validation.get("accuracy")),
                number_text((validation.get("macro_auc") or {}).get("value")),
            ]
            + [shift_cell(row["shift"], key) for key in LEVER_FIGURES]
        )
    return _markdown(header, cells)


def flags_table(card: ModelCard) -> str:
    """How often each flag fires on the version's test split (and external split, when it has one)."""
    rates = (card.flags or {}).get("rates") or {}
    if not rates:
        return "No flag rates in this card."
    splits = list(rates)
    codes = sorted(
        {code for split in splits for code in rates[split] if code != "n"},
        key=lambda code: (code not in ("any", "out_of_depth"), code),
    )
    return _markdown(
        ["flag"] + [f"{split} (n = {rates[split]['n']})" for split in splits],
        [[code] + [f"{100 * rates[split].get(code, 0.0):.1f} %" for split in splits] for code in codes],
    )


def markdown_report(card: ModelCard, folder: Path = None) -> str:
    """Everything above for one card; ``folder`` holds its prediction files (for the operating point)."""
    point_section = []
    if card.operating_point and folder is not None and (folder / registry.TEST_PREDICTIONS).is_file():
        point_section = [operating_point_table(card, folder)]
    parameters = card.parameters
    header = (
        f"**{card.version}** — `{card.architecture}`, "
        f"{DASH if parameters is None else f'{parameters:,}'} parameters, "
        f"temperature {number_text(card.temperature)}"
    )
    return "\n\n".join(
        [header]
        + point_section
        + [
            "Argmax figures (no operating point), percentages with Wilson 95 % intervals:",
            summary_table(card),
            "Per source (test split):",
            per_source_table(card, "test"),
            "Confusion matrix (test split, argmax, i.e. without an operating point):",
            confusion_table(card, "test"),
        ]
        + (
            [
                "Flags (share of images; 'out_of_depth': a flag that turns the call into "
                "'uncertain — read without the model'):",
                flags_table(card),
            ]
            if card.flags
            else []
        )
        + (
            [
                "Cross-hospital (leave one source out; each fold trained without that source):",
                cross_hospital_table(card.cross_hospital),
            ]
            if card.cross_hospital
            else []
        )
    )
