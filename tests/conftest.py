"""Shared test setup: offline hub, the real data beside the checkout, and small fixtures that need no data.

Without ../shared/data the tests still run on what tests/fixtures/ ships, all written for the workbook: 400 short
stories made from hand-written templates (make_stories.py), 48 one-line film reviews, and a GPT-2-shaped byte-level
BPE trained here on the stories (`byte_bpe`); only tests of the real datasets themselves take `real_data` and skip.
"""
import copy
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a failing hub call would otherwise hang for a minute
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "WORKBOOK_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["WORKBOOK_DATA"] = str(_SHARED)

import pytest  # noqa: E402

from lib.data import data_root  # noqa: E402

FIXTURES = Path(__file__).with_name("fixtures")
EOS = "<|endoftext|>"


@pytest.fixture
def real_data() -> Path:
    """The data root holding the real datasets (../shared/data); skips when it is absent."""
    root = data_root()
    if not (root / "conll2003" / "train.txt").is_file():
        pytest.skip(f"real data not found under {root}; set WORKBOOK_DATA=../shared/data")
    return root


@pytest.fixture
def tmp_root(tmp_path, monkeypatch) -> Path:
    """An empty data root for malformed-input fixtures."""
    monkeypatch.setenv("WORKBOOK_DATA", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def stories() -> list[str]:
    """400 lower-case stories of 20-80 words from hand-written templates (tests/fixtures/make_stories.py)."""
    return (FIXTURES / "stories.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="session")
def reviews() -> tuple[list[str], list[int]]:
    """48 hand-written one-line film reviews in SST-2's style and labels: 24 negative (0), 24 positive (1)."""
    rows = [line.split("\t") for line in (FIXTURES / "reviews.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    return [text for text, _ in rows], [int(label) for _, label in rows]


@pytest.fixture(scope="session")
def _byte_bpe(stories, reviews):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    prompts = [f"Review: {text}\nSentiment: {('negative', 'positive')[y]}" for text, y in zip(*reviews)]
    tok.train_from_iterator(stories + prompts, trainers.BpeTrainer(
        vocab_size=1000, special_tokens=[EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return GPT2TokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, model_max_length=1024)


@pytest.fixture(scope="module")
def byte_bpe(_byte_bpe):
    """A stand-in for GPT-2's tokenizer: byte-level BPE, eos = bos = unk = <|endoftext|> = 0, no chat template, trained
    on `stories` and `reviews` as prompts; a fresh copy per module, so that a test module may change it."""
    return copy.deepcopy(_byte_bpe)


@pytest.fixture(scope="module")
def gpt2_tok(byte_bpe):
    """The real GPT-2 tokenizer when the data root has it, else the `byte_bpe` stand-in (same kind, smaller)."""
    from lib.models import load_tokenizer

    return load_tokenizer("gpt2") if (data_root() / "gpt2-tokenizer" / "tokenizer.json").is_file() else byte_bpe


@pytest.fixture(scope="module")
def chat_tok(gpt2_tok):
    """GPT-2's tokenizer (or its byte-level stand-in without ../shared/data) with the workbook's chat template."""
    from lib.sft import ensure_chat_template

    return ensure_chat_template(gpt2_tok)
