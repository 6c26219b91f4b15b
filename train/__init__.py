"""``python -m train``: datasets and patient-level splits, the cached input pipeline, architectures,
learning-rate schedules, the fit loop with progress events, evaluation and publishing."""
