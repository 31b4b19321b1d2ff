"""One training loop for every notebook: pretraining, chat SFT, token classification and prompt tuning.

AdamW (no decay on biases and norm weights), warmup + cosine, gradient accumulation and clipping, token-weighted
losses, evaluation every N steps, tqdm, a returned History and Accelerate's trackers (TensorBoard, Weights & Biases,
MLflow: `TrainConfig.tracker`), and safetensors checkpoints (no pickle)
that resume exactly: the batch order is a pure function of (seed, epoch, step) and every RNG state is saved.

Why 🤗 Accelerate and not the 🤗 Trainer: Accelerate gives device placement, bf16 autocast and DDP under
`accelerate launch`/`torchrun` through three calls (prepare, backward, no_sync) and leaves the loop to us: ~100
lines a notebook can show, with checkpoints we control (the Trainer's hold torch.save pickles of the optimizer,
scheduler and RNG states) and no speed given up. benchmarks/train_throughput.py (GPT-2 4x256 on ragged TinyStories,
2 CPU cores, 7 interleaved rounds, median; three runs) measured ours at 0.95-0.99x a bare forward/backward/step loop
(clipping is 0.3% of a step), 1.03-1.10x the Trainer with group_by_length, 1.9x the Trainer with its default random
order, 0.98-1.03x a Trainer fed our very batches (a tie: equal overhead), and 4.4-4.6x the seed's pad-to-the-max loop.

Under DDP each process seeds its RNGs with seed + rank (so each drops its own units) and a checkpoint keeps every
process's RNG state, so a resumed DDP run draws what the uninterrupted one drew; one process uses the seed itself.
train() may run many times in one kernel, with another precision each time.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from lib.checkpoints import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from lib.config import ParameterError
from lib.losses import IGNORE_INDEX

Example = Mapping[str, Any]  # {"input_ids": [...], optional "labels": [...]}


# ---------------------------------------------------------------- data: packing, padding, batch order

def pack(token_id_lists: Sequence[Sequence[int]], block_size: int, eos_id: int) -> list[dict[str, list[int]]]:
    """Concatenate documents, each followed by eos, and cut into full blocks; only the last partial block is dropped."""
    stream = [t for ids in token_id_lists for t in (*ids, eos_id)]
    return [{"input_ids": stream[i:i + block_size]} for i in range(0, len(stream) - block_size + 1, block_size)]


def _as_list(v: Any) -> list[int]:
    return v.tolist() if hasattr(v, "tolist") else list(v)


def collate(examples: Sequence[Example], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad to the batch's longest: input_ids, attention_mask, labels (given, else input_ids; -100 on padding)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids, mask, labels = [], [], []
    for e in examples:
        x = _as_list(e["input_ids"])
        y = _as_list(e["labels"]) if "labels" in e else x
        if len(y) != len(x):
            raise ValueError(f"example has {len(x)} input_ids but {len(y)} labels")
        pad = width - len(x)
        ids.append(x + [pad_id] * pad)
        mask.append([1] * len(x) + [0] * pad)
        labels.append(y + [IGNORE_INDEX] * pad)
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


def batch_order(n: int, batch_size: int, seed: int, epoch: int,
                lengths: Sequence[int] | None = None) -> list[np.ndarray]:
    """Index batches of one epoch, a pure function of (seed, epoch); with lengths, similar lengths share a batch."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)
    if lengths is not None:  # sort within mega-batches of 50 batches, then shuffle the batches (as HF does)
        lens, mega = np.asarray(lengths), 50 * batch_size
        perm = np.concatenate([c[np.argsort(-lens[c], kind="stable")] for c in np.split(perm, range(mega, n, mega))])
    batches = [perm[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))] if lengths is not None else batches


def flops_per_token(model: torch.nn.Module, seq_len: float) -> float:
    """Training FLOPs per token: 6N for the weights plus 12·L·d·T for attention (Kaplan et al. 2020; PaLM).

    N leaves out GPT-2's position embeddings (wpe, a lookup); the tied token embedding counts once, as lm_head.
    """
    n = sum(p.numel() for name, p in model.named_parameters() if "wpe" not in name)
    c = model.config
    return 6 * n + 12 * c.n_layer * c.n_embd * seq_len


def count_targets(batch: Mapping[str, torch.Tensor], shift: bool = True) -> int:
    """Number of labels that enter the loss (after the causal one-token shift when `shift`)."""
    labels = batch["labels"][:, 1:] if shift else batch["labels"]
    return int((labels != IGNORE_INDEX).sum())


# ---------------------------------------------------------------- config, optimizer, history

def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class TrainConfig:
    """Knobs of one run, validated on creation; a bad value raises ParameterError naming the field."""

    max_steps: int = 100  # optimizer steps
    batch_size: int = 8  # examples per micro-batch (per process)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 0  # linear warmup from 0
    weight_decay: float = 0.1  # on weights with ndim >= 2 only
    betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = 1.0  # 0: no clipping
    eval_every: int = 0  # 0: evaluate at the end only
    eval_batch_size: int = 0  # 0: batch_size
    log_every: int = 10  # a History row (and one .item() sync) every this many steps
    save_every: int = 0  # 0: save at the end only (when ckpt_dir is set)
    keep_last: int = 1  # checkpoints kept in ckpt_dir
    seed: int = 0
    group_by_length: bool = False  # batches of similar lengths: less padding
    shift_labels: bool = True  # causal LM (token t predicts label t+1); False for token classification
    mixed_precision: str = "auto"  # "fp32", "bf16", or auto: bf16 on CUDA GPUs that support it, else fp32
    log_dir: str | os.PathLike | None = None  # the trackers' folder, e.g. reports/<profile>/tb/<run>; None: no tracking
    # with log_dir: "tensorboard", "wandb" (offline unless WANDB_API_KEY is set), "mlflow", a tuple of them, or "none";
    # the default comes from $WORKBOOK_TRACKER, else tensorboard
    tracker: str | tuple[str, ...] = field(default_factory=lambda: os.environ.get("WORKBOOK_TRACKER", "tensorboard"))
    ckpt_dir: str | os.PathLike | None = None  # checkpoints as <ckpt_dir>/step-000100/
    progress: bool = True  # tqdm bar

    def __post_init__(self) -> None:
        def need(name: str, ok: bool, want: str) -> None:
            if not ok:
                raise ParameterError(f"TrainConfig.{name}={getattr(self, name)!r}: expected {want}")
        for low, names in ((1, ("max_steps", "batch_size", "grad_accum", "log_every", "keep_last")),
                           (0, ("warmup_steps", "eval_every", "eval_batch_size", "save_every", "seed"))):
            for name in names:
                v = getattr(self, name)
                need(name, isinstance(v, int) and not isinstance(v, bool) and v >= low, f"an int >= {low}")
        need("lr", _is_num(self.lr) and self.lr > 0, "a number > 0")
        need("min_lr_ratio", _is_num(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "a number in [0, 1]")
        for name in ("weight_decay", "max_grad_norm"):
            need(name, _is_num(getattr(self, name)) and getattr(self, name) >= 0, "a number >= 0")
        need("betas", isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
             and all(_is_num(b) and 0 <= b < 1 for b in self.betas), "two numbers in [0, 1)")
        for name in ("group_by_length", "shift_labels", "progress"):
            need(name, isinstance(getattr(self, name), bool), "True or False")
        need("mixed_precision", self.mixed_precision in ("auto", "fp32", "bf16"), "one of auto, fp32, bf16")
        for name in ("log_dir", "ckpt_dir"):
            v = getattr(self, name)
            need(name, v is None or isinstance(v, (str, os.PathLike)), "a path or None")
        names = _tracker_names(self.tracker)
        need("tracker", isinstance(names, (tuple, list)) and bool(names) and set(names) <= set(TRACKERS) | {"none"}
             and ("none" not in names or len(names) == 1), f"one of {', '.join(TRACKERS)}, a tuple of them, or none")
        need("warmup_steps", self.warmup_steps <= self.max_steps, f"<= max_steps={self.max_steps}")
        need("save_every", not self.save_every or self.ckpt_dir is not None, "0 when ckpt_dir is None")


TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # tracker -> the package it needs


def _tracker_names(tracker: Any) -> list[Any]:
    """TrainConfig.tracker as a list: one name or several."""
    return [tracker] if isinstance(tracker, str) else list(tracker) if isinstance(tracker, (tuple, list)) else tracker


def trackers(cfg: TrainConfig) -> list[str]:
    """The trackers a run logs to: none without log_dir; each one's package must be installed."""
    import importlib.util

    names = _tracker_names(cfg.tracker)
    if cfg.log_dir is None or names == ["none"]:
        return []
    for name in names:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ParameterError(f"TrainConfig.tracker={cfg.tracker!r}: the package {TRACKERS[name]} is not "
                                 f"installed; `pip install {TRACKERS[name]}` or pick another tracker")
    if "wandb" in names and not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")  # no login: the run stays in log_dir, `wandb sync` uploads it
    os.environ.setdefault("WANDB_SILENT", "true")
    return names


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over trainable parameters: weight decay on matrices, none on biases and norm weights (ndim < 2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True")
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)


def cosine_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to lr, then a cosine down to lr * min_lr_ratio at max_steps."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return step / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class History(list):
    """Rows {step, train_loss, eval_loss, lr, grad_norm, tokens, tokens_per_s, wall_s}; pd.DataFrame(h) works."""

    def column(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of the rows where `key` has a value, for plotting."""
        rows = [r for r in self if r.get(key) is not None]
        return [r["step"] for r in rows], [r[key] for r in rows]


# ---------------------------------------------------------------- the loop

@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for a `with` block; the training flag is restored as found, also on an error."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def evaluate(model: torch.nn.Module, examples: Sequence[Example], collate: Callable = collate,
             batch_size: int = 8, shift_labels: bool = True, accelerator: Any = None) -> float:
    """Mean loss per target token over `examples` (eval mode, no grad; the model's mode is restored)."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = next(model.parameters()).device
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of token losses, number of targets)
    with evaluating(model):
        for start in range(rank * batch_size, len(examples), world * batch_size):
            batch = collate([examples[i] for i in range(start, min(start + batch_size, len(examples)))])
            n = count_targets(batch, shift_labels)
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            total += torch.stack([loss.double() * n, torch.tensor(n, dtype=torch.float64, device=device)])
        if accelerator is not None:
            total = accelerator.reduce(total, "sum")
    return float(total[0] / total[1].clamp(min=1))


def train(model: torch.nn.Module, train_examples: Sequence[Example], eval_examples: Sequence[Example] | None = None,
          cfg: TrainConfig | None = None, *, collate: Callable[[Sequence[Example]], dict] = collate,
          resume_from: str | os.PathLike | None = None) -> History:
    """Train `model` in place for cfg.max_steps optimizer steps; resume_from a checkpoint dir (or "latest")."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import gather_object, set_seed
    from tqdm.auto import tqdm

    cfg = cfg or TrainConfig()
    if len(train_examples) < cfg.batch_size:
        raise ValueError(f"{len(train_examples)} training examples: fewer than TrainConfig.batch_size={cfg.batch_size}")
    bf16 = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and torch.cuda.is_available()
                                              and torch.cuda.is_bf16_supported())
    AcceleratorState._reset_state()  # else a second train() in this kernel may not change mixed_precision
    log_with, log_dir = trackers(cfg), Path(cfg.log_dir or ".")
    acc = Accelerator(mixed_precision="bf16" if bf16 else "no", gradient_accumulation_steps=1,  # we accumulate
                      log_with=log_with or None, project_dir=log_dir.parent if log_with else None)
    rank, world, dev = acc.process_index, acc.num_processes, acc.device
    set_seed(cfg.seed, device_specific=True)  # seed + rank: dropout differs across processes; batch order is unaffected
    was_training = model.to(dev).training
    opt = make_optimizer(model, cfg, fused=dev.type in ("cpu", "cuda"))
    sched = cosine_schedule(opt, cfg)
    resume_from = latest_checkpoint(cfg.ckpt_dir) if resume_from == "latest" else resume_from
    st: dict[str, Any] = {"step": 0, "tokens": 0, "wall_s": 0.0, "history": []}
    if resume_from is not None:
        st = load_checkpoint(resume_from, model, opt, sched)
        saved = {**st["config"], "world_size": st["world_size"]}
        for k, now in {**{k: getattr(cfg, k) for k in ("seed", "batch_size", "grad_accum", "group_by_length")},
                       "world_size": world}.items():
            if saved[k] != now:
                raise ValueError(f"resume_from={resume_from}: {k}={now!r} but the checkpoint has {saved[k]!r}, "
                                 "so the batches would differ")
        if world > 1:
            set_rng_state(st["rng_by_rank"][rank])  # load_checkpoint restored the main process's
    vars(model).pop("_is_accelerate_prepared", None)  # set by an earlier train(): prepare would skip the model
    model = acc.prepare(model)  # device, DDP across processes, bf16 autocast
    model.train()
    step, tokens, history = st["step"], st["tokens"], History(st["history"])
    lengths = [len(e["input_ids"]) for e in train_examples] if cfg.group_by_length else None
    eval_set = sorted(eval_examples or [], key=lambda e: len(e["input_ids"]))  # fewer pads, same mean
    epochs: dict[int, list[np.ndarray]] = {}

    def micro_batch(m: int) -> dict[str, torch.Tensor]:
        """The m-th micro-batch of the run: a pure function of (seed, m), so a resumed run sees the same ones."""
        epoch, pos = divmod(m, len(train_examples) // cfg.batch_size)
        if epoch not in epochs:
            epochs.clear()
            epochs[epoch] = batch_order(len(train_examples), cfg.batch_size, cfg.seed, epoch, lengths)
        return collate([train_examples[int(i)] for i in epochs[epoch][pos]])

    if log_with:  # events land in log_dir itself; a resumed run drops the TensorBoard events after its step
        conf = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in asdict(cfg).items()}
        acc.init_trackers(log_dir.name, config=conf, init_kwargs={"tensorboard": {"purge_step": step or None},
                                                                  "wandb": {"dir": str(log_dir)}})
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", disable=not (cfg.progress and acc.is_main_process))
    loss_sum, n_targets, n_tokens = torch.zeros((), dtype=torch.float64, device=dev), 0, 0
    t_start = t_win = time.perf_counter()
    try:
        while step < cfg.max_steps:
            batches = [micro_batch((step * cfg.grad_accum + j) * world + rank) for j in range(cfg.grad_accum)]
            counts = [count_targets(b, cfg.shift_labels) for b in batches]  # on the CPU: no device sync
            total = max(sum(counts), 1)
            if world > 1:  # every process's targets; a device tensor, so nothing waits here
                total = acc.reduce(torch.tensor(float(sum(counts)), device=dev), "sum").clamp(min=1)
            for j, b in enumerate(batches):  # the step's loss: sum of token losses / number of targets
                with acc.no_sync(model) if j < cfg.grad_accum - 1 else nullcontext():
                    loss = model(**{k: v.to(dev, non_blocking=True) for k, v in b.items()}).loss
                    acc.backward(loss * (counts[j] * world / total))
                loss_sum += loss.detach() * counts[j]
                n_tokens += int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
            n_targets += sum(counts)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm else None
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update()
            last = step == cfg.max_steps
            do_eval = bool(eval_set) and (last or (cfg.eval_every > 0 and step % cfg.eval_every == 0))
            do_save = cfg.ckpt_dir is not None and (last or (cfg.save_every > 0 and step % cfg.save_every == 0))
            if not (do_eval or do_save or last or step % cfg.log_every == 0):
                continue
            counts_t = torch.tensor([float(n_targets), float(n_tokens)], dtype=torch.float64, device=dev)
            win = acc.reduce(torch.cat([loss_sum.view(1), counts_t]), "sum").tolist()  # the loop's only sync
            now = time.perf_counter()
            tokens += int(win[2])
            row = {"step": step, "train_loss": win[0] / max(win[1], 1), "eval_loss": None,
                   "lr": sched.get_last_lr()[0], "grad_norm": None if norm is None else float(norm), "tokens": tokens,
                   "tokens_per_s": win[2] / max(now - t_win, 1e-9), "wall_s": st["wall_s"] + now - t_start}
            if do_eval:
                row["eval_loss"] = evaluate(model, eval_set, collate, cfg.eval_batch_size or cfg.batch_size,
                                            cfg.shift_labels, acc)
            history.append(row)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
            if log_with:
                logged = ("train_loss", "eval_loss", "lr", "grad_norm", "tokens_per_s")
                acc.log({k.replace("_loss", "/loss"): row[k] for k in logged if row[k] is not None}, step=step)
            if do_save:
                ranks_rng = {"rng_by_rank": gather_object([rng_state()])} if world > 1 else {}
                acc.wait_for_everyone()
                if acc.is_main_process:
                    conf = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in asdict(cfg).items()}
                    save_checkpoint(Path(cfg.ckpt_dir) / f"step-{step:06d}", acc.unwrap_model(model), opt, sched,
                                    {"step": step, "tokens": tokens, "wall_s": row["wall_s"], "history": history,
                                     "config": conf, "world_size": world, **ranks_rng})
                    for old in sorted(Path(cfg.ckpt_dir).glob("step-*"))[:-cfg.keep_last]:
                        shutil.rmtree(old, ignore_errors=True)
                acc.wait_for_everyone()
            loss_sum, n_targets, n_tokens = torch.zeros((), dtype=torch.float64, device=dev), 0, 0
            t_win = time.perf_counter()  # tokens/s leaves out evaluation and saving
    finally:
        bar.close()
        if log_with:
            acc.end_training()
        acc.unwrap_model(model, keep_fp32_wrapper=False).train(was_training)  # drops the autocast wrapper
    return history


def matmul_peak(n: int = 1024, reps: int = 20, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """This machine's measured matmul rate in FLOP/s at `dtype`: the denominator of model FLOPs utilisation (MFU)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        c = a @ b
    float(c[0, 0])  # waits for an asynchronous device
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def pick_precision(choice: str, device: str = "cpu") -> tuple[str, dict[str, float]]:
    """("fp32" or "bf16", the measured matmul peaks): `choice`, or for "auto" bf16 where its peak is at least twice
    float32's (CPUs with bf16 instructions, recent GPUs), else fp32."""
    if choice not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision: expected auto, fp32 or bf16, got {choice!r}")
    peaks = {p: matmul_peak(device=device, dtype=d) for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    if choice == "auto":
        choice = "bf16" if peaks["bf16"] >= 2 * peaks["fp32"] else "fp32"
    return choice, peaks


def autocast(precision: str, device: str = "cpu"):
    """A context in which matmuls run in bfloat16 if precision is "bf16" (torch.autocast); else it changes nothing.
    Enter it around forward passes, never around a training loop: it keeps the bf16 copy of each trainable weight
    until the outermost context exits, so a loop inside it would compute every step with the first step's weights."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision: expected fp32 or bf16, got {precision!r}")
    return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
