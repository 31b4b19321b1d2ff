"""Notebook parameters: three profiles declared once, validated knobs, device choice and seeding."""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

PROFILE_NAMES = ("smoke", "cpu", "gpu")
DEFAULT_PROFILE = "cpu"


class OneLineError(Exception):
    """An error IPython shows as its message alone, without a traceback (the message says what to do)."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"{type(self).__name__}: {self}"]


class ParameterError(OneLineError, ValueError):
    """A notebook parameter has a value that is not allowed; the message is one line."""


@dataclass(frozen=True)
class Knob:
    """One notebook parameter: its type, what values are allowed, and what it means."""

    kind: type
    help: str
    choices: tuple[str, ...] | None = None
    positive: bool = False
    nonnegative: bool = False
    check: str | None = None  # "model", "corpus" or "dataset": validated against a registry
    item: type = int  # element type of a list knob: int or float (> 0), or str (from `choices` if given)

    def validate(self, name: str, value: Any) -> Any:
        """Return the value (ints widened to float where a float is asked) or raise ParameterError."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.kind is list:
            if not isinstance(value, (list, tuple)) or not value:
                raise ParameterError(f"{name}={value!r}: expected a non-empty list ({self.help})")
            value = [float(v) if self.item is float and type(v) is int else v for v in value]
            what = "strings" if self.item is str else f"positive {self.item.__name__}s" + \
                (", none NaN or infinite" if self.item is float else "")
            for k, v in enumerate(value):
                if type(v) is not self.item or (self.item is not str and not 0 < v < math.inf):
                    raise ParameterError(f"{name}={value!r}: expected a list of {what} ({self.help})")
                if self.choices is not None and v not in self.choices:
                    raise ParameterError(f"{name}={value!r}: expected items from {', '.join(self.choices)}")
                if self.check is not None:
                    _check_registry(f"{name}[{k}]", v, self.check)
            return value
        if isinstance(value, bool) != (self.kind is bool) or not isinstance(value, self.kind):
            raise ParameterError(f"{name}={value!r}: expected {self.kind.__name__} ({self.help})")
        if self.kind is float and not math.isfinite(value):
            raise ParameterError(f"{name}={value!r}: expected a finite number, not NaN or infinity ({self.help})")
        if self.positive and value <= 0:
            raise ParameterError(f"{name}={value!r}: expected a value > 0 ({self.help})")
        if self.nonnegative and value < 0:
            raise ParameterError(f"{name}={value!r}: expected a value >= 0 ({self.help})")
        if self.choices is not None and value not in self.choices:
            raise ParameterError(f"{name}={value!r}: expected one of {', '.join(self.choices)}")
        if self.check is not None:
            _check_registry(name, value, self.check)
        return value


def _check_registry(name: str, value: str, registry: str) -> None:
    """Validate a model or dataset name against the registries in lib.models / lib.data."""
    if registry == "model":
        from lib.models import describe_model_names, is_known_model

        if not is_known_model(value):
            raise ParameterError(f"{name}={value!r}: expected {describe_model_names()}")
    else:
        from lib.data import CORPORA, DATASETS

        names = CORPORA if registry == "corpus" else DATASETS
        if value not in names:
            raise ParameterError(f"{name}={value!r}: expected one of {', '.join(sorted(names))}")


KNOBS: dict[str, Knob] = {
    "profile": Knob(str, "the run profile", choices=PROFILE_NAMES),
    "seed": Knob(int, "seed for every random number generator"),
    "device": Knob(str, "where tensors live", choices=("auto", "cpu", "cuda", "mps")),
    "model": Knob(str, "the language model", check="model"),
    "corpus": Knob(str, "the text corpus", check="corpus"),
    "bpe_vocab_size": Knob(int, "size of the BPE vocabulary we train", positive=True),
    "bpe_train_texts": Knob(int, "number of TinyStories paragraphs the BPE is trained on", positive=True),
    "bpe_sweep": Knob(list, "vocabulary sizes for the compression sweep"),
    "ppl_texts": Knob(int, "number of WikiText-2 lines scored for perplexity", positive=True),
    "sst2_examples": Knob(int, "number of SST-2 sentences scored by the verbalizer", positive=True),
    "train_texts": Knob(int, "number of training paragraphs (capped at what the corpus has)", positive=True),
    "gpt_layers": Knob(int, "transformer blocks of the mini-GPT", positive=True),
    "gpt_heads": Knob(int, "attention heads per block (must divide gpt_dim)", positive=True),
    "gpt_dim": Knob(int, "width of the mini-GPT's residual stream", positive=True),
    "block_size": Knob(int, "tokens per training sequence (context length)", positive=True),
    "max_steps": Knob(int, "optimizer steps of the main training run", positive=True),
    "batch_size": Knob(int, "sequences per optimizer step", positive=True),
    "lr": Knob(float, "peak learning rate", positive=True),
    "warmup_steps": Knob(int, "steps of linear learning-rate warmup", nonnegative=True),
    "eval_every": Knob(int, "steps between validation passes", positive=True),
    "save_every": Knob(int, "steps between checkpoints (samples are drawn from each)", positive=True),
    "sweep_dims": Knob(list, "widths of the models in the scaling sweep"),
    "sweep_steps": Knob(int, "optimizer steps of the widest sweep model; every width gets the same FLOPs",
                        positive=True),
    "domain_corpus": Knob(str, "the domain corpus of the seed's fine-tuning loop", check="corpus"),
    "domain_texts": Knob(int, "domain-corpus paragraphs used for fine-tuning", positive=True),
    "domain_steps": Knob(int, "optimizer steps of the domain fine-tuning", positive=True),
    "sft_steps": Knob(int, "optimizer steps of chat supervised fine-tuning", positive=True),
    "sft_dialogues": Knob(int, "chat conversations used for SFT (train + held out)", positive=True),
    "max_length": Knob(int, "longest token sequence kept for fine-tuning", positive=True),
    "eval_prompts": Knob(int, "held-out chat prompts shown and scored", positive=True),
    "compare_models": Knob(list, "further models run through the SST-2 template sweep", item=str, check="model"),
    "agnews_examples": Knob(int, "AG News test articles scored (seeded subsample of the 7,600)", positive=True),
    "banking_examples": Knob(int, "BANKING77 test queries scored (seeded subsample of the 3,080)", positive=True),
    "kshot_examples": Knob(int, "SST-2 dev sentences of the k-shot curve (seeded; the rest are demonstrations)",
                           positive=True),
    "shot_counts": Knob(list, "k > 0 of the k-shot curve (k = 0 is always included)"),
    "kshot_seeds": Knob(int, "demonstration draws (seeds) per k of the k-shot curve", positive=True),
    "n_templates": Knob(int, "templates per task in the sweep (at most what lib/templates.yaml has)", positive=True),
    "score_batch": Knob(int, "prompts per forward pass of the label scorer", positive=True),
    "check_examples": Knob(int, "SST-2 sentences scored both ways (shared prefix and naive) to compare", positive=True),
    "reply_tokens": Knob(int, "most new tokens of one chat reply", positive=True),
    "safety_model_prompts": Knob(int, "harmful and benign prompts each (seeded subsample) the model answers",
                                 positive=True),
    "coherence_dialogues": Knob(int, "scripted multi-turn conversations scored for coherence", positive=True),
    "context_windows": Knob(list, "context windows (tokens, prompt + reply) of the coherence test"),
    "guard_blocks": Knob(int, "transformer blocks of the chat model the learned guard reads (the rest never run)",
                         positive=True),
    "target_fpr": Knob(float, "false-positive rate the guard's threshold is set to on the dev split", positive=True),
    "guard_eval_max": Knob(int, "most prompts per split and label scored by the guard arms (seeded)", positive=True),
    "public_max": Knob(int, "most public prompts per label (Do-Not-Answer, ChatterBot) in the guard's more-data test",
                       positive=True),
    "outside_benign": Knob(int, "everyday benign texts per source (BANKING77, self-instruct, SGD) in the outside set",
                           positive=True),
    "train_examples": Knob(int, "SST-2 sentences in our training split (the rest of the 872 are held out)",
                           positive=True),
    "test_examples": Knob(int, "SST-2 sentences held out for testing every method", positive=True),
    "prompt_tokens": Knob(int, "virtual tokens of the soft prompt", positive=True),
    "tune_steps": Knob(int, "optimizer steps of each prompt-tuning, LoRA and full fine-tuning run", positive=True),
    "prompt_lrs": Knob(list, "learning rates of the prompt-tuning sweep", item=float),
    "lora_rank": Knob(int, "rank r of the LoRA updates", positive=True),
    "lora_lrs": Knob(list, "learning rates of LoRA, one picked on the validation split", item=float),
    "full_lrs": Knob(list, "learning rates of full fine-tuning, one picked on the validation split", item=float),
    "tune_seeds": Knob(int, "seeds each trained method runs at its picked learning rate", positive=True),
    "shots": Knob(int, "demonstrations in the few-shot prompt", nonnegative=True),
    "ner_train_sentences": Knob(int, "CoNLL-2003 training sentences used (capped at 14,041)", positive=True),
    "ner_test_sentences": Knob(int, "CoNLL-2003 test sentences scored (capped at 3,453)", positive=True),
    "ner_epochs": Knob(float, "passes over the NER training sentences", positive=True),
    "ner_strategies": Knob(list, "subword label alignments trained and compared", item=str,
                           choices=("first", "all", "last", "lookahead")),
    "ner_split_at": Knob(int, "frozen bottom blocks, run once and cached; the blocks above and the head train "
                         "(0: all blocks train)", nonnegative=True),
    "ner_ablation_sentences": Knob(int, "training sentences of each variant in the ablation (scored on validation)",
                                   positive=True),
    "ner_small_model": Knob(str, "the small model of the ablation, fully fine-tuned", check="model"),
    "ner_small_epochs": Knob(float, "passes of the small model over the training sentences", positive=True),
    "ner_small_lr": Knob(float, "peak learning rate of the small model", positive=True),
    "ner_dev_sentences": Knob(int, "CoNLL-2003 validation sentences that pick the variant and the decoder",
                              positive=True),
    "few_shot": Knob(int, "labelled training queries per intent (the 10-shot setting)", positive=True),
    "val_per_intent": Knob(int, "validation queries per intent (methods and thresholds are picked on them)",
                           positive=True),
    "test_queries": Knob(int, "in-scope test queries scored (a seeded subsample when fewer than the split has)",
                         positive=True),
    "oos_per_source": Knob(int, "out-of-scope queries drawn from each of 4 sources (half validation, half test)",
                           positive=True),
    "zero_shot_examples": Knob(int, "test queries (or articles) classified zero-shot by the prompt scorer "
                               "(seeded subsample)", positive=True),
    "dense_layers": Knob(int, "transformer blocks of the dense encoder (pooled states of block k)", positive=True),
    "encoder": Knob(str, "a sentence encoder (all-minilm-l6-v2): vectors for retrieval and classification heads",
                    check="model"),
    "compile_encoder": Knob(bool, "compile the sentence encoder that serves new queries (torch.compile: about a minute "
                            "once, then cheaper per query)"),
    "encoder_dtype": Knob(str, "the sentence encoder's weights: bfloat16 halves the bytes read per query (faster where "
                          "the CPU has bf16 instructions)", choices=("float32", "bfloat16")),
    "head_steps": Knob(int, "optimizer steps of the classification head (intent, topic, sentiment)", positive=True),
    "head_lr": Knob(float, "learning rate of the classification head", positive=True),
    "topic_train_per_class": Knob(int, "AG News training articles per topic", positive=True),
    "topic_val_per_class": Knob(int, "AG News validation articles per topic (methods are picked on them)",
                                positive=True),
    "topic_test": Knob(int, "AG News test articles scored (a seeded subsample of the test split)", positive=True),
    "stream_windows": Knob(int, "windows (hours) in one simulated news stream", positive=True),
    "window_items": Knob(int, "background articles arriving in each window", positive=True),
    "warmup_windows": Knob(int, "first windows of a stream that set the alarm's baseline (no alerts there)",
                           positive=True),
    "surges": Knob(int, "surges of negative business news injected into each stream", positive=True),
    "surge_windows": Knob(int, "windows one surge lasts", positive=True),
    "surge_items": Knob(int, "negative business sentences added to each surge window", positive=True),
    "stream_seeds": Knob(int, "independent streams simulated for validation and for test each", positive=True),
    "max_false_alarms": Knob(float, "false alarms allowed per 100 quiet windows when the alarm is tuned",
                             positive=True),
    "answer_examples": Knob(int, "in-scope test queries answered by the generator and scored", positive=True),
    "train_sizes": Knob(list, "labelled training examples of the like / dislike curve (TALLRec's 16, 64, 256, ...)"),
    "rec_seeds": Knob(int, "draws of the training examples (seeds) per size of the like / dislike curve",
                      positive=True),
    "lora_sizes": Knob(list, "training examples of the LoRA runs of the language model (its costly arm)"),
    "als_factors": Knob(list, "latent factors of ALS matrix factorisation, one picked on the validation split"),
    "candidates": Knob(int, "top candidates of ALS (and extra ones of recent item-kNN) that the hybrids re-rank",
                      positive=True),
    "recent_items": Knob(list, "how many of the user's latest movies recent item-kNN reads; one picked on validation",
                         item=int),
    "cold_max": Knob(int, "a test item is cold when it has at most this many training interactions", positive=True),
    "sasrec_epochs": Knob(int, "passes of SASRec (a GPT over each user's movies) over its training windows",
                          positive=True),
    "sasrec_length": Knob(int, "movies SASRec reads: the length of its training windows and of the history it scores",
                          positive=True),
    "sasrec_dim": Knob(int, "SASRec's width (embedding size) of its 2 transformer blocks", positive=True),
    "cold_slots": Knob(int, "of the ten movies shown, how many the hybrid reserves for cold movies (text scorer)",
                       nonnegative=True),
    "lora_blocks": Knob(int, "last transformer blocks that get LoRA updates (the backward pass stops below them)",
                        positive=True),
    "prompts_max": Knob(int, "most safety prompts per split and label used (a seeded subsample)", positive=True),
    "helpful_pairs": Knob(int, "instruction prompts (self-instruct) in the training preference pairs", positive=True),
    "precision": Knob(str, "arithmetic of the frozen blocks' cache, training and generation (auto: bf16 where its "
                      "measured matmul peak is at least twice float32's)", choices=("auto", "fp32", "bf16")),
    "dpo_betas": Knob(list, "DPO's β values tried, one picked on the dev prompts", item=float),
    "dpo_steps": Knob(int, "optimizer steps of one DPO run", positive=True),
    "nll_weight": Knob(float, "weight of the chosen replies' NLL added to the DPO loss (RPO; 0: plain DPO)",
                       nonnegative=True),
    "rm_l2s": Knob(list, "L2 strengths of the reward head, one picked on the dev pairs", item=float),
    "best_of_n": Knob(int, "replies sampled per prompt, of which the reward model keeps one", positive=True),
    "bon_prompts": Knob(int, "harmful and benign test prompts each that best-of-n answers", positive=True),
}

# Every profile value, declared once. "common" applies to every notebook; a notebook's own section overrides it.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "common": {"seed": 0, "device": "auto"},
        "01_tokenization": {"corpus": "tinystories", "bpe_vocab_size": 1000, "bpe_train_texts": 3000,
                            "bpe_sweep": [300, 500, 1000]},
        "02_loss_derivation": {"model": "smollm2-135m-instruct", "ppl_texts": 8, "sst2_examples": 16},
        "03_pretraining": {"corpus": "tinystories", "train_texts": 3000, "gpt_layers": 2, "gpt_heads": 2, "gpt_dim": 64,
                           "block_size": 64, "max_steps": 150, "batch_size": 16, "lr": 5e-3, "warmup_steps": 10,
                           "eval_every": 50, "save_every": 50, "sweep_dims": [16, 32, 48, 64], "sweep_steps": 50},
        "04_fine_tuning": {"model": "mini-gpt", "domain_corpus": "tiny-shakespeare", "domain_texts": 1000,
                           "domain_steps": 6, "sft_steps": 10, "sft_dialogues": 400, "batch_size": 4, "lr": 2e-4,
                           "max_length": 128, "eval_prompts": 4},
        "05_zero_shot_prompting": {"model": "smollm2-135m-instruct", "compare_models": ["mini-gpt"],
                                   "sst2_examples": 16, "agnews_examples": 3, "banking_examples": 2,
                                   "kshot_examples": 6, "shot_counts": [2], "kshot_seeds": 2,
                                   "n_templates": 3, "score_batch": 16, "check_examples": 2},
        "08_interaction_stability": {"model": "smollm2-135m-instruct", "reply_tokens": 10, "safety_model_prompts": 2,
                                     "coherence_dialogues": 2, "context_windows": [256, 96], "guard_blocks": 8,
                                     "target_fpr": 0.05, "guard_eval_max": 12, "outside_benign": 4,
                                     "public_max": 12},
        "06_continuous_prompts": {"model": "mini-gpt", "train_examples": 24, "test_examples": 16, "prompt_tokens": 4,
                                  "tune_steps": 8, "batch_size": 8, "prompt_lrs": [5e-5, 0.3], "lora_rank": 4,
                                  "lora_lrs": [1e-3, 3e-3], "full_lrs": [3e-4, 1e-3], "tune_seeds": 2, "shots": 1,
                                  "kshot_seeds": 3},
        "07_ner_evaluation": {"model": "smollm2-135m-instruct", "ner_train_sentences": 160, "ner_test_sentences": 80,
                              "ner_epochs": 1.0, "ner_strategies": ["first", "last", "lookahead"], "batch_size": 8,
                              "lr": 3e-4, "max_length": 256, "ner_split_at": 28, "precision": "fp32",
                              "ner_ablation_sentences": 80,
                              "ner_dev_sentences": 40, "ner_small_model": "mini-gpt", "ner_small_epochs": 1.0,
                              "ner_small_lr": 3e-3},
        "11_financial_monitoring": {"model": "smollm2-135m-instruct", "encoder": "all-minilm-l6-v2",
                                     "n_templates": 1,
                                     "topic_train_per_class": 8, "topic_val_per_class": 4,
                                     "topic_test": 40, "zero_shot_examples": 8, "dense_layers": 2, "head_steps": 30,
                                     "head_lr": 0.05, "tune_seeds": 2, "stream_windows": 80, "window_items": 12,
                                     "warmup_windows": 12, "surges": 2, "surge_windows": 4, "surge_items": 4,
                                     "stream_seeds": 2, "max_false_alarms": 2.0},
        "10_customer_service": {"model": "smollm2-135m-instruct", "encoder": "all-minilm-l6-v2",
                                "encoder_dtype": "bfloat16", "compile_encoder": True, "few_shot": 4,
                                "val_per_intent": 2, "test_queries": 77,
                                "oos_per_source": 10, "zero_shot_examples": 2, "dense_layers": 2, "head_steps": 40,
                                "head_lr": 3e-2, "answer_examples": 2, "reply_tokens": 6},
        "09_preference_tuning": {"model": "smollm2-135m-instruct", "prompts_max": 6, "helpful_pairs": 8,
                                 "reply_tokens": 12, "precision": "auto",
                                 "lora_blocks": 2, "lora_rank": 4, "dpo_betas": [0.1, 0.5],
                                 "dpo_steps": 4, "lr": 1e-3, "batch_size": 4, "tune_seeds": 2, "eval_every": 2,
                                 "nll_weight": 1.0, "rm_l2s": [1e-3, 1e-1], "best_of_n": 2,
                                 "bon_prompts": 3, "outside_benign": 4},
        "12_recommendation": {"model": "smollm2-135m-instruct", "dense_layers": 1, "train_sizes": [16, 64],
                              "rec_seeds": 2, "zero_shot_examples": 2, "lora_sizes": [4], "tune_steps": 1,
                              "batch_size": 2, "lr": 2e-3, "lora_rank": 4, "lora_blocks": 2, "tune_seeds": 2,
                              "als_factors": [16], "candidates": 50, "recent_items": [3], "cold_max": 20,
                              "cold_slots": 1, "sasrec_epochs": 1, "sasrec_length": 20, "sasrec_dim": 16},
    },
    "cpu": {
        "common": {"seed": 0, "device": "auto"},
        "01_tokenization": {"corpus": "tinystories", "bpe_vocab_size": 4096, "bpe_train_texts": 25000,
                            "bpe_sweep": [512, 1024, 2048, 4096, 8192, 16384]},
        "02_loss_derivation": {"model": "smollm2-135m-instruct", "ppl_texts": 64, "sst2_examples": 200},
        "03_pretraining": {"corpus": "tinystories", "train_texts": 25000, "gpt_layers": 4, "gpt_heads": 4,
                           "gpt_dim": 192, "block_size": 128, "max_steps": 2600, "batch_size": 16, "lr": 3e-3,
                           "warmup_steps": 50, "eval_every": 200, "save_every": 650, "sweep_dims": [48, 96, 144, 192],
                           "sweep_steps": 200},
        "04_fine_tuning": {"model": "mini-gpt", "domain_corpus": "tiny-shakespeare", "domain_texts": 8000,
                           "domain_steps": 150, "sft_steps": 400, "sft_dialogues": 3000, "batch_size": 16, "lr": 1e-3,
                           "max_length": 256, "eval_prompts": 12},
        "05_zero_shot_prompting": {"model": "smollm2-135m-instruct", "compare_models": ["mini-gpt"],
                                   "sst2_examples": 872, "agnews_examples": 500, "banking_examples": 770,
                                   "kshot_examples": 100, "shot_counts": [1, 4, 8], "kshot_seeds": 3,
                                   "n_templates": 5, "score_batch": 16, "check_examples": 16},
        "08_interaction_stability": {"model": "smollm2-135m-instruct", "reply_tokens": 32, "safety_model_prompts": 40,
                                     "coherence_dialogues": 34, "context_windows": [256, 192, 160, 128, 96, 80],
                                     "guard_blocks": 8, "target_fpr": 0.05, "guard_eval_max": 1000,
                                     "outside_benign": 67, "public_max": 1000},
        "06_continuous_prompts": {"model": "smollm2-135m-instruct", "train_examples": 572, "test_examples": 300,
                                  "prompt_tokens": 16, "tune_steps": 40, "batch_size": 8,
                                  "prompt_lrs": [5e-5, 3e-2, 0.3], "lora_rank": 8, "lora_lrs": [1e-3, 3e-3],
                                  "full_lrs": [3e-5, 1e-4], "tune_seeds": 3, "shots": 4, "kshot_seeds": 3},
        "07_ner_evaluation": {"model": "smollm2-135m-instruct", "ner_train_sentences": 14041,
                              "ner_test_sentences": 3453, "ner_epochs": 1.0,
                              "ner_strategies": ["first", "last", "lookahead"], "batch_size": 16, "lr": 3e-4,
                              "max_length": 256, "ner_split_at": 12, "precision": "auto",
                              "ner_ablation_sentences": 1200,
                              "ner_dev_sentences": 1000, "ner_small_model": "mini-gpt", "ner_small_epochs": 2.0,
                              "ner_small_lr": 3e-3},
        "11_financial_monitoring": {"model": "smollm2-135m-instruct", "encoder": "all-minilm-l6-v2",
                                     "n_templates": 5,
                                     "topic_train_per_class": 1000, "topic_val_per_class": 50, "topic_test": 800,
                                     "zero_shot_examples": 400, "dense_layers": 16, "head_steps": 300,
                                     "head_lr": 0.05, "tune_seeds": 3, "stream_windows": 240, "window_items": 24,
                                     "warmup_windows": 24, "surges": 6, "surge_windows": 4, "surge_items": 6,
                                     "stream_seeds": 5, "max_false_alarms": 2.0},
        "10_customer_service": {"model": "smollm2-135m-instruct", "encoder": "all-minilm-l6-v2",
                                "encoder_dtype": "bfloat16", "compile_encoder": True, "few_shot": 10,
                                "val_per_intent": 10,
                                "test_queries": 1536, "oos_per_source": 150, "zero_shot_examples": 40,
                                "dense_layers": 6, "head_steps": 400, "head_lr": 3e-2, "answer_examples": 100,
                                "reply_tokens": 20},
        "09_preference_tuning": {"model": "smollm2-135m-instruct", "prompts_max": 200, "helpful_pairs": 60,
                                 "reply_tokens": 24, "precision": "auto",
                                 "lora_blocks": 6, "lora_rank": 8, "dpo_betas": [0.1, 0.5],
                                 "dpo_steps": 100, "lr": 1e-3, "batch_size": 8, "tune_seeds": 2, "eval_every": 25,
                                 "nll_weight": 1.0, "rm_l2s": [1e-4, 1e-3, 1e-2, 1e-1], "best_of_n": 3,
                                 "bon_prompts": 40, "outside_benign": 67},
        "12_recommendation": {"model": "smollm2-135m-instruct", "dense_layers": 4,
                              "train_sizes": [16, 64, 256, 1024, 4096], "rec_seeds": 5, "zero_shot_examples": 48,
                              "lora_sizes": [16], "tune_steps": 12, "batch_size": 4, "lr": 2e-3, "lora_rank": 8,
                              "lora_blocks": 4, "tune_seeds": 2, "als_factors": [32, 64, 128], "candidates": 50,
                              "recent_items": [1, 2, 3, 5, 10], "cold_max": 20, "cold_slots": 1, "sasrec_epochs": 60,
                              "sasrec_length": 50, "sasrec_dim": 64},
    },
    "gpu": {
        "common": {"seed": 0, "device": "auto"},
        "01_tokenization": {"corpus": "tinystories", "bpe_vocab_size": 16384, "bpe_train_texts": 1_000_000,
                            "bpe_sweep": [1024, 2048, 4096, 8192, 16384, 32768]},
        "02_loss_derivation": {"model": "gpt2", "ppl_texts": 1000, "sst2_examples": 872},
        "03_pretraining": {"corpus": "tinystories", "train_texts": 2_000_000, "gpt_layers": 6, "gpt_heads": 6,
                           "gpt_dim": 384, "block_size": 256, "max_steps": 6000, "batch_size": 64, "lr": 1e-3,
                           "warmup_steps": 200, "eval_every": 250, "save_every": 1500,
                           "sweep_dims": [96, 192, 288, 384], "sweep_steps": 1500},
        "04_fine_tuning": {"model": "gpt2", "domain_corpus": "tiny-shakespeare", "domain_texts": 30000,
                           "domain_steps": 1000, "sft_steps": 2000, "sft_dialogues": 3000, "batch_size": 32,
                           "lr": 5e-5, "max_length": 512, "eval_prompts": 20},
        "05_zero_shot_prompting": {"model": "gpt2-medium",
                                   "compare_models": ["gpt2", "smollm2-135m-instruct", "mini-gpt"],
                                   "sst2_examples": 872, "agnews_examples": 7600, "banking_examples": 3080,
                                   "kshot_examples": 500, "shot_counts": [1, 4, 8, 16], "kshot_seeds": 5,
                                   "n_templates": 5, "score_batch": 32, "check_examples": 64},
        "08_interaction_stability": {"model": "smollm2-135m-instruct", "reply_tokens": 48, "safety_model_prompts": 150,
                                     "coherence_dialogues": 34,
                                     "context_windows": [256, 224, 192, 160, 144, 128, 112, 96, 80],
                                     "guard_blocks": 16, "target_fpr": 0.05, "guard_eval_max": 1000,
                                     "outside_benign": 67, "public_max": 1000},
        "06_continuous_prompts": {"model": "gpt2", "train_examples": 572, "test_examples": 300,
                                  "prompt_tokens": 20, "tune_steps": 300, "batch_size": 16,
                                  "prompt_lrs": [5e-5, 1e-3, 3e-2, 0.3], "lora_rank": 8,
                                  "lora_lrs": [2e-4, 5e-4, 1e-3], "full_lrs": [1e-5, 2e-5, 5e-5], "tune_seeds": 3,
                                  "shots": 4, "kshot_seeds": 5},
        "07_ner_evaluation": {"model": "smollm2-135m-instruct", "ner_train_sentences": 14041,
                              "ner_test_sentences": 3453, "ner_epochs": 3.0,
                              "ner_strategies": ["first", "last", "lookahead"], "batch_size": 32, "lr": 5e-5,
                              "max_length": 256, "ner_split_at": 0, "precision": "auto",
                              "ner_ablation_sentences": 14041,
                              "ner_dev_sentences": 3250, "ner_small_model": "gpt2", "ner_small_epochs": 3.0,
                              "ner_small_lr": 5e-5},
        "11_financial_monitoring": {"model": "smollm2-135m-instruct", "encoder": "all-minilm-l6-v2",
                                     "n_templates": 5,
                                     "topic_train_per_class": 1000, "topic_val_per_class": 250, "topic_test": 4000,
                                     "zero_shot_examples": 4000, "dense_layers": 16, "head_steps": 300,
                                     "head_lr": 0.05, "tune_seeds": 5, "stream_windows": 480, "window_items": 24,
                                     "warmup_windows": 24, "surges": 12, "surge_windows": 4, "surge_items": 6,
                                     "stream_seeds": 10, "max_false_alarms": 2.0},
        "10_customer_service": {"model": "smollm2-135m-instruct", "encoder": "all-minilm-l6-v2",
                                "encoder_dtype": "bfloat16", "compile_encoder": True, "few_shot": 10,
                                "val_per_intent": 10,
                                "test_queries": 1536, "oos_per_source": 200, "zero_shot_examples": 1536,
                                "dense_layers": 30, "head_steps": 1000, "head_lr": 3e-2, "answer_examples": 300,
                                "reply_tokens": 48},
        "09_preference_tuning": {"model": "smollm2-135m-instruct", "prompts_max": 200, "helpful_pairs": 300,
                                 "reply_tokens": 48, "precision": "auto",
                                 "lora_blocks": 30, "lora_rank": 16, "dpo_betas": [0.05, 0.1, 0.5],
                                 "dpo_steps": 400, "lr": 5e-4, "batch_size": 16, "tune_seeds": 3, "eval_every": 50,
                                 "nll_weight": 1.0, "rm_l2s": [1e-4, 1e-3, 1e-2, 1e-1], "best_of_n": 8,
                                 "bon_prompts": 200, "outside_benign": 67},
        "12_recommendation": {"model": "smollm2-135m-instruct", "dense_layers": 30,
                              "train_sizes": [16, 64, 256, 1024, 4096], "rec_seeds": 5, "zero_shot_examples": 2000,
                              "lora_sizes": [16, 64, 256], "tune_steps": 64, "batch_size": 16, "lr": 1e-3,
                              "lora_rank": 8, "lora_blocks": 30, "tune_seeds": 3, "als_factors": [32, 64, 128],
                              "candidates": 50, "recent_items": [1, 2, 3, 5, 10], "cold_max": 20,
                              "cold_slots": 1, "sasrec_epochs": 60, "sasrec_length": 50, "sasrec_dim": 64},
    },
}


class Config(dict):
    """Resolved parameters of one notebook; keys are also attributes (cfg.seed)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e


def profile_from_env(profile: str | None) -> str:
    """The profile: the given one, else $WORKBOOK_PROFILE, else 'cpu'; validated."""
    value = profile if profile is not None else os.environ.get("WORKBOOK_PROFILE", DEFAULT_PROFILE)
    return KNOBS["profile"].validate("profile", value)


def notebook_knobs(notebook: str) -> set[str]:
    """Names of the knobs a notebook declares (in any profile)."""
    names = {"profile"} | set(PROFILES["cpu"]["common"])
    for prof in PROFILES.values():
        names |= set(prof.get(notebook, {}))
    return names


def validate(name: str, value: Any) -> Any:
    """Validate one knob value by name; unknown names raise ParameterError."""
    if name not in KNOBS:
        raise ParameterError(f"{name}: unknown parameter; expected one of {', '.join(sorted(KNOBS))}")
    return KNOBS[name].validate(name, value)


def resolve(notebook: str, params: Mapping[str, Any]) -> Config:
    """Fill the None-valued knobs of `notebook` from its profile and validate every one."""
    if not any(notebook in prof for prof in PROFILES.values()):
        raise ParameterError(f"notebook={notebook!r}: no profile section; expected one of "
                             f"{', '.join(sorted(k for k in PROFILES['cpu'] if k != 'common'))}")
    profile = profile_from_env(params.get("profile"))
    defaults = {**PROFILES[profile]["common"], **PROFILES[profile].get(notebook, {})}
    cfg = Config(profile=profile)
    for name in sorted(notebook_knobs(notebook) - {"profile"}):
        value = params.get(name)
        cfg[name] = validate(name, defaults[name] if value is None else value)
    check_together(cfg)
    return cfg


def check_together(cfg: Mapping[str, Any]) -> None:
    """Checks across knobs: the attention heads must split the width, of the main model and of every sweep model."""
    heads = cfg.get("gpt_heads")
    for name in ("gpt_dim", "sweep_dims"):
        if heads is None or name not in cfg:
            continue
        widths = cfg[name] if isinstance(cfg[name], list) else [cfg[name]]
        if bad := [w for w in widths if w % heads]:
            raise ParameterError(f"gpt_heads={heads}, {name}={cfg[name]!r}: expected gpt_heads to divide every width "
                                 f"(each head gets width / gpt_heads dimensions); "
                                 f"{bad[0]} % {heads} = {bad[0] % heads}")


def pick_device(device: str = "auto") -> str:
    """'auto' picks cuda, then mps, then cpu; an explicit device must be available."""
    import torch

    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()}
    if device == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if available[d])
    if not available.get(device, False):
        raise ParameterError(f"device={device!r}: not available here; expected auto or one of "
                             f"{', '.join(d for d, ok in available.items() if ok)}")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) with one call."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def setup(notebook: str, params: Mapping[str, Any]) -> Config:
    """Resolve a notebook's parameters, check its prerequisites, seed every RNG, pick the device,
    apply the plot style."""
    cfg = resolve(notebook, params)
    os.environ["WORKBOOK_PROFILE"] = cfg.profile  # so that loaders (e.g. models/<profile>/) follow the notebook
    from lib.requires import check

    check(notebook, cfg)  # data, packages and model folders: fail now, not half-way through the run
    cfg["device"] = pick_device(cfg.device)
    seed_everything(cfg.seed)
    from lib.reporting import use_style

    use_style()
    cfg["notebook"] = notebook
    return cfg
