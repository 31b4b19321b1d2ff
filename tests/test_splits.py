"""lib.splits, and every split the workbook makes: no normalised item on both sides of it."""
from __future__ import annotations

import pytest

from lib.config import PROFILES
from lib.data import DIALOGUES, DataNotFoundError, load_classification, load_dialogues
from lib.splits import SplitLeakError, assert_disjoint, dedupe, normalise


def test_normalise_ignores_case_punctuation_spacing_and_width():
    assert normalise("  Hi!  How ARE you?\n") == normalise("hi how are you") == "hi how are you"
    assert normalise("It’s ＯＫ.") == normalise("it's ok") == "it s ok"  # curly quote, full-width letters (NFKC)
    assert normalise("tea") != normalise("the a") and normalise("25 degrees") == "25 degrees"


def test_dedupe_keeps_first_occurrences_in_order():
    assert dedupe(["b", "A", "a!", "c", "B"], normalise) == ["b", "A", "c"]
    assert dedupe([], normalise) == []


def test_a_split_of_data_with_duplicates_leaks_until_deduplicated():
    from lib.sft import split

    items = [f"question {i % 7}?" for i in range(40)] + [f"Question {i}" for i in range(7)]  # 7 texts, many copies
    train, held = split(items, 10, seed=0)
    with pytest.raises(SplitLeakError, match="on both sides"):
        assert_disjoint(train, held, key=normalise)
    train, held = split(dedupe(items, normalise), 2, seed=0)
    assert_disjoint(train, held, key=normalise)
    assert len(train) + len(held) == 7


def _made_up_sources() -> dict:
    """Stand-ins for the dialogue sets, with their traps: whole conversations repeated (one of them 121 times, as in
    ChatterBot) in another case and punctuation, prompts with several replies, and conversations shared by sources."""
    conv = lambda q, a: [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    out = {}
    for k, name in enumerate(DIALOGUES):
        convs = [conv(f"question {i} about topic {k}?", f"answer {i % 7} for topic {k}.") for i in range(150)]
        convs += [conv(f"Question {i} about Topic {k}", f"Answer {i % 7} for topic {k}") for i in range(0, 150, 5)]
        convs += [conv(f"question {i} about topic {k}?", f"another answer {i}.") for i in range(0, 150, 10)]
        convs += [conv("hello", "hi there!")] * (121 if name == "chatterbot" else 2) + [conv("shared question", "ok")]
        out[name] = convs
    return out


def _sources() -> dict:
    """The real dialogue sets under ../shared/data, else the made-up stand-ins."""
    try:
        return {name: load_dialogues(name)["messages"] for name in DIALOGUES}
    except DataNotFoundError:
        return _made_up_sources()


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_notebook_04_split_is_disjoint_in_every_profile_and_seed(profile):
    from lib.sft import conversation_key, held_out_count, mix_dialogues, split

    sources, knobs = _sources(), PROFILES[profile]["04_fine_tuning"]
    prompt = lambda r: normalise(r["messages"][0]["content"])
    for seed in range(3):
        rows = mix_dialogues(sources, knobs["sft_dialogues"], seed=seed, lowercase=knobs["model"] == "mini-gpt")
        train, held = split(rows, held_out_count(len(rows), knobs["eval_prompts"]), seed=seed, group=prompt)
        assert len(dedupe(rows, lambda r: conversation_key(r["messages"]))) == len(rows)
        assert_disjoint(train, held, key=lambda r: conversation_key(r["messages"]))
        assert_disjoint(train, held, key=prompt)  # no held-out prompt is a training prompt, even with another reply
        assert len(held) >= 2 * knobs["eval_prompts"] and {r["source"] for r in held} == set(DIALOGUES)


def test_chatterbot_duplicates_are_dropped_by_the_mix():
    from lib.sft import conversation_key, mix_dialogues

    sources = _sources()
    rows = mix_dialogues(sources, 10 ** 6, seed=0)
    distinct = {name: len(dedupe(c, conversation_key)) for name, c in sources.items()}
    assert distinct["chatterbot"] < len(sources["chatterbot"])  # the corpus repeats whole conversations
    assert len(rows) <= sum(distinct.values()) and len({conversation_key(r["messages"]) for r in rows}) == len(rows)


def test_sst2_dev_has_no_duplicates_so_the_05_and_06_splits_cannot_leak():
    try:
        texts = load_classification("sst2")["text"]
    except DataNotFoundError as e:
        pytest.skip(str(e))
    assert len(dedupe(texts, normalise)) == len(texts)
