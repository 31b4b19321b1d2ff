"""Financial sentiment sentences: AG News Business excerpts kept as (row, offsets), rebuilt from the local copy at load.

AG News may be used for research only and has no open licence, so `finance/sentences.jsonl` holds no text: each item
names a row of `ag_news/test.tsv` (0-based line), character offsets into that row's text field and the first 12 hex
digits of the sha1 of the excerpt, which catches a different copy of AG News. The labels are ours: one JSONL file
per annotation pass, and `labels_final.jsonl`, the adjudicated label of every sentence with both passes' labels, the
ruling and the train / validation / test split. `finance/README.md` has the formats, the labelling guide and the
numbers (agreement, split counts, the test split's digest).
"""
from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from datasets import ClassLabel, Dataset, Features, Value

from lib.data import (DATASETS, REPO_ROOT, DataFormatError, DataNotFoundError, _jsonl, _read_tsv, data_error,
                      data_root)

FIN_DIR = REPO_ROOT / "finance"
SENTENCES_PATH = FIN_DIR / "sentences.jsonl"
AG_NEWS_FILE = "ag_news/test.tsv"
FIN_LABELS = ("positive", "neutral", "negative")
EXCLUDE = "exclude"  # a label that takes an unusable sentence out of the set; needs a note saying why
SENTENCE_KEYS = ("id", "row", "start", "end", "sha1")
LABEL_KEYS = ("id", "label", "note")
PASS_PATHS = (FIN_DIR / "labels_pass1.jsonl", FIN_DIR / "labels_pass2.jsonl")  # the two annotation passes, as made
FINAL_PATH = FIN_DIR / "labels_final.jsonl"  # the adjudicated labels, both passes kept, and the split
FINAL_KEYS = ("id", "label", "pass1", "pass2", "note")
SPLIT_KEY = "split"
SPLITS = ("train", "validation", "test")

# ---------------------------------------------------------------- text: AG News escapes, sentence spans

_ENTITY = re.compile(r" (?:#(\d+)|(amp|quot|lt|gt|nbsp|hellip|mdash|ndash));")  # AG News: "&#39;" -> " #39;"
_TAG = re.compile(r"<[^>]*>")  # Reuters' ticker links: <A HREF="...">IBM.N</A>
_BACKSLASH = re.compile(r"\\(?!\$)")  # a backslash stands for a line break, "\$" for "$"
_ABBREVIATIONS = {
    "inc", "corp", "co", "cos", "ltd", "plc", "llc", "bros", "mr", "mrs", "ms", "dr", "st", "jr", "sr", "gen", "gov",
    "sen", "rep", "lt", "col", "capt", "prof", "rev", "no", "vs", "etc", "approx", "dept", "est", "fig", "jan", "feb",
    "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon", "tue", "tues", "wed", "thu", "thur",
    "thurs", "fri", "sat", "sun", "ala", "ariz", "ark", "calif", "calf", "colo", "conn", "del", "fla", "ga", "ill",
    "ind", "kan", "ky", "la", "md", "mass", "mich", "minn", "miss", "mo", "mont", "neb", "nev", "okla", "ore", "pa",
    "tenn", "tex", "va", "vt", "wash", "wis", "wyo", "mt", "ft", "pt", "intl", "assn", "dist", "univ",
}
_BOUNDARY = re.compile(r"[.!?]+(?:\"\"|[\"'])?(?=\s+(?:\"\"|[\"'(])?[A-Z0-9])")
_DATELINE = re.compile(  # NEW YORK (Reuters) -, SYDNEY (Dow Jones)--, WASHINGTON --, AP -, Forbes.com -
    r"\s*(?:[A-Z][A-Z.,'/&]*(?:\s+[A-Z][A-Z.,'/&]*)*(?:\s*\([^)]{1,40}\))?"
    r"|AP|AFP|Reuters|CNN/Money|Forbes\.com|TheStreet\.com|USATODAY\.com|washingtonpost\.com|Canadian Press)"
    r"(?:\s*--|\s+-|\s*\u2014| #151;)\s*")


def clean_text(raw: str) -> str:
    """An AG News excerpt made readable: entities (" #39;", " amp;"), tags, doubled CSV quotes, "\\$", extra spaces."""
    text = raw.replace('""', '"')
    text = _ENTITY.sub(lambda m: _char(int(m.group(1))) if m.group(1) else html.unescape(f"&{m.group(2)};"), text)
    text = _TAG.sub("", html.unescape(text))
    text = _BACKSLASH.sub(" ", text).replace("\\$", "$")
    return " ".join(text.split())


def _char(code: int) -> str:
    """The character of a numeric entity; 128-159 read as Windows-1252, as the AG News crawl wrote them."""
    return bytes([code]).decode("cp1252", "replace") if 128 <= code <= 159 else chr(code)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of an AG News text field: a simple rule, after the dateline and CSV quotes.

    A sentence ends at . ! or ? (and a closing quote) before whitespace and a capital, digit or quote, unless the word
    before it is an abbreviation (Inc., Calif., Jan.), an initial (J.), or holds a dot (U.S.). The last span may be a
    truncated sentence (AG News cuts long descriptions); `is_complete` tells.
    """
    start, end = 0, len(text)
    if text.lstrip().startswith('"') and text.rstrip().endswith('"'):  # a CSV-quoted field kept by quoting=3
        start, end = text.index('"') + 1, text.rindex('"')
    dateline = _DATELINE.match(text, start, end)
    if dateline:
        start = dateline.end()
    spans = []
    for m in _BOUNDARY.finditer(text, start, end):
        word = re.search(r"(\S+?)[.!?]*$", text[start:m.start() + 1])
        token = word.group(1) if word else ""
        bare = token.strip("\"'()").lower()
        if text[m.start()] == "." and (bare in _ABBREVIATIONS or len(bare) == 1 or "." in bare):
            continue
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, end))
    return [_trim(text, s, e) for s, e in spans if text[s:e].strip()]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """The span without surrounding whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def is_complete(sentence: str, last: bool) -> bool:
    """False for a sentence AG News cut short: no final . ! ?, an ellipsis, or (last in its row) a dot after a number
    or a capitalised code ("for 52." of "52.5 billion", "Unilever ULVR." of the ticker ULVR.L)."""
    body = sentence.rstrip("\"' ")
    if not body.endswith((".", "!", "?")) or body.endswith(("...", "\u2026")):
        return False
    return not (last and re.search(r"(?:\d|\b[A-Z]{2,5})\.$", body))


def text_sha1(raw: str) -> str:
    """The first 12 hex digits of sha1(excerpt as stored in AG News, UTF-8)."""
    return hashlib.sha1(raw.encode("utf-8")).hexdigest()[:12]


# ---------------------------------------------------------------- AG News rows

def ag_news_path() -> Path:
    """The local AG News test file; DataNotFoundError when the data root does not have it."""
    path = data_root() / AG_NEWS_FILE
    if not path.is_file():
        raise DataNotFoundError(f"AG News: expected the local file {path} (the financial sentences are rebuilt from "
                                "it; its licence lets us commit only offsets). Set WORKBOOK_DATA to a folder holding "
                                "ag_news/test.tsv (e.g. ../shared/data)")
    return path


def ag_news_rows(path: Path | None = None) -> list[tuple[str, str]]:
    """(text field exactly as stored, label) of every line of AG News test.tsv; index = 0-based line number."""
    texts, labels = _read_tsv(path or ag_news_path(), DATASETS["ag_news"], strip=False)  # no blank lines in it
    return list(zip(texts, labels))


# ---------------------------------------------------------------- sentences.jsonl

def _int_field(path: Path, line: int, rec: dict, key: str) -> int:
    value = rec[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise data_error(path, line, f"'{key}': expected a non-negative integer, got {value!r:.40}")
    return value


def read_fin_sentences(path: Path | str = SENTENCES_PATH) -> list[dict[str, Any]]:
    """The items of sentences.jsonl ({id, row, start, end, sha1}), schema checked; no AG News needed."""
    path = Path(path)
    items, seen = [], {}
    for i, rec in _jsonl(path):
        if set(rec) != set(SENTENCE_KEYS):
            missing, extra = sorted(set(SENTENCE_KEYS) - set(rec)), sorted(set(rec) - set(SENTENCE_KEYS))
            raise data_error(path, i, f"missing {missing}, unexpected {extra}; expected exactly the keys "
                                      f"{', '.join(SENTENCE_KEYS)}")
        item = {k: _int_field(path, i, rec, k) for k in SENTENCE_KEYS[:4]}
        if item["end"] <= item["start"]:
            raise data_error(path, i, f"'end' {item['end']} <= 'start' {item['start']}; expected start < end")
        if not isinstance(rec["sha1"], str) or not re.fullmatch(r"[0-9a-f]{12}", rec["sha1"]):
            raise data_error(path, i, f"'sha1': expected 12 lower-case hex digits, got {rec['sha1']!r:.40}")
        if item["id"] in seen:
            raise data_error(path, i, f"duplicate id {item['id']} (first on line {seen[item['id']]}); expected "
                                      "unique ids")
        seen[item["id"]] = i
        items.append({**item, "sha1": rec["sha1"], "line": i})
    return items


def load_fin_sentences(path: Path | str = SENTENCES_PATH, ag_news: Path | None = None) -> list[dict[str, Any]]:
    """The sentences rebuilt from the local AG News: {id, row, start, end, sha1, raw, text}, in file order.

    `raw` is the excerpt as stored in AG News (what sha1 covers), `text` the readable form (`clean_text`). A row out
    of range, a row that is not Business, offsets past the text or a sha1 mismatch raise DataFormatError naming the
    line of sentences.jsonl: the local AG News copy differs from the one the file was made from.
    """
    path, ag = Path(path), ag_news or ag_news_path()
    rows = ag_news_rows(ag)
    out = []
    for item in read_fin_sentences(path):
        line, row, start, end = item.pop("line"), item["row"], item["start"], item["end"]
        differs = f"the AG News copy {ag} differs from the one this file was made from"
        if row >= len(rows) or rows[row][1] != "Business":
            found = f"has label {rows[row][1]!r}" if row < len(rows) else f"is past its {len(rows)} lines"
            raise data_error(path, line, f"row {row} {found}; expected a Business row: {differs}")
        if end > len(rows[row][0]):
            raise data_error(path, line, f"offsets {start}:{end} run past row {row}'s {len(rows[row][0])} "
                                         f"characters: {differs}")
        raw = rows[row][0][start:end]
        if text_sha1(raw) != item["sha1"]:
            raise data_error(path, line, f"sha1 of row {row}[{start}:{end}] is {text_sha1(raw)}, expected "
                                         f"{item['sha1']}: {differs}")
        out.append({**item, "raw": raw, "text": clean_text(raw)})
    return out


# ---------------------------------------------------------------- labels: one JSONL file per annotation pass

def _label_lines(path: Path, ids: Iterable[int], keys: Sequence[str], optional: Sequence[str] = (),
                 label_keys: Sequence[str] = ("label",)) -> dict[int, tuple[int, dict[str, Any]]]:
    """{id: (line, record)} of a label file, each line checked: its keys, a known unique id, labels, the note."""
    known, allowed = set(ids), (*FIN_LABELS, EXCLUDE)
    out: dict[int, tuple[int, dict[str, Any]]] = {}
    for i, rec in _jsonl(path):
        if not set(keys) <= set(rec) <= set(keys) | set(optional):
            missing, extra = sorted(set(keys) - set(rec)), sorted(set(rec) - set(keys) - set(optional))
            also = f" (and optionally {', '.join(optional)})" if optional else ""
            raise data_error(path, i, f"missing {missing}, unexpected {extra}; expected exactly the keys "
                                      f"{', '.join(keys)}{also}")
        sid, note = rec["id"], rec["note"]
        if not isinstance(sid, int) or isinstance(sid, bool) or sid not in known:
            raise data_error(path, i, f"unknown id {sid!r:.40}; expected an id of finance/sentences.jsonl")
        if sid in out:
            raise data_error(path, i, f"duplicate id {sid} (first labelled on line {out[sid][0]}); expected one "
                                      "label per id and file")
        for key in label_keys:
            if rec[key] not in allowed:
                what = "label" if key == "label" else f"'{key}' label"
                raise data_error(path, i, f"unknown {what} {rec[key]!r:.40}; expected one of {', '.join(allowed)}")
        if not isinstance(note, str):
            raise data_error(path, i, f"'note': expected a string (may be empty), got {note!r:.40}")
        if rec["label"] == EXCLUDE and not note.strip():
            raise data_error(path, i, f"label {EXCLUDE!r} without a note; expected a note saying why the "
                                      "sentence is unusable")
        out[sid] = (i, rec)
    return out


def _require_all(path: Path, ids: Iterable[int], labelled: Iterable[int]) -> None:
    """DataFormatError naming the ids that have no line in the file."""
    missing = sorted(set(ids) - set(labelled))
    if missing:
        raise DataFormatError(f"{path}: {len(missing)} sentence id(s) have no label, e.g. "
                              f"{', '.join(map(str, missing[:5]))}; expected one line per sentence id")


def read_fin_labels(path: Path | str, ids: Iterable[int], complete: bool = False) -> dict[int, dict[str, str]]:
    """One annotation pass, {id: {label, note}}; a bad line (unknown label or id, duplicate id) raises naming file:line.

    Each line is {"id": int, "label": "positive"|"neutral"|"negative"|"exclude", "note": str}; "exclude" needs a
    note. `ids` are the sentence ids (`read_fin_sentences`); with `complete`, every one of them must have a label.
    """
    path, ids = Path(path), list(ids)
    lines = _label_lines(path, ids, LABEL_KEYS)
    if complete:
        _require_all(path, ids, lines)
    return {sid: {"label": rec["label"], "note": rec["note"]} for sid, (_, rec) in lines.items()}


def read_fin_final(path: Path | str = FINAL_PATH, ids: Iterable[int] | None = None,
                   passes: Sequence[Path | str] | None = None) -> dict[int, dict[str, Any]]:
    """The adjudicated labels, {id: {label, pass1, pass2, note, split}}, every sentence id once; checked line by line.

    Each line is {"id", "label", "pass1", "pass2", "note"} and, once `make_splits.py` has run, "split" (train,
    validation or test; null for an excluded item) on every line. A label that differs from either pass needs a note
    (the ruling); an item both passes excluded stays excluded. With `passes` (the two pass files), pass1 and pass2
    must equal their labels. `split` is None when the file has no split yet. Bad lines raise naming file:line.
    """
    path = Path(path)
    ids = [it["id"] for it in read_fin_sentences()] if ids is None else list(ids)
    lines = _label_lines(path, ids, FINAL_KEYS, optional=(SPLIT_KEY,), label_keys=("label", "pass1", "pass2"))
    _require_all(path, ids, lines)
    given = [read_fin_labels(p, ids, complete=True) for p in passes] if passes else []
    with_split = [i for i, rec in lines.values() if SPLIT_KEY in rec]
    if with_split and len(with_split) < len(lines):
        first = min(i for i, rec in lines.values() if SPLIT_KEY not in rec)
        raise data_error(path, first, f"no '{SPLIT_KEY}' while {len(with_split)} other line(s) have one; expected "
                                      "a split on every line or on none (rerun python finance/make_splits.py)")
    out = {}
    for sid, (i, rec) in sorted(lines.items()):
        label, p1, p2 = rec["label"], rec["pass1"], rec["pass2"]
        for k, labels in enumerate(given, start=1):
            if rec[f"pass{k}"] != labels[sid]["label"]:
                raise data_error(path, i, f"'pass{k}' is {rec[f'pass{k}']!r} but {passes[k - 1]} labels id {sid} "
                                          f"{labels[sid]['label']!r}; expected the pass's label, unchanged")
        if p1 == p2 == EXCLUDE and label != EXCLUDE:
            raise data_error(path, i, f"label {label!r} for an item both passes excluded; expected {EXCLUDE!r}")
        if (label != p1 or label != p2) and not rec["note"].strip():
            raise data_error(path, i, f"label {label!r} differs from a pass (pass1 {p1!r}, pass2 {p2!r}) and the "
                                      "note is empty; expected the ruling that decided it")
        split = rec.get(SPLIT_KEY)
        expected = [None] if label == EXCLUDE else list(SPLITS)
        if SPLIT_KEY in rec and split not in expected:
            raise data_error(path, i, f"'{SPLIT_KEY}' {split!r:.40} for label {label!r}; expected "
                                      f"{' or '.join(map(str, expected))}")
        out[sid] = {"label": label, "pass1": p1, "pass2": p2, "note": rec["note"], SPLIT_KEY: split}
    return out


def load_fin_sentiment(split: str | None = None, labels: Path | str = FINAL_PATH,
                       sentences: Path | str = SENTENCES_PATH, ag_news: Path | None = None) -> Dataset:
    """The labelled sentences (excluded ones dropped), in id order: a Dataset of id, text, label (ClassLabel) and split.

    `split` picks train, validation or test (None: all three); the texts are rebuilt from the local AG News
    (`load_fin_sentences`), the labels are those of `labels_final.jsonl`.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {', '.join(SPLITS)}, or None for all of them")
    labels = Path(labels)
    if not labels.is_file():
        raise DataNotFoundError(f"financial sentiment labels: expected the file {labels} (the adjudicated labels, "
                                "committed under finance/)")
    texts = {it["id"]: it["text"] for it in load_fin_sentences(sentences, ag_news)}
    final = read_fin_final(labels, texts)
    kept = {sid: r for sid, r in final.items() if r["label"] != EXCLUDE}
    if split is not None and any(r[SPLIT_KEY] is None for r in kept.values()):
        raise DataFormatError(f"{labels}: no '{SPLIT_KEY}' field; expected the split written by "
                              "python finance/make_splits.py")
    rows = [(sid, r) for sid, r in sorted(kept.items()) if split is None or r[SPLIT_KEY] == split]
    feats = Features({"id": Value("int32"), "text": Value("string"), "label": ClassLabel(names=list(FIN_LABELS)),
                      SPLIT_KEY: Value("string")})
    return Dataset.from_dict({"id": [sid for sid, _ in rows], "text": [texts[sid] for sid, _ in rows],
                              "label": [FIN_LABELS.index(r["label"]) for _, r in rows],
                              SPLIT_KEY: [r[SPLIT_KEY] for _, r in rows]}, features=feats)


def recorded_digest(readme: Path | str = FIN_DIR / "README.md") -> str:
    """The test split's sha256 as finance/README.md records it (written by make_splits.py)."""
    found = re.search(r"test split sha256 \(`lib.finance.split_digest`\): `([0-9a-f]{64})`",
                      Path(readme).read_text(encoding="utf-8"))
    if not found:
        raise DataFormatError(f"{readme}: no 'test split sha256' line; expected the block make_splits.py writes")
    return found[1]


def split_digest(final: Mapping[int, Mapping[str, Any]], split: str = "test") -> str:
    """sha256 (hex) of one split's labels: UTF-8 of the JSON list of {"id", "label"} of its items, sorted by id.

    The JSON is `json.dumps(rows, sort_keys=True, separators=(",", ":"), ensure_ascii=True)`, e.g.
    `[{"id":3,"label":"neutral"},{"id":8,"label":"positive"}]`; `final` is `read_fin_final()`'s mapping.
    """
    rows = [{"id": sid, "label": r["label"]} for sid, r in sorted(final.items()) if r.get(SPLIT_KEY) == split]
    if not rows:
        raise ValueError(f"split_digest: no item has split {split!r}; expected one of {', '.join(SPLITS)} and a "
                         "labels file that has been split (python finance/make_splits.py)")
    text = json.dumps(rows, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- agreement between the two passes

def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two annotators' labels of the same items, in the same order (scikit-learn's)."""
    from sklearn.metrics import cohen_kappa_score

    if len(a) != len(b) or not a:
        raise ValueError(f"cohen_kappa: {len(a)} and {len(b)} labels; expected two equally long, non-empty lists "
                         "(the same items, in the same order)")
    return float(cohen_kappa_score(list(a), list(b)))


def pass_agreement(pass1: Mapping[int, Mapping[str, str]], pass2: Mapping[int, Mapping[str, str]]) -> dict[str, Any]:
    """Agreement of two passes over the same ids: counts and kappa over all items and over those neither excluded,
    and the confusion table {pass-1 label: {pass-2 label: count}} over the four labels."""
    from sklearn.metrics import confusion_matrix

    if set(pass1) != set(pass2) or not pass1:
        raise ValueError(f"pass_agreement: the passes label {len(pass1)} and {len(pass2)} ids, "
                         f"{len(set(pass1) ^ set(pass2))} of them in one pass only; expected the same, non-empty ids")
    pairs = [(pass1[i]["label"], pass2[i]["label"]) for i in sorted(pass1)]
    kept = [(a, b) for a, b in pairs if EXCLUDE not in (a, b)]
    names = [*FIN_LABELS, EXCLUDE]
    table = confusion_matrix([a for a, _ in pairs], [b for _, b in pairs], labels=names)
    return {"n": len(pairs), "agree": sum(a == b for a, b in pairs), "kappa": cohen_kappa(*zip(*pairs)),
            "n_kept": len(kept), "agree_kept": sum(a == b for a, b in kept), "kappa_kept": cohen_kappa(*zip(*kept)),
            "confusion": {a: {b: int(table[r][c]) for c, b in enumerate(names)} for r, a in enumerate(names)}}


# ---------------------------------------------------------------- the topic split and the lexicon baseline

def finance_rows(sentences: Path | str = SENTENCES_PATH, labels: Path | str = FINAL_PATH) -> dict[int, str]:
    """AG News row -> the split of the labelled sentence taken from it (excluded sentences pin no row)."""
    final = read_fin_final(labels)
    return {it["row"]: final[it["id"]][SPLIT_KEY] for it in read_fin_sentences(sentences)
            if final[it["id"]][SPLIT_KEY] is not None}


def topic_split(texts: Sequence[str], labels: Sequence[int], pinned: Mapping[int, str], n_train: int, n_val: int,
                seed: int) -> dict[str, list[int]]:
    """Row indices of a seeded, deduplicated, stratified split of AG News: n_train and n_val rows per topic, the rest
    test. A pinned row (a labelled sentence's) may only go to its sentence's split; one not drawn there is left out."""
    import numpy as np

    from lib.splits import dedupe, normalise

    order = sorted(range(len(texts)), key=lambda i: (i not in pinned, i))  # a pinned copy wins over its duplicate
    rows, rng = sorted(dedupe(order, key=lambda i: normalise(texts[i]))), np.random.default_rng(seed)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for y in sorted(set(labels)):
        mine = [i for i in rows if labels[i] == y]
        left = [mine[j] for j in rng.permutation(len(mine))]
        for s, n in zip(SPLITS, (n_train, n_val, len(left))):
            take = [i for i in left if pinned.get(i, s) == s][:n]
            out[s] += take
            taken = set(take)
            left = [i for i in left if i not in taken]
    return {s: sorted(v) for s, v in out.items()}


def vader_compound(texts: Sequence[str]) -> list[float]:
    """VADER's compound polarity (-1 .. 1) of each text (Hutto & Gilbert 2014; the vaderSentiment package)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    sia = SentimentIntensityAnalyzer()
    return [sia.polarity_scores(t)["compound"] for t in texts]


def three_way(compound: Sequence[float], low: float = -0.05, high: float = 0.05) -> list[int]:
    """Three classes (indices into FIN_LABELS) from a polarity: > high positive, < low negative, else neutral; the
    defaults are VADER's own cut-offs."""
    return [0 if c > high else 2 if c < low else 1 for c in compound]


def vader_labels(texts: Sequence[str], low: float = -0.05, high: float = 0.05) -> list[int]:
    """VADER's three-way labels of each text (see three_way)."""
    return three_way(vader_compound(texts), low, high)
