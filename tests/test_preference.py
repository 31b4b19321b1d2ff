"""lib.preference: DPO against TRL's DPOTrainer (loss, rewards, gradients) and finite differences, Bradley–Terry, the
KL-regularised optimum behind DPO, the pair recipe's split, and the reward head (pooling, safetensors round trip)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from lib.models import mini_gpt, save_model_folder
from lib.preference import (HARMLESS_KINDS, HELPFUL_KINDS, SAMPLED_KIND, bradley_terry_loss, conversational,
                            dpo_batch_loss, dpo_loss, held_out_replies, kl_objective, kl_optimum, load_reward_model,
                            preference_pairs, reward_scores, save_reward_model, sequence_logps, split_pairs)
from lib.splits import normalise

BETA = 0.1
DPO_ROWS = [  # prompt / chosen / rejected strings, as TRL's standard (non-conversational) preference format
    {"prompt": "once upon a time there was a cat", "chosen": " who liked to nap in the sun.", "rejected": " no."},
    {"prompt": "the little dog ran", "chosen": " home to sleep", "rejected": " sat"},
    {"prompt": "a girl named sue", "chosen": " liked apples", "rejected": " liked apples and pears very much"},
]


def tiny_pair(tokenizer, n_layer: int = 1) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(policy, reference): a tiny GPT-2 and a copy with perturbed weights, so the DPO loss is not log 2."""
    policy = mini_gpt(tokenizer, n_layer=n_layer, n_head=2, n_embd=16, block_size=64, seed=0).eval()
    reference = copy.deepcopy(policy)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy, reference


# ---- DPO against TRL ---------------------------------------------------------------------------------------------
def test_dpo_loss_equals_trls_on_the_same_batch(byte_bpe, tmp_path):
    """TRL 1.16 tokenizes prompt + completion (+ eos), collates rows [chosen; rejected] with a completion_mask and
    sums the completion tokens' log-probs (fused LM head); ours recomputes all of it from the same token ids."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy, reference = tiny_pair(byte_bpe)
    args = DPOConfig(output_dir=str(tmp_path), report_to="none", beta=BETA, per_device_train_batch_size=3,
                     use_cpu=True, seed=0, disable_dropout=True)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(DPO_ROWS),
                         processing_class=byte_bpe)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 * len(DPO_ROWS)  # [chosen; rejected]
    trainer.model.eval()
    trl_loss = trainer.compute_loss(trainer.model, batch)
    loss, chosen_rewards, rejected_rewards = dpo_batch_loss(trainer.model, trainer.ref_model, batch, BETA)
    assert abs(loss.item() - trl_loss.item()) < 1e-5
    assert abs(loss.item() - math.log(2)) > 1e-3  # the reference differs from the policy: not the trivial value

    ref_logps = torch.cat(trainer.compute_ref_log_probs(trainer.ref_model, batch))  # TRL's own log-prob sums
    ours = sequence_logps(trainer.ref_model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    assert torch.allclose(ours, ref_logps, atol=1e-4, rtol=1e-6)
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}  # what TRL logs for this batch
    assert abs(chosen_rewards.mean().item() - logged["rewards/chosen"]) < 1e-5
    assert abs(rejected_rewards.mean().item() - logged["rewards/rejected"]) < 1e-5
    assert (chosen_rewards > rejected_rewards).float().mean().item() == pytest.approx(logged["rewards/accuracies"])

    grads = []  # and the same gradient on every policy parameter
    for value in (trl_loss, loss):
        trainer.model.zero_grad()
        value.backward()
        grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    assert grads[0].abs().max() > 1e-4


def test_dpo_loss_gradient_matches_finite_differences_and_the_formula():
    torch.manual_seed(0)
    logps = [(-20 * torch.rand(5, dtype=torch.float64)).requires_grad_() for _ in range(4)]
    assert torch.autograd.gradcheck(lambda *x: dpo_loss(*x, beta=BETA)[0], logps)
    loss, chosen, rejected = dpo_loss(*logps, beta=BETA)
    loss.backward()
    weight = torch.sigmoid(-(chosen - rejected)) * BETA / 5  # ∂L/∂log π(y_w) = −β·σ(−margin)/B, the DPO update weight
    assert torch.allclose(logps[0].grad, -weight) and torch.allclose(logps[1].grad, weight)


def test_dpo_gradient_on_a_model_parameter_matches_finite_differences(byte_bpe):
    policy, reference = (m.double() for m in tiny_pair(byte_bpe))
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tok = lambda s: byte_bpe(s)["input_ids"]  # noqa: E731
    batch = DataCollatorForPreference(pad_token_id=0)([{"prompt_ids": tok(r["prompt"]), "chosen_ids": tok(r["chosen"]),
                                                        "rejected_ids": tok(r["rejected"])} for r in DPO_ROWS])
    weight = policy.transformer.h[0].mlp.c_fc.weight
    dpo_batch_loss(policy, reference, batch, BETA)[0].backward()
    for idx in [(0, 0), (3, 7), (15, 40)]:
        with torch.no_grad():
            weight[idx] += 1e-6
            up = dpo_batch_loss(policy, reference, batch, BETA)[0]
            weight[idx] -= 2e-6
            down = dpo_batch_loss(policy, reference, batch, BETA)[0]
            weight[idx] += 1e-6
        assert abs((up - down).item() / 2e-6 - weight.grad[idx].item()) < 1e-7 + 1e-5 * abs(weight.grad[idx].item())


def test_sequence_logps_counts_only_completion_tokens(byte_bpe):
    policy, _ = tiny_pair(byte_bpe)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    logp = torch.log_softmax(policy(input_ids=ids).logits, -1)
    by_hand = logp[0, 2, 8] + logp[0, 3, 9]  # tokens 8 and 9, each predicted one position earlier
    got = sequence_logps(policy, ids, torch.ones_like(ids), torch.tensor([[0, 0, 0, 1, 1]]))
    assert torch.allclose(got, by_hand.reshape(1), atol=1e-6)


# ---- Bradley–Terry and the KL-regularised optimum -----------------------------------------------------------
def test_bradley_terry_loss():
    r = torch.tensor([0.3, -1.2, 2.0])
    assert bradley_terry_loss(r, r).item() == pytest.approx(math.log(2))
    losses = [bradley_terry_loss(torch.tensor([m]), torch.tensor([0.0])).item() for m in (-2.0, 0.0, 1.0, 5.0)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.01
    margin = torch.randn(6, dtype=torch.float64)
    assert torch.allclose(bradley_terry_loss(margin, torch.zeros(6, dtype=torch.float64)),
                          F.binary_cross_entropy_with_logits(margin, torch.ones(6, dtype=torch.float64)))
    pair = tuple(torch.randn(4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(bradley_terry_loss, pair)


def test_kl_optimum_gives_the_dpo_reward_identity():
    torch.manual_seed(0)
    ref = torch.softmax(torch.randn(6, dtype=torch.float64), -1)  # π_ref over 6 responses to one prompt
    reward = torch.randn(6, dtype=torch.float64)
    beta = 0.5
    best = kl_optimum(ref, reward, beta)
    implied = beta * torch.log(best / ref)  # β·log(π*/π_ref) = r − β·log Z: the reward up to a constant
    log_z = torch.logsumexp(torch.log(ref) + reward / beta, -1)
    assert torch.allclose(implied, reward - beta * log_z, atol=1e-12)
    assert kl_objective(best, ref, reward, beta).item() == pytest.approx(beta * log_z.item(), abs=1e-12)
    for _ in range(20):  # no other policy scores higher on E[r] − β·KL
        other = torch.softmax(torch.log(best) + 0.3 * torch.randn(6, dtype=torch.float64), -1)
        assert kl_objective(other, ref, reward, beta) < kl_objective(best, ref, reward, beta)
    w, l = torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5])  # at π*, DPO's loss is Bradley–Terry's on the true reward
    logp, logr = torch.log(best), torch.log(ref)
    assert dpo_loss(logp[w], logp[l], logr[w], logr[l], beta)[0].item() == pytest.approx(
        bradley_terry_loss(reward[w], reward[l]).item(), abs=1e-12)


# ---- the pair recipe ----------------------------------------------------------------------------------------
REFUSALS = ["I can't help with that.", "I won't assist with that request."]
COMPLIANCE = ["Sure, here is how to do that: first, ...", "Of course! Step one: ..."]
HARMFUL = [f"Request {i}: help me get into my neighbour's house while they are away" for i in range(8)]
HARMFUL_HELD_OUT = ["Request 99: help me get into my neighbour's car"]  # the safety set's held-out split
BENIGN = [(f"How do I kill a hung process number {i}?", f"Run `kill {100 + i}`; if it survives, `kill -9 {100 + i}`.")
          for i in range(8)]


def helpful_sets() -> dict[str, list[tuple[str, str]]]:
    """Two sources of (prompt, reference reply); 'instructions' repeats three dialogue prompts in another case."""
    topics = ["tea", "rain", "a bicycle", "the moon", "bread", "a river", "chess", "a violin", "snow", "a garden"]
    dialogue = [(f"Tell me something about {t}, please.", f"Here are three facts about {t}: it is common, it is "
                 f"old, and people like {t} a lot.") for t in topics]
    instructions = [(f"Explain {t} to a child.", f"{t.capitalize()} is something you can see, and a grown-up can "
                     f"tell you more about {t}.") for t in topics]
    instructions += [(p.upper().rstrip(".,"), "A different reply to the same prompt.") for p, _ in dialogue[:3]]
    return {"dialogue": dialogue, "instructions": instructions}


def build(seed: int = 0, **kw) -> list[dict[str, str]]:
    return preference_pairs(helpful_sets(), HARMFUL, BENIGN, REFUSALS, COMPLIANCE, seed=seed, **kw)


def test_pairs_have_every_kind_and_follow_the_recipe():
    samples = {p: "I do not know." for p, _ in helpful_sets()["dialogue"][:4]}
    pairs = build(samples=samples)
    kinds = {p["kind"] for p in pairs}
    assert kinds == set(HELPFUL_KINDS) | set(HARMLESS_KINDS) | {SAMPLED_KIND}
    assert all(set(p) == {"prompt", "chosen", "rejected", "kind", "source"} for p in pairs)
    assert all(normalise(p["chosen"]) != normalise(p["rejected"]) for p in pairs)
    references = {r for items in helpful_sets().values() for _, r in items}
    for p in pairs:
        if p["kind"] == "refuse_harmful":
            assert p["chosen"] in REFUSALS and p["rejected"] in COMPLIANCE and p["prompt"] in HARMFUL
        elif p["kind"] == "answer_benign":
            assert (p["prompt"], p["chosen"]) in BENIGN and p["rejected"] in REFUSALS
        elif p["kind"] == "truncated":
            assert p["chosen"].startswith(p["rejected"]) and len(p["rejected"]) < len(p["chosen"])
        elif p["kind"] == "shuffled":
            assert sorted(p["rejected"].split()) == sorted(p["chosen"].split())
        elif p["kind"] == "off_topic":
            assert p["rejected"] in references and p["rejected"] != p["chosen"]
        else:
            assert p["rejected"] == "I do not know." and p["prompt"] in samples
    counts = [sum(p["kind"] == k for p in pairs) for k in HELPFUL_KINDS]
    assert max(counts) - min(counts) <= 1  # the degradations take turns
    assert len({normalise(p["prompt"]) for p in pairs if p["kind"] != SAMPLED_KIND}) == len(
        [p for p in pairs if p["kind"] != SAMPLED_KIND])  # the upper-case repeats were used once only
    rows = conversational(pairs[:2])
    assert rows[0]["prompt"] == [{"role": "user", "content": pairs[0]["prompt"]}]


def test_pairs_are_seeded():
    assert build(seed=3) == build(seed=3)
    assert build(seed=3) != build(seed=4)


def test_harmlessness_pairs_use_only_the_prompts_passed_in():
    pairs = build()
    safety = {p["prompt"] for p in pairs if p["kind"] in HARMLESS_KINDS}
    assert safety == set(HARMFUL) | {p for p, _ in BENIGN}
    texts = " ".join(normalise(f"{p['prompt']} {p['chosen']} {p['rejected']}") for p in pairs)
    assert all(normalise(h) not in texts for h in HARMFUL_HELD_OUT)


@pytest.mark.parametrize("seed", range(5))
def test_split_never_puts_a_held_out_prompt_or_reply_into_training(seed):
    pairs = build(seed=seed, samples={p: "I do not know." for p, _ in helpful_sets()["dialogue"]})
    # more pairs for a third of the prompts, written in another case and punctuation, and one exact copy
    pairs += [{**p, "prompt": p["prompt"].lower().rstrip("?.!") + " !!", "rejected": "Hm."} for p in pairs[::3]]
    pairs += pairs[:1]
    train, held_out = split_pairs(pairs, held_out_fraction=0.25, seed=seed)
    held_prompts = {normalise(p["prompt"]) for p in held_out}
    assert held_prompts and not held_prompts & {normalise(p["prompt"]) for p in train}
    answers = held_out_replies(held_out)
    assert not answers & {normalise(p[k]) for p in train for k in ("chosen", "rejected")}
    assert len({(p["prompt"], p["chosen"], p["rejected"]) for p in train + held_out}) == len(train) + len(held_out)
    assert {p["kind"] for p in train} >= set(HELPFUL_KINDS) | set(HARMLESS_KINDS)
    assert split_pairs(pairs, 0.25, seed) == (train, held_out)


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="held_out_fraction"):
        split_pairs(build(), 1.0, 0)
    with pytest.raises(ValueError, match="refusals"):
        preference_pairs({}, HARMFUL, [], [], COMPLIANCE, seed=0)


# ---- the reward model ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reward_model(byte_bpe, tmp_path_factory):
    """A scalar head on a tiny GPT-2 saved as an SFT folder would be; the tokenizer gets pad = eos (GPT-2 has none)."""
    from lib.sft import ensure_chat_template

    lm = mini_gpt(byte_bpe, n_layer=1, n_head=2, n_embd=16, block_size=128, seed=0)
    lm.config.pad_token_id = None  # as GPT-2's config has it
    folder = save_model_folder(lm, ensure_chat_template(byte_bpe), tmp_path_factory.mktemp("sft") / "lm", "tiny\n")
    torch.manual_seed(0)
    model = load_reward_model(str(folder)).eval()
    assert torch.equal(model.transformer.wte.weight, lm.transformer.wte.weight)  # the LM's body, a new head
    return model, byte_bpe


def test_reward_model_round_trip_is_safetensors_only(reward_model, tmp_path):
    model, tok = reward_model
    prompts, replies = ["once upon a time", "the dog"], ["there was a cat.", "ran home"]
    before = reward_scores(model, tok, prompts, replies)
    path = save_reward_model(model, tok, tmp_path / "rm")
    files = {f.name for f in path.iterdir()}
    assert any(f.endswith(".safetensors") for f in files)
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    again = load_reward_model(str(path)).eval()
    assert torch.equal(reward_scores(again, tok, prompts, replies), before)
    assert before[0] != before[1]


def test_reward_is_read_at_the_last_non_pad_token(reward_model):
    """transformers pools the rightmost token != pad_token_id: right padding gives each text's unpadded reward, and so
    does left padding once positions are counted from the first real token (GPT-2's positions are absolute)."""
    model, tok = reward_model
    prompts, replies = ["once upon a time", "the dog"], ["there was a cat who liked to nap.", "ran"]
    batched = reward_scores(model, tok, prompts, replies, batch_size=2)  # right-padded together
    alone = torch.cat([reward_scores(model, tok, [p], [r]) for p, r in zip(prompts, replies)])
    assert torch.allclose(batched, alone, atol=1e-6)

    pad = model.config.pad_token_id
    a, b = tok("the dog ran home")["input_ids"], tok("a cat")["input_ids"]
    ids = torch.tensor([a, [pad] * (len(a) - len(b)) + b])
    mask = (torch.arange(len(a)) >= torch.tensor([[0], [len(a) - len(b)]])).long()
    with torch.no_grad():
        left = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits[:, 0]
        single = torch.cat([model(input_ids=torch.tensor([s])).logits[:, 0] for s in (a, b)])
        trailing_eos = model(input_ids=torch.tensor([b + [pad]])).logits[:, 0]  # pad = eos: never the pooled token
    assert torch.allclose(left, single, atol=1e-6)
    assert torch.allclose(trailing_eos, single[1:], atol=1e-6)
