"""Prompt tuning, LoRA, the answer-only examples and the comparison helpers, on a tiny GPT-2 with GPT-2's tokenizer (or
its stand-in) and the 48 hand-written film reviews of tests/fixtures."""
from functools import partial

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lib.losses import IGNORE_INDEX, verbalizer_logprobs
from lib.models import count_parameters
from lib.prompting import Template
from lib.stats import mcnemar
from lib.training import TrainConfig, collate, cosine_schedule, evaluate, make_optimizer, train
from lib.tuning import (EvalSet, adam_move_bound, answer_examples, compare, lora, moved, nearest_tokens,
                        paired_tests, prompt_vectors, soft_prompt, sweep_then_seeds)

TEMPLATE = "Review: {text}\nSentiment:"
WORDS = [" negative", " positive"]


@pytest.fixture(scope="module")
def tok(gpt2_tok):
    """GPT-2's tokenizer, or without the data its stand-in of the same kind (tests/conftest.py)."""
    return gpt2_tok


@pytest.fixture(scope="module")
def sst2(tok, reviews):
    texts, labels = reviews
    return texts, labels, answer_examples(tok, [TEMPLATE.format(text=t) for t in texts], [WORDS[y] for y in labels])


def tiny(tok, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(tok), n_positions=128,
                                      loss_type="ForCausalLM")).eval()


def fit(model, examples, tok, steps: int = 12, lr: float = 3e-2):
    cfg = TrainConfig(max_steps=steps, batch_size=8, lr=lr, weight_decay=0.0, progress=False)
    return train(model, examples, None, cfg, collate=partial(collate, pad_id=tok.eos_token_id))


def test_answer_examples_label_only_the_answer(tok, sst2):
    ex = sst2[2][0]
    answer = tok(WORDS[sst2[1][0]], add_special_tokens=False)["input_ids"]
    assert ex["input_ids"][-len(answer):] == answer
    assert ex["labels"] == [IGNORE_INDEX] * (len(ex["input_ids"]) - len(answer)) + answer


def test_text_init_copies_the_text_embeddings_and_nearest_tokens_recover_it(tok):
    ids = tok("Is it good or bad?", add_special_tokens=False)["input_ids"]
    model = soft_prompt(tiny(tok), len(ids), "text", tok, "Is it good or bad?")
    assert torch.equal(prompt_vectors(model).detach(), model.get_input_embeddings().weight[ids].detach())
    words, sims = nearest_tokens(model, tok, k=1)
    assert [w[0] for w in words] == [tok.decode([i]) for i in ids]
    assert torch.allclose(sims[:, 0], torch.ones(len(ids)), atol=1e-5)


def test_prompt_tuning_trains_only_the_prompt(tok, sst2):
    model = soft_prompt(tiny(tok), 4, "vocab", tok, seed=1)
    assert count_parameters(model, trainable_only=True) == 4 * 32
    frozen = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    before = prompt_vectors(model).detach().clone()
    loss_before = evaluate(model, sst2[2], partial(collate, pad_id=tok.eos_token_id))  # the same examples both times
    fit(model, sst2[2], tok)
    loss_after = evaluate(model, sst2[2], partial(collate, pad_id=tok.eos_token_id))
    assert loss_after < loss_before
    assert not torch.equal(prompt_vectors(model).detach(), before)
    assert all(torch.equal(v, model.base_model.state_dict()[k]) for k, v in frozen.items())


def test_scoring_a_soft_prompt_model_skips_its_virtual_positions(tok, sst2):
    model = soft_prompt(tiny(tok), 3, "random", seed=2).eval()
    texts = sst2[0][:3]
    got = verbalizer_logprobs(model, tok, texts, TEMPLATE, WORDS)
    base, prompt = model.get_base_model(), prompt_vectors(model).detach()
    for i, text in enumerate(texts):  # by hand: [prompt vectors; token embeddings], each word token's log-probability
        p = tok(TEMPLATE.format(text=text))["input_ids"]
        for j, word in enumerate(WORDS):
            w = tok(word, add_special_tokens=False)["input_ids"]
            embeds = torch.cat([prompt[None], base.get_input_embeddings()(torch.tensor([p + w]))], dim=1)
            logp = torch.log_softmax(base(inputs_embeds=embeds).logits[0], -1)
            want = sum(logp[len(prompt) + len(p) - 1 + k, t] for k, t in enumerate(w))
            assert torch.allclose(got[i, j], want, atol=1e-4)


def test_lora_trains_low_rank_updates_only(tok, sst2):
    model = lora(tiny(tok), r=4, alpha=8)
    # GPT-2's c_attn maps 32 -> 96 in each of 2 blocks: A is 4x32, B is 96x4
    assert count_parameters(model, trainable_only=True) == 2 * 4 * (32 + 96)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    hist = fit(model, sst2[2], tok, lr=1e-2)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())


def test_bad_init_names_the_choices(tok):
    with pytest.raises(ValueError, match="expected one of text, vocab, random"):
        soft_prompt(tiny(tok), 2, "zeros")
    with pytest.raises(ValueError, match="non-empty init_text"):
        soft_prompt(tiny(tok), 2, "text", tok)


def test_lora_seed_draws_the_a_matrices(tok):
    a = [lora(tiny(tok), r=2, seed=s).state_dict() for s in (0, 0, 1)]
    keys = [k for k in a[0] if "lora_A" in k]
    assert keys and all(torch.equal(a[0][k], a[1][k]) for k in keys)
    assert not all(torch.equal(a[0][k], a[2][k]) for k in keys)


def _adam_run(cfg: TrainConfig, grads: np.ndarray) -> float:
    """Largest entry move of AdamW with the optimizer and schedule of lib.training, fed the gradients grads[t]."""
    p = torch.nn.Parameter(torch.zeros(1, grads.shape[1]))
    opt = make_optimizer(torch.nn.ParameterList([p]), cfg)
    sched = cosine_schedule(opt, cfg)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float32)[None]
        opt.step()
        sched.step()
    return p.detach().abs().max().item()


@pytest.mark.parametrize("warmup", [0, 3])
def test_adam_move_bound_holds_and_a_steady_gradient_nearly_reaches_it(warmup):
    cfg = TrainConfig(max_steps=20, lr=0.1, warmup_steps=warmup, weight_decay=0.0)
    bound = adam_move_bound(cfg)
    steady = _adam_run(cfg, np.ones((20, 1)))  # |m̂/√v̂| = 1 each step: the move is the sum of the step sizes
    assert steady <= bound <= 1.2 * steady
    rng = np.random.default_rng(0)
    kinds = [rng.normal(size=(20, 64)), np.exp(rng.normal(scale=3, size=(20, 64))),  # heavy-tailed magnitudes
             np.cumprod(np.full((20, 64), 1.5), axis=0) * np.sign(rng.normal(size=64))]  # growing gradients
    assert all(_adam_run(cfg, g) <= bound for g in kinds)
    with pytest.raises(ValueError, match="weight_decay"):
        adam_move_bound(TrainConfig(max_steps=5, weight_decay=0.1))


def test_moved_measures_relative_and_largest_change():
    before = torch.tensor([[3.0, 4.0]])
    assert moved(before + torch.tensor([[0.0, 0.5]]), before) == pytest.approx({"moved": 0.1, "max_move": 0.5})


@pytest.fixture(scope="module")
def sets(tok, sst2):
    template = Template("t", TEMPLATE, {"negative": (" negative",), "positive": (" positive",)})
    pairs = list(zip(sst2[0], sst2[1]))
    return EvalSet.of(tok, template, pairs[:8]), EvalSet.of(tok, template, pairs[8:20])


def test_eval_set_scores_with_the_label_words(tok, sets):
    val, _ = sets
    model = tiny(tok)
    assert torch.equal(val.scores(model), verbalizer_logprobs(model, tok, val.texts, TEMPLATE, WORDS))
    assert val.accuracy(model) == np.mean(val.scores(model).argmax(1).numpy() == np.array(val.labels))


def test_sweep_then_seeds_picks_on_validation_and_reruns_the_pick(tok, sst2, sets):
    val, test = sets
    lrs, seeds = [1e-5, 3e-2], [0, 5]
    config = lambda lr, seed: TrainConfig(max_steps=4, batch_size=8, lr=lr, weight_decay=0.0, seed=seed, progress=False)
    start = prompt_vectors(soft_prompt(tiny(tok), 3, "vocab", tok, seed=0)).detach().clone()
    out = sweep_then_seeds(lambda s: soft_prompt(tiny(tok), 3, "vocab", tok, seed=s), sst2[2], config, lrs, seeds,
                           val, test, extra=lambda m: moved(prompt_vectors(m), start), keep=[1e-5])
    sweep = out.sweep
    assert list(sweep.index) == lrs and {"val_accuracy", "loss_first", "loss_last", "wall_s", "moved"} <= set(sweep)
    assert ((sweep.val_low <= sweep.val_accuracy) & (sweep.val_accuracy <= sweep.val_high)).all()  # Wilson
    best = max(lrs, key=lambda lr: (sweep.val_accuracy[lr], -sweep.loss_last[lr]))
    assert out.best_lr == best and out.seeds == seeds and len(out.walls) == 2
    assert out.preds.shape == (2, len(test.texts))
    assert torch.equal(out.scores[0], test.scores(out.model))  # the first seed's run is the sweep's, not a rerun
    assert all(sweep.max_move[lr] <= adam_move_bound(config(lr, 0)) for lr in lrs)
    assert moved(prompt_vectors(out.kept[1e-5]), start)["moved"] == sweep.moved[1e-5]
    assert set(out.kept) == {1e-5} and sweep.moved[1e-5] < sweep.moved[3e-2]


def test_compare_gives_run_means_spreads_and_intervals():
    y = [0, 1] * 20
    methods = {"two runs": [y, [1 - v if i < 10 else v for i, v in enumerate(y)]], "one run": y}
    table = compare(y, methods)
    assert table.loc["two runs", "runs"] == 2 and table.loc["one run", "runs"] == 1
    assert table.loc["two runs", "accuracy"] == pytest.approx(0.875)  # (1.0 + 0.75) / 2
    assert table.loc["two runs", "sd"] == pytest.approx(np.std([1.0, 0.75], ddof=1))
    assert table.loc["one run", "sd"] == 0 and table.loc["one run", "ci_low"] == table.loc["one run", "ci_high"] == 1
    assert table.loc["two runs", "ci_low"] < 0.875 < table.loc["two runs", "ci_high"]


def test_paired_tests_pair_runs_by_seed_and_need_every_p_below_alpha():
    y = np.ones(40, dtype=int)
    good, half = y.copy(), np.where(np.arange(40) < 20, 0, 1)  # half: wrong on the first 20
    near = np.where(np.arange(40) < 2, 0, 1)  # wrong on 2 only
    tests = paired_tests(y, {"a": [good, good], "b": [half, near], "c": half}, [("a", "b"), ("a", "c")])
    ab, ac = tests.iloc[0], tests.iloc[1]
    assert ab.mcnemar_p == f"{mcnemar(good == 1, half == 1):.3f} / {mcnemar(good == 1, near == 1):.3f}"
    assert ab.difference == pytest.approx(1 - (0.5 + 0.95) / 2) and not ab.real  # run 2 differs by 2 items only
    assert 0 < ab.diff_low < ab.difference < ab.diff_high  # the paired interval of the run-mean difference
    assert ac.real and ac.max_p == pytest.approx(mcnemar(good == 1, half == 1)) and ac.mcnemar_p.count("/") == 1
    with pytest.raises(ValueError, match="equal counts or one"):
        paired_tests(y, {"a": [good, good], "b": [half] * 3}, [("a", "b")])
