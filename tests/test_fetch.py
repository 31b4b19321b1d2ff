"""`python -m lib.data fetch`: hub-shaped datasets written in the local layout read back equal through the offline
loaders; the real local copies come out byte for byte where the hub holds the same text; offline, one line a dataset.

The hub shapes (column names, ClassLabel names and order) are those of the hub datasets the loaders name: CoNLL-2003's
builder (eriktks/conll2003), stanfordnlp/sst2, fancyzhx/ag_news, PolyAI/banking77, roneneldan/TinyStories and
Salesforce/wikitext (a row per line of the token file, a blank line an empty row). The sentences are made up here.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, Features, List, Value

import lib.data as D
from lib.data import CONLL_NER_LABELS, FETCH, load_classification, load_conll2003, load_corpus, read_conll

REPO = Path(__file__).resolve().parents[1]
POS = ['"', "''", "#", "$", "(", ")", ",", ".", ":", "``", "CC", "CD", "DT", "EX", "FW", "IN", "JJ", "JJR", "JJS", "LS",
       "MD", "NN", "NNP", "NNPS", "NNS", "NN|SYM", "PDT", "POS", "PRP", "PRP$", "RB", "RBR", "RBS", "RP", "SYM", "TO",
       "UH", "VB", "VBD", "VBG", "VBN", "VBP", "VBZ", "WDT", "WP", "WP$", "WRB"]
CHUNK = ["O", "B-ADJP", "I-ADJP", "B-ADVP", "I-ADVP", "B-CONJP", "I-CONJP", "B-INTJ", "I-INTJ", "B-LST", "I-LST",
         "B-NP", "I-NP", "B-PP", "I-PP", "B-PRT", "I-PRT", "B-SBAR", "I-SBAR", "B-UCP", "I-UCP", "B-VP", "I-VP"]
CONLL_FEATURES = Features({"id": Value("string"), "tokens": List(Value("string")),
                           "pos_tags": List(ClassLabel(names=POS)), "chunk_tags": List(ClassLabel(names=CHUNK)),
                           "ner_tags": List(ClassLabel(names=CONLL_NER_LABELS))})
SENTENCES = [  # (token, POS, chunk, NER), IOB2 like the hub copy
    [("Mara", "NNP", "B-NP", "B-PER"), ("Quell", "NNP", "I-NP", "I-PER"), ("joined", "VBD", "B-VP", "O"),
     ("Harbor", "NNP", "B-NP", "B-ORG"), ("Mills", "NNPS", "I-NP", "I-ORG"), ("in", "IN", "B-PP", "O"),
     ("Lisbon", "NNP", "B-NP", "B-LOC"), (".", ".", "O", "O")],
    [("Prices", "NNS", "B-NP", "O"), ("rose", "VBD", "B-VP", "O"), ("3.5", "CD", "B-NP", "O"), ("%", "NN", "I-NP", "O"),
     ("after", "IN", "B-SBAR", "O"), ("the", "DT", "B-NP", "O"), ("Velvet", "JJ", "I-NP", "B-MISC"),
     ("Cup", "NNP", "I-NP", "I-MISC"), ('"', '"', "O", "O")],
    [],  # the hub builder's trailing empty example
    [("--", ":", "O", "O")],
]
BANKING = ["card_arrival", "age_limit", "top_up_failed", "Refund_not_showing_up"]  # hub order, not sorted


def hub_conll() -> Dataset:
    rows = {"id": [str(i) for i in range(len(SENTENCES))], "tokens": [[t[0] for t in s] for s in SENTENCES],
            "pos_tags": [[POS.index(t[1]) for t in s] for s in SENTENCES],
            "chunk_tags": [[CHUNK.index(t[2]) for t in s] for s in SENTENCES],
            "ner_tags": [[CONLL_NER_LABELS.index(t[3]) for t in s] for s in SENTENCES]}
    return Dataset.from_dict(rows, features=CONLL_FEATURES)


def hub_sst2() -> Dataset:
    feats = Features({"idx": Value("int32"), "sentence": Value("string"),
                      "label": ClassLabel(names=["negative", "positive"])})
    return Dataset.from_dict({"idx": [0, 1, 2], "sentence": ["a gentle , funny film . ", "it drags . ",
                                                             "the cast -- all `` twelve '' of them -- shines . "],
                              "label": [1, 0, 1]}, features=feats)


def hub_ag_news() -> Dataset:
    feats = Features({"text": Value("string"), "label": ClassLabel(names=["World", "Sports", "Business", "Sci/Tech"])})
    return Dataset.from_dict({"text": ["Rain Delays Final The final was\\postponed  #39;til Monday.",
                                       "Chip Maker Grows\tA tab inside the text.", "Talks Resume Envoys met again."],
                              "label": [1, 3, 0]}, features=feats)


def hub_banking() -> Dataset:
    feats = Features({"text": Value("string"), "label": ClassLabel(names=BANKING)})
    return Dataset.from_dict({"text": ["Where is my new card?", "How old do I need to be?", "My top-up failed again",
                                      "I still don't see my refund."], "label": [0, 1, 2, 3]}, features=feats)


STORIES = ["Once upon a time, a cat named Pip found a red ball.\n\nPip played all day. He was happy.",
           "Tom saw a big \u201cshiny\u201d bus.\n\nHe waved. The bus honked back!", "   ", "A short one."]
WIKI_ROWS = ["", " = Grey Heron = \n", "", " The grey heron is a <unk> bird . \n", "", " = = Range = = \n", ""]


def test_conll_lines_read_back_equal(tmp_root):
    ds = hub_conll()
    (tmp_root / "conll2003").mkdir()
    (tmp_root / "conll2003" / "train.txt").write_text("\n".join(D.to_conll_lines(ds)), encoding="utf-8")
    back = load_conll2003("train")
    kept = ds.filter(lambda r: len(r["tokens"]) > 0)
    assert back["tokens"] == kept["tokens"] and back["ner_tags"] == kept["ner_tags"]
    assert back["pos_tags"] == [[POS[t] for t in s] for s in kept["pos_tags"]]
    assert back["chunk_tags"] == [[CHUNK[t] for t in s] for s in kept["chunk_tags"]]
    assert back.features["ner_tags"].feature.names == CONLL_NER_LABELS


def test_conll_lines_refuse_what_would_break_the_columns():
    ds = hub_conll()
    with pytest.raises(ValueError, match=r"row 0 tokens: 'New York'.*without whitespace"):
        D.to_conll_lines(ds.map(lambda r, i: {"tokens": ["New York", *r["tokens"][1:]]} if i == 0 else {},
                                with_indices=True))
    plain = ds.cast_column("pos_tags", List(Value("int64")))  # ids whose names were lost
    with pytest.raises(ValueError, match=r"row 0 pos_tags: 22; expected a string \(tag ids need the"):
        D.to_conll_lines(plain)


@pytest.mark.parametrize("name, make", [("sst2", hub_sst2), ("ag_news", hub_ag_news), ("banking77", hub_banking)])
def test_tsv_reads_back_equal(tmp_root, name, make):
    spec, hub = D.DATASETS[name], make()
    ds = hub.rename_column(spec.text_col, "text") if spec.text_col != "text" else hub
    path = tmp_root / spec.file
    path.parent.mkdir(parents=True)
    path.write_text(D.to_tsv(ds, spec.header, label_ids=name == "sst2"), encoding="utf-8")
    back = load_classification(name, strip=False)
    assert back["text"] == [t.replace("\t", " ") for t in ds["text"]]
    names_in, names_back = ds.features["label"].names, back.features["label"].names
    assert [names_back[y] for y in back["label"]] == [names_in[y] for y in ds["label"]]
    assert path.read_text(encoding="utf-8").startswith("text\tlabel\n") == spec.header


def test_tsv_refuses_a_blank_text():
    ds = Dataset.from_dict({"text": ["fine", "  "], "label": [0, 1]},
                           features=Features({"text": Value("string"), "label": ClassLabel(names=["a", "b"])}))
    with pytest.raises(ValueError, match="row 1: blank text"):
        D.to_tsv(ds, header=True)


def test_story_text_reads_back_as_paragraphs_and_stops_at_whole_stories(tmp_root):
    rel = D.CORPORA["tinystories"].files["train"]
    text = D.to_story_text(STORIES, lower=True)
    (tmp_root / rel).parent.mkdir(parents=True)
    (tmp_root / rel).write_text(text, encoding="utf-8")
    paragraphs = [p.strip().lower() for s in STORIES for p in s.split("\n\n") if p.strip()]
    assert load_corpus("tinystories", "train")["text"] == paragraphs
    first_two = len((STORIES[0] + "\n" + STORIES[1] + "\n").encode("utf-8"))
    assert D.to_story_text(STORIES, max_bytes=first_two) == STORIES[0] + "\n" + STORIES[1] + "\n"
    assert D.to_story_text(iter(STORIES), max_bytes=first_two - 1) == STORIES[0] + "\n"  # a stream is read lazily


def test_wikitext_reads_back_as_its_lines(tmp_root):
    rel = D.CORPORA["wikitext-2"].files["validation"]
    (tmp_root / rel).parent.mkdir(parents=True)
    (tmp_root / rel).write_text(D.to_wikitext(WIKI_ROWS), encoding="utf-8")
    assert load_corpus("wikitext-2", "validation")["text"] == [r.strip() for r in WIKI_ROWS if r.strip()]
    assert D.to_wikitext(WIKI_ROWS).splitlines()[:3] == [" ", " = Grey Heron = ", " "]


# ---------------------------------------------------------------- the real local copies (skip without them)

def _hub_shaped_tsv(real_data: Path, name: str) -> Dataset:
    """The local file as the hub would hand it over (text, ClassLabel label): what fetch would write back."""
    ds = load_classification(name, strip=False)
    if name == "banking77":  # the hub numbers intents in its own order; any order must give the same file
        names = ds.features["label"].names[::-1]
        ds = Dataset.from_dict({"text": ds["text"], "label": [len(names) - 1 - y for y in ds["label"]]},
                               features=Features({"text": Value("string"), "label": ClassLabel(names=names)}))
    return ds


@pytest.mark.parametrize("name", ["sst2", "ag_news", "banking77"])
def test_tsv_writes_the_real_files_byte_for_byte(real_data, name):
    spec = D.DATASETS[name]
    text = D.to_tsv(_hub_shaped_tsv(real_data, name), spec.header, label_ids=name == "sst2")
    assert text.encode("utf-8") == (real_data / spec.file).read_bytes()


def test_wikitext_writes_the_real_files_byte_for_byte(real_data):
    for rel in D.CORPORA["wikitext-2"].files.values():
        raw = (real_data / rel).read_text(encoding="utf-8")
        rows = [line if line.strip() else "" for line in raw.splitlines(keepends=True)]  # the hub builder's rows
        assert D.to_wikitext(rows) == raw


def test_story_text_of_the_real_train_head_reads_back_as_its_paragraphs(real_data, tmp_root):
    path = real_data / D.CORPORA["tinystories"].files["train"]
    raw = path.read_text(encoding="utf-8")
    stories = re.split(r"(?<!\n)\n(?!\n)", raw)  # one newline ends a story; a blank line parts paragraphs
    out = tmp_root / "stories.txt"
    out.write_text(D.to_story_text(stories, max_bytes=D.TINYSTORIES_HEAD_BYTES["train"]), encoding="utf-8")
    assert D._paragraphs(out) == D._paragraphs(path)
    assert len(raw.encode("utf-8")) == D.TINYSTORIES_HEAD_BYTES["train"]


def test_conll_lines_of_the_real_test_split_read_back_equal(real_data, tmp_root):
    cols = read_conll(real_data / "conll2003" / "test.txt")
    ds = Dataset.from_dict({"id": [str(i) for i in range(len(cols["tokens"]))], "tokens": cols["tokens"],
                            "pos_tags": [[POS.index(t) for t in s] for s in cols["pos_tags"]],
                            "chunk_tags": [[CHUNK.index(t) for t in s] for s in cols["chunk_tags"]],
                            "ner_tags": cols["ner_tags"]}, features=CONLL_FEATURES)
    out = tmp_root / "test.txt"
    out.write_text("\n".join(D.to_conll_lines(ds)), encoding="utf-8")
    assert read_conll(out) == cols


# ---------------------------------------------------------------- the fetch command

def test_every_hub_asset_has_one_fetch_and_no_other_asset_has_one():
    fetched = [rel for f in FETCH.values() for rel in f.files]
    assert sorted(fetched) == sorted(a.path for a in D.ASSETS if a.source.startswith("hub:"))
    assert all(f.hub in a.source for f in FETCH.values() for a in D.ASSETS if a.path in f.files)


def fake_hub(monkeypatch, tmp_path: Path) -> list[tuple]:
    """Serve the hub-shaped datasets above in place of the hub; returns the calls made."""
    calls = []
    tables = {"eriktks/conll2003": hub_conll(), "stanfordnlp/sst2": hub_sst2(), "fancyzhx/ag_news": hub_ag_news(),
              "PolyAI/banking77": hub_banking(), "Salesforce/wikitext": Dataset.from_dict({"text": WIKI_ROWS})}

    def from_hub(hub, *args, streaming=False, **kwargs):
        calls.append((hub, args, kwargs.get("split"), streaming))
        if hub == "roneneldan/TinyStories":
            assert streaming  # a 2-million-story split is read only as far as the head needs
            return iter({"text": s} for s in STORIES)
        return tables[hub]

    def download(repo, filename):
        calls.append((repo, filename))
        path = tmp_path / "hf" / filename
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b'{"fake": "' + filename.encode() + b'"}')
        return str(path)

    monkeypatch.setattr(D, "_from_hub", from_hub)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    return calls


def test_fetch_writes_every_hub_dataset_that_the_loaders_then_read(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    calls = fake_hub(monkeypatch, tmp_path)
    assert D.main(["fetch", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert set(D.verify(root)[r] for f in FETCH.values() for r in f.files) == {"checksum mismatch"}
    assert out.count("verify   checksum mismatch") == sum(len(f.files) for f in FETCH.values())
    assert "expected where the hub copy differs" in out and "no -DOCSTART- document lines" in out
    assert re.search(r"by hand  corpora/tiny-shakespeare/input.txt \(missing\): get it from github: karpathy", out)
    monkeypatch.setenv("WORKBOOK_DATA", str(root))
    assert load_conll2003("validation")["tokens"] == [s for s in hub_conll()["tokens"] if s]
    assert load_classification("sst2", strip=False)["text"] == hub_sst2()["sentence"]
    assert load_corpus("tinystories", "validation")["text"][0] == "Once upon a time, a cat named Pip found a red ball."
    assert load_corpus("tinystories", "train")["text"][0].startswith("once upon a time")  # train is lower-cased
    assert (root / "gpt2-tokenizer" / "merges.txt").read_bytes() == b'{"fake": "merges.txt"}'
    assert ("eriktks/conll2003", (), "test", False) in calls and ("Salesforce/wikitext", ("wikitext-2-v1",),
                                                                   "validation", False) in calls
    n_calls = len(calls)
    assert D.main(["fetch", "--root", str(root), "--only", "sst2"]) == 0  # there already: kept, no hub call
    assert len(calls) == n_calls and "kept     sst2" in capsys.readouterr().out
    assert D.main(["fetch", "--root", str(root), "--only", "sst2", "--force"]) == 0
    assert len(calls) == n_calls + 1


def test_fetch_offline_fails_with_one_line_per_dataset(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'x' on the Hub (OfflineModeIsEnabled)\nmore detail")

    monkeypatch.setattr(D, "_from_hub", offline)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    assert D.main(["fetch", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert len(failed) == len(FETCH) and all("ConnectionError: Couldn't reach" in line for line in failed)
    assert "more detail" not in out and f"{len(FETCH)} datasets failed" in out
    assert not any(tmp_path.iterdir())


def test_fetch_offline_for_real_prints_no_traceback(tmp_path):
    """The real datasets / huggingface_hub calls with the hub off and an empty cache: exit 1, one line, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "lib.data", "fetch", "--root", str(tmp_path / "data"),
                        "--only", "sst2", "gpt2-tokenizer"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    failed = [line for line in r.stdout.splitlines() if line.startswith("FAILED")]
    assert [line.split()[1] for line in failed] == ["sst2", "gpt2-tokenizer"]
    assert all("HF_HUB_OFFLINE=1" in line for line in failed)


def test_fetch_rejects_an_unknown_dataset_name(capsys):
    with pytest.raises(SystemExit):
        D.main(["fetch", "--only", "imagenet"])
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err


def test_make_test_is_offline_only_where_the_local_data_is(tmp_path):
    def hub_mode(**env) -> str:
        r = subprocess.run(["make", "-n", "-s", "test", *[f"{k}={v}" for k, v in env.items()]], cwd=REPO,
                           capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                if k != "HF_HUB_OFFLINE"})
        return re.search(r"HF_HUB_OFFLINE=(\S*)", r.stdout).group(1)

    (tmp_path / "with" / "conll2003").mkdir(parents=True)
    (tmp_path / "with" / "conll2003" / "train.txt").write_text("x", encoding="utf-8")
    assert hub_mode(WORKBOOK_DATA=tmp_path / "with") == "1"
    assert hub_mode(WORKBOOK_DATA=tmp_path / "without") == "0"
    assert hub_mode(WORKBOOK_DATA=tmp_path / "without", HF_HUB_OFFLINE=1) == "1"  # the user's own choice stands
