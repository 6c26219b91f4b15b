"""Site validation: measure a version on this hospital's own labelled films, adapt one to them, and see the films
that readers' findings have collected. The work is ``train.site``'s; adaptation runs as a background process
(``train.jobs.supervisor.start_site_run``), watched here with live progress and a cancel button."""

import pandas as pd
import streamlit as st

from core import registry, settings
from core.card import read_predictions
from core.findings import site_counts
from core.operating_point import sensitivity_table
from core.report import relative_path
from core.site import SiteError, checked_site_name, configured_site
from pages.common import confusion_figure, escape_markdown, reliability_figure, run_through_app, site_banner, text_table
from train.jobs import supervisor
from train.jobs.datasource import checked_data_folder, dataset_folders, unpack_upload
from train.site.adapt import DEFAULT_TARGET
from train.site.methods import METHODS
from train.site.report import figure_rows
from train.trainer.datasets import DatasetError

RESULT = "site_validation_result"
POLL_SECONDS = 2.0
TARGETS = (0.80, 0.85, 0.90, 0.95, 0.975)


def choose_site() -> str | None:
    """The configured site, or a name typed here when none is configured (``None`` until it is a plain name)."""
    site = configured_site()
    if site:
        st.markdown(f"This installation serves **{escape_markdown(site)}** (`CXR_SITE`).")
        return site
    typed = st.text_input("Site name", help="Set CXR_SITE to name the hospital for every page and call.")
    if not typed:
        return None
    try:
        return checked_site_name(typed)
    except SiteError as error:
        st.error(escape_markdown(str(error)))
        return None


def choose_films(site: str | None, key: str):
    """A labelled folder under the data root (the site's own set first), or an uploaded zip of one."""
    own = settings.site_data_dir() / site if site else None
    folders = [folder for folder in dataset_folders() if folder != own]
    if own is not None and own.is_dir():
        folders.insert(0, own)
    options = ["An uploaded zip", *folders]
    chosen = st.selectbox(
        "Labelled films",
        options,
        key=f"{key}_folder",
        format_func=lambda item: item if isinstance(item, str) else relative_path(item),
        help="Class folders COVID19/ NORMAL/ PNEUMONIA/ of PNG, JPEG or DICOM files, with or without manifest.csv.",
    )
    if not isinstance(chosen, str):
        try:
            return checked_data_folder(chosen)
        except DatasetError as error:
            st.error(escape_markdown(str(error)))
            return None
    upload = st.file_uploader("Zip of class folders", type=["zip"], key=f"{key}_zip")
    if upload is None:
        return None
    try:
        return unpack_upload(upload, upload.name)
    except (DatasetError, ValueError) as error:
        st.error(escape_markdown(str(error)))
        return None


def render_validation(result: dict) -> None:
    figures, reference = result["figures"], result.get("reference")
    verdict = result["verdict"]
    show = {"fit": st.success, "reduced": st.warning}.get(verdict["code"], st.error)
    show(escape_markdown(f"{result['version']}: {verdict['text']}"))
    st.caption(
        f"{figures['n']} films of {figures['patients']} patients; intervals: bootstrap over patients (AUC), "
        "Wilson (proportions); calls at the version's own operating point."
    )
    text_table(figure_rows(figures, reference))
    left, right = st.columns(2)
    names = list(figures["n_per_class"])
    left.plotly_chart(confusion_figure(figures["confusion_matrix"], names, "Calls at this site"), width="stretch")
    right.plotly_chart(
        reliability_figure(figures["reliability"], "Reliability at this site (top class)"), width="stretch"
    )
    if result.get("skipped_files"):
        with st.expander(f"{len(result['skipped_files'])} file(s) skipped as unreadable"):
            text_table([{"file": name, "why": why} for name, why in result["skipped_files"].items()])


def validate_tab(site) -> None:
    from train.site.validate import validate

    versions = registry.list_versions()
    if not versions:
        st.info("No model version to validate.")
        return
    active = registry.active_version()
    version = st.selectbox("Version", versions, index=versions.index(active) if active in versions else 0)
    folder = choose_films(site, "validate")
    who = st.text_input("Your name", key="validate_who")
    if st.button("Validate", icon=":material/fact_check:", disabled=folder is None or not site or not who.strip()):
        with st.spinner("Reading every film and measuring…"):
            try:
                st.session_state[RESULT] = validate(folder, version, site, who.strip())
            except (SiteError, registry.ModelVersionError, ValueError) as error:
                st.error(escape_markdown(str(error)))
    if not site or not who.strip():
        st.caption("Name the site and yourself: the result is recorded in the version's card.")
    if st.session_state.get(RESULT):
        render_validation(st.session_state[RESULT])


def adapt_tab(site) -> None:
    versions = registry.list_versions()
    base = st.selectbox(
        "Base version",
        versions,
        key="adapt_base",
        index=versions.index(registry.active_version()) if registry.active_version() in versions else 0,
    )
    folder = choose_films(site, "adapt")
    name = st.text_input("Publish as", value=f"{base}-{site}" if site else "", key="adapt_name")
    target = st.select_slider(
        "COVID-19 sensitivity of the site's operating point",
        TARGETS,
        value=DEFAULT_TARGET,
        format_func=lambda t: f"{100 * t:g} %",
    )
    methods = st.multiselect("Candidate methods (chosen by inner cross-validation)", METHODS, default=list(METHODS))
    who = st.text_input("Your name", key="adapt_who")
    ready = folder is not None and site and name and methods and who.strip()
    if st.button("Adapt", icon=":material/model_training:", disabled=not ready):
        arguments = [
            "adapt",
            "--data",
            str(folder),
            "--site",
            site,
            "--model",
            base,
            "--publish",
            name,
            "--target-sensitivity",
            str(target),
            "--methods",
            ",".join(methods),
            "--who",
            who.strip(),
            "--json",
        ]
        try:
            supervisor.start_site_run(arguments, site)
        except (supervisor.RunBusyError, OSError) as error:
            st.error(escape_markdown(str(error)))
    st.caption(
        "The site version is published, not activated: look at its trade-off below, adjust its operating "
        "point on the Operating point page, then activate it on Models (with a name and a reason)."
    )
    watch_latest_run()


@st.fragment(run_every=POLL_SECONDS)
def watch_latest_run() -> None:
    runs = supervisor.site_runs()
    if not runs:
        return
    info = runs[0]
    progress = [event for event in info.events if event["event"] == "site"]
    st.markdown(f"**Latest adaptation:** {escape_markdown(info.name)} — {info.status}")
    if info.status == "running":
        if progress:
            last = progress[-1]
            st.progress(min(1.0, last["done"] / max(1, last["total"])), text=escape_markdown(last["stage"]))
        if st.button("Cancel", icon=":material/cancel:", key="adapt_cancel"):
            supervisor.cancel_run(info.path)
            st.rerun()
    elif info.status == "failed":
        st.error(escape_markdown(info.error or "The adaptation failed; see its log."))
    elif info.status == "finished" and info.published:
        render_adaptation(info.published[-1])


def render_adaptation(version: str) -> None:
    try:
        card = registry.load_card(version)
    except registry.ModelVersionError as error:
        st.error(escape_markdown(str(error)))
        return
    adaptation = card.site_adaptation
    st.success(escape_markdown(f"Published {version}: {adaptation['method']} {adaptation['settings']}."))
    held = adaptation["held_out"]
    st.caption(escape_markdown(adaptation["design"]))
    text_table(figure_rows(held["site_version"], held["base_version"], ("site version", "base version")))
    st.markdown("**Trade-off at the site** (cross-validated scores of the site's films)")
    frame = read_predictions(registry.version_dir(version) / registry.VAL_PREDICTIONS, card.class_names)
    truth = (frame["label"] == "COVID-19").to_numpy()
    rows = sensitivity_table(truth, frame["p_COVID-19"].to_numpy(), TARGETS)
    text_table(
        pd.DataFrame(
            [
                {
                    "target sensitivity": f"{100 * row['target_sensitivity']:g} %",
                    "threshold": f"{row['threshold']:.3f}",
                    "sensitivity": f"{100 * row['sensitivity']['value']:.0f} %",
                    "non-COVID called COVID-19": f"{100 * (1 - row['specificity']['value']):.0f} %",
                }
                for row in rows
            ]
        )
    )
    st.markdown("**Candidates** (inner cross-validation)")
    text_table(
        [
            {
                "candidate": row["candidate"],
                "macro AUC": "—" if row["macro_auc"] is None else f"{row['macro_auc']:.3f}",
                "chosen": "yes" if row["chosen"] else "",
            }
            for row in adaptation["candidates"]
        ]
    )


def films_tab(site) -> None:
    if not site:
        st.info("Name the site to see its labelled films.")
        return
    counts = site_counts(site)
    st.markdown(
        f"**{escape_markdown(site)}'s labelled set** — from readers' findings on Diagnose, de-identified, "
        f"under the data root ({escape_markdown(relative_path(settings.site_data_dir() / site))})"
    )
    text_table([{"class": name, "films": n} for name, n in counts.items()])
    st.caption("Validate and Adapt read this set like any labelled folder (choose it above).")


run_through_app(__file__)
st.title("Site validation")
st.caption("Validate a version on this hospital's own labelled films before trusting it, and adapt one to them.")
site_name = choose_site()
active_card = None
try:
    active_card = registry.load_card()
except registry.ModelVersionError:
    pass
if active_card is not None:
    site_banner(active_card)
validate_panel, adapt_panel, films_panel = st.tabs(["Validate", "Adapt", "Site films"])
with validate_panel:
    validate_tab(site_name)
with adapt_panel:
    adapt_tab(site_name)
with films_panel:
    films_tab(site_name)
