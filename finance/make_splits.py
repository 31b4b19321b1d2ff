"""Split the adjudicated financial sentences into train / validation / test and record the numbers in the README.

    python finance/make_splits.py            # write the "split" of labels_final.jsonl and the README block
    python finance/make_splits.py --check    # verify both: made again, they must be identical

The items that are not excluded are grouped by AG News row (a row's sentences never straddle two splits), and each
row takes the final label of its sentences (the most common one) as its stratum. Within a stratum the rows are put in
a seeded hash order: the first 25% (rounded) go to test, the next 15% to validation, the rest to train. The split was
made once the labels were final and before any model was trained or tuned on them. The README block between the
make_splits markers (agreement of the two passes, the confusion table, the counts per label and split, the test
split's digest) is written from the same files, so the README cannot drift from them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.finance import (EXCLUDE, FIN_LABELS, FINAL_KEYS, FINAL_PATH, PASS_PATHS, SPLIT_KEY, SPLITS,  # noqa: E402
                         pass_agreement, read_fin_final, read_fin_labels, read_fin_sentences, split_digest)
from lib.splits import assert_disjoint  # noqa: E402

SEED = "finance-splits-v1"
FRACTIONS = {"test": 0.25, "validation": 0.15}  # of each label's rows; the rest is train
README = FINAL_PATH.with_name("README.md")
BEGIN, END = "<!-- make_splits:begin -->", "<!-- make_splits:end -->"


def _hash(*parts: object) -> str:
    """A seeded, platform-independent sort key."""
    return hashlib.sha256(":".join(map(str, (SEED, *parts))).encode()).hexdigest()


def assign_splits(final: dict[int, dict], rows: dict[int, int]) -> dict[int, str | None]:
    """{id: split} for every id of `final`: None for an excluded item; whole AG News rows, stratified by label."""
    groups: dict[int, list[int]] = {}
    for sid, rec in final.items():
        if rec["label"] != EXCLUDE:
            groups.setdefault(rows[sid], []).append(sid)
    strata: dict[str, list[int]] = {}
    for row, sids in groups.items():
        counts = Counter(final[s]["label"] for s in sids)
        label = min(counts, key=lambda lab: (-counts[lab], FIN_LABELS.index(lab)))
        strata.setdefault(label, []).append(row)
    out: dict[int, str | None] = {sid: None for sid in final}
    for label, members in strata.items():
        ordered = sorted(members, key=lambda r: _hash("row", r))
        n_test, n_val = (round(len(ordered) * FRACTIONS[s]) for s in ("test", "validation"))
        for k, row in enumerate(ordered):
            split = "test" if k < n_test else "validation" if k < n_test + n_val else "train"
            out.update({sid: split for sid in groups[row]})
    by_split = {s: [sid for sid, v in out.items() if v == s] for s in SPLITS}
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert_disjoint(by_split[a], by_split[b], key=lambda sid: rows[sid])  # no AG News row in two splits
    return out


def render(final: dict[int, dict]) -> str:
    """labels_final.jsonl: one object per id, in id order, keys in FINAL_KEYS order then split."""
    keys = (*FINAL_KEYS, SPLIT_KEY)
    return "".join(json.dumps({"id": sid, **{k: final[sid][k] for k in keys[1:]}}, separators=(", ", ": ")) + "\n"
                   for sid in sorted(final))


def _table(head: list[str], rows: list[list[object]]) -> list[str]:
    """A markdown table."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(map(str, r)) + " |"
                                                                        for r in rows]


def readme_block(final: dict[int, dict], pass1: dict, pass2: dict) -> str:
    """The README's numbers: agreement, the confusion table, adjudication counts, the split table and test digest."""
    ag = pass_agreement(pass1, pass2)
    names = [*FIN_LABELS, EXCLUDE]
    conf = ag["confusion"]
    changed = sorted(s for s, r in final.items() if r["pass1"] == r["pass2"] != r["label"])
    disagree = [s for s, r in final.items() if r["pass1"] != r["pass2"]]
    counts = Counter((r["label"], r[SPLIT_KEY]) for r in final.values())
    lines = [BEGIN, "", f"- Cohen's kappa, all {ag['n']} items (four labels, exclude included): "
             f"**{ag['kappa']:.4f}** ({ag['agree']} agree, {ag['agree'] / ag['n']:.1%})",
             f"- Cohen's kappa, the {ag['n_kept']} items neither pass excluded: **{ag['kappa_kept']:.4f}** "
             f"({ag['agree_kept']} agree, {ag['agree_kept'] / ag['n_kept']:.1%})",
             f"- disagreements: **{len(disagree)}**, each resolved by the guide (the ruling is in `note`); "
             f"clarification-driven changes where the passes agreed: **{len(changed)}** "
             f"(id{'s' if len(changed) != 1 else ''} {', '.join(map(str, changed)) or 'none'})", "",
             "Pass 1 (rows) against pass 2 (columns):", ""]
    lines += _table(["pass 1 \\ pass 2", *names, "total"],
                    [[a, *(conf[a][b] for b in names), sum(conf[a].values())] for a in names]
                    + [["total", *(sum(conf[a][b] for a in names) for b in names), ag["n"]]])
    lines += ["", "Final labels by split (excluded items have no split):", ""]
    lines += _table(["label", *SPLITS, "total"],
                    [[lab, *(counts[lab, s] for s in SPLITS), sum(counts[lab, s] for s in SPLITS)]
                     for lab in FIN_LABELS]
                    + [["total", *(sum(counts[lab, s] for lab in FIN_LABELS) for s in SPLITS),
                        sum(counts[lab, s] for lab in FIN_LABELS for s in SPLITS)],
                       [EXCLUDE, "", "", "", counts[EXCLUDE, None]]])
    lines += ["", f"- test split sha256 (`lib.finance.split_digest`): `{split_digest(final, 'test')}`", "", END]
    return "\n".join(lines)


def _first_diff(old: str, new: str) -> int:
    """The 1-based number of the first line that differs."""
    a, b = old.splitlines(), new.splitlines()
    return next((i for i, (x, y) in enumerate(zip(a, b), 1) if x != y), min(len(a), len(b)) + 1)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="verify the split and the README block instead of writing")
    ap.add_argument("--labels", type=Path, default=FINAL_PATH)
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    sentences = read_fin_sentences()
    ids, rows = [it["id"] for it in sentences], {it["id"]: it["row"] for it in sentences}
    pass1, pass2 = (read_fin_labels(p, ids, complete=True) for p in PASS_PATHS)
    final = read_fin_final(args.labels, ids, passes=PASS_PATHS)
    for sid, split in assign_splits(final, rows).items():
        final[sid][SPLIT_KEY] = split
    text, block = render(final), readme_block(final, pass1, pass2)
    readme = args.readme.read_text(encoding="utf-8")
    found = re.search(re.escape(BEGIN) + ".*?" + re.escape(END), readme, flags=re.S)
    if not found:
        print(f"{args.readme}: no {BEGIN} ... {END} block; expected one where the numbers go", file=sys.stderr)
        return 1
    new_readme = readme[:found.start()] + block + readme[found.end():]
    n = Counter(r[SPLIT_KEY] for r in final.values())
    print(", ".join(f"{s}: {n[s]}" for s in SPLITS) + f", excluded: {n[None]}; test sha256 "
          f"{split_digest(final, 'test')}")
    if not args.check:
        args.labels.write_text(text, encoding="utf-8")
        args.readme.write_text(new_readme, encoding="utf-8")
        print(f"wrote {args.labels} and the numbers in {args.readme}")
        return 0
    bad = 0
    for path, old, new, what in [(args.labels, args.labels.read_text(encoding="utf-8"), text, "the split"),
                                 (args.readme, readme, new_readme, "the make_splits block")]:
        if old != new:
            print(f"{path}:{_first_diff(old, new)}: differs from {what} this script makes (first differing line); "
                  "rerun it without --check", file=sys.stderr)
            bad = 1
    if not bad:
        print(f"ok: {args.labels} and {args.readme} are what this script makes")
    return bad


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
