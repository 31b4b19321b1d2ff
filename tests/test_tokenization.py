"""lib.tokenization: the plain-Python BPE against 🤗 tokenizers on hand-written text (no data needed), then the library
BPE on 500 real TinyStories paragraphs: exact round trips, special ids, merges, atomic save."""
from __future__ import annotations

import pytest

from lib.data import CORPORA, data_root, load_corpus
from tokenizers import pre_tokenizers

from lib.tokenization import (EOS, IM_END, IM_START, PureBPE, as_transformers, byte_pieces, byte_words,
                              compression_stats, decode, encode, first_merges, load_bpe, merge_pair, merges,
                              save_tokenizer, top_pairs, train_bpe, vocab_size)

TEXTS = {
    "english": "Once upon a time, Lily and Tom found a SHINY red ball in the park!",
    "code": "def square(x: int) -> int:\n    return x ** 2  # {'a': [1, 2]}\n\ttab\r\n",
    "zh_question": "今天天气怎么样？",
    "zh_prompt": "今天天气是晴天，气温是",
    "mixed": "GPT-2 说：“<|endoftext|> 是一个 token。” 😀 café",
}


# A few hundred hand-written words: capitals, digits, contractions, repeated letters, code, tabs, runs of spaces,
# Chinese and emoji, so that every branch of GPT-2's pre-tokenizer regex and many tied pair counts occur.
HANDWRITTEN = [
    "Once upon a time, there was a little girl named Lily. She liked to play in the park with her dog, Max.",
    "One day, Lily saw a big red ball under a tree. \"Look, Max!\" she said. \"Can we play with it?\"",
    "Max barked and wagged his tail. They played all day, and then they went home to eat dinner with Mom.",
    "Tom's cat didn't like the rain. It sat by the window and watched the drops fall: one, two, three...",
    "The sun came out at 4 o'clock, and the cat ran outside. It was so happy! It jumped and jumped.",
    "Zzz... the baby was sleeping. Shhh! Mom said, \"Don't wake her up.\" Dad nodded and tiptoed away.",
    "In 2023, Ben counted 1234 stars, then 56 more. \"Wow!!!\" he shouted. \"That's a lot of stars!\"",
    "def square(x):\n    return x ** 2  # the square of x\n\nprint(square(12))\n",
    "Aaaa! The bee buzzed: bzzz, bzzz. Anna ran, and ran, and ran, until the bee was gone.",
    "今天天气怎么样？今天天气是晴天。The weather is sunny today, said the little robot in Chinese.",
    "She'll be there soon; we're waiting. They've got cake, and I'm going to eat the biggest piece.",
    "The the the. And and and. A a a. It is what it is, and that is that.",
    "Emma had a box of crayons: red, blue, green, yellow, purple and orange. She drew a rainbow.",
    "\tTabs\tand  double  spaces   and trailing spaces   \nand new lines\n\n\nare all bytes too.",
    "café, naïve, über, 😀 and 🐶: bytes beyond ASCII still make pairs to merge.",
    "The little bird sang a song. The little fish swam in the pond. The little bear slept in the cave.",
]


def test_byte_words_match_the_library_pre_tokenizer():
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    for text in [*HANDWRITTEN, *TEXTS.values()]:
        assert byte_words(text) == [w for w, _ in pre.pre_tokenize_str(text)]
    assert byte_words("Hi  there\n") == ["Hi", "Ġ", "Ġthere", "Ċ"]


def test_merge_pair_left_to_right():
    assert merge_pair(list("aaaa"), ("a", "a")) == ["aa", "aa"]
    assert merge_pair(list("aaa"), ("a", "a")) == ["aa", "a"]
    assert merge_pair(["Ġt", "h", "e", "h"], ("h", "e")) == ["Ġt", "he", "h"]


def test_pure_bpe_tie_breaks_like_the_library():
    # (Ġ, a) and (z, a) both occur once; ids follow the stand-in characters, and 'z' (U+007A) sorts before 'Ġ'
    # (U+0120) although the space byte 0x20 is smaller than 'z': so the library merges (z, a) first, and so do we.
    texts = [" a", "za"]
    ours = PureBPE.train(texts, 10_000)
    assert ours.merges == [("z", "a"), ("Ġ", "a")] == merges(train_bpe(texts, 10_000))
    assert PureBPE.train(["ab cd"], 10_000).merges[0] == ("a", "b")  # ('a', 'b') and ('Ġ', 'c') tie; 'a' < 'Ġ'


@pytest.mark.parametrize("size", [300, 450, 10_000])  # 10,000: both run out of pairs (every chunk one token)
def test_pure_bpe_equals_library(size):
    lib, ours = train_bpe(HANDWRITTEN, size), PureBPE.train(HANDWRITTEN, size)
    assert ours.merges == merges(lib) and len(ours.merges) > 0
    assert ours.vocab == lib.get_vocab() and len(ours.vocab) == vocab_size(lib)
    assert len(ours.vocab) == size if size < 10_000 else len(ours.vocab) < size
    samples = [*HANDWRITTEN, *TEXTS.values(), f"{IM_START}user\nhi{IM_END}{EOS}", "", "  "]
    for text in samples:
        assert ours.encode(text) == encode(lib, text)
        assert ours.decode(ours.encode(text)) == text


def test_pure_bpe_saturated_every_chunk_is_one_token():
    ours = PureBPE.train(HANDWRITTEN, 10_000)
    for text in HANDWRITTEN:
        assert len(ours.encode(text)) == len(byte_words(text))
    assert ours.encode(EOS) == [0] and ours.decode([1, 2]) == IM_START + IM_END


def test_pure_bpe_first_merge_is_most_frequent_pair():
    (a, b), n = top_pairs(HANDWRITTEN, 1)[0]
    ours = PureBPE.train(HANDWRITTEN, 300)
    best = [p for p, m in top_pairs(HANDWRITTEN, 10_000) if m == n]
    assert ours.merges[0] in best and (a, b) in best


@pytest.fixture(scope="module")
def corpus(stories) -> list[str]:
    """500 TinyStories training stories, or without ../shared/data the 400 template stories of tests/fixtures/."""
    if not (data_root() / CORPORA["tinystories"].files["train"]).is_file():
        return stories
    return load_corpus("tinystories", "train")["text"][:500]


@pytest.fixture(scope="module")
def bpe(corpus):
    return train_bpe(corpus, 400)


@pytest.fixture(scope="module")
def gpt2():
    from lib.models import load_tokenizer

    if not (data_root() / "gpt2-tokenizer" / "tokenizer.json").is_file():
        pytest.skip(f"no local GPT-2 tokenizer under {data_root()}; set WORKBOOK_DATA (e.g. ../shared/data)")
    return load_tokenizer("gpt2")


def test_pure_bpe_equals_library_on_tinystories(corpus):
    lib, ours = train_bpe(corpus[:100], 400), PureBPE.train(corpus[:100], 400)
    assert ours.merges == merges(lib) and len(ours.merges) == 400 - 3 - 256
    assert all(ours.encode(t) == encode(lib, t) for t in corpus[100:120])


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_round_trip_exact(bpe, name):
    text = TEXTS[name]
    assert decode(bpe, encode(bpe, text)) == text
    hf = as_transformers(bpe)
    assert encode(hf, text) == encode(bpe, text)
    assert decode(hf, encode(hf, text)) == text


def test_vocab_size_and_special_ids(bpe):
    assert vocab_size(bpe) == 400
    assert [bpe.token_to_id(t) for t in (EOS, IM_START, IM_END)] == [0, 1, 2]
    assert encode(bpe, f"{IM_START}user\nhi{IM_END}{EOS}")[:1] == [1]
    assert encode(bpe, EOS) == [0]
    hf = as_transformers(bpe)
    assert (hf.eos_token_id, hf.bos_token_id, hf.pad_token_id, hf.unk_token_id) == (0, 0, 0, 0)


def test_chat_template(bpe):
    hf = as_transformers(bpe)
    chat = [{"role": "user", "content": "今天天气怎么样？"}, {"role": "assistant", "content": "晴天。"}]
    text = hf.apply_chat_template(chat, tokenize=False)
    assert text == "<|im_start|>user\n今天天气怎么样？<|im_end|>\n<|im_start|>assistant\n晴天。<|im_end|>\n"
    prompt = hf.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids = encode(hf, text)
    assert ids.count(1) == 2 and ids.count(2) == 2


def test_first_merges_are_frequent_pairs(bpe, corpus):
    (a, b), _ = top_pairs(corpus, 1)[0]
    assert merges(bpe)[0] == (a, b)  # BPE's first rule joins the most frequent adjacent pair
    first = first_merges(bpe, 10)
    assert "Ġ + t -> Ġt" in first and "h + e -> he" in first
    assert "Ġt + he -> Ġthe" in first  # 'the' is built from the two merges above
    assert all(" -> " in m for m in first) and len(first) == 10


def test_chinese_falls_back_to_bytes(bpe):
    pieces = byte_pieces(bpe, "天")
    assert [p["bytes"] for p in pieces] == ["e5", "a4", "a9"]  # no Chinese in TinyStories: one token per byte
    assert "".join(p["bytes"] for p in byte_pieces(bpe, "今天")).replace(" ", "") == "今天".encode().hex()


def test_capitals_are_single_bytes(bpe):
    pieces = byte_pieces(bpe, TEXTS["english"])  # the local train copy is lower-case: no merge has a capital
    assert all(len(p["text"]) == 1 for p in pieces if any(c.isupper() for c in p["text"]))


def test_compression_stats(bpe, corpus):
    s = compression_stats(bpe, corpus[:50])
    assert s["round_trip"] and s["texts"] == 50
    assert s["bytes_per_token"] == pytest.approx(1 / s["tokens_per_byte"])
    assert 1.5 < s["bytes_per_token"] < 8 and 1 < s["tokens_per_word"] < 3
    assert compression_stats(bpe, [TEXTS["zh_question"]])["tokens"] == len(TEXTS["zh_question"].encode())


def test_save_tokenizer_atomic_and_reloads(bpe, tmp_path):
    target = tmp_path / "bpe-tinystories"
    save_tokenizer(bpe, target)
    save_tokenizer(as_transformers(bpe), target)  # overwrite an existing folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bpe-tinystories"]  # no temp folder left behind
    assert (target / "tokenizer.json").is_file()
    tok = load_bpe(target)
    for text in TEXTS.values():
        assert encode(tok, text) == encode(bpe, text)
    assert tok.eos_token == EOS and tok.pad_token_id == 0
    assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_gpt2_reference(gpt2):
    assert encode(gpt2, "Hello world") == [15496, 995]
    assert vocab_size(gpt2) == 50257 and encode(gpt2, EOS) == [50256]
    for text in TEXTS.values():
        assert decode(gpt2, encode(gpt2, text)) == text
    assert [p["bytes"] for p in byte_pieces(gpt2, "天")] == ["e5 a4 a9"]
    zh = TEXTS["zh_question"]
    assert len(encode(gpt2, zh)) > len(zh)  # more tokens than characters for Chinese
