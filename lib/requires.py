"""What each notebook needs before it starts — data files, packages, model folders — checked at once by its setup cell.

`NEEDS` declares it per notebook as a function of the resolved parameters (the corpus or model a run uses changes what
it needs). `missing(notebook, cfg)` lists what is absent, each with how to get it; `lib.config.setup` raises
`PrerequisiteError` with that list before the notebook does any work, and `lib.run` reads `model_folders` to run the
notebook that makes a missing model first. A data file counts as present when it is under the data root, or when
the hub may be used (HF_HUB_OFFLINE unset) and the set has a hub copy.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from lib.config import OneLineError

BPE = "bpe-tinystories"


class PrerequisiteError(OneLineError, RuntimeError):
    """Something a notebook needs is missing; the message lists each item and how to get it."""


@dataclass(frozen=True)
class Needs:
    """A notebook's prerequisites: data (name -> relative paths, hub copy or None), packages, model folders."""

    data: Callable[[Mapping[str, Any]], dict[str, tuple[list[str], str | None]]] = lambda cfg: {}
    packages: tuple[str, ...] = ()
    models: Callable[[Mapping[str, Any]], set[str]] = lambda cfg: set()


def _corpus(name: str, splits: tuple[str, ...] = ("train", "validation")) -> dict[str, tuple[list[str], str | None]]:
    from lib.data import CORPORA

    c = CORPORA[name]
    return {f"corpus {name}": ([c.files[s] for s in splits if s in c.files], c.hub)}


def _tsv(*names: str) -> dict[str, tuple[list[str], str | None]]:
    from lib.data import DATASETS

    return {name: ([DATASETS[name].file], DATASETS[name].hub) for name in names}


def _conll() -> dict[str, tuple[list[str], str | None]]:
    from lib.data import CONLL_HUB, CONLL_SPLITS

    return {"CoNLL-2003": (list(CONLL_SPLITS.values()), CONLL_HUB)}


def _dialogues(*names: str) -> dict[str, tuple[list[str], str | None]]:
    from lib.data import DIALOGUES

    return {name: (DIALOGUES[name], None) for name in names}


def _models_of(cfg: Mapping[str, Any]) -> set[str]:
    """The model folders a run loads through its `model`, `ner_small_model` and `compare_models` knobs."""
    from lib.models import MINI_GPT

    return {MINI_GPT} & {cfg.get("model"), cfg.get("ner_small_model"), *(cfg.get("compare_models") or [])}


GPT2_TOKENIZER = {"GPT-2 tokenizer": (["gpt2-tokenizer/tokenizer.json"], "openai-community/gpt2")}
NEEDS: dict[str, Needs] = {
    "01_tokenization": Needs(lambda cfg: {**_corpus(cfg["corpus"]), **GPT2_TOKENIZER}, ("tokenizers",)),
    "02_loss_derivation": Needs(lambda cfg: {**_tsv("sst2"), **_corpus("wikitext-2", ("test",)), **GPT2_TOKENIZER},
                                (), _models_of),
    "03_pretraining": Needs(lambda cfg: _corpus(cfg["corpus"]), (), lambda cfg: {BPE}),
    "04_fine_tuning": Needs(lambda cfg: {**_corpus("tinystories"), **_corpus(cfg["domain_corpus"]), **GPT2_TOKENIZER,
                                         **_dialogues("sgd", "chatterbot", "self-instruct")}, (), _models_of),
    "05_zero_shot_prompting": Needs(lambda cfg: _tsv("sst2", "ag_news", "banking77"), (), _models_of),
    "06_continuous_prompts": Needs(lambda cfg: _tsv("sst2"), ("peft",), _models_of),
    "07_ner_evaluation": Needs(lambda cfg: {**_conll(), **GPT2_TOKENIZER}, ("seqeval", "sklearn", "peft"),
                               _models_of),
    "08_interaction_stability": Needs(lambda cfg: {**_tsv("banking77"),
                                                   **_dialogues("sgd", "self-instruct", "chatterbot")},
                                      ("sklearn", "garak"), _models_of),
    "09_preference_tuning": Needs(lambda cfg: {**_tsv("banking77"), **_dialogues("sgd", "self-instruct")},
                                  ("peft", "trl", "garak"), _models_of),  # banking77, sgd, garak: the outside set
    "10_customer_service": Needs(lambda cfg: {**_tsv("banking77", "sst2", "ag_news"),
                                              **_dialogues("sgd", "self-instruct")}, ("bm25s", "gradio"), _models_of),
    "11_financial_monitoring": Needs(lambda cfg: _tsv("ag_news"), ("sklearn", "vaderSentiment"), _models_of),
    "12_recommendation": Needs(lambda cfg: {}, ("recbole", "implicit", "peft", "sklearn"), _models_of),
}


def model_folders(notebook: str, cfg: Mapping[str, Any]) -> set[str]:
    """The folders of models/<profile>/ the notebook loads with these parameters (made by earlier notebooks)."""
    return NEEDS[notebook].models(cfg) if notebook in NEEDS else set()


def missing(notebook: str, cfg: Mapping[str, Any]) -> list[str]:
    """Every prerequisite of the notebook that is absent, one line each, saying how to get it."""
    from lib.data import data_root
    from lib.models import MINILM, SMOLLM2, ModelNotFoundError, _minilm_source, _smollm2_dir, models_root

    need, root, out = NEEDS.get(notebook, Needs()), data_root(), []
    hub_ok = os.environ.get("HF_HUB_OFFLINE", "") not in ("1", "true", "True")
    for what, (paths, hub) in need.data(cfg).items():
        absent = [p for p in paths if not (root / p).exists()]
        if absent and not (hub and hub_ok):
            out.append(f"data {what}: {', '.join(str(root / p) for p in absent)} not found"
                       f"{'' if hub else ' (no hub copy)'}; set WORKBOOK_DATA to a folder holding it (../shared/data)"
                       f"{' or, online, run `python -m lib.data fetch`' if hub else ''}")
    for package in need.packages:
        if importlib.util.find_spec(package) is None:
            out.append(f"package {package}: not installed; run `make setup`")
    packaged = {SMOLLM2: _smollm2_dir, MINILM: _minilm_source}  # models whose files come in a PyPI package
    named = {cfg.get("model"), cfg.get("encoder"), *(cfg.get("compare_models") or [])}
    for name in [n for n in packaged if n in named]:
        try:
            packaged[name]()
        except ModelNotFoundError as e:
            out.append(f"model {e}")
    folder = models_root(cfg.get("profile"))
    for model in sorted(model_folders(notebook, cfg)):
        if not (folder / model).is_dir():
            out.append(f"model folder {folder / model}: missing; `python -m lib.run --profile {cfg.get('profile')} "
                       f"--only {notebook[:2]}` runs the notebook that makes it first")
    return out


def check(notebook: str, cfg: Mapping[str, Any]) -> None:
    """Raise PrerequisiteError listing everything the notebook needs and lacks; return quietly when all is there."""
    if lines := missing(notebook, cfg):
        raise PrerequisiteError(f"{notebook} cannot start; missing:\n- " + "\n- ".join(lines))
