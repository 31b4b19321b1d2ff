"""Profiles, knob validation, device choice and seeding."""
import random

import numpy as np
import pytest
import torch

from lib.config import KNOBS, PROFILE_NAMES, PROFILES, ParameterError, notebook_knobs, pick_device, resolve, \
    seed_everything, validate


def test_every_profile_declares_the_same_valid_knobs():
    notebooks = {k for p in PROFILES.values() for k in p if k != "common"}
    for nb in notebooks:
        sets = {name: set(PROFILES[name]["common"]) | set(PROFILES[name].get(nb, {})) for name in PROFILE_NAMES}
        assert len({frozenset(s) for s in sets.values()}) == 1, f"{nb}: profiles disagree on knobs {sets}"
        for name in PROFILE_NAMES:
            cfg = resolve(nb, {"profile": name})
            assert cfg.profile == name and set(cfg) == notebook_knobs(nb)


def test_none_means_profile_value_and_explicit_wins():
    smoke = resolve("01_tokenization", {"profile": "smoke", "bpe_vocab_size": None})
    assert smoke.bpe_vocab_size == PROFILES["smoke"]["01_tokenization"]["bpe_vocab_size"]
    assert resolve("01_tokenization", {"profile": "smoke", "bpe_vocab_size": 777}).bpe_vocab_size == 777


def test_profile_comes_from_environment_else_cpu(monkeypatch):
    monkeypatch.setenv("WORKBOOK_PROFILE", "smoke")
    assert resolve("01_tokenization", {"profile": None}).profile == "smoke"
    monkeypatch.delenv("WORKBOOK_PROFILE")
    assert resolve("01_tokenization", {}).profile == "cpu"


@pytest.mark.parametrize("params, needle", [
    ({"profile": "huge"}, "profile='huge': expected one of smoke, cpu, gpu"),
    ({"bpe_vocab_size": -1}, "bpe_vocab_size=-1: expected a value > 0"),
    ({"bpe_vocab_size": 0}, "bpe_vocab_size=0"),
    ({"bpe_vocab_size": "big"}, "bpe_vocab_size='big': expected int"),
    ({"seed": 1.5}, "seed=1.5: expected int"),
    ({"seed": True}, "seed=True: expected int"),
    ({"bpe_sweep": [100, -3]}, "bpe_sweep=[100, -3]"),
    ({"corpus": "imdb"}, "corpus='imdb': expected one of"),
])
def test_bad_values_stop_with_one_line_naming_the_parameter(params, needle):
    with pytest.raises(ParameterError) as e:
        resolve("01_tokenization", {"profile": "smoke", **params})
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert e.value._render_traceback_() == [f"ParameterError: {e.value}"]


def test_model_names():
    assert validate("model", "gpt2") == "gpt2"
    assert validate("model", "HuggingFaceTB/SmolLM2-360M-Instruct")
    with pytest.raises(ParameterError, match="model='gtp2'"):
        validate("model", "gtp2")
    with pytest.raises(ParameterError, match="unknown parameter"):
        validate("max_stpes", 3)


def test_every_knob_has_help():
    assert all(k.help for k in KNOBS.values())


def test_device_auto_and_unavailable():
    assert pick_device("auto") in ("cuda", "mps", "cpu")
    assert pick_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="device='cuda'"):
            pick_device("cuda")


def test_one_call_seeds_every_rng():
    seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(3)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())


def test_list_knobs_check_their_item_type():
    from lib.config import Knob, ParameterError

    floats = Knob(list, "learning rates", item=float)
    assert floats.validate("lrs", [1, 3e-3]) == [1.0, 3e-3]
    with pytest.raises(ParameterError, match="positive floats"):
        floats.validate("lrs", [1e-3, 0.0])
    words = Knob(list, "methods", item=str, choices=("a", "b"))
    assert words.validate("m", ["b", "a"]) == ["b", "a"]
    with pytest.raises(ParameterError, match="expected items from a, b"):
        words.validate("m", ["a", "c"])
    with pytest.raises(ParameterError, match="positive ints"):
        Knob(list, "sizes").validate("s", [2, 2.5])
