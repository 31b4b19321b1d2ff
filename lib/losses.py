"""The causal-LM loss by hand: shifted cross-entropy, prompt masks, its gradient, perplexity and verbalizers."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from tqdm import tqdm

IGNORE_INDEX = -100


def token_nll(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-position NLL −log p(labels[:, t+1] | tokens ≤ t), shape (B, T−1), 0 where the target is ignored."""
    logits, targets = logits[:, :-1], labels[:, 1:]  # position t predicts token t+1
    keep = targets != ignore_index
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets.masked_fill(~keep, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(keep, -picked, torch.zeros_like(picked))


def count_targets(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Number of predicted (not ignored) targets after the one-token shift."""
    return (labels[:, 1:] != ignore_index).sum()


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean",
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Causal-LM cross-entropy with log_softmax + gather: 'sum' of token NLLs, or their 'mean' per target."""
    total = token_nll(logits, labels, ignore_index).sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / count_targets(labels, ignore_index)
    raise ValueError(f"reduction={reduction!r}: expected 'mean' or 'sum'")


def mask_prompt(input_ids: torch.Tensor, prompt_lengths: int | Sequence[int] | torch.Tensor,
                attention_mask: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels: a copy of right-padded input_ids with the prompt P (and padding) set to ignore_index."""
    lengths = torch.as_tensor(prompt_lengths, device=input_ids.device).reshape(-1, 1)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    labels = input_ids.masked_fill(positions < lengths, ignore_index)  # a new tensor: input_ids is untouched
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask == 0, ignore_index)
    return labels


def softmax_minus_onehot(logits: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Analytic ∂L/∂logits of mean-reduced CE over aligned (…, V) logits and (…) targets: (softmax − onehot)/N."""
    keep = targets != ignore_index
    onehot = torch.nn.functional.one_hot(targets.masked_fill(~keep, 0), logits.shape[-1]).to(logits.dtype)
    grad = torch.softmax(logits, dim=-1) - onehot
    return grad * keep.unsqueeze(-1) / keep.sum()


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to the longest one: (input_ids, attention_mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, :len(seq)] = 1
    return ids, mask


def pad_id_of(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id (GPT-2 has no pad token); padding is masked out anyway."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float32 logits of the input positions (a soft-prompt model's virtual-token positions come first: dropped)."""
    return model(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1]:].float()


@torch.no_grad()
def sequence_nll(model, batches: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                 desc: str = "scoring") -> torch.Tensor:
    """Summed NLL of the unmasked targets of every row of every (input_ids, attention_mask, labels) batch."""
    model.eval()
    device = _device_of(model)
    out = []
    for ids, mask, labels in tqdm(batches, desc=desc, leave=False):
        logits = _logits(model, ids.to(device), mask.to(device))
        out.append(token_nll(logits, labels.to(device)).sum(dim=1).cpu())
    return torch.cat(out)


def corpus_nll(model, tokenizer, texts: Sequence[str], device: str | torch.device | None = None,
               batch_size: int = 8, max_length: int = 1024) -> tuple[float, int]:
    """(total NLL in nats, number of predicted tokens) over texts, batched with dynamic padding."""
    if device is not None:
        model.to(device)
    seqs = [tokenizer(t)["input_ids"][:max_length] for t in texts]
    seqs = sorted((s for s in seqs if len(s) >= 2), key=len, reverse=True)  # similar lengths share a batch
    batches = []
    for start in range(0, len(seqs), batch_size):
        ids, mask = pad_batch(seqs[start:start + batch_size], pad_id_of(tokenizer))
        batches.append((ids, mask, ids.masked_fill(mask == 0, IGNORE_INDEX)))
    total = sequence_nll(model, batches, desc="perplexity").double().sum().item()
    return total, sum(len(s) - 1 for s in seqs)


def perplexity(model, tokenizer, texts: Sequence[str], device: str | torch.device | None = None,
               batch_size: int = 8, max_length: int = 1024) -> float:
    """Token-weighted corpus perplexity exp(total NLL / total predicted tokens)."""
    total, n = corpus_nll(model, tokenizer, texts, device, batch_size, max_length)
    return math.exp(total / n)


@torch.no_grad()
def next_token_logprobs(model, sequences: Sequence[Sequence[int]], token_ids: Sequence[int], pad_id: int,
                        batch_size: int = 16) -> torch.Tensor:
    """(len(sequences), len(token_ids)) log p(token | sequence) for the token right after each sequence."""
    model.eval()
    device, order = _device_of(model), sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = torch.empty(len(sequences), len(token_ids))
    for start in tqdm(range(0, len(order), batch_size), desc="next token", leave=False):
        rows = order[start:start + batch_size]
        ids, mask = pad_batch([sequences[i] for i in rows], pad_id)
        logits = _logits(model, ids.to(device), mask.to(device))
        last = logits[torch.arange(len(rows)), mask.sum(1).to(device) - 1]  # right padding: the last real token
        out[rows] = torch.log_softmax(last, dim=-1)[:, list(token_ids)].cpu()
    return out


def verbalizer_logprobs(model, tokenizer, texts: Sequence[str], template: str, words: Sequence[str],
                        batch_size: int = 16) -> torch.Tensor:
    """(len(texts), len(words)) log-probabilities of each word's tokens after the template-filled prompt."""
    word_ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
    prompts = [tokenizer(template.format(text=t))["input_ids"] for t in texts]
    if all(len(w) == 1 for w in word_ids):  # one-token words: one forward pass per prompt is enough
        return next_token_logprobs(model, prompts, [w[0] for w in word_ids], pad_id_of(tokenizer), batch_size)
    pairs = [(p, w) for p in prompts for w in word_ids]  # else score prompt + word, the prompt masked out
    batches = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        ids, mask = pad_batch([p + w for p, w in chunk], pad_id_of(tokenizer))
        labels = mask_prompt(ids, [len(p) for p, _ in chunk], attention_mask=mask)
        batches.append((ids, mask, labels))
    return -sequence_nll(model, batches, desc="verbalizer").reshape(len(texts), len(words))
