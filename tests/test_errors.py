"""Bad input stops with one clear error naming the file and line (or the key / parameter) and what was expected."""
import json
import math
import re

import pytest
import yaml

from lib.chat import COHERENCE_PATH, load_scripts
from lib.config import ParameterError, resolve
from lib.data import (DataFormatError, load_classification, load_conll2003, load_dialogues, load_yaml, read_conll,
                      to_iob2)
from lib.prompting import load_templates
from lib.safety import POLICY_PATH, PolicyError, load_policy


def _write(root, rel, data: bytes):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _conll(rows: str) -> bytes:
    """CoNLL lines from 'token:chunk:ner' words, one sentence per line of `rows` (POS is always NN)."""
    sents = [[w.split(":") for w in line.split()] for line in rows.strip().splitlines()]
    return "\n\n".join("\n".join(f"{t} NN {c} {n}" for t, c, n in s) for s in sents).encode() + b"\n"


# ---------------------------------------------------------------- CoNLL: strict IOB2, BOM, explicit IOB1

@pytest.mark.parametrize("rows, line, message", [
    ("EU:B-NP:B-ORG rejects:B-VP:O Peter:B-NP:I-PER", 3,
     "NER tag 'I-PER' after 'O' is not IOB2 (a span starts with B-PER)"),
    ("Peter:B-NP:B-PER Inc:I-NP:I-ORG", 2, "NER tag 'I-ORG' after 'B-PER' is not IOB2 (a span starts with B-ORG)"),
    ("EU:B-NP:B-ORG\nrejects:I-VP:O", 3, "chunk tag 'I-VP' after 'O' is not IOB2 (a span starts with B-VP)"),
    ("Peter:B-NP:B-PER\nBlack:B-NP:I-PER", 3, "NER tag 'I-PER' after 'O'"),  # a sentence break resets the context
])
def test_conll_iob2_violations_name_file_line_and_fix(tmp_path, rows, line, message):
    path = _write(tmp_path, "x.conll", _conll(rows))
    with pytest.raises(DataFormatError) as e:
        read_conll(path)
    assert str(e.value).startswith(f"{path}:{line}: {message}")
    assert "expected IOB2, or pass scheme='iob1' to convert an IOB1 file" in str(e.value)


def test_conll_bom_is_not_glued_to_the_first_token(tmp_path):
    body = _conll("EU:B-NP:B-ORG rejects:B-VP:O")
    assert read_conll(_write(tmp_path, "a.conll", b"\xef\xbb\xbf" + body))["tokens"] == [["EU", "rejects"]]
    docstart = b"\xef\xbb\xbf-DOCSTART- -X- -X- O\n\n" + body  # the BOM used to turn -DOCSTART- into a word
    assert read_conll(_write(tmp_path, "b.conll", docstart))["tokens"] == [["EU", "rejects"]]


def test_conll_iob1_is_rejected_by_default_and_converted_on_request(tmp_root):
    iob1 = _conll("Bank:I-NP:I-ORG of:I-PP:I-ORG England:I-NP:I-ORG rose:I-VP:O Ann:I-NP:I-PER Lee:B-NP:B-PER")
    _write(tmp_root, "conll2003/train.txt", b"-DOCSTART- -X- -X- O\n\n" + iob1)
    with pytest.raises(DataFormatError, match=r"train\.txt:3: chunk tag 'I-NP' after 'O' is not IOB2"):
        load_conll2003("train")
    ds = load_conll2003("train", scheme="iob1")
    names = ds.features["ner_tags"].feature.names
    assert [names[i] for i in ds[0]["ner_tags"]] == ["B-ORG", "I-ORG", "I-ORG", "O", "B-PER", "B-PER"]
    assert ds[0]["chunk_tags"] == ["B-NP", "B-PP", "B-NP", "B-VP", "B-NP", "B-NP"]
    with pytest.raises(ValueError, match="scheme='bio': expected one of iob2, iob1"):
        load_conll2003("train", scheme="bio")


def test_to_iob2_keeps_valid_iob2_as_it_is():
    tags = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "I-LOC"]
    for scheme in ("iob2", "iob1"):
        prev, out = "O", []
        for t in tags:
            prev = to_iob2(t, prev, scheme)
            out.append(prev)
        assert out == tags


# ---------------------------------------------------------------- classification TSV

def test_tsv_row_with_empty_text_names_file_and_line(tmp_root):
    _write(tmp_root, "ag_news/test.tsv", b"Stocks fell.\tBusiness\n\n  \tSports\n")
    with pytest.raises(DataFormatError, match=re.escape("ag_news/test.tsv:3: empty text before the tab; expected a "
                                                        "non-empty text (label 'Sports')")):
        load_classification("ag_news")


# ---------------------------------------------------------------- YAML files: templates, policy, coherence

def test_templates_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = _write(tmp_path, "t.yaml", b"sst2:\n  templates:\n    - name: a\n     text: '{text}'\n")
    with pytest.raises(DataFormatError, match=r"t\.yaml:4: not valid YAML \(while parsing a block collection started "
                                              r"at line 3, expected <block end>"):
        load_templates("sst2", ["negative", "positive"], bad)
    _write(tmp_path, "t.yaml", b"- sst2\n")
    with pytest.raises(DataFormatError, match=r"t\.yaml:1: expected a mapping of task name"):
        load_templates("sst2", ["negative", "positive"], bad)
    _write(tmp_path, "t.yaml", b"ag_news: {}\nsst2:\n  templates: {name: a}\n")
    with pytest.raises(DataFormatError, match=r"t\.yaml:3: task 'sst2': expected a mapping with 'templates' \(a list"):
        load_templates("sst2", ["negative", "positive"], bad)


def test_real_templates_policy_and_coherence_files_still_load():
    assert load_templates("sst2", ["negative", "positive"])
    assert load_policy().benign_examples
    fillers, dialogues = load_scripts()
    assert set(fillers) == {d["lang"] for d in dialogues}


@pytest.mark.parametrize("value, message", [
    (5, "benign_examples: expected a non-empty list of example prompts, got int '5'"),
    ("How do I kill a process?", "benign_examples: expected a non-empty list of example prompts, got str"),
    (["fine", {"text": "x"}], "benign_examples[1]: expected an example prompt (a non-empty string), got dict"),
])
def test_policy_benign_examples_must_be_a_list_of_strings(tmp_path, value, message):
    raw = yaml.safe_load(POLICY_PATH.read_text(encoding="utf-8"))
    raw["benign_examples"] = value
    path = _write(tmp_path, "p.yaml", yaml.safe_dump(raw, allow_unicode=True).encode())
    with pytest.raises(PolicyError, match=re.escape(f"{path}: {message}")):
        load_policy(path)


@pytest.mark.parametrize("text, message", [
    (b"", "c.yaml:1: file is empty; expected data"),
    (b"# only a comment\n", "c.yaml:1: expected a mapping with 'fillers' and 'dialogues', got an empty document"),
    (b"fillers: {en: [[a, b]]}\ndialogues: [oops]\n",
     "c.yaml: dialogues[0]: expected a mapping with lang, fact, ack, question, answer"),
    (b"fillers: {en: [a]}\ndialogues: [{lang: en}]\n", "c.yaml: fillers.en: expected a list of [question, answer]"),
])
def test_malformed_coherence_file_names_file_and_what_is_expected(tmp_path, text, message):
    assert COHERENCE_PATH.is_file()
    with pytest.raises(ValueError, match=re.escape(message)):
        load_scripts(_write(tmp_path, "c.yaml", text))


def test_load_yaml_error_is_a_data_format_error(tmp_path):
    with pytest.raises(DataFormatError, match=r"y\.yaml:2: not valid YAML"):
        load_yaml(_write(tmp_path, "y.yaml", b"a: [1, 2\nb: 3\n"))


# ---------------------------------------------------------------- JSONL: dialogue and self-instruct

def test_dialogue_jsonl_line_that_is_not_an_object(tmp_root):
    _write(tmp_root, "dialogue/sgd/dev_chat.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n\n[1, 2]\n')
    with pytest.raises(DataFormatError, match=re.escape("dev_chat.jsonl:3: expected a JSON object {...} per line, "
                                                        "got a list")):
        load_dialogues("sgd")


@pytest.mark.parametrize("record, message", [
    ({"instruction": "Add.", "instances": [{"input": "1 2", "output": "3"}, {"input": "2 2"}]},
     "seed_tasks.jsonl:2: instances[1]: expected an object with 'output' (a string)"),
    ({"instruction": "Add.", "instances": {"output": "3"}},
     "seed_tasks.jsonl:2: expected fields 'instruction' (a string) and 'instances' (a non-empty list)"),
    ({"instruction": ["Add."], "instances": [{"output": "3"}]},
     "seed_tasks.jsonl:2: expected fields 'instruction' (a string)"),
])
def test_self_instruct_item_without_output(tmp_root, record, message):
    good = json.dumps({"instruction": "Say hi.", "instances": [{"input": "", "output": "hi"}]})
    _write(tmp_root, "instructions/self-instruct/seed_tasks.jsonl", f"{good}\n{json.dumps(record)}\n".encode())
    _write(tmp_root, "instructions/self-instruct/user_oriented_instructions.jsonl", f"{good}\n".encode())
    with pytest.raises(DataFormatError, match=re.escape(message)):
        load_dialogues("self-instruct")


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("notebook, params, message", [
    ("03_pretraining", {"lr": math.nan}, "lr=nan: expected a finite number, not NaN or infinity (peak learning rate)"),
    ("03_pretraining", {"lr": math.inf}, "lr=inf: expected a finite number, not NaN or infinity"),
    ("07_ner_evaluation", {"ner_epochs": -math.inf}, "ner_epochs=-inf: expected a finite number"),
    ("06_continuous_prompts", {"prompt_lrs": [1e-3, math.nan]},
     "prompt_lrs=[0.001, nan]: expected a list of positive floats, none NaN or infinite"),
    ("06_continuous_prompts", {"prompt_lrs": [math.inf]},
     "prompt_lrs=[inf]: expected a list of positive floats, none NaN or infinite"),
    ("03_pretraining", {"gpt_heads": 3, "gpt_dim": 64},
     "gpt_heads=3, gpt_dim=64: expected gpt_heads to divide every width (each head gets width / gpt_heads "
     "dimensions); 64 % 3 = 1"),
    ("03_pretraining", {"gpt_heads": 2, "gpt_dim": 64, "sweep_dims": [32, 33]},
     "gpt_heads=2, sweep_dims=[32, 33]: expected gpt_heads to divide every width"),
    ("05_zero_shot_prompting", {"compare_models": ["mini-gpt", "gtp2"]}, "compare_models[1]='gtp2': expected mini-gpt"),
])
def test_bad_config_values_name_the_parameter(notebook, params, message):
    with pytest.raises(ParameterError) as e:
        resolve(notebook, {"profile": "smoke", **params})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_good_config_values_still_pass():
    cfg = resolve("03_pretraining", {"profile": "smoke", "gpt_heads": 4, "gpt_dim": 64, "sweep_dims": [32, 48]})
    assert cfg.gpt_dim % cfg.gpt_heads == 0
    assert resolve("05_zero_shot_prompting", {"profile": "smoke", "compare_models": ["gpt2", "mini-gpt"]})
