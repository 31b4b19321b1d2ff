"""lib.chat: the token-counted context window keeps the system prompt and drops the oldest turns; streaming."""
from __future__ import annotations

import pytest
import torch

from lib.chat import ChatSession, ContextError, GenerationSettings, _partial_end, fit_context
from lib.generation import generate, stream_ids
from lib.sft import render_ids

SYSTEM = "You are a helpful assistant."
TURNS = [{"role": "user", "content": "My name is Lin."}, {"role": "assistant", "content": "Nice to meet you, Lin!"},
         {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."},
         {"role": "user", "content": "What is my name?"}]


@pytest.fixture(scope="module")
def tok(chat_tok):
    return chat_tok


@pytest.fixture(scope="module")
def tiny(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=len(tok), n_positions=256)).eval()


def n_tokens(tok, msgs):
    return len(render_ids(tok, msgs, add_generation_prompt=True))


def test_everything_fits_in_a_large_window(tok):
    msgs, dropped = fit_context(tok, SYSTEM, TURNS, 10_000)
    assert dropped == 0 and msgs[0] == {"role": "system", "content": SYSTEM} and msgs[1:] == TURNS


def test_truncation_keeps_the_system_prompt_and_drops_the_oldest_exchange(tok):
    full = n_tokens(tok, [{"role": "system", "content": SYSTEM}, *TURNS])
    msgs, dropped = fit_context(tok, SYSTEM, TURNS, full)  # exactly enough: nothing dropped
    assert dropped == 0
    msgs, dropped = fit_context(tok, SYSTEM, TURNS, full - 1)  # one token short: the first exchange goes, whole
    assert dropped == 2 and msgs[0]["role"] == "system" and msgs[1:] == TURNS[2:]
    assert n_tokens(tok, msgs) <= full - 1
    msgs, dropped = fit_context(tok, SYSTEM, TURNS, n_tokens(tok, msgs) - 1)
    assert dropped == 4 and msgs == [{"role": "system", "content": SYSTEM}, TURNS[-1]]


def test_the_window_is_counted_in_tokens_not_characters(tok):
    zh = [{"role": "user", "content": "我住在杭州。"}, {"role": "assistant", "content": "好的。"},
          {"role": "user", "content": "我住在哪里？"}]
    need = n_tokens(tok, [{"role": "system", "content": SYSTEM}, *zh])
    chars = len(SYSTEM) + sum(len(m["content"]) for m in zh)
    assert need > chars  # GPT-2 spends several tokens per Chinese character: a character budget would overflow
    assert fit_context(tok, SYSTEM, zh, need)[1] == 0 and fit_context(tok, SYSTEM, zh, need - 1)[1] == 2


def test_a_window_too_small_for_the_newest_turn_says_so(tok):
    with pytest.raises(ContextError, match="expected at most 5"):
        fit_context(tok, SYSTEM, TURNS, 5)


def test_session_streams_pieces_and_keeps_history(tok, tiny):
    s = ChatSession(tiny, tok, system=SYSTEM, max_context=200, settings=GenerationSettings(max_new_tokens=12))
    pieces = list(s.stream("Hello there"))
    assert len(pieces) >= 2 and all(pieces)
    assert s.history[-2:] == [{"role": "user", "content": "Hello there"},
                              {"role": "assistant", "content": "".join(pieces).strip()}]
    assert s.last_prompt_tokens == n_tokens(tok, [{"role": "system", "content": SYSTEM},
                                                  {"role": "user", "content": "Hello there"}])
    s.history = list(TURNS[:4]) * 6  # a long history: the window forces drops, the system prompt stays
    s.ask("What is my name?")
    assert s.last_dropped > 0 and s.last_prompt_tokens <= 200 - 12


def test_session_reply_is_the_shared_decoding_loop(tok, tiny):
    s = ChatSession(tiny, tok, settings=GenerationSettings(max_new_tokens=8))
    _, ids = s.prompt("Hi")
    reply = s.ask("Hi")
    assert reply == tok.decode(list(stream_ids(tiny, ids, 8, stop_ids={tok.eos_token_id})),
                               skip_special_tokens=True).strip()
    assert generate(tiny, tok, "Once", max_new_tokens=5) == tok.decode(
        list(stream_ids(tiny, tok("Once").input_ids, 5, stop_ids={tok.eos_token_id})))


def test_settings_are_checked(tok, tiny):
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="max_context=10"):
        ChatSession(tiny, tok, max_context=10, settings=GenerationSettings(max_new_tokens=10))


def test_a_half_written_end_marker_is_held_back():
    assert _partial_end("Hello <|im_") == 5 and _partial_end("Hello") == 0 and _partial_end("a <") == 1
