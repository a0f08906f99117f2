"""Learning-rate schedules against values worked out by hand from llm.c's formulas."""
import math

import pytest

from pipeline.gpt.schedule import LRScheduler, get_lr


def test_cosine():
    s = LRScheduler("cosine", lr=6e-4, warmup=10, total=110, final_frac=0.1)
    assert s(0) == pytest.approx(6e-5)          # (0+1)/10 of peak
    assert s(9) == pytest.approx(6e-4)          # warmup ends at the peak
    assert s(10) == pytest.approx(6e-4)         # decay ratio 0 -> coeff 1
    assert s(60) == pytest.approx(6e-5 + 0.5 * (6e-4 - 6e-5))  # halfway: coeff 0.5
    assert s(110) == pytest.approx(6e-5)        # end: final fraction
    assert s(35) == pytest.approx(6e-5 + 0.5 * (1 + math.cos(math.pi * 0.25)) * 5.4e-4)


def test_linear():
    s = LRScheduler("linear", lr=1.0, warmup=4, total=24, final_frac=0.0)
    assert [s(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert s(14) == pytest.approx(0.5)
    assert s(24) == pytest.approx(0.0)


def test_constant_ignores_warmup():
    s = LRScheduler("constant", lr=3e-4, warmup=100, total=1000, final_frac=0.0)
    assert s(0) == s(500) == s(1000) == 3e-4


def test_wsd():
    s = LRScheduler("wsd", lr=1.0, warmup=10, total=100, final_frac=0.0)
    assert s(4) == pytest.approx(0.5)
    assert s(10) == s(79) == 1.0                # stable until 80% of the run
    assert s(80) == pytest.approx(1.0)          # decay starts: 1 - sqrt(0)
    assert s(85) == pytest.approx(1 - math.sqrt(0.25))
    assert s(100) == pytest.approx(0.0)


def test_past_the_end_stays_at_floor_and_bad_names_fail():
    assert get_lr("cosine", 500, 1.0, 0, 100, 0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown scheduler"):
        LRScheduler("step", 1.0, 0, 10, 0.0)
