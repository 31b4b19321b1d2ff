"""Loaders on the real data, malformed input naming file:line, and the asset manifest."""
import pytest

from lib.data import (ASSETS, DataFormatError, DataNotFoundError, load_classification, load_conll2003, load_corpus,
                      load_dialogues, read_conll, verify)


def test_real_conll2003_matches_published_sizes(real_data):
    sizes = {s: load_conll2003(s) for s in ("train", "validation", "test")}
    assert [len(d) for d in sizes.values()] == [14041, 3250, 3453]
    assert sum(len(t) for t in sizes["test"]["tokens"]) == 46435
    names = sizes["train"].features["ner_tags"].feature.names
    assert names[:3] == ["O", "B-PER", "I-PER"] and len(names) == 9
    first = sizes["train"][0]
    assert (first["tokens"][:2] == ["EU", "rejects"]
            and [names[i] for i in first["ner_tags"][:3]] == ["B-ORG", "O", "B-MISC"])


def test_conll_is_iob2(real_data):
    """In IOB2 an I-X tag never follows O or another type."""
    ds = load_conll2003("validation")
    names = ds.features["ner_tags"].feature.names
    for tags in ds["ner_tags"]:
        prev = "O"
        for t in (names[i] for i in tags):
            if t.startswith("I-"):
                assert prev[2:] == t[2:], (prev, t)
            prev = t


@pytest.mark.parametrize("name, n, classes", [("sst2", 872, 2), ("ag_news", 7600, 4), ("banking77", 3080, 77)])
def test_classification_sets(real_data, name, n, classes):
    ds = load_classification(name)
    assert len(ds) == n and ds.features["label"].num_classes == classes and ds[0]["text"]
    if name == "sst2":
        assert sum(ds["label"]) == 444  # positives in SST-2 dev


def test_corpora_and_dialogues(real_data):
    train = load_corpus("tinystories", "train")
    assert len(train) > 20000 and train[0]["text"].startswith("one day")
    assert len(load_corpus("wikitext-2", "test")) > 2000
    sh_train, sh_val = load_corpus("tiny-shakespeare", "train"), load_corpus("tiny-shakespeare", "validation")
    assert sh_train[0]["text"] == "First Citizen:" and len(sh_train) > 8 * len(sh_val)
    for name, n in (("sgd", 256), ("chatterbot", 2025), ("self-instruct", 427)):
        ds = load_dialogues(name)
        assert len(ds) == n and ds[0]["messages"][0]["role"] == "user"


def _write(root, rel, data: bytes):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_tsv_wrong_column_count_names_file_and_line(tmp_root):
    _write(tmp_root, "sst2/dev.tsv", b"text\tlabel\ngood film\t1\nbad\tfilm\t0\n")
    with pytest.raises(DataFormatError, match=r"sst2/dev\.tsv:3: expected 2 tab-separated columns"):
        load_classification("sst2")


def test_tsv_unknown_label_names_file_and_line(tmp_root):
    _write(tmp_root, "ag_news/test.tsv", b"Stocks fell.\tBusiness\n\nA goal!\tFootball\n")
    with pytest.raises(DataFormatError, match=r"ag_news/test\.tsv:3: unknown label 'Football'"):
        load_classification("ag_news")


def test_tsv_bad_header(tmp_root):
    _write(tmp_root, "banking77/test.tsv", b"sentence\tintent\nhi\tgreet\n")
    with pytest.raises(DataFormatError, match=r"banking77/test\.tsv:1: expected the header"):
        load_classification("banking77")


def test_conll_unknown_tag_and_wrong_columns(tmp_root):
    p = _write(tmp_root, "conll2003/train.txt", b"-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP B-VERB\n")
    with pytest.raises(DataFormatError, match=r"train\.txt:4: unknown NER tag 'B-VERB'"):
        load_conll2003("train")
    p.write_bytes(b"EU NNP B-ORG\n")
    with pytest.raises(DataFormatError, match=r"train\.txt:1: expected 4 space-separated columns"):
        read_conll(p)


def test_empty_file_and_bad_encoding(tmp_root):
    _write(tmp_root, "conll2003/test.txt", b"\n\n")
    with pytest.raises(DataFormatError, match=r"test\.txt:1: file is empty"):
        load_conll2003("test")
    _write(tmp_root, "conll2003/test.txt", b"EU NNP B-NP B-ORG\nK\xf6ln NNP B-NP B-LOC\n")
    with pytest.raises(DataFormatError, match=r"test\.txt:2: not valid UTF-8"):
        load_conll2003("test")


def test_bad_jsonl_line(tmp_root):
    _write(tmp_root, "dialogue/sgd/dev_chat.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n')
    with pytest.raises(DataFormatError, match=r"dev_chat\.jsonl:2: not valid JSON"):
        load_dialogues("sgd")


def test_missing_everything_offline_says_what_to_put_where(tmp_root):
    with pytest.raises(DataNotFoundError) as e:
        load_conll2003("train")
    msg = str(e.value)
    assert str(tmp_root / "conll2003" / "train.txt") in msg and "eriktks/conll2003" in msg and "WORKBOOK_DATA" in msg


def test_verify_reports_ok_missing_and_mismatch(tmp_root, monkeypatch):
    import hashlib

    import lib.data as data

    made = b"EU B-ORG\nrejects O\n"  # a made-up file and its checksum stand in for the registry's first asset
    fake = [data.Asset("conll2003/train.txt", hashlib.sha256(made).hexdigest(), "made up"), *ASSETS[1:3]]
    monkeypatch.setattr(data, "ASSETS", fake)
    _write(tmp_root, fake[0].path, made)
    _write(tmp_root, fake[1].path, b"tampered\n")
    status = verify(tmp_root)
    assert status == {fake[0].path: "ok", fake[1].path: "checksum mismatch", fake[2].path: "missing"}


def test_verify_passes_on_the_real_data(real_data):
    assert set(verify(real_data).values()) == {"ok"}


def test_chatterbot_skips_a_conversation_stored_as_a_string(tmp_path):
    from lib.data import _chatterbot

    (tmp_path / "t.yml").write_text("conversations:\n- - Hi\n  - Hello there\n- just one string\n", encoding="utf-8")
    assert _chatterbot(tmp_path) == [[{"role": "user", "content": "Hi"},
                                      {"role": "assistant", "content": "Hello there"}]]
