"""CXR Triage library: image reading, the shared preprocessing, the model registry, inference and metrics.

Nothing in this package imports streamlit, so it can be used from the CLI, the trainer and tests.
"""

CLASS_NAMES = ("COVID-19", "Normal", "Pneumonia")
