"""A chat session: system prompt, turn history, the model's chat template, a token-counted context window, streaming.

The context window is counted in tokens of the rendered conversation (chat template included) and keeps room for the
reply (`max_new_tokens`). When the conversation does not fit, whole exchanges (a user turn and the reply to it) are
dropped oldest first; the system prompt and the newest user turn are always kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from lib.data import REPO_ROOT, data_error, load_yaml
from lib.generation import stream_ids
from lib.models import context_length
from lib.sft import END_TEXT, Message, end_ids, ensure_chat_template, render_ids


class ContextError(ValueError):
    """The system prompt and the newest user turn alone do not fit in the context window."""


@dataclass(frozen=True)
class GenerationSettings:
    """How a reply is decoded: greedy, or sampled with temperature / top-k / top-p; at most max_new_tokens."""

    max_new_tokens: int = 64
    greedy: bool = True
    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: expected > 0")


def fit_context(tokenizer, system: str | None, turns: Sequence[Message], budget: int) -> tuple[list[Message], int]:
    """(messages that fit in `budget` tokens with the generation prompt, number of turns dropped).

    Keeps the system prompt and the last turn; drops the oldest turns first, a user turn together with its reply.
    """
    head = [{"role": "system", "content": system}] if system else []
    turns = list(turns)
    dropped = 0
    while True:
        msgs = head + turns
        if len(render_ids(tokenizer, msgs, add_generation_prompt=True)) <= budget:
            return msgs, dropped
        if len(turns) <= 1:
            raise ContextError(f"context window: the system prompt and the newest turn need "
                               f"{len(render_ids(tokenizer, msgs, add_generation_prompt=True))} tokens, "
                               f"expected at most {budget} (max_context minus max_new_tokens)")
        cut = 2 if len(turns) > 2 and turns[0]["role"] == "user" and turns[1]["role"] == "assistant" else 1
        turns, dropped = turns[cut:], dropped + cut


def _partial_end(text: str) -> int:
    """Length of the longest proper prefix of the end marker that `text` ends with (0 if none)."""
    return next((k for k in range(len(END_TEXT) - 1, 0, -1) if text.endswith(END_TEXT[:k])), 0)


@dataclass
class ChatSession:
    """A conversation with one model: system prompt, history, token-counted window, streamed replies."""

    model: object
    tokenizer: object
    system: str | None = None
    max_context: int | None = None  # tokens of prompt + reply; None: the model's context length
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    history: list[dict[str, str]] = field(default_factory=list)
    last_prompt_tokens: int = 0
    last_dropped: int = 0

    def __post_init__(self) -> None:
        ensure_chat_template(self.tokenizer)
        limit = context_length(self.model) or 2048
        self.max_context = min(self.max_context or limit, limit)
        if self.max_context <= self.settings.max_new_tokens:
            raise ValueError(f"max_context={self.max_context}: expected more than max_new_tokens="
                             f"{self.settings.max_new_tokens} tokens")

    def prompt(self, user_text: str) -> tuple[list[Message], list[int]]:
        """(messages sent to the model for a new user turn, their token ids with the generation prompt)."""
        budget = self.max_context - self.settings.max_new_tokens
        msgs, self.last_dropped = fit_context(self.tokenizer, self.system, [*self.history,
                                              {"role": "user", "content": user_text}], budget)
        ids = render_ids(self.tokenizer, msgs, add_generation_prompt=True)
        self.last_prompt_tokens = len(ids)
        return msgs, ids

    def stream(self, user_text: str) -> Iterator[str]:
        """Yield the reply in text pieces as tokens are decoded; the finished turn is added to the history."""
        _, ids = self.prompt(user_text)
        s, tok = self.settings, self.tokenizer
        new: list[int] = []
        shown = ""
        for t in stream_ids(self.model, ids, s.max_new_tokens, s.greedy, s.temperature, s.top_k, s.top_p, s.seed,
                            stop_ids=end_ids(tok)):
            new.append(t)
            text = tok.decode(new, skip_special_tokens=True)
            if END_TEXT in text:  # the plain-text end marker of the ChatML fallback (GPT-2)
                text = text.split(END_TEXT)[0]
                yield text[len(shown):]
                shown = text
                break
            safe = text[:len(text) - _partial_end(text)]  # hold back a half-written end marker
            if not safe.endswith("\ufffd") and len(safe) > len(shown):  # and half a UTF-8 character
                yield safe[len(shown):]
                shown = safe
        final = tok.decode(new, skip_special_tokens=True).split(END_TEXT)[0].rstrip("\ufffd")  # a character cut off
        if final[len(shown):]:
            yield final[len(shown):]
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": final.strip()}]

    def ask(self, user_text: str) -> str:
        """The whole reply to one user turn (stream() joined)."""
        return "".join(self.stream(user_text)).strip()

    def reset(self) -> None:
        """Forget the history (the system prompt stays)."""
        self.history = []


COHERENCE_PATH = REPO_ROOT / "safety" / "coherence.yaml"


def load_scripts(path: str | Path = COHERENCE_PATH) -> tuple[dict[str, list[list[str]]], list[dict[str, Any]]]:
    """(filler exchanges per language, scripted dialogues) of the coherence test; a malformed file names the key."""
    raw = load_yaml(path)  # an empty file or a syntax error names file:line
    if not isinstance(raw, dict):
        raise data_error(path, 1, "expected a mapping with 'fillers' and 'dialogues', got "
                                  + ("an empty document" if raw is None else type(raw).__name__))
    fillers, dialogues = raw.get("fillers"), raw.get("dialogues")
    if not isinstance(fillers, dict) or not isinstance(dialogues, list) or not dialogues:
        raise ValueError(f"{path}: expected 'fillers' (a mapping) and 'dialogues' (a non-empty list)")
    for lang, pairs in fillers.items():
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2
                                                  and all(isinstance(x, str) for x in p) for p in pairs):
            raise ValueError(f"{path}: fillers.{lang}: expected a list of [question, answer] pairs of strings")
    for i, d in enumerate(dialogues):
        if not isinstance(d, dict):
            raise ValueError(f"{path}: dialogues[{i}]: expected a mapping with lang, fact, ack, question, answer")
        missing = {"lang", "fact", "ack", "question", "answer"} - set(d)
        if missing or d["lang"] not in fillers:
            raise ValueError(f"{path}: dialogues[{i}]: missing {sorted(missing)} or unknown lang {d.get('lang')!r}")
    return fillers, dialogues


def scripted_turns(dialogue: Mapping[str, Any], fillers: Mapping[str, Sequence[Sequence[str]]]) -> list[Message]:
    """The scripted history (fact, acknowledgement, filler exchanges) followed by the question."""
    turns = [{"role": "user", "content": dialogue["fact"]}, {"role": "assistant", "content": dialogue["ack"]}]
    for q, a in fillers[dialogue["lang"]]:
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return turns + [{"role": "user", "content": dialogue["question"]}]


def uses_fact(answer: str, keys: Sequence[str]) -> bool:
    """True when the answer contains one of the accepted keys (case-insensitive)."""
    return any(k.lower() in answer.lower() for k in keys)


def coherence_rows(session: "ChatSession", dialogues: Sequence[Mapping[str, Any]],
                   fillers: Mapping[str, Sequence[Sequence[str]]], windows: Sequence[int]) -> list[dict[str, Any]]:
    """Answer each dialogue's question under each context window; one row per (dialogue, window)."""
    from tqdm.auto import tqdm

    rows = []
    for window, d in tqdm([(w, d) for w in windows for d in dialogues], desc="coherence"):
        turns = scripted_turns(d, fillers)
        session.max_context, session.history = window, turns[:-1]
        try:
            answer = session.ask(turns[-1]["content"])
        except ContextError:
            continue
        kept = session.last_dropped == 0
        rows.append({"window": window, "lang": d["lang"], "question": d["question"], "answer": answer,
                     "fact_in_context": kept, "uses_fact": uses_fact(answer, d["answer"]),
                     "prompt_tokens": session.last_prompt_tokens})
    return rows
