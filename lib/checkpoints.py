"""Checkpoints without pickle: weights, optimizer, scheduler and RNG states as safetensors + JSON,
written atomically."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from lib.reporting import atomic_dir


def _to_json(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """`obj` as JSON; each tensor goes into `tensors` under its path and is replaced by {"tensor": path}."""
    if torch.is_tensor(obj):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"tensor": path}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return {str(k): _to_json(v, tensors, f"{path}.{k}".lstrip(".")) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v, tensors, f"{path}.{i}".lstrip(".")) for i, v in enumerate(obj)]
    return obj


def _from_json(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of _to_json (tuples come back as lists)."""
    if isinstance(obj, dict):
        is_tensor = obj.keys() == {"tensor"}
        return tensors[obj["tensor"]] if is_tensor else {k: _from_json(v, tensors) for k, v in obj.items()}
    return [_from_json(v, tensors) for v in obj] if isinstance(obj, list) else obj


def save_part(folder: Path, name: str, obj: Any) -> None:
    """Write obj as <name>.json, its tensors in <name>.safetensors (no pickle)."""
    tensors: dict[str, torch.Tensor] = {}
    (folder / f"{name}.json").write_text(json.dumps(_to_json(obj, tensors), indent=1) + "\n", encoding="utf-8")
    if tensors:
        save_file(tensors, str(folder / f"{name}.safetensors"))


def load_part(folder: Path, name: str) -> Any:
    """Read back what save_part wrote."""
    file = folder / f"{name}.safetensors"
    tensors = load_file(str(file)) if file.is_file() else {}
    return _from_json(json.loads((folder / f"{name}.json").read_text(encoding="utf-8")), tensors)


def rng_state() -> dict[str, Any]:
    """Every RNG state of this process: torch (CPU and CUDA), Python's random and NumPy's global generator."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restore what rng_state() returned, also after a JSON round trip (which turned tuples into lists)."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
    np.random.set_state((rng["numpy"][0], np.asarray(rng["numpy"][1], dtype=np.uint32), *rng["numpy"][2:]))


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    sched: Any, state: dict[str, Any]) -> Path:
    """Write weights, optimizer, scheduler, loop state and every RNG; whole or not at all (lib.reporting.atomic_dir)."""
    with atomic_dir(Path(path)) as tmp:
        save_model(model, str(tmp / "model.safetensors"))  # tied weights (lm_head = wte) are stored once
        if hasattr(getattr(model, "config", None), "to_json_file"):
            model.config.to_json_file(tmp / "config.json")  # so from_pretrained(path) works
        save_part(tmp, "optimizer", opt.state_dict())
        save_part(tmp, "scheduler", sched.state_dict())
        save_part(tmp, "trainer_state", {**state, "rng": rng_state()})
    return Path(path)


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, opt: torch.optim.Optimizer | None = None,
                    sched: Any = None) -> dict[str, Any]:
    """Restore what save_checkpoint wrote (weights, optimizer, scheduler, every RNG); returns the loop state."""
    path = Path(path)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint (no trainer_state.json); expected a folder from train()")
    load_model(model, str(path / "model.safetensors"))
    if opt is not None:
        osd = load_part(path, "optimizer")
        osd["state"] = {int(i): s for i, s in osd["state"].items()}  # JSON made the parameter ids strings
        opt.load_state_dict(osd)
    if sched is not None:
        sched.load_state_dict(load_part(path, "scheduler"))
    state = load_part(path, "trainer_state")
    set_rng_state(state.pop("rng"))
    return state


def latest_checkpoint(ckpt_dir: str | os.PathLike | None) -> Path | None:
    """The complete step-* checkpoint with the highest step in ckpt_dir, or None."""
    done = sorted(Path(ckpt_dir).glob("step-*/trainer_state.json")) if ckpt_dir else []
    return done[-1].parent if done else None
