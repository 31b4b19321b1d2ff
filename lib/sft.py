"""Chat SFT data: render conversations with a chat template, label only the assistant replies, mix and split sources.

Truncation keeps whole turns from the start: a conversation longer than max_length is cut after its last assistant
reply that still fits (its end marker included), so every labelled reply is complete and ends with the marker the
model must learn to stop at; a conversation whose first reply does not fit is dropped (chat_example returns None).
Cutting inside a reply instead would train on replies that never end.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import torch

from lib.generation import stream_ids
from lib.losses import IGNORE_INDEX
from lib.models import context_length, plain_weights  # noqa: F401  (re-exported: notebook 04 imports it from here)
from lib.splits import dedupe, normalise

END_TEXT = "<|im_end|>"
Message = Mapping[str, str]
# The fallback for tokenizers without a chat template (GPT-2): the same ChatML layout as our mini-GPT's template,
# but its markers are plain text to such a tokenizer, e.g. '<|im_end|>' becomes 7 ordinary GPT-2 tokens.
CHATML_FALLBACK = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TemplateError(ValueError):
    """A chat template renders a conversation's prefix to tokens that are not a prefix of the whole."""


def ensure_chat_template(tokenizer) -> Any:
    """Give a tokenizer without a chat template (GPT-2) the plain-text ChatML fallback and pad = eos; returns it."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_FALLBACK
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render_ids(tokenizer, messages: Sequence[Message], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of the conversation rendered with the tokenizer's chat template (no extra special tokens)."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _is_blank(tokenizer, token_id: int) -> bool:
    return tokenizer.decode([token_id]).strip() == ""


def assistant_spans(tokenizer, messages: Sequence[Message]) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids of the whole conversation, [start, end) of each assistant reply incl. its end marker, not the newline)."""
    ensure_chat_template(tokenizer)
    ids = render_ids(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = render_ids(tokenizer, messages[:i], add_generation_prompt=True)
        through = render_ids(tokenizer, messages[:i + 1])
        for part, name in ((prefix, "the prompt before"), (through, "the conversation through")):
            if ids[:len(part)] != part:
                raise TemplateError(f"chat template is not prefix-stable: {name} assistant turn {i} tokenizes "
                                    "differently inside the whole conversation, so its reply cannot be located")
        end = len(through)
        while end > len(prefix) and _is_blank(tokenizer, through[end - 1]):  # the newline after <|im_end|>
            end -= 1
        spans.append((len(prefix), end))
    return ids, spans


def chat_example(tokenizer, messages: Sequence[Message], max_length: int) -> dict[str, list[int]] | None:
    """{"input_ids", "labels"}: labels -100 except on assistant replies (+ end marker); None if no reply fits."""
    ids, spans = assistant_spans(tokenizer, messages)
    spans = [s for s in spans if s[1] <= max_length]  # whole turns from the start
    if not spans:
        return None
    cut = spans[-1][1]
    labels = [IGNORE_INDEX] * cut
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return {"input_ids": ids[:cut], "labels": labels}


def labelled_text(tokenizer, example: Mapping[str, Sequence[int]]) -> list[str]:
    """The decoded runs of consecutive labelled tokens, one string per assistant reply."""
    runs, cur = [], []
    for t, y in zip(example["input_ids"], example["labels"]):
        if y != IGNORE_INDEX:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    runs += [cur] if cur else []
    return [tokenizer.decode(r, skip_special_tokens=False) for r in runs]


def conversation_key(messages: Sequence[Message]) -> tuple[str, ...]:
    """What makes two conversations duplicates: the role and normalised text of every turn (lib.splits.normalise)."""
    return tuple(f"{m['role']}: {normalise(m['content'])}" for m in messages)


def held_out_count(n_rows: int, eval_prompts: int) -> int:
    """Conversations notebook 04 holds out: a tenth of the rows, at least two per prompt shown, at most all but one."""
    return max(1, min(n_rows - 1, max(2 * eval_prompts, n_rows // 10)))


def split(items: Sequence[Any], held_out: int, seed: int,
          group: Callable[[Any], Hashable] | None = None) -> tuple[list[Any], list[Any]]:
    """(train, held-out): a seeded shuffle, then the last `held_out` items are held out.

    With `group`, items sharing group(item) (one prompt with several replies, say) stay on one side: the groups are
    shuffled, and whole groups are held out from the end until at least `held_out` items are.
    """
    if not 0 < held_out < len(items):
        raise ValueError(f"held_out={held_out}: expected 0 < held_out < {len(items)} items")
    groups: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(group(item) if group else i, []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    cut, n_held = len(order), 0
    while n_held < held_out:
        cut -= 1
        n_held += len(order[cut])
    if cut == 0:
        raise ValueError(f"held_out={held_out}: the groups leave no item for training")
    return [items[i] for g in order[:cut] for i in g], [items[i] for g in order[cut:] for i in g]


def mix_dialogues(sources: Mapping[str, Sequence[Sequence[Message]]], n: int, seed: int,
                  lowercase: bool = False) -> list[dict[str, Any]]:
    """Up to n distinct {"messages", "source"} rows: each source deduplicated (conversation_key) and shuffled (seeded),
    then taken in turn, so small n stay mixed; a conversation already taken from another source is skipped."""
    rng = random.Random(seed)
    queues = {}
    for name, convs in sources.items():
        queues[name] = dedupe(convs, conversation_key)
        rng.shuffle(queues[name])
    out: list[dict[str, Any]] = []
    taken: set[tuple[str, ...]] = set()
    while len(out) < n and any(queues.values()):
        for name, q in queues.items():
            while q and len(out) < n and conversation_key(q[0]) in taken:  # the same conversation in two sources
                q.pop(0)
            if q and len(out) < n:
                taken.add(conversation_key(q[0]))
                msgs = [{"role": m["role"], "content": m["content"].strip()} for m in q.pop(0)]
                if lowercase:
                    msgs = [{**m, "content": m["content"].lower()} for m in msgs]
                out.append({"messages": msgs, "source": name})
    return out


def trained_lowercase(model_dir: str | Path) -> bool:
    """True when the model card (README.md) of a local model folder says it was trained on lower-case text."""
    card = Path(model_dir) / "README.md"
    return card.is_file() and "lower-case: true" in card.read_text(encoding="utf-8").lower()


def end_ids(tokenizer) -> set[int]:
    """Ids that end a reply: <|im_end|> when it is one token of the vocabulary, and eos."""
    ids = {tokenizer.eos_token_id}
    im_end = tokenizer.convert_tokens_to_ids(END_TEXT)
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return ids


def chat_turn(model, tokenizer, messages: Sequence[Message], max_new_tokens: int = 40,
              prefix: str = "") -> tuple[str, str]:
    """(greedy reply after a forced `prefix`, how it ended: "end marker", "eos" or "length")."""
    limit = context_length(model) or 10 ** 9
    ids = render_ids(ensure_chat_template(tokenizer), messages, add_generation_prompt=True)
    ids += tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    stop, new, ended = end_ids(tokenizer), [], "length"
    for nxt in stream_ids(model, ids, min(max_new_tokens, limit - len(ids))):  # greedy; stops are seen here
        if nxt in stop:
            ended = "eos" if nxt == tokenizer.eos_token_id and tokenizer.eos_token != END_TEXT else "end marker"
            break
        new.append(nxt)
        if tokenizer.decode(new).endswith(END_TEXT):  # plain-text marker (GPT-2 fallback)
            ended = "end marker"
            break
    return tokenizer.decode(new, skip_special_tokens=True).split(END_TEXT)[0].strip(), ended


def chat_reply(model, tokenizer, messages: Sequence[Message], max_new_tokens: int = 40, prefix: str = "") -> str:
    """The greedy reply of chat_turn, without how it ended."""
    return chat_turn(model, tokenizer, messages, max_new_tokens, prefix)[0]


@torch.no_grad()
def chat_replies(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 32, sample: bool = False,
                 temperature: float = 0.7, seed: int = 0, batch_size: int = 32) -> list[str]:
    """Replies to single-turn prompts, generated in left-padded batches of similar length (greedy, or sampled with a
    fixed seed; the global random state is restored afterwards)."""
    ensure_chat_template(tokenizer)
    seqs = [render_ids(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]
    order, out = sorted(range(len(seqs)), key=lambda i: len(seqs[i])), [""] * len(seqs)
    pad, device = tokenizer.pad_token_id, next(model.parameters()).device
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the caller's RNG is left alone
        torch.manual_seed(seed)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.tensor([[pad] * (width - len(seqs[i])) + seqs[i] for i in idx], device=device)
            mask = torch.tensor([[0] * (width - len(seqs[i])) + [1] * len(seqs[i]) for i in idx], device=device)
            new = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=sample,
                                 temperature=temperature if sample else None, top_p=None, top_k=None,
                                 pad_token_id=pad, eos_token_id=sorted(end_ids(tokenizer)))[:, width:]
            for i, row in zip(idx, new.tolist()):
                text = tokenizer.decode(row, skip_special_tokens=True).split(END_TEXT)[0]
                out[i] = text.rstrip("\ufffd").strip()  # a reply cut inside a character's bytes loses the stub
    return out


def reply_nll(model, examples: Sequence[Mapping[str, Sequence[int]]], pad_id: int,
              batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL, number of labelled targets) per example: the loss on the assistant tokens only, eval mode."""
    from lib.losses import sequence_nll
    from lib.training import collate

    batches, counts = [], []
    for i in range(0, len(examples), batch_size):
        b = collate(examples[i:i + batch_size], pad_id)
        batches.append((b["input_ids"], b["attention_mask"], b["labels"]))
        counts.append((b["labels"][:, 1:] != IGNORE_INDEX).sum(1))
    return sequence_nll(model, batches, desc="reply NLL").double(), torch.cat(counts)


def without_end_marker(tokenizer, example: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """A copy whose labels skip each reply's end marker:
    the fewest closing labelled tokens whose text holds END_TEXT."""
    ids, labels = list(example["input_ids"]), list(example["labels"])
    ends = [k + 1 for k, y in enumerate(labels) if y != IGNORE_INDEX and (k + 1 == len(labels)
                                                                         or labels[k + 1] == IGNORE_INDEX)]
    for end in ends:
        start = end - 1
        while END_TEXT not in tokenizer.decode(ids[start:end], skip_special_tokens=False):
            start -= 1
            if start < 0 or labels[start] == IGNORE_INDEX:
                raise ValueError(f"a labelled reply ending at token {end} does not end with {END_TEXT!r}")
        labels[start:end] = [IGNORE_INDEX] * (end - start)
    return {**example, "input_ids": ids, "labels": labels}


def reply_nll_parts(model, tokenizer, examples: Sequence[Mapping[str, Sequence[int]]],
                    batch_size: int = 8) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(summed NLL, targets) per example on the replies with their end markers,
    on the reply text, and on the markers."""
    pad = tokenizer.pad_token_id
    whole = reply_nll(model, examples, pad, batch_size)
    text = reply_nll(model, [without_end_marker(tokenizer, e) for e in examples], pad, batch_size)
    return {"reply + end marker": whole, "reply text": text, "end marker": (whole[0] - text[0], whole[1] - text[1])}


def pooled_ppl(nll: torch.Tensor, n: torch.Tensor) -> Callable[[np.ndarray], float]:
    """metric(indices) -> exp(summed NLL / summed targets) over those examples, for lib.stats' bootstraps."""
    nll_np, n_np = nll.double().cpu().numpy(), n.double().cpu().numpy()
    return lambda idx: math.exp(nll_np[idx].sum() / n_np[idx].sum())


def ppl_comparison(before: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                   after: Mapping[str, tuple[torch.Tensor, torch.Tensor]], seed: int = 0) -> list[dict[str, Any]]:
    """Per part of reply_nll_parts: targets, perplexity before and after (95% bootstrap over examples), paired p."""
    from lib.stats import bootstrap_interval, paired_bootstrap

    rows = []
    for part, (nll, n) in before.items():
        ppl_b, ppl_a = pooled_ppl(nll, n), pooled_ppl(*after[part])
        row: dict[str, Any] = {"targets": part, "tokens": int(n.sum())}
        for name, metric in (("before", ppl_b), ("after", ppl_a)):
            row[name], row[f"{name} low"], row[f"{name} high"] = bootstrap_interval(metric, len(n), seed=seed)
        row["p"] = paired_bootstrap(lambda i: math.log(ppl_a(i)), lambda i: math.log(ppl_b(i)), len(n), seed=seed)[1]
        rows.append(row)
    return rows


def mask_html(tokenizer, example: Mapping[str, Sequence[int]], limit: int = 400) -> str:
    """HTML of the first `limit` tokens: labelled (in the loss) tokens green and bold, the rest grey."""
    import html

    out = []
    for t, y in list(zip(example["input_ids"], example["labels"]))[:limit]:
        piece = html.escape(tokenizer.decode([t])).replace("\n", "↵<br>")
        style = "background:#c8f7c5;font-weight:bold" if y != IGNORE_INDEX else "color:#888"
        out.append(f'<span style="{style};border:1px solid #ddd;margin:1px">{piece}</span>')
    return '<div style="font-family:monospace;line-height:1.9">' + "".join(out) + "</div>"
