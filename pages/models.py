"""Models: every published version with its card; activate (roll back), delete a non-active version, export a
version as a TF SavedModel for TF Serving, download its card. Card text is shown as plain text or tables."""

import json

import pandas as pd
import streamlit as st

from core import registry
from core.report import cross_hospital_table, flags_table
from train import compare
from train.archive import ArchiveError, export_saved_model, savedmodel_zip

LEFTOVER_PREFIXES = (registry.STAGING_PREFIX, ".deleting-")


def overview(versions, active) -> pd.DataFrame:
    rows = []
    for version in versions:
        card = registry.load_card(version)
        metrics = card.get("metrics") or {}
        rows.append({
            "version": version,
            "active": version == active,
            "created": card.get("created"),
            "architecture": card.get("architecture"),
            "validation accuracy": ((metrics.get("validation") or {}).get("accuracy") or {}).get("value"),
            "test accuracy": ((metrics.get("test") or {}).get("accuracy") or {}).get("value"),
            "data (manifest)": ((card.get("data") or {}).get("manifest_sha256") or "")[:12],
        })
    return pd.DataFrame(rows)


def facts(card: dict) -> pd.DataFrame:
    """The card's scalar facts as a two-column text table."""
    keys = ("version", "created", "architecture", "architecture_reference", "parameters", "initialisation",
            "input_size", "class_names", "gradcam_layer", "temperature", "seed")
    return pd.DataFrame({"field": keys, "value": [str(card.get(key, "—")) for key in keys]})


def render_card(card: dict) -> None:
    st.dataframe(facts(card), hide_index=True)
    data, recipe = st.columns(2)
    with data:
        st.markdown("**Data**")
        st.json(card.get("data") or {}, expanded=False)
    with recipe:
        st.markdown("**Recipe**")
        st.json(card.get("training") or {}, expanded=False)
    st.markdown("**Metrics** (95 % intervals)")
    metrics = compare.headline_metrics(card.get("metrics"))
    if metrics.empty:
        st.caption("No metrics recorded.")
    else:
        st.dataframe(metrics[["split", "metric", "figure", "n"]], hide_index=True)
    st.markdown("**Operating point**")
    st.json(card.get("operating_point") or {"chosen": None}, expanded=False)
    if card.get("cross_hospital"):
        st.markdown("**Across hospitals** (leave one source out: each fold trained without it, tested on all of it)")
        st.markdown(cross_hospital_table(card["cross_hospital"]))
    if card.get("flags"):
        st.markdown("**Flags** (share of images flagged; *out_of_depth* calls become “uncertain — read without "
                    "the model”)")
        st.markdown(flags_table(card))
    st.markdown("**Caveat**")
    with st.container(border=True):
        st.text(card.get("caveat") or "—")


def render_actions(version: str, active) -> None:
    card = registry.load_card(version)
    activate, delete = st.columns(2)
    if version == active:
        activate.success("Active: Diagnose uses this version.")
    elif activate.button("Activate this version (roll back / forward)", key="activate_version", type="primary"):
        registry.set_active(version)
        st.rerun()
    if version != active:
        confirmed = delete.checkbox("Yes, delete this version permanently", key=f"confirm_delete:{version}")
        if delete.button("Delete", key="delete_version", disabled=not confirmed):
            registry.delete_version(version)
            st.rerun()
    st.download_button("Download card.json", json.dumps(card, indent=2), file_name=f"{version}-card.json",
                       mime="application/json", key="download_card")
    st.markdown("**Export for TF Serving** (SavedModel serving the calibrated probabilities; card in assets.extra)")
    zipped, folder = st.columns(2)
    export_key = f"export:{version}"
    if zipped.button("Prepare a zip download", key="export_zip"):
        with st.spinner("Exporting the SavedModel…"):
            st.session_state[export_key] = savedmodel_zip(version)
    if export_key in st.session_state:
        zipped.download_button("Download SavedModel (.zip)", st.session_state[export_key],
                               file_name=f"{version}-savedmodel.zip", mime="application/zip", key="download_export")
    target = folder.text_input("Or write it to a new folder in the server's exports folder", key="export_folder",
                               placeholder=f"{version}/1")
    if folder.button("Write SavedModel", key="export_write", disabled=not target):
        try:
            with st.spinner("Exporting the SavedModel…"):
                export_saved_model(version, target)
        except ArchiveError as error:
            folder.error(str(error))
        except OSError as error:
            folder.error(f"The export could not be written: {error.strerror or 'disk error'}.")
        else:
            folder.success(f"Written to the exports folder as '{target.strip()}'.")


st.title("Models")
st.caption("Published model versions. The active one is used by Diagnose; activating an earlier one rolls back.")
versions = registry.list_versions()
active = registry.active_version()
leftovers = [p for p in registry.weights_dir().glob(".*") if p.is_dir() and p.name.startswith(LEFTOVER_PREFIXES)]
if leftovers and st.button(f"Remove {len(leftovers)} folder(s) left by an interrupted publish or delete", key="cleanup"):
    registry.remove_stale_staging()
    st.rerun()
if not versions:
    st.info("No model versions yet: train one on the Retrain page.")
    st.stop()
if active is None:
    st.warning("No version is active: activate one below.")
st.dataframe(overview(versions, active), hide_index=True,
             column_config={name: st.column_config.NumberColumn(format="%.3f")
                            for name in ("validation accuracy", "test accuracy")})
if st.session_state.get("version_choice") not in versions:
    st.session_state.pop("version_choice", None)
chosen = st.selectbox("Version", versions, index=versions.index(active) if active in versions else len(versions) - 1,
                      key="version_choice")
render_actions(chosen, active)
render_card(registry.load_card(chosen))
