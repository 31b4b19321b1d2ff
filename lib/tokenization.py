"""Byte-level BPE: our own in plain Python, then 🤗 tokenizers' (same merges, far faster), wrapped for transformers,
saved whole, and measured for compression."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import regex
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lib.reporting import atomic_dir

EOS = "<|endoftext|>"  # GPT-2's end-of-text token: id 0 in our vocabulary
IM_START, IM_END = "<|im_start|>", "<|im_end|>"  # ChatML turn delimiters, used from the SFT notebook on
SPECIAL_TOKENS = (EOS, IM_START, IM_END)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TokenizerLike = Union[Tokenizer, PreTrainedTokenizerBase]


# ---------------------------------------------------------------- training with 🤗 tokenizers, and wrapping

def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = SPECIAL_TOKENS) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style, every byte in the base alphabet) on `texts`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def as_transformers(tokenizer: Tokenizer, model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """Wrap a trained Tokenizer for transformers: eos/bos/unk/pad = <|endoftext|> and a ChatML chat template."""
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS,
                                   pad_token=EOS, additional_special_tokens=[IM_START, IM_END],
                                   chat_template=CHATML_TEMPLATE, model_max_length=model_max_length)


def save_tokenizer(tok: TokenizerLike, path: Path | str) -> Path:
    """Save as a transformers tokenizer folder, whole or not at all (temp folder beside it, then rename)."""
    hf = as_transformers(tok) if isinstance(tok, Tokenizer) else tok
    with atomic_dir(Path(path)) as tmp:
        hf.save_pretrained(str(tmp))
    return Path(path)


def load_bpe(path: Path | str) -> PreTrainedTokenizerBase:
    """Load a tokenizer folder written by save_tokenizer; a missing folder says which notebook makes it."""
    from transformers import AutoTokenizer

    if not (Path(path) / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json; train it with the tokenization notebook: "
                                "`python -m lib.run --profile <profile> --only 01`")
    return AutoTokenizer.from_pretrained(str(path))


# ---------------------------------------------------------------- one interface for both kinds of tokenizer

def encode(tok: TokenizerLike, text: str) -> list[int]:
    """Token ids of `text`, with no BOS/EOS added (special-token strings in the text do map to their ids)."""
    if isinstance(tok, Tokenizer):
        return tok.encode(text, add_special_tokens=False).ids
    return tok.encode(text, add_special_tokens=False)


def encode_batch(tok: TokenizerLike, texts: Sequence[str]) -> list[list[int]]:
    """encode() for many texts at once (the Rust tokenizer works in parallel)."""
    if isinstance(tok, Tokenizer):
        return [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]
    return tok(list(texts), add_special_tokens=False)["input_ids"]


def decode(tok: TokenizerLike, ids: Sequence[int]) -> str:
    """The text of `ids`, special tokens kept and no clean-up of spaces (so decode(encode(t)) can equal t)."""
    if isinstance(tok, Tokenizer):
        return tok.decode(list(ids), skip_special_tokens=False)
    return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def vocab_size(tok: TokenizerLike) -> int:
    """Number of ids, added special tokens included."""
    return tok.get_vocab_size(with_added_tokens=True) if isinstance(tok, Tokenizer) else len(tok)


def id_to_token(tok: TokenizerLike, i: int) -> str:
    """The vocabulary entry of id `i` (byte-level form: 'Ġ' is a space)."""
    return tok.id_to_token(i) if isinstance(tok, Tokenizer) else tok.convert_ids_to_tokens(i)


# ---------------------------------------------------------------- looking inside

@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's map from the 256 printable stand-in characters back to byte values ('Ġ' -> 0x20)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes(token: str) -> bytes:
    """The raw bytes behind a byte-level vocabulary entry (UTF-8 of the string when it is not byte-level)."""
    table = byte_decoder()
    return bytes(table[c] for c in token) if all(c in table for c in token) else token.encode("utf-8")


def show(token: str) -> str:
    """A byte-level entry made readable: 'Ġ' stays (it is the space), 'Ċ' shown as \\n."""
    return token.replace("Ċ", "\\n").replace("ĉ", "\\t")


def merges(tokenizer: TokenizerLike) -> list[tuple[str, str]]:
    """All merge rules (合并规则) of a BPE tokenizer, in the order they were learned."""
    backend = tokenizer if isinstance(tokenizer, Tokenizer) else tokenizer.backend_tokenizer
    rules = json.loads(backend.to_str())["model"]["merges"]
    return [tuple(r.split(" ", 1)) if isinstance(r, str) else (r[0], r[1]) for r in rules]


def first_merges(tokenizer: TokenizerLike, n: int) -> list[str]:
    """The first n merges, e.g. 'Ġ + t -> Ġt' (byte-level form: 'Ġ' marks a leading space)."""
    return [f"{show(a)} + {show(b)} -> {show(a + b)}" for a, b in merges(tokenizer)[:n]]


# ---------------------------------------------------------------- the same BPE from scratch, in plain Python

GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def byte_words(text: str) -> list[str]:
    """GPT-2's pre-tokenisation by hand: split with its regex, write each UTF-8 byte as a stand-in ('Ġ' = space)."""
    to_char = {b: c for c, b in byte_decoder().items()}
    return ["".join(to_char[b] for b in w.encode("utf-8")) for w in GPT2_SPLIT.findall(text)]


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace each occurrence of `pair` in `symbols`, left to right, by the two symbols joined."""
    out, i = [], 0
    while i < len(symbols):
        if tuple(symbols[i:i + 2]) == pair:
            out.append(pair[0] + pair[1]); i += 2
        else:
            out.append(symbols[i]); i += 1
    return out


@dataclass
class PureBPE:
    """Our own byte-level BPE: the merges in learned order, the vocabulary (token -> id) and the special tokens."""

    merges: list[tuple[str, str]]
    vocab: dict[str, int]
    specials: tuple[str, ...]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int,
              special_tokens: Sequence[str] = SPECIAL_TOKENS) -> PureBPE:
        """Learn merges on `texts`: join the most frequent adjacent pair, recount, repeat until vocab_size."""
        words = Counter(w for t in texts for w in byte_words(t))  # each distinct chunk once, with its count
        splits = {w: list(w) for w in words}
        vocab = {tok: i for i, tok in enumerate([*special_tokens, *sorted(byte_decoder())])}  # ids as in train_bpe
        merges: list[tuple[str, str]] = []
        while len(vocab) < vocab_size:
            pairs: Counter = Counter()
            for w, n in words.items():
                for pair in zip(splits[w], splits[w][1:]):
                    pairs[pair] += n
            if not pairs:  # every chunk is one token: nothing left to merge
                break
            # the highest count wins; a tie goes to the pair of lower ids, exactly as in 🤗 tokenizers' trainer
            best = max(pairs, key=lambda p: (pairs[p], -vocab[p[0]], -vocab[p[1]]))
            merges.append(best)
            vocab.setdefault(best[0] + best[1], len(vocab))
            splits = {w: merge_pair(s, best) for w, s in splits.items()}
        return cls(merges, vocab, tuple(special_tokens))

    def encode(self, text: str) -> list[int]:
        """Token ids: special tokens are matched whole first; every other chunk merges in the order learned."""
        rank = {pair: r for r, pair in enumerate(self.merges)}
        specials = f"({'|'.join(map(regex.escape, self.specials))})"
        ids: list[int] = []
        for part in regex.split(specials, text) if self.specials else [text]:
            if part in self.specials:
                ids.append(self.vocab[part])
                continue
            for word in byte_words(part):
                symbols = list(word)
                while len(symbols) > 1:
                    pair = min(zip(symbols, symbols[1:]), key=lambda p: rank.get(p, len(rank)))
                    if pair not in rank:  # no learned merge left in this chunk
                        break
                    symbols = merge_pair(symbols, pair)
                ids += [self.vocab[s] for s in symbols]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`: join the tokens' raw bytes and read them as UTF-8 (bad bytes become U+FFFD)."""
        tokens = {i: t for t, i in self.vocab.items()}
        return b"".join(token_bytes(tokens[i]) for i in ids).decode("utf-8", errors="replace")


def top_pairs(texts: Iterable[str], k: int = 10) -> list[tuple[tuple[str, str], int]]:
    """The k most frequent adjacent symbol pairs inside byte-level words: what BPE merges first."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(t))
    pairs: Counter = Counter()
    for w, c in words.items():
        for a, b in zip(w, w[1:]):
            pairs[(a, b)] += c
    return pairs.most_common(k)


def byte_pieces(tok: TokenizerLike, text: str) -> list[dict[str, Any]]:
    """Per token of `text`: id, vocabulary entry, its raw bytes in hex, and the token decoded on its own."""
    rows = []
    for i in encode(tok, text):
        entry = id_to_token(tok, i)
        rows.append({"id": i, "token": show(entry), "bytes": token_bytes(entry).hex(" "), "text": decode(tok, [i])})
    return rows


def compression_stats(tok: TokenizerLike, texts: Sequence[str]) -> dict[str, Any]:
    """Tokens per word / char / UTF-8 byte, bytes per token, and whether every text round-trips exactly."""
    texts = list(texts)
    ids = encode_batch(tok, texts)
    n_tok = sum(len(x) for x in ids)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_words = sum(len(t.split()) for t in texts)
    n_chars = sum(len(t) for t in texts)
    return {"texts": len(texts), "tokens": n_tok, "words": n_words, "chars": n_chars, "bytes": n_bytes,
            "tokens_per_word": n_tok / max(n_words, 1), "tokens_per_char": n_tok / max(n_chars, 1),
            "tokens_per_byte": n_tok / max(n_bytes, 1), "bytes_per_token": n_bytes / max(n_tok, 1),
            "round_trip": all(decode(tok, x) == t for x, t in zip(ids, texts))}


def unmerged_words(tok: TokenizerLike, texts: Iterable[str]) -> int:
    """How many distinct byte-level words of `texts` still take more than one token (0: nothing left to merge)."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})
    table = byte_decoder()
    surface = [bytes(table[c] for c in w).decode("utf-8") for w in words]
    return sum(len(x) > 1 for x in encode_batch(tok, surface))
