"""Make finance/sentences.jsonl: candidate sentences of AG News Business rows, kept as row + offsets (no text).

    python finance/make_sentences.py            # (re)write finance/sentences.jsonl from the local AG News
    python finance/make_sentences.py --check    # verify the committed file: made again, it must be identical
    python finance/make_sentences.py --worklist /tmp/fin   # the annotators' worklist.tsv and guide.md (not committed)

Every Business row of ag_news/test.tsv is split into sentences (lib.finance.sentence_spans, after the dateline);
a sentence is a candidate when it is complete (AG News cuts long descriptions), has 6-60 words, starts with a
capital, digit or quote (not a fragment) and has no markup left after cleaning. Candidates are deduplicated in row
order on lib.splits.normalise, and a sentence whose normalised text starts (or ends) with the same 8 words as a kept
one is dropped too: wire stories repeat with small edits. The rows are then put in a seeded hash order and the first
N rows give one sentence each (the row's candidate of lowest seeded hash), so the sample spreads over the rows; ids
1..N follow that order.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.finance import (SENTENCES_PATH, ag_news_path, ag_news_rows, clean_text, is_complete,  # noqa: E402
                         load_fin_sentences, sentence_spans, text_sha1)
from lib.splits import normalise  # noqa: E402

SEED = "finance-sentences-v1"
N_ITEMS = 720
MIN_WORDS, MAX_WORDS = 6, 60
AFFIX_WORDS = 8  # two sentences whose normalised texts share their first (or last) 8 words are near-duplicates


def _hash(*parts: object) -> str:
    """A seeded, platform-independent sort key."""
    return hashlib.sha256(":".join(map(str, (SEED, *parts))).encode()).hexdigest()


def candidates(rows: list[tuple[str, str]]) -> tuple[list[dict], dict[str, int]]:
    """The usable, deduplicated sentences of the Business rows, in row order, and how many each step kept."""
    counts = {"business rows": 0, "sentences": 0, "complete": 0, "6-60 words": 0, "no fragment or markup": 0,
              "distinct": 0, "no near-duplicate": 0}
    seen: set[str] = set()
    affixes: set[tuple[str, ...]] = set()
    out = []
    for row, (text, label) in enumerate(rows):
        if label != "Business":
            continue
        counts["business rows"] += 1
        spans = sentence_spans(text)
        for k, (start, end) in enumerate(spans):
            raw = text[start:end]
            clean = clean_text(raw)
            counts["sentences"] += 1
            if not is_complete(clean, last=k == len(spans) - 1):
                continue
            counts["complete"] += 1
            if not MIN_WORDS <= len(clean.split()) <= MAX_WORDS:
                continue
            counts["6-60 words"] += 1
            if not (clean[0].isupper() or clean[0].isdigit() or clean[0] in "\"'") \
                    or any(s in clean.lower() for s in ("<", ">", "http", "www.", "#", "\\")):
                continue  # a fragment (starts in lower case) or markup the cleaning left
            counts["no fragment or markup"] += 1
            norm = normalise(clean)
            if norm in seen:
                continue
            seen.add(norm)
            counts["distinct"] += 1
            words = norm.split()
            head, tail = ("^", *words[:AFFIX_WORDS]), ("$", *words[-AFFIX_WORDS:])
            if head in affixes or tail in affixes:
                continue
            affixes.update((head, tail))
            counts["no near-duplicate"] += 1
            out.append({"row": row, "start": start, "end": end, "sha1": text_sha1(raw)})
    return out, counts


def sample(cands: list[dict], n: int) -> list[dict]:
    """One candidate from each of the first n rows in seeded hash order, numbered 1..n in that order."""
    by_row: dict[int, list[dict]] = {}
    for c in cands:
        by_row.setdefault(c["row"], []).append(c)
    if len(by_row) < n:
        raise SystemExit(f"only {len(by_row)} Business rows have a usable sentence; expected at least {n}")
    rows = sorted(by_row, key=lambda r: _hash("row", r))[:n]
    picked = [min(by_row[r], key=lambda c: _hash("sentence", c["row"], c["start"])) for r in rows]
    return [{"id": i, **c} for i, c in enumerate(picked, start=1)]


def render(items: list[dict]) -> str:
    """The JSONL text of the items, one compact object per line."""
    return "".join(json.dumps(it, separators=(", ", ": ")) + "\n" for it in items)


def write_worklist(folder: Path, sentences: Path = SENTENCES_PATH, ag_news: Path | None = None) -> None:
    """worklist.tsv (id<TAB>readable sentence, in id order) and guide.md (finance/README.md), world-readable."""
    folder.mkdir(parents=True, exist_ok=True)
    items = sorted(load_fin_sentences(sentences, ag_news), key=lambda it: it["id"])
    lines = ["id\tsentence"] + [f"{it['id']}\t{it['text']}" for it in items]
    (folder / "worklist.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copyfile(SENTENCES_PATH.with_name("README.md"), folder / "guide.md")
    for p in (folder, folder / "worklist.tsv", folder / "guide.md"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    print(f"wrote {folder / 'worklist.tsv'} ({len(items)} sentences) and {folder / 'guide.md'}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="verify the committed file instead of writing it")
    ap.add_argument("--worklist", type=Path, help="write the annotators' worklist.tsv and guide.md into this folder")
    ap.add_argument("--out", type=Path, default=SENTENCES_PATH)
    args = ap.parse_args(argv)
    if args.worklist:
        write_worklist(args.worklist)
        return 0
    cands, counts = candidates(ag_news_rows(ag_news_path()))
    text = render(sample(cands, N_ITEMS))
    print(", ".join(f"{k}: {v}" for k, v in counts.items()) + f"; sampled: {N_ITEMS}")
    if not args.check:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
        return 0
    old = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
    if old == text:
        print(f"ok: {args.out} is what this script makes from the local AG News")
        return 0
    diff = next((i for i, (a, b) in enumerate(zip(old.splitlines(), text.splitlines()), 1) if a != b),
                min(len(old.splitlines()), len(text.splitlines())) + 1)
    print(f"{args.out}:{diff}: differs from what this script makes (first differing line); rerun it without --check, "
          "or check that the local AG News is the expected copy (python -m lib.data verify)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
