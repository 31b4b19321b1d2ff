"""lib.stats: intervals and paired tests checked against values computed by hand."""
import numpy as np
import pytest

from lib.stats import (accuracy_interval, bootstrap_interval, fmt_interval, fmt_p, mcnemar, paired_bootstrap, verdict,
                       wilson_interval)


def test_wilson_matches_the_textbook_value():
    lo, hi = wilson_interval(8, 10)  # Newcombe (1998), 8/10: 0.490 to 0.943
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)


def test_wilson_stays_inside_zero_one_and_rejects_bad_counts():
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(6, 5)


def test_accuracy_interval_contains_the_accuracy():
    acc, lo, hi = accuracy_interval([True] * 30 + [False] * 10)
    assert acc == 0.75 and lo < acc < hi


def test_mcnemar_exact_p_value():
    a = np.array([True] * 9 + [False] * 1 + [True] * 20)
    b = np.array([False] * 9 + [True] * 1 + [True] * 20)
    assert mcnemar(a, b) == pytest.approx(2 * 11 / 1024)  # 9 vs 1 discordant: 2 * P(X <= 1 | 10, 1/2)
    assert mcnemar(a, a) == 1.0


def test_bootstrap_and_paired_bootstrap():
    y = np.array([1] * 50 + [0] * 50)
    good, bad = y.copy(), 1 - y
    value, lo, hi = bootstrap_interval(lambda i: (good[i] == y[i]).mean(), len(y))
    assert value == 1.0 and lo == hi == 1.0
    diff, p = paired_bootstrap(lambda i: (good[i] == y[i]).mean(), lambda i: (bad[i] == y[i]).mean(), len(y))
    assert diff == 1.0 and p == 0.0
    same, p_same = paired_bootstrap(lambda i: (good[i] == y[i]).mean(), lambda i: (good[i] == y[i]).mean(), len(y))
    assert same == 0.0 and p_same == 1.0


def test_paired_difference_interval_is_the_bootstrap_of_the_difference():
    from lib.stats import paired_difference

    rng = np.random.default_rng(3)
    a, b = rng.random(60), rng.random(60) - 0.1
    diff, lo, hi, p = paired_difference(lambda i: a[i].mean(), lambda i: b[i].mean(), 60, seed=7)
    assert (diff, lo, hi) == pytest.approx(bootstrap_interval(lambda i: a[i].mean() - b[i].mean(), 60, seed=7))
    assert lo <= diff <= hi and (diff, p) == paired_bootstrap(lambda i: a[i].mean(), lambda i: b[i].mean(), 60, seed=7)
    assert (p < 0.05) == (lo > 0 or hi < 0)  # with the same resamples, test and interval agree on zero


def test_change_interval_of_paired_outcomes_by_hand():
    from lib.stats import change_interval

    after, before = [True, True, False, False], [False, False, False, False]
    value, lo, hi, p = change_interval(after, before)
    assert value == 0.5 and 0 <= lo <= 0.5 <= hi <= 1 and p == 0.5  # two discordant pairs: exact binomial p = 0.5
    assert change_interval(before, before)[:3] == (0.0, 0.0, 0.0) and change_interval(before, before)[3] == 1.0
    with pytest.raises(ValueError, match="same items"):
        change_interval([True], [True, False])


def test_fmt_interval():
    assert fmt_interval(0.8125, 0.75, 0.875) == "0.812 [0.750, 0.875]"


def test_fmt_p_and_verdict():
    assert fmt_p(0.0004) == "p < 0.001" and fmt_p(0.0421) == "p = 0.042"
    assert verdict(0.0123, 0.21) == "+0.012 (p = 0.210: within the noise)"
    assert verdict(-0.05, 0.01).endswith("a real difference)")
    assert verdict(0.0123, 0.21, interval=(-0.004, 0.03)) == "+0.012 [-0.004, +0.030] (p = 0.210: within the noise)"


def test_macro_f1_equals_scikit_learns():
    from sklearn.metrics import f1_score

    from lib.stats import macro_f1

    rng = np.random.default_rng(0)
    for n in (2, 3, 5):
        for _ in range(50):
            t, p = rng.integers(0, n, 30), rng.integers(0, n, 30)
            p[:3] = 0  # some classes may be absent from one side
            want = f1_score(t, p, labels=list(range(n)), average="macro", zero_division=0)
            assert abs(macro_f1(t, p, n) - want) < 1e-12


def test_detectable_difference_by_hand():
    from lib.stats import detectable_difference
    z = 1.959964 + 0.841621  # two-sided 5% and 80% power
    mde, n = detectable_difference([0.0, 2.0])  # mean 1, sd sqrt(2), 2 items
    assert abs(mde - z) < 1e-5 and n == np.ceil(2 * z**2) == 16
    # no difference: no number of items finds it
    assert detectable_difference([1.0, 1.0, -1.0, -1.0])[1] == float("inf")
    with pytest.raises(ValueError, match="power=1.5"):
        detectable_difference([0.0, 1.0], power=1.5)
