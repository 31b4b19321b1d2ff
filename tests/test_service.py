"""lib.service: the help centre's schema (errors name file:line), the leak-free 10-shot split, the out-of-scope draw."""
from __future__ import annotations

from pathlib import Path

import pytest

from lib.data import DataFormatError
from lib.service import HELP_CENTRE, few_shot_split, load_help_centre
from lib.splits import normalise

GOOD = """bank: Test Bank
policies:
  - id: fees
    title: Fees
    text: Everything is free.
articles:
  - intent: card_arrival
    title: My card has not arrived
    policies: [fees]
    key_fact: Report it in the app.
    text: >-
      {text}
"""
TEXT = "Cards arrive within five working days. Report it in the app. " + " ".join(["word"] * 60)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "help.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_committed_help_centre_is_valid():
    hc = load_help_centre(HELP_CENTRE)
    assert len(hc.articles) == 77 and len(set(hc.intents)) == 77
    assert {"fees", "card_delivery", "identity_checks"} <= set(hc.policies)
    for a in hc.articles:
        assert 60 <= len(a.text.split()) <= 150 and normalise(a.key_fact) in normalise(a.text)
        assert a.text in hc.context(a) and all(hc.policies[p].text in hc.context(a) for p in a.policies)


def test_a_small_valid_file_loads(tmp_path):
    hc = load_help_centre(write(tmp_path, GOOD.format(text=TEXT)))
    assert hc.bank == "Test Bank" and hc.intents == ["card_arrival"] and hc.articles[0].line == 7


@pytest.mark.parametrize("bad, line, message", [
    (GOOD.format(text="Too short. Report it in the app."), 7, "words; expected 60 to 150"),
    (GOOD.format(text=TEXT).replace("Report it in the app.\n", "Call us.\n"), 7, "key_fact must be one line"),
    (GOOD.format(text=TEXT).replace("[fees]", "[postage]"), 7, "policies must be a list of policy ids"),
    (GOOD.format(text=TEXT).replace("    title: My card", "    titel: My card"), 7, "missing ['title']"),
    (GOOD.format(text=TEXT).replace("    text: Everything is free.", "    text: 3"), 3, "'text' must be a non-emp"),
    (GOOD.format(text=TEXT) + GOOD.format(text=TEXT).split("articles:\n")[1], 13, "a second article"),
    (GOOD.format(text=TEXT).replace("policies: [fees]", "policies: [fees"), 10, "not valid YAML"),
])
def test_a_malformed_file_names_file_and_line(tmp_path, bad, line, message):
    path = write(tmp_path, bad)
    with pytest.raises(DataFormatError) as err:
        load_help_centre(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and message in str(err.value)


def test_split_is_stratified_and_leak_free():
    texts = [f"query {i} about intent {i % 3}" for i in range(60)] + ["Query 0 about intent 0!"]  # a near-copy
    labels = [i % 3 for i in range(60)] + [0]
    train, val, test = few_shot_split(texts, labels, 5, 4, seed=0)
    assert [train.labels.count(k) for k in range(3)] == [5, 5, 5]
    assert [val.labels.count(k) for k in range(3)] == [4, 4, 4]
    assert len(train) + len(val) + len(test) == 60  # the near-copy is dropped before splitting
    sides = [set(map(normalise, s.texts)) for s in (train, val, test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    again = few_shot_split(texts, labels, 5, 4, seed=0)
    assert again[0].texts == train.texts and few_shot_split(texts, labels, 5, 4, seed=1)[0].texts != train.texts


def test_split_needs_enough_queries_per_intent():
    with pytest.raises(ValueError, match="expected more than 9"):
        few_shot_split(["a", "b", "c"], [0, 0, 0], 5, 4, seed=0)
