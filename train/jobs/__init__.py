"""What the Retrain page drives: where data may come from (``datasource``), what a run will take (``planning``),
the recipes it starts from (``recipes``), runs as processes (``supervisor``) and zip archives in and out
(``archive``)."""

__all__ = ["archive", "datasource", "planning", "recipes", "supervisor"]
