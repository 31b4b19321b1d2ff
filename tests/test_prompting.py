"""lib.prompting: the shared-prefix scorer against naive scoring, calibration, demonstrations, metrics, templates."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lib.losses import verbalizer_logprobs
from lib.prompting import (LabelScores, Template, apply_calibration, calibrate, evaluate_template, few_shot_prompt,
                           load_templates, metrics, score_labels, score_naive)

PROMPTS = ["Review: a gorgeous, witty film\nSentiment:", "Review: bad\nSentiment:",
           "Review: it is long and {quite} boring in the middle third\nSentiment:"]
CONTS = [" negative", " positive", " card arrival", " a very bad movie indeed"]


@pytest.fixture(scope="module")
def tok(gpt2_tok):
    """GPT-2's tokenizer, or without the data its stand-in of the same kind (tests/conftest.py)."""
    return gpt2_tok


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, tok):
    torch.manual_seed(0)
    if request.param == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128)).eval()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("prefix", ["", "Review: nice\nSentiment: positive\n\n"])
def test_shared_prefix_scores_equal_naive_scores(model, tok, prefix):
    fast = score_labels(model, tok, PROMPTS, CONTS, prefix=prefix, batch_size=2, max_rows=3, progress=False)
    slow = score_naive(model, tok, PROMPTS, CONTS, prefix=prefix)
    assert fast.summed.shape == (3, 4) and torch.all(fast.summed < 0)
    assert (fast.summed - slow.summed).abs().max() <= 1e-4
    assert fast.n_tokens.tolist() == [len(tok(c)["input_ids"]) for c in CONTS]


def test_shared_prefix_agrees_with_the_verbalizer_of_lib_losses(model, tok):
    texts, template = ["good film", "bad film", "meh"], "Review: {text}\nSentiment:"
    ours = score_labels(model, tok, [template.format(text=t) for t in texts], CONTS[:3], progress=False).summed
    assert torch.allclose(ours, verbalizer_logprobs(model, tok, texts, template, CONTS[:3]), atol=1e-4)


def test_length_normalisation_and_synonyms():
    s = LabelScores(torch.tensor([[-2.0, -6.0, -3.0]]), torch.tensor([1.0, 3.0, 1.0]), torch.tensor([4.0, 12.0, 6.0]),
                    groups=[0, 1, 1])
    assert torch.allclose(s.get("sum"), torch.tensor([[-2.0, math.log(math.exp(-6) + math.exp(-3))]]))
    assert torch.allclose(s.get("token")[0, 0], torch.tensor(-2.0)) and torch.allclose(s.get("char")[0, 0],
                                                                                        torch.tensor(-0.5))
    with pytest.raises(ValueError, match="method='mean'"):
        s.get("mean")


def test_calibration_divides_by_the_content_free_distribution():
    scores = torch.log(torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.9, 0.1]]))
    p_cf = calibrate(torch.log(torch.tensor([[0.8, 0.2], [0.6, 0.4]])))
    assert torch.allclose(p_cf, torch.tensor([0.7, 0.3]))
    cal = apply_calibration(scores, p_cf).exp()
    expected = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.9, 0.1]]) / p_cf  # W p with W = diag(p_cf)^-1
    assert torch.allclose(cal, expected / expected.sum(1, keepdim=True), atol=1e-6)
    assert cal.argmax(1).tolist() == [0, 1, 0]  # the second row flips: its raw 0.6 is below the bias 0.7
    assert torch.allclose(apply_calibration(scores, torch.tensor([0.5, 0.5])), scores, atol=1e-6)


def test_few_shot_prompt_is_seeded_and_uses_the_verbalizer():
    t = Template("t", "R: {text}\nS:", {"neg": (" bad",), "pos": (" good", " great")}, instruction="Rate it.")
    pool = [(f"text {i}", "pos" if i % 2 else "neg") for i in range(10)]
    a, b, c = few_shot_prompt(t, pool, 3, seed=1), few_shot_prompt(t, pool, 3, seed=1), few_shot_prompt(t, pool, 3, 2)
    assert a == b and a != c and a.startswith("Rate it.\n\n") and a.count("\nS:") == 3 and a.endswith("\n\n")
    assert " great" not in a and few_shot_prompt(t.lower(), pool, 0, 0) == "rate it.\n\n"
    with pytest.raises(ValueError, match="k=11"):
        few_shot_prompt(t, pool, 11, 0)


def test_metrics_by_hand():
    m = metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 1], 3)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)  # F1 per class: 2/3, 2*0.5*1/1.5, 0


def test_templates_load_for_every_task():
    """Label names from the registry (BANKING77's 77 intents from the help centre, which has one article per intent);
    with the real data they must equal the names the loaders give."""
    from lib.data import DATASETS, DataNotFoundError, load_classification
    from lib.service import load_help_centre

    for task in ("sst2", "ag_news", "banking77"):
        names = DATASETS[task].labels or sorted(load_help_centre().intents)
        try:
            assert load_classification(task).features["label"].names == names
        except DataNotFoundError:
            pass  # no local copy: the registry's names alone
        templates = load_templates(task, names)
        assert len(templates) >= 5 and all(t.labels == names for t in templates)
        if task == "banking77":
            assert len(names) == 77 and templates[0].verbalizer["card_arrival"] == (" card arrival",)


def test_bad_template_file_names_file_and_line(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("sst2:\n  verbalizer: {negative: ' no'}\n  templates:\n    - name: a\n      text: '{text} S:'\n")
    with pytest.raises(ValueError, match=r"t\.yaml:4: verbalizer must"):
        load_templates("sst2", ["negative", "positive"], bad)
    bad.write_text("sst2:\n  templates:\n    - name: a\n      text: 'no slot'\n")
    with pytest.raises(ValueError, match=r"t\.yaml:3: a template needs"):
        load_templates("sst2", ["negative", "positive"], bad)
    with pytest.raises(KeyError, match="no task 'cola'"):
        load_templates("cola", ["a"], bad)


def test_evaluate_template_end_to_end(model, tok):
    t = Template("t", "Review: {text}\nSentiment:", {"neg": (" bad",), "pos": (" good movie",)})
    texts, labels = ["Fine", "AWFUL", "great", "dull"], [1, 0, 1, 0]
    res = evaluate_template(model, tok, t, texts, labels, demos=[("ok", "pos"), ("meh", "neg")], k=2, seed=0,
                            lowercase=True, progress=False)
    assert res["n"] == 4 and len(res["pred"]) == 4 and len(res["pred_cal"]) == 4
    assert sum(map(sum, res["confusion_cal"])) == 4 and math.isclose(sum(res["p_cf"]), 1, rel_tol=1e-5)
    assert res["scores"].summed.shape == (4, 2) and res["cf_scores"].summed.shape == (3, 2)


def test_too_long_prompt_is_refused(tok):
    small = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=1, n_embd=8, n_positions=8)).eval()
    with pytest.raises(ValueError, match="exceeds the model's 8 positions"):
        score_labels(small, tok, ["one two three four five six seven eight"], [" nine"], progress=False)
    with pytest.raises(ValueError, match=r"prompts \(0\)"):
        score_labels(small, tok, [], [" nine"], progress=False)


def test_lm_eval_template_keeps_the_stored_trailing_space(tmp_root):
    """A made-up SST-2-shaped file: strip=False keeps each sentence as stored; the lm-eval template feeds it so."""
    from lib.data import load_classification

    (tmp_root / "sst2").mkdir()
    (tmp_root / "sst2" / "dev.tsv").write_text("text\tlabel\na fine , warm film . \t1\ndull and long . \t0\n")
    stored, stripped = load_classification("sst2", strip=False), load_classification("sst2")
    assert stored["text"] == ["a fine , warm film . ", "dull and long . "] and stored["label"] == stripped["label"]
    assert stripped["text"] == ["a fine , warm film .", "dull and long ."]
    lme = next(t for t in load_templates("sst2", ["negative", "positive"]) if t.name == "lm-eval")
    question = "\nQuestion: Is this sentence positive or negative?\nAnswer:"
    assert lme.prompt(stored["text"][0]) == "a fine , warm film . " + question


def test_lm_eval_template_feeds_the_stored_sentence(real_data):
    from lib.data import load_classification
    from lib.prompting import load_templates as templates_of

    stored, stripped = load_classification("sst2", strip=False), load_classification("sst2")
    lme = next(t for t in templates_of("sst2", stored.features["label"].names) if t.name == "lm-eval")
    first = (real_data / "sst2" / "dev.tsv").read_bytes().split(b"\n")[1].split(b"\t")[0].decode()
    assert first == stored["text"][0] == "it 's a charming and often affecting journey . "  # GLUE's trailing space
    assert stripped["text"][0] == first.strip() and stored["label"] == stripped["label"]
    # lm-evaluation-harness glue/sst2: doc_to_text on the sentence as stored; choices after target_delimiter " "
    assert lme.prompt(stored["text"][0]) == ("it 's a charming and often affecting journey . \n"
                                             "Question: Is this sentence positive or negative?\nAnswer:")
    assert [v[0] for v in lme.verbalizer.values()] == [" negative", " positive"] and not lme.strip
    assert lme.prompt(stripped["text"][0]) != lme.prompt(stored["text"][0])


def test_template_strips_its_input_unless_told_not_to(tmp_path):
    t = Template("t", "R: {text}|", {"neg": (" bad",), "pos": (" good",)})
    assert t.prompt("  a film \n") == "R: a film|" and t.demonstration(" ok ", "pos") == "R: ok| good"
    kept = Template("t", "R: {text}|", {"neg": (" bad",), "pos": (" good",)}, strip=False)
    assert kept.prompt("A film ") == "R: A film |" and kept.lower().prompt("a film ") == "r: a film |"
    f = tmp_path / "t.yaml"
    f.write_text("sst2:\n  verbalizer: {negative: ' no', positive: ' yes'}\n  templates:\n"
                 "    - {name: a, text: '{text} S:'}\n    - {name: b, text: '{text} S:', strip: false}\n")
    assert [t.strip for t in load_templates("sst2", ["negative", "positive"], f)] == [True, False]


def test_balanced_subsample_spreads_evenly_and_is_seeded():
    from collections import Counter

    from lib.prompting import balanced_subsample

    labels = [k for k in range(5) for _ in range(8)] + [5, 5]  # five classes of 8, one of 2
    pick = balanced_subsample(labels, 20, seed=3)
    assert len(set(pick)) == 20 and pick == balanced_subsample(labels, 20, seed=3) != balanced_subsample(labels, 20, 4)
    assert sorted(Counter(labels[i] for i in pick).values()) == [2, 3, 3, 4, 4, 4]  # class 5 runs out after 2
    assert Counter(labels[i] for i in balanced_subsample(labels, 12, 0)) == {k: 2 for k in range(6)}
    with pytest.raises(ValueError, match="n=43"):
        balanced_subsample(labels, 43, 0)


def test_results_table_intervals_and_paired_test_by_hand():
    from lib.prompting import results_table
    from lib.stats import mcnemar, wilson_interval

    y = [0, 1] * 10
    raw = y[:12] + [1 - v for v in y[12:]]  # 12 of 20 right
    cal = y[:18] + [1 - v for v in y[18:]]  # 18 of 20 right: right where raw is, and on 6 more
    res = {"template": "t", "pred": raw, "pred_cal": cal, **metrics(y, raw, 2),
           **{f"{k}_cal": v for k, v in metrics(y, cal, 2).items()}}
    row = results_table([res], y).loc["t"]
    lo, hi = wilson_interval(12, 20)
    assert row["acc"] == 0.6 and row["95% CI"] == f"[{lo:.3f}, {hi:.3f}]" and row["acc cal"] == 0.9
    assert row["McNemar p"] == pytest.approx(mcnemar([a == b for a, b in zip(raw, y)],
                                                     [a == b for a, b in zip(cal, y)]),
                                             rel=0.01) and row["McNemar p"] == pytest.approx(2 / 2 ** 6, rel=0.01)
