"""Models: every published version with its card — the facts, data and recipe, headline figures, operating point
and its history of changes, cross-hospital figures and flag rates —; activate (roll back), delete a non-active
version, export a version as a TF SavedModel for TF Serving, download its card. Card text is shown as plain text
or literal tables, numbers rounded and paths relative to the data root (``core.report``)."""

import json

import pandas as pd
import streamlit as st

from core import registry
from core.report import (
    DASH,
    activation_rows,
    card_summary,
    cross_hospital_cells,
    figure_text,
    headline_comparison,
    headline_rows,
    history_rows,
    point_text,
    threshold_text,
    time_text,
)
from core.site import sites_rows
from core.tables import flags_table
from pages.common import ACTIVATION_PENDING, escape_markdown, reader_timezone, run_through_app, text_table
from train.jobs.archive import ArchiveError, export_saved_model, savedmodel_zip

ACTIVATION_READER, ACTIVATION_REASON = "models_activation_reader", "models_activation_reason"
ARGMAX_NOTE = (
    "Accuracy and recalls at the most probable class (argmax), not at the operating point; the operating point's "
    "own figures are on the Operating point page."
)
REMEMBERED_READER = "op_reader_name"  # the reader's name, as the Operating point page remembers it


def overview(versions, active, timezone) -> pd.DataFrame:
    rows = []
    for version in versions:
        card = registry.load_card(version)
        metrics = card.metrics or {}
        rows.append(
            {
                "Version": version,
                "Active": version == active,
                "Created": time_text(card.created, timezone),
                "Architecture": card.architecture,
                "Validation accuracy (95 % CI)": figure_text((metrics.get("validation") or {}).get("accuracy")),
                "Test accuracy (95 % CI)": figure_text((metrics.get("test") or {}).get("accuracy")),
                "Positive class": (card.operating_point or {}).get("positive_class", "argmax"),
                "Threshold": threshold_text((card.operating_point or {}).get("threshold")),
            }
        )
    return pd.DataFrame(rows)


def render_card(card, active, timezone) -> None:
    st.subheader("Card")
    text_table(card_summary(card, active, timezone), columns=["Field", "Value"])
    st.markdown("**Figures** (95 % intervals: Wilson for proportions, bootstrap for AUC)")
    st.caption(ARGMAX_NOTE)
    figures = headline_rows(card)
    if figures:
        st.dataframe(pd.DataFrame(figures), hide_index=True)
    else:
        st.caption("No figures recorded.")
    st.markdown(f"**Operating point:** {escape_markdown(point_text(card.operating_point))}")
    render_sites(card)
    history = history_rows(card, timezone)
    if history:
        st.caption("History of changes (newest first)")
        text_table(history)
    else:
        st.caption("No change of the operating point recorded since the version was published.")
    if card.cross_hospital:
        st.markdown("**Across hospitals** (leave one source out: each fold trained without it, tested on all of it)")
        header, cells = cross_hospital_cells(card.cross_hospital)
        table = pd.DataFrame(cells, columns=header).drop(columns=["run", "epochs"])  # in the card and `core info`
        pinned = st.column_config.Column(pinned=True)
        st.dataframe(table, hide_index=True, column_config={"held out": pinned, "population": pinned})
    if card.flags:
        st.markdown(
            "**Flags** (share of images flagged; *out_of_depth* calls become “uncertain — read without the model”)"
        )
        st.markdown(flags_table(card))
    st.markdown("**Caveat**")
    with st.container(border=True):
        st.text(card.caveat or "—")


def render_sites(card) -> None:
    """Where the version was measured on a site's own films (``python -m train.site``), and what it was adapted from."""
    adaptation = card.site_adaptation
    if adaptation:
        st.markdown(
            f"**Site version:** {escape_markdown(adaptation['base_version'])} adapted to "
            f"{escape_markdown(adaptation['site'])} by {escape_markdown(adaptation['method'])} "
            f"{escape_markdown(adaptation['settings'])}; {escape_markdown(adaptation['design'])}."
        )
    rows = sites_rows(card)
    if rows:
        st.markdown("**Measured at sites** (the site's own labelled films; newest first)")
        text_table(rows)
    else:
        st.caption("Not measured at any site yet: run it on the Site page or with `python -m train.site validate`.")


def changed(place, action, version: str) -> None:
    """Run a registry ``action`` on ``version`` and show the new state; a refusal (the version is gone, now
    active, or locked by another publish or delete) is shown where the button is."""
    try:
        action(version)
    except registry.ModelVersionError as error:
        place.error(escape_markdown(error))
    else:
        st.rerun()


def confirm_activation(version: str, active) -> None:
    """What changes for every reader — the active version's facts and figures against ``version``'s — and the
    reader's name and reason, required, before the pointer moves; the change goes into the activation history."""
    after = registry.load_card(version)
    before = registry.load_card(active) if active else None
    with st.container(border=True):
        st.markdown(f"**:material/rule: Confirm: make {escape_markdown(version)} the active version**")
        st.caption(
            "Every reader's calls change at once: Diagnose and `python -m core predict` use the active version. "
            "The change is recorded with your name and reason in the activation history below."
        )
        old_point = point_text(before.operating_point) if before else DASH
        facts = [
            ("Version", active or "none", version),
            ("Architecture", before.architecture if before else DASH, after.architecture),
            ("Operating point", old_point, point_text(after.operating_point)),
        ]
        text_table(facts, columns=["", "Active now", "After"])
        if before:
            st.dataframe(headline_comparison(before, after, titles=("Active now", "After")), hide_index=True)
            st.caption(ARGMAX_NOTE)
        st.session_state.setdefault(ACTIVATION_READER, st.session_state.get(REMEMBERED_READER, ""))
        name, reason = st.columns([1, 2])
        name.text_input("Your name (required)", key=ACTIVATION_READER)
        reason.text_input(
            "Reason (required)", key=ACTIVATION_REASON, placeholder="e.g. roll back: v3 calls too many Normal films"
        )
        error = st.empty()
        confirm, cancel = st.columns(2)
        if confirm.button("Confirm and activate", key="activation_confirm", type="primary", icon=":material/check:"):
            try:
                registry.activate(
                    version, st.session_state[ACTIVATION_READER], st.session_state.get(ACTIVATION_REASON, "")
                )
            except (ValueError, registry.ModelVersionError) as problem:
                error.error(escape_markdown(problem))
            else:
                st.session_state[REMEMBERED_READER] = st.session_state[ACTIVATION_READER]
                for key in (ACTIVATION_PENDING, ACTIVATION_REASON):
                    st.session_state.pop(key, None)
                st.toast(f"{version} is now the active version.", icon=":material/check:")
                st.rerun()
        if cancel.button("Cancel", key="activation_cancel", icon=":material/close:"):
            st.session_state.pop(ACTIVATION_PENDING, None)
            st.rerun()


def render_actions(version: str, active) -> None:
    card = registry.load_card(version)
    activate, delete = st.columns(2)
    if version == active:
        activate.success("Active: Diagnose uses this version.", icon=":material/check_circle:")
    elif activate.button(
        "Activate this version (roll back / forward)…",
        key="activate_version",
        type="primary",
        icon=":material/published_with_changes:",
    ):
        st.session_state[ACTIVATION_PENDING] = version
    if st.session_state.get(ACTIVATION_PENDING) == version and version != active:
        confirm_activation(version, active)
    if version != active:
        confirmed = delete.checkbox("Yes, delete this version permanently", key=f"confirm_delete:{version}")
        if delete.button("Delete", key="delete_version", disabled=not confirmed, icon=":material/delete:"):
            changed(delete, registry.delete_version, version)
    st.download_button(
        "Download card.json",
        json.dumps(card.to_dict(), indent=2),
        file_name=f"{version}-card.json",
        mime="application/json",
        key="download_card",
        icon=":material/download:",
    )
    st.markdown("**Export for TF Serving** (SavedModel serving the calibrated probabilities; card in assets.extra)")
    zipped, folder = st.columns(2)
    export_key = f"export:{version}"
    if zipped.button("Prepare a zip download", key="export_zip", icon=":material/folder_zip:"):
        with st.spinner("Exporting the SavedModel…"):
            st.session_state[export_key] = savedmodel_zip(version)
    if export_key in st.session_state:
        zipped.download_button(
            "Download SavedModel (.zip)",
            st.session_state[export_key],
            file_name=f"{version}-savedmodel.zip",
            mime="application/zip",
            key="download_export",
        )
    target = folder.text_input(
        "Or write it to a new folder in the server's exports folder", key="export_folder", placeholder=f"{version}/1"
    )
    if folder.button("Write SavedModel", key="export_write", disabled=not target):
        try:
            with st.spinner("Exporting the SavedModel…"):
                export_saved_model(version, target)
        except ArchiveError as error:
            folder.error(escape_markdown(error))
        except OSError as error:
            folder.error(f"The export could not be written: {escape_markdown(error.strerror or 'disk error')}.")
        else:
            folder.success(f"Written to the exports folder as '{escape_markdown(target.strip())}'.")


def main() -> None:
    run_through_app(__file__)
    st.title("Models")
    st.caption("Published model versions. The active one is used by Diagnose; activating an earlier one rolls back.")
    timezone = reader_timezone()
    versions, active = registry.list_versions(), registry.active_version()
    leftovers = registry.stale_folders()
    if leftovers and st.button(
        f"Remove {len(leftovers)} folder(s) left by an interrupted publish or delete",
        key="cleanup",
        icon=":material/cleaning_services:",
    ):
        registry.remove_stale_staging()
        st.rerun()
    if not versions:
        st.info("No model versions yet: train one on the Retrain page.")
        st.stop()
    if active is None:
        st.warning("No version is active: activate one below.")
    st.dataframe(overview(versions, active, timezone), hide_index=True)
    history = activation_rows(registry.activation_history(), timezone)
    with st.expander(f"Activation history ({len(history)})", icon=":material/history:"):
        if history:
            text_table(history)
        else:
            st.caption("No activation recorded in this weights folder yet.")
    if st.session_state.get("version_choice") not in versions:
        st.session_state.pop("version_choice", None)
    chosen = st.selectbox(
        "Version",
        versions,
        key="version_choice",
        index=versions.index(active) if active in versions else len(versions) - 1,
    )
    render_actions(chosen, active)
    render_card(registry.load_card(chosen), active, timezone)


main()
