"""Named-entity recognition with a GPT token-classification head: IOB2 labels, word/subword alignment, metrics.

Words are tokenized one by one with a leading space, which is what a byte-level BPE's `add_prefix_space=True` does:
"EU" becomes "ĠEU", as it would inside running text, and not the rarer word-initial pieces "E", "U". The word each
piece came from is kept, so labels go from words to pieces (`align_labels`) and predictions come back to words
(`words_from_pieces`) at the piece that labels each word (`word_positions`): its first piece, its last piece for the
'last' strategy, or the next word's first piece for 'lookahead'.

A left-to-right model labels a word before it has seen the next one. Three ways to give it right context, all on the
same model: 'last' (the whole word), 'lookahead' (the word and the next word's first piece: word i is labelled at
word i+1's first piece, the last word at an eos piece `encode` appends), and bidirectional attention during
fine-tuning (`train_tagger(..., bidirectional=True)`, see lib.models.set_causal). Tags are read per word by argmax or
by Viterbi decoding restricted to valid IOB2 sequences (`decode`, over the log-probabilities of `word_scores`).
"""
from __future__ import annotations

import math
from collections import Counter
from functools import partial
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from lib.losses import IGNORE_INDEX

# Label a word's first piece only (others -100), every piece (B- becomes I- after the first), its last piece only (a
# left-to-right model has seen the whole word only at its last piece), or the next word's first piece ('lookahead':
# the whole word and one piece of right context; the last word at an appended eos). Predictions are read where the
# labels sit ('first' for 'all').
STRATEGIES = ("first", "all", "last", "lookahead")
READ_AT = ("first", "last", "lookahead")
ERROR_KINDS = ("type", "boundary", "boundary+type", "missed", "spurious")


def label_names(dataset) -> list[str]:
    """The IOB2 tag names of a CoNLL dataset, in id order, read from its features."""
    return list(dataset.features["ner_tags"].feature.names)


def word_pieces(tokenizer, words: Sequence[str], lowercase: bool = False) -> tuple[list[int], list[int]]:
    """(piece ids, word index of each piece): each word tokenized as ' ' + word, like add_prefix_space=True."""
    words = [w.lower() for w in words] if lowercase else list(words)
    ids, word_ids = [], []
    for k, piece_ids in enumerate(tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]):
        if not piece_ids:
            raise ValueError(f"word {k} ({words[k]!r}) tokenizes to no pieces")
        ids += piece_ids
        word_ids += [k] * len(piece_ids)
    return ids, word_ids


def read_at(strategy: str) -> str:
    """Where a strategy's predictions are read: the first piece for 'all', else where its labels sit."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: expected one of {', '.join(STRATEGIES)}")
    return "first" if strategy == "all" else strategy


def end_piece(tokenizer) -> int:
    """The piece 'lookahead' appends after every sentence, so that its last word has a next piece: the eos id."""
    if tokenizer.eos_token_id is None:
        raise ValueError("strategy='lookahead' labels the last word at an appended eos piece, but the tokenizer has "
                         "no eos_token")
    return int(tokenizer.eos_token_id)


def word_positions(word_ids: Sequence[int], at: str = "first", n_words: int | None = None) -> list[int]:
    """Index of the piece that labels each word: its 'first' or 'last' piece, or the next word's first ('lookahead').

    Under 'lookahead' word n_words is the end piece `encode` appends; without n_words it is the largest word id.
    """
    if at not in READ_AT:
        raise ValueError(f"at={at!r}: expected one of {', '.join(READ_AT)}")
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for k, w in enumerate(word_ids):
        first.setdefault(w, k)
        last[w] = k
    ahead = at == "lookahead"
    n = n_words if n_words is not None else max(word_ids, default=-1) + (not ahead)
    for w in range(n + ahead):
        if w not in first:
            if ahead and w == n:
                raise ValueError(f"at='lookahead' reads word {n - 1} at the first piece of word {n}, the end piece "
                                 "that encode appends, but word_ids has none")
            raise ValueError(f"word {w} has no piece")
    return [first[w + 1] if ahead else (last if at == "last" else first)[w] for w in range(n)]


def continuation_ids(names: Sequence[str]) -> dict[int, int]:
    """Map the id of every B-X to the id of I-X (the tag of a word's later pieces under the 'all' strategy)."""
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in names if n.startswith("B-") and "I-" + n[2:] not in index]
    if missing:
        raise ValueError(f"tags {missing} have no I- partner in {list(names)}")
    return {index[n]: index["I-" + n[2:]] for n in names if n.startswith("B-")}


def align_labels(word_ids: Sequence[int], word_labels: Sequence[int], names: Sequence[str],
                 strategy: str = "first") -> list[int]:
    """Piece labels from word labels: -100 except at each word's `word_positions`, or for 'all' on all its pieces.

    For 'lookahead' word_ids ends with the end piece (word len(word_labels)), as `encode` makes it.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if strategy != "all":
        out = [IGNORE_INDEX] * len(word_ids)
        for k, y in zip(word_positions(word_ids, strategy, len(word_labels)), word_labels):
            out[k] = y
        return out
    cont = continuation_ids(names)
    return [word_labels[w] if k == 0 or word_ids[k - 1] != w else cont.get(word_labels[w], word_labels[w])
            for k, w in enumerate(word_ids)]


def words_from_pieces(word_ids: Sequence[int], piece_values: Sequence[int], n_words: int | None = None,
                      at: str = "first") -> list[int]:
    """One value per word: the value at the word's `word_positions` piece; labels or predictions alike."""
    return [int(piece_values[k]) for k in word_positions(word_ids, at, n_words)]


def encode(tokenizer, sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[int]], names: Sequence[str],
           strategy: str = "first", lowercase: bool = False, max_length: int = 1024) -> list[dict[str, Any]]:
    """Training/evaluation examples; a sentence longer than max_length pieces is cut into word-aligned chunks.

    Each example: input_ids, labels (aligned by `strategy`), word_ids (within the sentence), sentence (its index).
    'lookahead' appends an eos piece (word id = number of words) that carries the last word's label; a chunk's last
    word is then labelled at the next chunk's first piece, which cannot see it: chunks are rare, keep max_length long.
    """
    out = []
    eos = end_piece(tokenizer) if strategy == "lookahead" else None
    for s, (words, labels) in enumerate(zip(sentences, tags)):
        if len(words) != len(labels):
            raise ValueError(f"sentence {s}: {len(words)} words but {len(labels)} tags")
        ids, wids = word_pieces(tokenizer, words, lowercase)
        if eos is not None:
            ids, wids = ids + [eos], wids + [len(words)]
        pieces = align_labels(wids, labels, names, strategy)
        start = 0
        while start < len(ids):
            end = min(start + max_length, len(ids))
            while start < end < len(ids) and wids[end] == wids[end - 1]:
                end -= 1  # never split a word across chunks
            if end == start:
                raise ValueError(f"sentence {s}: word {wids[start]} alone is longer than max_length={max_length}")
            out.append({"input_ids": ids[start:end], "labels": pieces[start:end], "word_ids": wids[start:end],
                        "sentence": s})
            start = end
    return out


def relabel(examples: Sequence[Mapping[str, Any]], tags: Sequence[Sequence[int]], names: Sequence[str],
            strategy: str) -> list[dict[str, Any]]:
    """Examples encoded with 'lookahead' (an end piece appended), labelled for `strategy`; the end piece is unlabelled
    unless strategy is 'lookahead'. One input for every strategy, so one cache of states serves them all."""
    ahead = strategy == "lookahead"  # else the end piece is no word of the strategy's: labels stop before it
    return [{**e, "labels": align_labels(e["word_ids"] if ahead else e["word_ids"][:-1], tags[e["sentence"]], names,
                                         strategy) + ([] if ahead else [IGNORE_INDEX])} for e in examples]


def train_tagger(model_name: str, names: Sequence[str], examples: Sequence[Mapping[str, Any]], *, epochs: float,
                 batch_size: int, lr: float, seed: int = 0, pad_id: int = 0, device: str = "cpu",
                 progress: bool = True, bidirectional: bool = False, mixed_precision: str = "auto"):
    """(model, history): a fresh token classifier trained with the shared core (warmup 10%, length-grouped batches).

    bidirectional: fine-tune (and predict) without the causal mask; mixed_precision: TrainConfig's (auto, fp32, bf16).
    """
    from lib.models import load_token_classifier
    from lib.training import TrainConfig, collate, train

    model = load_token_classifier(model_name, list(names), device, bidirectional=bidirectional)
    steps = math.ceil(epochs * len(examples) / batch_size)
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, warmup_steps=steps // 10, seed=seed,
                      shift_labels=False, group_by_length=True, log_every=max(1, steps // 40), progress=progress,
                      mixed_precision=mixed_precision)
    return model, train(model, examples, None, cfg, collate=partial(collate, pad_id=pad_id))


def _piece_rows(examples: Sequence[Mapping[str, Any]], forward, batch_size: int,
                desc: str | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(example index, its pieces' tag log-probabilities): `forward(batch of examples) -> logits` in length-sorted
    batches (less padding)."""
    from tqdm.auto import tqdm

    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=desc is None):
        idx = order[start:start + batch_size]
        rows = forward([examples[i] for i in idx]).float().log_softmax(-1).cpu().numpy()
        for k, i in enumerate(idx):
            yield i, rows[k, :len(examples[i]["input_ids"])]


def word_scores(model, examples: Sequence[Mapping[str, Any]], n_words: Sequence[int], pad_id: int = 0,
                batch_size: int = 64, at: str = "first") -> list[np.ndarray]:
    """Tag log-probabilities of every word, one float32 (words, tags) array per sentence (eval mode); a sentence cut
    into chunks is put back together."""
    from lib.training import collate, evaluating

    device = next(model.parameters()).device

    def forward(chunk):
        batch = collate([{"input_ids": e["input_ids"]} for e in chunk], pad_id)
        return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits

    pieces: list[list[tuple[int, np.ndarray, list[int]]]] = [[] for _ in n_words]
    n_tags = 0
    with evaluating(model):
        for i, rows in _piece_rows(examples, forward, batch_size, desc="predict"):
            e, n_tags = examples[i], rows.shape[-1]
            pieces[e["sentence"]].append((e["word_ids"][0], rows, e["word_ids"]))
    out = []
    for s, parts in enumerate(pieces):
        parts.sort(key=lambda p: p[0])  # chunks of one sentence back in order
        wids = [w for _, _, ws in parts for w in ws]
        vals = np.concatenate([v for _, v, _ in parts]) if parts else np.zeros((0, n_tags), np.float32)
        out.append(vals[word_positions(wids, at, n_words[s])])
    return out


def predict(model, examples: Sequence[Mapping[str, Any]], n_words: Sequence[int], pad_id: int = 0,
            batch_size: int = 64, at: str = "first") -> list[list[int]]:
    """Predicted tag id of every word, one list per sentence (the most probable tag at each word's `at` piece)."""
    return [row.argmax(-1).tolist() for row in word_scores(model, examples, n_words, pad_id, batch_size, at)]


# ---------------------------------------------------------------- decoding: argmax or IOB2-constrained Viterbi

DECODERS = ("argmax", "viterbi")


def _tag_parts(names: Sequence[str]) -> list[tuple[str, str]]:
    """(prefix, type) of every IOB2 tag name: ('O', '') or ('B', X) / ('I', X); anything else raises."""
    parts = []
    for n in names:
        if n != "O" and not (n[:2] in ("B-", "I-") and len(n) > 2):
            raise ValueError(f"names: {n!r} is not an IOB2 tag (expected O, B-<type> or I-<type>) in {list(names)}")
        parts.append(("O", "") if n == "O" else (n[0], n[2:]))
    return parts


def allowed_transitions(names: Sequence[str]) -> np.ndarray:
    """(tags, tags) bool matrix, [i, j] = may tag j follow tag i in IOB2: I-X only after B-X or I-X."""
    parts = _tag_parts(names)
    return np.array([[q != "I" or (p != "O" and x == y) for q, y in parts] for p, x in parts], dtype=bool)


def allowed_starts(names: Sequence[str]) -> np.ndarray:
    """(tags,) bool: may a sentence start with this tag in IOB2 (anything but I-X)."""
    return np.array([p != "I" for p, _ in _tag_parts(names)], dtype=bool)


def viterbi(scores: np.ndarray, names: Sequence[str]) -> list[int]:
    """The valid IOB2 tag-id sequence with the highest summed score; scores: (words, tags) log-probs or logits."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != len(names):
        raise ValueError(f"scores: expected shape (words, {len(names)}), got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores: expected finite numbers (log-probabilities or logits), got NaN or infinity")
    if not len(s):
        return []
    step = np.where(allowed_transitions(names), 0.0, -np.inf)  # [previous tag, tag]
    best = s[0] + np.where(allowed_starts(names), 0.0, -np.inf)
    back = np.zeros(s.shape, dtype=np.int64)
    for t in range(1, len(s)):
        cand = best[:, None] + step
        back[t] = cand.argmax(0)
        best = cand[back[t], np.arange(len(names))] + s[t]
    path = [int(best.argmax())]
    for t in range(len(s) - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1]


def decode(scores: Sequence[np.ndarray], names: Sequence[str], method: str = "viterbi") -> list[list[int]]:
    """Tag ids per sentence from `word_scores`: per-word 'argmax', or IOB2-constrained 'viterbi'."""
    if method not in DECODERS:
        raise ValueError(f"method={method!r}: expected one of {', '.join(DECODERS)}")
    if method == "argmax":
        return [np.asarray(s).argmax(-1).tolist() for s in scores]
    return [viterbi(s, names) for s in scores]


# ---------------------------------------------------------------- metrics

def as_tags(ids: Sequence[Sequence[int]], names: Sequence[str]) -> list[list[str]]:
    """Tag-id lists to tag-name lists."""
    return [[names[i] for i in row] for row in ids]


def token_report(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], digits: int = 4) -> tuple[str, dict]:
    """The seed's §5.4 table: sklearn's classification_report over every word's tag, O included (text, dict)."""
    from sklearn.metrics import classification_report

    y_true = [t for row in gold for t in row]
    y_pred = [t for row in pred for t in row]
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold tags but {len(y_pred)} predicted tags")
    kw = {"labels": sorted(set(y_true) | set(y_pred)), "zero_division": 0}
    return (classification_report(y_true, y_pred, digits=digits, **kw),
            classification_report(y_true, y_pred, output_dict=True, **kw))


def entity_report(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], digits: int = 4) -> tuple[str, dict]:
    """Entity-level precision, recall and F1 per type and micro-averaged: seqeval, strict IOB2 (text, dict)."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    kw = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    report = classification_report(gold, pred, output_dict=True, **kw)
    plain = {k: {m: float(v) for m, v in row.items()} for k, row in report.items()}
    return classification_report(gold, pred, digits=digits, **kw), plain


def score_views(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """The same predictions scored four ways: token accuracy and weighted F1 with O, macro F1 without O, entity F1."""
    tokens, ents = token_report(gold, pred)[1], entity_report(gold, pred)[1]
    tags = sorted({t for row in gold for t in row} - {"O"})
    return {"token accuracy = micro F1 (with O)": tokens["accuracy"],
            "token weighted F1 (with O)": tokens["weighted avg"]["f1-score"],
            f"token macro F1 ({len(tags)} tags, no O)": sum(tokens.get(t, {"f1-score": 0.0})["f1-score"]
                                                           for t in tags) / max(len(tags), 1),
            "entity F1, strict IOB2": ents["micro avg"]["f1-score"]}


def entities(tags: Sequence[Sequence[str]]) -> list[set[tuple[int, int, str]]]:
    """The strict-IOB2 entities of each sentence as {(start, end, type)} (end exclusive); ill-formed runs are none."""
    from seqeval.scheme import IOB2, Entities

    return [{(e.start, e.end, e.tag) for e in sent} for sent in Entities([list(t) for t in tags], IOB2).entities]


def entity_errors(words: Sequence[Sequence[str]], gold: Sequence[Sequence[str]],
                  pred: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """Every entity not matched exactly, classed as type, boundary, boundary+type, missed (gold) or spurious (pred)."""
    rows = []
    for s, (g_set, p_set) in enumerate(zip(entities(gold), entities(pred))):
        text = lambda e: " ".join(words[s][e[0]:e[1]]) if e else ""  # noqa: E731
        for g in sorted(g_set - p_set):
            over = [p for p in sorted(p_set - g_set) if p[0] < g[1] and g[0] < p[1]]
            p = max(over, key=lambda p: min(p[1], g[1]) - max(p[0], g[0]), default=None)
            kind = ("missed" if p is None else "type" if p[:2] == g[:2] else
                    "boundary" if p[2] == g[2] else "boundary+type")
            rows.append({"kind": kind, "sentence": s, "gold": text(g), "gold_type": g[2],
                         "predicted": text(p), "predicted_type": p[2] if p else ""})
        for p in sorted(p_set - g_set):
            if not any(p[0] < g[1] and g[0] < p[1] for g in g_set):
                rows.append({"kind": "spurious", "sentence": s, "gold": "", "gold_type": "",
                             "predicted": text(p), "predicted_type": p[2]})
    return rows


def entity_word_errors(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """One row per word of a gold entity: its type, position in the entity (0 = first), entity length, gold tag,
    correct, and the entity it belongs to (sentence, start)."""
    rows = []
    for s, g_set in enumerate(entities(gold)):
        for start, end, kind in sorted(g_set):
            for k in range(start, end):
                rows.append({"type": kind, "position": k - start, "length": end - start, "tag": gold[s][k],
                             "correct": pred[s][k] == gold[s][k], "sentence": s, "start": start})
    return rows


def invalid_starts(tags: Sequence[Sequence[str]]) -> int:
    """Number of I-X tags that follow neither B-X nor I-X: ill-formed in IOB2, so strict scoring drops them."""
    n = 0
    for row in tags:
        prev = "O"
        for t in row:
            n += t.startswith("I-") and prev[2:] != t[2:]
            prev = t
    return n


def tag_counts(tags: Sequence[Sequence[str]]) -> Counter:
    """How often each tag occurs."""
    return Counter(t for row in tags for t in row)


# ---------------------------------------------------------------- uncertainty: per-sentence counts, bootstrap

def entity_types(names: Sequence[str]) -> list[str]:
    """The entity types of IOB2 tag names, in seqeval's report order (alphabetical): LOC, MISC, ORG, PER."""
    return sorted({n[2:] for n in names if n[:2] in ("B-", "I-")})


def entity_counts(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], types: Sequence[str],
                  strict: bool = True) -> np.ndarray:
    """Entity (tp, fp, fn) per sentence and type, shape (sentences, types, 3): strict IOB2, or conlleval chunks.

    Summed over any set of sentences they give seqeval's scores on those sentences, so a bootstrap over sentences
    resamples rows of this array instead of running seqeval again.
    """
    from seqeval.metrics.sequence_labeling import get_entities

    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted ones")
    if strict:
        g_sets, p_sets = entities(gold), entities(pred)
    else:  # seqeval's default mode: an I-X after O or another type starts an entity, as in conlleval
        g_sets, p_sets = ([{(a, b + 1, t) for t, a, b in get_entities(list(row))} for row in tags]
                          for tags in (gold, pred))
    col = {t: k for k, t in enumerate(types)}
    out = np.zeros((len(gold), len(types), 3), dtype=np.int64)
    for s, (g, p) in enumerate(zip(g_sets, p_sets)):
        for j, found in enumerate((p & g, p - g, g - p)):
            for e in found:
                if e[2] not in col:
                    raise ValueError(f"sentence {s}: entity type {e[2]!r} is not one of {list(types)}")
                out[s, col[e[2]], j] += 1
    return out


def word_counts(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], names: Sequence[str]) -> np.ndarray:
    """Word-tag (tp, fp, fn) per sentence and tag, `O` included, shape (sentences, tags, 3)."""
    index = {n: k for k, n in enumerate(names)}
    out = np.zeros((len(gold), len(names), 3), dtype=np.int64)
    for s, (g_row, p_row) in enumerate(zip(gold, pred, strict=True)):
        if len(g_row) != len(p_row):
            raise ValueError(f"sentence {s}: {len(g_row)} gold tags but {len(p_row)} predicted tags")
        for g, p in zip(g_row, p_row):
            if g == p:
                out[s, index[g], 0] += 1
            else:
                out[s, index[p], 1] += 1
                out[s, index[g], 2] += 1
    return out


def summed(counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """counts[idx].sum(0) for a resample `idx` of sentences (repeats count again), as one product with the tallies."""
    n = len(counts)
    return (np.bincount(idx, minlength=n) @ counts.reshape(n, -1)).reshape(counts.shape[1:])


def f1_of(counts: np.ndarray) -> float:
    """F1 of (tp, fp, fn) counts summed over every leading axis: 2tp / (2tp + fp + fn), 0 when tp = 0 (seqeval's)."""
    tp, fp, fn = np.asarray(counts).reshape(-1, 3).sum(0)
    return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


def views_from_counts(words: np.ndarray, ents: np.ndarray, names: Sequence[str],
                      macro_tags: Sequence[str]) -> dict[str, float]:
    """score_views from per-sentence counts (word_counts, strict entity_counts); macro F1 over `macro_tags`."""
    tp, fp, fn = words.sum(0).T
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(len(names)), where=tp > 0)
    support = tp + fn
    macro = [f1[list(names).index(t)] for t in macro_tags]
    return {"token accuracy = micro F1 (with O)": float(tp.sum() / support.sum()),
            "token weighted F1 (with O)": float((support * f1).sum() / support.sum()),
            f"token macro F1 ({len(macro)} tags, no O)": float(np.mean(macro)) if macro else 0.0,
            "entity F1, strict IOB2": f1_of(ents)}


def views_with_intervals(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], names: Sequence[str],
                         n_boot: int = 1000, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """score_views, each view as (value, low, high) with its 95% bootstrap interval over test sentences."""
    from lib.stats import bootstrap_interval

    words, ents = word_counts(gold, pred, names), entity_counts(gold, pred, entity_types(names))
    macro = sorted({t for row in gold for t in row} - {"O"})
    view = lambda i: views_from_counts(summed(words, i)[None], summed(ents, i)[None], names, macro)  # noqa: E731
    return {k: bootstrap_interval(lambda i, k=k: view(i)[k], len(gold), n_boot, seed)
            for k in view(np.arange(len(gold)))}


def f1_intervals(counts: np.ndarray, types: Sequence[str], n_boot: int = 1000,
                 seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Entity F1 per type and micro-averaged ('micro avg') from entity_counts, each with its 95% bootstrap interval."""
    from lib.stats import bootstrap_interval

    cols = {**{t: k for k, t in enumerate(types)}, "micro avg": slice(None)}
    return {t: bootstrap_interval(lambda i, c=c: f1_of(summed(counts, i)[c]), len(counts), n_boot, seed)
            for t, c in cols.items()}


def paired_f1_tests(counts_a: np.ndarray, counts_b: np.ndarray, types: Sequence[str], n_boot: int = 1000,
                    seed: int = 0) -> dict[str, tuple[float, float, float, float]]:
    """(F1 of a minus F1 of b, its 95% interval, paired-bootstrap p) per type and micro-averaged; one resample of
    sentences scores both."""
    from lib.stats import paired_difference

    if counts_a.shape != counts_b.shape:
        raise ValueError(f"paired counts of one shape expected, got {counts_a.shape} and {counts_b.shape}")
    cols = {**{t: k for k, t in enumerate(types)}, "micro avg": slice(None)}
    f1_at = lambda counts, c: lambda i: f1_of(summed(counts, i)[c])  # noqa: E731
    return {t: paired_difference(f1_at(counts_a, c), f1_at(counts_b, c), len(counts_a), n_boot, seed)
            for t, c in cols.items()}


# ---------------------------------------------------------------- two cores: a frozen bottom computed once

def bottom_cache(model, examples: Sequence[Mapping[str, Any]], split_at: int, pad_id: int = 0,
                 batch_size: int = 32, precision: str = "fp32") -> list[torch.Tensor]:
    """Each example's residual stream after the first `split_at` blocks of a Llama-style model (causal, frozen).

    One example per sentence (none cut into chunks), so that a state is found by its example's `sentence`;
    precision: "bf16" runs the blocks under bfloat16 autocast (the states are still stored as float32), "fp32" does not.
    """
    from lib.preference import block_states
    from lib.training import autocast

    cut = next((i for i, e in enumerate(examples) if e["sentence"] != i), None)
    if cut is not None:
        raise ValueError(f"example {cut} is not sentence {cut}: a sentence was cut into chunks (raise max_length)")
    device = next(model.parameters()).device.type
    with autocast(precision, device):  # checks precision before any block runs
        return block_states(model, [e["input_ids"] for e in examples], split_at, pad_id, batch_size,
                            desc=f"blocks 0-{split_at - 1}")


def collate_states(examples: Sequence[Mapping[str, Any]], states: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Right-padded cached states (inputs_embeds, found by each example's `sentence`), attention_mask and labels."""
    from lib.training import collate

    batch = collate([{"input_ids": e["input_ids"], **({"labels": e["labels"]} if "labels" in e else {})}
                     for e in examples])
    x = torch.zeros(*batch["input_ids"].shape, states[examples[0]["sentence"]].shape[-1])
    for k, e in enumerate(examples):
        x[k, :len(e["input_ids"])] = states[e["sentence"]]
    return {"inputs_embeds": x, "attention_mask": batch["attention_mask"], "labels": batch["labels"]}


class TopTagger(torch.nn.Module):
    """A Llama-style token classifier run from block `split_at` on, over cached states; only that top trains."""

    def __init__(self, model, split_at: int):
        super().__init__()
        self.model, self.split_at = model, split_at

    def top_parameters(self) -> list[torch.nn.Parameter]:
        """The weights that train: blocks split_at.., the final norm and the head."""
        from lib.preference import decoder

        dec = decoder(self.model)
        return [*dec.layers[self.split_at:].parameters(), *dec.norm.parameters(), *self.model.score.parameters()]

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None):
        """Logits (and the loss over labelled pieces) from the cached states."""
        from transformers.modeling_outputs import TokenClassifierOutput

        from lib.preference import only_blocks

        with only_blocks(self.model, self.split_at) as dec:
            hidden = dec(inputs_embeds=inputs_embeds.to(self.model.dtype), attention_mask=attention_mask,
                         use_cache=False).last_hidden_state
        logits = self.model.score(hidden)
        loss = None if labels is None else torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        return TokenClassifierOutput(loss=loss, logits=logits)


def train_top_tagger(model, split_at: int, examples: Sequence[Mapping[str, Any]], states: Sequence[torch.Tensor], *,
                     epochs: float, batch_size: int, lr: float, seed: int = 0, bidirectional: bool = False,
                     progress: bool = True, mixed_precision: str = "fp32"):
    """(TopTagger, history): blocks split_at.. and the head trained on cached states with the shared core;
    mixed_precision: TrainConfig's (fp32, bf16, auto)."""
    from lib.models import set_causal
    from lib.training import TrainConfig, train

    set_causal(model, not bidirectional)
    tagger = TopTagger(model, split_at)
    model.requires_grad_(False)
    for p in tagger.top_parameters():
        p.requires_grad_(True)
    steps = math.ceil(epochs * len(examples) / batch_size)
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, warmup_steps=steps // 10, seed=seed,
                      shift_labels=False, group_by_length=True, log_every=max(1, steps // 40), progress=progress,
                      mixed_precision=mixed_precision)
    return tagger, train(tagger, examples, None, cfg, collate=partial(collate_states, states=states))


def top_word_scores(tagger: TopTagger, examples: Sequence[Mapping[str, Any]], states: Sequence[torch.Tensor],
                    n_words: Sequence[int], at: str = "first", batch_size: int = 64) -> list[np.ndarray]:
    """Tag log-probabilities of every word (one (words, tags) array per sentence) from cached states; eval mode."""
    from lib.training import evaluating

    def forward(chunk):
        batch = collate_states(chunk, states)
        return tagger(batch["inputs_embeds"], batch["attention_mask"]).logits

    out: list[np.ndarray] = [np.zeros(0)] * len(examples)
    with evaluating(tagger):
        for i, rows in _piece_rows(examples, forward, batch_size):
            e = examples[i]
            out[i] = rows[word_positions(e["word_ids"], at, n_words[e["sentence"]])]
    return out
