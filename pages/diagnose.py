"""diagnose page (being built)."""

import streamlit as st

st.title("diagnose")
st.info("This page is being built.")
