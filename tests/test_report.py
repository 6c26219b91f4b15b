"""core.report: the one formatter (case tables: missing values, intervals, times, paths, durations), the card
summary and history every page and ``core info`` show."""

import math

import pytest

from core import CLASS_NAMES, report
from core.card import ModelCard
from core.report import DASH
from tests.conftest import small_card

# --- the one formatter -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, low, high, expected",
    [
        (0.95, 0.93, 0.97, "0.950 (0.930–0.970)"),
        (0.9769874, 0.9592668, 0.9871025, "0.977 (0.959–0.987)"),
        (1.0, 0.99, 1.0, "1.000 (0.990–1.000)"),
        (0.5, None, None, "0.500"),
        (0.5, math.nan, math.nan, "0.500"),
        (0.5, 0.4, None, "0.500"),
        (None, 0.1, 0.2, DASH),
        (math.nan, math.nan, math.nan, DASH),
        (math.inf, 0.1, 0.2, DASH),
    ],
)
def test_interval_text(value, low, high, expected):
    assert report.interval_text(value, low, high) == expected


@pytest.mark.parametrize(
    "entry, figure, count",
    [
        ({"value": 0.75, "ci95": [0.7, 0.8], "k": 3, "n": 4}, "0.750 (0.700–0.800)", "3/4"),
        ({"value": 0.5, "ci95": [0.1, 0.9], "k": 1234, "n": 2468}, "0.500 (0.100–0.900)", "1,234/2,468"),
        ({"value": None, "ci95": [None, None], "k": 0, "n": 0}, DASH, DASH),  # a class absent from a source
        ({"value": math.nan, "ci95": [math.nan, math.nan], "k": 0, "n": 0}, DASH, DASH),
        ({"value": 0.9}, "0.900", DASH),  # an AUC without its interval
        (None, DASH, DASH),
        ({}, DASH, DASH),
    ],
)
def test_figure_and_count_text(entry, figure, count):
    assert (report.figure_text(entry), report.count_text(entry)) == (figure, count)


@pytest.mark.parametrize(
    "value, expected",
    [(None, DASH), (math.nan, DASH), ("not a number", "not a number"), (0.70135995, "0.701"), (3, "3.000")],
)
def test_number_text_and_missing(value, expected):
    assert (report.number_text(value) if not isinstance(value, str) else value) == expected
    assert report.is_missing(value) == (expected == DASH)


@pytest.mark.parametrize(
    "stamp, zone, expected",
    [
        ("2026-12-01T21:01:18+00:00", "Europe/Berlin", "1 Dec 2026, 22:01 CET"),
        ("2026-07-01T21:01:18+00:00", "Europe/Berlin", "1 Jul 2026, 23:01 CEST"),
        ("2026-12-01T21:01:18+00:00", "America/New_York", "1 Dec 2026, 16:01 EST"),
        ("2026-12-01T21:01:18+00:00", "UTC", "1 Dec 2026, 21:01 UTC"),
        (None, "UTC", DASH),
        ("", "UTC", DASH),
        ("yesterday", "UTC", "yesterday"),
    ],
)
def test_time_text_in_the_readers_zone(stamp, zone, expected):
    assert report.time_text(stamp, zone) == expected


def test_time_text_without_a_known_zone_uses_this_machines(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()
    assert report.time_text("2026-12-01T21:01:18+00:00", "Not/AZone") == "1 Dec 2026, 21:01 UTC"
    assert report.time_text("2026-12-01T21:01:18+00:00") == "1 Dec 2026, 21:01 UTC"


@pytest.mark.parametrize(
    "seconds, expected",
    [
        (None, DASH),
        (math.nan, DASH),
        (0.3, "under 1 s"),
        (42, "42 s"),
        (811.3, "14 min"),
        (5340, "89 min"),
        (5400, "1.5 h"),
        (9000, "2.5 h"),
    ],
)
def test_duration_text(seconds, expected):
    assert report.duration_text(seconds) == expected


def test_paths_are_shown_relative_to_the_data_root(tmp_path):
    (tmp_path / "data" / "cxr").mkdir(parents=True)
    assert report.relative_path(tmp_path / "data" / "cxr", tmp_path / "data") == "cxr"
    assert report.relative_path(tmp_path / "data", tmp_path / "data") == "."
    assert report.relative_path("/srv/hospital/secret/set", tmp_path / "data") == "…/set"
    assert report.relative_path(None, tmp_path) == DASH


def card_with_gaps() -> ModelCard:
    """A card as an older or interrupted trainer may leave it: null figures, no intervals, no history."""
    null = {"value": None, "ci95": [None, None]}
    return ModelCard.from_dict(
        {
            "version": "gappy",
            "created": "2026-01-01T00:00:00+00:00",
            "architecture": "dcnn80-compact",
            "input_size": 80,
            "class_names": list(CLASS_NAMES),
            "gradcam_layer": "block4_conv3",
            "temperature": 1.25,
            "operating_point": None,
            "parameters": 10,
            "caveat": "c",
            "data": {
                "folders": [{"root": "/elsewhere/pool", "images": 12}],
                "split_sizes": {"train": 8, "val": 2, "test": 2},
            },
            "metrics": {
                "validation": {
                    "n": 2,
                    "accuracy": {"value": 0.5, "ci95": [0.1, 0.9], "k": 1, "n": 2},
                    "macro_auc": null,
                    "per_class": {"COVID-19": {"recall": null}},
                },
                "test": {"n": 2, "accuracy": None, "macro_auc": {"value": math.nan, "ci95": [math.nan, math.nan]}},
            },
            "flags": {"rates": {"test": {"n": 2, "any": None, "out_of_depth": None}}},
            "cross_hospital": [
                {
                    "held_out_source": "nih",
                    "run": "r",
                    "epochs": 1,
                    "shift": {
                        "n": 3,
                        "macro_auc_present": None,
                        "non_covid_called_covid": {"value": None, "k": 0, "n": 0},
                    },
                }
            ],
        }
    )


def test_a_card_with_null_figures_reads_with_dashes_in_the_summary_the_figures_and_core_info(capsys):
    card = card_with_gaps()
    summary = dict(report.card_summary(card, active="gappy", timezone="UTC"))
    assert summary["Status"].startswith("active")
    assert summary["Temperature (calibration)"] == "1.250"
    assert summary["Data"] == "…/pool (12 images)"
    assert summary["Operating point"] == "most probable class (no operating point)"
    rows = {(row["Split"], row["Figure"]): row["Value (95 % CI)"] for row in report.headline_rows(card)}
    assert rows[("Validation", "Accuracy")] == "0.500 (0.100–0.900)"
    assert rows[("Validation", "Macro AUC")] == rows[("Validation", "COVID-19 recall")] == DASH
    assert rows[("Test", "Accuracy")] == rows[("Test", "Macro AUC")] == DASH
    text = report.info_text(card, "gappy")
    assert "None" not in text and "nan" not in text
    assert "non-COVID called COVID-19 (%) —, macro AUC —" in text


def test_the_summary_writes_each_fact_by_its_kind():
    card = small_card(
        version="v9",
        created="2026-12-01T20:01:00+00:00",
        parameters=4277795,
        temperature=0.7013599538670596,
        training={"seconds": 810.0, "label_smoothing": 0.1, "device": {"kind": "CPU", "name": "x86_64"}},
    )
    summary = dict(report.card_summary(card, timezone="UTC"))
    assert summary["Created"] == "1 Dec 2026, 20:01 UTC"
    assert summary["Parameters"] == "4,277,795" and summary["Temperature (calibration)"] == "0.701"
    assert summary["Training time"] == "14 min" and summary["Label smoothing"] == "0.1"
    assert summary["Trained on"] == "CPU · x86_64" and summary["Classes"] == "COVID-19, Normal, Pneumonia"


def test_core_info_tolerates_null_figures(isolated_folders, capsys):
    from core.__main__ import main
    from tests.conftest import publish_random_version

    weights = isolated_folders / "weights"
    publish_random_version(weights, "gappy")
    card, gaps = ModelCard.load(weights / "gappy" / "card.json"), card_with_gaps()
    for key in ("metrics", "flags", "cross_hospital", "data"):
        setattr(card, key, getattr(gaps, key))
    card.save(weights / "gappy" / "card.json")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "Macro AUC (validation)" in out and "None" not in out


def test_history_rows_newest_first_with_old_and_new_rule():
    card = small_card(
        operating_point_history=[
            {
                "time": "2026-01-01T10:00:00+00:00",
                "reader": "A",
                "reason": "first",
                "old": None,
                "new": {"positive_class": "COVID-19", "threshold": 0.29},
            },
            {
                "time": "2026-01-02T10:00:00+00:00",
                "reader": "B",
                "reason": "second",
                "old": {"positive_class": "COVID-19", "threshold": 0.29},
                "new": {"positive_class": "abnormal", "threshold": 0.5},
            },
        ]
    )
    rows = report.history_rows(card, "UTC")
    assert [row["Reader"] for row in rows] == ["B", "A"]
    assert rows[0] == {
        "When": "2 Jan 2026, 10:00 UTC",
        "Reader": "B",
        "Reason": "second",
        "Change": "COVID-19 when p(COVID-19) ≥ 0.2900 → abnormal when 1 − p(Normal) ≥ 0.5000",
    }
    assert rows[1]["Change"] == "most probable class (no operating point) → COVID-19 when p(COVID-19) ≥ 0.2900"
    assert report.history_rows(small_card()) == []


def test_headline_comparison_puts_the_two_cards_side_by_side_with_dashes():
    active = small_card(metrics={"test": {"accuracy": {"value": 0.8, "ci95": [0.7, 0.9], "k": 8, "n": 10}}})
    candidate = small_card(
        metrics={
            "test": {
                "accuracy": {"value": 0.9, "ci95": [0.8, 0.95], "k": 9, "n": 10},
                "macro_auc": {"value": 0.95, "ci95": [0.9, 0.99]},
            }
        }
    )
    table = report.headline_comparison(active, candidate).set_index("Figure")
    assert list(table.columns) == ["Split", "Active", "Candidate"]
    assert table.loc["Accuracy", "Active"] == "0.800 (0.700–0.900)"
    assert table.loc["Accuracy", "Candidate"] == "0.900 (0.800–0.950)"
    assert (table.loc["Macro AUC", "Active"], table.loc["Macro AUC", "Candidate"]) == (DASH, "0.950 (0.900–0.990)")
