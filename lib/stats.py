"""Uncertainty of measured numbers: 95% intervals for accuracy and F1, and paired tests of two systems."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import stats


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (accuracy, recall, a rate) from `successes` out of `n`."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: expected 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = stats.norm.ppf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(correct: Sequence[bool], level: float = 0.95) -> tuple[float, float, float]:
    """(accuracy, low, high): the share of True in `correct` with its Wilson interval."""
    c = np.asarray(correct, dtype=bool)
    return (float(c.mean()), *wilson_interval(int(c.sum()), len(c), level))


def _resampled(metric: Callable[[np.ndarray], float], n_items: int, n_boot: int, seed: int) -> tuple[float, np.ndarray]:
    """`metric(indices)` on all items, and on `n_boot` resamples of them drawn by one seeded generator."""
    if n_items <= 0:
        raise ValueError("bootstrap: expected at least one item to resample")
    rng = np.random.default_rng(seed)
    full = float(metric(np.arange(n_items)))
    return full, np.array([metric(rng.integers(0, n_items, n_items)) for _ in range(n_boot)])


def bootstrap_interval(metric: Callable[[np.ndarray], float], n_items: int, n_boot: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(value, low, high): `metric(indices)` on all items, and its percentile interval over items resampled."""
    full, boots = _resampled(metric, n_items, n_boot, seed)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return full, float(lo), float(hi)


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> float:
    """Mean over the n_labels classes of each class's F1 (a class never true nor predicted counts 0, as
    scikit-learn's f1_score(average="macro", zero_division=0)); fast enough to bootstrap."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    tp = np.bincount(t[t == p], minlength=n_labels)[:n_labels]
    denom = np.bincount(t, minlength=n_labels)[:n_labels] + np.bincount(p, minlength=n_labels)[:n_labels]
    return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value for two systems scored on the same examples."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar: expected paired results of one length, got {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def percentile_test(diff: float, deltas: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """(diff, percentile interval of the resampled differences, two-sided p): p is the share of resamples on the
    other side of zero, doubled (the percentile-interval test of Koehn 2004); resamples at exactly zero count on both
    sides, which errs towards "within the noise" (p = 1 when every resample ties)."""
    lo, hi = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    p = 2 * min(float((deltas <= 0).mean()), float((deltas >= 0).mean()))
    return diff, float(lo), float(hi), min(1.0, p)


def paired_difference(metric_a: Callable[[np.ndarray], float], metric_b: Callable[[np.ndarray], float],
                      n_items: int, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float, float]:
    """(difference a - b on all items, its percentile interval, two-sided p) from resampling the same items for both."""
    return percentile_test(*_resampled(lambda i: metric_a(i) - metric_b(i), n_items, n_boot, seed), level)


def paired_bootstrap(metric_a: Callable[[np.ndarray], float], metric_b: Callable[[np.ndarray], float],
                     n_items: int, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(difference a - b on all items, two-sided p-value): `paired_difference` without the interval."""
    diff, _, _, p = paired_difference(metric_a, metric_b, n_items, n_boot, seed)
    return diff, p


def detectable_difference(diffs: Sequence[float], alpha: float = 0.05, power: float = 0.8) -> tuple[float, float]:
    """(smallest mean paired difference a two-sided test at `alpha` finds with `power` on these items, items needed
    to find the observed mean difference so): the normal approximation, sd from the per-item differences."""
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 1 or len(d) < 2 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"{len(d)} differences, alpha={alpha}, power={power}: expected >= 2 and both in (0, 1)")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    sd, mean = d.std(ddof=1), abs(d.mean())
    return float(z * sd / np.sqrt(len(d))), float(np.ceil((z * sd / mean) ** 2)) if mean > 0 else float("inf")


def change_interval(after: Sequence[bool], before: Sequence[bool], seed: int = 0) -> tuple[float, float, float, float]:
    """(mean change after − before, its 95% bootstrap interval over the items, McNemar p) of paired 0/1 outcomes."""
    a, b = np.asarray(after, dtype=float), np.asarray(before, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"after and before: expected the same items, got shapes {a.shape} and {b.shape}")
    value, lo, hi = bootstrap_interval(lambda i: a[i].mean() - b[i].mean(), len(a), seed=seed)
    return value, lo, hi, mcnemar(a.astype(bool), b.astype(bool))


def fmt_interval(value: float, low: float, high: float, digits: int = 3) -> str:
    """'0.812 [0.770, 0.850]' for tables and prose."""
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def fmt_p(p: float) -> str:
    """'p < 0.001' or 'p = 0.042'."""
    return "p < 0.001" if p < 1e-3 else f"p = {p:.3f}"


def verdict(diff: float, p: float, alpha: float = 0.05, interval: tuple[float, float] | None = None) -> str:
    """'+0.012 (p = 0.210: within the noise)': a difference called real only when the paired test says so;
    with `interval`, '+0.012 [-0.007, +0.031] (p = 0.210: within the noise)'."""
    ci = "" if interval is None else f" [{interval[0]:+.3f}, {interval[1]:+.3f}]"
    return f"{diff:+.3f}{ci} ({fmt_p(p)}: {'a real difference' if p < alpha else 'within the noise'})"
