"""The financial sentiment sentences (finance/): the committed offsets, their rebuild from AG News, the label files.

Tests of the real set skip without ag_news/test.tsv under the data root; the loader's error tests run on a small
AG-News-shaped file written here (hand-written sentences, no AG News text).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re

import pytest

from lib.data import REPO_ROOT, DataFormatError, DataNotFoundError, data_root
from lib.finance import (AG_NEWS_FILE, EXCLUDE, FIN_LABELS, FINAL_PATH, PASS_PATHS, SENTENCES_PATH, SPLITS,
                         clean_text, cohen_kappa, is_complete, load_fin_sentences, load_fin_sentiment, pass_agreement,
                         read_fin_final, read_fin_labels, read_fin_sentences, sentence_spans, split_digest, text_sha1)
from lib.splits import assert_disjoint, dedupe, normalise

README = FINAL_PATH.with_name("README.md")


def _script(name: str = "make_sentences"):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "finance" / f"{name}.py")
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


def test_the_worklist_of_a_small_set(small_set, tmp_path):
    tsv, jsonl, _ = small_set
    _script().write_worklist(tmp_path / "fin", jsonl, tsv)
    assert (tmp_path / "fin" / "worklist.tsv").read_text(encoding="utf-8").splitlines() == [
        "id\tsentence", "1\tAcme Corp. said quarterly profit rose 20 percent.",
        "2\tWidget sales fell for a third month."]
    assert (tmp_path / "fin" / "guide.md").read_bytes() == README.read_bytes()


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


def test_pass_agreement_counts_the_pairs_and_leaves_excluded_items_out_of_the_second_kappa():
    p1 = {1: {"label": "positive"}, 2: {"label": "neutral"}, 3: {"label": "exclude"}, 4: {"label": "negative"}}
    p2 = {1: {"label": "positive"}, 2: {"label": "negative"}, 3: {"label": "neutral"}, 4: {"label": "negative"}}
    ag = pass_agreement(p1, p2)
    assert (ag["n"], ag["agree"], ag["n_kept"], ag["agree_kept"]) == (4, 2, 3, 2)
    assert ag["kappa_kept"] == pytest.approx(cohen_kappa(["positive", "neutral", "negative"],
                                                         ["positive", "negative", "negative"]))
    assert ag["confusion"]["exclude"]["neutral"] == 1 and ag["confusion"]["neutral"]["negative"] == 1
    with pytest.raises(ValueError, match="1 of them in one pass only"):
        pass_agreement(p1, {k: v for k, v in p2.items() if k != 4})


# ---------------------------------------------------------------- the committed passes, final labels and split

def _readme_block() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index("<!-- make_splits:begin -->"):text.index("<!-- make_splits:end -->")]


def test_both_passes_and_the_final_file_load():
    ids = [it["id"] for it in read_fin_sentences()]
    passes = [read_fin_labels(p, ids, complete=True) for p in PASS_PATHS]
    final = read_fin_final(passes=PASS_PATHS)  # also checks pass1 / pass2 against the pass files
    assert all(len(x) == 720 for x in (*passes, final))
    assert all(final[i]["pass1"] == passes[0][i]["label"] and final[i]["pass2"] == passes[1][i]["label"] for i in ids)
    assert all(r["label"] == EXCLUDE for r in final.values() if r["pass1"] == r["pass2"] == EXCLUDE)
    assert "text" not in FINAL_PATH.read_text(encoding="utf-8")  # labels only, no AG News text


def test_the_readme_kappas_and_counts_are_the_computed_ones():
    ids = [it["id"] for it in read_fin_sentences()]
    ag = pass_agreement(*(read_fin_labels(p, ids, complete=True) for p in PASS_PATHS))
    block = _readme_block()
    found = re.search(r"kappa, all (\d+) items .*?\*\*([0-9.]+)\*\* \((\d+) agree", block)
    kept = re.search(r"kappa, the (\d+) items neither pass excluded: \*\*([0-9.]+)\*\* \((\d+) agree", block)
    assert (int(found[1]), int(found[3]), int(kept[1]), int(kept[3])) == (ag["n"], ag["agree"], ag["n_kept"],
                                                                          ag["agree_kept"])
    assert float(found[2]) == pytest.approx(ag["kappa"], abs=5e-5)
    assert float(kept[2]) == pytest.approx(ag["kappa_kept"], abs=5e-5)
    final = read_fin_final()
    disagree = sum(r["pass1"] != r["pass2"] for r in final.values())
    changed = sorted(i for i, r in final.items() if r["pass1"] == r["pass2"] != r["label"])
    assert re.search(rf"disagreements: \*\*{disagree}\*\*,", block) and disagree == ag["n"] - ag["agree"]
    assert re.search(rf"agreed: \*\*{len(changed)}\*\* \(ids? {', '.join(map(str, changed))}\)", block)


def test_every_disagreement_and_every_changed_label_has_its_ruling_in_the_note():
    for sid, r in read_fin_final().items():
        if r["pass1"] != r["pass2"]:
            assert r["note"].startswith(f"pass1 {r['pass1']}, pass2 {r['pass2']} -> {r['label']}: "), sid
            assert len(r["note"]) > 60, sid  # a ruling, not just the labels
        elif r["label"] != r["pass1"]:
            assert r["note"].startswith(f"both passes {r['pass1']} -> {r['label']} by a clarification: C"), sid


def test_the_split_script_check_passes_and_fails_on_a_changed_split(tmp_path, capsys):
    script = _script("make_splits")
    assert script.main(["--check"]) == 0
    lines = FINAL_PATH.read_text(encoding="utf-8").splitlines(keepends=True)
    k = next(i for i, line in enumerate(lines) if '"split": "train"' in line)
    lines[k] = lines[k].replace('"split": "train"', '"split": "test"')
    changed = tmp_path / "labels_final.jsonl"
    changed.write_text("".join(lines), encoding="utf-8")
    assert script.main(["--check", "--labels", str(changed)]) == 1
    assert f"{changed}:{k + 1}: differs from the split" in capsys.readouterr().err


def test_no_id_or_row_in_two_splits_and_about_60_15_25_per_label():
    rows = {it["id"]: it["row"] for it in read_fin_sentences()}
    final = read_fin_final()
    by_split = {s: [i for i, r in final.items() if r["split"] == s] for s in SPLITS}
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert_disjoint(by_split[a], by_split[b], key=lambda i: i)
        assert_disjoint(by_split[a], by_split[b], key=lambda i: rows[i])
    assert sum(map(len, by_split.values())) == sum(r["label"] != EXCLUDE for r in final.values())
    for label in FIN_LABELS:
        n = {s: sum(final[i]["label"] == label for i in by_split[s]) for s in SPLITS}
        total = sum(n.values())
        assert abs(n["test"] - 0.25 * total) <= 0.5 and abs(n["validation"] - 0.15 * total) <= 0.5, (label, n)


def test_the_readme_test_digest_is_split_digest():
    digest = re.search(r"test split sha256 \(`lib.finance.split_digest`\): `([0-9a-f]{64})`", _readme_block())[1]
    assert digest == split_digest(read_fin_final(), "test")


def test_split_digest_is_sha256_of_the_canonical_json_of_the_test_rows():
    final = {8: {"label": "positive", "split": "test"}, 3: {"label": "neutral", "split": "test", "note": "x"},
             5: {"label": "negative", "split": "train"}, 9: {"label": "exclude", "split": None}}
    canonical = '[{"id":3,"label":"neutral"},{"id":8,"label":"positive"}]'
    assert split_digest(final) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert split_digest(final, "train") != split_digest(final)
    with pytest.raises(ValueError, match="no item has split 'validation'"):
        split_digest(final, "validation")


def test_assign_splits_keeps_an_ag_news_row_in_one_split_and_stratifies_by_label():
    script = _script("make_splits")
    final = {i: {"label": FIN_LABELS[i % 3]} for i in range(1, 61)}
    final[61] = {"label": EXCLUDE}
    rows = {i: 1000 + i for i in final}
    rows[2] = rows[1]  # two sentences of one row (labels positive and neutral): one split
    splits = script.assign_splits(final, rows)
    assert splits[61] is None and splits[1] == splits[2]
    labels = [final[i]["label"] for i in final if splits[i] == "test"]
    assert sorted(labels.count(lab) for lab in FIN_LABELS) in ([5, 5, 5], [4, 5, 5], [5, 5, 6])


# ---------------------------------------------------------------- the final file's errors, and the loader

FINAL_OK = [{"id": 1, "label": "positive", "pass1": "positive", "pass2": "neutral", "note": "R3: the forecast",
             "split": "train"},
            {"id": 2, "label": "negative", "pass1": "negative", "pass2": "negative", "note": "", "split": "test"},
            {"id": 3, "label": "exclude", "pass1": "exclude", "pass2": "exclude", "note": "cut off", "split": None}]


def _final(tmp_path, records, name: str = "labels_final.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("change, message", [
    ({"note": ""}, "label 'positive' differs from a pass \\(pass1 'positive', pass2 'neutral'\\) and the note is "
                   "empty; expected the ruling"),
    ({"pass2": "bullish"}, "unknown 'pass2' label 'bullish'"),
    ({"split": "dev"}, "'split' 'dev' for label 'positive'; expected train or validation or test"),
    ({"split": None}, "'split' None for label 'positive'"),
    ({"extra": 1}, "missing \\[\\], unexpected \\['extra'\\]; expected exactly the keys id, label, pass1, pass2, "
                   "note \\(and optionally split\\)"),
])
def test_a_bad_final_line_names_file_and_line(tmp_path, change, message):
    path = _final(tmp_path, [FINAL_OK[1], {**FINAL_OK[0], **change}, FINAL_OK[2]])
    with pytest.raises(DataFormatError, match=f"^{path}:2: {message}"):
        read_fin_final(path, [1, 2, 3])


def test_the_final_file_keeps_exclusions_splits_everywhere_and_the_passes_as_made(tmp_path):
    ok = _final(tmp_path, FINAL_OK)
    assert read_fin_final(ok, [1, 2, 3])[1] == {k: v for k, v in FINAL_OK[0].items() if k != "id"}
    assert {k: v["split"] for k, v in read_fin_final(ok, [1, 2, 3]).items()} == {1: "train", 2: "test", 3: None}
    path = _final(tmp_path, FINAL_OK[:2] + [{**FINAL_OK[2], "label": "neutral", "split": "train"}], "bad.jsonl")
    with pytest.raises(DataFormatError, match=f"^{path}:3: label 'neutral' for an item both passes excluded"):
        read_fin_final(path, [1, 2, 3])
    path = _final(tmp_path, [{k: v for k, v in FINAL_OK[0].items() if k != "split"}] + FINAL_OK[1:], "bad.jsonl")
    with pytest.raises(DataFormatError, match=f"^{path}:1: no 'split' while 2 other line\\(s\\) have one"):
        read_fin_final(path, [1, 2, 3])
    with pytest.raises(DataFormatError, match="1 sentence id\\(s\\) have no label, e.g. 4"):
        read_fin_final(ok, [1, 2, 3, 4])
    pass1 = _labels(tmp_path, *({"id": r["id"], "label": r["pass1"], "note": "x"} for r in FINAL_OK))
    pass2 = tmp_path / "labels_pass2.jsonl"
    pass2.write_text("".join(json.dumps({"id": r["id"], "label": r["pass2"], "note": "x"}) + "\n" for r in FINAL_OK),
                     encoding="utf-8")
    assert len(read_fin_final(ok, [1, 2, 3], passes=[pass1, pass2])) == 3
    pass2.write_text(pass2.read_text(encoding="utf-8").replace('"neutral"', '"negative"', 1), encoding="utf-8")
    with pytest.raises(DataFormatError, match=f"^{ok}:1: 'pass2' is 'neutral' but {pass2} labels id 1 'negative'"):
        read_fin_final(ok, [1, 2, 3], passes=[pass1, pass2])


def test_load_fin_sentiment_joins_texts_and_final_labels(small_set, tmp_path):
    tsv, jsonl, _ = small_set
    labels = _final(tmp_path, [{**FINAL_OK[0]}, {**FINAL_OK[1]}])
    ds = load_fin_sentiment(labels=labels, sentences=jsonl, ag_news=tsv)
    assert ds["id"] == [1, 2] and ds["split"] == ["train", "test"]
    assert [ds.features["label"].int2str(x) for x in ds["label"]] == ["positive", "negative"]
    test = load_fin_sentiment("test", labels=labels, sentences=jsonl, ag_news=tsv)
    assert test["text"] == ["Widget sales fell for a third month."]
    with pytest.raises(ValueError, match="split='dev': expected one of train, validation, test"):
        load_fin_sentiment("dev", labels=labels, sentences=jsonl, ag_news=tsv)
    unsplit = _final(tmp_path, [{k: v for k, v in r.items() if k != "split"} for r in FINAL_OK[:2]], "unsplit.jsonl")
    assert load_fin_sentiment(labels=unsplit, sentences=jsonl, ag_news=tsv)["split"] == [None, None]
    with pytest.raises(DataFormatError, match="no 'split' field; expected the split written by"):
        load_fin_sentiment("train", labels=unsplit, sentences=jsonl, ag_news=tsv)
    with pytest.raises(DataNotFoundError, match="expected the file .*nothing.jsonl"):
        load_fin_sentiment(labels=tmp_path / "nothing.jsonl", sentences=jsonl, ag_news=tsv)


def test_the_real_set_loads_with_the_readme_counts(ag_news):
    block = _readme_block()
    total = re.search(r"\| total \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", block[block.index("by split"):])
    for split, n in zip(SPLITS, map(int, total.groups())):
        ds = load_fin_sentiment(split)
        assert len(ds) == n and set(ds["split"]) == {split}
        assert all(t.strip() for t in ds["text"])
    assert len(load_fin_sentiment()) == int(total[4])


def test_the_sentence_picker_on_made_up_rows():
    """candidates(): Business rows only, complete sentences of 6-60 words, no fragment, no duplicate or near-duplicate
    (same first or last 8 normalised words); sample(): one sentence per row, seeded, numbered from 1.
    No AG News text."""
    script = _script()
    long_a = "Acme Corp said quarterly profit rose sharply on strong demand for its widgets in Europe."
    rows = [(long_a, "Business"),
            ("Acme Corp said quarterly profit rose sharply on strong demand for its gadgets in Asia.", "Business"),
            ("ACME CORP SAID quarterly profit rose sharply on strong demand for its widgets in Europe!", "Business"),
            ("Shares of Bolt Inc fell after the company cut its forecast for the year.", "Sports"),
            ("Too short here.", "Business"),
            ("the airline said it would cut fares on routes to the coast next month.", "Business"),
            ("Oil prices climbed to a record as traders worried about supplies from the Gulf region.", "Business")]
    cands, counts = script.candidates(rows)
    assert [c["row"] for c in cands] == [0, 6]  # 1: near-duplicate of 0; 2: duplicate; 3: not Business; 4, 5 dropped
    assert counts["business rows"] == 6 and counts["distinct"] == 3 and counts["no near-duplicate"] == 2
    spans = [rows[c["row"]][0][c["start"]:c["end"]] for c in cands]
    assert spans[0] == long_a and all(c["sha1"] == text_sha1(t) for c, t in zip(cands, spans))
    picked = script.sample(cands, 2)
    assert [p["id"] for p in picked] == [1, 2] and {p["row"] for p in picked} == {0, 6}
    assert picked == script.sample(cands, 2)  # seeded: the same every time
    with pytest.raises(SystemExit, match="only 2 Business rows"):
        script.sample(cands, 3)


def test_topic_split_keeps_pinned_rows_in_their_split_and_balances_topics():
    from lib.finance import topic_split

    texts = [f"article number {i}" for i in range(120)] + ["article number 5"]  # row 120 duplicates row 5
    labels = [i % 3 for i in range(120)] + [2]
    pinned = {0: "test", 3: "train", 6: "validation", 9: "train", 120: "train"}
    for seed in range(5):
        out = topic_split(texts, labels, pinned, n_train=10, n_val=5, seed=seed)
        assert [sum(labels[i] == y for i in out["train"]) for y in range(3)] == [10, 10, 10]
        assert [sum(labels[i] == y for i in out["validation"]) for y in range(3)] == [5, 5, 5]
        where = {i: s for s, rows in out.items() for i in rows}
        assert len(where) == sum(map(len, out.values())) and 5 not in where  # disjoint; the duplicate dropped
        assert all(where.get(i, pinned[i]) == pinned[i] for i in pinned)
        assert where[0] == "test"


def test_recorded_digest_is_the_readmes():
    from lib.finance import recorded_digest

    assert recorded_digest() == split_digest(read_fin_final(), "test")
