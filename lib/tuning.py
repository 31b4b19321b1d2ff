"""Continuous prompts (连续提示), LoRA and full fine-tuning of a causal LM on a labelled task, all via lib.training.

A classification task is cast as language modelling: the input is a template-filled prompt, the target is the
label's verbalizer word, and the loss covers that word only (as chat SFT covers only the assistant's reply). Every
method then trains through the same core loop and is scored the same way, by each label word's log-probability
(`lib.losses.verbalizer_logprobs`). The methods differ only in which parameters are trainable:

- prompt tuning (Lester et al. 2021): n virtual-token vectors put before the input; the model is frozen;
- LoRA (Hu et al. 2021): low-rank updates B·A beside the attention projections; the model is frozen;
- full fine-tuning: every weight.

peft builds the first two. Its TEXT initialisation re-loads the tokenizer by hub name, which our local and GGUF models
do not have, so `soft_prompt` copies the init text's embeddings itself (the same arithmetic as peft's).
"""
from __future__ import annotations

import math
import time
from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F

from lib.losses import IGNORE_INDEX, verbalizer_logprobs
from lib.training import collate, train

INITS = ("text", "vocab", "random")


def answer_examples(tokenizer, prompts: Sequence[str], answers: Sequence[str]) -> list[dict[str, list[int]]]:
    """Prompt + answer token ids with labels on the answer tokens only (the prompt is masked with -100)."""
    out = []
    for prompt, answer in zip(prompts, answers, strict=True):
        p = tokenizer(prompt)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"]
        out.append({"input_ids": p + a, "labels": [IGNORE_INDEX] * len(p) + a})
    return out


def soft_prompt(model, n_tokens: int, init: str = "text", tokenizer=None, init_text: str = "", seed: int = 0):
    """Freeze `model` and put n trainable virtual tokens before every input (peft prompt tuning)."""
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    if init not in INITS:
        raise ValueError(f"init={init!r}: expected one of {', '.join(INITS)}")
    torch.manual_seed(seed)
    kind = PromptTuningInit.SAMPLE_VOCAB if init == "vocab" else PromptTuningInit.RANDOM
    peft_model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n_tokens,
                                                          prompt_tuning_init=kind))
    if init == "text":  # peft's TEXT init: the init text's token embeddings, repeated or cut to n_tokens
        ids = tokenizer(init_text, add_special_tokens=False)["input_ids"] if tokenizer is not None and init_text else []
        if not ids:
            raise ValueError("init='text' needs a tokenizer and a non-empty init_text")
        ids = (ids * math.ceil(n_tokens / len(ids)))[:n_tokens]
        with torch.no_grad():
            prompt_vectors(peft_model).copy_(peft_model.get_input_embeddings().weight[ids].float())
    return peft_model


def lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules: Sequence[str] | None = None):
    """Freeze `model` and add rank-r LoRA updates (peft's default targets: the attention projections)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=list(target_modules) if target_modules else None))


def prompt_vectors(peft_model) -> torch.nn.Parameter:
    """The (n_tokens, d_model) trainable soft-prompt matrix of a prompt-tuned peft model."""
    return peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight


def nearest_tokens(peft_model, tokenizer, k: int = 3) -> tuple[list[list[str]], torch.Tensor]:
    """For each virtual token, the k vocabulary tokens whose input embeddings are closest by cosine, and the cosines."""
    prompt = F.normalize(prompt_vectors(peft_model).detach().float(), dim=-1)
    vocab = F.normalize(peft_model.get_input_embeddings().weight.detach().float(), dim=-1)
    sims, ids = (prompt @ vocab.T).topk(k, dim=-1)
    return [[tokenizer.decode([i]) for i in row] for row in ids.tolist()], sims


def label_words(template) -> list[str]:
    """Each label's first continuation in a lib.prompting Template (" negative", " positive")."""
    return [template.verbalizer[label][0] for label in template.labels]


def predict(model, tokenizer, template, texts: Sequence[str], batch_size: int = 16) -> list[int]:
    """The label whose word is most likely after the filled template (works for soft-prompt and LoRA models)."""
    scores = verbalizer_logprobs(model, tokenizer, texts, template.text, label_words(template), batch_size)
    return scores.argmax(1).tolist()


def fit(model, examples: Sequence[dict], cfg, pad_id: int) -> tuple[list[dict], float]:
    """Train through lib.training.train; (history rows, wall seconds)."""
    start = time.perf_counter()
    history = train(model, examples, None, cfg, collate=partial(collate, pad_id=pad_id))
    return history, time.perf_counter() - start
