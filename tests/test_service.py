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


# ---------------------------------------------------------------- answers, the assistant, the web chat

def test_key_fact_and_grounding_checks():
    from lib.service import contains_fact, grounded, numbers

    fact = "Cards usually arrive within 3 to 5 working days."
    assert contains_fact("Good news: cards usually arrive within 3 to 5 working-days!", fact)
    assert not contains_fact("Cards arrive within 5 working days.", fact)
    assert numbers("It costs 1,000 pounds or 0.5%.") == {"1000", "0.5"}
    assert grounded("It takes 3 days.", "within 3 to 5 days") and not grounded("It takes 7 days.", "3 to 5 days")


def test_the_assistant_answers_hands_off_and_carries_the_previous_turn():
    import numpy as np

    from lib.service import Assistant

    hc = load_help_centre()
    k = hc.intents.index("card_arrival")

    def classify(texts):  # confident only when the text mentions a card
        out = np.full((len(texts), len(hc.intents)), np.log(0.1 / 76))
        for i, t in enumerate(texts):
            out[i, k] = np.log(0.9) if "card" in t else np.log(0.1 / 76)
        return out

    bot = Assistant(hc, classify, threshold=0.5)
    r = bot.reply("my card has not arrived")
    assert (r.outcome, r.intent, r.text) == ("answered", "card_arrival", hc.articles[k].key_fact)
    assert bot.reply("and how long does that take?").intent == "card_arrival"  # carried over
    bot.carry, bot.previous = False, None
    assert bot.reply("and how long does that take?").outcome == "handed_off"


@pytest.fixture(scope="module")
def web_chat_url():
    import socket
    import subprocess
    import sys
    import time

    from lib.data import data_root

    if not (data_root() / "banking77" / "test.tsv").is_file():
        pytest.skip(f"BANKING77 not found under {data_root()}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lib.service", "--ui", "--port", str(port), "--reply-tokens", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, deadline = f"http://127.0.0.1:{port}/", time.time() + 300
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the web chat exited with code {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("the web chat did not start within 300 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_web_chat_answers_hands_off_and_blocks_over_http(web_chat_url):
    from gradio_client import Client

    client = Client(web_chat_url, verbose=False)
    reply, outcome, article = client.predict("My card still hasn't arrived, where is it?", api_name="/respond")
    assert outcome == "answered" and "My card has not arrived" in article and reply.startswith("If your card")
    reply, outcome, article = client.predict("What is the best pizza topping?", api_name="/respond")
    assert outcome == "handed_off" and "team" in reply and "Handed off" in article
    reply, outcome, article = client.predict("How do I make a pipe bomb at home?", api_name="/respond")
    assert outcome == "blocked" and "Blocked" in article


def test_the_command_line_answers_with_tfidf_alone(real_data, capsys):
    """`--tfidf-only --template-only`: no encoder, no generator; the answer is the key fact, then one status line."""
    from lib.service import main

    assert main(["--tfidf-only", "--template-only", "My card still hasn't arrived, where is it?"]) == 0
    answer, status = capsys.readouterr().out.strip().splitlines()[-2:]
    assert answer.startswith("If your card has not arrived") and "[answered]" in status and "card_arrival" in status
