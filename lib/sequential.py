"""Sequential recommendation (序列推荐): a GPT over each user's movies in time order (SASRec).

SASRec (Kang & McAuley 2018) is a small decoder-only transformer whose tokens are item ids: it reads the items a user
interacted with, in time order, and predicts the next one. Trained with a softmax over every item — the variant that
Klenitskiy & Vasilev (RecSys 2023) found to beat the original's sampled negatives — its loss is exactly the causal-LM
loss of notebook 02, with movies for words. So the model here is notebook 03's GPT-2 architecture
(`transformers.GPT2LMHeadModel`) with a vocabulary of item ids (0 is padding, never a target), trained by the
workbook's one loop (`lib.training.train`); a user's scores are the logits after their last item.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lib.models import gpt2_lm
from lib.timing import timed
from lib.training import TrainConfig, train

PAD = 0  # item ids are 1-based; 0 pads a batch and is never a target


def item_gpt(n_items: int, length: int, n_embd: int = 64, n_layer: int = 2, n_head: int = 2, dropout: float = 0.2,
             seed: int = 0):
    """A fresh GPT-2-architecture model over item ids 1..n_items (SASRec's size: 2 blocks, dropout 0.2)."""
    return gpt2_lm(n_items + 1, length, n_embd, n_layer, n_head, dropout, seed, pad=PAD)


def sequence_windows(seqs: Sequence[Sequence[int]], length: int) -> list[dict[str, list[int]]]:
    """Training examples: each sequence cut from its end into windows of `length` items that overlap by one, so
    that every item but a user's first is a next-item target exactly once."""
    if length < 2:
        raise ValueError(f"length={length}: expected at least 2 (an item and the next one)")
    return [{"input_ids": [int(i) for i in s[max(0, e - length):e]]}
            for s in seqs for e in range(len(s), 1, -(length - 1))]


@torch.no_grad()
def next_item_scores(model, seqs: Sequence[Sequence[int]], length: int, batch_size: int = 128) -> np.ndarray:
    """(users, n_items) the model's logits for the item after each sequence's last `length` items; column j is
    item j + 1."""
    if any(len(s) == 0 for s in seqs):
        raise ValueError("next_item_scores: an empty sequence has no last item; expected at least one item each")
    was_training, out, dev = model.training, [], next(model.parameters()).device  # train() may leave it on a GPU
    model.eval()
    for i in range(0, len(seqs), batch_size):
        batch = [[int(x) for x in s[-length:]] for s in seqs[i:i + batch_size]]
        width = max(map(len, batch))
        ids = torch.tensor([s + [PAD] * (width - len(s)) for s in batch], device=dev)
        mask = (ids != PAD).long()
        logits = model(input_ids=ids, attention_mask=mask).logits
        out.append(logits[torch.arange(len(batch), device=dev), mask.sum(1) - 1, 1:].float().cpu().numpy())
    model.train(was_training)
    return np.vstack(out)


def sasrec_scores(seqs: Sequence[Sequence[int]], n_items: int, epochs: int, length: int = 50, n_embd: int = 64,
                  lr: float = 3e-3, batch_size: int = 32, seed: int = 0,
                  progress: bool = False) -> tuple[np.ndarray, list[dict], float]:
    """Train a fresh `item_gpt` on the sequences' windows for `epochs` passes; (next-item scores, history, seconds)."""
    windows = sequence_windows(seqs, length)
    model = item_gpt(n_items, length, n_embd, seed=seed)
    steps = max(1, epochs * len(windows) // batch_size)
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, weight_decay=0.0, warmup_steps=min(100, steps),
                      seed=seed, progress=progress, mixed_precision="fp32", log_every=max(1, steps // 20),
                      tracker="none")
    history, ms = timed(train, model, windows, None, cfg)
    return next_item_scores(model, seqs, length), list(history), ms / 1e3
