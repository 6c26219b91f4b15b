"""retrain page (being built)."""

import streamlit as st

st.title("retrain")
st.info("This page is being built.")
