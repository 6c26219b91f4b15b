"""The film viewer as a Streamlit component (``pages/film_viewer.js`` and ``.css``): the page mounts it with
``core.viewer.viewer_data``; the reader's zoom, pan and window live in the browser, and the keyboard's next and
previous study come back as the ``step`` trigger."""

from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent
_VIEWER = st.components.v2.component(
    "cxr_film_viewer",
    js=(HERE / "film_viewer.js").read_text(),
    css=(HERE / "film_viewer.css").read_text(),
    isolate_styles=False,  # plain DOM: the browser tests and the full-screen API reach it
)


def film_viewer(data: dict, key: str, on_step):
    """Mount the viewer with ``data``; ``on_step`` is called when the reader asks for the next (+1) or the
    previous (-1) study: read it as ``st.session_state[key].step``."""
    return _VIEWER(data=data, key=key, on_step_change=on_step)
