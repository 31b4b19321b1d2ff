"""lib.retrieval: BM25 against the formula on a tiny corpus, dense cosine, reciprocal rank fusion and the metrics."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

from lib.retrieval import (BM25, Dense, embed, greedy_fusion, group_max, mrr, ranks, recall_at_k, reciprocal_ranks,
                           rrf, tokenize)

DOCS = ["card card delivery", "card fee", "transfer fee fee fee", "exchange rate"]


def lucene_bm25(query: list[str], docs: list[list[str]], k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Lucene's BM25 written out: idf = ln(1 + (N - df + 0.5) / (df + 0.5)) times tf / (tf + k1 (1 - b + b dl/avgdl))
    (Lucene drops the classic (k1 + 1) factor of the numerator: the same ranking, scores divided by k1 + 1)."""
    n, avgdl = len(docs), sum(map(len, docs)) / len(docs)
    out = []
    for d in docs:
        s = 0.0
        for t in set(query):
            df = sum(t in x for x in docs)
            tf = d.count(t)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            s += idf * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))
        out.append(s)
    return out


def test_tokenize_stems_and_drops_stop_words():
    assert tokenize(["The cards arrived", "Arriving card"]) == [["card", "arriv"], ["arriv", "card"]]


def test_bm25_matches_the_formula_and_ranks_as_expected():
    index = BM25(DOCS)
    s = index.scores(["card fee"])
    expected = lucene_bm25(["card", "fee"], [d.split() for d in DOCS])
    np.testing.assert_allclose(s[0], expected, rtol=1e-5)
    assert ranks(s)[0].tolist() == [1, 2, 0, 3]  # both words first; then 3 x fee beats 2 x card; doc 3 shares none
    assert index.scores(["exchange"])[0].argmax() == 3


def test_bm25_unknown_words_score_zero():
    s = BM25(DOCS).scores(["zebra quantum", "the of and"])
    assert s.shape == (2, 4) and not s.any()


def test_bm25_needs_documents():
    with pytest.raises(ValueError, match="at least one document"):
        BM25([])


def test_dense_is_cosine():
    docs = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    q = np.array([[0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(Dense(docs).scores_from(q), [[0.0, 0.8]], atol=1e-6)


def test_rrf_adds_reciprocal_ranks():
    a = np.array([[3.0, 2.0, 1.0]])  # ranks 1, 2, 3
    b = np.array([[1.0, 3.0, 2.0]])  # ranks 3, 1, 2
    fused = rrf([a, b], k=60)
    np.testing.assert_allclose(fused[0], [1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62])
    assert ranks(fused)[0].tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="same shape"):
        rrf([a, np.zeros((1, 2))])


def test_metrics_on_a_known_ranking():
    s = np.array([[0.9, 0.5, 0.1], [0.1, 0.5, 0.9], [0.2, 0.9, 0.5]])
    gold = [0, 1, 0]  # ranks 1, 2, 3
    assert recall_at_k(s, gold, 1) == pytest.approx(1 / 3)
    assert recall_at_k(s, gold, 2) == pytest.approx(2 / 3)
    assert recall_at_k(s, gold, 3) == 1.0
    np.testing.assert_allclose(reciprocal_ranks(s, gold), [1, 1 / 2, 1 / 3])
    assert mrr(s, gold) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_group_max_takes_the_best_document_of_each_group():
    s = np.array([[0.1, 0.7, 0.3, 0.2]])
    np.testing.assert_allclose(group_max(s, [0, 0, 1, 1], 3)[0], [0.7, 0.3, -np.inf])


def test_greedy_fusion_adds_members_while_recall_grows():
    gold = [0, 1, 2, 3]
    a = np.eye(4)[[0, 1, 3, 2]] * 1.0  # right for queries 0 and 1
    b = np.eye(4)[[1, 0, 2, 3]] * 1.0  # right for queries 2 and 3
    c = np.eye(4)[[3, 2, 1, 0]] * 1.0  # right for none
    noisy = a + 0.5 * b  # right for 0 and 1, second best for 2 and 3
    scores = {"a": a, "b": b, "c": c, "noisy": noisy}
    pick = greedy_fusion(scores, gold, k=1)
    assert pick[0] in ("a", "noisy") and "c" not in pick
    fused = recall_at_k(rrf([scores[n] for n in pick]), gold, 1)
    assert fused >= max(recall_at_k(s, gold, 1) for s in scores.values())
    assert greedy_fusion({"a": a, "c": c}, gold, k=1) == ["a"]  # c raises nothing: stop at one member


def _tiny_bert():
    """A seeded two-block BERT with a ten-word vocabulary, and its tokenizer: (tokenizer, model)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "my", "card", "has", "not", "arrived", "fee"]
    path = Path(tempfile.mkdtemp()) / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(path))
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=32)).eval()
    return tok, model


def test_embed_pools_an_encoder_over_its_special_tokens():
    """blocks=None runs a bidirectional encoder whole; special_tokens adds [CLS]/[SEP]; padding leaves no trace."""
    import torch

    tok, model = _tiny_bert()
    texts = ["my card has not arrived", "fee"]
    out = embed(model, tok, texts, special_tokens=True)
    for text, row in zip(texts, out):
        enc = tok(text, return_tensors="pt")
        assert enc["input_ids"][0, 0] == tok.cls_token_id and enc["input_ids"][0, -1] == tok.sep_token_id
        with torch.no_grad():
            mean = model(**enc).last_hidden_state[0].mean(0)
        np.testing.assert_allclose(row, torch.nn.functional.normalize(mean, dim=0).numpy(), atol=1e-5)


def test_a_compiled_encoder_gives_the_eager_vectors():
    """compile_for_inference replaces the instance's forward (which embed reaches through base_model); same vectors."""
    from lib.models import compile_for_inference

    tok, model = _tiny_bert()
    texts = ["my card has not arrived", "fee", "card fee"]
    eager = embed(model, tok, texts, special_tokens=True)
    compiled = compile_for_inference(model)
    assert compiled.base_model.forward is not type(model).forward.__get__(model)
    rows = np.vstack([embed(compiled, tok, [t], special_tokens=True) for t in texts])  # one at a time, as served
    np.testing.assert_allclose(rows, eager, atol=1e-4)


def test_embed_refuses_zero_blocks():
    """blocks=0 once meant "all blocks" by accident (0 is falsy); now it is an error that names the parameter."""
    tok, model = _tiny_bert()
    with pytest.raises(ValueError, match="blocks=0"):
        embed(model, tok, ["fee"], blocks=0)
