"""``python -m train``: datasets and patient-level splits, the cached input pipeline, architectures,
learning-rate schedules, the fit loop with progress events, evaluation and publishing; and, for the Retrain
page, where data may come from (``datasource``), what a run will take (``planning``), runs as processes
(``supervisor``) and a candidate against a published version (``compare``)."""

__all__ = ["datasource", "planning", "supervisor", "compare"]
