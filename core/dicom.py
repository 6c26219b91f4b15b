"""DICOM radiographs through pydicom: modality LUT, VOI LUT or window, BitsStored, MONOCHROME1 inverted,
compressed transfer syntaxes through the pylibjpeg plugins; non-radiograph modalities and multi-frame files
refused or hinted; the patient and study fields kept apart, for display only when asked."""

import io

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

from core.radiograph import DAMAGED, Hint, Radiograph, UnusableImageError, check_dimensions, scale, value_bounds

__all__ = ["read_dicom", "dicom_fields_for_display", "DICOM_PIXEL_DATA_TAG"]

DICOM_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
PROJECTION_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
UNSTATED_MODALITIES = frozenset({"", "OT", "SC"})  # "other" and "secondary capture": accepted, with a hint
MODALITY_NAMES = {
    "CT": "a CT",
    "MR": "an MRI",
    "US": "an ultrasound",
    "NM": "a nuclear medicine",
    "PT": "a PET",
    "MG": "a mammography",
    "XA": "an angiography",
    "RF": "a fluoroscopy",
    "PX": "a dental panoramic",
    "IO": "an intra-oral dental",
    "ES": "an endoscopy",
    "SM": "a microscopy",
    "OP": "an ophthalmic",
    "SR": "a structured report",
    "PR": "a presentation state",
    "KO": "a key object",
}
GREYSCALE_PHOTOMETRICS = frozenset({"MONOCHROME1", "MONOCHROME2"})
FRONTAL_VIEWS = frozenset({"", "PA", "AP"})
DICOM_METADATA_KEYWORDS = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "PresentationIntentType",
    "Manufacturer",
    "StudyDescription",
    "SeriesDescription",
    "PatientName",
    "PatientID",
    "PatientSex",
    "PatientAge",
    "PatientBirthDate",
    "StudyDate",
)
PATIENT_DISPLAY_LABELS = {
    "PatientName": "Patient name",
    "PatientID": "Patient ID",
    "PatientSex": "Sex",
    "PatientAge": "Age",
    "PatientBirthDate": "Birth date",
    "StudyDate": "Study date",
    "StudyDescription": "Study",
}
DICOM_DATE_KEYWORDS = frozenset({"PatientBirthDate", "StudyDate"})
RUST_PANIC = "PanicException"


def dicom_fields_for_display(metadata: dict) -> dict:
    """The patient and study fields of ``metadata`` as {label: plain text}, in a fixed order, empty ones left out.

    Names read "FAMILY, Given", dates "YYYY-MM-DD". The text is not escaped: whoever renders it must."""
    fields = {}
    for keyword, label in PATIENT_DISPLAY_LABELS.items():
        text = "".join(ch for ch in str(metadata.get(keyword, "")) if ch.isprintable()).strip()
        if keyword == "PatientName":
            text = _display_person_name(text)
        elif keyword in DICOM_DATE_KEYWORDS:
            text = _display_date(text)
        if text:
            fields[label] = text
    return fields


def _display_person_name(name: str) -> str:
    family, _, given = name.partition("^")
    given = " ".join(part for part in given.split("^") if part)
    return f"{family}, {given}" if family and given else family or given


def _display_date(date: str) -> str:
    return f"{date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 and date.isdigit() else date


def read_dicom(data: bytes) -> Radiograph:
    """Decode a DICOM file's first frame to [0, 1] display greys with its metadata and hints; ``UnusableImageError``
    for a damaged file or one that is not a projection radiograph."""
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        for _ in dataset.iterall():  # pydicom parses element values lazily: parse them all now
            pass
    except Exception as error:  # whatever a damaged file makes pydicom raise
        raise UnusableImageError(DAMAGED) from error
    if "PixelData" not in dataset and DICOM_PIXEL_DATA_TAG in data:  # pydicom drops pixel data cut off short
        raise UnusableImageError(DAMAGED)
    metadata = _dicom_metadata(dataset)
    _refuse_unusable_dicom(dataset, metadata)
    hints = check_dimensions(metadata["Columns"], metadata["Rows"]) + _dicom_hints(metadata)
    values, voi_range = _apply_luts(_decode_first_frame(dataset), dataset)
    bounds = value_bounds(values)
    pixels = scale(values, *(voi_range or bounds))
    value_range = _shown_value_range(dataset, bounds)
    if metadata.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = 1.0 - pixels
        value_range = value_range and value_range[::-1]
    return Radiograph(pixels=pixels, format="DICOM", metadata=metadata, hints=hints, value_range=value_range)


def _dicom_metadata(dataset) -> dict:
    """The header fields of interest that the file fills, as plain str/int values."""
    metadata = {"TransferSyntax": _transfer_syntax(dataset).name}
    for keyword in DICOM_METADATA_KEYWORDS:
        value = dataset.get(keyword)
        if isinstance(value, MultiValue):
            value = "\\".join(str(item) for item in value)
        if isinstance(value, int):
            metadata[keyword] = int(value)
        elif value is not None and str(value).strip():
            metadata[keyword] = str(value).strip()
    return metadata


def _transfer_syntax(dataset):
    """The stated transfer syntax or, for a file without meta header, the encoding pydicom found."""
    stated = dataset.file_meta.get("TransferSyntaxUID")
    if isinstance(stated, pydicom.uid.UID) and stated:
        return stated
    implicit_vr, little_endian = dataset.original_encoding
    if implicit_vr:
        return pydicom.uid.ImplicitVRLittleEndian
    return pydicom.uid.ExplicitVRLittleEndian if little_endian else pydicom.uid.ExplicitVRBigEndian


def _metadata_text(metadata: dict, keyword: str) -> str:
    return str(metadata.get(keyword, "")).upper()


def _metadata_count(metadata: dict, keyword: str) -> int:
    """An integer field (Rows, Columns, NumberOfFrames); 0 when absent or malformed."""
    value = metadata.get(keyword, 0)
    return value if isinstance(value, int) else 0


def _refuse_unusable_dicom(dataset, metadata: dict) -> None:
    modality = _metadata_text(metadata, "Modality")
    if modality not in PROJECTION_MODALITIES | UNSTATED_MODALITIES:
        kind = MODALITY_NAMES.get(modality, f"a {modality}")
        raise UnusableImageError(
            f"This DICOM file is {kind} study (modality {modality}), not a projection "
            "radiograph; the model reads chest X-rays only."
        )
    if "PixelData" not in dataset or not _metadata_count(metadata, "Rows") or not _metadata_count(metadata, "Columns"):
        raise UnusableImageError(
            "This DICOM file contains no image (it may be a report, a worklist or a directory file)."
        )
    photometric = _metadata_text(metadata, "PhotometricInterpretation")
    if photometric not in GREYSCALE_PHOTOMETRICS or dataset.get("SamplesPerPixel", 1) != 1:
        raise UnusableImageError(
            f"This DICOM image is in colour ({photometric or 'unstated colour space'}), not a greyscale radiograph."
        )
    frames = _metadata_count(metadata, "NumberOfFrames")
    if frames > 1 and modality not in PROJECTION_MODALITIES:
        raise UnusableImageError(
            f"This DICOM file holds {frames} frames (a series or a cine loop), not a single radiograph."
        )


def _dicom_hints(metadata: dict) -> list:
    hints = []
    modality, view = _metadata_text(metadata, "Modality"), _metadata_text(metadata, "ViewPosition")
    body_part = _metadata_text(metadata, "BodyPartExamined")
    if modality in UNSTATED_MODALITIES:
        hints.append(
            Hint(
                f"The file does not say it is a radiograph (modality: {modality or 'not stated'}); "
                "check that it is a chest X-ray.",
                "not_radiograph",
            )
        )
    if view not in FRONTAL_VIEWS:
        hints.append(
            Hint(
                f"The file says the view is {view}, not frontal (PA or AP); the model was trained on "
                "frontal chest radiographs.",
                "lateral_view",
            )
        )
    if body_part not in ("", "CHEST"):
        hints.append(Hint(f"The file says the body part is {body_part}, not the chest.", "not_chest"))
    if _metadata_text(metadata, "PresentationIntentType") == "FOR PROCESSING":
        hints.append(
            Hint(
                "This is raw detector data ('for processing'), not the image a radiologist would read.",
                "raw_detector_data",
            )
        )
    frames = _metadata_count(metadata, "NumberOfFrames")
    if frames > 1:
        hints.append(Hint(f"The file holds {frames} frames; only the first is used.", "multi_frame"))
    return hints


def _decode_first_frame(dataset) -> np.ndarray:
    """Frame 0 of the pixel data, unused high bits cleared (BitsStored), compressed syntaxes via plugins."""
    if not dataset.file_meta.get("TransferSyntaxUID"):
        dataset.file_meta.TransferSyntaxUID = _transfer_syntax(dataset)
    try:
        return pixel_array(dataset, index=0)
    except NotImplementedError as error:
        raise UnusableImageError(
            f"This DICOM image is compressed as '{_transfer_syntax(dataset).name}', which this app cannot decode."
        ) from error
    except Exception as error:  # whatever damaged pixel data makes pydicom or a plugin raise
        raise UnusableImageError(DAMAGED) from error
    except BaseException as error:  # pylibjpeg-rle is written in Rust, whose panics derive from BaseException
        if type(error).__name__ != RUST_PANIC:
            raise
        raise UnusableImageError(DAMAGED) from error


def _apply_luts(stored: np.ndarray, dataset) -> tuple:
    """The modality LUT (or rescale) then the VOI LUT (or window) applied to ``stored``, as float32, and the
    range the VOI maps onto (None without VOI)."""
    try:
        values = apply_voi_lut(apply_modality_lut(stored, dataset), dataset).astype(np.float32)
        return values, _voi_output_range(dataset)
    except Exception as error:  # pydicom's refusal of a malformed rescale, window or LUT
        raise UnusableImageError(
            "The DICOM file's grey-level settings (rescale, window or lookup table) are invalid."
        ) from error


def _shown_value_range(dataset, bounds: tuple):
    """The modality values (after rescale) at the ends of what the display greys span: the first window's edges
    (PS3.3 C.11.2.1.2, linear), the image's own range without a window, None for a VOI lookup table."""
    if dataset.get("VOILUTSequence"):
        return None
    if not _has_voi(dataset):
        return float(bounds[0]), float(bounds[1])
    try:
        center = float(np.ravel(dataset.WindowCenter)[0])
        width = float(np.ravel(dataset.WindowWidth)[0])
    except (TypeError, ValueError, IndexError):
        return None
    return center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2


def _has_voi(dataset) -> bool:
    return bool(dataset.get("VOILUTSequence")) or ("WindowCenter" in dataset and "WindowWidth" in dataset)


def _voi_output_range(dataset):
    """The (low, high) that the VOI LUT or window maps the lowest and highest storable values onto, or None
    when the file has neither (then the image's own range is used)."""
    if not _has_voi(dataset):
        return None
    bits = int(dataset.BitsStored)
    signed = dataset.get("PixelRepresentation", 0) == 1
    lowest = -(1 << (bits - 1)) if signed else 0
    highest = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    storable = np.array([lowest, highest], np.int64)
    ends = apply_voi_lut(apply_modality_lut(storable, dataset), dataset).astype(np.float64)
    return float(ends.min()), float(ends.max())
