"""Intent classification (意图识别) from few examples, its confidence, and the hand-off (转人工) trade-off.

- `TfidfIntent`: word 1-2-gram and character 2-5-gram TF-IDF features with a logistic regression (scikit-learn).
- `FeatureHead`: a linear head over fixed feature vectors (e.g. a language model's pooled hidden states), trained
  with `lib.training.train` like every other model of the workbook. It keeps the feature matrix as a buffer and reads
  example k's features through `input_ids = [k]`, so the default collate and the training loop work unchanged.
- `handoff_curve`: for each confidence threshold, what share of in-scope queries is answered correctly, answered
  wrongly or handed to a person, and what share of out-of-scope queries is rejected.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Mapping, Sequence

import numpy as np
import torch


class TfidfIntent:
    """TF-IDF (words and character n-grams) + logistic regression; `log_proba(texts)` -> (n, n_labels)."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int], n_labels: int, c: float = 30.0) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline, make_union

        if sorted(set(labels)) != list(range(n_labels)):
            raise ValueError(f"TfidfIntent: expected examples of all {n_labels} labels")
        features = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                              TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))
        self.model = make_pipeline(features, LogisticRegression(C=c, max_iter=3000)).fit(list(texts), list(labels))

    def log_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, n_labels) log-probabilities."""
        return self.model.predict_log_proba(list(texts))


class FeatureHead(torch.nn.Module):
    """A linear classifier over the rows of a fixed feature matrix; example k is `input_ids = [k]`."""

    def __init__(self, features: np.ndarray, n_labels: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.register_buffer("features", torch.as_tensor(features, dtype=torch.float32))
        self.linear = torch.nn.Linear(self.features.shape[1], n_labels)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **_) -> SimpleNamespace:
        """Logits of the rows input_ids[:, 0]; with labels (n, 1), the mean cross-entropy as `loss`."""
        logits = self.linear(self.features[input_ids[:, 0]])
        loss = torch.nn.functional.cross_entropy(logits, labels[:, 0]) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)

    @torch.no_grad()
    def log_proba(self, features: np.ndarray) -> np.ndarray:
        """(n, n_labels) log-probabilities of new feature rows."""
        x = torch.as_tensor(features, dtype=torch.float32, device=self.linear.weight.device)
        return torch.log_softmax(self.linear(x), -1).cpu().numpy()


def train_head(features: np.ndarray, labels: Sequence[int], n_labels: int, steps: int, lr: float,
               batch_size: int = 32, seed: int = 0) -> tuple[FeatureHead, list[dict]]:
    """A FeatureHead trained with lib.training.train (AdamW, cosine schedule); (head, history rows)."""
    from lib.training import TrainConfig, train

    head = FeatureHead(features, n_labels, seed)
    examples = [{"input_ids": [k], "labels": [int(y)]} for k, y in enumerate(labels)]
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, weight_decay=0.0, shift_labels=False,
                      progress=False, seed=seed, log_every=max(1, steps // 10), mixed_precision="fp32")
    history = train(head, examples, None, cfg)
    return head.eval(), list(history)


def centre(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Vectors minus a mean, re-normalised to unit length (removes the direction every pooled state shares)."""
    x = vectors - mean
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _normalised(z: np.ndarray) -> np.ndarray:
    """Rows of unnormalised log-probabilities made to sum to one in probability: z - logsumexp(z) per row."""
    return z - np.logaddexp.reduce(z, axis=1, keepdims=True)


def mix(log_probas: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Log-probabilities of a weighted product of classifiers: log_softmax(sum_i w_i log p_i)."""
    return _normalised(sum(w * lp for w, lp in zip(weights, log_probas, strict=True)))


def method_log_proba(name: str, members: Mapping[str, Callable[[], np.ndarray]],
                     weights: Sequence[float]) -> np.ndarray:
    """Log-probabilities of the method called `name`: that member's own, else (the ensemble) the members' `mix` with
    `weights`, in the members' order; members are thunks, so one of weight 0 is never run."""
    if name in members:
        return members[name]()
    used = [(f, w) for f, w in zip(members.values(), weights, strict=True) if w]
    return mix([f() for f, _ in used], [w for _, w in used])


def pick_weights(members: Sequence[Sequence[np.ndarray]], score: Callable[[np.ndarray], float],
                 grid: Sequence[tuple[float, ...]]) -> tuple[tuple[float, ...], dict[tuple[float, ...], float]]:
    """(best weights, score of each) of `mix` over the grid on validation; members[m][s] is member m's log-probabilities
    for seed s (a seedless member: a list of one, shared by every seed); the score is the mean over seeds; ties: the
    smaller weights, then the earlier in the grid."""
    n_seeds = max(len(m) for m in members)
    runs = [[m[0] if len(m) == 1 else m[s] for m in members] for s in range(n_seeds)]
    scores = {tuple(w): float(np.mean([score(mix(run, w)) for run in runs])) for w in grid}
    return max(scores, key=lambda w: (scores[w], -sum(w))), scores


def scores_to_log_proba(scores: np.ndarray, temperature: float = 0.05) -> np.ndarray:
    """Log-probabilities from (n, n_labels) scores, e.g. each label's best cosine: log_softmax(scores / temperature)."""
    return _normalised(np.asarray(scores, dtype=np.float64) / temperature)


def gate(log_proba: np.ndarray, similarity: np.ndarray, floor: float) -> np.ndarray:
    """The log-probabilities, with each row whose similarity to the known queries is below `floor` made flat
    (confidence 1 / n_labels): a query unlike every known one is out of scope, whatever the classifier says."""
    flat = np.full_like(log_proba, -np.log(log_proba.shape[1]))
    return np.where((np.asarray(similarity) >= floor)[:, None], log_proba, flat)


def confidence(log_proba: np.ndarray) -> np.ndarray:
    """The top label's probability, per query."""
    return np.exp(log_proba.max(1))


def handoff_curve(conf_in: np.ndarray, correct_in: np.ndarray, conf_out: np.ndarray,
                  thresholds: Sequence[float]) -> list[dict[str, float]]:
    """Per threshold t (answer when confidence >= t): in-scope answered-correctly / wrongly / handed-off rates,
    precision among answered, and the out-of-scope rejection rate."""
    rows = []
    for t in thresholds:
        answered = conf_in >= t
        n_ans = int(answered.sum())
        rows.append({"threshold": float(t), "answered_correctly": float((answered & correct_in).mean()),
                     "answered_wrongly": float((answered & ~correct_in).mean()),
                     "handed_off": float((~answered).mean()),
                     "precision": float((answered & correct_in).sum() / n_ans) if n_ans else 1.0,
                     "oos_rejected": float((conf_out < t).mean()), "n_answered": n_ans, "n_out": len(conf_out)})
    return rows


def pick_threshold(curve: Sequence[dict[str, float]], min_rejection: float, min_precision: float,
                   level: float | None = None) -> dict[str, float]:
    """The row that answers most in-scope queries correctly among those meeting both floors (else the strictest);
    with `level` (e.g. 0.95), the floors must hold for the lower end of each rate's Wilson interval,
    not its estimate."""
    from lib.stats import wilson_interval

    def low(rate: float, n: int) -> float:
        return wilson_interval(round(rate * n), n, level)[0] if level and n else rate

    ok = [r for r in curve if low(r["oos_rejected"], r["n_out"]) >= min_rejection
          and low(r["precision"], r["n_answered"]) >= min_precision]
    return max(ok, key=lambda r: (r["answered_correctly"], -r["threshold"])) if ok else max(curve, key=lambda r:
                                                                                              r["threshold"])
