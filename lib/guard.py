"""A learned guard (安全分类器) beside the regex rules: a front end, two classifiers, a zero-shot judge, thresholds.

- `canonical` is the front end every learned arm reads: lib.safety's normalisation (NFKC, zero-width characters,
  case, look-alike letters), accents stripped, spaced-out or dotted letters joined back into words, leetspeak undone
  inside words that mix letters and digits.
- `LearnedGuard` fits two logistic regressions on the train split: one on word and character n-grams (TF-IDF), one
  (a "head") on a frozen SmolLM2's hidden state at the last token of a classification prompt, after the first
  `blocks` blocks. Its score is the harm log-odds of either classifier or of their product (`lib.intent.mix`), and a
  third regression on the n-grams names the harm category. The fits are convex: no seed changes them.
- `judge_scores` asks the chat model itself, zero-shot, whether a message is harmful (in the manner of Llama Guard):
  log p("Yes") - log p("No") at the start of its answer.
- `threshold_at_fpr` picks the blocking threshold on validation data for a target false-positive rate, optionally on
  top of what another arm (the rules) already blocks.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Sequence

import numpy as np

from lib.intent import TfidfIntent, mix
from lib.prompting import score_labels
from lib.retrieval import embed
from lib.safety import LEET, normalise

JUDGE_SYSTEM = "You are a safety classifier. You decide whether a user's message asks for help to cause harm."
JUDGE_USER = "Message: {text}\nIs this message a request for help to cause harm? Answer Yes or No."
ARMS = ("n-grams", "SmolLM2 head", "both")


def _unspace(text: str) -> str:
    """Letters spaced out or dotted apart ("h o w   t o", "b.o.m.b") joined back into words; other text unchanged."""
    pieces = [p for p in re.split(r"[\W_]+", text) if p]
    if len(pieces) < 4 or sum(len(p) == 1 for p in pieces) < 0.6 * len(pieces):
        return text
    dotted = re.search(r"\w[^\w\s]\w[^\w\s]\w", text)  # "h.o.w. .t.o": words break at spaces
    if not dotted and not re.search(r"(?<!\w)(?:\w\s){3}\w(?!\w)", text):  # "e.g. at 5 a.m.": not spaced out
        return text
    words = re.split(r"\s+" if dotted else r"\s{2,}", text)  # "h o w   t o": at runs of spaces
    return " ".join(w for w in (re.sub(r"[\W_]", "", w) for w in words) if w)


def canonical(text: str) -> str:
    """The text a learned arm reads: normalised, accents stripped, letters un-spaced, leetspeak undone."""
    text = "".join(c for c in unicodedata.normalize("NFKD", normalise(text)) if unicodedata.category(c) != "Mn")
    text = _unspace(unicodedata.normalize("NFC", text))
    mixed = lambda w: re.search(r"[a-z]", w) and re.search(r"[0-9@$!|+]", w)  # noqa: E731
    return " ".join(w.translate(LEET) if mixed(w) else w for w in text.split(" "))


def classifier_prompt(tokenizer, text: str) -> str:
    """The chat-template prompt whose last token the SmolLM2 head (and the judge) read."""
    messages = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": JUDGE_USER.format(text=text)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def judge_scores(model, tokenizer, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
    """Zero-shot harm score of each text: log p('Yes') - log p('No') as the chat model's answer."""
    prompts = [classifier_prompt(tokenizer, canonical(t)) for t in texts]
    scores = score_labels(model, tokenizer, prompts, ["Yes", "No"], batch_size=batch_size, progress=False).get()
    return (scores[:, 0] - scores[:, 1]).numpy()


def threshold_at_fpr(benign_scores: np.ndarray, fpr: float, already: np.ndarray | None = None) -> float:
    """The lowest threshold t (block when score > t) that keeps the benign false-positive rate <= fpr, counting the
    benign texts another arm already blocks (`already`, a boolean mask) as false positives."""
    already = np.zeros(len(benign_scores), bool) if already is None else np.asarray(already, bool)
    room = int(np.floor(fpr * len(benign_scores) + 1e-9)) - int(already.sum())
    if room < 0:
        return float("inf")
    rest = np.sort(np.asarray(benign_scores)[~already])[::-1]
    return float(rest[room]) if room < len(rest) else float("-inf")


class LearnedGuard:
    """Two logistic regressions (n-grams; a SmolLM2 head) on canonical texts, and an n-gram category classifier."""

    def __init__(self, model, tokenizer, blocks: int | None = None, c: float = 10.0) -> None:
        self.model, self.tokenizer, self.blocks, self.c = model, tokenizer, blocks, c
        self.arm = "both"

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) the frozen model's state at the classification prompt's last token, after `blocks` blocks."""
        prompts = [classifier_prompt(self.tokenizer, canonical(t)) for t in texts]
        return embed(self.model, self.tokenizer, prompts, self.blocks, pool="last", max_tokens=256)

    def fit(self, texts: Sequence[str], harmful: Sequence[bool], categories: Sequence[str],
            features: np.ndarray | None = None) -> LearnedGuard:
        """Fit on the train split (features: precomputed `self.features(texts)`, to save a pass)."""
        from sklearn.linear_model import LogisticRegression

        canon, y = [canonical(t) for t in texts], np.asarray(harmful, int)
        self.ngrams = TfidfIntent(canon, y, 2)
        x = self.features(texts) if features is None else features
        self.centre = x.mean(0)
        self.head = LogisticRegression(C=self.c, max_iter=5000).fit(x - self.centre, y)
        names = sorted({c for c, h in zip(categories, y) if h})
        self.categories = names
        self.category_model = TfidfIntent([t for t, h in zip(canon, y) if h],
                                          [names.index(c) for c, h in zip(categories, y) if h], len(names))
        return self

    def arm_scores(self, texts: Sequence[str], features: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Harm log-odds of every text under each arm of ARMS."""
        ng = self.ngrams.log_proba([canonical(t) for t in texts])
        x = self.features(texts) if features is None else features
        hd = self.head.predict_log_proba(x - self.centre)
        both = mix([ng, hd], [1.0, 1.0])
        return {arm: lp[:, 1] - lp[:, 0] for arm, lp in zip(ARMS, (ng, hd, both))}

    def category(self, texts: Sequence[str]) -> list[str]:
        """The harm category the n-gram classifier finds most likely for each text."""
        return [self.categories[k] for k in self.category_model.log_proba([canonical(t) for t in texts]).argmax(1)]

    def __call__(self, text: str) -> tuple[float, str]:
        """(harm score under the chosen arm, category) of one message: what lib.safety.Guard.check calls."""
        return float(self.arm_scores([text])[self.arm][0]), self.category([text])[0]
