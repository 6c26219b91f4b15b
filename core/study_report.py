"""A one-page PDF report of one study (fpdf2): the film, the Grad-CAM overlay with its colour scale, the calibrated
probabilities, the call and its rule, the flags, the model version and operating point, and the caveat. The
Diagnose page and ``python -m core predict --report-dir`` make the same report."""

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fpdf import FPDF

from core import RESEARCH_ONLY, overlay
from core.card import ModelCard
from core.report import time_text
from core.site import site_notice

__all__ = ["StudyReport", "ReportPDF", "new_pdf", "jpeg_stream", "study_pdf", "report_for"]

FONT_FOLDER = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf"}
FONT = "DejaVu"
FALLBACK_FONT = "Helvetica"  # latin-1 only: other characters are replaced
PAGE_WIDTH_MM, MARGIN_MM, GAP_MM = 210, 12, 6
SCALE_HEIGHT_PX = 16


@dataclass(frozen=True)
class StudyReport:
    """What the report shows. ``display``: the 8-bit film; ``cam``: the explained class's map; ``sentence``:
    the call in words (``core.diagnosis.call_sentence``); ``entry``: the reading's ``core.worklist.record``."""

    display: np.ndarray
    cam: np.ndarray
    method: str
    explained_class: str
    layer: str
    sentence: str
    entry: dict
    caveat: str
    colormap: str = overlay.DEFAULT_COLORMAP
    opacity: float = overlay.DEFAULT_OPACITY
    percentile: float = overlay.DEFAULT_PERCENTILE
    timezone: str | None = None  # the reader's (an IANA name): the time of the reading is shown in it


class ReportPDF(FPDF):
    def footer(self):
        self.set_y(-12)
        self.set_font(self.family_name, size=7)
        self.cell(0, 5, self.clean(f"CXR Triage · {RESEARCH_ONLY}"), align="C")

    @property
    def family_name(self) -> str:
        return FONT if FONT.lower() in self.fonts or f"{FONT.lower()}b" in self.fonts else FALLBACK_FONT

    def clean(self, text: str) -> str:
        """``text`` as the current font can write it (the fallback font is latin-1 only)."""
        if self.family_name == FONT:
            return text
        return (
            text.replace("≥", ">=").replace("−", "-").replace("—", "-").encode("latin-1", "replace").decode("latin-1")
        )


def new_pdf() -> ReportPDF:
    pdf = ReportPDF(format="A4")
    pdf.set_auto_page_break(True, margin=16)
    pdf.set_margins(MARGIN_MM, MARGIN_MM, MARGIN_MM)
    if all((FONT_FOLDER / name).is_file() for name in FONT_FILES.values()):
        for style, name in FONT_FILES.items():
            pdf.add_font(FONT, style, str(FONT_FOLDER / name))
    pdf.add_page()
    return pdf


def jpeg_stream(rgb_or_grey: np.ndarray) -> io.BytesIO:
    data = overlay.rgb_jpeg(rgb_or_grey) if rgb_or_grey.ndim == 3 else overlay.encode_jpeg(rgb_or_grey)
    return io.BytesIO(data)


def study_pdf(report: StudyReport) -> bytes:
    """The report as PDF bytes."""
    pdf = new_pdf()
    entry = report.entry
    family = pdf.family_name
    pdf.set_font(family, "B", 15)
    pdf.cell(
        0,
        8,
        "CXR Triage — study report" if family == FONT else "CXR Triage - study report",
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.set_font(family, size=9)
    for label, value in (
        ("File", entry["file"]),
        ("Read", time_text(entry["time"], report.timezone)),
        ("Model version", entry["model_version"]),
        ("Operating point", entry["operating_point"]),
        ("Site", site_notice(entry["site"])),
    ):
        pdf.multi_cell(0, 5, pdf.clean(f"{label}: {value}"), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    images_top = pdf.get_y()
    width = (PAGE_WIDTH_MM - 2 * MARGIN_MM - GAP_MM) / 2
    rows, columns = report.display.shape
    height = width * rows / columns
    drawn = overlay.overlay(report.display, report.cam, report.colormap, report.opacity, report.percentile)
    pdf.image(jpeg_stream(report.display), x=MARGIN_MM, y=images_top, w=width, h=height)
    pdf.image(jpeg_stream(drawn), x=MARGIN_MM + width + GAP_MM, y=images_top, w=width, h=height)
    pdf.set_xy(MARGIN_MM, images_top + height + 1)
    pdf.set_font(family, size=8)
    pdf.cell(width + GAP_MM, 4, "Film")
    pdf.cell(
        width,
        4,
        pdf.clean(f"{report.method} of {report.explained_class} at {report.layer}"),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    scale_top = pdf.get_y() + 1
    low = overlay.cut(report.cam, report.percentile)
    scale = overlay.colour_scale(report.colormap, 256, SCALE_HEIGHT_PX, low=low)
    pdf.image(jpeg_stream(scale), x=MARGIN_MM + width + GAP_MM, y=scale_top, w=width, h=4)
    pdf.set_xy(MARGIN_MM + width + GAP_MM, scale_top + 4.5)
    pdf.cell(width / 2, 4, "map 0")
    pdf.cell(width / 2, 4, "1", align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.set_x(MARGIN_MM + width + GAP_MM)
    pdf.multi_cell(  # wraps within the overlay's column, never past the page's edge
        width,
        4,
        pdf.clean(
            f"drawn where the map ≥ {low:.2f} (its {report.percentile:g}th percentile), "
            f"opacity {report.opacity:.2f}; grey: not drawn"
        ),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.ln(3)
    pdf.set_font(family, "B", 11)
    pdf.multi_cell(0, 6, pdf.clean(report.sentence), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, size=9)
    pdf.cell(0, 5, "Calibrated probabilities:", new_x="LMARGIN", new_y="NEXT")
    for name, p in entry["probabilities"].items():
        mark = "  (called)" if name == entry["prediction"] else ""
        pdf.cell(0, 5, pdf.clean(f"    {name}: {p:.3f}{mark}"), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    flags = ", ".join(entry["flags"]) or "none"
    pdf.cell(0, 5, pdf.clean(f"Flags: {flags}"), new_x="LMARGIN", new_y="NEXT")
    for warning in entry["warnings"]:
        pdf.multi_cell(
            0, 5, pdf.clean(f"    • {warning}" if family == FONT else f"    - {warning}"), new_x="LMARGIN", new_y="NEXT"
        )
    pdf.ln(2)
    pdf.set_font(family, size=8)
    pdf.multi_cell(0, 4, pdf.clean(f"{RESEARCH_ONLY} {report.caveat}"), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def report_for(
    study,
    predictor,
    card: ModelCard,
    method: str,
    explained_class=None,
    layer=None,
    colormap=overlay.DEFAULT_COLORMAP,
    opacity=overlay.DEFAULT_OPACITY,
    percentile=overlay.DEFAULT_PERCENTILE,
    timezone=None,
) -> bytes:
    """The PDF of a ``core.worklist.Study`` as the reader sees it (the class, method and layer explained, the
    overlay's colours), with the reading's record; times in the reader's ``timezone``."""
    from core import diagnosis, worklist

    called, _ = worklist.look(study, predictor, card)
    shown, _ = worklist.look(study, predictor, card, layer, explained_class)
    flags, _ = worklist.assessment(study, predictor, card)
    sentence = diagnosis.call_sentence(called.decision, called.probabilities, flags, predictor.class_names, card)
    explained = predictor.class_names[shown.target]
    report = StudyReport(
        study.display,
        shown.maps[method],
        method,
        explained,
        shown.layer,
        sentence,
        worklist.study_record(study, predictor, card),
        card.caveat,
        colormap,
        opacity,
        percentile,
        timezone,
    )
    return study_pdf(report)
