"""Prompt tuning, LoRA and the answer-only examples, on a tiny GPT-2 with the real GPT-2 tokenizer and SST-2 data."""
from functools import partial

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lib.data import load_classification
from lib.losses import IGNORE_INDEX, verbalizer_logprobs
from lib.models import count_parameters, load_tokenizer
from lib.training import TrainConfig, collate, train
from lib.tuning import answer_examples, lora, nearest_tokens, prompt_vectors, soft_prompt

TEMPLATE = "Review: {text}\nSentiment:"
WORDS = [" negative", " positive"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def sst2(tok):
    ds = load_classification("sst2")
    texts, labels = ds["text"][:48], ds["label"][:48]
    return texts, labels, answer_examples(tok, [TEMPLATE.format(text=t) for t in texts], [WORDS[y] for y in labels])


def tiny(tok, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(tok), n_positions=128,
                                      loss_type="ForCausalLM")).eval()


def fit(model, examples, tok, steps: int = 12, lr: float = 3e-2):
    cfg = TrainConfig(max_steps=steps, batch_size=8, lr=lr, weight_decay=0.0, progress=False)
    return train(model, examples, None, cfg, collate=partial(collate, pad_id=tok.eos_token_id))


def test_answer_examples_label_only_the_answer(tok, sst2):
    ex = sst2[2][0]
    answer = tok(WORDS[sst2[1][0]], add_special_tokens=False)["input_ids"]
    assert ex["input_ids"][-len(answer):] == answer
    assert ex["labels"] == [IGNORE_INDEX] * (len(ex["input_ids"]) - len(answer)) + answer


def test_text_init_copies_the_text_embeddings_and_nearest_tokens_recover_it(tok):
    model = soft_prompt(tiny(tok), 6, "text", tok, "Is it good or bad?")
    ids = tok("Is it good or bad?", add_special_tokens=False)["input_ids"]  # 6 tokens
    assert torch.equal(prompt_vectors(model).detach(), model.get_input_embeddings().weight[ids].detach())
    words, sims = nearest_tokens(model, tok, k=1)
    assert [w[0] for w in words] == [tok.decode([i]) for i in ids]
    assert torch.allclose(sims[:, 0], torch.ones(6), atol=1e-5)


def test_prompt_tuning_trains_only_the_prompt(tok, sst2):
    model = soft_prompt(tiny(tok), 4, "vocab", tok, seed=1)
    assert count_parameters(model, trainable_only=True) == 4 * 32
    frozen = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    before = prompt_vectors(model).detach().clone()
    hist = fit(model, sst2[2], tok)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert not torch.equal(prompt_vectors(model).detach(), before)
    assert all(torch.equal(v, model.base_model.state_dict()[k]) for k, v in frozen.items())


def test_scoring_a_soft_prompt_model_skips_its_virtual_positions(tok, sst2):
    model = soft_prompt(tiny(tok), 3, "random", seed=2).eval()
    texts = sst2[0][:3]
    got = verbalizer_logprobs(model, tok, texts, TEMPLATE, WORDS)
    base, prompt = model.get_base_model(), prompt_vectors(model).detach()
    for i, text in enumerate(texts):  # by hand: [prompt vectors; token embeddings], the next-token distribution
        ids = torch.tensor([tok(TEMPLATE.format(text=text))["input_ids"]])
        embeds = torch.cat([prompt[None], base.get_input_embeddings()(ids)], dim=1)
        logp = torch.log_softmax(base(inputs_embeds=embeds).logits[0, -1], -1)
        word_ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in WORDS]
        assert torch.allclose(got[i], logp[word_ids], atol=1e-5)


def test_lora_trains_low_rank_updates_only(tok, sst2):
    model = lora(tiny(tok), r=4, alpha=8)
    # GPT-2's c_attn maps 32 -> 96 in each of 2 blocks: A is 4x32, B is 96x4
    assert count_parameters(model, trainable_only=True) == 2 * 4 * (32 + 96)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    hist = fit(model, sst2[2], tok, lr=1e-2)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())


def test_bad_init_names_the_choices(tok):
    with pytest.raises(ValueError, match="expected one of text, vocab, random"):
        soft_prompt(tiny(tok), 2, "zeros")
    with pytest.raises(ValueError, match="non-empty init_text"):
        soft_prompt(tiny(tok), 2, "text", tok)
