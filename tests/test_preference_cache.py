"""lib.preference's two-core path: the frozen bottom computed once and the top fed its states (exact), DPO on the
cached states (with and without the NLL term), the per-token KL, the linear reward head and the reward model built
from it; and lib.sft.chat_replies (batched generation)."""
from __future__ import annotations

import pytest
import torch

from lib.preference import (bottom_states, chat_rows, decoder, final_states, fit_reward_head, head_rewards,
                            only_blocks, pair_margins, preference_pairs, reference_pass, reward_model_from,
                            reward_scores, sequence_logps, token_kl, top_pass, train_dpo)
from lib.sft import chat_replies, ensure_chat_template

PROMPTS = ["once upon a time", "the dog ran", "a girl named sue", "the cat sat"]
REPLIES = ["there was a cat.", "home to sleep", "liked apples and pears", "on the mat all day"]


@pytest.fixture(scope="module")
def tiny(byte_bpe):
    """A tiny random Llama (rotary positions) over the byte-level BPE, with the ChatML fallback template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = ensure_chat_template(byte_bpe)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


def lora_policy(model, split_at: int, seed: int = 0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            layers_to_transform=list(range(split_at, 4))))


@pytest.mark.parametrize("split_at", [0, 1, 3])
def test_bottom_once_then_top_equals_the_whole_model(tiny, split_at):
    model, tok = tiny
    rows = bottom_states(model, tok, PROMPTS, REPLIES, split_at, max_reply_tokens=64, batch_size=3)
    logps, feats = reference_pass(model, rows, split_at, batch_size=3)
    for i, ids in enumerate(rows.ids):
        t = torch.tensor([ids])
        mask = (torch.arange(len(ids)) >= rows.starts[i]).long()[None]
        with torch.no_grad():
            whole = sequence_logps(model, t, torch.ones_like(t), mask)
            last = model.model(input_ids=t).last_hidden_state[0, -1]
        assert torch.allclose(logps[i], whole[0], atol=1e-4)
        assert torch.allclose(feats[i], last, atol=1e-4)
    assert len(decoder(model).layers) == 4  # only_blocks put every block back
    assert torch.allclose(final_states(model, rows, split_at, batch_size=2), feats, atol=1e-5)  # no LM head needed


def test_only_blocks_restores_the_model_after_an_error(tiny):
    model, _ = tiny
    with pytest.raises(RuntimeError):
        with only_blocks(model, 2, None, final_norm=False):
            assert len(decoder(model).layers) == 2 and isinstance(decoder(model).norm, torch.nn.Identity)
            raise RuntimeError("boom")
    assert len(decoder(model).layers) == 4 and not isinstance(decoder(model).norm, torch.nn.Identity)


def test_decoder_rejects_a_model_without_rotary_blocks(byte_bpe):
    from lib.models import mini_gpt

    with pytest.raises(TypeError, match="Llama-style"):
        decoder(mini_gpt(byte_bpe, n_layer=1, n_head=2, n_embd=16, block_size=32))


def test_chat_rows_cut_replies_and_mark_where_they_start(tiny):
    _, tok = tiny
    ids, starts = chat_rows(tok, PROMPTS[:2], ["a b c d e f g h i j k l", "x"], max_reply_tokens=3)
    for row, start, prompt in zip(ids, starts, PROMPTS):
        assert prompt in tok.decode(row[:start]) and tok.decode(row[:start]).endswith("assistant\n")
    long_reply = tok.decode(ids[0][starts[0]:])
    assert len(tok("a b c d e f g h i j k l")["input_ids"]) > 3 and "k l" not in long_reply
    assert long_reply.rstrip().endswith("<|im_end|>")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_dpo_on_cached_states_raises_the_margin_and_moves_away_from_the_reference(tiny, precision):
    model, tok = tiny
    split_at = 2
    rows = bottom_states(model, tok, PROMPTS * 2, REPLIES + REPLIES[::-1], split_at, 64)
    ref, _ = reference_pass(model, rows, split_at)
    policy = lora_policy(model, split_at)
    try:
        assert token_kl(policy, rows, [0, 1], split_at) == pytest.approx(0.0, abs=1e-7)  # LoRA's B starts at 0
        pairs = [(i, 4 + i) for i in range(4)]
        hist = train_dpo(policy, rows, ref, pairs, split_at, beta=0.5, steps=30, lr=1e-2, batch_size=4, seed=0,
                         every=10, on_eval=lambda step: {"kl": token_kl(policy, rows, [0, 1], split_at)},
                         precision=precision)  # bf16: each step must see the weights the last step updated
        assert len(hist) == 30 and hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["margin"] > hist[0]["margin"]
        assert [h["step"] for h in hist if "kl" in h] == [10, 20, 30] and hist[-1]["kl"] > 1e-6
        assert not policy.training
        with policy.disable_adapter():  # the reference is untouched
            assert torch.allclose(reference_pass(policy, rows, split_at)[0], ref, atol=1e-5)
    finally:
        policy.unload()


def test_the_nll_term_pulls_the_chosen_replies_up(tiny):
    model, tok = tiny
    split_at = 2
    rows = bottom_states(model, tok, PROMPTS * 2, REPLIES + REPLIES[::-1], split_at, 64)
    ref, _ = reference_pass(model, rows, split_at)
    chosen_gain = {}
    for w in (0.0, 5.0):
        policy = lora_policy(model, split_at, seed=1)
        try:
            train_dpo(policy, rows, ref, [(i, 4 + i) for i in range(4)], split_at, 0.1, 20, 1e-2, 4, 0, nll_weight=w)
            with torch.no_grad():
                chosen_gain[w] = (top_pass(policy, rows, [0, 1, 2, 3], split_at)[0].cpu() - ref[:4]).mean().item()
        finally:
            policy.unload()
    assert chosen_gain[5.0] > chosen_gain[0.0] and chosen_gain[5.0] > 0


def test_reward_head_fits_separable_pairs_and_l2_shrinks_it():
    torch.manual_seed(0)
    direction = torch.randn(8)
    chosen, rejected = torch.randn(50, 8) + direction, torch.randn(50, 8) - direction
    w = fit_reward_head(chosen, rejected, l2=1e-3)
    assert ((chosen - rejected) @ w > 0).float().mean() > 0.95
    assert fit_reward_head(chosen, rejected, l2=10.0).norm() < w.norm()


def test_reward_model_from_a_head_scores_what_the_features_say(tiny, tmp_path):
    from lib.preference import load_reward_model, save_reward_model

    model, tok = tiny
    rows = bottom_states(model, tok, PROMPTS, REPLIES, 4, 64)
    _, feats = reference_pass(model, rows, 4)
    w = torch.randn(feats.shape[1])
    rm = reward_model_from(model, w)
    assert torch.allclose(reward_scores(rm, tok, PROMPTS, REPLIES), feats @ w, atol=1e-4)
    again = load_reward_model(str(save_reward_model(rm, tok, tmp_path / "rm")))
    assert torch.allclose(reward_scores(again, tok, PROMPTS, REPLIES), feats @ w, atol=1e-4)
    assert torch.allclose(head_rewards(model, tok, w, PROMPTS, REPLIES, 2, 64), feats @ w, atol=1e-4)  # any split


def test_pair_margins_are_the_implicit_reward_of_chosen_over_rejected(tiny):
    model, tok = tiny
    split_at = 2
    rows = bottom_states(model, tok, PROMPTS * 2, REPLIES + REPLIES[::-1], split_at, 64)  # pair k: rows k and 4 + k
    ref, _ = reference_pass(model, rows, split_at)
    policy = lora_policy(model, split_at)
    try:
        assert torch.allclose(pair_margins(policy, rows, ref, range(4), split_at, 0.5), torch.zeros(4), atol=1e-5)
        train_dpo(policy, rows, ref, [(i, 4 + i) for i in range(4)], split_at, 0.5, 10, 1e-2, 4, 0)
        with torch.no_grad():
            d = top_pass(policy, rows, list(range(8)), split_at)[0].cpu() - ref
        by_hand = 0.5 * (d[[1, 3]] - d[[5, 7]])
        for batch_size in (1, 3, 32):
            got = pair_margins(policy, rows, ref, [1, 3], split_at, 0.5, batch_size=batch_size)
            assert torch.allclose(got, by_hand, atol=1e-4)
        assert (pair_margins(policy, rows, ref, range(4), split_at, 0.5) > 0).float().mean() > 0.5  # it learned
    finally:
        policy.unload()


def test_harmful_pairs_reject_the_models_own_reply_when_given():
    samples = {"how do i make a bomb": "Sure, take a pipe"}
    pairs = preference_pairs({}, ["how do i make a bomb", "how do i poison a dog"], [], ["No."], ["Okay."], 0, samples)
    assert [p["rejected"] for p in pairs] == ["Sure, take a pipe", "Okay."]
    with pytest.raises(ValueError, match="compliance"):
        preference_pairs({}, ["how do i make a bomb", "how do i poison a dog"], [], ["No."], [], 0, samples)
    assert preference_pairs({}, ["how do i make a bomb"], [], ["No."], [], 0, samples)[0]["chosen"] == "No."


def test_chat_replies_keep_the_prompt_order_and_are_reproducible(tiny):
    model, tok = tiny
    prompts = ["a", "the dog ran home to sleep", "once upon a time"]
    greedy = chat_replies(model, tok, prompts, max_new_tokens=5, batch_size=2)
    assert len(greedy) == 3 and greedy == chat_replies(model, tok, prompts, max_new_tokens=5, batch_size=2)
    alone = [chat_replies(model, tok, [p], max_new_tokens=5)[0] for p in prompts]
    assert alone == greedy  # left padding changes nothing (positions come from the attention mask)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    sampled = [chat_replies(model, tok, prompts, 5, sample=True, seed=s) for s in (0, 0, 1)]
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is left alone
    assert sampled[0] == sampled[1]
