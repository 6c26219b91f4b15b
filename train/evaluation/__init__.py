"""Finished versions measured: on data they never saw (``evaluate``), across hospitals (``crosshospital``), a
candidate against a published version (``compare``), and flag detectors refitted for old versions
(``detector``)."""

__all__ = ["compare", "crosshospital", "detector", "evaluate"]
