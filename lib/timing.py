"""Latency (时延) as a deployed system sees it: one item at a time, in wall-clock milliseconds."""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import numpy as np


def timed(f: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """(f(*args, **kwargs), the milliseconds the call took)."""
    start = time.perf_counter()
    out = f(*args, **kwargs)
    return out, (time.perf_counter() - start) * 1e3


def per_item_ms(f: Callable[[Any], Any], items: Iterable[Any], repeats: int = 1, warmup: bool = False,
                desc: str | None = None) -> tuple[list[Any], np.ndarray]:
    """([f(x) for x in items], milliseconds per item): with `warmup` an untimed call first (caches, lazy set-up), and
    the median of `repeats` timed calls (the result kept is the last call's); `desc` shows a tqdm bar."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r}: expected at least 1 timed call per item")
    items = list(items)
    if desc is not None:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=desc)
    outs, ms = [], []
    for x in items:
        if warmup:
            f(x)
        runs = [timed(f, x) for _ in range(repeats)]
        outs.append(runs[-1][0])
        ms.append(float(np.median([t for _, t in runs])))
    return outs, np.asarray(ms)
