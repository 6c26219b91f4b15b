"""Diagnose: upload chest X-rays; each gets its calibrated class probabilities, the call at the model version's
operating point and a Grad-CAM overlay.

Decoding, inference and explanation live in ``core``; this page lays them out and keeps per-file results in the
browser session, so moving the opacity or the colormap redraws the overlay without running the model again.
Uploads stay in memory; nothing is written to disk.
"""

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core import gradcam, registry
from core.flags import UNCERTAIN_CALL
from core.imaging import Radiograph, UnusableImageError, dicom_fields_for_display, read_image
from pages.common import active_card, escape_markdown, load_predictor

CALLED_CLASS = "The called class"
FILES_STATE = "diagnose_files"
INTERNAL_ERROR = "This file could not be analysed because of an internal error (logged for the developers)."
RESEARCH_ONLY = "Research use only — not for clinical diagnosis."
OPACITY_STEP = 0.05
CHART_HEIGHT = 160
CALLED_COLOUR, OTHER_COLOUR = "#d62728", "#8c9bab"
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Controls:
    """The reader's choices; ``explained_class`` None means the class called at the operating point."""

    explained_class: str | None
    method: str
    layer: str
    opacity: float
    colormap: str
    show_patient_fields: bool
    card: dict  # read afresh on every run, so a newly saved operating point applies at once


@dataclass
class FileResult:
    """One uploaded file's decoded image (or why it is unusable) and the explanations computed for it so far."""

    radiograph: Radiograph | None = None
    error: str | None = None
    display: np.ndarray | None = None
    original_jpeg: bytes = b""
    decode_ms: float = 0.0
    explanations: dict = field(default_factory=dict)  # (version, layer, class) → (Explanation, Decision, ms)
    assessments: dict = field(default_factory=dict)  # (version, operating point) → Assessment
    overlay: tuple = (None, b"", 0.0)  # the last overlay drawn: ((version, controls), JPEG bytes, ms)


def render_controls(card: dict) -> Controls:
    """The explanation controls, in the sidebar."""
    layers = card.get("conv_layers") or [card["gradcam_layer"]]
    with st.sidebar:
        st.subheader("Explanation")
        explained = st.selectbox("Class to explain", [CALLED_CLASS, *card["class_names"]], key="diagnose_class")
        method = st.radio("Method", gradcam.METHODS, horizontal=True, key="diagnose_method")
        layer = st.selectbox("Layer", layers, index=layers.index(card["gradcam_layer"]), key="diagnose_layer")
        opacity = st.slider("Opacity", 0.0, 1.0, gradcam.DEFAULT_OPACITY, OPACITY_STEP, key="diagnose_opacity")
        colormap = st.selectbox("Colormap", list(gradcam.COLORMAPS), key="diagnose_colormap")
        show_patient = st.checkbox("Show patient fields", key="diagnose_patient_fields",
                                   help="Patient and study fields from DICOM headers, which may identify the patient.")
    return Controls(None if explained == CALLED_CLASS else explained, method, layer, opacity, colormap, show_patient,
                    card)


def decoded(data: bytes) -> FileResult:
    """Decode an upload once; an unusable file keeps its reader-facing message."""
    start = time.perf_counter()
    try:
        radiograph = read_image(data)
    except UnusableImageError as error:
        return FileResult(error=str(error))
    display = gradcam.display_copy(radiograph.pixels)
    return FileResult(radiograph, None, display, gradcam.grey_jpeg(display), elapsed_ms(start))


def explained(result: FileResult, predictor, controls: Controls):
    """(Explanation, Decision, Assessment, ms) for the chosen layer and class, computed once per file, version,
    operating point, layer and class."""
    point = controls.card.get("operating_point") or {}
    key = (predictor.version, point.get("positive_class"), point.get("threshold"), controls.layer,
           controls.explained_class)
    if key not in result.explanations:
        start = time.perf_counter()
        image = predictor.preprocess(result.radiograph.pixels)
        explanation, decision = gradcam.explain_call(predictor, image, controls.explained_class, controls.layer,
                                                     card=controls.card)
        point_key = key[:3]  # the flags do not depend on the layer or the class explained
        if point_key not in result.assessments:
            _, (result.assessments[point_key],) = predictor.assess(image[np.newaxis], [result.radiograph.hints],
                                                                   card=controls.card)
        result.explanations[key] = (explanation, decision, result.assessments[point_key], elapsed_ms(start))
    return result.explanations[key]


def overlay_jpeg(result: FileResult, cam: np.ndarray, version: str, controls: Controls):
    """(JPEG bytes, ms) of the overlay on the display copy, redrawn only when the version or a control changes."""
    settings = (version, controls)
    if result.overlay[0] != settings:
        start = time.perf_counter()
        jpeg = gradcam.overlay_jpeg(result.display, cam, controls.colormap, controls.opacity)
        result.overlay = (settings, jpeg, elapsed_ms(start))
    return result.overlay[1:]


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def probability_chart(class_names, probabilities, called: str) -> go.Figure:
    colours = [CALLED_COLOUR if name == called else OTHER_COLOUR for name in class_names]
    figure = go.Figure(go.Bar(
        x=list(probabilities), y=list(class_names), orientation="h", marker_color=colours,
        text=[f"{p:.1%}" for p in probabilities], textposition="auto", hovertemplate="%{y}: %{x:.3f}<extra></extra>",
    ))
    figure.update_layout(
        height=CHART_HEIGHT, margin=dict(l=0, r=10, t=10, b=0), showlegend=False,
        xaxis=dict(range=[0, 1], tickformat=".0%", title="calibrated probability"), yaxis=dict(autorange="reversed"),
    )
    return figure


def render_file(predictor, controls: Controls, name: str, data: bytes, key: str) -> str:
    """One upload's card; returns the file's digest. Any failure stays inside the card, so the other files
    carry on."""
    files = st.session_state.setdefault(FILES_STATE, {})
    digest = hashlib.sha256(data).hexdigest()
    with st.container(border=True):
        st.markdown(f"**{escape_markdown(name)}**")
        try:
            if digest not in files:
                files[digest] = decoded(data)
            render_result(predictor, controls, files[digest], Path(name).stem, key)
        except Exception:  # a bug must not take the other files' cards down with it
            LOG.exception("Diagnose failed on an upload")
            st.error(INTERNAL_ERROR)
    return digest


def render_result(predictor, controls: Controls, result: FileResult, stem: str, key: str) -> None:
    if result.error:
        st.error(escape_markdown(result.error))
        return
    explanation, decision, assessment, model_ms = explained(result, predictor, controls)
    cam = explanation.maps[controls.method]
    explained_name = predictor.class_names[int(explanation.targets)]
    jpeg, overlay_ms = overlay_jpeg(result, cam, predictor.version, controls)

    image_column, overlay_column, numbers_column = st.columns([2, 2, 3])
    image_column.image(result.original_jpeg, caption="Original", width="stretch")
    overlay_column.image(jpeg, caption=f"{controls.method}: {explained_name} at {controls.layer}", width="stretch")
    with numbers_column:
        render_call(decision, assessment)
        st.plotly_chart(probability_chart(predictor.class_names, explanation.probabilities, decision.label),
                        key=f"probabilities_{key}", config={"displayModeBar": False})
        st.caption(escape_markdown(f"Model {predictor.version}. {RESEARCH_ONLY} {predictor.card.get('caveat', '')}"))
        st.download_button(
            "Download overlay (PNG)", key=f"download_{key}", file_name=f"{stem}_gradcam.png", mime="image/png",
            data=lambda: gradcam.overlay_png(result.radiograph.pixels, cam, controls.colormap, controls.opacity),
            on_click="ignore",
        )
        st.caption(f"decode {result.decode_ms:.0f} ms · model + Grad-CAM {model_ms:.0f} ms · "
                   f"overlay {overlay_ms:.0f} ms")
    render_patient_fields(result.radiograph.metadata, controls.show_patient_fields)


def render_call(decision, assessment) -> None:
    """The call, or "uncertain — read without the model" when a flag says the model is out of its depth,
    with every flag's warning beside it."""
    if assessment.out_of_depth:
        st.markdown(f"#### Call: {UNCERTAIN_CALL}")
        st.caption(f"The model's output would be {escape_markdown(decision.label)} ({escape_markdown(decision.rule)}); "
                   "a flag below says not to rely on it.")
    else:
        st.markdown(f"#### Call: {escape_markdown(decision.label)}")
        st.caption(f"Rule: {escape_markdown(decision.rule)}")
    for warning in assessment.warnings:
        st.warning(escape_markdown(warning))
    if assessment.flags:
        st.caption("Flags: " + ", ".join(f"`{code}`" for code in assessment.flags))


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
    """Compile the model's pass now, while the reader picks files, so the first upload does not wait for it."""
    gradcam.explain(predictor, np.zeros((predictor.input_size, predictor.input_size, 3), np.float32), layer=layer)


def forget_other_files(kept: set) -> None:
    """Drop the session's results for files no longer uploaded."""
    files = st.session_state.get(FILES_STATE, {})
    st.session_state[FILES_STATE] = {digest: result for digest, result in files.items() if digest in kept}


st.title("Diagnose")
card = active_card()
if card is not None:
    controls = render_controls(card)
    uploads = st.file_uploader(
        "Chest X-rays: DICOM, PNG, JPEG, BMP, TIFF or WebP (several at once)",
        type=None, accept_multiple_files=True, key="diagnose_uploads",
    )
    try:
        predictor = load_predictor(card["version"])
    except registry.ModelVersionError as error:
        st.error(escape_markdown(str(error)))
        st.stop()
    if not uploads:
        st.info(f"Upload chest X-rays to see the model's call and where it looked. {RESEARCH_ONLY}")
        prepare(predictor, controls.layer)
    forget_other_files({render_file(predictor, controls, u.name, u.getvalue(), u.file_id) for u in uploads})
