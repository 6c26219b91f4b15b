"""CXR Triage: ``streamlit run app.py``."""

import streamlit as st

from pages.common import mark_app_run, open_requested_page, render_sidebar

st.set_page_config(page_title="CXR Triage", page_icon=":material/pulmonology:", layout="wide")

PAGES = [
    st.Page("pages/diagnose.py", title="Diagnose", icon=":material/radiology:", default=True),
    st.Page("pages/operating_point.py", title="Operating point", icon=":material/tune:"),
    st.Page("pages/retrain.py", title="Retrain", icon=":material/model_training:"),
    st.Page("pages/models.py", title="Models", icon=":material/inventory_2:"),
    st.Page("pages/site.py", title="Site validation", icon=":material/local_hospital:"),
]

mark_app_run()
navigation = st.navigation(PAGES)
open_requested_page()
render_sidebar()
navigation.run()
