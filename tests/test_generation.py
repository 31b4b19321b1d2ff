"""Hand-written decoding agrees with transformers' own logits processors and greedy search."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from lib.generation import filter_logits, generate


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 5, 1.0), (0.7, 0, 0.9), (1.3, 20, 0.5)])
def test_filter_matches_transformers_warpers(temperature, top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(4, 100)
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1:
        ref = TopPLogitsWarper(top_p)(None, ref)
    ours = filter_logits(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    assert torch.allclose(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


def test_bad_sampling_settings():
    with pytest.raises(ValueError, match="temperature=0"):
        filter_logits(torch.zeros(3), temperature=0)
    with pytest.raises(ValueError, match="top_p=1.5"):
        filter_logits(torch.zeros(3), top_p=1.5)


def test_greedy_matches_model_generate(gpt2_tok):
    tok = gpt2_tok
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(tok), n_positions=64)).eval()
    ours = generate(model, tok, "Once upon a time", max_new_tokens=12)
    ids = tok("Once upon a time", return_tensors="pt").input_ids
    ref = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
    assert ours == tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    a = generate(model, tok, "Once", greedy=False, top_k=50, seed=1)
    assert a == generate(model, tok, "Once", greedy=False, top_k=50, seed=1)  # seeded sampling is reproducible


def test_fluency_measures():
    from lib.generation import distinct_n, word_coverage, words

    assert words("Once upon a time, Lily's cat didn't run.") == [
        "once", "upon", "a", "time", "lily's", "cat", "didn't", "run"]
    assert word_coverage("the cat sat zqxv", {"the", "cat", "sat"}) == 0.75
    assert distinct_n("the dog the dog the dog") == 0.4 and distinct_n("a b c d") == 1.0
