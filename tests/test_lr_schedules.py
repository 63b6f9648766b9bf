"""The continual-pretraining LR schedules of training.lr_at ("infinite", "continue") against
their formulas written out, step by step."""
import math

import pytest

from minipost.training import SCHEDULES, lr_at

PEAK, WARMUP, TOTAL, FLOOR = 3e-3, 10, 100, 0.1


def infinite_reference(step, total=TOTAL, warmup=WARMUP, cooldown=0.2):
    """Warmup 1/W, 2/W, ... of the peak; the peak; then the last C = 20 steps fall linearly,
    the k-th of them (k = 1..C) at peak * (1 - 0.9 * k / C), so the last step is 0.1 * peak."""
    c = round(cooldown * total)
    if step < warmup:
        return PEAK * (step + 1) / warmup
    if step < total - c:
        return PEAK
    k = step - (total - c) + 1
    return PEAK * (1 - (1 - FLOOR) * k / c)


@pytest.mark.parametrize("step", [0, 4, 9, 10, 50, 79, 80, 81, 90, 99])
def test_infinite_schedule_matches_formula(step):
    assert lr_at(step, TOTAL, PEAK, WARMUP, "infinite", FLOOR) == pytest.approx(infinite_reference(step), rel=1e-12)


def test_infinite_schedule_phases_by_hand():
    lrs = [lr_at(s, TOTAL, PEAK, WARMUP, "infinite", FLOOR) for s in range(TOTAL)]
    assert lrs[0] == pytest.approx(PEAK / 10) and lrs[9] == PEAK
    assert all(lr == PEAK for lr in lrs[10:80])                    # the stable phase: exactly the peak
    assert lrs[80] == pytest.approx(PEAK * (1 - 0.9 / 20))          # first cooldown step
    assert lrs[89] == pytest.approx(PEAK * (1 - 0.9 * 10 / 20))     # half way: 0.55 * peak
    assert lrs[99] == pytest.approx(FLOOR * PEAK, rel=1e-12)        # ends at the floor
    assert all(a > b for a, b in zip(lrs[79:], lrs[80:]))           # strictly decreasing while cooling
    # A cooldown of 0.5 over 10 steps: the last 5 steps at 1 - 0.9 * k / 5, k = 1..5.
    half = [lr_at(s, 10, 1.0, 0, "infinite", FLOOR, cooldown=0.5) for s in range(10)]
    assert half == pytest.approx([1.0] * 5 + [1 - 0.9 * k / 5 for k in range(1, 6)], rel=1e-12)
    # No cooldown: the peak after warmup, to the end.
    assert [lr_at(s, 10, 1.0, 2, "infinite", FLOOR, cooldown=0.0) for s in range(10)] == [0.5] + [1.0] * 9


def test_continue_schedule_is_the_pretraining_final_lr_without_warmup():
    assert all(lr_at(s, TOTAL, PEAK, WARMUP, "continue", FLOOR) == PEAK * FLOOR for s in range(TOTAL))
    # The rewarm (pretraining) schedule decays towards exactly this value.
    end = lr_at(TOTAL, TOTAL, PEAK, WARMUP, "rewarm", FLOOR)
    assert end == pytest.approx(lr_at(0, TOTAL, PEAK, WARMUP, "continue", FLOOR), rel=1e-12)


def test_existing_schedules_are_unchanged():
    """rewarm/cosine/constant keep their formulas (the values of the original implementation)."""
    for step in range(TOTAL):
        if step < WARMUP:
            rewarm = PEAK * (step + 1) / WARMUP
        else:
            p = min(1.0, (step - WARMUP) / max(1, TOTAL - WARMUP))
            rewarm = PEAK * (FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * p)))
        p = min(1.0, step / TOTAL)
        cosine = PEAK * (FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * p)))
        assert lr_at(step, TOTAL, PEAK, WARMUP, "rewarm", FLOOR) == rewarm       # bit for bit
        assert lr_at(step, TOTAL, PEAK, WARMUP, "cosine", FLOOR) == cosine
        assert lr_at(step, TOTAL, PEAK, WARMUP, "constant", FLOOR) == PEAK
    assert set(SCHEDULES) == {"cosine", "rewarm", "constant", "infinite", "continue"}
    with pytest.raises(ValueError, match="cooldown"):
        lr_at(5, 10, 1.0, 0, "infinite", cooldown=1.5)
