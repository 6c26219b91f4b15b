"""Operating point: choose a threshold on the active version's validation predictions, see what it buys and
costs with honest intervals, and save it with the version — after a confirmation that shows the change and asks
who makes it and why (kept in the card's history). The figures come from ``core.operating_point``, their text
from ``core.report``; the test figures are shown on their own tab, for the report only."""

import html

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import operating_point as op
from core import registry
from core.report import (
    change_rows,
    count_text,
    figure_text,
    history_rows,
    number_text,
    point_text,
    score_text,
    threshold_text,
    time_text,
)
from pages.common import (
    CHART_HEIGHT,
    CHART_MARGIN,
    active_card,
    confusion_figure,
    escape_markdown,
    reader_timezone,
    reliability_figure,
    run_through_app,
    text_table,
)

DEFAULT_THRESHOLD = 0.5
THRESHOLD_STEP = 0.001
DEFAULT_TARGET_PERCENT = 97.5
DEFAULT_PREVALENCE_PERCENT = 5.0
FIGURE_NAMES = {
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
    "accuracy": "Accuracy",
    "f1": "F1",
}
COUNT_TITLES = {"tp": "TP", "fp": "FP", "tn": "TN", "fn": "FN"}
RATE_TITLES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV", "npv": "NPV"}
CI = " (95 % CI)"
HISTOGRAM_BIN = 0.02
DIAGONAL = {"dash": "dot", "color": "grey"}
MARKER = {"size": 12, "color": "red"}
CHART = {"height": CHART_HEIGHT, "margin": CHART_MARGIN, "legend": {"orientation": "h", "y": -0.25}}
READER_KEY, REASON_KEY, REMEMBERED_READER = "op_reader", "op_reason", "op_reader_name"
WHOLE_PAGE = "op_whole_page"  # a saved change or a new positive class: rerun the whole page, not the fragment


def plot_text(text) -> str:
    """Data-derived text made inert for plotly labels (which render a subset of HTML)."""
    return html.escape(str(text))


def positive_label(name: str) -> str:
    return "abnormal (anything but Normal)" if name == op.ABNORMAL else name


@st.cache_data(show_spinner=False, max_entries=8)
def cached_predictions(version: str, split: str, path: str, modified_ns: int) -> pd.DataFrame:
    """A version's predictions; the file's path and modification time key the cache, so a new file is re-read."""
    return op.load_predictions(version, split)


def predictions(version: str, split: str) -> pd.DataFrame:
    path = op.predictions_path(version, split)
    try:
        modified_ns = path.stat().st_mtime_ns
    except OSError:
        message = f"Version '{version}' has no {op.SPLIT_NAMES[split]} predictions file."
        raise registry.ModelVersionError(message) from None
    return cached_predictions(version, split, str(path), modified_ns)


@st.cache_data(show_spinner="Bootstrapping the AUC interval…", max_entries=16)
def cached_roc(frame: pd.DataFrame, positive: str):
    """ROC and AUC with its bootstrap interval (slow: cached per predictions and positive class)."""
    scores, truth = op.scores_and_truth(frame, positive)
    return op.roc(truth, scores)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_precision_recall(frame: pd.DataFrame, positive: str):
    scores, truth = op.scores_and_truth(frame, positive)
    return op.precision_recall(truth, scores)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_sensitivity_table(frame: pd.DataFrame, positive: str) -> pd.DataFrame:
    scores, truth = op.scores_and_truth(frame, positive)
    return sensitivity_table(truth, scores)


@st.cache_data(show_spinner=False, max_entries=256)
def cached_figures(frame: pd.DataFrame, positive: str, threshold: float) -> dict:
    """``op.figures`` at a threshold (its F1 interval is a bootstrap): a slider moved back and forth costs once."""
    scores, truth = op.scores_and_truth(frame, positive)
    return op.figures(truth, scores, threshold)


@st.cache_data(show_spinner=False, max_entries=256)
def cached_per_source_table(frame: pd.DataFrame, positive: str, threshold: float) -> pd.DataFrame:
    return per_source_table(frame, positive, threshold)


# --- tables ----------------------------------------------------------------------------------------------------


def figures_table(point: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "Figure": label,
                "Value" + CI: figure_text(point[key]),
                "Count": count_text(point[key]),
                "Interval": "bootstrap (percentile)" if key == "f1" else "Wilson",
            }
            for key, label in FIGURE_NAMES.items()
        ]
    )


def show_figures(point: dict, positive: str) -> None:
    st.dataframe(figures_table(point), hide_index=True)
    st.caption(
        f"TP {point['tp']} · FP {point['fp']} · TN {point['tn']} · FN {point['fn']} (n = {point['n']}); "
        f"positive when {escape_markdown(score_text(positive))} ≥ {threshold_text(point['threshold'])}."
    )


def sensitivity_table(truth, scores) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "Target sensitivity": f"{100 * row['target_sensitivity']:.1f} %",
                "Threshold": threshold_text(row["threshold"]),
                "Sensitivity": number_text(row["sensitivity"]["value"]),
                "Specificity" + CI: figure_text(row["specificity"]),
                **{title: row[key] for key, title in COUNT_TITLES.items()},
            }
            for row in op.sensitivity_table(truth, scores)
        ]
    )


def per_source_table(frame: pd.DataFrame, positive: str, threshold: float) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "Source": row["source"],
                "Images": row["n"],
                "Positives": row["positives"],
                **{title + CI: figure_text(row[key]) for key, title in RATE_TITLES.items()},
                **{title: row[key] for key, title in COUNT_TITLES.items()},
            }
            for row in op.per_source(frame, positive, threshold)
        ]
    )


# --- charts ----------------------------------------------------------------------------------------------------


def roc_figure(curve: dict, point: dict) -> go.Figure:
    auc = curve["auc"]
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name="ROC"))
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=DIAGONAL))
    figure.add_trace(
        go.Scatter(
            x=[1 - point["specificity"]["value"]],
            y=[point["sensitivity"]["value"]],
            mode="markers",
            name="operating point",
            marker=MARKER,
        )
    )
    figure.update_layout(
        title=f"ROC — AUC {figure_text(auc)}", xaxis_title="1 − specificity", yaxis_title="sensitivity", **CHART
    )
    return figure


def precision_recall_figure(curve: dict, point: dict) -> go.Figure:
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=curve["recall"], y=curve["precision"], mode="lines", name="precision–recall"))
    figure.add_trace(
        go.Scatter(
            x=[point["sensitivity"]["value"]],
            y=[point["ppv"]["value"]],
            mode="markers",
            name="operating point",
            marker=MARKER,
        )
    )
    figure.update_layout(
        title=f"Precision–recall — average precision {number_text(curve['average_precision'])}",
        xaxis_title="recall (sensitivity)",
        yaxis_title="precision (PPV)",
        **CHART,
    )
    return figure


def histogram_figure(frame: pd.DataFrame, scores, class_names, positive: str, threshold: float) -> go.Figure:
    figure = go.Figure()
    for name in class_names:
        figure.add_trace(
            go.Histogram(
                x=scores[(frame["label"] == name).to_numpy()],
                name=plot_text(name),
                opacity=0.6,
                xbins={"start": 0, "end": 1, "size": HISTOGRAM_BIN},
            )
        )
    figure.add_vline(x=threshold, line={"color": "red", "dash": "dash"})
    figure.update_layout(
        barmode="overlay",
        title=f"{plot_text(score_text(positive))} by true class",
        xaxis_title=plot_text(score_text(positive)),
        yaxis_title="cases",
        **CHART,
    )
    return figure


# --- the saved point, its history and changing it ------------------------------------------------------------


def show_saved(card, timezone) -> None:
    point = card.operating_point
    if not point:
        st.info("No saved operating point for this version: argmax used (the most probable class is the call).")
    else:
        saved = point.get("figures") or {}
        shown = [f"{key} {number_text((saved.get(key) or {}).get('value'))}" for key in ("sensitivity", "specificity")]
        st.success(
            f"Saved operating point: {escape_markdown(point_text(point))}; chosen on "
            f"{escape_markdown(point.get('chosen_on') or '?')} data ({', '.join(shown)}), saved "
            f"{escape_markdown(time_text(point.get('saved'), timezone))}."
        )
    rows = history_rows(card, timezone)
    with st.expander(f"History of changes ({len(rows)})", expanded=False):
        if rows:
            text_table(rows)
        else:
            st.caption("No change recorded since the version was published.")


def reset_threshold(frame: pd.DataFrame, saved: dict, keys: dict) -> None:
    """On a new positive class: its saved threshold, else the highest reaching the target sensitivity (never the
    previous class's threshold, which means something else on another score)."""
    positive = st.session_state[keys["positive"]]
    threshold = saved.get("threshold") if saved.get("positive_class") == positive else None
    if threshold is None:
        scores, truth = op.scores_and_truth(frame, positive)
        threshold = op.threshold_for_sensitivity(truth, scores, st.session_state[keys["target"]] / 100)
    st.session_state[keys["threshold"]] = float(DEFAULT_THRESHOLD if threshold is None else threshold)
    st.session_state.pop(keys["pending"], None)
    st.session_state[WHOLE_PAGE] = True  # the tables outside the fragment are per positive class


def apply_target(truth, scores, keys: dict) -> None:
    """Set the slider to the highest threshold reaching the chosen sensitivity."""
    threshold = op.threshold_for_sensitivity(truth, scores, st.session_state[keys["target"]] / 100)
    if threshold is not None:
        st.session_state[keys["threshold"]] = threshold
    st.session_state.pop(keys["pending"], None)


def request_change(keys: dict, new_point) -> None:
    """First step of a change: remember what would be saved (None: clear); the card is not touched yet."""
    st.session_state[keys["pending"]] = {"point": new_point}
    st.session_state.pop("op_error", None)


def commit_change(version: str, keys: dict) -> None:
    """Second step: write the confirmed change with the reader's name and reason, or say what is missing."""
    point = st.session_state[keys["pending"]]["point"]
    reader, reason = st.session_state.get(READER_KEY, ""), st.session_state.get(REASON_KEY, "")
    try:
        if point is None:
            op.clear_operating_point(version, reader=reader, reason=reason)
        else:
            op.save_operating_point(version, point["positive_class"], point["threshold"], reader=reader, reason=reason)
    except (ValueError, registry.ModelVersionError) as error:
        st.session_state["op_error"] = str(error)
        return
    st.session_state[WHOLE_PAGE] = True  # the saved point above the fragment changed
    st.session_state[REMEMBERED_READER] = reader
    st.session_state[REASON_KEY] = ""
    st.session_state.pop(keys["pending"], None)
    st.session_state.pop("op_error", None)
    st.toast("Operating point cleared." if point is None else f"Saved: {point_text(point)}", icon=":material/check:")


def confirmation(frame: pd.DataFrame, card, keys: dict, prevalence: float) -> None:
    """The before → after table, the reader's name and reason, and the confirm / cancel buttons."""
    new_point = st.session_state[keys["pending"]]["point"]
    old_point = card.operating_point
    positive = (new_point or old_point or {}).get("positive_class", op.DEFAULT_POSITIVE)
    before, after = (
        op.decision_figures(frame, card.class_names, point, positive, prevalence) for point in (old_point, new_point)
    )
    with st.container(border=True):
        st.markdown("**:material/rule: Confirm the change of the operating point**")
        st.caption(
            "Every reader's calls change at once: Diagnose and `python -m core predict` use the saved point. "
            "The change is recorded in the version's card with your name and reason."
        )
        text_table(change_rows(positive, prevalence, before, after, old_point, new_point))
        st.session_state.setdefault(READER_KEY, st.session_state.get(REMEMBERED_READER, ""))
        left, right = st.columns([1, 2])
        left.text_input("Your name (required)", key=READER_KEY)
        right.text_input(
            "Reason for the change (required)",
            key=REASON_KEY,
            placeholder="e.g. local audit: too many missed COVID-19 cases at the old threshold",
        )
        if st.session_state.get("op_error"):
            st.error(escape_markdown(st.session_state["op_error"]))
        left, right = st.columns(2)
        left.button(
            "Confirm and save" if new_point else "Confirm and clear",
            key="op_confirm",
            type="primary",
            icon=":material/check:",
            on_click=commit_change,
            args=(card.version, keys),
        )
        right.button(
            "Cancel",
            key="op_cancel",
            icon=":material/close:",
            on_click=st.session_state.pop,
            args=(keys["pending"], None),
        )


# --- the page ----------------------------------------------------------------------------------------------------


def show_calibration(card) -> None:
    metrics = card.metrics.get("validation") or {}
    columns = st.columns(3)
    columns[0].metric("Temperature", number_text(card.temperature))
    for column, key, label in (
        (columns[1], "ece_uncalibrated", "ECE before temperature scaling"),
        (columns[2], "ece", "ECE after temperature scaling"),
    ):
        column.metric(label, number_text(metrics.get(key)))
    if metrics.get("reliability"):
        st.plotly_chart(reliability_figure(metrics["reliability"], "Reliability (top-label, calibrated, validation)"))
    else:
        st.caption("This version's card has no reliability bins.")


def show_test_report(card, positive: str, threshold: float) -> None:
    st.warning(
        "Test report — not for choosing. The test set is looked at once, for the report; choose and "
        "save the threshold on the validation tab."
    )
    point = card.operating_point
    if point:
        positive, threshold = point["positive_class"], float(point["threshold"])
        st.caption("At the saved operating point.")
    else:
        st.caption(
            f"No saved operating point: at the validation tab's threshold when this page was drawn, "
            f"{threshold_text(threshold)}."
        )
    try:
        frame = predictions(card.version, "test")
    except registry.ModelVersionError as error:
        st.error(escape_markdown(error))
        return
    show_figures(cached_figures(frame, positive, threshold), positive)
    st.plotly_chart(
        confusion_figure(
            op.decision_matrix(frame, card.class_names, positive, threshold),
            card.class_names,
            "Confusion matrix at the saved point (test)",
        ),
        key="test_matrix",
    )
    st.subheader("Per source (test)")
    st.dataframe(cached_per_source_table(frame, positive, threshold), hide_index=True)


def controls(frame: pd.DataFrame, card, keys: dict, choices: list):
    """Positive class, threshold with its save / clear buttons beside it, target sensitivity and prevalence;
    returns (positive, scores, truth, threshold, prevalence as a fraction)."""
    saved = card.operating_point or {}
    left, right = st.columns([3, 1])
    positive = left.selectbox(
        "Positive class",
        choices,
        key=keys["positive"],
        format_func=positive_label,
        on_change=reset_threshold,
        args=(frame, saved, keys),
    )
    scores, truth = op.scores_and_truth(frame, positive)
    threshold = left.slider(
        f"Threshold on {escape_markdown(score_text(positive))}",
        0.0,
        1.0,
        step=THRESHOLD_STEP,
        format="%.3f",
        key=keys["threshold"],
        on_change=st.session_state.pop,
        args=(keys["pending"], None),
    )
    left.caption(
        f"Exact threshold {threshold_text(threshold)}. A new positive class resets it (to its saved value, "
        "else to the highest reaching the target sensitivity)."
    )
    save, clear = left.columns(2)
    save.button(
        "Save this operating point…",
        key="op_save",
        type="primary",
        icon=":material/save:",
        on_click=request_change,
        args=(keys, {"positive_class": positive, "threshold": threshold}),
    )
    clear.button(
        "Clear the saved operating point…",
        key="op_clear",
        icon=":material/delete:",
        disabled=not saved,
        on_click=request_change,
        args=(keys, None),
    )
    right.number_input("Target sensitivity (%)", 50.0, 100.0, step=0.5, format="%.1f", key=keys["target"])
    right.button(
        "Set threshold",
        key="op_apply_target",
        on_click=apply_target,
        args=(truth, scores, keys),
        help="The highest threshold whose validation sensitivity reaches the target.",
    )
    prevalence = right.slider(
        "Prevalence of the positive class (%)",
        0.1,
        50.0,
        step=0.1,
        key=keys["prevalence"],
        help="For the predictive values (PPV, NPV) in your population.",
    )
    return positive, scores, truth, threshold, prevalence / 100


def main() -> None:
    run_through_app(__file__)
    st.title("Operating point")
    card = active_card()
    if card is None:
        st.stop()
    version, class_names, timezone = card.version, card.class_names, reader_timezone()
    st.caption(
        f"Model version {escape_markdown(version)}. Thresholds are chosen on its validation predictions and "
        "belong to this version only. A case is positive when its score is ≥ the threshold."
    )
    show_saved(card, timezone)
    try:
        frame = predictions(version, "val")
    except registry.ModelVersionError as error:
        st.error(escape_markdown(error))
        st.stop()

    saved = card.operating_point or {}
    choices = op.positive_classes(class_names)
    keys = {name: f"op_{name}_{version}" for name in ("positive", "threshold", "target", "prevalence", "pending")}
    st.session_state.setdefault(
        keys["positive"],
        saved.get("positive_class", op.DEFAULT_POSITIVE if op.DEFAULT_POSITIVE in choices else choices[0]),
    )
    st.session_state.setdefault(keys["threshold"], float(saved.get("threshold", DEFAULT_THRESHOLD)))
    st.session_state.setdefault(keys["target"], DEFAULT_TARGET_PERCENT)
    st.session_state.setdefault(keys["prevalence"], DEFAULT_PREVALENCE_PERCENT)
    validation, test = st.tabs(["Validation (choose here)", "Test report (not for choosing)"])
    with validation:
        workbench(frame, card, keys, choices)
        positive = st.session_state[keys["positive"]]
        st.subheader("Thresholds for target sensitivities")
        st.caption("For each target, the highest threshold that reaches it (as in Minaee et al., Deep-COVID).")
        st.dataframe(cached_sensitivity_table(frame, positive), hide_index=True)
        st.subheader("Calibration")
        show_calibration(card)
    with test:
        show_test_report(card, positive, st.session_state[keys["threshold"]])


@st.fragment
def workbench(frame: pd.DataFrame, card, keys: dict, choices: list) -> None:
    """The controls and every figure they change: a fragment, so a move of the threshold redraws this part of the
    page alone (what does not move with it is drawn outside); a saved change or a new positive class reruns the
    whole page."""
    if st.session_state.pop(WHOLE_PAGE, False):
        st.rerun(scope="app")
    class_names = card.class_names
    positive, scores, truth, threshold, prevalence = controls(frame, card, keys, choices)
    if st.session_state.get(keys["pending"]):
        confirmation(frame, card, keys, prevalence)

    point = cached_figures(frame, positive, threshold)
    st.subheader("Figures at this threshold (validation)")
    show_figures(point, positive)
    curve, pr_curve = cached_roc(frame, positive), cached_precision_recall(frame, positive)
    left, right = st.columns(2)
    if curve:
        left.plotly_chart(roc_figure(curve, point))
        right.plotly_chart(precision_recall_figure(pr_curve, point))
    else:
        st.caption("ROC and precision–recall need both positive and negative validation cases.")
    left, right = st.columns(2)
    left.plotly_chart(
        confusion_figure(
            op.decision_matrix(frame, class_names, positive, threshold),
            class_names,
            "Confusion matrix at this threshold (validation)",
        )
    )
    right.plotly_chart(histogram_figure(frame, scores, class_names, positive, threshold))

    st.subheader(f"Predictive values at {100 * prevalence:.1f} % prevalence")
    predictive = op.predictive_values_at(point, prevalence)
    columns = st.columns(2)
    for column, key in zip(columns, ("ppv", "npv")):
        low, high = predictive[key]["range"]
        column.metric(f"{key.upper()} at {100 * prevalence:.1f} %", number_text(predictive[key]["value"]))
        column.caption(f"range {number_text(low)}–{number_text(high)} from the sensitivity and specificity intervals")

    st.subheader("Per source (validation)")
    st.caption("A model that learnt the source instead of the disease looks good overall and bad per source.")
    st.dataframe(cached_per_source_table(frame, positive, threshold), hide_index=True)


main()
