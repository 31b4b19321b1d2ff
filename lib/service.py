"""A customer-service assistant (智能客服): help centre as data, 10-shot intent split, out-of-scope set,
the bot, its CLI.

The knowledge base (知识库) is `service/help_centre.yaml`: one article per BANKING77 intent, each with a one-line key
fact that a correct answer must contain, and policy pages that several articles share. `load_help_centre` checks its
schema and names file:line of any error.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from lib.chat import ChatSession, GenerationSettings
from lib.data import REPO_ROOT, data_error, load_yaml
from lib.models import MINILM
from lib.splits import assert_disjoint, dedupe, normalise

SERVICE_DIR = REPO_ROOT / "service"
HELP_CENTRE = SERVICE_DIR / "help_centre.yaml"
CONVERSATIONS = SERVICE_DIR / "conversations.yaml"
ARTICLE_WORDS = (60, 150)
ARTICLE_KEYS = {"intent", "title", "key_fact", "text", "policies"}
POLICY_KEYS = {"id", "title", "text"}


# ---------------------------------------------------------------- the help centre

@dataclass(frozen=True)
class Policy:
    """A longer page that several articles share (fees, card delivery, identity checks, ...)."""

    id: str
    title: str
    text: str


@dataclass(frozen=True)
class Article:
    """One help-centre article: the intent it answers, its text, its key fact and the policy pages it links."""

    intent: str
    title: str
    text: str
    key_fact: str
    policies: tuple[str, ...]
    line: int  # where it starts in the YAML file


@dataclass(frozen=True)
class HelpCentre:
    """The knowledge base: the bank's name, articles in file order and policies by id."""

    bank: str
    articles: tuple[Article, ...]
    policies: dict[str, Policy]

    @property
    def intents(self) -> list[str]:
        """The intents in article order (article k answers intent k)."""
        return [a.intent for a in self.articles]

    def article(self, intent: str) -> Article:
        """The article of an intent."""
        return self.articles[self.intents.index(intent)]

    def context(self, article: Article, policies: bool = True) -> str:
        """The text the bot answers from: the article, then (with `policies`) its policy pages."""
        pages = [f"{article.title}\n{article.text}"]
        pages += [f"{self.policies[p].title}\n{self.policies[p].text}" for p in article.policies if policies]
        return "\n\n".join(pages)


def _lines(path: Path, section: str) -> list[int]:
    """1-based start line of each item of a top-level list (for error messages)."""
    root = yaml.compose(Path(path).read_text(encoding="utf-8"))
    for key, value in root.value if isinstance(root, yaml.MappingNode) else []:
        if key.value == section and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _strings(path: Path, line: int, item: Any, keys: set[str], what: str) -> None:
    """Raise unless `item` is a mapping with exactly `keys`, every one but 'policies' a non-empty string."""
    if not isinstance(item, dict):
        raise data_error(path, line, f"{what}: expected a mapping with {', '.join(sorted(keys))}")
    if set(item) != keys:
        missing, extra = sorted(keys - set(item)), sorted(set(item) - keys)
        raise data_error(path, line, f"{what}: missing {missing}, unexpected {extra}; expected exactly "
                                     f"{', '.join(sorted(keys))}")
    for k in keys - {"policies"}:
        if not isinstance(item[k], str) or not item[k].strip():
            raise data_error(path, line, f"{what}: '{k}' must be a non-empty string, got {item[k]!r:.60}")


def load_help_centre(path: str | Path = HELP_CENTRE) -> HelpCentre:
    """The help centre, schema-checked: a malformed file raises DataFormatError naming file:line and the problem."""
    path = Path(path)
    raw = load_yaml(path)  # a syntax error names file:line
    if not isinstance(raw, dict) or not {"bank", "policies", "articles"} <= set(raw):
        raise data_error(path, 1, "expected a mapping with 'bank', 'policies' and 'articles'")
    if not isinstance(raw["articles"], list) or not raw["articles"] or not isinstance(raw["policies"], list):
        raise data_error(path, 1, "'articles' must be a non-empty list and 'policies' a list")
    policies: dict[str, Policy] = {}
    for line, p in zip(_lines(path, "policies"), raw["policies"]):
        _strings(path, line, p, POLICY_KEYS, "policy")
        if p["id"] in policies:
            raise data_error(path, line, f"policy id {p['id']!r} appears twice; expected unique ids")
        policies[p["id"]] = Policy(p["id"], p["title"].strip(), " ".join(p["text"].split()))
    articles: list[Article] = []
    for line, a in zip(_lines(path, "articles"), raw["articles"]):
        what = f"article {a.get('intent', '?') if isinstance(a, dict) else '?'}"
        _strings(path, line, a, ARTICLE_KEYS, what)
        text, fact = " ".join(a["text"].split()), a["key_fact"].strip()
        n = len(text.split())
        if not ARTICLE_WORDS[0] <= n <= ARTICLE_WORDS[1]:
            raise data_error(path, line, f"{what}: text has {n} words; expected {ARTICLE_WORDS[0]} to "
                                         f"{ARTICLE_WORDS[1]}")
        if "\n" in fact or normalise(fact) not in normalise(text):
            raise data_error(path, line, f"{what}: key_fact must be one line that the text contains word for word")
        links = a["policies"]
        if not isinstance(links, list) or not all(isinstance(x, str) and x in policies for x in links):
            raise data_error(path, line, f"{what}: policies must be a list of policy ids from "
                                         f"{', '.join(policies)}; got {links!r}")
        if any(x.intent == a["intent"] for x in articles):
            raise data_error(path, line, f"{what}: a second article for this intent; expected one per intent")
        articles.append(Article(a["intent"], a["title"].strip(), text, fact, tuple(links), line))
    return HelpCentre(str(raw["bank"]), tuple(articles), policies)


# ---------------------------------------------------------------- the 10-shot split

@dataclass(frozen=True)
class Split:
    """Labelled queries (text, intent index) of one split."""

    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


def few_shot_split(texts: Sequence[str], labels: Sequence[int], train_per_intent: int, val_per_intent: int,
                   seed: int) -> tuple[Split, Split, Split]:
    """(train, validation, test): per intent, a seeded draw of train_per_intent and val_per_intent queries, the rest
    test; duplicates (by normalised text) are dropped first, so no query is on two sides."""
    pairs = dedupe(zip(texts, labels, strict=True), key=lambda p: normalise(p[0]))
    by_label: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for p in pairs:
        by_label[p[1]].append(p)
    rng = random.Random(seed)
    parts: list[list[tuple[str, int]]] = [[], [], []]
    for label in sorted(by_label):
        items = by_label[label][:]
        rng.shuffle(items)
        if len(items) <= train_per_intent + val_per_intent:
            raise ValueError(f"intent {label}: {len(items)} queries; expected more than "
                             f"{train_per_intent + val_per_intent} (train + validation)")
        cut = train_per_intent + val_per_intent
        for part, chunk in zip(parts, (items[:train_per_intent], items[train_per_intent:cut], items[cut:])):
            part.extend(chunk)
    train, val, test = (Split([t for t, _ in p], [y for _, y in p]) for p in parts)
    for a, b in ((train.texts, val.texts), (train.texts, test.texts), (val.texts, test.texts)):
        assert_disjoint(a, b, key=normalise)
    return train, val, test


def intent_queries(help_centre: HelpCentre) -> tuple[list[str], list[int]]:
    """The BANKING77 test queries (3,080) with their labels as indices of the help centre's articles."""
    from lib.data import load_classification

    ds = load_classification("banking77")
    names = ds.features["label"].names
    return list(ds["text"]), [help_centre.intents.index(names[y]) for y in ds["label"]]


# ---------------------------------------------------------------- out of scope

BANKING_WORDS = re.compile(
    r"\b(bank\w*|card\w*|account\w*|transfer\w*|money|cash|atm|balance|payment\w*|paid|pay|fee\w*|refund\w*|"
    r"top.?up\w*|pin|passcode|deposit\w*|withdraw\w*|currenc\w*|exchange\w*|loan\w*|debit|credit|cheque\w*|"
    r"check|dollars?|pounds?|euros?|\$|£|€)\b", re.IGNORECASE)
OOS_SOURCES = ("sst2", "ag_news", "self-instruct", "sgd")


def out_of_scope_pool() -> dict[str, list[str]]:
    """Candidate out-of-scope queries per source: texts that mention no banking word (deduplicated by normalised text).

    SST-2 sentences, AG News headlines (title only), self-instruct instructions (first line) and the first user turn
    of each SGD dialogue.
    """
    from lib.data import load_classification, load_dialogues

    pool = {"sst2": list(load_classification("sst2")["text"]),
            "ag_news": [t.split(" - ")[0].split(" (")[0] for t in load_classification("ag_news")["text"]],
            "self-instruct": [m[0]["content"].split("\n")[0] for m in load_dialogues("self-instruct")["messages"]],
            "sgd": [m[0]["content"] for m in load_dialogues("sgd")["messages"] if m and m[0]["role"] == "user"]}
    return {k: dedupe([t.strip() for t in v if 3 <= len(t.split()) <= 40 and not BANKING_WORDS.search(t)],
                      key=normalise) for k, v in pool.items()}


def out_of_scope(per_source: int, seed: int) -> list[tuple[str, str]]:
    """(text, source): a seeded draw of per_source queries from each source of out_of_scope_pool()."""
    rng, out = random.Random(seed), []
    for name, texts in out_of_scope_pool().items():
        if len(texts) < per_source:
            raise ValueError(f"out of scope: {name} has {len(texts)} usable texts; expected >= {per_source}")
        out += [(t, name) for t in rng.sample(texts, per_source)]
    return out


# ---------------------------------------------------------------- answers: key fact, groundedness

NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def numbers(text: str) -> set[str]:
    """The numbers a text states, thousands separators dropped ("1,000" -> "1000")."""
    return {n.replace(",", "").rstrip(".") for n in NUMBER.findall(text)}


def contains_fact(reply: str, key_fact: str) -> bool:
    """The normalised key fact (case, punctuation, spacing ignored) is part of the normalised reply."""
    return normalise(key_fact) in normalise(reply)


def grounded(reply: str, context: str) -> bool:
    """Every number in the reply also appears in the context the bot answered from."""
    return numbers(reply) <= numbers(context)


# ---------------------------------------------------------------- scripted conversations

def load_conversations(path: str | Path = CONVERSATIONS, intents: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Scripted multi-turn conversations: a list of {turns: [user texts], intents: [intent per turn]}."""
    raw = load_yaml(path)
    lines = _lines(Path(path), "conversations")
    if not isinstance(raw, dict) or not isinstance(raw.get("conversations"), list) or not raw["conversations"]:
        raise data_error(path, 1, "expected a mapping with 'conversations': a non-empty list")
    for line, c in zip(lines, raw["conversations"]):
        ok = isinstance(c, dict) and set(c) == {"turns", "intents"} and isinstance(c["turns"], list) \
            and isinstance(c["intents"], list) and len(c["turns"]) == len(c["intents"]) >= 2 \
            and all(isinstance(t, str) and t.strip() for t in c["turns"])
        if not ok:
            raise data_error(path, line, "expected {turns: [2+ user texts], intents: [one intent per turn]}")
        unknown = [i for i in c["intents"] if intents and i not in intents]
        if unknown:
            raise data_error(path, line, f"unknown intent(s) {unknown}; expected help-centre intents")
    return raw["conversations"]


# ---------------------------------------------------------------- the assistant

HANDOFF = {"en": "I'm not sure I understood. I'll pass you to a member of our team, who will reply here shortly.",
           "zh": "我不太确定您的问题，我会为您转接人工客服，请稍候。"}
SYSTEM = ("You are the customer-service assistant of {bank}. Answer the customer in one or two short sentences, "
          "using only the help-centre pages below. Do not invent numbers.\n\n{context}")


@dataclass
class Reply:
    """One turn of the assistant: what it said, what it decided, and how long it took."""

    text: str
    outcome: str  # "answered", "handed_off" or "blocked"
    intent: str | None
    article: str | None  # the cited article's title
    confidence: float
    retrieval_ms: float
    total_ms: float


class Assistant:
    """Intent -> article -> guarded, grounded reply, or a hand-off below the confidence threshold.

    `classify(texts) -> (n, n_intents) log-probabilities` over the help centre's intents (in article order).
    `policies`: the generator also reads the article's policy pages (longer prompts, slower replies).
    `anchored`: the reply starts with the article's key fact (the answer template) and the model continues it;
    otherwise the model writes the whole reply. With `carry`, a turn whose confidence is below the threshold is
    classified again together with the previous user turn (a follow-up such as "and how long does that take?").
    """

    def __init__(self, help_centre: HelpCentre, classify, threshold: float, model=None, tokenizer=None,
                 guard=None, reply_tokens: int = 40, anchored: bool = True, carry: bool = True,
                 policies: bool = False) -> None:
        self.hc, self.classify, self.threshold = help_centre, classify, threshold
        self.model, self.tokenizer, self.guard = model, tokenizer, guard
        self.reply_tokens, self.anchored, self.carry, self.policies = reply_tokens, anchored, carry, policies
        self.previous: str | None = None

    def route(self, text: str) -> tuple[int, float, str]:
        """(intent index, confidence, the query that was classified), with the previous turn carried if needed."""
        queries = [text] + ([f"{self.previous} {text}"] if self.carry and self.previous else [])
        logp = self.classify(queries)
        conf = np.exp(logp.max(1))
        k = int(conf.argmax()) if len(queries) > 1 and conf[0] < self.threshold else 0
        return int(logp[k].argmax()), float(conf[k]), queries[k]

    def session(self, article: Article):
        """A chat session whose system prompt holds the article (and its policy pages, and the guard's risk prompt,
        when those are switched on)."""
        base = SYSTEM.format(bank=self.hc.bank, context=self.hc.context(article, self.policies))
        system = self.guard.system_prompt(base) if self.guard is not None else base
        cls = AnchoredSession if self.anchored else ChatSession
        kw = {"anchor": article.key_fact} if self.anchored else {}
        return cls(self.model, self.tokenizer, system=system,
                   settings=GenerationSettings(max_new_tokens=self.reply_tokens), **kw)

    def reply(self, text: str) -> Reply:
        """Answer one user turn (input filter, routing, hand-off or generation, output filter)."""
        import time

        from lib.safety import check, language

        t0 = time.perf_counter()
        lang = language(text)
        if self.guard is not None and self.guard.input_filter and check(self.guard.policy, text, "input").blocked:
            return Reply(self.guard.policy.refusal_message[lang], "blocked", None, None, 0.0, 0.0,
                         (time.perf_counter() - t0) * 1e3)
        k, conf, query = self.route(text)
        t1 = time.perf_counter()
        self.previous = query
        if conf < self.threshold:
            return Reply(HANDOFF[lang], "handed_off", None, None, conf, (t1 - t0) * 1e3, (t1 - t0) * 1e3)
        article = self.hc.articles[k]
        if self.model is None:  # no generator: the answer template alone
            answer, outcome = article.key_fact, "answered"
        elif self.guard is not None:
            g = self.guard.respond(self.session(article), text)
            answer, outcome = g.reply, "blocked" if g.blocked else "answered"
        else:
            answer, outcome = self.session(article).ask(text), "answered"
        return Reply(answer, outcome, article.intent, article.title, conf, (t1 - t0) * 1e3,
                     (time.perf_counter() - t0) * 1e3)


@dataclass
class AnchoredSession(ChatSession):
    """A ChatSession whose reply is forced to begin with `anchor` (the answer template); the model writes the rest."""

    anchor: str = ""

    def prompt(self, user_text: str) -> tuple[list, list[int]]:
        """The chat prompt with the anchor's tokens already in the assistant's turn."""
        msgs, ids = super().prompt(user_text)
        return msgs, ids + self.tokenizer(self.anchor, add_special_tokens=False)["input_ids"]

    def ask(self, user_text: str) -> str:
        """The anchor followed by the model's continuation (kept whole in the history)."""
        rest = super().ask(user_text)
        text = self.anchor + rest if rest[:1] in tuple(".,;:!?") else f"{self.anchor} {rest}".strip()
        self.history[-1] = {"role": "assistant", "content": text}
        return text


# ---------------------------------------------------------------- command line and web chat

def build_assistant(seed: int = 0, model: str | None = "smollm2-135m-instruct", encoder: str | None = MINILM,
                    reply_tokens: int = 32, oos_per_source: int = 50) -> Assistant:
    """The assistant of the command line and the web chat, built on the 10-shot split as notebook 10 builds it: TF-IDF
    intent (with `encoder`, mixed with a head on its vectors and gated by the similarity to the nearest training
    query); a threshold picked on validation whose floors (>= 90% out-of-scope rejection, >= 85% precision) hold for
    the lower ends of their 95% intervals; anchored replies, carry-over, the guard's filters."""
    from lib.intent import TfidfIntent, confidence, handoff_curve, pick_threshold
    from lib.safety import Guard, load_policy

    hc = load_help_centre()
    train, val, _ = few_shot_split(*intent_queries(hc), 10, 10, seed)
    classify = TfidfIntent(train.texts, train.labels, len(hc.articles)).log_proba
    if encoder:
        classify = _with_encoder(classify, encoder, train, val, len(hc.articles), seed)
    lp, lp_out = classify(val.texts), classify([t for t, _ in out_of_scope(oos_per_source, seed)[0::2]])
    curve = handoff_curve(confidence(lp), lp.argmax(1) == np.array(val.labels), confidence(lp_out),
                          np.round(np.linspace(0, 0.95, 39), 3))
    threshold = pick_threshold(curve, 0.90, 0.85, level=0.95)["threshold"]
    lm = tok = None
    if model:
        from lib.models import load_causal_lm, load_tokenizer

        tok, lm = load_tokenizer(model), load_causal_lm(model)
    return Assistant(hc, classify, threshold, lm, tok, Guard(load_policy(), risk_prompt=False), reply_tokens)


def _with_encoder(tfidf_log_proba, encoder: str, train: Split, val: Split, n_labels: int, seed: int):
    """TF-IDF's log-probabilities mixed with a head on the encoder's vectors (the weight picked on validation), gated
    below the 1st percentile of the validation queries' similarity to their nearest training query."""
    from lib.intent import gate, mix, pick_weights, train_head
    from lib.models import load_encoder, load_tokenizer
    from lib.retrieval import embed

    tok, enc = load_tokenizer(encoder), load_encoder(encoder)
    vectors = lambda xs: embed(enc, tok, xs, max_tokens=256, special_tokens=True)
    v_train, v_val, y_val = vectors(train.texts), vectors(val.texts), np.array(val.labels)
    head = train_head(v_train, train.labels, n_labels, 400, 0.03, seed=seed)[0]
    w, _ = pick_weights([[tfidf_log_proba(val.texts)], [head.log_proba(v_val)]],
                        lambda p: (p.argmax(1) == y_val).mean(), [(a, 1.0) for a in (0, 0.25, 0.5, 1)])
    floor = float(np.quantile((v_val @ v_train.T).max(1), 0.01, method="lower"))

    def classify(texts: Sequence[str]) -> np.ndarray:
        v = vectors(texts)
        return gate(mix([tfidf_log_proba(texts), head.log_proba(v)], w), (v @ v_train.T).max(1), floor)
    return classify


def cited(assistant: Assistant, r: Reply) -> str:
    """Markdown for the side panel: the cited article, or what the bot decided instead."""
    if r.intent is None:
        return {"handed_off": "_Handed off to a person (not a question it knows, or not confident enough)._",
                "blocked": "_Blocked by the safety filter._"}.get(r.outcome, "")
    a = assistant.hc.article(r.intent)
    return f"**{a.title}**  \nintent `{a.intent}`, confidence {r.confidence:.2f}\n\n{a.text}"


def web_chat(assistant: Assistant):
    """A Gradio app: the chat on the left, the cited article on the right; `/respond` answers one message."""
    import gradio as gr

    def respond(message: str) -> tuple[str, str, str]:
        """One stateless turn: (reply, outcome, cited-article markdown)."""
        assistant.previous = None
        r = assistant.reply(message)
        return r.text, r.outcome, cited(assistant, r)

    def submit(message: str, history: list):
        previous = [m["content"] for m in history if m["role"] == "user"]
        assistant.previous = previous[-1] if previous else None
        r = assistant.reply(message)
        history = history + [{"role": "user", "content": message}, {"role": "assistant", "content": r.text}]
        return "", history, cited(assistant, r)

    with gr.Blocks(title=f"{assistant.hc.bank} assistant") as app:
        gr.Markdown(f"### {assistant.hc.bank} — customer-service assistant (workbook notebook 10)")
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Conversation")
                box = gr.Textbox(label="Your message", placeholder="My card still hasn't arrived")
            article = gr.Markdown(label="Cited article")
        box.submit(submit, [box, chat], [box, chat, article], api_name="chat")
        gr.api(respond, api_name="respond")
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lib.service "query"` | `--chat` | `--ui [--port N]`."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lib.service", description="Kestrel Bank's assistant (notebook 10)")
    ap.add_argument("query", nargs="?", help="one customer message to answer")
    ap.add_argument("--chat", action="store_true", help="an interactive session in the terminal")
    ap.add_argument("--ui", action="store_true", help="a web chat on 127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--reply-tokens", type=int, default=32, help="most new tokens of one reply")
    ap.add_argument("--template-only", action="store_true", help="answer with the key fact alone (no model)")
    ap.add_argument("--tfidf-only", action="store_true", help="intent from TF-IDF alone (no sentence encoder)")
    args = ap.parse_args(argv)
    if not (args.query or args.chat or args.ui):
        ap.error("give a query, --chat or --ui")
    bot = build_assistant(model=None if args.template_only else "smollm2-135m-instruct",
                          encoder=None if args.tfidf_only else MINILM, reply_tokens=args.reply_tokens)

    def show(r: Reply) -> None:
        print(r.text)
        print(f"  [{r.outcome}] article: {r.article or '-'} | intent: {r.intent or '-'} | "
              f"confidence {r.confidence:.2f} | {r.total_ms:.0f} ms")

    if args.query:
        show(bot.reply(args.query))
    if args.chat:
        print(f"{bot.hc.bank} assistant; an empty line ends the chat.")
        while (text := input("you: ").strip()):
            show(bot.reply(text))
    if args.ui:
        web_chat(bot).launch(server_name="127.0.0.1", server_port=args.port)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
