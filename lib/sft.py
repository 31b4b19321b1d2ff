"""Chat SFT data: render conversations with a chat template, label only the assistant replies, mix and split sources.

Truncation keeps whole turns from the start: a conversation longer than max_length is cut after its last assistant
reply that still fits (its end marker included), so every labelled reply is complete and ends with the marker the
model must learn to stop at; a conversation whose first reply does not fit is dropped (chat_example returns None).
Cutting inside a reply instead would train on replies that never end.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from lib.generation import stream_ids
from lib.losses import IGNORE_INDEX
from lib.models import context_length, plain_weights  # noqa: F401  (re-exported: notebook 04 imports it from here)

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


def split(items: Sequence[Any], held_out: int, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, held-out): a seeded shuffle, then the last `held_out` items are held out."""
    if not 0 < held_out < len(items):
        raise ValueError(f"held_out={held_out}: expected 0 < held_out < {len(items)} items")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order[:-held_out]], [items[i] for i in order[-held_out:]]


def mix_dialogues(sources: Mapping[str, Sequence[Sequence[Message]]], n: int, seed: int,
                  lowercase: bool = False) -> list[dict[str, Any]]:
    """Up to n {"messages", "source"} rows: each source shuffled (seeded), then taken in turn, so small n stay mixed."""
    rng = random.Random(seed)
    queues = {}
    for name, convs in sources.items():
        order = list(range(len(convs)))
        rng.shuffle(order)
        queues[name] = [convs[i] for i in order]
    out: list[dict[str, Any]] = []
    while len(out) < n and any(queues.values()):
        for name, q in queues.items():
            if q and len(out) < n:
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


def mask_html(tokenizer, example: Mapping[str, Sequence[int]], limit: int = 400) -> str:
    """HTML of the first `limit` tokens: labelled (in the loss) tokens green and bold, the rest grey."""
    import html

    out = []
    for t, y in list(zip(example["input_ids"], example["labels"]))[:limit]:
        piece = html.escape(tokenizer.decode([t])).replace("\n", "↵<br>")
        style = "background:#c8f7c5;font-weight:bold" if y != IGNORE_INDEX else "color:#888"
        out.append(f'<span style="{style};border:1px solid #ddd;margin:1px">{piece}</span>')
    return '<div style="font-family:monospace;line-height:1.9">' + "".join(out) + "</div>"
