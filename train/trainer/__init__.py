"""The trainer: datasets and patient-level splits, the decode-once cache, the input pipeline, architectures,
learning-rate schedules, the recipe, the fit loop with checkpoints and progress events, and one run from data to
a candidate version (``run``) with its operating point and shift figures (``shift``) and flag detectors
(``flags``)."""

__all__ = [
    "architectures",
    "cache",
    "checkpoints",
    "config",
    "datasets",
    "distribute",
    "flags",
    "pipeline",
    "progress",
    "run",
    "schedules",
    "shift",
]
