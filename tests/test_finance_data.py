"""The financial sentiment sentences (finance/): the committed offsets, their rebuild from AG News, the label files.

Tests of the real set skip without ag_news/test.tsv under the data root; the loader's error tests run on a small
AG-News-shaped file written here (hand-written sentences, no AG News text).
"""
from __future__ import annotations

import importlib.util
import json

import pytest

from lib.data import REPO_ROOT, DataFormatError, DataNotFoundError, data_root
from lib.finance import (AG_NEWS_FILE, SENTENCES_PATH, clean_text, cohen_kappa, is_complete, load_fin_sentences,
                         read_fin_labels, read_fin_sentences, sentence_spans, text_sha1)
from lib.splits import dedupe, normalise


def _script():
    spec = importlib.util.spec_from_file_location("make_sentences", REPO_ROOT / "finance" / "make_sentences.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def ag_news():
    """The local AG News test file; skips when the data root does not have it."""
    path = data_root() / AG_NEWS_FILE
    if not path.is_file():
        pytest.skip(f"AG News not found under {data_root()}; set WORKBOOK_DATA=../shared/data")
    return path


# ---------------------------------------------------------------- the committed set

def test_the_committed_file_holds_720_offsets_one_per_article():
    items = read_fin_sentences()
    assert [it["id"] for it in items] == list(range(1, 721))
    assert len({it["row"] for it in items}) == 720  # one sentence per article
    assert all(0 <= it["start"] < it["end"] for it in items)
    assert "text" not in SENTENCES_PATH.read_text(encoding="utf-8")  # offsets only: no AG News text is committed


def test_the_script_check_passes_and_fails_on_a_changed_file(ag_news, tmp_path, capsys):
    script = _script()
    assert script.main(["--check"]) == 0
    changed = tmp_path / "sentences.jsonl"
    lines = SENTENCES_PATH.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[4] = lines[4].replace('"id": 5,', '"id": 5000,')
    changed.write_text("".join(lines), encoding="utf-8")
    assert script.main(["--check", "--out", str(changed)]) == 1
    assert f"{changed}:5: differs" in capsys.readouterr().err


def test_every_sentence_rebuilds_with_its_sha1(ag_news):
    items = load_fin_sentences()
    assert len(items) == 720 and all(text_sha1(it["raw"]) == it["sha1"] for it in items)
    texts = [it["text"] for it in items]
    assert all(6 <= len(t.split()) <= 60 for t in texts)
    assert all(" #39;" not in t and "&lt;" not in t and "\\" not in t for t in texts)  # readable
    assert len(dedupe(texts, normalise)) == 720  # no two share their normalised text


def test_the_worklist_lists_every_sentence_in_id_order(ag_news, tmp_path):
    _script().write_worklist(tmp_path / "fin")
    rows = (tmp_path / "fin" / "worklist.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "id\tsentence" and [int(r.split("\t")[0]) for r in rows[1:]] == list(range(1, 721))
    assert all(len(r.split("\t")) == 2 for r in rows)
    assert (tmp_path / "fin" / "guide.md").read_text(encoding="utf-8").startswith("# finance/")


# ---------------------------------------------------------------- text: cleaning and sentence spans

def test_clean_text_undoes_the_ag_news_escapes():
    raw = ('Acme Corp. &lt;A HREF=""http://x.com/q?t=ACM.N""&gt;ACM.N&lt;/A&gt; said it #39;s  quot;on track quot; '
           'for \\$5 billion in sales  amp; more\\today.')
    assert clean_text(raw) == 'Acme Corp. ACM.N said it\'s "on track" for $5 billion in sales & more today.'
    assert clean_text("prices rose  #151; again") == "prices rose \u2014 again"


def test_sentence_spans_skip_the_dateline_and_keep_abbreviations():
    text = ' NEW YORK (Reuters) - Acme Inc. said the U.S. unit grew. Shares rose 5 percent. Analysts said the'
    spans = sentence_spans(text)
    assert [text[s:e] for s, e in spans] == ["Acme Inc. said the U.S. unit grew.", "Shares rose 5 percent.",
                                             "Analysts said the"]
    quoted = '" LONDON (Reuters) - Profit fell. ""We are sorry,"" it said."'
    assert [quoted[s:e] for s, e in sentence_spans(quoted)] == ["Profit fell.", '""We are sorry,"" it said.']
    assert [is_complete(t, last) for t, last in [("Analysts said the", True), ("It paid 52.", True),
                                                 ("It paid 52.", False), ("Sales rose.", True)]] \
        == [False, False, True, True]


# ---------------------------------------------------------------- the loader's errors, on hand-made files

ROWS = ["Acme Corp. said quarterly profit rose 20 percent. Its shares climbed.\tBusiness",
        "The home team won the final in extra time.\tSports",
        " LONDON (Reuters) - Widget sales fell for a third month.\tBusiness"]


@pytest.fixture
def small_set(tmp_path):
    """A three-row AG-News-shaped file and a sentences.jsonl of its two Business sentences that load."""
    tsv = tmp_path / "test.tsv"
    tsv.write_text("\n".join(ROWS) + "\n", encoding="utf-8")
    items = []
    for sid, (row, raw) in enumerate([(0, "Acme Corp. said quarterly profit rose 20 percent."),
                                      (2, "Widget sales fell for a third month.")], start=1):
        start = ROWS[row].index(raw)
        items.append({"id": sid, "row": row, "start": start, "end": start + len(raw), "sha1": text_sha1(raw)})
    jsonl = tmp_path / "sentences.jsonl"
    jsonl.write_text("".join(json.dumps(it) + "\n" for it in items), encoding="utf-8")
    return tsv, jsonl, items


def test_a_well_formed_set_loads(small_set):
    tsv, jsonl, _ = small_set
    assert [it["text"] for it in load_fin_sentences(jsonl, tsv)] == [
        "Acme Corp. said quarterly profit rose 20 percent.", "Widget sales fell for a third month."]


@pytest.mark.parametrize("change, message", [
    ({"sha1": "0123456789ab"}, "sha1 of row 2\\[20:56\\] is .*, expected 0123456789ab: the AG News copy .* differs"),
    ({"row": 1}, "row 1 has label 'Sports'; expected a Business row"),
    ({"row": 9}, "row 9 is past its 3 lines"),
    ({"end": 500}, "offsets 20:500 run past row 2's 56 characters"),
    ({"end": 20}, "'end' 20 <= 'start' 20"),
    ({"start": -1}, "'start': expected a non-negative integer, got -1"),
    ({"row": "2"}, "'row': expected a non-negative integer, got '2'"),
    ({"sha1": "ABC"}, "'sha1': expected 12 lower-case hex digits"),
    ({"id": 1}, "duplicate id 1 \\(first on line 1\\)"),
    ({"text": "x"}, "missing \\[\\], unexpected \\['text'\\]; expected exactly the keys"),
])
def test_a_malformed_sentence_line_names_file_and_line(small_set, change, message):
    tsv, jsonl, items = small_set
    jsonl.write_text(json.dumps(items[0]) + "\n" + json.dumps({**items[1], **change}) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=f"^{jsonl}:2: {message}"):
        load_fin_sentences(jsonl, tsv)


def test_a_line_that_is_not_json_and_a_missing_ag_news(small_set, tmp_path, monkeypatch):
    tsv, jsonl, items = small_set
    jsonl.write_text(json.dumps(items[0]) + "\n{'id': 2}\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=f"^{jsonl}:2: not valid JSON"):
        read_fin_sentences(jsonl)
    monkeypatch.setenv("WORKBOOK_DATA", str(tmp_path / "nothing"))
    with pytest.raises(DataNotFoundError, match="expected the local file .*ag_news/test.tsv"):
        load_fin_sentences(jsonl)


# ---------------------------------------------------------------- label files

def _labels(tmp_path, *records) -> str:
    path = tmp_path / "labels_pass1.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_a_label_file_reads_into_a_dict_by_id(tmp_path):
    path = _labels(tmp_path, {"id": 2, "label": "negative", "note": "H3"}, {"id": 1, "label": "positive", "note": ""},
                   {"id": 3, "label": "exclude", "note": "cut off"})
    assert read_fin_labels(path, [1, 2, 3], complete=True) == {
        2: {"label": "negative", "note": "H3"}, 1: {"label": "positive", "note": ""},
        3: {"label": "exclude", "note": "cut off"}}


@pytest.mark.parametrize("record, message", [
    ({"id": 2, "label": "bullish", "note": ""}, "unknown label 'bullish'; expected one of positive, neutral, negative"),
    ({"id": 9, "label": "neutral", "note": ""}, "unknown id 9; expected an id of finance/sentences.jsonl"),
    ({"id": True, "label": "neutral", "note": ""}, "unknown id True"),
    ({"id": 1, "label": "neutral", "note": ""}, "duplicate id 1 \\(first labelled on line 1\\)"),
    ({"id": 2, "label": "neutral"}, "missing \\['note'\\], unexpected \\[\\]"),
    ({"id": 2, "label": "neutral", "note": None}, "'note': expected a string"),
    ({"id": 2, "label": "exclude", "note": " "}, "label 'exclude' without a note"),
])
def test_a_bad_label_line_names_file_and_line(tmp_path, record, message):
    path = _labels(tmp_path, {"id": 1, "label": "positive", "note": ""}, record)
    with pytest.raises(DataFormatError, match=f"^{path}:2: {message}"):
        read_fin_labels(path, [1, 2, 3])


def test_a_complete_pass_must_label_every_id(tmp_path):
    path = _labels(tmp_path, {"id": 1, "label": "positive", "note": ""})
    assert read_fin_labels(path, [1, 2, 3]) == {1: {"label": "positive", "note": ""}}
    with pytest.raises(DataFormatError, match="2 sentence id\\(s\\) have no label, e.g. 2, 3"):
        read_fin_labels(path, [1, 2, 3], complete=True)


# ---------------------------------------------------------------- agreement

def test_cohen_kappa_equals_the_hand_computed_value():
    a = ["pos", "pos", "pos", "neu", "neu", "neu", "neu", "neg", "neg", "neg"]
    b = ["pos", "pos", "neu", "neu", "neu", "neu", "neg", "neg", "neg", "pos"]
    # observed agreement 7/10; both annotators' marginals are 3/4/3 of 10, so chance agreement is
    # (3*3 + 4*4 + 3*3) / 100 = 0.34, and kappa = (0.70 - 0.34) / (1 - 0.34) = 6/11
    assert cohen_kappa(a, b) == pytest.approx(6 / 11)
    assert cohen_kappa(a, a) == 1.0
    with pytest.raises(ValueError, match="10 and 9 labels"):
        cohen_kappa(a, b[:-1])
