"""The Operating point page end to end (AppTest): its figures against an independent computation from the
predictions CSV, a target sensitivity, the two-step confirmation, the history of saves, the reset when the positive
class changes."""

import math
import re

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from core import operating_point as op
from core import registry
from tests.conftest import NO_POINT_NOTE, REPO

PAGE = "pages/operating_point.py"
APP_TIMEOUT = 60
EXACT = 1e-9
SHOWN = 0.0005 + EXACT  # the page shows proportions to 3 decimals
THRESHOLD_SHOWN = 0.00005 + EXACT  # and thresholds to 4
INTERVAL = re.compile(r"(-?\d+\.\d+) \((-?\d+\.\d+)–(-?\d+\.\d+)\)")


def read_csv_independently(version: str, filename=registry.VAL_PREDICTIONS) -> pd.DataFrame:
    return pd.read_csv(registry.version_dir(version) / filename)


def open_page():
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=APP_TIMEOUT)
    app.run()
    app.switch_page(PAGE).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def plain(text: str) -> str:
    """Markdown-escaped page text (``st.table`` cells, messages) as the reader sees it."""
    return re.sub(r"\\(.)", r"\1", str(text))


def parse_interval(text: str):
    match = INTERVAL.fullmatch(text)
    assert match, f"not 'value (low–high)': {text!r}"
    return tuple(float(group) for group in match.groups())


def independent_figures(frame: pd.DataFrame, positive: str, threshold: float) -> dict:
    """Sensitivity, specificity, PPV, NPV and accuracy with Wilson intervals, straight from the CSV."""
    if positive == "abnormal":
        scores, truth = 1.0 - frame["p_Normal"].to_numpy(), frame["label"].to_numpy() != "Normal"
    else:
        scores, truth = frame[f"p_{positive}"].to_numpy(), frame["label"].to_numpy() == positive
    called = scores >= threshold
    tp, fp = np.sum(truth & called), np.sum(~truth & called)
    tn, fn = np.sum(~truth & ~called), np.sum(truth & ~called)
    pairs = {
        "Sensitivity (recall)": (tp, tp + fn),
        "Specificity": (tn, tn + fp),
        "PPV (precision)": (tp, tp + fp),
        "NPV": (tn, tn + fn),
        "Accuracy": (tp + tn, len(frame)),
    }
    return {
        name: (k / n, *proportion_confint(k, n, method="wilson"), f"{k:,}/{n:,}") for name, (k, n) in pairs.items() if n
    }


def assert_page_shows(app, frame, positive, threshold, table_index=0):
    """The figures table (the first one: validation; the second last: the test report) shows the CSV's figures:
    'value (low–high)' to 3 decimals, the count, and '—' for a figure without cases, never None or nan."""
    table = app.dataframe[table_index].value.set_index("Figure")
    expected = independent_figures(frame, positive, threshold)
    for name, (value, low, high, count) in expected.items():
        shown = parse_interval(table.loc[name, "Value (95 % CI)"])
        np.testing.assert_allclose(shown, (value, low, high), atol=SHOWN, err_msg=name)
        assert table.loc[name, "Count"] == count
    for name in set(table.index) - set(expected) - {"F1"}:
        assert table.loc[name, "Value (95 % CI)"] == "—"
    assert not table.isin(["None", "nan", "[nan, nan]"]).any().any()


def point_history(version: str) -> list:
    return registry.load_card(version).operating_point_history


def save_on_page(app, reader: str, reason: str) -> None:
    """Click Save, check nothing is written before the confirmation, then confirm with a name and a reason."""
    card_file = registry.version_dir(app.session_state["version_under_test"]) / registry.CARD_FILE
    before = card_file.read_bytes()
    app.button(key="op_save").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert card_file.read_bytes() == before  # the confirmation step writes nothing
    assert app.button(key="op_confirm") and app.text_input(key="op_reader")
    app.text_input(key="op_reader").input(reader)
    app.text_input(key="op_reason").input(reason).run()
    assert card_file.read_bytes() == before  # nor does typing the name and reason
    app.button(key="op_confirm").click().run()
    assert not app.exception, [e.value for e in app.exception]


@pytest.mark.slow
def test_page_figures_equal_an_independent_computation(version):
    frame = read_csv_independently(version)
    app = open_page()
    assert any("argmax used" in info.value for info in app.info)
    slider = app.slider(key=f"op_threshold_{version}")
    observed = float(np.sort(frame["p_COVID-19"])[len(frame) // 3])
    for threshold in (0.3, 0.85, observed):
        slider.set_value(threshold).run()
        assert not app.exception
        assert_page_shows(app, frame, "COVID-19", threshold)
    app.selectbox(key=f"op_positive_{version}").select("abnormal").run()
    app.slider(key=f"op_threshold_{version}").set_value(observed).run()
    assert_page_shows(app, frame, "abnormal", observed)

    app.slider(key=f"op_prevalence_{version}").set_value(10.0).run()
    figures = independent_figures(frame, "abnormal", observed)
    ppv, npv = op.predictive_values(figures["Sensitivity (recall)"][0], figures["Specificity"][0], 0.10)
    shown = [float(metric.value) for metric in app.metric[:2]]  # shown to 3 decimals
    assert shown == pytest.approx([ppv, npv], abs=SHOWN)
    assert all(metric.value == f"{float(metric.value):.3f}" for metric in app.metric[:2])


@pytest.mark.slow
def test_page_target_sensitivity_confirmed_save_and_restart(version):
    frame = read_csv_independently(version)
    app = open_page()
    app.session_state["version_under_test"] = version
    app.number_input(key=f"op_target_{version}").set_value(95.0).run()
    app.button(key="op_apply_target").click().run()
    scores, truth = op.scores_and_truth(frame, "COVID-19")
    expected = op.threshold_for_sensitivity(truth, scores, 0.95)
    positive_scores = np.sort(scores[truth])[::-1]
    assert expected == positive_scores[math.ceil(0.95 * len(positive_scores) - EXACT) - 1]  # the k-th highest
    assert app.slider(key=f"op_threshold_{version}").value == pytest.approx(expected, abs=EXACT)
    assert_page_shows(app, frame, "COVID-19", expected)
    table = app.dataframe[2].value.set_index("Target sensitivity")  # after the fragment's two tables
    assert float(table.loc["95.0 %", "Threshold"]) == pytest.approx(expected, abs=THRESHOLD_SHOWN)
    assert parse_interval(table.loc["95.0 %", "Specificity (95 % CI)"])

    save_on_page(app, "Dr A. Reader", "target 95 % sensitivity")
    point = registry.load_card(version).operating_point
    assert (point["positive_class"], point["chosen_on"]) == ("COVID-19", "validation")
    assert point["threshold"] == pytest.approx(expected, abs=EXACT)

    restarted = open_page()
    assert restarted.slider(key=f"op_threshold_{version}").value == pytest.approx(expected, abs=EXACT)
    assert any(f"≥ {expected:.4f}" in plain(message.value) for message in restarted.success)
    assert not any("argmax used" in info.value for info in restarted.info)
    assert_page_shows(restarted, frame, "COVID-19", expected)
    test_frame = read_csv_independently(version, registry.TEST_PREDICTIONS)
    assert_page_shows(restarted, test_frame, "COVID-19", expected, table_index=-2)

    restarted.session_state["version_under_test"] = version
    restarted.button(key="op_clear").click().run()
    assert registry.load_card(version).operating_point is not None  # not before the confirmation
    assert restarted.text_input(key="op_reader").value == ""  # a new session does not know the reader
    restarted.text_input(key="op_reader").input("Dr B")
    restarted.text_input(key="op_reason").input("back to argmax").run()
    restarted.button(key="op_confirm").click().run()
    assert registry.load_card(version).operating_point is None
    assert any("argmax used" in info.value for info in restarted.info)


@pytest.mark.slow
def test_page_two_confirmed_saves_make_two_history_entries(tiny_version):
    op.clear_operating_point(tiny_version, **NO_POINT_NOTE)
    start = len(point_history(tiny_version))
    app = open_page()
    app.session_state["version_under_test"] = tiny_version
    app.slider(key=f"op_threshold_{tiny_version}").set_value(0.3).run()
    save_on_page(app, "Dr A", "first audit")
    app.slider(key=f"op_threshold_{tiny_version}").set_value(0.42).run()
    app.button(key="op_save").click().run()
    assert app.text_input(key="op_reader").value == "Dr A"  # remembered within the session
    app.text_input(key="op_reader").input("Dr B")
    app.text_input(key="op_reason").input("second audit").run()
    app.button(key="op_confirm").click().run()
    assert not app.exception, [e.value for e in app.exception]

    history = point_history(tiny_version)[start:]
    assert [(e["reader"], e["reason"]) for e in history] == [("Dr A", "first audit"), ("Dr B", "second audit")]
    assert history[0]["old"] is None
    assert history[0]["new"]["threshold"] == pytest.approx(0.3, abs=EXACT)
    assert history[1]["old"] == history[0]["new"]
    assert history[1]["new"]["threshold"] == pytest.approx(0.42, abs=EXACT)
    shown = [plain(cell) for cell in app.table[-1].value["Change"]]  # the history table, newest first
    assert shown[:2] == [
        "COVID-19 when p(COVID-19) ≥ 0.3000 → COVID-19 when p(COVID-19) ≥ 0.4200",
        "most probable class (no operating point) → COVID-19 when p(COVID-19) ≥ 0.3000",
    ]
    assert [plain(cell) for cell in app.table[-1].value["Reader"]][:2] == ["Dr B", "Dr A"]


@pytest.mark.slow
def test_page_refuses_a_confirmation_without_name_or_reason(tiny_version):
    app = open_page()
    app.session_state["version_under_test"] = tiny_version
    card_file = registry.version_dir(tiny_version) / registry.CARD_FILE
    before = card_file.read_bytes()
    app.button(key="op_save").click().run()
    confirmation = plain(app.table[0].value.to_string())
    for row in ("Rule", "Sensitivity for COVID-19", "Specificity for COVID-19", "PPV at 5.0 % prevalence"):
        assert row in confirmation
    app.text_input(key="op_reason").input("no name given").run()
    app.button(key="op_confirm").click().run()
    assert card_file.read_bytes() == before
    assert any("name" in message.value for message in app.error)
    app.button(key="op_cancel").click().run()
    assert not app.button(key="op_save").disabled
    with pytest.raises(KeyError):
        app.button(key="op_confirm")
    assert card_file.read_bytes() == before


@pytest.mark.slow
def test_page_threshold_resets_when_the_positive_class_changes(tiny_version):
    frame = read_csv_independently(tiny_version)
    app = open_page()
    app.slider(key=f"op_threshold_{tiny_version}").set_value(0.9).run()
    app.selectbox(key=f"op_positive_{tiny_version}").select("abnormal").run()
    scores, truth = op.scores_and_truth(frame, "abnormal")
    expected = op.threshold_for_sensitivity(truth, scores, 0.975)
    assert app.slider(key=f"op_threshold_{tiny_version}").value == pytest.approx(expected, abs=EXACT)
    assert expected != pytest.approx(0.9, abs=0.01)
    op.save_operating_point(tiny_version, "Pneumonia", 0.61, reader="A", reason="r")
    app = open_page()
    app.selectbox(key=f"op_positive_{tiny_version}").select("Pneumonia").run()
    assert app.slider(key=f"op_threshold_{tiny_version}").value == pytest.approx(0.61, abs=EXACT)  # its saved value
