"""operating_point page (being built)."""

import streamlit as st

st.title("operating_point")
st.info("This page is being built.")
