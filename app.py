"""CXR Triage: ``streamlit run app.py``."""

from pathlib import Path

import streamlit as st

from pages.common import mark_app_run, open_requested_page, render_sidebar

# The icon from this checkout (a Material icon or an emoji would be fetched from a font host: none offline). The
# sidebar starts closed, so the Diagnose film has the page's width; the pages are in the top bar.
FAVICON = str(Path(__file__).parent / ".streamlit" / "favicon.png")
st.set_page_config(page_title="CXR Triage", page_icon=FAVICON, layout="wide", initial_sidebar_state="collapsed")

PAGES = [
    st.Page("pages/diagnose.py", title="Diagnose", icon=":material/radiology:", default=True),
    st.Page("pages/operating_point.py", title="Operating point", icon=":material/tune:"),
    st.Page("pages/retrain.py", title="Retrain", icon=":material/model_training:"),
    st.Page("pages/models.py", title="Models", icon=":material/inventory_2:"),
    st.Page("pages/site.py", title="Site validation", icon=":material/local_hospital:"),
]

mark_app_run()
navigation = st.navigation(PAGES, position="top")
open_requested_page()
render_sidebar()
navigation.run()
