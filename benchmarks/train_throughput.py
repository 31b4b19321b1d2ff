"""Training throughput on real ragged text: lib.training vs a bare loop, the 🤗 Trainer and the seed's §5.2 loop.

One process, default torch threads, the same small GPT-2 (4 layers, 256 dims, the GPT-2 tokenizer's ids renumbered
into the vocabulary the sample uses) on the same TinyStories paragraphs (GPT-2 tokens, ragged, at most 256).
Methods run interleaved (A B C D A B C D ...) and each reports the median of its repeats. Throughput counts real
target tokens (labels that are not -100, after the causal shift) seen by the model's forward, for every method alike.

    python benchmarks/train_throughput.py            # ~4 minutes on 2 CPU cores
    python benchmarks/train_throughput.py --quick    # ~1 minute, a smoke test
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if __package__ in (None, ""):  # run as a script: make `lib` importable the way `python -m` would
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from lib.training import IGNORE_INDEX, TrainConfig, batch_order, collate, count_targets, train  # noqa: E402

BATCH, MAX_LEN, LR = 16, 256, 3e-4


def load_examples(n: int) -> tuple[list[dict], int]:
    """n TinyStories paragraphs as GPT-2 token ids, renumbered 0..V-1 (eos = 0), truncated to MAX_LEN."""
    from lib.data import load_corpus
    from lib.models import load_tokenizer

    tok = load_tokenizer("gpt2")
    ids = [x[:MAX_LEN] for x in tok(load_corpus("tinystories", "train")["text"][:n])["input_ids"]]
    vocab = {t: k for k, t in enumerate([tok.eos_token_id] + sorted({t for x in ids for t in x} - {tok.eos_token_id}))}
    return [{"input_ids": [vocab[t] for t in x]} for x in ids if len(x) > 1], -(-len(vocab) // 64) * 64


def make_model(vocab_size: int) -> GPT2LMHeadModel:
    """The benchmark model, with the same initial weights every time."""
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=4, n_head=4, n_embd=256, vocab_size=vocab_size, n_positions=MAX_LEN,
                                      bos_token_id=0, eos_token_id=0, loss_type="ForCausalLM"))


def count_tokens(model: torch.nn.Module) -> list[int]:
    """Count the real target tokens of every forward call of `model` (a one-element list, updated in place)."""
    seen = [0]

    def hook(module, args, kwargs):
        seen[0] += count_targets({"labels": kwargs["labels"]})
    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def run_ours(examples: list[dict], vocab: int, steps: int) -> tuple[int, float]:
    model = make_model(vocab)
    seen = count_tokens(model)
    cfg = TrainConfig(max_steps=steps, batch_size=BATCH, lr=LR, warmup_steps=2, group_by_length=True, progress=False)
    t = time.perf_counter()
    train(model, examples, None, cfg)
    return seen[0], time.perf_counter() - t


def run_bare(examples: list[dict], vocab: int, steps: int) -> tuple[int, float]:
    """Forward, backward, step over the batches our trainer uses, collated beforehand: the lower bound."""
    model = make_model(vocab)
    seen = count_tokens(model)
    order = batch_order(len(examples), BATCH, 0, 0, [len(e["input_ids"]) for e in examples])
    batches = [collate([examples[i] for i in idx]) for idx in order[:steps]]
    t = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1, fused=True)
    for b in batches:
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return seen[0], time.perf_counter() - t


def run_trainer(examples: list[dict], vocab: int, steps: int, strategy: str) -> tuple[int, float]:
    """🤗 Trainer: same model, data, collator and hyper-parameters; no eval, no saving, no reporting."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = make_model(vocab)
    seen = count_tokens(model)
    ds = Dataset.from_dict({"input_ids": [e["input_ids"] for e in examples]})
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
                                 warmup_steps=2, lr_scheduler_type="cosine", weight_decay=0.1, max_grad_norm=1.0,
                                 report_to=[], save_strategy="no", eval_strategy="no", logging_strategy="no",
                                 disable_tqdm=True, use_cpu=True, seed=0, train_sampling_strategy=strategy,
                                 dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate)
        t = time.perf_counter()
        trainer.train()
        return seen[0], time.perf_counter() - t


def run_seed(examples: list[dict], vocab: int, steps: int) -> tuple[int, float]:
    """The seed's §5.2 loop: every example padded to the longest in the dataset, a shuffled DataLoader."""
    from torch.utils.data import DataLoader

    model = make_model(vocab)
    seen = count_tokens(model)
    padded = collate(examples)  # pads to the dataset's longest
    dataset = [{k: v[i] for k, v in padded.items()} for i in range(len(examples))]
    torch.manual_seed(0)
    t = time.perf_counter()
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    for step, batch in enumerate(loader):
        if step == steps:
            break
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return seen[0], time.perf_counter() - t


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """Measured fp32 matmul FLOP/s (best of `reps` timed n×n torch.mm)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def main(argv: list[str] | None = None) -> int:
    """Run every method interleaved, print tokens/s, the ratios against their targets and the MFU."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short run: fewer steps, 2 repeats")
    p.add_argument("--repeats", type=int, default=None)
    a = p.parse_args(argv)
    repeats = a.repeats or (2 if a.quick else 3)
    steps = {"ours": 6, "bare": 6, "trainer": 6, "trainer_random": 6, "seed": 2} if a.quick else \
        {"ours": 24, "bare": 24, "trainer": 24, "trainer_random": 16, "seed": 4}
    t0 = time.perf_counter()
    examples, vocab = load_examples(2000)
    lengths = [len(e["input_ids"]) for e in examples]
    methods = {"ours": run_ours, "bare": run_bare, "trainer": lambda *x: run_trainer(*x, "group_by_length"),
               "trainer_random": lambda *x: run_trainer(*x, "random"), "seed": run_seed}
    for fn in methods.values():  # warm-up: allocator, kernels, lazy imports
        fn(examples, vocab, 1)
    speed: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(repeats):
        for name, fn in methods.items():
            tokens, secs = fn(examples, vocab, steps[name])
            speed[name].append(tokens / secs)
            print(f"repeat {r + 1}/{repeats}  {name:<15} {tokens:>7} tokens  {secs:6.2f} s  {tokens / secs:8.0f} tok/s",
                  flush=True)
    med = {m: statistics.median(v) for m, v in speed.items()}
    peak = matmul_peak()
    model = make_model(vocab)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "wpe" not in n)  # wte counted once: lm_head
    cfg = model.config
    mean_len = statistics.mean(lengths)
    flops_per_token = 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * mean_len
    labels = {"ours": "lib.training.train (group_by_length)", "bare": "bare fwd/bwd/step, same batches",
              "trainer": "HF Trainer (group_by_length)", "trainer_random": "HF Trainer (random order, default)",
              "seed": "seed §5.2 loop (pad to dataset max)"}
    print(f"\nmodel: GPT-2 4x256, vocab {vocab}, {n_params / 1e6:.2f}M params (no wpe); data: {len(examples)} TinyStories "
          f"paragraphs, {mean_len:.1f} tokens mean, {max(lengths)} max; batch {BATCH}; torch threads "
          f"{torch.get_num_threads()}; {repeats} interleaved repeats, median")
    print(f"{'method':<40} {'tok/s':>8} {'MFU':>7}")
    for m in methods:
        print(f"{labels[m]:<40} {med[m]:8.0f} {flops_per_token * med[m] / peak:7.1%}")
    print(f"\nmatmul peak (fp32 {2048}x{2048} torch.mm): {peak / 1e9:.1f} GFLOP/s; model FLOPs/token "
          f"6N + 12·L·d·T = {flops_per_token / 1e6:.1f} M")
    for num, den, target in (("ours", "bare", 0.95), ("ours", "trainer", 1.0), ("ours", "seed", 2.0)):
        ratio = med[num] / med[den]
        print(f"{num}/{den:<8} {ratio:5.2f}  (target >= {target}: {'met' if ratio >= target else 'MISSED'})")
    print(f"ours/trainer_random {med['ours'] / med['trainer_random']:5.2f}  (the Trainer's default sampler)")
    print(f"load now: {os.getloadavg()[0]:.1f} (2 cores); total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
