"""Prompt-based classification: templates as data, shared-prefix label scoring, calibration, k-shot prompts, metrics.

Tokenization convention (the same in every scorer here): the few-shot prefix, the filled template and each label's
continuation are tokenized separately and their ids concatenated. Only the first segment gets the tokenizer's
special tokens; a continuation carries its own leading space (" positive"), as BPE tokenizers expect mid-text.
"""
from __future__ import annotations

import copy
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import yaml
from tqdm import tqdm

from lib.data import data_error, load_yaml
from lib.losses import mask_prompt, pad_batch, pad_id_of, sequence_nll
from lib.models import context_length

TEMPLATES_FILE = Path(__file__).with_name("templates.yaml")
CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. 2021, "Calibrate Before Use"
METHODS = ("sum", "token", "char")  # summed log-likelihood; per token; per character (lm-eval's acc_norm)


@dataclass(frozen=True)
class Template:
    """A prompt: text with a {text} slot, and each label's continuation(s); the first one is used in demonstrations."""

    name: str
    text: str
    verbalizer: Mapping[str, tuple[str, ...]]
    instruction: str = ""  # put once before the demonstrations (or before the prompt at k = 0)
    separator: str = "\n\n"  # between demonstrations, and between the last one and the query
    source: str = ""
    strip: bool = True  # strip the input's surrounding whitespace; False feeds it as stored (lm-eval's protocol)

    @property
    def labels(self) -> list[str]:
        """Label names in verbalizer order."""
        return list(self.verbalizer)

    def prompt(self, text: str) -> str:
        """The filled template (str.replace, so braces inside the input are safe); the input stripped if `strip`."""
        return self.text.replace("{text}", text.strip() if self.strip else text)

    def demonstration(self, text: str, label: str) -> str:
        """A solved example: the filled template followed by the label's first continuation."""
        return self.prompt(text) + self.verbalizer[label][0]

    def lower(self) -> Template:
        """A lower-cased copy, for models trained on lower-cased text (mini-gpt)."""
        return replace(self, text=self.text.lower(), instruction=self.instruction.lower(),
                       verbalizer={k: tuple(c.lower() for c in v) for k, v in self.verbalizer.items()})


def _verbalizer(spec, label_names: Sequence[str], where: str) -> dict[str, tuple[str, ...]]:
    """A verbalizer from YAML: 'names' (" " + lower-cased name, _ as spaces) or {label: str | [str, ...]}
    for every label."""
    if spec == "names":
        return {n: (" " + n.replace("_", " ").lower(),) for n in label_names}
    if not isinstance(spec, dict) or set(spec) != set(label_names):
        raise ValueError(f"{where}: verbalizer must be 'names' or map every label ({', '.join(label_names[:6])}) "
                         f"to a string or a list of strings; got {spec!r:.80}")
    out = {}
    for n in label_names:
        v = (spec[n],) if isinstance(spec[n], str) else tuple(spec[n])
        if not v or not all(isinstance(c, str) and c for c in v):
            raise ValueError(f"{where}: verbalizer[{n!r}] must be a non-empty string or list of them")
        out[n] = v
    return out


def load_templates(task: str, label_names: Sequence[str], path: Path = TEMPLATES_FILE) -> list[Template]:
    """The templates of `task` from the YAML file, their verbalizers resolved against the dataset's label names."""
    tasks = load_yaml(path)  # a syntax error names file:line
    if not isinstance(tasks, dict):
        raise data_error(path, 1, f"expected a mapping of task name -> {{verbalizer, templates}}, got "
                                  f"{type(tasks).__name__}")
    if task not in tasks:
        raise KeyError(f"{path}: no task {task!r}; expected one of {', '.join(tasks)}")
    lines = {k.value: v for k, v in yaml.compose(Path(path).read_text(encoding="utf-8")).value}[task]
    if not isinstance(tasks[task], dict) or not isinstance(tasks[task].get("templates", []), list):
        raise data_error(path, lines.start_mark.line + 1, f"task {task!r}: expected a mapping with 'templates' (a "
                                                          "list) and an optional 'verbalizer'")
    items = {k.value: v for k, v in lines.value}.get("templates")
    out = []
    for i, t in enumerate(tasks[task].get("templates") or []):
        where = f"{path}:{items.value[i].start_mark.line + 1}" if items is not None else f"{path}: {task}"
        if not isinstance(t, dict) or "{text}" not in str(t.get("text", "")) or not t.get("name"):
            raise ValueError(f"{where}: a template needs a 'name' and a 'text' containing {{text}}")
        verb = _verbalizer(t.get("verbalizer", tasks[task].get("verbalizer")), list(label_names), where)
        out.append(Template(t["name"], t["text"], verb, t.get("instruction", ""), t.get("separator", "\n\n"),
                            t.get("source", ""), t.get("strip", True) is not False))
    if not out:
        raise ValueError(f"{path}: task {task!r} has no templates")
    return out


# ---------------------------------------------------------------- scoring

@dataclass
class LabelScores:
    """Log-likelihoods of every continuation after every prompt, with the lengths that normalise them."""

    summed: torch.Tensor  # (n_prompts, n_continuations): sum of log p over the continuation's tokens
    n_tokens: torch.Tensor  # (n_continuations,)
    n_chars: torch.Tensor  # (n_continuations,)
    groups: list[int] = field(default_factory=list)  # label index of each continuation (synonyms share one)

    def get(self, method: str = "sum") -> torch.Tensor:
        """(n_prompts, n_labels) label scores; a label with several continuations takes their logsumexp."""
        if method not in METHODS:
            raise ValueError(f"method={method!r}: expected one of {', '.join(METHODS)}")
        s = {"sum": self.summed, "token": self.summed / self.n_tokens, "char": self.summed / self.n_chars}[method]
        groups = self.groups or list(range(s.shape[1]))
        return torch.stack([s[:, [c for c, g in enumerate(groups) if g == k]].logsumexp(1)
                            for k in range(max(groups) + 1)], dim=1)


def _encode(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def _segments(tokenizer, prompts: Sequence[str], continuations: Sequence[str], prefix: str):
    """Token ids of the prefix, each prompt and each continuation, by the module's tokenization convention."""
    if not prompts or not continuations:
        raise ValueError(f"prompts ({len(prompts)}) and continuations ({len(continuations)}): "
                         "expected at least one each")
    pre = _encode(tokenizer, prefix, True) if prefix else []
    conts = [_encode(tokenizer, c, False) for c in continuations]
    if not all(conts):
        raise ValueError(f"continuations={list(continuations)!r}: each must have at least one token")
    return pre, [_encode(tokenizer, p, not prefix) for p in prompts], conts


def _check_length(model, longest: int) -> None:
    limit = context_length(model)
    if limit and longest > limit:
        raise ValueError(f"a prompt + continuation of {longest} tokens exceeds the model's {limit} positions; "
                         "use fewer demonstrations (k) or shorter inputs")


def _scores(summed: torch.Tensor, continuations: Sequence[str], conts: list[list[int]]) -> LabelScores:
    return LabelScores(summed, torch.tensor([len(c) for c in conts], dtype=torch.float),
                       torch.tensor([max(len(c), 1) for c in continuations], dtype=torch.float))


@torch.no_grad()
def score_labels(model, tokenizer, prompts: Sequence[str], continuations: Sequence[str], prefix: str = "",
                 batch_size: int = 16, max_rows: int = 128, progress: bool = True) -> LabelScores:
    """Log-likelihood of every continuation after every prompt; each prompt (and the prefix) runs once, KV-cached.

    The first continuation token is read off the prompt's last position; longer continuations run, batched over
    (prompt, label) rows, on copies of the prompts' KV cache (right-padded prompts, explicit position ids).
    """
    model.eval()
    device, pad = next(model.parameters()).device, pad_id_of(tokenizer)
    pre, prompt_ids, conts = _segments(tokenizer, prompts, continuations, prefix)
    _check_length(model, len(pre) + max(len(p) for p in prompt_ids) + max(len(c) for c in conts))
    body, head = model.base_model, model.get_output_embeddings()
    pre_cache = body(input_ids=torch.tensor([pre], device=device), use_cache=True).cache if pre else None
    firsts = torch.tensor([c[0] for c in conts], device=device)
    multi = sorted((c for c in range(len(conts)) if len(conts[c]) > 1), key=lambda c: len(conts[c]))  # less padding
    summed = torch.zeros(len(prompts), len(conts))
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))  # similar lengths share a batch
    for start in tqdm(range(0, len(order), batch_size), desc="scoring", leave=False, disable=not progress):
        rows = order[start:start + batch_size]
        ids, mask = pad_batch([prompt_ids[i] for i in rows], pad)
        ids, mask, n = ids.to(device), mask.to(device), len(rows)
        cache = None
        if pre_cache is not None:
            cache = copy.deepcopy(pre_cache)
            cache.batch_repeat_interleave(n)
            mask = torch.cat([torch.ones(n, len(pre), dtype=mask.dtype, device=device), mask], dim=1)
        ends = mask.sum(1)  # prefix + prompt tokens of each row; the last real one sits at ends - 1
        pos = len(pre) + torch.arange(ids.shape[1], device=device).expand(n, -1)
        out = body(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=bool(multi))
        last = out.last_hidden_state[torch.arange(n, device=device), ends - 1 - len(pre)]
        logp = torch.log_softmax(head(last).float(), dim=-1)
        summed[rows] = logp[:, firsts].cpu()
        for c0 in range(0, len(multi), max(1, max_rows // n)):
            chunk = multi[c0:c0 + max(1, max_rows // n)]
            summed[torch.tensor(rows)[:, None], torch.tensor(chunk)] += _continue(
                model, out.cache, mask, ends, [conts[c] for c in chunk], pad)
    return _scores(summed, continuations, conts)


def _continue(model, cache, mask: torch.Tensor, ends: torch.Tensor, conts: list[list[int]], pad: int) -> torch.Tensor:
    """(rows, len(conts)) log p of continuation tokens 2.. given the cached prompts, one row per (prompt, label)."""
    n, m, device = mask.shape[0], len(conts), mask.device
    cache = copy.deepcopy(cache)
    cache.batch_repeat_interleave(m)  # row r * m + j: prompt r, continuation j
    ids, cmask = pad_batch([c[:-1] for c in conts], pad)  # inputs: every token but the last
    targets = pad_batch([c[1:] for c in conts], -1)[0]  # targets: every token but the first
    ids, cmask, targets = ids.repeat(n, 1).to(device), cmask.repeat(n, 1).to(device), targets.repeat(n, 1).to(device)
    full = torch.cat([mask.repeat_interleave(m, dim=0), cmask], dim=1)
    pos = ends.repeat_interleave(m)[:, None] + torch.arange(ids.shape[1], device=device)
    logits = model(input_ids=ids, attention_mask=full, position_ids=pos, cache=cache).logits.float()
    picked = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (targets >= 0)).sum(1).reshape(n, m).cpu()


@torch.no_grad()
def score_naive(model, tokenizer, prompts: Sequence[str], continuations: Sequence[str],
                prefix: str = "") -> LabelScores:
    """The reference: one unbatched forward pass over prefix + prompt + continuation per (prompt, label) pair."""
    pre, prompt_ids, conts = _segments(tokenizer, prompts, continuations, prefix)
    batches = []
    for p in prompt_ids:
        for c in conts:
            ids = torch.tensor([pre + p + c])
            batches.append((ids, torch.ones_like(ids), mask_prompt(ids, len(pre) + len(p))))
    nll = sequence_nll(model, batches, desc="naive")
    return _scores(-nll.reshape(len(prompts), len(conts)), continuations, conts)


# ---------------------------------------------------------------- calibration, demonstrations, metrics

def _flat(template: Template) -> tuple[list[str], list[int]]:
    """Every continuation of the verbalizer, and the label index each belongs to."""
    pairs = [(c, k) for k, label in enumerate(template.labels) for c in template.verbalizer[label]]
    return [c for c, _ in pairs], [k for _, k in pairs]


def score_template(model, tokenizer, template: Template, texts: Sequence[str], prefix: str = "",
                   batch_size: int = 16, progress: bool = True) -> LabelScores:
    """score_labels over a template's filled prompts and its verbalizer's continuations."""
    conts, groups = _flat(template)
    s = score_labels(model, tokenizer, [template.prompt(t) for t in texts], conts, prefix, batch_size,
                     progress=progress)
    s.groups = groups
    return s


def calibrate(label_scores: torch.Tensor) -> torch.Tensor:
    """p_cf: the mean label distribution over content-free inputs' (n_cf, n_labels) scores; W = diag(p_cf)^-1."""
    return torch.softmax(label_scores.double(), dim=1).mean(0).float()


def apply_calibration(label_scores: torch.Tensor, p_cf: torch.Tensor) -> torch.Tensor:
    """Calibrated label log-probabilities: log softmax(W p) with W = diag(p_cf)^-1, b = 0 (Zhao et al. 2021)."""
    return torch.log_softmax(torch.log_softmax(label_scores, dim=1) - p_cf.log(), dim=1)


def few_shot_prompt(template: Template, examples: Sequence[tuple[str, str]], k: int, seed: int) -> str:
    """The prefix: instruction, then k (text, label) demonstrations drawn with `seed`,
    each followed by the separator."""
    if not 0 <= k <= len(examples):
        raise ValueError(f"k={k}: expected 0 <= k <= {len(examples)} (the demonstration pool)")
    picks = random.Random(seed).sample(range(len(examples)), k)
    demos = "".join(template.demonstration(*examples[i]) + template.separator for i in picks)
    return (template.instruction + template.separator if template.instruction else "") + demos


def metrics(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> dict:
    """Accuracy, macro-F1 (over all n_labels, absent ones count as 0) and the confusion matrix (rows: truth)."""
    from sklearn.metrics import confusion_matrix, f1_score

    labels = list(range(n_labels))
    return {"accuracy": float(sum(int(a == b) for a, b in zip(y_true, y_pred, strict=True)) / len(y_true)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
            "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist()}


def evaluate_template(model, tokenizer, template: Template, texts: Sequence[str], labels: Sequence[int],
                      demos: Sequence[tuple[str, str]] = (), k: int = 0, seed: int = 0, method: str = "sum",
                      content_free: Sequence[str] = CONTENT_FREE, lowercase: bool = False, batch_size: int = 16,
                      progress: bool = True) -> dict:
    """One call: k-shot prompts, scores, calibration on content-free inputs, and metrics before and after it.

    Returns accuracy / macro_f1 / confusion / pred (raw) and the same with a `_cal` suffix, p_cf, and the
    LabelScores of the inputs (`scores`) and of the content-free inputs (`cf_scores`) for other methods.
    """
    if lowercase:
        template, texts = template.lower(), [t.lower() for t in texts]
        demos, content_free = [(t.lower(), y) for t, y in demos], [c.lower() for c in content_free]
    prefix = few_shot_prompt(template, demos, k, seed)
    scores = score_template(model, tokenizer, template, texts, prefix, batch_size, progress)
    cf = score_template(model, tokenizer, template, content_free, prefix, batch_size, progress=False)
    raw, p_cf = scores.get(method), calibrate(cf.get(method))
    pred, pred_cal = raw.argmax(1).tolist(), apply_calibration(raw, p_cf).argmax(1).tolist()
    res = {"template": template.name, "k": k, "seed": seed, "method": method, "n": len(texts), "pred": pred,
           **metrics(labels, pred, len(template.labels)), "pred_cal": pred_cal, "p_cf": p_cf.tolist()}
    res.update({f"{key}_cal": v for key, v in metrics(labels, pred_cal, len(template.labels)).items()})
    return {**res, "scores": scores, "cf_scores": cf}


def results_table(results: Sequence[dict], labels: Sequence[int]):
    """One row per evaluate_template result: accuracy with its Wilson 95% interval, raw and calibrated, the exact
    McNemar p-value of calibrated against raw (the same examples), and macro-F1; a pandas DataFrame."""
    import pandas as pd

    from lib.stats import accuracy_interval, mcnemar

    rows, y = [], np.asarray(labels)
    for r in results:
        ok, ok_cal = np.asarray(r["pred"]) == y, np.asarray(r["pred_cal"]) == y
        (acc, lo, hi), (cal, clo, chi) = accuracy_interval(ok), accuracy_interval(ok_cal)
        rows.append({"template": r["template"], "acc": round(acc, 3), "95% CI": f"[{lo:.3f}, {hi:.3f}]",
                     "acc cal": round(cal, 3), "95% CI cal": f"[{clo:.3f}, {chi:.3f}]",
                     "McNemar p": float(f"{mcnemar(ok, ok_cal):.2g}"), "F1": round(r["macro_f1"], 3),
                     "F1 cal": round(r["macro_f1_cal"], 3)})
    return pd.DataFrame(rows).set_index("template")


def balanced_subsample(labels: Sequence[int], n: int, seed: int) -> list[int]:
    """Indices of n examples drawn with `seed`, spread over the classes as evenly as the data allow: each class's
    i-th draw comes before any class's (i+1)-th, so n = 10 x (number of classes) takes 10 of every class."""
    if not 0 < n <= len(labels):
        raise ValueError(f"n={n}: expected 0 < n <= {len(labels)} (the examples available)")
    order, seen, rank = np.random.default_rng(seed).permutation(len(labels)), Counter(), []
    for i in order:
        rank.append(seen[labels[i]])
        seen[labels[i]] += 1
    return [int(order[j]) for j in sorted(range(len(order)), key=rank.__getitem__)[:n]]
