"""lib.ner: word/subword alignment round trips, chunking, predictions back to words, and the metrics.

The entity metrics are checked against hand-counted, conlleval-style fixtures in tests/fixtures/ner/.
"""
import re
from pathlib import Path

import pytest
import torch

from lib.data import CONLL_NER_LABELS, DataFormatError, read_conll
from lib.losses import IGNORE_INDEX
from lib.ner import (align_labels, as_tags, encode, entities, entity_errors, entity_report, entity_word_errors,
                     invalid_starts, predict, read_at, score_views, token_report, train_tagger, word_pieces,
                     words_from_pieces)

FIXTURES = Path(__file__).parent / "fixtures" / "ner"
NAMES = CONLL_NER_LABELS
SENTENCES = [(["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
              ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]),
             (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
             (["BRUSSELS", "1996-08-22"], ["B-LOC", "O"]),
             (["Nederlandsche", "Middenstandsbank", "N.V.", "said", "Wednesday"],
              ["B-ORG", "I-ORG", "I-ORG", "O", "O"])]


def read_fixture(path: Path) -> dict:
    """A conlleval-layout fixture (word gold pred) and its hand-made counts from the '# key: a=1 b=2' header."""
    counts, words, gold, pred, cur = {}, [], [], [], ([], [], [])
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        if line.startswith("#"):
            if m := re.match(r"# ([\w +]+): ((?:[\w+]+=\d+ ?)+)$", line):
                counts[m[1]] = {k: int(v) for k, v in (kv.split("=") for kv in m[2].split())}
        elif not line.strip():
            if cur[0]:
                for out, col in zip((words, gold, pred), cur):
                    out.append(col[:])
                    col.clear()
        else:
            for col, value in zip(cur, line.split()):
                col.append(value)
    return {"counts": counts, "words": words, "gold": gold, "pred": pred}


@pytest.fixture(scope="module")
def tokenizers():
    """GPT-2's real byte-level BPE (when the shared data has it) and a small byte-level BPE like the mini-GPT's."""
    from lib.models import load_tokenizer
    from lib.tokenization import as_transformers, train_bpe

    texts = [" ".join(w for ws, _ in SENTENCES for w in ws).lower()] * 3 + ["once upon a time there was a girl."] * 3
    toks = {"bpe-300": as_transformers(train_bpe(texts, 300))}
    try:
        toks["gpt2"] = load_tokenizer("gpt2")
    except Exception:  # no local GPT-2 files and no hub: test the small BPE only
        pass
    return toks


@pytest.mark.parametrize("strategy", ["first", "all", "last"])
def test_word_to_subword_to_word_is_the_identity(tokenizers, strategy):
    for tok in tokenizers.values():
        for words, tags in SENTENCES:
            for lowercase in (False, True):
                ids, wids = word_pieces(tok, words, lowercase)
                labels = [NAMES.index(t) for t in tags]
                pieces = align_labels(wids, labels, NAMES, strategy)
                assert len(pieces) == len(ids) and words_from_pieces(wids, pieces, at=read_at(strategy)) == labels
                later = [y for k, y in enumerate(pieces) if k and wids[k] == wids[k - 1]]
                if strategy == "first":
                    assert set(later) <= {IGNORE_INDEX}
                elif strategy == "all":  # continuation pieces carry I- (never B-) tags and are all in the loss
                    assert IGNORE_INDEX not in pieces and all(not NAMES[y].startswith("B-") for y in later)
                else:  # one label per word, on its last piece
                    assert sum(y != IGNORE_INDEX for y in pieces) == len(words) and pieces[-1] == labels[-1]


def test_pieces_carry_a_leading_space_like_add_prefix_space(tokenizers):
    words = SENTENCES[0][0]
    for name, tok in tokenizers.items():
        ids, wids = word_pieces(tok, words)
        assert tok.decode(ids) == " " + " ".join(words)
        first = [ids[k] for k in range(len(ids)) if k == 0 or wids[k] != wids[k - 1]]
        assert all(tok.convert_ids_to_tokens(i).startswith("Ġ") for i in first), name
    if "gpt2" in tokenizers:  # the same as the tokenizer's own split-into-words path with add_prefix_space=True
        from tokenizers import pre_tokenizers

        tok = tokenizers["gpt2"]
        saved = tok.backend_tokenizer.pre_tokenizer
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        try:
            enc = tok(words, is_split_into_words=True, add_special_tokens=False)
            assert (enc["input_ids"], enc.word_ids()) == word_pieces(tok, words)
        finally:
            tok.backend_tokenizer.pre_tokenizer = saved


def test_align_labels_rejects_an_unknown_strategy():
    with pytest.raises(ValueError, match="strategy='middle': expected one of first, all, last"):
        align_labels([0], [0], NAMES, "middle")


class PieceOracle(torch.nn.Module):
    """A fake token classifier: each piece id's logits point at the tag id (piece id mod 9)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": torch.nn.functional.one_hot(input_ids % len(NAMES), len(NAMES)).float()})


def test_long_sentences_are_chunked_at_word_boundaries_and_predictions_rejoin(tokenizers):
    tok = tokenizers["bpe-300"]
    sents, tags = [w for w, _ in SENTENCES], [[NAMES.index(t) for t in ts] for _, ts in SENTENCES]
    whole = encode(tok, sents, tags, NAMES, "all", max_length=1024)
    longest_word = max(len(word_pieces(tok, [w])[0]) for ws in sents for w in ws)
    chunked = encode(tok, sents, tags, NAMES, "all", max_length=longest_word)
    assert len(whole) == len(SENTENCES) < len(chunked)
    assert all(len(e["input_ids"]) <= longest_word for e in chunked)
    for e in chunked:  # every chunk starts at a word's first piece
        same = [x for x in whole if x["sentence"] == e["sentence"]][0]
        k = same["word_ids"].index(e["word_ids"][0])
        assert same["input_ids"][k:k + len(e["input_ids"])] == e["input_ids"]
    n_words = [len(s) for s in sents]
    expected = [words_from_pieces(e["word_ids"], [i % len(NAMES) for i in e["input_ids"]]) for e in whole]
    assert predict(PieceOracle(), chunked, n_words, batch_size=3) == expected
    assert predict(PieceOracle(), whole, n_words) == expected
    last = [words_from_pieces(e["word_ids"], [i % len(NAMES) for i in e["input_ids"]], at="last") for e in whole]
    assert predict(PieceOracle(), chunked, n_words, at="last") == last != expected
    with pytest.raises(ValueError, match=f"longer than max_length={longest_word - 1}"):
        encode(tok, sents, tags, NAMES, max_length=longest_word - 1)


@pytest.mark.parametrize("name", ["boundary", "type", "ill_formed"])
def test_seqeval_strict_matches_hand_counted_conlleval_fixtures(name):
    from seqeval.metrics import precision_score, recall_score

    fx = read_fixture(FIXTURES / f"{name}.txt")
    c = fx["counts"]
    _, report = entity_report(fx["gold"], fx["pred"])
    strict = c["strict"]
    assert report["micro avg"]["precision"] == pytest.approx(strict["correct"] / strict["predicted"])
    assert report["micro avg"]["recall"] == pytest.approx(strict["correct"] / strict["gold"])
    p, r = strict["correct"] / strict["predicted"], strict["correct"] / strict["gold"]
    assert report["micro avg"]["f1-score"] == pytest.approx(2 * p * r / (p + r))
    assert report["micro avg"]["support"] == strict["gold"]
    for key, want in c.items():
        if key.startswith("strict "):
            row = report[key.split()[1]]
            assert row["support"] == want["gold"]
            assert row["recall"] == pytest.approx(want["correct"] / want["gold"])
            assert row["precision"] == pytest.approx(want["correct"] / want["predicted"] if want["predicted"] else 0)
    assert sum(len(e) for e in entities(fx["pred"])) == strict["predicted"]
    # seqeval's default mode is conlleval's chunking: it agrees with strict on valid IOB2 and differs on the rest
    conll = c["conlleval"]
    assert precision_score(fx["gold"], fx["pred"]) == pytest.approx(conll["correct"] / conll["predicted"])
    assert recall_score(fx["gold"], fx["pred"]) == pytest.approx(conll["correct"] / conll["gold"])
    assert (conll == strict) == (invalid_starts(fx["pred"]) == 0)


@pytest.mark.parametrize("name", ["boundary", "type", "ill_formed"])
def test_token_report_and_error_kinds_on_fixtures(name):
    fx = read_fixture(FIXTURES / f"{name}.txt")
    text, report = token_report(fx["gold"], fx["pred"])
    words = fx["counts"]["words"]
    assert report["accuracy"] == pytest.approx(words["correct"] / words["total"])
    assert "O" in report and re.search(r"^\s+O\s", text, re.M) and "weighted avg" in text
    kinds = [r["kind"] for r in entity_errors(fx["words"], fx["gold"], fx["pred"])]
    assert {k: kinds.count(k) for k in fx["counts"]["errors"]} == fx["counts"]["errors"]


def test_all_o_baseline_scores_high_per_token_and_zero_per_entity():
    fx = read_fixture(FIXTURES / "boundary.txt")
    all_o = [["O"] * len(g) for g in fx["gold"]]
    views = score_views(fx["gold"], all_o)
    share_o = sum(t == "O" for g in fx["gold"] for t in g) / sum(map(len, fx["gold"]))
    assert views["token accuracy = micro F1 (with O)"] == pytest.approx(share_o)
    assert views["entity F1, strict IOB2"] == 0 and views["token macro F1 (6 tags, no O)"] == 0
    ours = score_views(fx["gold"], fx["pred"])
    assert ours["entity F1, strict IOB2"] == pytest.approx(2 * 0.5 * 0.6 / 1.1)


def test_entity_word_errors_positions():
    gold = [["B-LOC", "I-LOC", "O", "B-PER"]]
    rows = entity_word_errors(gold, [["O", "I-LOC", "O", "B-PER"]])
    assert [(r["type"], r["position"], r["length"], r["correct"]) for r in rows] == \
        [("LOC", 0, 2, False), ("LOC", 1, 2, True), ("PER", 0, 1, True)]
    assert as_tags([[0, 1]], NAMES) == [["O", "B-PER"]]


def test_malformed_conll_fails_with_file_and_line():
    with pytest.raises(DataFormatError, match=r"malformed\.conll:4: expected 4 space-separated columns"):
        read_conll(FIXTURES / "malformed.conll")


def test_train_tagger_uses_the_gpt2_token_classifier_and_the_shared_core(tmp_path, monkeypatch, tokenizers):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tokenizers["bpe-300"]
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=len(tok), n_positions=64)).save_pretrained(
        tmp_path / "tiny")
    sents, tags = [w for w, _ in SENTENCES], [[NAMES.index(t) for t in ts] for _, ts in SENTENCES]
    examples = encode(tok, sents, tags, NAMES, "first", max_length=64)
    model, hist = train_tagger(str(tmp_path / "tiny"), NAMES, examples, epochs=5, batch_size=2, lr=1e-2, progress=False)
    assert type(model).__name__ == "GPT2ForTokenClassification" and hist[-1]["step"] == 10
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


def _random_tags(rng, n_sentences: int) -> list[list[str]]:
    """Tag sequences of every kind, ill-formed I- starts included, for comparisons with seqeval and sklearn."""
    return [[NAMES[k] for k in rng.integers(0, len(NAMES), rng.integers(1, 9))] for _ in range(n_sentences)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_sentence_counts_give_seqeval_and_sklearn_scores_on_any_subset(seed):
    import numpy as np
    from seqeval.metrics import f1_score as conlleval_f1

    from lib.ner import entity_counts, entity_types, f1_of, summed, views_from_counts, word_counts

    rng = np.random.default_rng(seed)
    gold = [g for _, g in SENTENCES] + _random_tags(rng, 30)
    pred = [[t if rng.random() < 0.6 else NAMES[rng.integers(len(NAMES))] for t in g] for g in gold]
    types = entity_types(NAMES)
    assert types == ["LOC", "MISC", "ORG", "PER"]
    for idx in (np.arange(len(gold)), rng.integers(0, len(gold), len(gold))):  # all sentences, and a resample
        g, p = [gold[i] for i in idx], [pred[i] for i in idx]
        strict, lenient = entity_counts(gold, pred, types)[idx], entity_counts(gold, pred, types, strict=False)[idx]
        report = entity_report(g, p)[1]
        assert f1_of(strict) == pytest.approx(report["micro avg"]["f1-score"], abs=1e-12)
        for k, t in enumerate(types):
            assert f1_of(strict[:, k]) == pytest.approx(report.get(t, {"f1-score": 0.0})["f1-score"], abs=1e-12)
        assert f1_of(lenient) == pytest.approx(conlleval_f1(g, p), abs=1e-12)
        macro = sorted({t for row in g for t in row} - {"O"})
        ours = views_from_counts(word_counts(gold, pred, NAMES)[idx], strict, NAMES, macro)
        assert ours == pytest.approx(score_views(g, p), abs=1e-12)
    assert f1_of(np.zeros((3, 4, 3))) == 0.0
    counts, idx = entity_counts(gold, pred, types), rng.integers(0, len(gold), 3 * len(gold))
    assert (summed(counts, idx) == counts[idx].sum(0)).all()  # repeated sentences count again


def test_bootstrap_intervals_and_paired_tests_of_entity_f1():
    import numpy as np

    from lib.ner import entity_counts, entity_types, f1_intervals, paired_f1_tests, views_with_intervals

    rng = np.random.default_rng(0)
    gold = _random_tags(rng, 200)
    good = [[t if rng.random() < 0.95 else "O" for t in g] for g in gold]
    bad = [[t if rng.random() < 0.3 else "O" for t in g] for g in gold]
    types = entity_types(NAMES)
    counts = {k: entity_counts(gold, p, types) for k, p in (("good", good), ("bad", bad))}
    ci = f1_intervals(counts["good"], types, n_boot=200)
    assert set(ci) == {*types, "micro avg"} and all(lo <= v <= hi for v, lo, hi in ci.values())
    assert ci["micro avg"][0] == pytest.approx(entity_report(gold, good)[1]["micro avg"]["f1-score"])
    diff, lo, hi, p = paired_f1_tests(counts["good"], counts["bad"], types, n_boot=200)["micro avg"]
    assert diff > 0.3 and 0 < lo <= diff <= hi and p < 0.05
    assert diff == pytest.approx(ci["micro avg"][0] - entity_report(gold, bad)[1]["micro avg"]["f1-score"])
    assert paired_f1_tests(counts["good"], counts["good"], types, n_boot=200)["micro avg"] == (0.0, 0.0, 0.0, 1.0)
    views = views_with_intervals(gold, good, NAMES, n_boot=200)
    assert {k: v[0] for k, v in views.items()} == pytest.approx(score_views(gold, good), abs=1e-12)
    assert all(lo <= v <= hi for v, lo, hi in views.values())
    with pytest.raises(ValueError, match="paired counts of one shape"):
        paired_f1_tests(counts["good"], counts["good"][:10], types)
