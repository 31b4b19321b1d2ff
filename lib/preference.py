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

import copy
import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from lib.losses import IGNORE_INDEX, pad_batch, token_nll
from lib.splits import SplitLeakError, assert_disjoint, dedupe, normalise

Pair = dict[str, str]
HELPFUL_KINDS = ("truncated", "off_topic", "shuffled")
HARMLESS_KINDS = ("refuse_harmful", "answer_benign")
SAMPLED_KIND = "sampled"
REFUSALS = {"en": ["I can't help with that.", "I'm sorry, but I can't help with that request.",
                   "I cannot assist with that."],
            "zh": ["抱歉，我不能帮助你。", "对不起，我无法提供这方面的帮助。"]}  # the chosen replies to harmful prompts


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


# ---- a frozen bottom, computed once -------------------------------------------------------------------------------
def unwrap(model):
    """The causal LM itself: a PEFT wrapper's base model, else the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder(model):
    """The decoder stack (embeddings, `layers`, `norm`) of a Llama-style causal LM, through a PEFT wrapper."""
    base = unwrap(model)
    if not hasattr(getattr(base, "model", None), "layers"):
        raise TypeError(f"{type(base).__name__}: expected a Llama-style causal LM (model.model.layers; rotary "
                        "positions, so a block's input can be fed back in as inputs_embeds)")
    return base.model


@contextmanager
def only_blocks(model, start: int, stop: int | None = None, final_norm: bool = True) -> Iterator[Any]:
    """Run decoder blocks [start, stop) only; without `final_norm` the output is the raw residual stream."""
    dec = decoder(model)
    layers, norm = dec.layers, dec.norm
    dec.layers = layers[start:stop]
    if not final_norm:
        dec.norm = torch.nn.Identity()
    try:
        yield dec
    finally:
        dec.layers, dec.norm = layers, norm


@dataclass
class Rows:
    """Chat-rendered sequences (prompt, reply, end marker), where each reply starts, and the frozen bottom's states."""

    ids: list[list[int]]
    starts: list[int]
    states: list[torch.Tensor]


def chat_rows(tokenizer, prompts: Sequence[str], replies: Sequence[str], max_reply_tokens: int) -> tuple[list, list]:
    """(token ids, reply start) of user prompt → assistant reply conversations rendered whole by the chat template
    (as reward_scores renders them), each reply first cut to max_reply_tokens tokens."""
    from lib.sft import ensure_chat_template, render_ids

    ensure_chat_template(tokenizer)
    ids, starts = [], []
    for prompt, reply in zip(prompts, replies, strict=True):
        head = render_ids(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
        cut = tokenizer.decode(tokenizer(reply.strip(), add_special_tokens=False)["input_ids"][:max_reply_tokens])
        row = render_ids(tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": cut}])
        if row[:len(head)] != head:
            raise ValueError(f"the chat template renders the prompt {prompt[:60]!r} differently once a reply follows")
        ids.append(row)
        starts.append(len(head))
    return ids, starts


@torch.no_grad()
def block_states(model, ids: Sequence[Sequence[int]], split_at: int, pad_id: int, batch_size: int = 16,
                 desc: str | None = None) -> list[torch.Tensor]:
    """Each sequence's residual stream after the first `split_at` blocks (causal, frozen), float32 on the CPU;
    sequences of similar length share a batch; `desc` shows a progress bar."""
    from tqdm.auto import tqdm

    from lib.models import causal_mask

    states: list[torch.Tensor] = [torch.empty(0)] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    device = next(model.parameters()).device
    with causal_mask(model, True), only_blocks(model, 0, split_at, final_norm=False) as dec:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=desc is None):
            idx = order[start:start + batch_size]
            batch, mask = pad_batch([ids[i] for i in idx], pad_id)
            hidden = dec(input_ids=batch.to(device), attention_mask=mask.to(device), use_cache=False).last_hidden_state
            for k, i in enumerate(idx):
                states[i] = hidden[k, :len(ids[i])].float().cpu()
    return states


def bottom_states(model, tokenizer, prompts: Sequence[str], replies: Sequence[str], split_at: int,
                  max_reply_tokens: int = 48, batch_size: int = 16) -> Rows:
    """Rows with each one's residual stream after the first `split_at` blocks (frozen and shared: computed once)."""
    ids, starts = chat_rows(tokenizer, prompts, replies, max_reply_tokens)
    return Rows(ids, starts, block_states(model, ids, split_at, tokenizer.pad_token_id, batch_size))


def _top_hidden(model, rows: Rows, idx: Sequence[int], split_at: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(final hidden states, attention mask) of rows idx: their cached states through blocks split_at..end."""
    device = next(model.parameters()).device
    width = max(len(rows.ids[i]) for i in idx)
    x = torch.zeros(len(idx), width, rows.states[idx[0]].shape[-1], device=device)
    mask = torch.zeros(len(idx), width, dtype=torch.long, device=device)
    for k, i in enumerate(idx):
        x[k, :len(rows.ids[i])], mask[k, :len(rows.ids[i])] = rows.states[i], 1
    with only_blocks(model, split_at) as dec:
        hidden = dec(inputs_embeds=x.to(next(model.parameters()).dtype), attention_mask=mask,
                     use_cache=False).last_hidden_state
    return hidden, mask


def _last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's final hidden state at its last token, float32."""
    return hidden[torch.arange(len(mask), device=hidden.device), mask.sum(1) - 1].float()


def top_pass(model, rows: Rows, idx: Sequence[int], split_at: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log p of each row's reply tokens, final hidden state at each row's last token): blocks split_at..end,
    the LM head only where a reply token is predicted. Gradients flow where the model has trainable weights."""
    hidden, mask = _top_hidden(model, rows, idx, split_at)
    device = hidden.device
    pos, target, owner = [], [], []
    for k, i in enumerate(idx):
        n = len(rows.ids[i])
        pos += [(k, t) for t in range(rows.starts[i] - 1, n - 1)]  # position t predicts token t + 1
        target += rows.ids[i][rows.starts[i]:]
        owner += [k] * (n - rows.starts[i])
    rows_t, cols_t = torch.tensor(pos, device=device).T
    logp = unwrap(model).lm_head(hidden[rows_t, cols_t]).float().log_softmax(-1)
    tok = logp.gather(1, torch.tensor(target, device=device)[:, None])[:, 0]
    sums = torch.zeros(len(idx), device=device).index_add(0, torch.tensor(owner, device=device), tok)
    return sums, _last(hidden, mask)


@torch.no_grad()
def final_states(model, rows: Rows, split_at: int, batch_size: int = 16) -> torch.Tensor:
    """The final hidden state at each row's last token (a reward head's features), without the LM head; CPU."""
    return torch.cat([_last(*_top_hidden(model, rows, list(range(s, min(s + batch_size, len(rows.ids)))), split_at))
                      for s in range(0, len(rows.ids), batch_size)]).cpu()


def head_rewards(model, tokenizer, weight: torch.Tensor, prompts: Sequence[str], replies: Sequence[str],
                 split_at: int, max_reply_tokens: int) -> torch.Tensor:
    """Rewards of a linear head on each conversation's final hidden state (`final_states`), run the two-core way: the
    bottom blocks once (`bottom_states`), then the top; equals `reward_scores` of `reward_model_from(model, weight)`."""
    rows = bottom_states(model, tokenizer, prompts, replies, split_at, max_reply_tokens)
    return final_states(model, rows, split_at) @ weight


@torch.no_grad()
def pair_margins(policy, rows: Rows, ref_logps: torch.Tensor, pairs: Sequence[int], split_at: int, beta: float,
                 batch_size: int = 32) -> torch.Tensor:
    """DPO's implicit reward margins β·[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)] of pairs k,
    whose chosen reply is row k and rejected reply row n + k (rows hold [chosen; rejected], n pairs each); CPU."""
    n, pairs = len(rows.ids) // 2, list(pairs)
    idx = pairs + [n + k for k in pairs]
    lp = torch.cat([top_pass(policy, rows, idx[s:s + batch_size], split_at)[0]
                    for s in range(0, len(idx), batch_size)]).cpu()
    d = lp - ref_logps[idx]
    return beta * (d[:len(pairs)] - d[len(pairs):])


@torch.no_grad()
def reference_pass(model, rows: Rows, split_at: int, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """top_pass over all rows without gradients (the reference: the policy before training): (logps, features)."""
    out = [top_pass(model, rows, list(range(s, min(s + batch_size, len(rows.ids)))), split_at)
           for s in range(0, len(rows.ids), batch_size)]
    return torch.cat([o[0] for o in out]).cpu(), torch.cat([o[1] for o in out]).cpu()


@torch.no_grad()
def token_kl(policy, rows: Rows, idx: Sequence[int], split_at: int) -> float:
    """Mean KL(π ‖ π_ref) of the next-token distributions over the reply tokens of the rows (π_ref: the PEFT
    policy with its adapters switched off)."""
    def dists(model) -> torch.Tensor:
        logps, head = [], unwrap(model).lm_head
        for k in idx:  # one row at a time: the reply's positions only
            with only_blocks(model, split_at) as dec:
                h = dec(inputs_embeds=rows.states[k][None], use_cache=False).last_hidden_state[0]
            logps.append(head(h[rows.starts[k] - 1:len(rows.ids[k]) - 1]).float().log_softmax(-1))
        return torch.cat(logps)

    pol = dists(policy)
    with policy.disable_adapter():
        ref = dists(policy)
    return (pol.exp() * (pol - ref)).sum(-1).mean().item()


def train_dpo(policy, rows: Rows, ref_logps: torch.Tensor, pairs: Sequence[tuple[int, int]], split_at: int, beta: float,
              steps: int, lr: float, batch_size: int, seed: int, nll_weight: float = 0.0,
              every: int = 0, on_eval: Callable[[int], Mapping[str, float]] | None = None,
              precision: str = "fp32") -> list[dict[str, float]]:
    """DPO on (chosen row, rejected row) index pairs, AdamW on the trainable weights, seeded shuffled batches, plus
    nll_weight × the chosen replies' mean token NLL (RPO; TRL's rpo_alpha); one history row per step (loss, margin,
    accuracy), plus on_eval(step)'s numbers every `every` steps; each forward (and on_eval) under `precision`."""
    from tqdm.auto import tqdm

    from lib.training import autocast

    device = next(policy.parameters()).device.type
    params = [p for p in policy.parameters() if p.requires_grad]
    opt, rng, history, order = torch.optim.AdamW(params, lr=lr, weight_decay=0.0), random.Random(seed), [], []
    policy.train()
    for step in tqdm(range(1, steps + 1), desc=f"DPO β={beta}", leave=False):
        if len(order) < batch_size:
            order += rng.sample(range(len(pairs)), len(pairs))
        batch, order = [pairs[j] for j in order[:batch_size]], order[batch_size:]
        chosen, rejected = [c for c, _ in batch], [r for _, r in batch]
        with autocast(precision, device):  # a fresh context per step: it caches bf16 copies of the weights
            logps, _ = top_pass(policy, rows, chosen + rejected, split_at)
        loss, r_c, r_r = dpo_loss(*logps.chunk(2), ref_logps[chosen].to(logps.device),
                                  ref_logps[rejected].to(logps.device), beta)
        if nll_weight:
            n_tok = sum(len(rows.ids[i]) - rows.starts[i] for i in chosen)
            loss = loss - nll_weight * logps[:len(chosen)].sum() / n_tok
        opt.zero_grad()
        loss.backward()
        opt.step()
        row = {"step": step, "loss": loss.item(), "margin": (r_c - r_r).mean().item(),
               "accuracy": (r_c > r_r).float().mean().item()}
        if on_eval is not None and every and (step % every == 0 or step == steps):
            policy.eval()
            with autocast(precision, device):
                row.update(on_eval(step))
            policy.train()
        history.append(row)
    policy.eval()
    return history


def fit_reward_head(chosen: torch.Tensor, rejected: torch.Tensor, l2: float, steps: int = 200) -> torch.Tensor:
    """(d,) weights w of a linear reward r = w·h on frozen features: Bradley–Terry loss + l2·|w|², by L-BFGS."""
    diff = (chosen - rejected).double()
    w = torch.zeros(diff.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = bradley_terry_loss(diff @ w, torch.zeros(len(diff), dtype=torch.float64)) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float()


def reward_model_from(lm, weight: torch.Tensor):
    """An AutoModelForSequenceClassification (one label) sharing the causal LM's body, its score head set to weight."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(lm.config)
    config.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(config)
    rm.model.load_state_dict(decoder(lm).state_dict())
    rm.config.pad_token_id = lm.config.pad_token_id if lm.config.pad_token_id is not None else lm.config.eos_token_id
    with torch.no_grad():
        rm.score.weight.copy_(weight[None].to(rm.score.weight.dtype))
    return rm.eval()


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
    harmful: prompts whose chosen reply is a refusal (from `refusals`), the rejected one the SFT model's own reply
    from `samples` (on-policy: what DPO must move away from) or else a compliance-style placeholder (`compliance`).
    benign: (risky-looking prompt, helpful answer) pairs whose answer is preferred over a refusal. Only these
    prompts are used: pass the safety set's training split only.
    Each prompt is used once (the first occurrence of its normalised text: harmful, benign, then helpful sources).
    """
    samples = samples or {}
    if (harmful or benign) and not refusals:
        raise ValueError("refusals: expected at least one reply to use in the harmlessness pairs")
    if not compliance and any(not samples.get(p) for p in harmful):
        raise ValueError("compliance: expected at least one reply for the harmful prompts without a sample")
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
            refusal = rng.choice(refusals)  # drawn first: the seeded sequence does not depend on `samples`
            pairs.append({"prompt": p, "chosen": refusal, "rejected": samples.get(p) or rng.choice(compliance),
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
        sample = samples.get(prompt)
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
