"""Operating point: choose a threshold on the active version's validation predictions, see what it buys and
costs with honest intervals, and save it with the version. The figures come from ``core.operating_point``;
the test figures are shown on their own tab, for the report only."""

import html

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import operating_point as op
from core import registry
from pages.common import active_card, escape_markdown

DEFAULT_THRESHOLD = 0.5
THRESHOLD_STEP = 0.001
DEFAULT_TARGET_PERCENT = 97.5
DEFAULT_PREVALENCE_PERCENT = 5.0
FIGURE_NAMES = {"sensitivity": "Sensitivity (recall)", "specificity": "Specificity", "ppv": "PPV (precision)",
                "npv": "NPV", "accuracy": "Accuracy", "f1": "F1"}
PROBABILITY = st.column_config.NumberColumn(format="%.3f")
FIGURE_COLUMNS = {"value": PROBABILITY, "ci95_low": st.column_config.NumberColumn("95 % CI low", format="%.3f"),
                  "ci95_high": st.column_config.NumberColumn("95 % CI high", format="%.3f")}
THRESHOLD = st.column_config.NumberColumn(format="%.6f")
HISTOGRAM_BIN = 0.02
DIAGONAL = {"dash": "dot", "color": "grey"}
MARKER = {"size": 12, "color": "red"}


def plot_text(text) -> str:
    """Data-derived text made inert for plotly labels (which render a subset of HTML)."""
    return html.escape(str(text))


def score_name(positive: str) -> str:
    return "1 − p(Normal)" if positive == op.ABNORMAL else f"p({positive})"


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


def interval_columns(entry: dict) -> dict:
    """A figure as table columns: value, its 95 % interval and, for proportions, the count behind it."""
    count = f"{entry['k']}/{entry['n']}" if "k" in entry else ""
    return {"value": entry["value"], "ci95_low": entry["ci95"][0], "ci95_high": entry["ci95"][1], "count": count}


def figures_table(point: dict) -> pd.DataFrame:
    rows = [{"figure": label, **interval_columns(point[key]),
             "interval": "bootstrap (percentile)" if key == "f1" else "Wilson"} for key, label in FIGURE_NAMES.items()]
    return pd.DataFrame(rows)


def show_figures(point: dict, positive: str) -> None:
    st.dataframe(figures_table(point), hide_index=True, column_config=FIGURE_COLUMNS)
    st.caption(
        f"TP {point['tp']} · FP {point['fp']} · TN {point['tn']} · FN {point['fn']} (n = {point['n']}); "
        f"positive when {escape_markdown(score_name(positive))} ≥ {point['threshold']:.6f}."
    )


def sensitivity_table(truth, scores) -> pd.DataFrame:
    rows = []
    for row in op.sensitivity_table(truth, scores):
        low, high = row["specificity"]["ci95"]
        rows.append({"target_sensitivity": row["target_sensitivity"], "threshold": row["threshold"],
                     "sensitivity": row["sensitivity"]["value"], "specificity": row["specificity"]["value"],
                     "specificity_ci95_low": low, "specificity_ci95_high": high,
                     **{key: row[key] for key in ("tp", "fp", "tn", "fn")}})
    return pd.DataFrame(rows)


def per_source_table(frame: pd.DataFrame, positive: str, threshold: float) -> pd.DataFrame:
    rows = []
    for row in op.per_source(frame, positive, threshold):
        flat = {key: row[key] for key in ("source", "n", "positives", "tp", "fp", "tn", "fn")}
        for key in ("sensitivity", "specificity", "ppv", "npv"):
            flat.update({key: row[key]["value"], f"{key}_ci95": "[{:.3f}, {:.3f}]".format(*row[key]["ci95"])})
        rows.append(flat)
    return pd.DataFrame(rows)


def show_per_source(frame: pd.DataFrame, positive: str, threshold: float) -> None:
    st.dataframe(per_source_table(frame, positive, threshold), hide_index=True,
                 column_config={key: PROBABILITY for key in ("sensitivity", "specificity", "ppv", "npv")})


def roc_figure(curve: dict, point: dict) -> go.Figure:
    auc = curve["auc"]
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name="ROC"))
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=DIAGONAL))
    figure.add_trace(go.Scatter(x=[1 - point["specificity"]["value"]], y=[point["sensitivity"]["value"]],
                                mode="markers", name="operating point", marker=MARKER))
    figure.update_layout(title=f"ROC — AUC {auc['value']:.3f} [{auc['ci95'][0]:.3f}, {auc['ci95'][1]:.3f}]",
                         xaxis_title="1 − specificity", yaxis_title="sensitivity", height=400)
    return figure


def precision_recall_figure(curve: dict, point: dict) -> go.Figure:
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=curve["recall"], y=curve["precision"], mode="lines", name="precision–recall"))
    figure.add_trace(go.Scatter(x=[point["sensitivity"]["value"]], y=[point["ppv"]["value"]], mode="markers",
                                name="operating point", marker=MARKER))
    figure.update_layout(title=f"Precision–recall — average precision {curve['average_precision']:.3f}",
                         xaxis_title="recall (sensitivity)", yaxis_title="precision (PPV)", height=400)
    return figure


def matrix_figure(matrix, class_names) -> go.Figure:
    names = [plot_text(name) for name in class_names]
    figure = go.Figure(go.Heatmap(z=matrix, x=names, y=names, text=matrix, texttemplate="%{text}",
                                  colorscale="Blues", showscale=False))
    figure.update_layout(title="Confusion matrix at the operating point", xaxis_title="call", yaxis_title="true class",
                         yaxis={"autorange": "reversed"}, height=400)
    return figure


def histogram_figure(frame: pd.DataFrame, scores, class_names, positive: str, threshold: float) -> go.Figure:
    figure = go.Figure()
    for name in class_names:
        figure.add_trace(go.Histogram(x=scores[(frame["label"] == name).to_numpy()], name=plot_text(name), opacity=0.6,
                                      xbins={"start": 0, "end": 1, "size": HISTOGRAM_BIN}))
    figure.add_vline(x=threshold, line={"color": "red", "dash": "dash"})
    figure.update_layout(barmode="overlay", title=f"{plot_text(score_name(positive))} by true class",
                         xaxis_title=plot_text(score_name(positive)), yaxis_title="cases", height=400)
    return figure


def reliability_figure(bins: list) -> go.Figure:
    filled = [row for row in bins if row["count"]]
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line=DIAGONAL))
    figure.add_trace(go.Scatter(x=[row["confidence"] for row in filled], y=[row["accuracy"] for row in filled],
                                mode="lines+markers", name="model", text=[f"n = {row['count']}" for row in filled]))
    figure.update_layout(title="Reliability (top-label, calibrated, validation)", xaxis_title="mean confidence",
                         yaxis_title="accuracy", height=400)
    return figure


def show_saved(card: dict) -> None:
    point = card.get("operating_point")
    if not point:
        st.info("No saved operating point for this version: argmax used (the most probable class is the call).")
        return
    saved = point.get("figures") or {}
    shown = [f"{key} {saved[key]['value']:.3f}" for key in ("sensitivity", "specificity")
             if (saved.get(key) or {}).get("value") is not None]
    st.success(
        f"Saved operating point: {escape_markdown(point['positive_class'])} when "
        f"{escape_markdown(score_name(point['positive_class']))} ≥ {point['threshold']:.6f}; "
        f"chosen on {escape_markdown(point.get('chosen_on', '?'))} data ({', '.join(shown) or 'no figures'}), "
        f"saved {escape_markdown(point.get('saved', '?'))}."
    )


def apply_target(truth, scores, threshold_key: str, target_key: str) -> None:
    """Set the slider to the highest threshold reaching the chosen sensitivity."""
    threshold = op.threshold_for_sensitivity(truth, scores, st.session_state[target_key] / 100)
    if threshold is not None:
        st.session_state[threshold_key] = threshold


def save_point(version: str, positive: str, threshold_key: str) -> None:
    try:
        point = op.save_operating_point(version, positive, st.session_state[threshold_key])
    except (ValueError, registry.ModelVersionError) as error:
        st.error(escape_markdown(error))
        return
    st.toast(f"Saved: {escape_markdown(point['positive_class'])} at {point['threshold']:.6f}")


def show_calibration(card: dict) -> None:
    metrics = card.get("metrics", {}).get("validation") or {}
    columns = st.columns(3)
    columns[0].metric("Temperature", f"{card.get('temperature', 1.0):.3f}")
    for column, key, label in ((columns[1], "ece_uncalibrated", "ECE before temperature scaling"),
                               (columns[2], "ece", "ECE after temperature scaling")):
        value = metrics.get(key)
        column.metric(label, "—" if value is None else f"{value:.3f}")
    if metrics.get("reliability"):
        st.plotly_chart(reliability_figure(metrics["reliability"]))
    else:
        st.caption("This version's card has no reliability bins.")


def show_test_report(card: dict, positive: str, threshold: float) -> None:
    st.warning("Test report — not for choosing. The test set is looked at once, for the report; choose and "
               "save the threshold on the validation tab.")
    point = card.get("operating_point")
    if point:
        positive, threshold = point["positive_class"], float(point["threshold"])
        st.caption("At the saved operating point.")
    else:
        st.caption("No saved operating point: at the current validation-tab threshold.")
    try:
        frame = predictions(card["version"], "test")
    except registry.ModelVersionError as error:
        st.error(escape_markdown(error))
        return
    scores, truth = op.scores_and_truth(frame, positive)
    show_figures(op.figures(truth, scores, threshold), positive)
    st.plotly_chart(matrix_figure(op.decision_matrix(frame, card["class_names"], positive, threshold),
                                  card["class_names"]), key="test_matrix")
    st.subheader("Per source (test)")
    show_per_source(frame, positive, threshold)


def main() -> None:
    st.title("Operating point")
    card = active_card()
    if card is None:
        st.stop()
    version, class_names = card["version"], card["class_names"]
    st.caption(f"Model version {escape_markdown(version)}. Thresholds are chosen on its validation predictions and "
               "belong to this version only. A case is positive when its score is ≥ the threshold.")
    show_saved(card)
    try:
        frame = predictions(version, "val")
    except registry.ModelVersionError as error:
        st.error(escape_markdown(error))
        st.stop()

    saved = card.get("operating_point") or {}
    choices = op.positive_classes(class_names)
    positive_key, threshold_key, target_key = (f"op_{name}_{version}" for name in ("positive", "threshold", "target"))
    st.session_state.setdefault(positive_key, saved.get("positive_class", op.DEFAULT_POSITIVE
                                                        if op.DEFAULT_POSITIVE in choices else choices[0]))
    st.session_state.setdefault(threshold_key, float(saved.get("threshold", DEFAULT_THRESHOLD)))
    st.session_state.setdefault(target_key, DEFAULT_TARGET_PERCENT)

    positive = st.selectbox("Positive class", choices, key=positive_key,
                            format_func=lambda name: "abnormal (anything but Normal)" if name == op.ABNORMAL else name)
    scores, truth = op.scores_and_truth(frame, positive)
    left, right = st.columns([3, 1])
    threshold = left.slider(f"Threshold on {escape_markdown(score_name(positive))}", 0.0, 1.0, step=THRESHOLD_STEP,
                            format="%.3f", key=threshold_key)
    right.number_input("Target sensitivity (%)", 50.0, 100.0, step=0.5, format="%.1f", key=target_key)
    right.button("Set threshold for this sensitivity", key="op_apply_target", on_click=apply_target,
                 args=(truth, scores, threshold_key, target_key))

    validation, test = st.tabs(["Validation (choose here)", "Test report (not for choosing)"])
    with validation:
        point = op.figures(truth, scores, threshold)
        st.subheader("Figures at this threshold (validation)")
        show_figures(point, positive)

        st.subheader("Thresholds for target sensitivities")
        st.caption("For each target, the highest threshold that reaches it (as in Minaee et al., Deep-COVID).")
        st.dataframe(sensitivity_table(truth, scores), hide_index=True, column_config={
            "threshold": THRESHOLD, **{key: PROBABILITY for key in ("target_sensitivity", "sensitivity", "specificity",
                                                                     "specificity_ci95_low", "specificity_ci95_high")}})

        curve, pr_curve = cached_roc(frame, positive), op.precision_recall(truth, scores)
        left, right = st.columns(2)
        if curve:
            left.plotly_chart(roc_figure(curve, point))
            right.plotly_chart(precision_recall_figure(pr_curve, point))
        else:
            st.caption("ROC and precision–recall need both positive and negative validation cases.")
        left, right = st.columns(2)
        left.plotly_chart(matrix_figure(op.decision_matrix(frame, class_names, positive, threshold), class_names))
        right.plotly_chart(histogram_figure(frame, scores, class_names, positive, threshold))

        st.subheader("Predictive values at another prevalence")
        prevalence = st.slider("Prevalence of the positive class (%)", 0.1, 50.0, DEFAULT_PREVALENCE_PERCENT,
                               step=0.1, key=f"op_prevalence_{version}")
        predictive = op.predictive_values_at(point, prevalence / 100)
        columns = st.columns(2)
        for column, key in zip(columns, ("ppv", "npv")):
            low, high = predictive[key]["range"]
            column.metric(f"{key.upper()} at {prevalence:.1f} %", f"{predictive[key]['value']:.3f}")
            column.caption(f"range {low:.3f}–{high:.3f} from the sensitivity and specificity intervals")

        st.subheader("Calibration")
        show_calibration(card)

        st.subheader("Per source (validation)")
        st.caption("A model that learnt the source instead of the disease looks good overall and bad per source.")
        show_per_source(frame, positive, threshold)

        st.subheader("Save")
        left, right = st.columns(2)
        left.button("Save as operating point", key="op_save", type="primary", on_click=save_point,
                    args=(version, positive, threshold_key))
        right.button("Clear the saved operating point", key="op_clear", disabled=not saved,
                     on_click=op.clear_operating_point, args=(version,))
    with test:
        show_test_report(card, positive, threshold)


main()
