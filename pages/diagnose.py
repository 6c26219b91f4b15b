"""Diagnose: a reading room. Upload chest X-rays (several files or a zip of a folder); each becomes a study in the
session's worklist, sorted by priority; the selected study opens in the film viewer (``pages/film_viewer.js``:
zoom, pan, window/level in the film's own units, invert, full screen, the Grad-CAM overlay drawn only where the
map is high, with its colour scale; the reader's view kept per study across reruns) with its call,
probabilities, flags and the worklist beside it. Studies and controls stay for the browser session across page
changes; nothing is written to disk unless the reader records a finding.

Reading, drawing and exporting live in ``core`` (worklist, diagnosis, viewer, overlay, study_report); this page
lays them out. The uploader is drawn before the model's stack is imported (a first visit can pick its films
meanwhile); the viewer and the probabilities are drawn before the flags are computed (one more forward pass), so
the reader sees the film as early as possible.
"""

import hashlib
import logging
from pathlib import Path

import streamlit as st
from streamlit import runtime

from core import RESEARCH_ONLY, overlay, registry, viewer
from core.findings import FINDINGS, FindingError, record_finding, site_counts
from core.imaging import dicom_fields_for_display
from core.report import time_text
from core.site import SiteError, configured_site
from pages.common import active_card, escape_markdown, load_predictor, reader_timezone, run_through_app, site_banner
from pages.film_viewer import film_viewer

STUDIES = "diagnose_studies"  # digest → worklist.Study, for the browser session
SELECTED = "diagnose_selected"
UPLOADER_GENERATION = "diagnose_uploader_generation"  # a new uploader (key) after "clear studies"
HANDLED = "diagnose_handled_uploads"  # upload file ids already read
KEPT = "diagnose_kept"  # widget values kept across pages (Streamlit drops the state of widgets not drawn)
TABLE = "diagnose_worklist_table"
TABLE_ORDER = "diagnose_table_order"
CALLED_CLASS = "The called class"
FINDING_LABELS = {"agrees": "Agree with the call", "corrected": "Correct it to…", "not assessable": "Not assessable"}
UPLOAD_LABEL = (
    "Chest X-rays, or a zip of a folder of them: DICOM (.dcm or no extension), PNG, JPEG, BMP, TIFF, WebP or GIF"
)
INTERNAL_ERROR = "This study could not be analysed because of an internal error (logged for the developers)."
VIEWER_SHARE = 0.62  # the film's share of the page; its call, the worklist and the rest beside it
TABLE_HEIGHT = 250  # px: about six rows, then the table scrolls (the viewer stays in sight)
VIEWER_FILM = "diagnose_viewer_film"  # the served film's place (Streamlit frees it when no longer shown)
FILM_CACHE = "diagnose_film"  # (study digest, the film's JPEG)
VIEWER = "diagnose_viewer"
LOG = logging.getLogger(__name__)


def kept(widget, label: str, key: str, default, options=None, **kwargs):
    """A widget whose value survives a visit to another page: kept in ``KEPT`` and handed back on return."""
    saved = st.session_state.setdefault(KEPT, {})
    if key not in st.session_state:
        st.session_state[key] = still_valid(saved.get(key, default), default, options)
    value = widget(label, options, key=key, **kwargs) if options is not None else widget(label, key=key, **kwargs)
    saved[key] = value
    return value


def still_valid(value, default, options):
    """``value`` if the widget's options (which may change with the model version) still allow it, else
    ``default``; for a multiselect, the chosen values that are still options."""
    if options is None:
        return value
    if isinstance(value, list):
        return [item for item in value if item in options]
    return value if value in options else default


def render_controls(card) -> dict:
    """The explanation controls, in the sidebar."""
    layers = card.conv_layers or [card.gradcam_layer]
    with st.sidebar:
        st.subheader("Explanation")
        explained = kept(
            st.selectbox, "Class to explain", "diagnose_class", CALLED_CLASS, [CALLED_CLASS, *card.class_names]
        )
        method = kept(st.radio, "Method", "diagnose_method", gradcam.GRADCAM, list(gradcam.METHODS), horizontal=True)
        every_layer = kept(
            st.checkbox,
            "Offer every layer",
            "diagnose_every_layer",
            False,
            help="For model developers: the earlier layers of each block too.",
        )
        offered = layers if every_layer else gradcam.reader_layers(layers, card.gradcam_layer)
        layer = kept(st.selectbox, "Layer", "diagnose_layer", card.gradcam_layer, offered)
        percentile = kept(
            st.slider,
            "Draw the map where it is above its percentile",
            "diagnose_percentile",
            overlay.DEFAULT_PERCENTILE,
            min_value=0,
            max_value=99,
            step=1,
            help="80 draws the top fifth of the map; the film stays untouched elsewhere.",
        )
        opacity = kept(
            st.slider, "Opacity", "diagnose_opacity", overlay.DEFAULT_OPACITY, min_value=0.0, max_value=1.0, step=0.05
        )
        colormap = kept(
            st.selectbox, "Colormap", "diagnose_colormap", overlay.DEFAULT_COLORMAP, list(overlay.COLORMAPS)
        )
        show_patient = kept(
            st.checkbox,
            "Show patient fields",
            "diagnose_patient_fields",
            False,
            help="Patient and study fields from DICOM headers, which may identify the patient.",
        )
    return {
        "explained_class": None if explained == CALLED_CLASS else explained,
        "method": method,
        "layer": layer,
        "percentile": percentile,
        "opacity": opacity,
        "colormap": colormap,
        "show_patient": show_patient,
    }


def studies() -> dict:
    return st.session_state.setdefault(STUDIES, {})


def add_uploads(uploads, predictor, card) -> None:
    """Read uploads not seen before into studies (a progress bar for several), within the session's cap."""
    handled = st.session_state.setdefault(HANDLED, set())
    files, problems = [], []
    for upload in uploads:
        if upload.file_id in handled:
            continue
        handled.add(upload.file_id)
        try:
            files += worklist.files_of_upload(upload.name, upload.getvalue())
        except worklist.UploadError as error:
            problems.append(str(error))
    held = studies()
    fresh, duplicates = {}, []
    for name, data in files:
        digest = hashlib.sha256(data).hexdigest()
        if digest in held or digest in fresh:
            first = held[digest].name if digest in held else fresh[digest][0]
            duplicates.append(worklist.duplicate_message(name, first))
        else:
            fresh[digest] = (name, data)
    message = worklist.over_cap(held, sum(len(d) for _, d in fresh.values()), len(fresh))
    if message:
        problems.append(message)
        fresh = {}
    progress = st.progress(0.0, text="Reading the studies…") if len(fresh) > 1 else None
    for number, (digest, (name, data)) in enumerate(fresh.items(), 1):
        held[digest] = worklist.decoded_study(name, data, digest, predictor)
        if held[digest].error is None:
            worklist.look(held[digest], predictor, card)
        else:
            problems.append(f"{name}: {held[digest].error}")
        if progress is not None:
            progress.progress(number / len(fresh), text=f"Read {number} of {len(fresh)}: {escape_markdown(name)}")
    if progress is not None:
        progress.empty()
    if fresh:  # open the most urgent new study by its call (its flags come after the film is on screen)
        st.session_state[SELECTED] = min(fresh, key=lambda digest: worklist.call_rank(held[digest], predictor, card))
    for problem in problems:
        st.error(escape_markdown(problem), icon=":material/error:")
    for duplicate in duplicates:
        st.info(escape_markdown(duplicate), icon=":material/content_copy:")


def select_from_table() -> None:
    """The worklist row the reader clicked (its tick, or any cell of it) opens in the viewer."""
    selection = st.session_state[TABLE].selection
    rows = [cell[0] for cell in selection.cells] or selection.rows
    order = st.session_state.get(TABLE_ORDER, [])
    if rows and rows[0] < len(order):
        st.session_state[SELECTED] = order[rows[0]]


def tick_selected_row(order: list) -> None:
    """Tick the row of the study in the viewer (it may have moved: a new upload, a filter, the keyboard), or
    open the first row shown when the filter hides the one in the viewer."""
    if not order:
        return
    if st.session_state.get(SELECTED) not in order:
        st.session_state[SELECTED] = order[0]
        st.rerun()  # the viewer above was drawn for the study now hidden
    index = order.index(st.session_state[SELECTED])
    current = st.session_state.get(TABLE)
    if current is None or list(current["selection"]["rows"]) != [index] or current["selection"]["cells"]:
        st.session_state[TABLE] = {"selection": {"rows": [index], "columns": [], "cells": []}}


def thumbnail_uri(row: dict):
    return viewer.data_uri(row["thumbnail"]) if row["thumbnail"] else None


def render_worklist(predictor, card) -> None:
    """The table of studies, by priority, filterable (never to nothing by accident); the CSV export of the
    rows shown, in their order; the clear button; why each unreadable file could not be read."""
    rows = worklist.table_rows(studies(), predictor, card)
    header = st.container()
    filters, export, clear = st.columns(3)
    with filters.popover("Filter", icon=":material/filter_list:", width="stretch"):
        text = st.text_input("File name contains", key="diagnose_filter_text")
        groups = kept(
            st.multiselect,
            "Show",
            "diagnose_filter_groups",
            list(worklist.PRIORITY),
            list(worklist.PRIORITY),
            placeholder="every group",
        )
    visible = worklist.filtered(rows, groups, text)
    hidden = len(rows) - len(visible)
    header.subheader(worklist.studies_title(len(rows)))
    if hidden:
        header.caption(f"{hidden} hidden by the filter")
    order = [row["digest"] for row in visible]
    st.session_state[TABLE_ORDER] = order
    shown = [studies()[digest] for digest in order if studies()[digest].error is None]
    export.download_button(
        "Export CSV",
        lambda: worklist.to_csv([worklist.study_record(study, predictor, card) for study in shown]),
        file_name="worklist.csv",
        mime="text/csv",
        icon=":material/table_view:",
        disabled=not shown,
        on_click="ignore",
        width="stretch",
        help="The readable studies shown, in the table's order: the same fields as `python -m core predict --json`.",
    )
    if clear.button("Clear studies", icon=":material/delete_sweep:", width="stretch"):
        st.session_state[STUDIES] = {}
        st.session_state.pop(SELECTED, None)
        st.session_state[UPLOADER_GENERATION] = st.session_state.get(UPLOADER_GENERATION, 0) + 1  # an empty one
        st.rerun()
    tick_selected_row(order)
    columns = ["thumbnail", "file", "call", "p", "flags"]
    st.dataframe(
        [{**{column: row[column] for column in columns}, "thumbnail": thumbnail_uri(row)} for row in visible],
        key=TABLE,
        on_select=select_from_table,
        selection_mode=["single-row-required", "single-cell"],
        hide_index=True,
        width="stretch",
        height=min(TABLE_HEIGHT, 38 + 35 * max(1, len(visible))),
        placeholder="—",
        column_config={
            "thumbnail": st.column_config.ImageColumn("", width="small"),
            "file": st.column_config.TextColumn("file", width="medium"),
            "call": st.column_config.TextColumn("call", width="small"),
            "p": st.column_config.NumberColumn("p(COVID-19)", format="%.3f", width="small"),
            "flags": st.column_config.TextColumn("flags, or why unreadable", width="large"),
        },
    )
    unreadable = [row for row in visible if row["p"] is None]
    if unreadable:
        with st.expander(f"Unreadable: {len(unreadable)}", icon=":material/broken_image:"):
            for row in unreadable:
                st.markdown(f"**{escape_markdown(row['file'])}**: {escape_markdown(row['flags'])}")


def step_study() -> None:
    """The keyboard's next (+1) or previous (-1) study, in the worklist's order as shown."""
    step = st.session_state[VIEWER].step
    order = st.session_state.get(TABLE_ORDER, [])
    if not step or st.session_state.get(SELECTED) not in order:
        return
    index = order.index(st.session_state[SELECTED]) + int(step)
    st.session_state[SELECTED] = order[min(max(index, 0), len(order) - 1)]


def film_source(jpeg: bytes) -> str:
    """The film's URL for the viewer: served by Streamlit's media endpoint (content-addressed, so the browser
    fetches it once and the figure stays small), or a data URI where no Streamlit server runs (AppTest)."""
    if runtime.exists():
        return runtime.get_instance().media_file_mgr.add(jpeg, "image/jpeg", VIEWER_FILM)
    return viewer.data_uri(jpeg)


def pdf_report(*arguments, **options) -> bytes:
    """``core.study_report.report_for``, imported when a report is asked for (fpdf takes up to 1.5 s to load)."""
    from core.study_report import report_for

    return report_for(*arguments, **options)


def film(study) -> bytes:
    """``viewer.film_jpeg`` of the study, kept for the next reruns (the overlay's controls change the viewer's
    data, not the film): one film per session."""
    if st.session_state.get(FILM_CACHE, (None,))[0] != study.digest:
        st.session_state[FILM_CACHE] = (study.digest, viewer.film_jpeg(study.data, study.display))
    return st.session_state[FILM_CACHE][1]


def render_study(predictor, card, controls: dict, study, viewer_column, call_box, more_box) -> None:
    """The selected study: the film in the viewer column; beside it its call, flags and probabilities (in
    ``call_box``) and its downloads, finding form and details (in ``more_box``)."""
    if study.error:
        with viewer_column:
            st.subheader(escape_markdown(study.name))
            st.error(escape_markdown(study.error), icon=":material/broken_image:")
        return
    called, model_ms = worklist.look(study, predictor, card)
    shown, _ = worklist.look(study, predictor, card, controls["layer"], controls["explained_class"])
    explained = predictor.class_names[shown.target]
    with viewer_column:
        cam = shown.maps[controls["method"]]
        data = viewer.viewer_data(
            study.digest,
            film_source(film(study)),
            study.display.shape,
            study.presets,
            study.value_range,
            cam,
            controls["colormap"],
            controls["opacity"],
            controls["percentile"],
            title=f"{controls['method']} of {explained} at {shown.layer}",
        )
        film_viewer(data, key=VIEWER, on_step=step_study)
    with call_box:
        st.markdown(f"**{escape_markdown(study.name)}**")
        sentence_box = st.container()
        bars = viewer.probability_chart(predictor.class_names, called.probabilities, called.decision.label)
        st.plotly_chart(viewer.checked(bars), key="diagnose_probabilities", config={"displayModeBar": False})
    flags, flags_ms = worklist.assessment(study, predictor, card)
    with sentence_box:
        render_call(call_sentence(called.decision, called.probabilities, flags, predictor.class_names, card), flags)
    with more_box:
        render_downloads(predictor, card, controls, study)
        render_finding(predictor, study, called.decision.label)
        with st.expander("Details", icon=":material/info:"):
            st.caption(
                f"Model {escape_markdown(predictor.version)} · operating point "
                f"{escape_markdown(worklist.describe_point(card))} · read {time_text(study.read_at, reader_timezone())}"
            )
            st.caption(
                f"{study.full_shape[1]} × {study.full_shape[0]} px · decode {study.decode_ms:.0f} ms · model "
                f"and Grad-CAM {model_ms:.0f} ms · flags {flags_ms:.0f} ms"
            )
        render_patient_fields(study.metadata, controls["show_patient"])


def render_finding(predictor, study, model_call: str) -> None:
    """The reader's finding on the study: only when recorded is the study kept, de-identified, in the site's set
    (``core.findings``), which ``train.site`` validates and adapts on."""
    site = configured_site()
    with st.expander("Record your finding", icon=":material/rate_review:"):
        if site is None:
            st.caption("Set CXR_SITE to the hospital's name to collect its labelled films from findings.")
            return
        with st.form(f"finding_{study.digest}", border=False):
            finding = st.radio(
                "Finding",
                FINDINGS,
                horizontal=True,
                format_func=lambda code: FINDING_LABELS[code],
                key=f"finding_kind_{study.digest}",
            )
            corrected = st.selectbox("The film shows", predictor.class_names, key=f"finding_class_{study.digest}")
            reader = st.text_input("Your name", key="finding_reader")
            if not st.form_submit_button("Record", icon=":material/save:"):
                st.caption(
                    f"Kept, de-identified, in {escape_markdown(site)}'s labelled set: the class chosen only "
                    "counts when correcting."
                )
                return
        try:
            stored = record_finding(
                site,
                study.data,
                study.name,
                predictor.version,
                model_call,
                finding,
                reader,
                corrected_to=corrected,
                class_names=predictor.class_names,
            )
        except (FindingError, SiteError) as error:
            st.error(escape_markdown(str(error)))
            return
        counts = ", ".join(f"{n} {name}" for name, n in site_counts(site).items())
        kept = "Stored" if stored else "Logged (not assessable: not stored)"
        st.success(f"{kept}. {escape_markdown(site)}'s set: {counts}.")


def render_call(sentence: str, flags) -> None:
    """The call in words with its flags beside it; each flag's warning under it."""
    icon = ":material/help:" if flags.out_of_depth else ":material/assignment_turned_in:"
    st.markdown(f"{icon} **{escape_markdown(sentence)}**")
    if flags.flags:
        st.markdown(" ".join(f":orange-badge[:material/flag: {code}]" for code in flags.flags))
        for warning in flags.warnings:
            st.caption(escape_markdown(warning))


def render_downloads(predictor, card, controls: dict, study) -> None:
    """The report (PDF) and the full-resolution overlay (PNG), each made only when asked for."""
    stem = Path(study.name).stem
    look_args = (controls["layer"], controls["explained_class"])
    drawing = (controls["colormap"], controls["opacity"], controls["percentile"])
    pdf_column, png_column = st.columns(2)
    pdf_column.download_button(
        "Report (PDF)",
        key="diagnose_pdf",
        file_name=f"{stem}_report.pdf",
        mime="application/pdf",
        icon=":material/picture_as_pdf:",
        on_click="ignore",
        width="stretch",
        data=lambda: pdf_report(
            study,
            predictor,
            card,
            controls["method"],
            controls["explained_class"],
            controls["layer"],
            *drawing,
            timezone=reader_timezone(),
        ),
    )
    png_column.download_button(
        "Overlay (PNG)",
        key="diagnose_png",
        file_name=f"{stem}_gradcam.png",
        mime="image/png",
        icon=":material/download:",
        on_click="ignore",
        width="stretch",
        data=lambda: worklist.full_resolution_png(study, predictor, card, controls["method"], *look_args, *drawing),
    )


def render_patient_fields(metadata: dict, show: bool) -> None:
    """The DICOM patient and study fields only when the reader asks, as plain text: never markup."""
    fields = dicom_fields_for_display(metadata)
    if not fields:
        return
    if show:
        st.code("\n".join(f"{label}: {text}" for label, text in fields.items()), language=None)
    else:
        st.caption("Patient fields hidden; tick “Show patient fields” in the sidebar to see them.")


def prepare(predictor, layer: str) -> None:
    """Compile the reading pass now, while the reader picks files, so the first upload does not wait for it
    (once per version and layer: the empty page reruns on every sidebar change)."""
    import numpy as np

    if (READING_PASS, layer) in predictor.explainers:
        return

    blank = np.zeros((1, predictor.input_size, predictor.input_size, 3), np.float32)
    look_batch(predictor, blank, layer=layer)
    predictor.probabilities(blank)


run_through_app(__file__)
st.title("Diagnose")
st.caption(f"{RESEARCH_ONLY} The model's limits are under “About the model”.")
card = active_card()
if card is not None:
    site_banner(card)
    uploads = st.file_uploader(
        UPLOAD_LABEL,
        type=None,
        accept_multiple_files=True,
        key=f"diagnose_uploads_{st.session_state.get(UPLOADER_GENERATION, 0)}",
    )
    # The model's stack (TensorFlow: seconds to import on a fresh server) loads once the uploader is on screen,
    # so a first visit can choose its films meanwhile.
    with st.spinner("Loading the model…"):
        from core import gradcam, worklist
        from core.diagnosis import READING_PASS, call_sentence, look_batch
    controls = render_controls(card)
    try:
        predictor = load_predictor(card.version)
    except registry.ModelVersionError as error:
        st.error(escape_markdown(str(error)))
        st.stop()
    notices = st.container()  # progress and messages: a fixed slot, so the elements below keep their places
    if uploads:
        with notices:
            add_uploads(uploads, predictor, card)
    selected = studies().get(st.session_state.get(SELECTED))
    if selected is None and studies():
        selected = next(iter(studies().values()))
    if selected is None:
        with st.expander("About the model", icon=":material/info:"):
            st.markdown(escape_markdown(card.caveat))
        st.info("Upload chest X-rays to see the model's call and where it looked.", icon=":material/upload_file:")
        prepare(predictor, controls["layer"])
    else:
        viewer_column, side_column = st.columns([VIEWER_SHARE, 1 - VIEWER_SHARE])
        with side_column:
            call_box, worklist_box, more_box = st.container(), st.container(), st.container()
        try:
            render_study(predictor, card, controls, selected, viewer_column, call_box, more_box)
        except Exception:  # a bug must not take the worklist down with it
            LOG.exception("Diagnose failed on a study")
            with viewer_column:
                st.error(INTERNAL_ERROR)
        with worklist_box:
            render_worklist(predictor, card)
        with more_box, st.expander("About the model", icon=":material/info:"):
            st.markdown(escape_markdown(card.caveat))
