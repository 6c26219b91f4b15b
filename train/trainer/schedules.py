"""Learning-rate schedules, per optimizer step."""

import keras

__all__ = ["paper_schedule", "warmup_cosine_schedule", "make_schedule", "schedule_curve"]

PAPER_STAGES = ((0, 4e-4), (3, 2e-4), (6, 1e-4))  # (first epoch, learning rate), Zhong 2020
SCHEDULES = ("paper", "warmup-cosine", "constant")


def paper_schedule(steps_per_epoch: int, scale: float = 1.0):
    """Zhong 2020's three stages: 4e-4 for epochs 0–2, 2e-4 for 3–5, 1e-4 from 6 on (× ``scale``)."""
    boundaries = [first * steps_per_epoch for first, _ in PAPER_STAGES[1:]]
    values = [rate * scale for _, rate in PAPER_STAGES]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def warmup_cosine_schedule(steps_per_epoch, epochs, peak=4e-4, warmup_epochs=1.0, start_factor=0.1, final_factor=0.01):
    """Linear warmup from ``start_factor·peak`` to ``peak`` over ``warmup_epochs``, then cosine decay to
    ``final_factor·peak`` at the end of training."""
    warmup_steps = max(1, round(warmup_epochs * steps_per_epoch))
    decay_steps = max(1, epochs * steps_per_epoch - warmup_steps)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak * start_factor,
        decay_steps=decay_steps,
        alpha=final_factor,
        warmup_target=peak,
        warmup_steps=warmup_steps,
    )


def make_schedule(name: str, steps_per_epoch: int, epochs: int, peak: float, warmup_epochs: float):
    if name == "paper":
        return paper_schedule(steps_per_epoch, scale=peak / PAPER_STAGES[0][1])
    if name == "warmup-cosine":
        return warmup_cosine_schedule(steps_per_epoch, epochs, peak, warmup_epochs)
    if name == "constant":
        return peak
    raise ValueError(f"Unknown learning-rate schedule '{name}'; choose one of {', '.join(SCHEDULES)}.")


def schedule_curve(name, steps_per_epoch, epochs, peak, warmup_epochs):
    """(step, learning rate) at every step: what a run with these settings will use (for plots)."""
    schedule = make_schedule(name, steps_per_epoch, epochs, peak, warmup_epochs)
    steps = range(epochs * steps_per_epoch)
    if isinstance(schedule, float):
        return [(step, schedule) for step in steps]
    return [(step, float(schedule(step))) for step in steps]
