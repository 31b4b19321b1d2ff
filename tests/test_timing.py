"""Per-item latency: results in order, one time per item, the warm-up call left out of the timing."""
import time

import numpy as np
import pytest

from lib.timing import per_item_ms, timed


def test_timed_returns_the_result_and_the_milliseconds():
    out, ms = timed(lambda x: (time.sleep(0.02), x * 2)[1], 21)
    assert out == 42 and 15 <= ms < 1000


def test_per_item_ms_keeps_order_and_times_each_item():
    outs, ms = per_item_ms(lambda s: (time.sleep(s), s)[1], [0.0, 0.03, 0.0])
    assert outs == [0.0, 0.03, 0.0] and ms.shape == (3,) and ms[1] >= 25 > max(ms[0], ms[2])


def test_warmup_is_called_but_not_timed_and_repeats_take_the_median():
    calls, slow = [], iter([0.05, 0.0, 0.0, 0.0])  # the first call is slow (a cold cache); the rest are not

    def f(x):
        calls.append(x); time.sleep(next(slow)); return x

    outs, ms = per_item_ms(f, ["a"], repeats=3, warmup=True)
    assert calls == ["a"] * 4 and outs == ["a"] and ms[0] < 25  # the slow first call is not in the time


def test_median_of_repeats_ignores_one_slow_call():
    slow = iter([0.05, 0.0, 0.0])
    _, ms = per_item_ms(lambda x: time.sleep(next(slow)), [1], repeats=3)
    assert np.median(ms) < 25


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats=0"):
        per_item_ms(len, ["a"], repeats=0)
