"""train.trainer.schedules: the paper's three stages and linear warmup + cosine decay."""

import pytest

from train.trainer.schedules import make_schedule, schedule_curve


def test_paper_stages_by_epoch():
    steps = 10
    schedule = make_schedule("paper", steps, 12, 4e-4, 1.0)

    def rate(epoch):
        return float(schedule(epoch * steps + 5))

    assert [rate(e) for e in (0, 2, 3, 5, 6, 11)] == pytest.approx(
        [4e-4, 4e-4, 2e-4, 2e-4, 1e-4, 1e-4], rel=1e-6
    )  # float32


def test_warmup_then_cosine_decay():
    curve = [lr for _, lr in schedule_curve("warmup-cosine", 10, 12, 4e-4, 1.0)]
    assert curve[0] == pytest.approx(4e-5, rel=1e-3)
    peak = max(curve)
    assert peak == pytest.approx(4e-4, rel=1e-3) and curve.index(peak) <= 10
    assert all(a >= b - 1e-12 for a, b in zip(curve[10:], curve[11:]))
    assert curve[-1] == pytest.approx(4e-6, rel=0.2)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="warmup-cosine"):
        make_schedule("triangle", 10, 12, 4e-4, 1.0)
