"""Decoding by hand: greedy, temperature, top-k and top-p (nucleus) sampling, one token at a time."""
from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Scale by 1/temperature, keep the top_k largest, then the smallest set with probability >= top_p."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: expected > 0 (use greedy decoding for temperature 0)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p}: expected 0 < top_p <= 1")
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def stream_ids(model, ids: list[int], max_new_tokens: int = 40, greedy: bool = True, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop_ids: frozenset[int] | set[int] = frozenset()):
    """Yield new token ids one at a time after the prompt `ids` (KV cache reused); stops before a stop id."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out, cache = torch.tensor([list(ids)], device=device), None
    for _ in range(max_new_tokens):
        res = model(input_ids=out if cache is None else out[:, -1:], cache=cache, use_cache=True)
        cache, logits = res.cache, res.logits[:, -1, :].float().cpu()
        if greedy:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=gen)
        if nxt.item() in stop_ids:
            return
        yield nxt.item()
        out = torch.cat([out, nxt.to(device)], dim=1)


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 40, greedy: bool = True, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> str:
    """Continue `prompt` token by token (KV cache reused); stops at the tokenizer's eos."""
    ids = tokenizer(prompt).input_ids
    new = list(stream_ids(model, ids, max_new_tokens, greedy, temperature, top_k, top_p, seed,
                          stop_ids={tokenizer.eos_token_id}))
    return tokenizer.decode(new, skip_special_tokens=True)


def words(text: str) -> list[str]:
    """Lower-cased alphabetic words of a text (apostrophes kept: don't, lily's)."""
    import re

    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


def word_coverage(text: str, vocabulary: set[str]) -> float:
    """Share of a text's words that are real words of the reference vocabulary (1.0 for an empty text)."""
    ws = words(text)
    return sum(w in vocabulary for w in ws) / len(ws) if ws else 1.0


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct n-grams / all n-grams of the words: near 0 for a text stuck in a loop."""
    ws = words(text)
    grams = [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0
