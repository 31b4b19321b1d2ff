"""lib.ner's decoding and right-context options: IOB2 Viterbi against brute force, the look-ahead alignment, a
decoder's causal mask switched off (lib.models.set_causal), and the gpu profile's training path (bf16, its batch
size, GPT-2 and Llama/SmolLM2-shaped models) on CPU with tiny models.
"""
import functools
import itertools
import math

import numpy as np
import pytest
import torch

from lib.config import PROFILES
from lib.data import CONLL_NER_LABELS
from lib.losses import IGNORE_INDEX
from lib.ner import (allowed_starts, allowed_transitions, as_tags, decode, encode, entities, invalid_starts, predict,
                     read_at, train_tagger, viterbi, word_pieces, word_positions, word_scores, words_from_pieces)

NAMES = CONLL_NER_LABELS  # O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC, B-MISC, I-MISC
SMALL = ["O", "B-A", "I-A", "B-B", "I-B"]
SENTENCES = [(["the", "girl", "saw", "Mr.", "Tumnus"], ["O", "O", "O", "B-PER", "I-PER"]),
             (["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
              ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]),
             (["Peter", "Blackburn"], ["B-PER", "I-PER"]),
             (["BRUSSELS", "1996-08-22"], ["B-LOC", "O"]),
             (["Nederlandsche", "Middenstandsbank", "N.V.", "said", "Wednesday"],
              ["B-ORG", "I-ORG", "I-ORG", "O", "O"]),
             (["Lily", "met", "Tom", "in", "New", "York", "."], ["B-PER", "O", "B-PER", "O", "B-LOC", "I-LOC", "O"])]


# ---------------------------------------------------------------- IOB2 transitions and Viterbi

def valid(tags: list[str]) -> bool:
    """Valid IOB2 by two independent checks: no ill-formed I- (lib.ner) and every non-O tag inside a seqeval entity."""
    covered = sum(e - s for s, e, _ in entities([tags])[0])
    return invalid_starts([tags]) == 0 and covered == sum(t != "O" for t in tags)


@functools.cache
def valid_sequences(names: tuple[str, ...], n: int) -> np.ndarray:
    """Every valid IOB2 tag-id sequence of n words, by enumerating all of them."""
    seqs = np.array(list(itertools.product(range(len(names)), repeat=n)))
    return seqs[[valid([names[k] for k in s]) for s in seqs]]


def brute_force(scores: np.ndarray, names: list[str]) -> list[int]:
    """The highest-scoring valid sequence, by brute force."""
    seqs = valid_sequences(tuple(names), len(scores))
    return seqs[scores[np.arange(len(scores)), seqs].sum(1).argmax()].tolist()


def test_allowed_transitions_by_hand():
    t, f = True, False
    #                         to: O  B-A I-A B-B I-B
    assert allowed_transitions(SMALL).tolist() == [[t, t, f, t, f],   # from O
                                                   [t, t, t, t, f],   # from B-A
                                                   [t, t, t, t, f],   # from I-A
                                                   [t, t, f, t, t],   # from B-B
                                                   [t, t, f, t, t]]   # from I-B
    assert allowed_starts(SMALL).tolist() == [t, t, f, t, f]
    trans = allowed_transitions(NAMES)
    assert trans.shape == (9, 9) and trans.sum() == 9 * 9 - 4 * 7  # each I-X: allowed after B-X and I-X only
    with pytest.raises(ValueError, match=r"'X-PER' is not an IOB2 tag"):
        allowed_transitions(["O", "X-PER"])


@pytest.mark.parametrize("names", [SMALL, NAMES], ids=["5 tags", "CoNLL 9 tags"])
def test_viterbi_equals_brute_force_and_is_always_valid(names):
    rng = np.random.default_rng(0)
    n_argmax_valid = 0
    for trial in range(120):
        n = int(rng.integers(1, 6))  # 1 to 5 words
        scores = rng.normal(size=(n, len(names))) * rng.choice([0.5, 3.0])
        if trial % 2:  # log-probabilities, as word_scores returns them
            scores = torch.log_softmax(torch.tensor(scores), -1).numpy()
        path = viterbi(scores, names)
        assert path == brute_force(scores, names), (trial, scores)
        assert valid([names[k] for k in path])
        greedy = scores.argmax(1).tolist()
        if valid([names[k] for k in greedy]):  # an already valid argmax is the best sequence: Viterbi keeps it
            n_argmax_valid += 1
            assert path == greedy
    assert 10 < n_argmax_valid < 110  # both cases were exercised


def test_viterbi_repairs_an_ill_formed_argmax_and_decode_wraps_both():
    scores = np.log([[0.6, 0.05, 0.3, 0.05], [0.05, 0.05, 0.85, 0.05], [0.5, 0.1, 0.1, 0.3]])
    names = ["O", "B-X", "I-X", "B-Y"]
    assert decode([scores], names, "argmax") == [[0, 2, 0]] and invalid_starts(as_tags([[0, 2, 0]], names)) == 1
    assert decode([scores], names) == [[1, 2, 0]]  # B-X I-X O: 0.05 * 0.85 * 0.5 beats O O O, O B-X O: 0.6 * 0.05 * 0.5
    assert viterbi(np.zeros((0, 4)), names) == [] and decode([], names) == []
    with pytest.raises(ValueError, match=r"scores: expected shape \(words, 4\)"):
        viterbi(np.zeros((3, 5)), names)
    with pytest.raises(ValueError, match="expected finite numbers"):
        viterbi(np.array([[0.0, np.nan, 0.0, 0.0]]), names)
    with pytest.raises(ValueError, match="method='beam': expected one of argmax, viterbi"):
        decode([scores], names, "beam")


# ---------------------------------------------------------------- look-ahead alignment

def test_word_positions_on_hand_made_word_ids():
    wids = [0, 1, 1, 1, 2, 3, 3, 4]  # 4 words; the last piece is the end piece (word 4) that lookahead appends
    assert word_positions(wids, "first", 4) == [0, 1, 4, 5]
    assert word_positions(wids, "last", 4) == [0, 3, 4, 6]
    assert word_positions(wids, "lookahead", 4) == [1, 4, 5, 7]
    assert word_positions(wids, "lookahead") == [1, 4, 5, 7]  # the largest word id is taken as the end piece
    assert word_positions(wids[:-1], "first") == [0, 1, 4, 5]
    assert [read_at(s) for s in ("first", "all", "last", "lookahead")] == ["first", "first", "last", "lookahead"]
    with pytest.raises(ValueError, match="reads word 3 at the first piece of word 4, the end piece"):
        word_positions(wids[:-1], "lookahead", 4)
    with pytest.raises(ValueError, match="word 1 has no piece"):
        word_positions([0, 2], "first")
    with pytest.raises(ValueError, match="at='middle': expected one of first, last, lookahead"):
        word_positions(wids, "middle")


def test_lookahead_labels_sit_on_the_next_words_first_piece(byte_bpe):
    words, tags = SENTENCES[0]  # the girl saw Mr. Tumnus
    ids, wids = word_pieces(byte_bpe, words)
    pieces = byte_bpe.convert_ids_to_tokens(ids)
    # the stand-in BPE learnt lower-case stories: a capitalised word starts with a bare space piece
    assert pieces == ["Ġthe", "Ġgirl", "Ġsaw", "Ġ", "M", "r", ".", "Ġ", "T", "um", "n", "u", "s"]
    labels = [NAMES.index(t) for t in tags]
    (ex,) = encode(byte_bpe, [words], [labels], NAMES, "lookahead")
    eos = byte_bpe.eos_token_id
    assert ex["input_ids"] == ids + [eos] and ex["word_ids"] == wids + [len(words)]
    at = [k for k, y in enumerate(ex["labels"]) if y != IGNORE_INDEX]
    assert at == [1, 2, 3, 7, 13]  # girl, saw, Mr.'s first piece, Tumnus's first piece, the appended eos
    assert [byte_bpe.convert_ids_to_tokens(ex["input_ids"][k]) for k in at] == ["Ġgirl", "Ġsaw", "Ġ", "Ġ",
                                                                                 "<|endoftext|>"]
    assert [ex["labels"][k] for k in at] == labels
    assert words_from_pieces(ex["word_ids"], ex["labels"], len(words), "lookahead") == labels
    last = encode(byte_bpe, [words], [labels], NAMES, "last")[0]  # for comparison: each word's own last piece
    assert [k for k, y in enumerate(last["labels"]) if y != IGNORE_INDEX] == [0, 1, 2, 6, 12]


class PieceOracle(torch.nn.Module):
    """A fake token classifier: each piece id's logits point at the tag id (piece id mod 9)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": 5 * torch.nn.functional.one_hot(input_ids % len(NAMES), len(NAMES)).float()})


def test_lookahead_round_trip_with_chunks_and_word_scores(gpt2_tok):
    sents, tags = [w for w, _ in SENTENCES], [[NAMES.index(t) for t in ts] for _, ts in SENTENCES]
    n_words = [len(s) for s in sents]
    whole = encode(gpt2_tok, sents, tags, NAMES, "lookahead")
    longest_word = max(len(word_pieces(gpt2_tok, [w])[0]) for ws in sents for w in ws)
    chunked = encode(gpt2_tok, sents, tags, NAMES, "lookahead", max_length=longest_word)
    assert len(chunked) > len(whole) == len(sents)
    for e in whole:
        assert words_from_pieces(e["word_ids"], e["labels"], n_words[e["sentence"]], "lookahead") == tags[e["sentence"]]
    expected = [words_from_pieces(e["word_ids"], [i % len(NAMES) for i in e["input_ids"]], at="lookahead")
                for e in whole]
    assert predict(PieceOracle(), chunked, n_words, batch_size=3, at="lookahead") == expected
    scores = word_scores(PieceOracle(), whole, n_words, at="lookahead")
    assert [s.shape for s in scores] == [(n, len(NAMES)) for n in n_words]
    assert all(np.allclose(np.exp(s).sum(1), 1, atol=1e-5) for s in scores)  # log-probabilities
    assert decode(scores, NAMES, "argmax") == expected
    assert all(invalid_starts(as_tags([p], NAMES)) == 0 for p in decode(scores, NAMES))
    again = word_scores(PieceOracle(), chunked, n_words, batch_size=3, at="lookahead")
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(again, scores))  # chunks put back in order
    oracle = [torch.log_softmax(5 * torch.eye(len(NAMES))[p], -1).numpy() for p in expected]
    assert all(np.allclose(s, o, atol=1e-6) for s, o in zip(again, oracle))  # log-softmax of the oracle's logits


# ---------------------------------------------------------------- bidirectional attention in a decoder

def tiny_config(arch: str, vocab: int):
    """A 1-layer, 16-wide GPT-2 or Llama (SmolLM2's architecture) config."""
    from transformers import GPT2Config, LlamaConfig

    if arch == "gpt2":
        return GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=vocab, n_positions=64, bos_token_id=0,
                          eos_token_id=0)
    return LlamaConfig(num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, hidden_size=16,
                       intermediate_size=32, vocab_size=vocab, max_position_embeddings=64, bos_token_id=0,
                       eos_token_id=0)


def save_tiny(path, arch: str, vocab: int) -> str:
    """A fresh tiny causal LM saved as a from_pretrained folder; returns its path."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config(arch, vocab)).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bidirectional_lets_a_later_token_change_an_earlier_output(tmp_path, arch, attn):
    from transformers import AutoModelForTokenClassification

    from lib.models import load_token_classifier, set_causal

    path = save_tiny(tmp_path / "tiny", arch, 50)
    x = torch.tensor([[5, 6, 7, 8, 9]])
    y = x.clone()
    y[0, 3] = 20  # change the 4th token
    out = {}
    for bidirectional in (False, True):
        torch.manual_seed(1)  # the same fresh head both times
        model = load_token_classifier(path, SMALL, bidirectional=bidirectional).eval()
        model.set_attn_implementation(attn)
        assert model.config._attn_implementation == attn
        with torch.no_grad():
            a, b = model(input_ids=x).logits, model(input_ids=y).logits
            padded = model(input_ids=torch.cat([x, torch.zeros(1, 3, dtype=torch.long)], 1),
                           attention_mask=torch.tensor([[1] * 5 + [0] * 3])).logits
        assert torch.allclose(padded[:, :5], a, atol=1e-5)  # padding stays masked either way
        out[bidirectional] = (a, b)
    (a, b), (c, d) = out[False], out[True]
    assert torch.allclose(a[0, :3], b[0, :3], rtol=0, atol=1e-6)  # causal: positions before the 4th do not move
    assert not torch.allclose(a[0, 3:], b[0, 3:], atol=1e-4)
    assert not torch.allclose(c[0, :3], d[0, :3], atol=1e-4)  # bidirectional: the earlier positions move too
    assert torch.allclose(a[0, -1], c[0, -1], atol=1e-5)  # one layer: the last position sees the same either way
    model.save_pretrained(tmp_path / "bi")  # the switch is part of the saved config
    again = AutoModelForTokenClassification.from_pretrained(tmp_path / "bi").eval()
    with torch.no_grad():
        assert torch.allclose(again(input_ids=y).logits, d, atol=1e-5)
        assert torch.allclose(set_causal(again, True)(input_ids=y).logits, b, atol=1e-5)


# ---------------------------------------------------------------- the gpu profile's path, on CPU

@pytest.mark.parametrize("arch,strategy,bidirectional", [("gpt2", "lookahead", False), ("llama", "last", True)])
def test_bf16_training_with_the_gpu_batch_size(tmp_path, monkeypatch, byte_bpe, arch, strategy, bidirectional):
    import lib.models

    batch_size = PROFILES["gpu"]["07_ner_evaluation"]["batch_size"]
    path = save_tiny(tmp_path / arch, arch, len(byte_bpe))
    sents, tags = [w for w, _ in SENTENCES], [[NAMES.index(t) for t in ts] for _, ts in SENTENCES]
    copies = math.ceil(2 * batch_size / len(sents))  # two batches per epoch
    examples = encode(byte_bpe, sents * copies, tags * copies, NAMES, strategy, max_length=64)
    dtypes, loaded = set(), []

    def load_and_watch(*args, **kwargs):  # record the dtype of every Linear output while it trains
        model = load(*args, **kwargs)
        loaded.append(model)
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype) if mod.training else None)
        return model

    load = lib.models.load_token_classifier
    monkeypatch.setattr(lib.models, "load_token_classifier", load_and_watch)
    model, hist = train_tagger(path, NAMES, examples, epochs=4, batch_size=batch_size, lr=1e-2, pad_id=0,
                               progress=False, bidirectional=bidirectional, mixed_precision="bf16")
    assert model is loaded[0] and dtypes == {torch.bfloat16}  # autocast ran every Linear in bf16
    assert getattr(model.config, "is_causal", True) == (not bidirectional)
    losses = [r["train_loss"] for r in hist]
    assert hist[-1]["step"] == math.ceil(4 * len(examples) / batch_size)
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]
    pred = predict(model, examples, [len(s) for s in sents * copies], at=read_at(strategy))
    assert next(model.parameters()).dtype == torch.float32 and len(pred) == len(examples)


# ---------------------------------------------------------------- two cores: frozen bottom cached, top trained

def tiny_tagger(tmp_path, byte_bpe, layers: int = 3):
    """A fresh 3-block tiny Llama token classifier over the byte BPE, eval mode."""
    from lib.models import load_token_classifier

    cfg = tiny_config("llama", len(byte_bpe))
    cfg.num_hidden_layers = layers
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "tiny3")
    torch.manual_seed(1)
    return load_token_classifier(str(tmp_path / "tiny3"), NAMES).eval()


def sentence_examples(byte_bpe, strategy: str = "first"):
    sents, tags = [w for w, _ in SENTENCES], [[NAMES.index(t) for t in ts] for _, ts in SENTENCES]
    return encode(byte_bpe, sents, tags, NAMES, strategy, max_length=64), [len(s) for s in sents]


@pytest.mark.parametrize("split_at", [0, 1, 3])
def test_top_tagger_on_cached_states_equals_the_whole_model(tmp_path, byte_bpe, split_at):
    from lib.ner import TopTagger, bottom_cache, top_word_scores

    model = tiny_tagger(tmp_path, byte_bpe)
    examples, n_words = sentence_examples(byte_bpe, "last")
    states = bottom_cache(model, examples, split_at, batch_size=4)
    assert [s.shape[0] for s in states] == [len(e["input_ids"]) for e in examples]
    ours = top_word_scores(TopTagger(model, split_at), examples, states, n_words, at="last", batch_size=4)
    whole = word_scores(model, examples, n_words, batch_size=4, at="last")
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(ours, whole))
    assert all(p.requires_grad for p in model.parameters())  # wrapping freezes nothing; train_top_tagger does
    top = {id(p) for p in TopTagger(model, split_at).top_parameters()}
    named = {n for n, p in model.named_parameters() if id(p) in top}
    assert named and all(n.startswith(("score", "model.norm")) or int(n.split(".")[2]) >= split_at for n in named)


def test_bidirectional_top_over_a_causal_bottom(tmp_path, byte_bpe):
    from lib.models import set_causal
    from lib.ner import TopTagger, bottom_cache, top_word_scores

    model = tiny_tagger(tmp_path, byte_bpe)
    examples, n_words = sentence_examples(byte_bpe)
    states = bottom_cache(set_causal(model, False), examples, 0, batch_size=4)  # split 0: the bottom is embeddings
    assert model.config.is_causal is False  # the cache left the switch as it found it
    ours = top_word_scores(TopTagger(model, 0), examples, states, n_words, batch_size=4)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(ours, word_scores(model, examples, n_words, batch_size=4)))
    causal = word_scores(set_causal(model, True), examples, n_words, batch_size=4)
    assert not all(np.allclose(a, b, atol=1e-4) for a, b in zip(ours, causal))


def test_bf16_cache_is_float32_and_close_but_not_equal(tmp_path, byte_bpe):
    from lib.ner import bottom_cache

    model = tiny_tagger(tmp_path, byte_bpe)
    examples, _ = sentence_examples(byte_bpe)
    exact, rounded = bottom_cache(model, examples, 2), bottom_cache(model, examples, 2, precision="bf16")
    assert all(r.dtype == torch.float32 and r.shape == e.shape for r, e in zip(rounded, exact))
    assert all(torch.allclose(r, e, rtol=0.05, atol=0.05) for r, e in zip(rounded, exact))
    assert not all(torch.equal(r, e) for r, e in zip(rounded, exact))  # the blocks really ran in bfloat16
    with pytest.raises(ValueError, match="precision: expected fp32 or bf16, got 'fp16'"):
        bottom_cache(model, examples, 2, precision="fp16")


@pytest.mark.parametrize("mixed_precision", ["fp32", "bf16"])
def test_train_top_tagger_learns_and_leaves_the_bottom_alone(tmp_path, byte_bpe, mixed_precision):
    from lib.ner import bottom_cache, top_word_scores, train_top_tagger

    model = tiny_tagger(tmp_path, byte_bpe)
    examples, n_words = sentence_examples(byte_bpe)
    bottom = {n: p.detach().clone() for n, p in model.named_parameters() if ".layers.0." in n or "embed" in n}
    states = bottom_cache(model, examples, 1, precision=mixed_precision)
    tagger, hist = train_top_tagger(model, 1, examples * 40, states, epochs=4, batch_size=4, lr=1e-2,
                                    bidirectional=True, progress=False, mixed_precision=mixed_precision)
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    assert all(torch.equal(p, bottom[n]) for n, p in model.named_parameters() if n in bottom)
    pred = decode(top_word_scores(tagger, examples, states, n_words), NAMES, "argmax")
    gold = [[NAMES.index(t) for t in ts] for _, ts in SENTENCES]
    assert np.mean([p == g for ps, gs in zip(pred, gold) for p, g in zip(ps, gs)]) > 0.9


def test_bottom_cache_refuses_chunked_sentences(tmp_path, byte_bpe):
    from lib.ner import bottom_cache

    model = tiny_tagger(tmp_path, byte_bpe)
    sents, tags = [w for w, _ in SENTENCES], [[NAMES.index(t) for t in ts] for _, ts in SENTENCES]
    chunked = encode(byte_bpe, sents, tags, NAMES, max_length=16)
    assert len(chunked) > len(sents)
    with pytest.raises(ValueError, match="cut into chunks"):
        bottom_cache(model, chunked, 1)


@pytest.mark.parametrize("strategy", ["first", "all", "last", "lookahead"])
def test_relabel_gives_each_strategy_its_labels_on_the_lookahead_input(byte_bpe, strategy):
    from lib.ner import relabel

    sents, tags = [w for w, _ in SENTENCES], [[NAMES.index(t) for t in ts] for _, ts in SENTENCES]
    ahead = encode(byte_bpe, sents, tags, NAMES, "lookahead", max_length=64)
    own = encode(byte_bpe, sents, tags, NAMES, strategy, max_length=64)
    for a, o in zip(relabel(ahead, tags, NAMES, strategy), own):
        n = len(o["input_ids"])
        assert a["input_ids"][:n] == o["input_ids"] and a["labels"][:n] == o["labels"]
        assert a["labels"][n:] == ([] if strategy == "lookahead" else [IGNORE_INDEX])
    assert all("labels" in e for e in ahead)  # the input examples are not changed


def test_causal_mask_restores_the_switch_as_found(tmp_path, byte_bpe):
    from lib.models import causal_mask, set_causal

    model = set_causal(tiny_tagger(tmp_path, byte_bpe), False)
    with pytest.raises(RuntimeError), causal_mask(model, True):
        assert model.config.is_causal is True
        raise RuntimeError("inside the block")
    assert model.config.is_causal is False


def test_fresh_head_copies_the_body_and_reinitialises_only_the_head(tmp_path, byte_bpe):
    from lib.models import fresh_head

    model = tiny_tagger(tmp_path, byte_bpe)
    with torch.no_grad():
        model.score.weight.add_(1.0)  # a head that has "trained"
    before = {n: p.clone() for n, p in model.state_dict().items()}
    rng = torch.get_rng_state()
    a, b = fresh_head(model, seed=3), fresh_head(model, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is not reseeded
    with torch.random.fork_rng():  # the head is what a seeded fresh init draws (notebook 07's published heads)
        torch.manual_seed(3)
        assert torch.equal(a.score.weight, torch.nn.init.normal_(torch.empty_like(a.score.weight), std=0.02))
    assert torch.equal(torch.get_rng_state(), rng)  # nor does this test reseed it for the tests after it
    assert all(torch.equal(model.state_dict()[n], v) for n, v in before.items())  # the original is untouched
    assert torch.equal(a.score.weight, b.score.weight) and not torch.equal(a.score.weight, model.score.weight)
    assert a.score.weight.abs().max() < 0.5  # back to N(0, 0.02), not the shifted head
    body = [n for n in before if not n.startswith("score")]
    assert body and all(torch.equal(a.state_dict()[n], before[n]) for n in body)
    assert a.model.layers[0].self_attn.q_proj.weight is not model.model.layers[0].self_attn.q_proj.weight
