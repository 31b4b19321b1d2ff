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

`sweep_then_seeds` picks a method's learning rate on a validation split at the first seed and reruns the picked rate
at the other seeds; `compare` and `paired_tests` turn the test predictions of every method and seed into a table with
95% intervals and exact McNemar tests (`lib.stats`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lib.losses import IGNORE_INDEX, pad_id_of, verbalizer_logprobs
from lib.prompting import metrics
from lib.stats import accuracy_interval, bootstrap_interval, mcnemar
from lib.timing import timed
from lib.training import TrainConfig, collate, cosine_schedule, train

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


def lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules: Sequence[str] | None = None,
         seed: int = 0, task_type: str = "CAUSAL_LM"):
    """Freeze `model` and add rank-r LoRA updates (peft's default targets: the attention projections);
    A drawn with seed.

    task_type: peft's, e.g. "TOKEN_CLS" for a token classifier (its new head then trains in full)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(task_type=task_type, r=r, lora_alpha=alpha, lora_dropout=dropout,
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
    history, ms = timed(train, model, examples, None, cfg, collate=partial(collate, pad_id=pad_id))
    return history, ms / 1e3


def adam_move_bound(cfg: TrainConfig) -> float:
    """The farthest AdamW without weight decay can move any one parameter in a run of `cfg`, whatever the gradients.

    Step t moves a parameter by lr_t · m̂_t / (√v̂_t + ε), and by Cauchy-Schwarz |m̂_t| / √v̂_t ≤ √(Σ_k a_k² / b_k),
    with a_k and b_k the weights of gradient k in m̂_t and v̂_t. lr_t is read off the very schedule `train` uses.
    """
    if cfg.weight_decay:
        raise ValueError(f"adam_move_bound: weight_decay={cfg.weight_decay} also moves parameters; expected 0")
    b1, b2 = cfg.betas
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    sched, total = cosine_schedule(opt, cfg), 0.0
    for t in range(1, cfg.max_steps + 1):
        k = np.arange(1, t + 1)
        a = (1 - b1) * b1 ** (t - k) / (1 - b1 ** t)
        b = (1 - b2) * b2 ** (t - k) / (1 - b2 ** t)
        total += sched.get_last_lr()[0] * float(np.sqrt((a * a / b).sum()))
        opt.step()
        sched.step()
    return total


def moved(after: torch.Tensor, before: torch.Tensor) -> dict[str, float]:
    """How far a tensor moved: relative to its length (Frobenius) and the largest single-entry change."""
    delta = (after.detach().float() - before.detach().float())
    return {"moved": (delta.norm() / before.float().norm()).item(), "max_move": delta.abs().max().item()}


@dataclass(frozen=True)
class EvalSet:
    """Labelled texts scored the one way every method is scored: the label words' log-probabilities."""

    tokenizer: Any
    template: Any  # a lib.prompting Template
    texts: list[str]
    labels: list[int]

    @classmethod
    def of(cls, tokenizer, template, pairs: Sequence[tuple[str, int]]) -> EvalSet:
        """From (text, label) pairs."""
        return cls(tokenizer, template, [t for t, _ in pairs], [y for _, y in pairs])

    def scores(self, model) -> torch.Tensor:
        """(n, n_labels) log-probabilities of each label word after the filled template."""
        return verbalizer_logprobs(model, self.tokenizer, self.texts, self.template.text, label_words(self.template))

    def correct(self, model) -> np.ndarray:
        """Per text: is the model's most likely label the right one."""
        return self.scores(model).argmax(1).numpy() == np.asarray(self.labels)

    def accuracy(self, model) -> float:
        """Accuracy of the model's most likely label."""
        return float(self.correct(model).mean())


@dataclass
class Tuned:
    """One trained method: its learning-rate sweep at the first seed, the picked rate, and every seed's test scores."""

    sweep: pd.DataFrame  # index lr: val_accuracy (+ Wilson val_low, val_high), loss_first, loss_last, wall_s, extras
    best_lr: float
    seeds: list[int]
    scores: list[torch.Tensor]  # per seed: (n_test, n_labels) label log-probabilities on the test set
    walls: list[float]  # per seed: training seconds at best_lr
    histories: dict[float, list[dict]]  # first seed's training history at each lr
    model: Any  # the first seed's model at best_lr
    kept: dict[float, Any] = field(default_factory=dict)  # first seed's models at the lrs asked for

    @property
    def preds(self) -> np.ndarray:
        """(n_seeds, n_test) predicted labels."""
        return np.stack([s.argmax(1).numpy() for s in self.scores])


def sweep_then_seeds(make: Callable[[int], Any], train_set: Sequence[dict], config: Callable[[float, int], TrainConfig],
                     lrs: Sequence[float], seeds: Sequence[int], val: EvalSet, test: EvalSet,
                     extra: Callable[[Any], dict] | None = None, keep: Sequence[float] = ()) -> Tuned:
    """Train make(seeds[0]) at every lr, pick the best validation accuracy (ties: lower final loss), rerun it at the
    other seeds; score the picked runs on `test`. `extra(model)` adds sweep columns; `keep` keeps those lrs' models."""
    rows, histories, kept, best = {}, {}, {}, None
    for lr in lrs:
        model = make(seeds[0])
        histories[lr], wall = fit(model, train_set, config(lr, seeds[0]), pad_id_of(val.tokenizer))
        acc, low, high = accuracy_interval(val.correct(model))
        rows[lr] = {"val_accuracy": acc, "val_low": low, "val_high": high, "loss_first": histories[lr][0]["train_loss"],
                    "loss_last": histories[lr][-1]["train_loss"], "wall_s": wall, **(extra(model) if extra else {})}
        rank = (rows[lr]["val_accuracy"], -rows[lr]["loss_last"])
        if best is None or rank > best[0]:
            best = (rank, lr, model)
        if lr in keep:
            kept[lr] = model
    _, best_lr, best_model = best
    scores, walls = [test.scores(best_model)], [rows[best_lr]["wall_s"]]
    for seed in seeds[1:]:
        model = make(seed)
        _, wall = fit(model, train_set, config(best_lr, seed), pad_id_of(val.tokenizer))
        scores.append(test.scores(model))
        walls.append(wall)
    sweep = pd.DataFrame.from_dict(rows, orient="index").rename_axis("lr")
    return Tuned(sweep, best_lr, list(seeds), scores, walls, histories, best_model, kept)


def _runs(preds: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Predictions as an (n_runs, n_items) int array (one run may be given as a flat list)."""
    a = np.asarray(preds)
    return a[None] if a.ndim == 1 else a


def compare(y_true: Sequence[int], methods: Mapping[str, Any], n_labels: int = 2, seed: int = 0) -> pd.DataFrame:
    """Per method: runs, mean and sd of test accuracy over runs, a 95% bootstrap interval over the test items of the
    run-mean accuracy (each item's share of runs that got it right, resampled), and mean macro-F1."""
    y, rows = np.asarray(y_true), {}
    for name, preds in methods.items():
        runs = _runs(preds)
        correct = (runs == y).astype(float)
        acc, lo, hi = bootstrap_interval(lambda idx: correct[:, idx].mean(), len(y), seed=seed)
        accs = correct.mean(1)
        rows[name] = {"runs": len(runs), "accuracy": acc, "sd": float(accs.std(ddof=1)) if len(runs) > 1 else 0.0,
                      "ci_low": lo, "ci_high": hi,
                      "macro_f1": float(np.mean([metrics(y, r, n_labels)["macro_f1"] for r in runs]))}
    return pd.DataFrame.from_dict(rows, orient="index")


def paired_tests(y_true: Sequence[int], methods: Mapping[str, Any], pairs: Sequence[tuple[str, str]],
                 alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """Per pair (a, b): the run-mean accuracy difference a - b with its paired 95% bootstrap interval over the items,
    and exact McNemar p-values of run i of a against run i of b on the same items (a single run is paired with every
    run of the other); `real` when every p < alpha, an intersection-union test of level alpha."""
    y, rows = np.asarray(y_true), []
    for a, b in pairs:
        ra, rb = _runs(methods[a]) == y, _runs(methods[b]) == y
        if len(ra) != len(rb) and 1 not in (len(ra), len(rb)):
            raise ValueError(f"paired_tests: {a} has {len(ra)} runs and {b} {len(rb)}; expected equal counts or one")
        n = max(len(ra), len(rb))
        ps = [mcnemar(ra[i % len(ra)], rb[i % len(rb)]) for i in range(n)]
        diff, low, high = bootstrap_interval(lambda idx: ra[:, idx].mean() - rb[:, idx].mean(), len(y), seed=seed)
        rows.append({"a": a, "b": b, "difference": diff, "diff_low": low, "diff_high": high,
                     "mcnemar_p": " / ".join(f"{p:.3f}" for p in ps), "max_p": max(ps), "real": max(ps) < alpha})
    return pd.DataFrame(rows)
