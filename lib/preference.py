"""Preference tuning: Bradley–Terry, the KL-regularised RLHF optimum, the DPO loss, a reward model and the pair recipe.

Bradley–Terry: P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)); a reward model r is trained by −log σ(r_w − r_l).
RLHF maximises E_π[r] − β·KL(π ‖ π_ref), whose optimum is π*(y|x) = π_ref(y|x)·exp(r(x, y)/β) / Z(x), so that
r(x, y) = β·log(π*(y|x)/π_ref(y|x)) + β·log Z(x). Put into Bradley–Terry, Z cancels: DPO trains π directly with
−log σ(β·[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]).

Pairs (`preference_pairs`) come from data we have: helpfulness pairs prefer a prompt's reference reply over a
degraded copy (DEGRADATIONS) or over the SFT model's sample; harmlessness pairs prefer a refusal for a harmful prompt
and the helpful answer (over a refusal) for a benign prompt that only looks risky. `split_pairs` deduplicates and
splits by normalised prompt, so that no held-out prompt (or its reference reply) is seen in training.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from lib.losses import IGNORE_INDEX, pad_batch, token_nll
from lib.splits import SplitLeakError, assert_disjoint, dedupe, normalise

Pair = dict[str, str]
HELPFUL_KINDS = ("truncated", "off_topic", "shuffled")
HARMLESS_KINDS = ("refuse_harmful", "answer_benign")
SAMPLED_KIND = "sampled"


# ---- losses ----------------------------------------------------------------------------------------------------
def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   completion_mask: torch.Tensor) -> torch.Tensor:
    """(B,) summed log p of each row's completion tokens (completion_mask 1), each predicted from the tokens before."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -input_ids.shape[1]:]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half precision: log-softmax in float32
    return -token_nll(logits, input_ids.masked_fill(completion_mask == 0, IGNORE_INDEX)).sum(dim=1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean −log σ(β·[(π_w − ref_w) − (π_l − ref_l)]), implicit rewards β·(π_w − ref_w), β·(π_l − ref_l)): logps in."""
    chosen, rejected = beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected).mean(), chosen.detach(), rejected.detach()


def dpo_batch_loss(policy, reference, batch: Mapping[str, torch.Tensor],
                   beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dpo_loss on a TRL-layout batch: rows [chosen; rejected] with input_ids, attention_mask, completion_mask."""
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    policy_chosen, policy_rejected = sequence_logps(policy, *args).chunk(2)
    with torch.no_grad():
        ref_chosen, ref_rejected = sequence_logps(reference, *args).chunk(2)
    return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)


def bradley_terry_loss(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> torch.Tensor:
    """The reward model's loss: mean −log σ(r_chosen − r_rejected), −log P(chosen ≻ rejected) under Bradley–Terry."""
    return -F.logsigmoid(reward_chosen - reward_rejected).mean()


def kl_optimum(ref_probs: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """The policy maximising E_π[r] − β·KL(π ‖ π_ref) over a categorical: π* ∝ π_ref · exp(r / β) (last dim)."""
    return torch.softmax(torch.log(ref_probs) + rewards / beta, dim=-1)


def kl_objective(probs: torch.Tensor, ref_probs: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """E_π[r] − β·KL(π ‖ π_ref) of a categorical policy π (last dim), the objective RLHF maximises."""
    kl = (probs * (torch.log(probs) - torch.log(ref_probs))).sum(-1)
    return (probs * rewards).sum(-1) - beta * kl


# ---- reward model ------------------------------------------------------------------------------------------------
def load_reward_model(name: str, device: str = "cpu"):
    """A causal LM with a scalar head (AutoModelForSequenceClassification, num_labels=1): new from a model name, or
    a saved one from its folder; it scores the rightmost token that is not pad_token_id (set to eos when missing)."""
    from transformers import AutoModelForSequenceClassification

    from lib.models import _load

    model = _load(AutoModelForSequenceClassification, name, num_labels=1)
    if model.config.pad_token_id is None:  # GPT-2 has none; the head needs it to find each row's last token
        model.config.pad_token_id = model.config.eos_token_id
    return model.to(device)


def save_reward_model(model, tokenizer, path: str | Path, card: str = "A reward model: a scalar head on a causal LM, "
                      "trained with the Bradley-Terry loss (lib.preference).\n") -> Path:
    """Write a from_pretrained folder (safetensors only, config, tokenizer, README card) whole or not at all."""
    from lib.models import save_model_folder

    return save_model_folder(model, tokenizer, Path(path), card)


@torch.no_grad()
def reward_scores(model, tokenizer, prompts: Sequence[str], replies: Sequence[str],
                  batch_size: int = 8) -> torch.Tensor:
    """(len(replies),) rewards of user prompt → assistant reply conversations (chat template, right-padded batches)."""
    from lib.sft import ensure_chat_template, render_ids

    if len(prompts) != len(replies):
        raise ValueError(f"prompts and replies: expected equal lengths, got {len(prompts)} and {len(replies)}")
    ensure_chat_template(tokenizer)
    seqs = [render_ids(tokenizer, [{"role": "user", "content": p}, {"role": "assistant", "content": r}])
            for p, r in zip(prompts, replies)]
    model.eval()
    device, out = next(model.parameters()).device, []
    for start in range(0, len(seqs), batch_size):
        ids, mask = pad_batch(seqs[start:start + batch_size], model.config.pad_token_id)
        out.append(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float().cpu())
    return torch.cat(out)


# ---- pairs ------------------------------------------------------------------------------------------------------
def truncated(reply: str, rng: random.Random) -> str:
    """The reply cut to its first third of words (at least one): an incomplete answer (teaches completeness)."""
    words = reply.split()
    return " ".join(words[:max(1, len(words) // 3)])


def shuffled(reply: str, rng: random.Random) -> str:
    """The reply's words in a seeded random order: the same words, no grammar (teaches fluency, not vocabulary)."""
    words = reply.split()
    rng.shuffle(words)
    return " ".join(words)


def off_topic(replies: Sequence[str], norms: Sequence[str], i: int, rng: random.Random) -> str:
    """Another seeded-random reply whose normalised text differs from reply i's: fluent and complete, but not an
    answer to this prompt (teaches relevance); reply i itself when all replies are the same."""
    for _ in range(32):  # a few random draws nearly always find one
        j = rng.randrange(len(replies))
        if norms[j] != norms[i]:
            return replies[j]
    others = [j for j in range(len(replies)) if norms[j] != norms[i]]
    return replies[rng.choice(others)] if others else replies[i]


DEGRADATIONS: dict[str, Callable[[str, random.Random], str]] = {"truncated": truncated, "shuffled": shuffled}


def preference_pairs(helpful: Mapping[str, Sequence[tuple[str, str]]], harmful: Sequence[str],
                     benign: Sequence[tuple[str, str]], refusals: Sequence[str], compliance: Sequence[str],
                     seed: int, samples: Mapping[str, str] | None = None,
                     safety_source: str = "safety") -> list[Pair]:
    """{"prompt", "chosen", "rejected", "kind", "source"} pairs, a pure function of the inputs and the seed.

    helpful: source name -> (prompt, reference reply); each prompt gets one degraded reply, the kinds of
    HELPFUL_KINDS taken in turn from a seeded order (a kind that leaves the reply unchanged gives way to the next).
    samples: prompt -> the SFT model's reply; adds a "sampled" pair (reference ≻ sample) where the two differ.
    harmful: prompts whose chosen reply is a refusal (from `refusals`), the rejected one a compliance-style
    placeholder (from `compliance`, no harmful content). benign: (risky-looking prompt, helpful answer) pairs whose
    answer is preferred over a refusal. Only these prompts are used: pass the safety set's training split only.
    Each prompt is used once (the first occurrence of its normalised text: harmful, benign, then helpful sources).
    """
    for name, values in (("refusals", refusals), ("compliance", compliance)):
        if (harmful or benign) and not values:
            raise ValueError(f"{name}: expected at least one reply to use in the harmlessness pairs")
    rng, pairs = random.Random(seed), []
    seen: set[str] = set()

    def first(prompt: str) -> bool:
        key = normalise(prompt)
        if not key or key in seen:
            return False
        seen.add(key)
        return True

    for p in harmful:
        if first(p):
            pairs.append({"prompt": p, "chosen": rng.choice(refusals), "rejected": rng.choice(compliance),
                          "kind": "refuse_harmful", "source": safety_source})
    for p, answer in benign:
        if answer.strip() and first(p):
            pairs.append({"prompt": p, "chosen": answer, "rejected": rng.choice(refusals),
                          "kind": "answer_benign", "source": safety_source})
    rows = [(src, p, r) for src, items in helpful.items() for p, r in items if r.strip() and first(p)]
    replies = [r for _, _, r in rows]
    norms = [normalise(r) for r in replies]
    kinds = list(HELPFUL_KINDS)
    for i, (src, prompt, reply) in enumerate(rows):
        if i % len(kinds) == 0:  # each run of len(kinds) prompts gets every kind once, in a seeded order
            rng.shuffle(kinds)
        for kind in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:
            worse = off_topic(replies, norms, i, rng) if kind == "off_topic" else DEGRADATIONS[kind](reply, rng)
            if normalise(worse) != norms[i]:
                pairs.append({"prompt": prompt, "chosen": reply, "rejected": worse, "kind": kind, "source": src})
                break
        sample = (samples or {}).get(prompt)
        if sample is not None and normalise(sample) != norms[i]:
            pairs.append({"prompt": prompt, "chosen": reply, "rejected": sample, "kind": SAMPLED_KIND, "source": src})
    return pairs


def pair_key(pair: Mapping[str, str]) -> tuple[str, str, str]:
    """What makes two pairs duplicates: the normalised prompt, chosen and rejected texts."""
    return normalise(pair["prompt"]), normalise(pair["chosen"]), normalise(pair["rejected"])


def held_out_replies(held_out: Sequence[Mapping[str, str]]) -> set[str]:
    """Normalised reference replies of held-out pairs (every chosen text but the shared refusal templates)."""
    return {normalise(p["chosen"]) for p in held_out if p.get("kind") != "refuse_harmful"}


def split_pairs(pairs: Sequence[Mapping[str, Any]], held_out_fraction: float,
                seed: int) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """(train, held-out): duplicates dropped (pair_key), whole prompts (normalised) held out, seeded.

    A training pair that contains a held-out pair's reference reply (an off-topic rejected reply, or another
    prompt with the same answer) is dropped too, so that training never sees a held-out answer; the refusal
    templates are shared by design. Raises SplitLeakError if a held-out prompt or reply is left in training.
    """
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction={held_out_fraction}: expected a number strictly between 0 and 1")
    pairs = dedupe(pairs, pair_key)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for p in pairs:
        groups.setdefault(normalise(p["prompt"]), []).append(p)
    order = sorted(groups)  # a set order before the seeded shuffle: the split does not depend on the input order
    random.Random(seed).shuffle(order)
    n_held = max(1, round(held_out_fraction * len(order)))
    if n_held >= len(order):
        raise ValueError(f"held_out_fraction={held_out_fraction}: {len(order)} distinct prompt(s) leave none "
                         "for training")
    held_out = [p for k in order[:n_held] for p in groups[k]]
    answers = held_out_replies(held_out)
    train = [p for k in order[n_held:] for p in groups[k]
             if normalise(p["chosen"]) not in answers and normalise(p["rejected"]) not in answers]
    assert_disjoint(train, held_out, key=lambda p: normalise(p["prompt"]))
    leaked = {t for p in train for t in (normalise(p["chosen"]), normalise(p["rejected"]))} & answers
    if leaked:
        raise SplitLeakError(f"{len(leaked)} held-out reply(ies) in training pairs, e.g. {min(leaked)[:160]!r}")
    return train, held_out


def conversational(pairs: Sequence[Mapping[str, str]]) -> list[dict[str, list[dict[str, str]]]]:
    """Pairs as TRL's conversational preference rows: prompt [user], chosen and rejected [assistant] messages."""
    return [{"prompt": [{"role": "user", "content": p["prompt"]}],
             "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
