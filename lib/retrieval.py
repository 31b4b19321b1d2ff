"""Retrieval (检索): BM25 over words, dense vectors from a language model, their reciprocal rank fusion, and metrics.

Three retrievers share one shape: `scores(queries) -> (n_queries, n_docs)` array, higher is better.

- `BM25` ranks by term overlap (Robertson & Zaragoza 2009), through `bm25s`, with English stop words removed and
  Snowball stemming ("arrived" and "arriving" both become "arriv").
- `Dense` embeds queries and documents (`embed`: a causal LM's hidden states, or a sentence encoder such as
  all-MiniLM-L6-v2, mean over the tokens) and ranks by cosine.
- `rrf` fuses rankings: each document gets sum over retrievers of 1 / (k + rank) (Cormack et al. 2009, k = 60);
  `greedy_fusion` picks its members on validation.

`recall_at_k` and `mrr` score a ranking against the index of the one right document per query.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased word stems without English stop words (bm25s's tokenizer with the Snowball stemmer)."""
    import bm25s

    return bm25s.tokenize(list(texts), stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


@dataclass
class BM25:
    """A BM25 index over documents (bm25s, Lucene's variant, k1 = 1.5, b = 0.75)."""

    docs: Sequence[str]
    k1: float = 1.5
    b: float = 0.75
    _index: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        import bm25s

        if not self.docs:
            raise ValueError("BM25: expected at least one document")
        self._index = bm25s.BM25(k1=self.k1, b=self.b)
        self._index.index(tokenize(self.docs), show_progress=False)
        self._vocab = set(self._index.vocab_dict)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(n_queries, n_docs) BM25 scores; a query with no indexed word scores 0 everywhere."""
        out = np.zeros((len(queries), len(self.docs)), dtype=np.float32)
        for i, toks in enumerate(tokenize(queries)):
            known = [t for t in toks if t in self._vocab]
            if known:
                out[i] = self._index.get_scores(known)
        return out


def _blocks(model) -> tuple[object, str]:
    """(module holding the transformer blocks, attribute name): Llama-style `layers` or GPT-2's `h`."""
    base = model.base_model
    return base, "layers" if hasattr(base, "layers") else "h"


@torch.no_grad()
def embed(model, tokenizer, texts: Sequence[str], blocks: int | None = None, batch_size: int = 32,
          max_tokens: int = 128, pool: str = "mean", special_tokens: bool = False) -> np.ndarray:
    """(n, d) L2-normalised hidden states after the first `blocks` transformer blocks (None: all of them; the later
    blocks are not run at all), pooled over each text's tokens: their mean, or the last token's (`pool="last"`).
    special_tokens: add the tokenizer's own ([CLS] ... [SEP] for a sentence encoder such as all-MiniLM-L6-v2)."""
    if pool not in ("mean", "last"):
        raise ValueError(f"pool={pool!r}: expected 'mean' or 'last'")
    if blocks is not None and blocks < 1:
        raise ValueError(f"blocks={blocks!r}: expected a positive number of blocks, or None for all of them")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    base, attr = _blocks(model) if blocks is not None else (model.base_model, None)
    full = getattr(base, attr) if attr else None
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    if attr:
        setattr(base, attr, full[:blocks])
    try:
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = [tokenizer(texts[i], add_special_tokens=special_tokens)["input_ids"] or [pad] for i in idx]
            enc = [e[:max_tokens] if pool == "mean" else e[-max_tokens:] for e in enc]  # "last" keeps the end
            width = max(map(len, enc))
            ids = torch.tensor([e + [pad] * (width - len(e)) for e in enc], device=device)
            mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in enc], device=device)
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            if pool == "mean":
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            else:
                pooled = hidden[torch.arange(len(idx), device=device), mask.sum(1) - 1]
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
    finally:
        if attr:
            setattr(base, attr, full)
    return out


@dataclass
class Dense:
    """Cosine similarity between precomputed, L2-normalised query and document vectors."""

    doc_vectors: np.ndarray

    def scores_from(self, query_vectors: np.ndarray) -> np.ndarray:
        """(n_queries, n_docs) cosine similarities."""
        return query_vectors @ self.doc_vectors.T


def ranks(scores: np.ndarray) -> np.ndarray:
    """(n_queries, n_docs) document indices, best first (ties: lower index first)."""
    return np.argsort(-scores, axis=1, kind="stable")


def rrf(score_matrices: Sequence[np.ndarray], k: float = 60.0) -> np.ndarray:
    """Reciprocal rank fusion: (n_queries, n_docs) sum over retrievers of 1 / (k + rank), rank 1 = best."""
    fused = np.zeros_like(score_matrices[0], dtype=np.float64)
    rows = np.arange(fused.shape[0])[:, None]
    for s in score_matrices:
        if s.shape != fused.shape:
            raise ValueError(f"rrf: score matrices of shapes {fused.shape} and {s.shape}; expected the same shape")
        fused[rows, ranks(s)] += 1.0 / (k + np.arange(1, s.shape[1] + 1))
    return fused


def group_max(scores: np.ndarray, groups: Sequence[int], n_groups: int) -> np.ndarray:
    """(n_queries, n_groups) best score of each group's documents (-inf for a group without documents)."""
    out = np.full((scores.shape[0], n_groups), -np.inf, dtype=np.float64)
    for g in range(n_groups):
        cols = [j for j, x in enumerate(groups) if x == g]
        if cols:
            out[:, g] = scores[:, cols].max(1)
    return out


def recall_at_k(scores: np.ndarray, gold: Sequence[int], k: int) -> float:
    """Share of queries whose right document is among the k best."""
    top = ranks(scores)[:, :k]
    return float(np.mean([g in row for g, row in zip(gold, top, strict=True)]))


def reciprocal_ranks(scores: np.ndarray, gold: Sequence[int]) -> np.ndarray:
    """1 / rank of the right document, per query (rank 1 = best)."""
    r = ranks(scores)
    return np.array([1.0 / (1 + int(np.flatnonzero(row == g)[0])) for g, row in zip(gold, r, strict=True)])


def mrr(scores: np.ndarray, gold: Sequence[int]) -> float:
    """Mean reciprocal rank of the right document."""
    return float(reciprocal_ranks(scores, gold).mean())


def greedy_fusion(scores: Mapping[str, np.ndarray], gold: Sequence[int], k: int = 5) -> list[str]:
    """Members of an RRF fusion picked greedily (on validation): start from the best single retriever by recall@k,
    add the one that raises the fusion's recall@k most, stop when none raises it (ties: fewer members)."""
    pick = [max(scores, key=lambda n: recall_at_k(scores[n], gold, k))]
    best = recall_at_k(scores[pick[0]], gold, k)
    while rest := [n for n in scores if n not in pick]:
        gain = {n: recall_at_k(rrf([scores[m] for m in [*pick, n]]), gold, k) for n in rest}
        top = max(rest, key=gain.get)
        if gain[top] <= best:
            break
        pick, best = [*pick, top], gain[top]
    return pick
