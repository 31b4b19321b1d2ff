"""Leak-free splits: duplicates found by their normalised text, one copy kept,
and a check that no item is on both sides.

A held-out set measures generalisation only if none of its items is also a training item. Copies that differ in case,
punctuation or spacing ("Hi!" and "hi") are the same item to a model trained on lower-case text, so items are compared
by `normalise`d text. Deduplicate before splitting (`dedupe`), then check the split (`assert_disjoint`).
"""
from __future__ import annotations

import re
import unicodedata
from typing import Callable, Hashable, Iterable, TypeVar

T = TypeVar("T")
_PUNCTUATION = re.compile(r"[^\w\s]")


class SplitLeakError(ValueError):
    """The same (normalised) item sits on both sides of a split."""


def normalise(text: str) -> str:
    """Text as compared for duplicates: Unicode NFKC, case-folded, punctuation dropped, whitespace collapsed."""
    return " ".join(_PUNCTUATION.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def dedupe(items: Iterable[T], key: Callable[[T], Hashable]) -> list[T]:
    """The items in their order, each kept only at the first occurrence of its key."""
    seen: set[Hashable] = set()
    out = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


def assert_disjoint(train: Iterable[T], test: Iterable[T], key: Callable[[T], Hashable]) -> None:
    """Raise SplitLeakError, naming how many and one of them, when some key(item) is on both sides."""
    shared = {key(x) for x in train} & {key(x) for x in test}
    if shared:
        example = min(map(str, shared))
        raise SplitLeakError(f"{len(shared)} distinct item(s) on both sides of the split, e.g. {example[:160]!r}; "
                             "expected none: deduplicate (lib.splits.dedupe) before splitting")
