"""Streamlit pieces shared by the pages: cached model loading and the sidebar. Logic lives in ``core``."""

import html
import re

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
