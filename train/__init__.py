"""``python -m train``: the trainer (``train.trainer``), the evaluation of finished versions
(``train.evaluation``) and what the Retrain page drives (``train.jobs``). Each sub-package imports only those
listed after it here, and ``core``."""

__all__ = ["jobs", "evaluation", "trainer"]
