"""Operating points: a threshold on one class's calibrated probability, stored in a model version's card.

One comparison rule everywhere: a case is positive when ``p ≥ threshold``.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Decision:
    label: str
    rule: str  # how the label was reached, for display


def decide(probabilities, card: dict) -> Decision:
    """The call for one image: the card's operating point when it has one, else the most probable class.

    With an operating point on class P at threshold t: P when p(P) ≥ t, otherwise the most probable of the
    other classes. For the pseudo-class "abnormal" (anything but Normal), the point is on 1 − p(Normal).
    """
    names = list(card["class_names"])
    probabilities = np.asarray(probabilities, dtype=np.float64)
    point = card.get("operating_point")
    if not point:
        return Decision(names[int(np.argmax(probabilities))], "most probable class (no saved operating point)")
    positive, threshold = point["positive_class"], float(point["threshold"])
    if positive == "abnormal":
        normal = names.index("Normal")
        abnormal = 1.0 - probabilities[normal]
        if abnormal >= threshold:
            others = [i for i in range(len(names)) if i != normal]
            label = names[max(others, key=lambda i: probabilities[i])]
            return Decision(label, f"abnormal: 1 − p(Normal) = {abnormal:.3f} ≥ {threshold:.3f}")
        return Decision("Normal", f"1 − p(Normal) = {abnormal:.3f} < {threshold:.3f}")
    index = names.index(positive)
    if probabilities[index] >= threshold:
        return Decision(positive, f"p({positive}) = {probabilities[index]:.3f} ≥ {threshold:.3f}")
    others = [i for i in range(len(names)) if i != index]
    label = names[max(others, key=lambda i: probabilities[i])]
    return Decision(label, f"p({positive}) = {probabilities[index]:.3f} < {threshold:.3f}; most probable other class")
