"""The Streamlit pages: thin layouts over ``core`` and ``train`` (no logic that a test would need a browser for)."""

__all__ = ["common"]
