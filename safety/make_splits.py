"""Assign the train / dev / test split of safety/eval_prompts.jsonl, once: deduplicated, families together, stratified.

Run from the repository root (`python safety/make_splits.py`). Steps:
1. drop any prompt whose `lib.splits.normalise`d text repeats an earlier one;
2. check the families: every pair of near-duplicates (`near_duplicates`) must share a `group`, a group has one label and
   one category, and no prompt may be a near-duplicate of a policy example (the policy's own training data);
3. give every family without a split one, stratified by label x language(s) x category, about 50/20/30
   train/dev/test (`assign`, seeded); a family that already has a split keeps it, so re-running never moves a prompt,
   and families holding a prompt of version 1's dev split (`origin: v1-dev`, read while the first policy was written)
   never go to test;
4. write the file back, and the counts table and the test split's sha256 (`lib.safety.split_digest`) into
   safety/README.md between the `<!-- splits -->` markers.
`--check` changes nothing and fails when the file or the README is not what the script would write.
"""
from __future__ import annotations

import argparse
import difflib
import json
import random
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.safety import EVAL_PATH, POLICY_PATH, PolicyError, load_eval, load_policy, split_digest, views  # noqa: E402
from lib.safety import normalise as fold  # noqa: E402
from lib.splits import dedupe, normalise  # noqa: E402

SEED = 11
FRACTIONS = {"train": 0.5, "dev": 0.2, "test": 0.3}
README = EVAL_PATH.parent / "README.md"
BEGIN, END = "<!-- splits -->", "<!-- /splits -->"
_TOKEN = re.compile(r"[\u4e00-\u9fff]|[^\W\u4e00-\u9fff]+")

Row = dict[str, Any]


def read_rows(path: Path = EVAL_PATH) -> list[Row]:
    """The JSONL rows as they are (a split may be missing); a malformed line raises PolicyError naming file:line."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise PolicyError(f"{path}:{n}: not valid JSON ({e})") from e
    return rows


def family(row: Row) -> str:
    """The unit of splitting: the row's `group`, or the row alone."""
    return row.get("group") or f"#{row['id']}"


def _changes(a: Sequence[str], b: Sequence[str]) -> int:
    """How many tokens differ between two sequences (difflib's alignment: replaced, inserted or deleted)."""
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    return sum(max(i2 - i1, j2 - j1) for op, i1, i2, j1, j2 in ops if op != "equal")


def near_duplicates(texts: Sequence[str]) -> list[tuple[int, int]]:
    """Index pairs of near-duplicates: one word changed (two characters in Chinese), or the same letters once spacing,
    punctuation, width, look-alike letters and leetspeak are undone ("h0w t0 m4ke" = "how to make")."""
    tokens = [_TOKEN.findall(normalise(fold(t))) for t in texts]
    squashed = [views(t)["leet"][0] for t in texts]
    pairs = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            a, b = tokens[i], tokens[j]
            limit = 2 if any(len(x) == 1 and x >= "\u4e00" for x in a + b) else 1
            if squashed[i] == squashed[j] or (abs(len(a) - len(b)) <= limit and _changes(a, b) <= limit):
                pairs.append((i, j))
    return pairs


def check_families(rows: Sequence[Row], policy_examples: Sequence[str] = ()) -> None:
    """Raise ValueError when near-duplicates sit in different families, a group mixes labels or categories, or a prompt
    is a near-duplicate of a policy example."""
    problems = []
    for i, j in near_duplicates([r["text"] for r in rows]):
        if family(rows[i]) != family(rows[j]):
            problems.append(f"near-duplicates in different groups: id {rows[i]['id']} {rows[i]['text']!r} and "
                            f"id {rows[j]['id']} {rows[j]['text']!r}; give them one `group`")
    members = defaultdict(set)
    for r in rows:
        members[family(r)].add((r["label"], r["category"]))
    problems += [f"group {g!r} mixes {sorted(kinds)}; expected one label and one category"
                 for g, kinds in members.items() if len(kinds) > 1]
    examples = list(policy_examples)
    for i, j in near_duplicates(examples + [r["text"] for r in rows]):
        if i < len(examples) <= j:
            problems.append(f"id {rows[j - len(examples)]['id']} is a near-duplicate of the policy example "
                            f"{examples[i]!r}; the evaluation set must not contain the policy's examples")
    if problems:
        raise ValueError(f"{len(problems)} problem(s):\n" + "\n".join(problems))


def stratum(rows: Sequence[Row]) -> tuple[str, str, str]:
    """A family's stratum: (label, its language(s) joined by '+', category)."""
    return rows[0]["label"], "+".join(sorted({r["language"] for r in rows})), rows[0]["category"]


def assign(rows: Sequence[Row], seed: int = SEED, fractions: dict[str, float] = FRACTIONS) -> list[Row]:
    """The rows with a split each: a family that has one keeps it (new members join it); the others, stratum by stratum
    in a seeded order (families from v1's dev split first, then larger first), go to the split furthest below its
    share of the stratum, never to test when they hold a v1-dev prompt."""
    fams: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        fams[family(r)].append(r)
    split_of, strata = {}, defaultdict(list)
    for name, members in fams.items():
        have = {r["split"] for r in members if r.get("split") in fractions}
        if len(have) > 1:
            raise ValueError(f"group {name!r} straddles the splits {sorted(have)}; expected one")
        if have:
            split_of[name] = have.pop()
        strata[stratum(members)].append(name)
    for key in sorted(strata):
        names = strata[key]
        total = sum(len(fams[n]) for n in names)
        counts = Counter({s: 0 for s in fractions})
        for n in names:
            if n in split_of:
                counts[split_of[n]] += len(fams[n])
        todo = sorted(n for n in names if n not in split_of)
        random.Random(f"{seed}:{':'.join(key)}").shuffle(todo)
        seen = lambda n: any(r.get("origin") == "v1-dev" for r in fams[n])  # noqa: E731
        todo.sort(key=lambda n: (not seen(n), -len(fams[n])))
        for n in todo:
            allowed = [s for s in fractions if not (s == "test" and seen(n))]
            split_of[n] = max(allowed, key=lambda s: fractions[s] * total - counts[s])
            counts[split_of[n]] += len(fams[n])
    return [{**r, "split": split_of[family(r)]} for r in rows]


def readme_block(rows: Sequence[Row]) -> str:
    """The README's counts table (label x language x split) and the test split's digest, between the markers."""
    splits = list(FRACTIONS)
    c = Counter((r["label"], r["language"], r["split"]) for r in rows)
    lines = [BEGIN, "| label | language | " + " | ".join(splits) + " | all |", "|---|---|" + "--:|" * (len(splits) + 1)]
    for label in ("harmful", "benign"):
        for lang in ("en", "zh"):
            n = [c[label, lang, s] for s in splits]
            lines.append(f"| {label} | {lang} | " + " | ".join(map(str, n)) + f" | {sum(n)} |")
    n = [sum(c[y, lang, s] for y in ("harmful", "benign") for lang in ("en", "zh")) for s in splits]
    lines.append("| **all** | | " + " | ".join(f"**{x}**" for x in n) + f" | **{sum(n)}** |")
    digest = split_digest(rows, "test")
    lines += ["", f"Test split sha256 (`lib.safety.split_digest(load_eval(), \"test\")`): `{digest}`", END]
    return "\n".join(lines)


def render(rows: Sequence[Row]) -> str:
    """The JSONL text: one object per line, keys in a fixed order, ids ascending."""
    keys = ("id", "text", "language", "label", "category", "note", "group", "origin", "split")
    return "".join(json.dumps({k: r.get(k, "") for k in keys}, ensure_ascii=False) + "\n"
                   for r in sorted(rows, key=lambda r: r["id"]))


def main(argv: Sequence[str] | None = None) -> int:
    """Deduplicate, check, assign and write (or, with --check, only compare)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; fail if the file or README would change")
    args = ap.parse_args(argv)
    rows = read_rows()
    if dup := sorted(i for i, k in Counter(r.get("id") for r in rows).items() if k > 1):
        raise ValueError(f"{EVAL_PATH}: ids {dup} are used more than once; expected unique ids")
    kept = dedupe(rows, key=lambda r: normalise(r["text"]))
    for r in (r for r in rows if r not in kept):
        print(f"dropped id {r['id']} (same normalised text as an earlier prompt): {r['text']!r}")
    policy = load_policy(POLICY_PATH)
    check_families(kept, [*policy.benign_examples, *(e for c in policy.categories.values() for e in c.examples)])
    rows = assign(kept)
    text = render(rows)
    readme = README.read_text(encoding="utf-8")
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"{README}: expected the markers {BEGIN} and {END} around the counts table")
    head, rest = readme.split(BEGIN, 1)
    new_readme = head + readme_block(rows) + rest.split(END, 1)[1]
    if args.check:
        stale = [str(p) for p, new in ((EVAL_PATH, text), (README, new_readme)) if p.read_text(encoding="utf-8") != new]
        if stale:
            print(f"not what safety/make_splits.py writes: {', '.join(stale)}")
        return 1 if stale else 0
    EVAL_PATH.write_text(text, encoding="utf-8")
    README.write_text(new_readme, encoding="utf-8")
    load_eval(EVAL_PATH)  # the written file passes the loader
    print(readme_block(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
