"""Notebook parameters: three profiles declared once, validated knobs, device choice and seeding."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

PROFILE_NAMES = ("smoke", "cpu", "gpu")
DEFAULT_PROFILE = "cpu"


class ParameterError(ValueError):
    """A notebook parameter has a value that is not allowed; the message is one line."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"ParameterError: {self}"]


@dataclass(frozen=True)
class Knob:
    """One notebook parameter: its type, what values are allowed, and what it means."""

    kind: type
    help: str
    choices: tuple[str, ...] | None = None
    positive: bool = False
    check: str | None = None  # "model", "corpus" or "dataset": validated against a registry

    def validate(self, name: str, value: Any) -> Any:
        """Return the value (ints widened to float where a float is asked) or raise ParameterError."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.kind is list:
            if not isinstance(value, (list, tuple)) or not value:
                raise ParameterError(f"{name}={value!r}: expected a non-empty list ({self.help})")
            for v in value:
                if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                    raise ParameterError(f"{name}={value!r}: expected a list of positive integers ({self.help})")
            return list(value)
        if isinstance(value, bool) != (self.kind is bool) or not isinstance(value, self.kind):
            raise ParameterError(f"{name}={value!r}: expected {self.kind.__name__} ({self.help})")
        if self.positive and value <= 0:
            raise ParameterError(f"{name}={value!r}: expected a value > 0 ({self.help})")
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
}

# Every profile value, declared once. "common" applies to every notebook; a notebook's own section overrides it.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "common": {"seed": 0, "device": "auto"},
        "01_tokenization": {"corpus": "tinystories", "bpe_vocab_size": 1000, "bpe_train_texts": 3000,
                            "bpe_sweep": [300, 500, 1000]},
        "02_loss_derivation": {"model": "smollm2-135m-instruct", "ppl_texts": 8, "sst2_examples": 16},
    },
    "cpu": {
        "common": {"seed": 0, "device": "auto"},
        "01_tokenization": {"corpus": "tinystories", "bpe_vocab_size": 8192, "bpe_train_texts": 25000,
                            "bpe_sweep": [512, 1024, 2048, 4096, 8192, 16384]},
        "02_loss_derivation": {"model": "smollm2-135m-instruct", "ppl_texts": 64, "sst2_examples": 200},
    },
    "gpu": {
        "common": {"seed": 0, "device": "auto"},
        "01_tokenization": {"corpus": "tinystories", "bpe_vocab_size": 16384, "bpe_train_texts": 1_000_000,
                            "bpe_sweep": [1024, 2048, 4096, 8192, 16384, 32768]},
        "02_loss_derivation": {"model": "gpt2", "ppl_texts": 1000, "sst2_examples": 872},
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
    return cfg


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
    """Resolve a notebook's parameters, seed every RNG, pick the device and apply the plot style."""
    cfg = resolve(notebook, params)
    os.environ["WORKBOOK_PROFILE"] = cfg.profile  # so that loaders (e.g. models/<profile>/) follow the notebook
    cfg["device"] = pick_device(cfg.device)
    seed_everything(cfg.seed)
    from lib.reporting import use_style

    use_style()
    cfg["notebook"] = notebook
    return cfg
