"""CXR Triage: ``streamlit run app.py``."""

import streamlit as st

from pages.common import render_sidebar

st.set_page_config(page_title="CXR Triage", page_icon="🫁", layout="wide")

PAGES = [
    st.Page("pages/diagnose.py", title="Diagnose", icon="🩻", default=True),
    st.Page("pages/operating_point.py", title="Operating point", icon="🎚️"),
    st.Page("pages/retrain.py", title="Retrain", icon="🏋️"),
    st.Page("pages/models.py", title="Models", icon="🗂️"),
]

navigation = st.navigation(PAGES)
render_sidebar()
navigation.run()
