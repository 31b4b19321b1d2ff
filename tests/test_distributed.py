"""The training core under torchrun: two CPU processes (gloo) train like one process with the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("scripts") / "ddp_train.py"


def _run(cmd: list[str], env: dict) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"exit {done.returncode}: {' '.join(cmd)}\n{done.stderr[-4000:]}"


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",  # gloo on CPU; GPUs need no flag
           "GLOO_SOCKET_IFNAME": "lo"}  # loopback, whatever the machine's hostname resolves to
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT), "8",
          str(tmp_path / "ddp.json")], env)
    _run([sys.executable, str(SCRIPT), "16", str(tmp_path / "one.json")], env)
    ddp, one = (json.loads((tmp_path / f).read_text()) for f in ("ddp.json", "one.json"))
    assert ddp["world"] == 2 and one["world"] == 1
    last_ddp, last_one = ddp["history"][-1], one["history"][-1]
    assert last_ddp["step"] == last_one["step"] == 30
    assert last_ddp["eval_loss"] < ddp["history"][0]["train_loss"] - 0.5           # it learns
    assert abs(last_ddp["eval_loss"] - last_one["eval_loss"]) < 0.05               # like one process, batch 2 x 8
