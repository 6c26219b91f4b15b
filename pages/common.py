"""Streamlit pieces shared by the pages: cached model loading, the sidebar, the reader's time zone, text tables
and the one confusion-matrix chart. Logic lives in ``core``."""

import html
import re
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import RESEARCH_ONLY, registry
from core.site import configured_site, site_notice, site_setting_error, site_status

APP_RAN = "app_ran"  # set by app.py in every run of a session
REQUESTED_PAGE = "requested_page"  # the page a session asked for before app.py had run
ACTIVATION_PENDING = "models_activation_pending"  # the version whose activation awaits a name and a reason (Models)
MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")  # backslash-escaped by escape_markdown


@st.cache_resource(show_spinner="Loading the model…", max_entries=3)
def load_predictor(version: str):
    """One Predictor per model version per process."""
    from core.inference import Predictor

    return Predictor(version)


def mark_app_run() -> None:
    """Called by app.py: this session's runs go through the navigation."""
    st.session_state[APP_RAN] = True


def run_through_app(page_file: str) -> None:
    """Send a page that Streamlit ran on its own back through app.py, which then opens it.

    Because the pages live in ``pages/``, a fresh server whose first request is a page's own URL (a bookmark, a
    reload) runs that file alone, in Streamlit's older folder-based multipage mode: no navigation, no wide
    layout, no sidebar, a page per file of the folder — and every session stays so until app.py runs once. One
    pass through app.py (its ``st.navigation``) ends that mode for the server."""
    if not st.session_state.get(APP_RAN):
        st.session_state[REQUESTED_PAGE] = f"pages/{Path(page_file).name}"
        st.switch_page("app.py")


def open_requested_page() -> None:
    """Called by app.py after ``st.navigation``: open the page a session asked for before app.py had run."""
    requested = st.session_state.pop(REQUESTED_PAGE, None)
    if requested:
        st.switch_page(requested)


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
        problem = site_setting_error()
        if problem:
            st.warning(escape_markdown(problem))
        else:
            site = configured_site()
            st.markdown(f"**Site:** `{html.escape(site)}`" if site else "**Site:** not configured (`CXR_SITE`)")
        st.caption(RESEARCH_ONLY)


def site_banner(card) -> None:
    """The notice every page that calls shows and that does not go away: was this version validated here?"""
    status = site_status(card, configured_site())
    notice = escape_markdown(site_notice(status))
    if status["validated"]:
        st.success(notice, icon=":material/verified:")
    else:
        st.warning(notice, icon=":material/location_off:")


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
    figure = go.Figure(
        go.Heatmap(
            z=matrix,
            x=names,
            y=names,
            text=matrix,
            texttemplate="%{text}",
            colorscale="Blues",
            showscale=False,
            hovertemplate=f"true %{{y}}, {column_title} %{{x}}: %{{z}}<extra></extra>",
        )
    )
    figure.update_layout(
        title=html.escape(title),
        xaxis_title=column_title,
        yaxis_title="true class",
        yaxis={"autorange": "reversed"},
        height=CHART_HEIGHT,
        margin=CHART_MARGIN,
    )
    return figure


def reliability_figure(bins: list, title: str) -> go.Figure:
    """The top-label reliability diagram of ``core.calibration.reliability_bins``: the Operating point and Site
    validation pages share it."""
    filled = [row for row in bins if row["count"]]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line={"dash": "dot", "color": "grey"})
    )
    figure.add_trace(
        go.Scatter(
            x=[row["confidence"] for row in filled],
            y=[row["accuracy"] for row in filled],
            mode="lines+markers",
            name="model",
            text=[f"n = {row['count']}" for row in filled],
        )
    )
    figure.update_layout(
        title=title,
        xaxis_title="mean confidence",
        yaxis_title="accuracy",
        height=CHART_HEIGHT,
        margin=CHART_MARGIN,
        legend={"orientation": "h", "y": -0.25},
    )
    return figure
