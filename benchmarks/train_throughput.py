"""Training throughput on real ragged text: lib.training vs a bare loop, the 🤗 Trainer and the seed's §5.2 loop.

One process, default torch threads, the same small GPT-2 (4 layers, 256 dims, the GPT-2 tokenizer's ids renumbered
into the vocabulary the sample uses) on the same TinyStories paragraphs (GPT-2 tokens, ragged, at most 256).
Every method runs in each round (A B C D E A B C D E ...); a forward pre-hook stamps the time and counts the real
target tokens (labels that are not -100, after the causal shift) of every step, so each method is measured alike:
steady-state tokens/s from the first step's forward to the last one's, setup excluded. Ratios are the median over
rounds of the ratio within a round, which stands up to other processes using the CPU in bursts.

    python benchmarks/train_throughput.py            # ~2.5 minutes on 2 idle CPU cores
    python benchmarks/train_throughput.py --quick    # ~1 minute, a smoke test
    python benchmarks/train_throughput.py --device cuda --quick   # one GPU: every method in bf16 autocast, MFU
                                                                  # against the GPU's dense bf16 peak

--device cpu (the default) keeps every method on the CPU even where a GPU is present (ACCELERATE_USE_CPU=1), in fp32.
--device cuda runs every method on the GPU in bf16 autocast (ours: TrainConfig.mixed_precision="bf16"; the Trainer:
bf16=True) and times the steps with CUDA events, so that timing adds no synchronisation.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never call the hub

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from lib.training import TrainConfig, batch_order, collate, count_targets, train  # noqa: E402
from lib.training import flops_per_token as training_flops_per_token  # noqa: E402

BATCH, MAX_LEN, LR = 16, 256, 3e-4
DEVICE = "cpu"  # set by main(): "cpu" or "cuda"; on cuda every method runs in bf16 autocast
# Dense bf16 peak FLOP/s by GPU name (NVIDIA data sheets; without sparsity). First match wins: PCIe before SXM.
BF16_PEAK = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


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
                                      bos_token_id=0, eos_token_id=0, loss_type="ForCausalLM")).to(DEVICE)


def autocast():
    """bf16 autocast on the GPU, nothing on the CPU: the precision every method gets."""
    return torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda")


class Meter:
    """Start time and real target tokens of every forward call of a model: the same yardstick for every method.

    On the GPU the times are CUDA events and the counts stay device tensors until the end: measuring adds no sync.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.times: list = []
        self.tokens: list = []
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        labels = kwargs["labels"]
        if DEVICE == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.times.append(event)
            self.tokens.append((labels[:, 1:] != -100).sum())
        else:
            self.times.append(time.perf_counter())
            self.tokens.append(count_targets({"labels": labels}))

    def tokens_per_s(self) -> float:
        """Steady state: tokens of steps 1..S-1 over the time from the first forward to the last (no setup)."""
        if DEVICE == "cuda":
            torch.cuda.synchronize()
            return float(sum(int(t) for t in self.tokens[:-1])) / (self.times[0].elapsed_time(self.times[-1]) / 1e3)
        return sum(self.tokens[:-1]) / (self.times[-1] - self.times[0])


def run_ours(examples: list[dict], vocab: int, steps: int) -> Meter:
    model = make_model(vocab)
    meter = Meter(model)
    cfg = TrainConfig(max_steps=steps, batch_size=BATCH, lr=LR, warmup_steps=1, group_by_length=True, progress=False,
                      mixed_precision="bf16" if DEVICE == "cuda" else "no")
    train(model, examples, None, cfg)
    return meter


def run_bare(examples: list[dict], vocab: int, steps: int) -> Meter:
    """Forward, backward, step over the batches our trainer uses, collated beforehand: the lower bound."""
    model = make_model(vocab)
    meter = Meter(model)
    order = batch_order(len(examples), BATCH, 0, 0, [len(e["input_ids"]) for e in examples])
    batches = [{k: v.to(DEVICE) for k, v in collate([examples[i] for i in idx]).items()} for idx in order[:steps]]
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1, fused=True)
    for b in batches:
        with autocast():
            loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return meter


def run_trainer(examples: list[dict], vocab: int, steps: int, strategy: str) -> Meter:
    """🤗 Trainer: same model, data, collator and hyper-parameters; no eval, no saving, no reporting.

    strategy: its train_sampling_strategy ("group_by_length" or "random"), or "ours": a stock Trainer whose sampler
    yields our batches, so that only the loop's overhead differs.
    """
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    class SameBatches(Trainer):
        def _get_train_sampler(self, train_dataset=None) -> list[int]:
            lens = [len(e["input_ids"]) for e in examples]
            return [int(i) for b in batch_order(len(examples), BATCH, 0, 0, lens) for i in b]

    model = make_model(vocab)
    meter = Meter(model)
    ds = Dataset.from_dict({"input_ids": [e["input_ids"] for e in examples]})
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
                                 warmup_steps=1, lr_scheduler_type="cosine", weight_decay=0.1, max_grad_norm=1.0,
                                 report_to=[], save_strategy="no", eval_strategy="no", logging_strategy="no",
                                 disable_tqdm=True, use_cpu=DEVICE == "cpu", bf16=DEVICE == "cuda", seed=0,
                                 dataloader_num_workers=0,
                                 train_sampling_strategy="random" if strategy == "ours" else strategy)
        trainer = (SameBatches if strategy == "ours" else Trainer)(model=model, args=args, train_dataset=ds,
                                                                   data_collator=collate)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a metrics dict
            trainer.train()
    return meter


def run_seed(examples: list[dict], vocab: int, steps: int) -> Meter:
    """The seed's §5.2 loop: every example padded to the longest in the dataset, a shuffled DataLoader."""
    from torch.utils.data import DataLoader

    model = make_model(vocab)
    meter = Meter(model)
    padded = collate(examples)  # pads to the dataset's longest
    dataset = [{k: v[i] for k, v in padded.items()} for i in range(len(examples))]
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    for step, batch in enumerate(loader):
        if step == steps:
            break
        with autocast():
            loss = model(**{k: v.to(DEVICE) for k, v in batch.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return meter


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """Measured matmul FLOP/s (best of `reps` timed n×n torch.mm): fp32 on the CPU, bf16 on the GPU."""
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=DEVICE, dtype=dtype), torch.randn(n, n, device=DEVICE, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def bf16_peak(name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU by its name (torch.cuda.get_device_name), None when not in BF16_PEAK."""
    return next((peak for key, peak in BF16_PEAK if key in name), None)


def main(argv: list[str] | None = None) -> int:
    """Run every method interleaved, print tokens/s, the ratios against their targets and the MFU."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke test: 2 rounds of fewer steps")
    p.add_argument("--rounds", type=int, default=None, help="interleaved repeats (default 7, --quick 2)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (fp32) or one GPU (bf16 autocast)")
    a = p.parse_args(argv)
    global DEVICE
    DEVICE = a.device
    if DEVICE == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"  # lib.training's Accelerator would otherwise take a GPU that is there
    elif not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        p.error("--device cuda: no CUDA GPU with bf16 here")
    rounds = a.rounds or (2 if a.quick else 7)
    steps = dict(ours=6, bare=6, trainer=6, trainer_same=6, trainer_random=6, seed=3) if a.quick else \
        dict(ours=14, bare=14, trainer=14, trainer_same=14, trainer_random=12, seed=4)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    torch.manual_seed(0)
    examples, vocab = load_examples(2000)
    lengths = [len(e["input_ids"]) for e in examples]
    methods = {"ours": run_ours, "bare": run_bare, "trainer": lambda *x: run_trainer(*x, "group_by_length"),
               "trainer_same": lambda *x: run_trainer(*x, "ours"),
               "trainer_random": lambda *x: run_trainer(*x, "random"), "seed": run_seed}
    labels = {"ours": "lib.training.train (group_by_length)", "bare": "bare fwd/bwd/step, same batches as ours",
              "trainer": "HF Trainer (group_by_length)", "trainer_same": "HF Trainer, same batches as ours",
              "trainer_random": "HF Trainer (random order, its default)",
              "seed": "seed §5.2 loop (pad to dataset max)"}
    for fn in methods.values():  # warm-up: allocator, kernels, lazy imports
        fn(examples, vocab, 2)
    speed: dict[str, list[float]] = {m: [] for m in methods}
    peaks = []
    for r in range(rounds):
        peaks.append(matmul_peak())
        for name, fn in methods.items():
            speed[name].append(fn(examples, vocab, steps[name]).tokens_per_s())
        print(f"round {r + 1}/{rounds}: " + "  ".join(f"{m} {v[-1]:.0f}" for m, v in speed.items())
              + f"  tok/s; load {os.getloadavg()[0]:.1f}", flush=True)
    med = {m: statistics.median(v) for m, v in speed.items()}
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else None
    peak = (gpu and bf16_peak(gpu)) or max(peaks)
    peak_note = (f"{gpu}'s dense bf16 peak from its data sheet, {peak / 1e12:.0f} TFLOP/s (best measured bf16 "
                 f"2048x2048 torch.mm: {max(peaks) / 1e12:.0f} TFLOP/s)" if gpu and bf16_peak(gpu) else
                 f"best measured {'bf16' if gpu else 'fp32'} 2048x2048 torch.mm of the run, {peak / 1e9:.0f} GFLOP/s"
                 + (f" ({gpu}: no data-sheet peak in BF16_PEAK)" if gpu else ""))
    model = make_model(vocab)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "wpe" not in n)  # wte counted once: lm_head
    mean_len = statistics.mean(lengths)
    flops_per_token = training_flops_per_token(model, mean_len)
    print(f"\nmodel: GPT-2 4 layers x 256, vocab {vocab}, {n_params / 1e6:.2f}M params without wpe; data: "
          f"{len(examples)} TinyStories paragraphs (GPT-2 tokens), mean {mean_len:.1f}, max {max(lengths)}; "
          f"batch {BATCH}; " + (f"{gpu}, bf16 autocast" if gpu else f"{torch.get_num_threads()} torch threads")
          + f"; {rounds} interleaved rounds, median")
    print(f"{'method':<42} {'tok/s':>7} {'min':>7} {'max':>7} {'MFU':>6}")
    for m in methods:
        print(f"{labels[m]:<42} {med[m]:7.0f} {min(speed[m]):7.0f} {max(speed[m]):7.0f} "
              f"{flops_per_token * med[m] / peak:6.1%}")
    print(f"MFU = (6N + 12·L·d·T) · tok/s / peak, {flops_per_token / 1e6:.1f} MFLOP per token; peak = {peak_note}")
    print("\nratio (median over rounds of the ratio within a round)")
    for num, den, target in (("ours", "bare", 0.95), ("ours", "trainer", 1.0), ("ours", "trainer_same", 1.0),
                             ("ours", "trainer_random", 1.0), ("ours", "seed", 2.0)):
        ratio = statistics.median(x / y for x, y in zip(speed[num], speed[den]))
        print(f"  {num}/{den:<15} {ratio:5.2f}   (target >= {target}: {'met' if ratio >= target else 'MISSED'})")
    print(f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (2 cores: above ~2 means "
          f"other processes shared the CPU); {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
