"""A model version's measured figures as Markdown tables (the README's numbers come from here)."""

from pathlib import Path

import numpy as np
import pandas as pd

from core import registry
from core.metrics import proportion


def _pct(entry) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    low, high = entry.get("ci95") or (None, None)
    interval = f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None and high is not None else ""
    count = f" ({entry['k']}/{entry['n']})" if "k" in entry else ""
    return f"{100 * entry['value']:.1f}{interval}{count}"


def _auc(entry) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    low, high = entry["ci95"]
    return f"{entry['value']:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{entry['value']:.3f}"


def summary_table(card: dict) -> str:
    """Validation and test side by side: accuracy, per-class recall/precision/specificity/AUC, macro AUC,
    COVID-19 sensitivity at 95 % specificity, calibration error. Percentages with Wilson 95 % intervals."""
    splits = [(name, card["metrics"][name]) for name in ("validation", "test") if card.get("metrics", {}).get(name)]
    rows = [("images", lambda m: str(m["n"])), ("accuracy %", lambda m: _pct(m["accuracy"]))]
    for name in card["class_names"]:
        rows += [
            (f"{name} recall %", lambda m, n=name: _pct(m["per_class"][n]["recall"])),
            (f"{name} precision %", lambda m, n=name: _pct(m["per_class"][n]["precision"])),
            (f"{name} specificity %", lambda m, n=name: _pct(m["per_class"][n]["specificity"])),
            (f"{name} AUC (one-vs-rest)", lambda m, n=name: _auc(m["per_class"][n]["auc"])),
        ]
    rows += [
        ("macro AUC [bootstrap 95 % CI]", lambda m: _auc(m["macro_auc"])),
        ("COVID-19 sensitivity at 95 % specificity %", lambda m: _pct(m.get("covid_sensitivity_at_95_specificity"))),
        ("ECE before → after temperature scaling",
         lambda m: f"{m['ece_uncalibrated']:.3f} → {m['ece']:.3f}" if m.get("ece") is not None else "–"),
    ]
    lines = ["| figure | " + " | ".join(name for name, _ in splits) + " |", "|---|" + "---|" * len(splits)]
    lines += [f"| {label} | " + " | ".join(render(m) for _, m in splits) + " |" for label, render in rows]
    return "\n".join(lines)


def per_source_table(card: dict, split: str = "test") -> str:
    """Per data source: images, accuracy and the recall of each class present (Wilson 95 % intervals)."""
    metrics = card["metrics"][split]["per_source"]
    names = card["class_names"]
    lines = ["| source | images | accuracy % | " + " | ".join(f"{n} recall %" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for source, m in metrics.items():
        recalls = [_pct(m["per_class"][n]["recall"]) if m["per_class"][n]["support"] else "–" for n in names]
        lines.append(f"| {source} | {m['n']} | {_pct(m['accuracy'])} | " + " | ".join(recalls) + " |")
    return "\n".join(lines)


def confusion_table(card: dict, split: str = "test") -> str:
    names = card["class_names"]
    matrix = card["metrics"][split]["confusion_matrix"]
    lines = ["| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(names, matrix)]
    return "\n".join(lines)


def operating_point_table(card: dict, folder: Path) -> str:
    """Accuracy, per-class recall and the test confusion matrix when every case is called by ``decide`` at
    the card's saved operating point (chosen on validation), from the version's prediction files."""
    from core.operating_point import decision_matrix

    point = card["operating_point"]
    names = card["class_names"]
    matrices = {}
    for split, filename in (("validation", registry.VAL_PREDICTIONS), ("test", registry.TEST_PREDICTIONS)):
        frame = pd.read_csv(folder / filename)
        matrices[split] = decision_matrix(frame, names, point["positive_class"], point["threshold"])
    rows = [("accuracy %", lambda m: _pct(proportion(np.trace(m), m.sum())))]
    rows += [(f"{name} recall %", lambda m, i=i: _pct(proportion(m[i, i], m[i].sum()))) for i, name in enumerate(names)]
    lines = [f"Called at the saved operating point: {point['positive_class']} when p ≥ {point['threshold']:.4f} "
             f"(chosen on {point.get('chosen_on', 'validation')}), otherwise the most probable other class.", "",
             "| figure | validation | test |", "|---|---|---|"]
    lines += [f"| {label} | {render(matrices['validation'])} | {render(matrices['test'])} |" for label, render in rows]
    lines += ["", "| true \\ called (test) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(names, matrices["test"])]
    return "\n".join(lines)


SHIFT_FIGURES = (  # (key, column title) of the cross-hospital table, in order
    ("macro_auc_present", "macro AUC (classes present)"),
    ("non_covid_called_covid", "non-COVID called COVID-19 %"),
    ("normal_called_normal", "Normal called Normal %"),
    ("abnormal_not_called_normal", "COVID-19/Pneumonia not called Normal %"),
    ("recall_COVID-19", "COVID-19 recall %"),
    ("recall_Pneumonia", "Pneumonia recall %"),
    ("wrong_confident", "wrong at p ≥ 0.9, % of images"),
    ("wrong_confident_unflagged", "… and unflagged"),
)


def _share(entry) -> str:
    if not entry or not entry.get("n") or entry.get("value") is None:
        return "–"
    return f"{100 * entry['value']:.1f} ({entry['k']}/{entry['n']})"


def _shift_cell(shift: dict, key: str) -> str:
    value = shift.get(key)
    if key == "macro_auc_present":
        return "–" if value is None else f"{value:.3f}"
    return _share(value)


def cross_hospital_table(rows: list) -> str:
    """The leave-one-source-out table (rows of ``train.crosshospital.fold_row``): one line per fold and
    population, all images first; every figure at the fold's own validation operating point."""
    header = ["held out", "run", "epochs", "population", "n"] + [title for _, title in SHIFT_FIGURES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        groups = [("all", row["shift"])] + sorted(row["shift"].get("per_population", {}).items())
        for population, shift in groups:
            cells = [str(row["held_out_source"]), str(row["run"]), str(row["epochs"]), population, str(shift["n"])]
            lines.append("| " + " | ".join(cells + [_shift_cell(shift, key) for key, _ in SHIFT_FIGURES]) + " |")
    return "\n".join(lines)


LEVER_FIGURES = ("macro_auc_present", "non_covid_called_covid", "normal_called_normal", "wrong_confident")


def lever_table(rows: list) -> str:
    """Recipes side by side on one fold: the recipe, its validation figures (the training sources,
    patient-disjoint) and its figures on the held-out source (all images)."""
    titles = dict(SHIFT_FIGURES)
    header = ["run", "recipe", "validation accuracy %", "validation macro AUC"] + [titles[k] for k in LEVER_FIGURES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        validation = row.get("validation") or {}
        auc = (validation.get("macro_auc") or {}).get("value")
        cells = [str(row["run"]), row.get("recipe", ""), _share(validation.get("accuracy")),
                 "–" if auc is None else f"{auc:.3f}"]
        lines.append("| " + " | ".join(cells + [_shift_cell(row["shift"], key) for key in LEVER_FIGURES]) + " |")
    return "\n".join(lines)


def flags_table(card: dict) -> str:
    """How often each flag fires on the version's test split (and external split, when it has one)."""
    rates = (card.get("flags") or {}).get("rates") or {}
    if not rates:
        return "No flag rates in this card."
    splits = list(rates)
    codes = sorted({code for split in splits for code in rates[split] if code != "n"},
                   key=lambda code: (code not in ("any", "out_of_depth"), code))
    lines = ["| flag | " + " | ".join(f"{split} (n = {rates[split]['n']})" for split in splits) + " |",
             "|---|" + "---|" * len(splits)]
    for code in codes:
        lines.append(f"| {code} | " + " | ".join(f"{100 * rates[split].get(code, 0.0):.1f} %" for split in splits) + " |")
    return "\n".join(lines)


def markdown_report(card: dict, folder: Path = None) -> str:
    """Everything above for one card; ``folder`` holds its prediction files (for the operating point)."""
    point_section = []
    if card.get("operating_point") and folder is not None and (folder / registry.TEST_PREDICTIONS).is_file():
        point_section = [operating_point_table(card, folder)]
    header = (f"**{card['version']}** — `{card['architecture']}`, {card.get('parameters', '?'):,} parameters, "
              f"temperature {card.get('temperature', 1.0):.3f}")
    return "\n\n".join([header] + point_section + [
        "Argmax figures (no operating point), percentages with Wilson 95 % intervals:",
        summary_table(card),
        "Per source (test split):",
        per_source_table(card, "test"),
        "Confusion matrix (test split, argmax, i.e. without an operating point):",
        confusion_table(card, "test"),
    ] + ([
        "Flags (share of images; 'out_of_depth': a flag that turns the call into 'uncertain — read without the model'):",
        flags_table(card)] if card.get("flags") else []) + ([
        "Cross-hospital (leave one source out; each fold trained without that source):",
        cross_hospital_table(card["cross_hospital"])] if card.get("cross_hospital") else []))
