"""How figures read: one formatter for every page, ``python -m core info`` and ``python -m core report``.

Card values become text a reader can take in at a glance — "—" for anything missing or not a number, proportions to
three decimals with their interval as "0.950 (0.930–0.970)", thresholds to four, times in the reader's own time
zone, paths relative to the data root (never a server path) — and from them the card summary, the operating-point
history and the headline figures. ``core.tables`` renders a version's figures as the README's Markdown tables.
"""

import math
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from core import settings
from core.card import ModelCard

__all__ = [
    "DASH",
    "is_missing",
    "number_text",
    "interval_text",
    "figure_text",
    "count_text",
    "threshold_text",
    "time_text",
    "duration_text",
    "relative_path",
    "fact_text",
    "score_text",
    "point_text",
    "history_rows",
    "activation_rows",
    "change_rows",
    "card_summary",
    "headline_rows",
    "headline_comparison",
    "difference_rows",
    "settings_rows",
    "info_text",
    "interval_bounds",
    "SHIFT_FIGURES",
    "share_text",
    "shift_cell",
    "cross_hospital_cells",
]

DASH = "—"
PROPORTION_DIGITS = 3
THRESHOLD_DIGITS = 4
TIME_FORMAT = "%-d %b %Y, %H:%M"  # 1 Dec 2026, 21:01
HEADLINE_SPLITS = {"validation": "Validation", "test": "Test", "external": "External (held-out source)"}


# --- values as text -------------------------------------------------------------------------------------------


def is_missing(value) -> bool:
    """True for None and for numbers that are not finite (NaN, ±inf): what a table shows as "—"."""
    if value is None:
        return True
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def number_text(value, digits: int = PROPORTION_DIGITS) -> str:
    """``value`` rounded to ``digits`` decimals, or "—" when it is missing."""
    return DASH if is_missing(value) else f"{float(value):.{digits}f}"


def interval_text(value, low, high, digits: int = PROPORTION_DIGITS) -> str:
    """ "0.950 (0.930–0.970)"; the bare value when the interval is missing; "—" when the value is."""
    if is_missing(value):
        return DASH
    if is_missing(low) or is_missing(high):
        return number_text(value, digits)
    return f"{float(value):.{digits}f} ({float(low):.{digits}f}–{float(high):.{digits}f})"


def interval_bounds(entry) -> list:
    """A card figure's 95 % interval as [low, high], None for a bound it lacks."""
    return (list(entry.get("ci95") or []) + [None, None])[:2]


def figure_text(entry, digits: int = PROPORTION_DIGITS) -> str:
    """A card figure ({"value", "ci95"}) as ``interval_text``; "—" for an absent figure."""
    return interval_text(entry.get("value"), *interval_bounds(entry), digits) if entry else DASH


def count_text(entry) -> str:
    """ "467/478" for a proportion with its count, else "—"."""
    return f"{entry['k']:,}/{entry['n']:,}" if entry and entry.get("n") and "k" in entry else DASH


def threshold_text(value) -> str:
    return number_text(value, THRESHOLD_DIGITS)  # thresholds such as 0.0553 need four decimals


def _zone(timezone):
    """The reader's time zone (an IANA name such as the browser's), else this machine's."""
    try:
        return ZoneInfo(timezone) if timezone else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


def time_text(stamp, timezone=None) -> str:
    """An ISO time as "1 Dec 2026, 21:01 CET" in ``timezone`` (default: this machine's); "—" when absent,
    the text itself when it is not a time."""
    if not stamp:
        return DASH
    try:
        moment = datetime.fromisoformat(str(stamp))
    except ValueError:
        return str(stamp)
    local = moment.astimezone(_zone(timezone))
    return f"{local:{TIME_FORMAT}} {local.tzname()}"


def duration_text(seconds) -> str:
    """ "45 s", "13 min" or "2.5 h"; "—" when unknown."""
    if is_missing(seconds):
        return DASH
    minutes = seconds / 60
    if seconds < 1:
        return "under 1 s"
    return f"{seconds:.0f} s" if minutes < 1 else f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def relative_path(path, root=None) -> str:
    """``path`` relative to the data root (``root``, else ``settings.data_root()``), or as "uploads/…" under the
    uploads folder; a path outside both shows only its last name, so no server path reaches the screen."""
    if not path:
        return DASH
    if not Path(path).is_absolute():  # a card's record, already relative to the data root
        return str(path)
    path = Path(path).resolve()
    data, uploads = Path(root or settings.data_root()).resolve(), settings.upload_dir()
    if path.is_relative_to(data):
        return str(path.relative_to(data))
    if path.is_relative_to(uploads):
        return str(Path(uploads.name) / path.relative_to(uploads))
    return f"…/{path.name}"


def score_text(positive: str) -> str:
    return "1 − p(Normal)" if positive == "abnormal" else f"p({positive})"


def point_text(point) -> str:
    """An operating point as a rule: "COVID-19 when p(COVID-19) ≥ 0.0553"; no point: the most probable class."""
    if not point:
        return "most probable class (no operating point)"
    positive = point.get("positive_class")
    return f"{positive} when {score_text(positive)} ≥ {threshold_text(point.get('threshold'))}"


# --- the card as a reader sees it -----------------------------------------------------------------------------


def history_rows(card: ModelCard, timezone=None) -> list:
    """The card's operating-point changes, newest first: when, who, old → new, and why."""
    rows = []
    for entry in reversed(card.operating_point_history or []):
        rows.append(
            {
                "When": time_text(entry.get("time"), timezone),
                "Reader": entry.get("reader") or DASH,
                "Change": f"{point_text(entry.get('old'))} → {point_text(entry.get('new'))}",
                "Reason": entry.get("reason") or DASH,
            }
        )
    return rows


def activation_rows(history: list, timezone=None) -> list:
    """``core.registry.activation_history`` as rows, newest first: when, who, which version before → after, why."""
    return [
        {
            "When": time_text(entry.get("time"), timezone),
            "Reader": entry.get("reader") or DASH,
            "Change": f"{entry.get('from') or 'none'} → {entry.get('to')}",
            "Reason": entry.get("reason") or DASH,
        }
        for entry in history
    ]


def _data_text(data: dict, root=None) -> str:
    folders = data.get("folders") or ([{"root": data["root"]}] if data.get("root") else [])
    parts = [
        relative_path(folder.get("root"), root) + (f" ({folder['images']:,} images)" if folder.get("images") else "")
        for folder in folders
    ]
    return ", ".join(parts) or DASH


def _split_text(data: dict) -> str:
    sizes = data.get("split_sizes") or {}
    counts = " / ".join(f"{sizes.get(key, 0):,}" for key in ("train", "val", "test"))
    return f"{counts} images (train / validation / test)" if sizes else DASH


def _recipe_text(training: dict) -> str:
    keys = (
        ("epochs", "{} epochs"),
        ("batch_size", "batch {}"),
        ("lr", "peak learning rate {:g}"),
        ("warmup_epochs", "{:g} warm-up epoch(s)"),
        ("intensity", "intensity {}"),
    )
    parts = [template.format(training[key]) for key, template in keys if training.get(key) not in (None, "")]
    return ", ".join(parts) or DASH


def fact_text(value) -> str:
    """A card fact as text: integers with thousands separators, floats to 4 significant digits, lists joined,
    the training device as "CPU · x86_64 · bfloat16"."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    if isinstance(value, dict):
        return " · ".join(str(value[key]) for key in ("kind", "name", "precision") if value.get(key))
    return str(value)


def card_summary(card: ModelCard, active=None, timezone=None, root=None) -> list:
    """(field, text) rows that describe a version: the card's own facts (``ModelCard.facts``), rounded, its
    creation time local, then its data (relative to the data root), split, recipe, operating point and
    libraries. The one card summary: the Models page and ``python -m core info`` print it."""
    writers = {
        "text": fact_text,
        "number": number_text,
        "duration": duration_text,
        "time": lambda stamp: time_text(stamp, timezone),
    }
    rows = [(label, writers[kind](value)) for label, value, kind in card.facts()]
    if active is not None:
        rows.insert(1, ("Status", "active (Diagnose and the CLI use it)" if card.version == active else "not active"))
    data, training = card.data or {}, card.training or {}
    point = card.operating_point
    rows += [
        ("Data", _data_text(data, root)),
        ("Split (patient-level)", _split_text(data)),
        ("Recipe", _recipe_text(training)),
        ("Operating point", point_text(point)),
    ]
    if point:
        rows.append(
            (
                "Operating point saved",
                f"{time_text(point.get('saved'), timezone)}, chosen on {point.get('chosen_on') or DASH} data",
            )
        )
    libraries = ", ".join(f"{name} {version}" for name, version in (card.libraries or {}).items())
    return rows + ([("Libraries", libraries)] if libraries else [])


def headline_rows(card: ModelCard) -> list:
    """Accuracy, macro AUC and each class's recall per split, as text with 95 % intervals and counts."""
    rows = []
    for split, title in HEADLINE_SPLITS.items():
        report = (card.metrics or {}).get(split) or {}
        figures = {"Accuracy": report.get("accuracy"), "Macro AUC": report.get("macro_auc")}
        figures.update(
            {f"{name} recall": (entry or {}).get("recall") for name, entry in (report.get("per_class") or {}).items()}
        )
        rows += [
            {"Split": title, "Figure": name, "Value (95 % CI)": figure_text(entry), "Count": count_text(entry)}
            for name, entry in figures.items()
            if report
        ]
    return rows


def headline_comparison(active: dict, candidate: dict, titles=("Active", "Candidate")) -> pd.DataFrame:
    """The headline figures of two cards side by side (each on its own splits), "—" where one lacks a figure;
    ``titles`` head their columns."""
    frames = [
        pd.DataFrame(headline_rows(card), columns=["Split", "Figure", "Value (95 % CI)", "Count"])
        .drop(columns="Count")
        .rename(columns={"Value (95 % CI)": role})
        for role, card in zip(titles, (active, candidate))
    ]
    return frames[0].merge(frames[1], on=["Split", "Figure"], how="outer", sort=False).fillna(DASH)


def change_rows(positive: str, prevalence: float, before: dict, after: dict, old_point, new_point) -> list:
    """The table a reader confirms before an operating-point change: the rule now and after, and what each gives
    for ``positive`` on the validation cases (``core.operating_point.decision_figures``), PPV at ``prevalence``
    (a fraction) with the range its sensitivity and specificity intervals span."""

    def ppv(figures):
        entry = figures["ppv_at_prevalence"]
        return interval_text(entry["value"], *entry["range"])

    def called(figures):
        return f"{figures['tp'] + figures['fp']:,} of {sum(figures[key] for key in ('tp', 'fp', 'tn', 'fn')):,}"

    rows = [
        ("Rule", point_text(old_point), point_text(new_point)),
        (
            f"Sensitivity for {positive} (95 % CI)",
            figure_text(before["sensitivity"]),
            figure_text(after["sensitivity"]),
        ),
        (
            f"Specificity for {positive} (95 % CI)",
            figure_text(before["specificity"]),
            figure_text(after["specificity"]),
        ),
        (f"PPV at {100 * prevalence:.1f} % prevalence (range)", ppv(before), ppv(after)),
        (f"Validation cases called {positive}", called(before), called(after)),
    ]
    return [{"Figure (validation)": label, "Now": now, "After the change": later} for label, now, later in rows]


def difference_rows(table: pd.DataFrame) -> list:
    """``train.evaluation.compare.paired_differences`` as text: each figure for both models and candidate − active
    with its 95 % paired bootstrap interval, signed ("+0.012 (−0.004 to +0.031)")."""

    def signed(value):
        return DASH if is_missing(value) else f"{value:+.{PROPORTION_DIGITS}f}".replace("-", "−")

    return [
        {
            "Figure": row["metric"],
            "Active": number_text(row["active"]),
            "Candidate": number_text(row["candidate"]),
            "Difference (95 % CI)": (
                f"{signed(row['difference'])} ({signed(row['ci95_low'])} to {signed(row['ci95_high'])})"
            ),
        }
        for row in table.to_dict("records")
    ]


def settings_rows(config: dict, root=None) -> list:
    """A run's settings as (setting, text) rows, its data folders relative to the data root."""
    return [
        (
            key,
            ", ".join(relative_path(path, root) for path in value)
            if key == "data"
            else DASH
            if value in (None, "")
            else str(value),
        )
        for key, value in config.items()
    ]


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


def share_text(entry) -> str:
    """A proportion record ({"value", "k", "n"}) as "12.5 (3/24)" (percent); "—" when empty."""
    if not entry or not entry.get("n") or is_missing(entry.get("value")):
        return DASH
    return f"{100 * entry['value']:.1f} ({entry['k']}/{entry['n']})"


def shift_cell(shift: dict, key: str) -> str:
    """One figure of a fold's shift record: the macro AUC as a number, the others as "% (k/n)"."""
    value = shift.get(key)
    return number_text(value) if key == "macro_auc_present" else share_text(value)


def cross_hospital_cells(rows: list):
    """(header, cells) of the leave-one-source-out table (rows of ``train.evaluation.crosshospital.fold_row``): one line
    per fold and population, all images first; every figure at the fold's own validation operating point."""
    header = ["held out", "run", "epochs", "population", "n"] + [title for _, title in SHIFT_FIGURES]
    cells = []
    for row in rows:
        groups = [("all", row["shift"])] + sorted(row["shift"].get("per_population", {}).items())
        for population, shift in groups:
            cells.append(
                [str(row["held_out_source"]), str(row["run"]), str(row["epochs"]), population, str(shift["n"])]
                + [shift_cell(shift, key) for key, _ in SHIFT_FIGURES]
            )
    return header, cells


def info_text(card: ModelCard, active=None, timezone=None) -> str:
    """``python -m core info``: the card summary, the headline figures, flag rates, the cross-hospital folds
    (all images) and the caveat, as aligned plain text; missing figures read "—"."""
    rows = card_summary(card, active, timezone)
    for row in headline_rows(card):
        rows.append(
            (
                f"{row['Figure']} ({row['Split'].lower()})",
                row["Value (95 % CI)"] + ("" if row["Count"] == DASH else f"  ({row['Count']})"),
            )
        )
    rates = ((card.flags or {}).get("rates") or {}).get("test") or {}
    if rates:
        rows.append(
            (
                "Flags (test)",
                f"{number_text(100 * (rates.get('any') or 0), 1)} % of images flagged, "
                f"{number_text(100 * (rates.get('out_of_depth') or 0), 1)} % 'read without the model'",
            )
        )
    for fold in card.cross_hospital or []:
        shift = fold["shift"]
        rows.append(
            (
                f"Held out {fold['held_out_source']}",
                f"{fold['run']}: non-COVID called COVID-19 (%) {shift_cell(shift, 'non_covid_called_covid')}, "
                f"macro AUC {shift_cell(shift, 'macro_auc_present')}",
            )
        )
    if card.caveat:
        rows.append(("Caveat", card.caveat))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {text}" for label, text in rows)
