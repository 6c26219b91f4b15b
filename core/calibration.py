"""Temperature scaling (Guo et al. 2017) and calibration error."""

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

__all__ = ["fit_temperature", "reliability_bins", "expected_calibration_error"]

TEMPERATURE_BOUNDS = (0.05, 20.0)
ECE_BINS = 15


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T) on ``labels``."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)

    def nll(log_t):
        scores = log_softmax(logits / np.exp(log_t), axis=1)
        return -scores[np.arange(len(labels)), labels].mean()

    bounds = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(nll, bounds=tuple(bounds), method="bounded")
    return float(np.exp(result.x))


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> list:
    """Top-label reliability: per confidence bin, its count, mean confidence and accuracy."""
    probs = np.asarray(probs)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the count-weighted mean |accuracy − confidence| over equal-width confidence bins."""
    rows = reliability_bins(labels, probs, bins)
    total = sum(row["count"] for row in rows)
    gap = sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in rows if row["count"])
    return float(gap / total) if total else float("nan")
