"""CXR Triage library: image reading, the shared preprocessing, the model card and registry, inference, the
flags on every call, Grad-CAM, operating points, metrics and reports.

Nothing in this package imports streamlit, ``train`` or ``pages`` (the import contracts in ``pyproject.toml``), so
it can be used from the CLI, the trainer and tests. Every path and environment variable is in ``core.settings``.
"""

__all__ = ["CLASS_NAMES", "RESEARCH_ONLY"]

RESEARCH_ONLY = "Research use only — not for clinical diagnosis."  # on every page, and in every report
CLASS_NAMES = ("COVID-19", "Normal", "Pneumonia")  # the classes the trainer trains; a model's own are its card's
