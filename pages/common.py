"""Streamlit pieces shared by the pages: cached model loading, the sidebar, the reader's time zone, text tables
and the one confusion-matrix chart. Logic lives in ``core``."""

import html
import re

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import registry

MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")  # backslash-escaped by escape_markdown


@st.cache_resource(show_spinner="Loading the model…", max_entries=3)
def load_predictor(version: str):
    """One Predictor per model version per process."""
    from core.inference import Predictor

    return Predictor(version)


def active_card():
    """The active version's card, or None (with a visible error) when no model is usable."""
    try:
        return registry.load_card()
    except registry.ModelVersionError as error:
        st.error(str(error))
        return None


def render_sidebar() -> None:
    with st.sidebar:
        version = registry.active_version()
        if version:
            st.markdown(f"**Active model:** `{html.escape(version)}`")
        else:
            st.warning("No active model version.")
        st.caption("Research use only — not for clinical diagnosis.")


def escape_markdown(text) -> str:
    """``text`` (e.g. a file name or a DICOM field) made literal for st.markdown, st.error and the like."""
    return MARKDOWN_SPECIALS.sub(r"\\\1", str(text))


def reader_timezone():
    """The browser's time zone (an IANA name), or None (then times show in the server's zone)."""
    try:
        return st.context.timezone
    except AttributeError:  # no browser context, e.g. a bare script run
        return None


def text_table(rows, columns=None) -> None:
    """Rows of text (dicts, or (field, value) pairs with ``columns``) as a static table that wraps long cells
    instead of cutting them; every cell is made literal, since ``st.table`` renders Markdown."""
    frame = pd.DataFrame(rows, columns=columns)
    st.table(frame.map(escape_markdown), hide_index=True)


CHART_MARGIN = {"l": 70, "r": 30, "t": 60, "b": 60}  # room for axis titles, tick labels and the title
CHART_HEIGHT = 380


def confusion_figure(matrix, class_names, title: str, column_title: str = "call") -> go.Figure:
    """A confusion matrix (rows true class, columns ``column_title``) as an annotated heatmap: the chart the
    Operating point and Retrain pages share."""
    names = [html.escape(str(name)) for name in class_names]
    figure = go.Figure(go.Heatmap(z=matrix, x=names, y=names, text=matrix, texttemplate="%{text}",
                                  colorscale="Blues", showscale=False, hovertemplate="true %{y}, "
                                  f"{column_title} %{{x}}: %{{z}}<extra></extra>"))
    figure.update_layout(title=html.escape(title), xaxis_title=column_title, yaxis_title="true class",
                         yaxis={"autorange": "reversed"}, height=CHART_HEIGHT, margin=CHART_MARGIN)
    return figure
