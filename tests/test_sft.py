"""lib.sft: assistant-only labels for our BPE, GPT-2 (plain-text ChatML fallback) and SmolLM2; truncation; splits."""
from __future__ import annotations

import pytest

from lib.sft import (END_TEXT, IGNORE_INDEX, TemplateError, assistant_spans, chat_example, conversation_key,
                     ensure_chat_template, held_out_count, labelled_text, mix_dialogues, pooled_ppl, ppl_comparison,
                     split, trained_lowercase, without_end_marker)

CHAT = [{"role": "user", "content": "Hi, who are you?"},
        {"role": "assistant", "content": "I am a small model."},
        {"role": "user", "content": "What is the weather like today?"},
        {"role": "assistant", "content": "It is sunny, and the temperature is 25 degrees."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You are welcome."}]
REPLIES = [m["content"] for m in CHAT if m["role"] == "assistant"]
QUESTIONS = [m["content"] for m in CHAT if m["role"] == "user"]


@pytest.fixture(scope="module")
def bpe(stories):
    from lib.tokenization import as_transformers, train_bpe

    return as_transformers(train_bpe(stories[:300], 400))


@pytest.fixture(scope="module")
def gpt2(gpt2_tok):
    """GPT-2's tokenizer, or without the data its stand-in: byte-level BPE, no chat template (tests/conftest.py)."""
    return gpt2_tok


@pytest.fixture(scope="module")
def smollm2():
    from lib.models import ModelNotFoundError, load_tokenizer

    try:
        return load_tokenizer("smollm2-135m-instruct")
    except ModelNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(params=["bpe", "gpt2", "smollm2"])
def tok(request):
    return request.getfixturevalue(request.param)


def test_labels_are_the_assistant_replies_and_nothing_else(tok):
    ex = chat_example(tok, CHAT, 10_000)
    ids, labels = ex["input_ids"], ex["labels"]
    assert len(ids) == len(labels)
    assert all(y == IGNORE_INDEX or y == t for t, y in zip(ids, labels))  # a label is the token itself or -100
    assert labelled_text(tok, ex) == [r + END_TEXT for r in REPLIES]  # every reply, with its end marker
    unlabelled = tok.decode([t for t, y in zip(ids, labels) if y == IGNORE_INDEX])
    assert all(q in unlabelled for q in QUESTIONS) and not any(r in unlabelled for r in REPLIES)
    assert "assistant" in unlabelled and "user" in unlabelled  # role headers are context, not targets


def test_spans_match_the_generation_prompt(tok):
    ids, spans = assistant_spans(tok, CHAT)
    assert len(spans) == 3 and all(s < e for s, e in spans)
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))  # user turns lie between the replies
    text = tok.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids[:spans[0][0]]) == tok.decode(tok(text, add_special_tokens=False)["input_ids"])


def test_system_prompt_is_never_labelled(smollm2):
    ex = chat_example(smollm2, CHAT[:2], 10_000)
    assert "SmolLM" in smollm2.decode(ex["input_ids"])  # the template's default system prompt is there
    assert labelled_text(smollm2, ex) == [REPLIES[0] + END_TEXT]


def test_truncation_keeps_whole_turns_from_the_start(bpe):
    full = chat_example(bpe, CHAT, 10_000)
    _, spans = assistant_spans(bpe, CHAT)
    cut = chat_example(bpe, CHAT, spans[1][1])  # exactly room for two replies
    assert cut["input_ids"] == full["input_ids"][:spans[1][1]]
    assert labelled_text(bpe, cut) == [r + END_TEXT for r in REPLIES[:2]]
    one = chat_example(bpe, CHAT, spans[1][1] - 1)  # one token short of the second reply: only the first
    assert labelled_text(bpe, one) == [REPLIES[0] + END_TEXT] and len(one["input_ids"]) == spans[0][1]
    assert chat_example(bpe, CHAT, spans[0][1] - 1) is None  # the first reply does not fit: dropped


def test_prefix_unstable_template_raises(bpe):
    import copy

    bad = copy.deepcopy(bpe)
    bad.chat_template = ("{{ messages | length }} turns\n{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                         "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(TemplateError, match="not prefix-stable"):
        chat_example(bad, CHAT, 10_000)


def test_gpt2_gets_the_plain_text_fallback(gpt2):
    assert ensure_chat_template(gpt2).chat_template and gpt2.pad_token_id == gpt2.eos_token_id
    ids = gpt2(END_TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1  # a plain-text marker: several ordinary GPT-2 tokens


def test_split_is_seeded_and_disjoint():
    items = list(range(50))
    train, held = split(items, 10, seed=3)
    assert (train, held) == split(items, 10, seed=3) and held != split(items, 10, seed=4)[1]
    assert sorted(train + held) == items and len(held) == 10
    with pytest.raises(ValueError):
        split(items, 50, seed=0)


def test_mix_dialogues_interleaves_and_lowercases():
    sources = {"a": [[{"role": "user", "content": f" A{i} "}, {"role": "assistant", "content": "OK"}]
                     for i in range(9)],
               "b": [[{"role": "user", "content": f"B{i}"}, {"role": "assistant", "content": "Yes"}] for i in range(2)]}
    rows = mix_dialogues(sources, 6, seed=0, lowercase=True)
    assert [r["source"] for r in rows] == ["a", "b", "a", "b", "a", "a"]  # b runs out after two
    assert all(m["content"] == m["content"].lower().strip() for r in rows for m in r["messages"])
    assert rows == mix_dialogues(sources, 6, seed=0, lowercase=True)
    assert len(mix_dialogues(sources, 100, seed=0)) == 11


def test_trained_lowercase_reads_the_model_card(tmp_path):
    assert not trained_lowercase(tmp_path)
    (tmp_path / "README.md").write_text("Data: tinystories (lower-case: True).")
    assert trained_lowercase(tmp_path)


def test_mix_dialogues_drops_duplicates_within_and_across_sources():
    turn = lambda u, a: [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    sources = {"a": [turn("My printer is not printing.", "Restart it.")] * 5 + [turn("my printer is NOT printing",
                                                                                     " restart  it ")],
               "b": [turn("Hi!", "Hello.")] * 3 + [turn("my printer is not printing", "restart it!")]}
    for seed in range(4):
        rows = mix_dialogues(sources, 100, seed=seed)
        assert len(rows) == 2 and len({conversation_key(r["messages"]) for r in rows}) == 2
    assert conversation_key(turn("Hi!", "Hello.")) != conversation_key(turn("Hello.", "Hi!"))  # roles count


def test_split_by_group_keeps_each_group_on_one_side():
    items = [(g, k) for g in range(12) for k in range(g % 3 + 1)]  # groups of 1, 2 and 3 items
    for seed in range(5):
        train, held = split(items, 6, seed=seed, group=lambda x: x[0])
        assert not {g for g, _ in train} & {g for g, _ in held}
        assert sorted(train + held) == sorted(items) and 6 <= len(held) < 6 + 3
    with pytest.raises(ValueError, match="no item for training"):
        split([("one", 1), ("one", 2)], 1, seed=0, group=lambda x: x[0])


def test_held_out_count_is_a_tenth_with_floors():
    assert held_out_count(1580, 12) == 158 and held_out_count(100, 12) == 24 and held_out_count(10, 12) == 9


def test_without_end_marker_unlabels_exactly_the_markers(tok):
    ex = chat_example(tok, CHAT, 10_000)
    text = without_end_marker(tok, ex)
    assert text["input_ids"] == ex["input_ids"] and ex["labels"] == chat_example(tok, CHAT, 10_000)["labels"]
    runs = labelled_text(tok, text)
    assert len(runs) == 3 and all(r.rstrip() and reply.startswith(r) for r, reply in zip(runs, REPLIES))
    assert all(len(reply) - len(r) <= 1 for r, reply in zip(runs, REPLIES))  # GPT-2 may fuse '.' with '<|'
    dropped = [t for t, y, z in zip(ex["input_ids"], ex["labels"], text["labels"]) if y != z]
    assert tok.decode(dropped).count(END_TEXT) == 3 and all(z == IGNORE_INDEX for y, z in zip(ex["labels"],
                                                                                              text["labels"]) if y != z)


def test_without_end_marker_on_a_one_token_marker_drops_one_token_per_reply(bpe):
    ex = chat_example(bpe, CHAT, 10_000)
    n = lambda e: sum(y != IGNORE_INDEX for y in e["labels"])
    assert n(ex) - n(without_end_marker(bpe, ex)) == 3 and labelled_text(bpe, without_end_marker(bpe, ex)) == REPLIES
    broken = {**ex, "labels": [IGNORE_INDEX] * (len(ex["labels"]) - 1) + [ex["input_ids"][-2]]}
    broken["input_ids"] = ex["input_ids"][:-1] + [ex["input_ids"][-2]]  # a labelled run without the marker
    with pytest.raises(ValueError, match="does not end with"):
        without_end_marker(bpe, broken)


def test_pooled_ppl_and_comparison_by_hand():
    import math

    import torch

    nll, n = torch.tensor([2.0, 6.0]), torch.tensor([1, 3])
    assert pooled_ppl(nll, n)([0, 1]) == pytest.approx(math.exp(8 / 4)) and pooled_ppl(nll, n)([1]) == pytest.approx(
        math.exp(2))
    before = {"all": (torch.full((40,), 30.0), torch.full((40,), 10))}
    after = {"all": (torch.linspace(5.0, 15.0, 40), torch.full((40,), 10))}
    (row,) = ppl_comparison(before, after, seed=0)
    assert row["tokens"] == 400 and row["before"] == pytest.approx(math.exp(3.0))
    assert row["after"] == pytest.approx(math.exp(1.0)) and row["after low"] < row["after"] < row["after high"]
    assert row["before low"] == row["before high"] == pytest.approx(row["before"]) and row["p"] < 0.05
