"""lib.training on a tiny GPT-2 and the fixture stories: learning, batching, exact resume, no pickle, DDP seeds."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import GPT2Config, GPT2LMHeadModel

import lib.checkpoints as checkpoints
import lib.training as training
from lib.config import ParameterError
from lib.training import (IGNORE_INDEX, TrainConfig, batch_order, collate, evaluate, latest_checkpoint, make_optimizer,
                          pack, save_checkpoint, train)


@pytest.fixture(scope="module")
def corpus(stories, byte_bpe) -> dict:
    """The 400 fixture stories in byte-level BPE tokens, cut to 48, re-numbered into a compact vocabulary (eos = 0)."""
    ids = [x[:48] for x in byte_bpe(stories)["input_ids"]]
    vocab = {t: k for k, t in enumerate([byte_bpe.eos_token_id] + sorted({t for x in ids for t in x}))}
    docs = [[vocab[t] for t in x] for x in ids]
    return {"docs": docs, "vocab_size": len(vocab), "eos": 0}


def tiny_gpt(vocab_size: int, dropout: float = 0.1, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab_size, n_positions=64, resid_pdrop=dropout,
                     embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def quiet(**kw) -> TrainConfig:
    return TrainConfig(progress=False, **kw)


def test_loss_falls_and_history_and_tensorboard(corpus, tmp_path):
    blocks = pack(corpus["docs"], 32, corpus["eos"])
    model = tiny_gpt(corpus["vocab_size"])
    before = evaluate(model, blocks[-32:], batch_size=16)
    cfg = quiet(max_steps=40, batch_size=16, lr=3e-3, warmup_steps=4, eval_every=20, log_every=5,
                log_dir=tmp_path / "tb")
    hist = train(model, blocks[:-32], blocks[-32:], cfg)
    assert [r["step"] for r in hist] == list(range(5, 41, 5))
    assert hist[-1]["eval_loss"] < before - 1.0, (before, hist[-1])
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] - 0.5  # the first row is at step 5
    assert hist.column("eval_loss")[0] == [20, 40]
    assert hist[-1]["tokens"] == 40 * 16 * 32 and all(r["tokens_per_s"] > 0 for r in hist)
    assert hist[-1]["lr"] == pytest.approx(3e-3 * 0.1)  # cosine ends at lr * min_lr_ratio
    assert model.training and list((tmp_path / "tb").glob("events.out.tfevents.*"))


def _wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of an offline W&B run, read from its .wandb file (a LevelDB-style log of protobuf records)."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_dir.glob("wandb/offline-run-*/run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks, rows = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):  # the writer is still flushing this record: read it on the next poll
            break
        chunks, pos = chunks + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            try:
                record = pb.Record.FromString(chunks)
            except DecodeError:  # a header flushed before its bytes: the tail is not written yet
                break
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            chunks = b""
    return rows


def test_trackers_tensorboard_and_offline_wandb_hold_the_history(corpus, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    blocks = pack(corpus["docs"], 32, corpus["eos"])
    cfg = quiet(max_steps=6, batch_size=8, log_every=2, eval_every=3, log_dir=tmp_path / "run",
                tracker=("tensorboard", "wandb"))
    hist = train(tiny_gpt(corpus["vocab_size"]), blocks[:-16], blocks[-16:], cfg)
    assert os.environ["WANDB_MODE"] == "offline"  # no login: nothing leaves the machine
    events = EventAccumulator(str(tmp_path / "run")).Reload()
    for tag, key in (("train/loss", "train_loss"), ("eval/loss", "eval_loss"), ("lr", "lr")):
        steps, values = hist.column(key)
        assert [e.step for e in events.Scalars(tag)] == steps
        assert [e.value for e in events.Scalars(tag)] == pytest.approx(values, rel=1e-6)
    deadline = time.time() + 60  # wandb's service process may still be flushing the file
    while len(wandb_rows := [r for r in _wandb_history(tmp_path / "run") if "train/loss" in r]) < len(hist) \
            and time.time() < deadline:
        time.sleep(0.5)
    assert [r["_step"] for r in wandb_rows] == hist.column("train_loss")[0]
    assert [r["train/loss"] for r in wandb_rows] == pytest.approx(hist.column("train_loss")[1], rel=1e-9)
    assert [r["tokens_per_s"] for r in wandb_rows] == pytest.approx([r["tokens_per_s"] for r in hist], rel=1e-9)


def test_tracker_knob_is_checked(monkeypatch, tmp_path):
    with pytest.raises(ParameterError, match="TrainConfig.tracker='tensorbored': expected one of"):
        TrainConfig(tracker="tensorbored")
    with pytest.raises(ParameterError, match="TrainConfig.tracker"):
        TrainConfig(tracker=("none", "wandb"))
    monkeypatch.setitem(training.TRACKERS, "mlflow", "no_such_package_here")
    with pytest.raises(ParameterError, match="no_such_package_here is not installed"):
        training.trackers(TrainConfig(tracker="mlflow", log_dir=tmp_path))
    assert training.trackers(TrainConfig(tracker="mlflow")) == []  # no log_dir: no tracking at all
    monkeypatch.setenv("WORKBOOK_TRACKER", "none")
    assert TrainConfig().tracker == "none" and training.trackers(TrainConfig(log_dir=tmp_path)) == []


def test_evaluate_restores_mode_and_weights_tokens(corpus):
    model = tiny_gpt(corpus["vocab_size"]).eval()
    ex = [{"input_ids": d} for d in corpus["docs"][:10]]
    full = evaluate(model, ex, batch_size=10)
    assert not model.training
    assert evaluate(model, ex, batch_size=3) == pytest.approx(full, abs=1e-5)  # token- not batch-weighted
    model.train()
    evaluate(model, ex)
    assert model.training


def test_no_weight_decay_on_biases_and_norms(corpus):
    model = tiny_gpt(corpus["vocab_size"])
    model.transformer.wpe.weight.requires_grad_(False)
    opt = make_optimizer(model, quiet(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} == {n for n, p in model.named_parameters() if p.ndim < 2}
    assert any(".ln_1.weight" in names[id(p)] for p in no_decay["params"])
    assert any(n.endswith(".bias") for n in map(names.get, map(id, no_decay["params"])))
    assert "transformer.wpe.weight" not in {names[id(p)] for p in decay["params"]}  # frozen: left out
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())


def test_pack_drops_only_the_tail_and_puts_eos_between_documents(corpus):
    assert pack([[1, 2, 3], [4, 5], [6, 7, 8]], 4, 0) == [{"input_ids": [1, 2, 3, 0]}, {"input_ids": [4, 5, 0, 6]}]
    docs = corpus["docs"]
    stream = [t for d in docs for t in (*d, 0)]
    blocks = pack(docs, 32, 0)
    flat = [t for b in blocks for t in b["input_ids"]]
    assert all(len(b["input_ids"]) == 32 for b in blocks)
    assert flat == stream[:len(flat)] and 0 <= len(stream) - len(flat) < 32
    assert sum(t == 0 for t in flat) == sum(t == 0 for t in stream[:len(flat)]) >= len(docs) - 2


def test_collate_pads_to_the_batch_longest_and_masks_padding():
    batch = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9, 10, 11, 12]}, {"input_ids": [13, 14]}], pad_id=1)
    assert batch["input_ids"].shape == (3, 5)
    assert batch["input_ids"][2].tolist() == [13, 14, 1, 1, 1]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5, [1, 1, 0, 0, 0]]
    assert batch["labels"][0].tolist() == [5, 6, 7, IGNORE_INDEX, IGNORE_INDEX]
    sft = collate([{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}, {"input_ids": torch.tensor([5, 6])}])
    assert sft["labels"].tolist() == [[-100, -100, 3, 4], [5, 6, -100, -100]]
    with pytest.raises(ValueError, match="4 input_ids but 3 labels"):
        collate([{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3]}])


def test_batch_order_is_deterministic_and_grouping_cuts_padding(corpus):
    lengths = [len(d) for d in corpus["docs"]]
    a, b = batch_order(400, 8, 0, 0, lengths), batch_order(400, 8, 0, 0, lengths)
    assert all((x == y).all() for x, y in zip(a, b))
    assert any((x != y).any() for x, y in zip(a, batch_order(400, 8, 0, 1, lengths)))  # a new order each epoch
    assert sorted(int(i) for x in a for i in x) == list(range(400))

    def pads(batches):
        return sum(max(lengths[i] for i in x) * len(x) - sum(lengths[i] for i in x) for x in batches)
    assert pads(a) < 0.5 * pads(batch_order(400, 8, 0, 0))


class Killed(Exception):
    """Stands for the process being killed."""


def test_resume_after_a_kill_ends_with_the_same_loss(corpus, tmp_path):
    examples = [{"input_ids": d} for d in corpus["docs"][:-40]]  # ragged, with dropout: RNG and order matter
    held_out = [{"input_ids": d} for d in corpus["docs"][-40:]]
    cfg = quiet(max_steps=12, batch_size=6, grad_accum=2, lr=2e-3, warmup_steps=3, log_every=2, save_every=5,
                group_by_length=True, seed=3, eval_every=6, ckpt_dir=tmp_path / "a")
    whole = tiny_gpt(corpus["vocab_size"])
    ref = train(whole, examples, held_out, cfg)

    calls = 0

    def dying_collate(batch):
        nonlocal calls
        calls += 1
        if calls == 7 * 2 + 1:  # in step 8, after the checkpoint of step 5 and the row of step 6
            raise Killed
        return collate(batch)
    cfg_b = dataclasses.replace(cfg, ckpt_dir=tmp_path / "b")
    with pytest.raises(Killed):
        train(tiny_gpt(corpus["vocab_size"]), examples, held_out, cfg_b, collate=dying_collate)
    assert latest_checkpoint(tmp_path / "b").name == "step-000005"
    resumed = tiny_gpt(corpus["vocab_size"], seed=123)  # a fresh model (other init) and a fresh optimizer
    hist = train(resumed, examples, held_out, cfg_b, resume_from="latest")
    assert [r["step"] for r in hist] == [r["step"] for r in ref]  # the history carries the rows before the kill
    assert abs(hist[-1]["train_loss"] - ref[-1]["train_loss"]) <= 1e-6
    assert abs(hist[-1]["eval_loss"] - ref[-1]["eval_loss"]) <= 1e-6
    assert all(torch.equal(p, q) for p, q in zip(whole.state_dict().values(), resumed.state_dict().values()))


def test_checkpoint_has_no_pickle_and_loads_with_from_pretrained(corpus, tmp_path):
    model = tiny_gpt(corpus["vocab_size"])
    train(model, pack(corpus["docs"], 32, 0), None, quiet(max_steps=3, batch_size=4, ckpt_dir=tmp_path))
    ckpt = latest_checkpoint(tmp_path)
    files = sorted(p.name for p in ckpt.iterdir())
    assert files == ["config.json", "model.safetensors", "optimizer.json", "optimizer.safetensors", "scheduler.json",
                     "trainer_state.json", "trainer_state.safetensors"]
    for p in ckpt.iterdir():
        assert p.suffix in (".safetensors", ".json") and not p.read_bytes().startswith(b"\x80")
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        assert "transformer.h.0.attn.c_attn.weight" in f.keys()
    with safe_open(str(ckpt / "trainer_state.safetensors"), "pt") as f:
        assert f.get_tensor("rng.torch").dtype == torch.uint8  # the CPU generator's state
    loaded = GPT2LMHeadModel.from_pretrained(ckpt).eval()
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)
    with pytest.raises(ValueError, match="batch_size=8 but the checkpoint has 4"):
        train(model, pack(corpus["docs"], 32, 0), None, quiet(max_steps=5, batch_size=8), resume_from=ckpt)


def test_an_interrupted_write_leaves_no_half_checkpoint(corpus, tmp_path, monkeypatch):
    model = tiny_gpt(corpus["vocab_size"])
    opt = make_optimizer(model, quiet())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    good = save_checkpoint(tmp_path / "step-000001", model, opt, sched, {"step": 1})
    real_save_file = checkpoints.save_file

    def crash_on_last_file(tensors, filename, *a, **kw):
        real_save_file(tensors, filename, *a, **kw)
        if filename.endswith("trainer_state.safetensors"):
            raise Killed
    monkeypatch.setattr(checkpoints, "save_file", crash_on_last_file)
    with pytest.raises(Killed):
        save_checkpoint(tmp_path / "step-000002", model, opt, sched, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001"]  # no step-2, no temp dir
    (tmp_path / ".step-000003.tmp-999").mkdir()  # what a SIGKILL mid-write leaves: ignored
    (tmp_path / ".step-000003.tmp-999" / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path) == good


@pytest.mark.parametrize("field, value, expected", [
    ("lr", -1e-3, "TrainConfig.lr=-0.001: expected a number > 0"),
    ("batch_size", 0, "TrainConfig.batch_size=0: expected an int >= 1"),
    ("grad_accum", 1.5, "TrainConfig.grad_accum=1.5: expected an int >= 1"),
    ("mixed_precision", "fp8", "TrainConfig.mixed_precision='fp8': expected one of auto, fp32, bf16"),
    ("betas", (0.9, 1.5), "TrainConfig.betas=(0.9, 1.5): expected two numbers in [0, 1)"),
    ("save_every", 10, "TrainConfig.save_every=10: expected 0 when ckpt_dir is None"),
    ("warmup_steps", 500, "TrainConfig.warmup_steps=500: expected <= max_steps=100"),
])
def test_bad_config_names_the_field(field, value, expected):
    with pytest.raises(ParameterError) as e:
        TrainConfig(**{field: value})
    assert str(e.value).startswith(expected)


@pytest.mark.parametrize("broken", [False, True])
def test_gradient_accumulation_equals_a_bigger_batch(corpus, monkeypatch, broken):
    # ragged: lengths 8..48, so the micro-batches of a step hold different numbers of targets and padding
    examples = [{"input_ids": d[:8 + 5 * (k % 9)]} for k, d in enumerate(corpus["docs"][:64])]  # 64 = 8 x 8 = 16 x 4
    if broken:  # every micro-batch weighs the same, as with loss / grad_accum: the test must see it
        monkeypatch.setattr(training, "count_targets", lambda batch, shift=True: 1)
    models, losses = [], []
    for bs, accum in ((8, 1), (4, 2)):  # one step: the same 8 examples, once whole and once as two halves
        models.append(tiny_gpt(corpus["vocab_size"], dropout=0.0))
        hist = train(models[-1], examples, None, quiet(max_steps=10, batch_size=bs, grad_accum=accum, lr=3e-3,
                                                       log_every=1))
        losses.append([r["train_loss"] for r in hist])
    weights = max(float((p - q).abs().max()) for p, q in zip(models[0].parameters(), models[1].parameters()))
    if broken:
        assert weights > 1e-3  # 2e-2 here: far above the 5e-6 of float rounding
    else:
        assert weights <= 1e-4 and max(abs(x - y) for x, y in zip(*losses)) <= 1e-5 and len(losses[1]) == 10


def test_train_twice_in_one_process_with_another_precision(corpus):
    blocks = pack(corpus["docs"], 32, 0)[:16]
    model = tiny_gpt(corpus["vocab_size"])
    seen = []
    model.transformer.h[0].attn.c_attn.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    for precision in ("fp32", "bf16", "fp32"):  # a notebook re-running its training cell with other settings
        seen.clear()
        train(model, blocks, None, quiet(max_steps=2, batch_size=8, mixed_precision=precision))
        assert set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}, precision
        assert all(p.dtype == torch.float32 for p in model.parameters())


def test_token_classification_on_a_datasets_dataset(corpus):
    from datasets import Dataset
    from transformers import GPT2ForTokenClassification

    docs = corpus["docs"][:64]
    tags = [[t % 3 if k % 4 else IGNORE_INDEX for k, t in enumerate(d)] for d in docs]  # some positions ignored
    ds = Dataset.from_dict({"input_ids": docs, "labels": tags, "text": ["unused"] * len(docs)})
    torch.manual_seed(0)
    model = GPT2ForTokenClassification(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=corpus["vocab_size"],
                                                  n_positions=64, num_labels=3, pad_token_id=0, bos_token_id=0,
                                                  eos_token_id=0))
    before = evaluate(model, ds.select(range(16)), shift_labels=False)
    hist = train(model, ds, ds.select(range(16)), quiet(max_steps=20, batch_size=8, lr=3e-3, shift_labels=False,
                                                        group_by_length=True))
    assert hist[-1]["eval_loss"] < before - 0.2 and before == pytest.approx(1.1, abs=0.2)  # ln 3 = 1.10
    batch = collate([ds[0], ds[1]])
    assert batch["labels"][0, 0] == IGNORE_INDEX and training.count_targets(batch, shift=False) == \
        sum(t != IGNORE_INDEX for r in (tags[0], tags[1]) for t in r)


DROPOUT_SCRIPT = '''
import json, os, sys
from types import SimpleNamespace

import torch

from lib.training import TrainConfig, train


class Dropper(torch.nn.Module):
    """A weight vector under dropout; records which of its units each forward pass dropped."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(64))
        self.dropped = []

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = torch.nn.functional.dropout(self.w, 0.5, self.training)
        self.dropped.append((h == 0).int().tolist())
        return SimpleNamespace(loss=(h * input_ids.float().mean()).sum())


data, out = [{"input_ids": [1, 2, 3]}] * 8, sys.argv[1]
cfg = TrainConfig(max_steps=4, batch_size=2, seed=5, save_every=2, keep_last=2, ckpt_dir=out, progress=False)
whole, resumed = Dropper(), Dropper()
train(whole, data, None, cfg)
train(resumed, data, None, cfg, resume_from=os.path.join(out, "step-000002"))  # a second train() in this process
with open(os.path.join(out, f"rank{os.environ.get('RANK', 0)}.json"), "w") as f:
    json.dump({"whole": whole.dropped, "resumed": resumed.dropped}, f)
if torch.distributed.is_initialized():  # leave together: a rank that exits while the other still talks to it aborts
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
'''


def test_each_ddp_process_drops_its_own_units_and_resumes_them(tmp_path):
    script = tmp_path / "dropout.py"
    script.write_text(DROPOUT_SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([str(Path(training.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"torchrun exit {done.returncode}\n{done.stderr[-4000:]}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(len(r["whole"]) == 4 and 0 < sum(map(sum, r["whole"])) < 4 * 64 for r in ranks)
    assert all(a != b for a, b in zip(ranks[0]["whole"], ranks[1]["whole"]))  # not in lockstep: one seed per rank
    assert ranks[0]["whole"][0] != ranks[0]["whole"][1]  # and each step draws new masks
    assert all(r["resumed"] == r["whole"][2:] for r in ranks)  # every process resumes its own RNG


@pytest.mark.parametrize("peaks, choice, expected", [
    ((100.0, 250.0), "auto", "bf16"), ((100.0, 150.0), "auto", "fp32"),
    ((100.0, 150.0), "bf16", "bf16"), ((100.0, 250.0), "fp32", "fp32")])
def test_pick_precision_takes_bf16_only_where_it_measures_twice_as_fast(monkeypatch, peaks, choice, expected):
    rates = {torch.float32: peaks[0], torch.bfloat16: peaks[1]}
    monkeypatch.setattr(training, "matmul_peak", lambda device="cpu", dtype=torch.float32: rates[dtype])
    assert training.pick_precision(choice) == (expected, {"fp32": peaks[0], "bf16": peaks[1]})
    with pytest.raises(ValueError, match="precision"):
        training.pick_precision("fp16")


def test_autocast_runs_matmuls_in_bf16_only_when_asked():
    a = torch.randn(4, 4)
    with training.autocast("bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with training.autocast("fp32"):
        assert (a @ a).dtype == torch.float32
    with pytest.raises(ValueError, match="precision: expected fp32 or bf16, got 'no'"):
        training.autocast("no")  # TrainConfig's word, not this one's
