"""lib.losses against transformers' own loss, autograd and finite differences, on a tiny random GPT-2."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from lib.losses import (causal_lm_loss, count_targets, mask_prompt, pad_batch, perplexity, softmax_minus_onehot,
                        verbalizer_logprobs)

VOCAB = 101


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


class CharTokenizer:
    """Characters to ids 1..100; no pad token, eos 0 (like GPT-2)."""

    pad_token_id = None
    eos_token_id = 0

    def __call__(self, text: str, **kwargs) -> dict[str, list[int]]:
        return {"input_ids": [1 + ord(c) % (VOCAB - 1) for c in text]}


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return pad_batch([torch.randint(1, VOCAB, (n,)).tolist() for n in (12, 7, 9)], pad_id=0)


def test_hand_loss_equals_model_loss(model):
    ids, mask = batch()
    labels = ids.masked_fill(mask == 0, -100)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert abs(causal_lm_loss(out.logits, labels) - out.loss) <= 1e-6 * out.loss  # relative: float32 precision


def test_hand_loss_equals_model_loss_with_prompt_mask(model):
    ids, mask = batch()
    labels = mask_prompt(ids, [4, 2, 5], attention_mask=mask)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert abs(causal_lm_loss(out.logits, labels) - out.loss) <= 1e-6 * out.loss  # relative: float32 precision


def test_hand_loss_equals_shifted_cross_entropy_in_float64():
    torch.manual_seed(3)
    logits = torch.randn(3, 8, VOCAB, dtype=torch.float64)
    labels = torch.randint(0, VOCAB, (3, 8))
    labels[1, :4] = -100
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert abs(causal_lm_loss(logits, labels) - reference).item() <= 1e-12


def test_sum_is_mean_times_targets(model):
    ids, mask = batch()
    labels = mask_prompt(ids, [3, 3, 3], attention_mask=mask)
    logits = model(input_ids=ids, attention_mask=mask).logits
    n = count_targets(labels)
    assert n.item() == (12 - 3) + (7 - 3) + (9 - 3)  # the targets are the tokens at positions 3, 4, ...
    total, mean = causal_lm_loss(logits, labels, "sum"), causal_lm_loss(logits, labels, "mean")
    assert torch.allclose(total, mean * n, rtol=1e-6)
    with pytest.raises(ValueError):
        causal_lm_loss(logits, labels, "max")


def test_mask_prompt_masks_exactly_the_prompt():
    ids = torch.arange(1, 13).reshape(2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    labels = mask_prompt(ids, [2, 3], attention_mask=mask)
    assert labels.tolist() == [[-100, -100, 3, 4, 5, 6], [-100, -100, -100, 10, -100, -100]]
    assert mask_prompt(ids, 1).tolist() == [[-100, 2, 3, 4, 5, 6], [-100, 8, 9, 10, 11, 12]]
    assert ids[0, 0].item() == 1  # the input is not modified


def test_analytic_gradient_equals_autograd(model):
    ids, mask = batch()
    labels = mask_prompt(ids, [4, 2, 5], attention_mask=mask)
    logits = model(input_ids=ids, attention_mask=mask).logits.detach().requires_grad_(True)
    causal_lm_loss(logits, labels).backward()
    analytic = softmax_minus_onehot(logits.detach()[:, :-1], labels[:, 1:])
    assert torch.allclose(logits.grad[:, :-1], analytic, atol=1e-8)
    assert torch.all(logits.grad[:, -1] == 0)  # the last position predicts nothing


def test_gradcheck_float64():
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, :2] = -100
    for reduction in ("mean", "sum"):
        assert torch.autograd.gradcheck(lambda z: causal_lm_loss(z, labels, reduction), (logits,))


def test_perplexity_of_uniform_model_is_vocab_size():
    torch.manual_seed(0)
    uniform = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=64))
    torch.nn.init.zeros_(uniform.lm_head.weight)  # tied with the input embedding: every logit is 0
    ppl = perplexity(uniform, CharTokenizer(), ["hello world", "a", "uniform predictions", "xyz"], "cpu")
    assert math.isclose(ppl, VOCAB, rel_tol=1e-5)


def test_perplexity_is_batch_invariant_and_matches_model_loss(model):
    texts = ["the cat sat on the mat", "hi", "dynamic padding must not change anything", "abc"]
    tok = CharTokenizer()
    p1, p3 = perplexity(model, tok, texts, "cpu", batch_size=1), perplexity(model, tok, texts, "cpu", batch_size=3)
    assert math.isclose(p1, p3, rel_tol=1e-5)
    ids = torch.tensor([tok(texts[0])["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert math.isclose(perplexity(model, tok, texts[:1], "cpu"), math.exp(loss), rel_tol=1e-5)


def test_verbalizer_logprobs_and_binary_cross_entropy(model):
    tok = CharTokenizer()
    texts, template = ["good film", "bad film", "meh"], "Review: {text}\nSentiment:"
    lp = verbalizer_logprobs(model, tok, texts, template, [" no", " yes"], batch_size=4)
    assert lp.shape == (3, 2) and torch.all(lp < 0)
    prompt = tok(template.format(text=texts[1]))["input_ids"]
    ids = torch.tensor([prompt + tok(" yes")["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    manual = -causal_lm_loss(logits, mask_prompt(ids, len(prompt)), "sum")
    assert torch.allclose(lp[1, 1], manual, atol=1e-5)
    y = torch.tensor([1, 0, 1])
    two_class = F.cross_entropy(lp, y)
    assert torch.allclose(two_class, F.binary_cross_entropy_with_logits(lp[:, 1] - lp[:, 0], y.float()), atol=1e-6)


def test_one_token_verbalizer_fast_path_matches_full_scoring(model):
    tok = CharTokenizer()
    texts, template = ["a long review of a film", "short", "mid length"], "R: {text} S:"
    fast = verbalizer_logprobs(model, tok, texts, template, ["n", "y"], batch_size=2)  # one token each
    for row, text in enumerate(texts):
        prompt = tok(template.format(text=text))["input_ids"]
        for col, word in enumerate(["n", "y"]):
            ids = torch.tensor([prompt + tok(word)["input_ids"]])
            with torch.no_grad():
                logits = model(input_ids=ids).logits
            slow = -causal_lm_loss(logits, mask_prompt(ids, len(prompt)), "sum")
            assert torch.allclose(fast[row, col], slow, atol=1e-5)
