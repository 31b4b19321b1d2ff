"""Recommendation (个性化推荐) from interactions and item text: splits, metrics, classic recommenders and a re-ranker.

Two protocols of the literature, both on MovieLens-100K (`lib.data.load_movielens`):

- **Will the user like it?** (TALLRec, Bao et al. 2023): a rating above 3 is "like"; each example is a target
  interaction with the user's last `n_history` earlier interactions as its history; the examples are split by the
  target's time (`time_split`), and a model learns from a few labelled training examples. Scored by AUC.
- **Top-k ranking** (leave-one-out): each user's last interaction is the test item, the one before it validation,
  the rest training (`leave_one_out`); a model ranks every item the user has not interacted with (`full_ranks`).
  Scored by HR@k and NDCG@k (`hit_rate`, `ndcg`).

The recommenders are small: popularity, item-kNN (cosine), ALS matrix factorisation (the `implicit` library),
a biased matrix factorisation of like / dislike for the first protocol (`LikeMF`), a text scorer over a language
model's item vectors (`text_scores`), and `Reranker`, a logistic regression over a few features of each candidate
that re-orders a base model's top candidates (the seed's 结合其他特征综合排序). The sequential recommender (SASRec, a
GPT over each user's movies) is in `lib.sequential`; `item_sequences` gives it each stage's movies in time order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import rankdata

from lib.stats import percentile_test

LIKE_ABOVE = 3  # a rating above 3 is "like" (TALLRec)
SPLITS = ("train", "validation", "test")


# ---------------------------------------------------------------- protocol 1: like / dislike examples, split by time

def in_time_order(ratings: pd.DataFrame) -> pd.DataFrame:
    """Ratings sorted by timestamp (ties keep the file's order), with a 0/1 `like` column and a per-user `position`."""
    r = ratings.sort_values("timestamp", kind="stable").reset_index(drop=True)
    r["like"] = (r["rating"] > LIKE_ABOVE).astype(int)
    r["position"] = r.groupby("user").cumcount()
    return r


def time_split(timestamps: Sequence[int], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """'train' / 'validation' / 'test' per timestamp, cut at the time quantiles of `fractions`; equal times share a
    side, so every training time precedes every validation time, which precedes every test time."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions={fractions!r}: expected three positive shares summing to 1")
    t = np.asarray(timestamps)
    t1, t2 = np.quantile(t, [fractions[0], fractions[0] + fractions[1]], method="lower")
    return np.where(t < t1, "train", np.where(t < t2, "validation", "test"))


def like_examples(ratings: pd.DataFrame, n_history: int = 10,
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> pd.DataFrame:
    """One row per interaction that has at least `n_history` earlier ones of its user: user, item, like, timestamp,
    split (by the target's time), history (the last n_history earlier items, oldest first) and history_likes."""
    r = in_time_order(ratings)
    split = time_split(r["timestamp"].to_numpy(), fractions)
    rows = []
    for _, g in r.groupby("user", sort=True):
        items, likes, idx = g["item"].to_numpy(), g["like"].to_numpy(), g.index.to_numpy()
        for k in range(n_history, len(g)):  # strictly earlier positions only: the target is never in its history
            rows.append((g["user"].iat[k], items[k], likes[k], g["timestamp"].iat[k], split[idx[k]],
                         tuple(items[k - n_history:k].tolist()), tuple(likes[k - n_history:k].tolist())))
    cols = ["user", "item", "like", "timestamp", "split", "history", "history_likes"]
    return pd.DataFrame(rows, columns=cols).sort_values("timestamp", kind="stable").reset_index(drop=True)


def movie_text(items: pd.DataFrame, item: int, genres: bool = True) -> str:
    """'Toy Story (1995; Animation, Children's, Comedy)': the title, year and (optionally) genres of one movie."""
    row = items.loc[item]
    year = "" if pd.isna(row["year"]) else str(int(row["year"]))
    extra = ", ".join(row["genres"].split()) if genres else ""
    inner = "; ".join(x for x in (year, extra) if x)
    return f"{row['title']} ({inner})" if inner else str(row["title"])


def like_prompt(items: pd.DataFrame, history: Sequence[int], likes: Sequence[int], target: int) -> str:
    """The TALLRec-style question: the history as text (title, year, liked or not), then the candidate with genres."""
    lines = "\n".join(f"- {movie_text(items, i, genres=False)}: {'liked' if y else 'disliked'}"
                      for i, y in zip(history, likes, strict=True))
    return (f"A user rated these movies, oldest first:\n{lines}\n"
            f"Will the user like {movie_text(items, target)}? Answer Yes or No.\nAnswer:")


# ---------------------------------------------------------------- metrics

def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the chance that a random positive outscores a random negative (ties count half)."""
    y, s = np.asarray(labels).astype(bool), np.asarray(scores, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auc: expected both classes, got {n_pos} positives and {n_neg} negatives")
    ranks = rankdata(s)  # average ranks: a tie between a positive and a negative counts one half
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def hit_rate(ranks: Sequence[float], k: int = 10) -> np.ndarray:
    """Per user: 1 when the held-out item is ranked within the top k (rank 1 is the top), else 0."""
    return (np.asarray(ranks) <= k).astype(float)


def ndcg(ranks: Sequence[float], k: int = 10) -> np.ndarray:
    """Per user: 1 / log2(rank + 1) when the one held-out item is within the top k, else 0 (its ideal DCG is 1)."""
    r = np.asarray(ranks, dtype=float)
    return np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)


def _refuse_nan(scores: np.ndarray, where: str) -> None:
    """Raise when a row of scores holds NaN: NaN loses every comparison, so its target would rank first."""
    bad = np.flatnonzero(np.isnan(scores).any(1))
    if len(bad):
        raise ValueError(f"{where}: NaN scores for {len(bad)} user row(s), first row {bad[0]}; expected numbers")


def full_ranks(scores: np.ndarray, targets: Sequence[int], seen: sparse.csr_matrix) -> np.ndarray:
    """Rank (1 = top) of each user's target among the items the user has not interacted with; a tie with the target
    counts against it (1 + the unseen items scoring at least as high, the target excepted); NaN scores are refused."""
    s = np.asarray(scores, dtype=float)
    _refuse_nan(s, "full_ranks")
    t = np.asarray(targets)
    rows = np.arange(len(t))
    target_score = s[rows, t]
    unseen = ~seen.toarray().astype(bool)
    unseen[rows, t] = False  # the target itself is not its own competitor
    return 1 + ((s >= target_score[:, None]) & unseen).sum(1)


def _stratified(labels: np.ndarray, n_boot: int, seed: int):
    """Bootstrap resamples of example indices that redraw the positives and the negatives separately (both classes
    stay present, so every resample has an AUC)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels.astype(bool))
    for _ in range(n_boot):
        yield np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])


def auc_interval(labels: Sequence[int], runs: Sequence[Sequence[float]], n_boot: int = 300,
                 seed: int = 0) -> tuple[float, float, float, float]:
    """(mean AUC over runs, sd over runs, 95% interval of the run-mean AUC from a stratified bootstrap over the
    examples)."""
    y, s = np.asarray(labels), np.atleast_2d(np.asarray(runs, dtype=float))
    per_run = [auc(y, r) for r in s]
    boots = [np.mean([auc(y[i], r[i]) for r in s]) for i in _stratified(y, n_boot, seed)]
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return float(np.mean(per_run)), float(np.std(per_run, ddof=1)) if len(s) > 1 else 0.0, float(lo), float(hi)


def paired_auc(labels: Sequence[int], runs_a: Sequence[Sequence[float]], runs_b: Sequence[Sequence[float]],
               n_boot: int = 300, seed: int = 0) -> tuple[float, float, float, float]:
    """(difference of run-mean AUCs a - b, its 95% interval, two-sided p-value): the same stratified resamples for
    both systems (`lib.stats.percentile_test`)."""
    y = np.asarray(labels)
    a, b = np.atleast_2d(np.asarray(runs_a, float)), np.atleast_2d(np.asarray(runs_b, float))
    mean_auc = lambda runs, i: np.mean([auc(y[i], r[i]) for r in runs])
    every = np.arange(len(y))
    diff = float(mean_auc(a, every) - mean_auc(b, every))
    return percentile_test(diff, np.array([mean_auc(a, i) - mean_auc(b, i) for i in _stratified(y, n_boot, seed)]))


# ---------------------------------------------------------------- protocol 1 models

@dataclass
class LikeMF:
    """Biased matrix factorisation of like (1) / dislike (0), fitted by alternating ridge regressions (ALS)."""

    factors: int = 16
    reg: float = 5.0
    iterations: int = 10
    seed: int = 0

    def fit(self, users: Sequence[int], items: Sequence[int], likes: Sequence[int]) -> LikeMF:
        """Fit on (user, item, like) triples; unknown users and items later score from the biases they have."""
        u, i, y = np.asarray(users), np.asarray(items), np.asarray(likes, dtype=float)
        rng = np.random.default_rng(self.seed)
        self.mu = float(y.mean())
        nu, ni = int(u.max()) + 1, int(i.max()) + 1
        self.P, self.Q = rng.normal(0, 0.1, (nu, self.factors)), rng.normal(0, 0.1, (ni, self.factors))
        self.bu, self.bi = np.zeros(nu), np.zeros(ni)
        for _ in range(self.iterations):
            self._solve(self.P, self.bu, u, self.Q, self.bi, i, y)
            self._solve(self.Q, self.bi, i, self.P, self.bu, u, y)
        return self

    def _solve(self, X, bx, rows, Y, by, other, y) -> None:
        """One half-step: every row's [factors, bias] as a ridge regression on its residuals, solved in one batch."""
        A = np.hstack([Y[other], np.ones((len(other), 1))])  # (n_interactions, factors + 1)
        k = A.shape[1]
        owner = sparse.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(len(X), len(rows)))
        gram = (owner @ (A[:, :, None] * A[:, None, :]).reshape(len(rows), k * k)).reshape(len(X), k, k)
        rhs = owner @ (A * (y - self.mu - by[other])[:, None])
        sol = np.linalg.solve(gram + self.reg * np.eye(A.shape[1]), rhs[..., None])[..., 0]
        seen = np.bincount(rows, minlength=len(X)) > 0  # rows without interactions keep their start values
        X[seen], bx[seen] = sol[seen, :-1], sol[seen, -1]

    def predict(self, users: Sequence[int], items: Sequence[int]) -> np.ndarray:
        """Predicted like score; a user or item never seen in training contributes nothing."""
        u, i = np.asarray(users), np.asarray(items)
        ku, ki = u < len(self.bu), i < len(self.bi)
        uu, ii = np.where(ku, u, 0), np.where(ki, i, 0)
        dot = np.where(ku & ki, (self.P[uu] * self.Q[ii]).sum(1), 0.0)
        return self.mu + np.where(ku, self.bu[uu], 0.0) + np.where(ki, self.bi[ii], 0.0) + dot


def item_stats(users_items_likes: pd.DataFrame, n_items: int, prior: float = 5.0) -> pd.DataFrame:
    """Per item id 0..n_items-1: interactions (count), log1p(count) and like rate shrunk toward the mean by `prior`."""
    g = users_items_likes.groupby("item")["like"].agg(["sum", "count"]).reindex(range(n_items), fill_value=0)
    mean = users_items_likes["like"].mean()
    return pd.DataFrame({"count": g["count"], "log_count": np.log1p(g["count"]),
                         "like_rate": (g["sum"] + prior * mean) / (g["count"] + prior)})


def other_like_features(ex: pd.DataFrame, train: pd.DataFrame, n_items: int, mf: LikeMF, folds: int = 5,
                        seed: int = 0, prior: float = 5.0) -> pd.DataFrame:
    """Features from the training period's interactions (`train`: user, item, like), not from text: the MF score,
    the item's like rate and log count. An example that is itself one of those interactions gets them without
    itself: its MF score from a model fitted on the other folds, its item statistics with its own like removed."""
    mean = float(train["like"].mean())
    g = train.groupby("item")["like"].agg(["sum", "count"]).reindex(range(n_items), fill_value=0)
    s, c = g["sum"].to_numpy()[ex["item"]].astype(float), g["count"].to_numpy()[ex["item"]].astype(float)
    key = pd.MultiIndex.from_frame(train[["user", "item"]])
    pos = key.get_indexer(pd.MultiIndex.from_frame(ex[["user", "item"]]))
    own = pos >= 0  # the example is a training-period interaction
    like = ex["like"].to_numpy()
    s, c = s - np.where(own, like, 0), c - own
    score = LikeMF(mf.factors, mf.reg, mf.iterations, seed).fit(train["user"], train["item"], train["like"]).predict(
        ex["user"], ex["item"])
    fold = np.random.default_rng(seed).integers(0, folds, len(train))
    for k in range(folds):
        fit_rows, rows = fold != k, own & (fold[np.maximum(pos, 0)] == k)
        if rows.any():
            m = LikeMF(mf.factors, mf.reg, mf.iterations, seed).fit(train["user"].to_numpy()[fit_rows],
                                                                    train["item"].to_numpy()[fit_rows],
                                                                    train["like"].to_numpy()[fit_rows])
            score[rows] = m.predict(ex["user"].to_numpy()[rows], ex["item"].to_numpy()[rows])
    return pd.DataFrame({"mf": score, "like_rate": (s + prior * mean) / (c + prior), "log_count": np.log1p(c)},
                        index=ex.index)


def genre_matrix(items: pd.DataFrame, n_items: int) -> tuple[np.ndarray, list[str]]:
    """(n_items, n_genres) 0/1 genre indicators by item id, and the genre names."""
    names = sorted({g for gs in items["genres"] for g in gs.split()})
    m = np.zeros((n_items, len(names)))
    col = {g: k for k, g in enumerate(names)}
    for item, gs in zip(items["item"], items["genres"]):
        m[item, [col[g] for g in gs.split()]] = 1
    return m, names


def text_like_features(ex: pd.DataFrame, vectors: np.ndarray, genres: np.ndarray) -> pd.DataFrame:
    """Features read off each example's text and a language model's item vectors: the history's like share, the
    like share among history movies that share a genre with the candidate, and the candidate's cosine with the mean
    vector of the liked and of the disliked history movies (0 when there are none)."""
    H = np.array(ex["history"].tolist())
    L = np.array(ex["history_likes"].tolist(), dtype=float)
    t = ex["item"].to_numpy()
    share = (genres[H] * genres[t][:, None]).sum(-1) > 0  # history movie shares a genre with the candidate
    like_share = L.mean(1)
    genre_like = np.where(share.sum(1) > 0, (L * share).sum(1) / np.maximum(share.sum(1), 1), like_share)

    gram = vectors @ vectors.T  # item-by-item dot products: no (examples, history, dim) array is ever built
    to_cand = gram[H, t[:, None]]  # (n, history): each history movie's dot product with the candidate
    within = gram[H[:, :, None], H[:, None, :]]  # (n, history, history)
    cand_norm = np.sqrt(np.maximum(np.diag(gram)[t], 1e-24))

    def sim(weights: np.ndarray) -> np.ndarray:  # cosine of the candidate with the weighted sum of history vectors
        norm = np.sqrt(np.maximum(np.einsum("nj,njk,nk->n", weights, within, weights), 0.0))
        return np.where(norm > 1e-12, (weights * to_cand).sum(1) / np.maximum(norm * cand_norm, 1e-12), 0.0)

    return pd.DataFrame({"like_share": like_share, "genre_like_share": genre_like, "sim_liked": sim(L),
                         "sim_disliked": sim(1 - L), "genre_overlap": share.mean(1)}, index=ex.index)


def fit_logistic(X: np.ndarray, y: Sequence[int], c: float):
    """Standardised features + L2 logistic regression (scikit-learn); `.predict_proba(X)[:, 1]` scores."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(X, np.asarray(y))


def few_shot_curve(X: np.ndarray, y: Sequence[int], pool: np.ndarray, val: np.ndarray, test: np.ndarray,
                   sizes: Sequence[int], seeds: Sequence[int], cs: Sequence[float]) -> dict[int, dict]:
    """Per training size n: the regularisation C picked on the validation examples (AUC of the first seed's draw),
    then one logistic regression per seed, each on its own draw of n examples from `pool`; the test scores per seed."""
    y = np.asarray(y)
    out = {}
    for n in sizes:
        draws = [pool[draw_balanced(y[pool], n, s)] for s in seeds]
        val_auc = {c: auc(y[val], fit_logistic(X[draws[0]], y[draws[0]], c).predict_proba(X[val])[:, 1]) for c in cs}
        c = max(cs, key=lambda k: (val_auc[k], -k))  # ties: the stronger regularisation
        runs = np.stack([fit_logistic(X[d], y[d], c).predict_proba(X[test])[:, 1] for d in draws])
        out[n] = {"c": c, "val_auc": val_auc, "runs": runs}
    return out


def draw_balanced(labels: Sequence[int], n: int, seed: int) -> np.ndarray:
    """Indices of n examples drawn with `seed`, with both classes present (TALLRec's few-shot draw, n >= 2)."""
    y = np.asarray(labels)
    if not 2 <= n <= len(y):
        raise ValueError(f"n={n}: expected 2 <= n <= {len(y)}")
    rng = np.random.default_rng(seed)
    while True:
        idx = np.sort(rng.choice(len(y), n, replace=False))
        if 0 < y[idx].sum() < n:
            return idx


# ---------------------------------------------------------------- protocol 2: leave-one-out top-k ranking

def leave_one_out(ratings: pd.DataFrame) -> pd.Series:
    """'train' / 'validation' / 'test' per rating: each user's last interaction (in time) is test, the one before it
    validation, the rest training; the index is that of `ratings`."""
    r = ratings.sort_values("timestamp", kind="stable")
    from_end = r.groupby("user").cumcount(ascending=False)
    side = np.where(from_end == 0, "test", np.where(from_end == 1, "validation", "train"))
    return pd.Series(side, index=r.index).reindex(ratings.index)


def interactions(users: Sequence[int], items: Sequence[int], n_users: int, n_items: int) -> sparse.csr_matrix:
    """(n_users, n_items) 0/1 interaction matrix."""
    m = sparse.csr_matrix((np.ones(len(users)), (np.asarray(users), np.asarray(items))), shape=(n_users, n_items))
    m.data[:] = 1.0
    return m


def _fitted(side: pd.Series, target: str) -> pd.Series:
    """The ratings a leave-one-out stage trains on: 'validation' the training ones, 'test' training + validation."""
    if target not in ("validation", "test"):
        raise ValueError(f"target={target!r}: expected 'validation' or 'test'")
    return side.eq("train") if target == "validation" else side.ne("test")


def loo_stage(ratings: pd.DataFrame, side: pd.Series, target: str, n_users: int,
              n_items: int) -> tuple[sparse.csr_matrix, np.ndarray]:
    """(training matrix, each user's target item) of one leave-one-out stage; 'validation' trains on the training
    interactions, 'test' on training + validation. Ids are 1-based; rows and columns are 0-based (id - 1)."""
    fit = _fitted(side, target)
    X = interactions(ratings["user"][fit] - 1, ratings["item"][fit] - 1, n_users, n_items)
    t = ratings[side.eq(target)].set_index("user")["item"].reindex(range(1, n_users + 1))
    if t.isna().any():
        raise ValueError(f"{int(t.isna().sum())} user(s) have no {target} interaction; expected one per user")
    return X, t.to_numpy().astype(int) - 1


def last_interactions(ratings: pd.DataFrame, side: pd.Series, target: str, m: int, n_users: int,
                      n_items: int) -> sparse.csr_matrix:
    """(n_users, n_items) each user's last m training interactions (in time, ties as in `leave_one_out`)."""
    if m < 1:
        raise ValueError(f"m={m}: expected at least one recent interaction")
    r = ratings[_fitted(side, target)].sort_values("timestamp", kind="stable")
    last = r.groupby("user").tail(m)
    return interactions(last["user"] - 1, last["item"] - 1, n_users, n_items)


def item_sequences(ratings: pd.DataFrame, side: pd.Series, target: str, n_users: int) -> list[np.ndarray]:
    """Each user's training items (1-based ids) in time order (ties as in `leave_one_out`), for users 1..n_users."""
    r = ratings[_fitted(side, target)].sort_values("timestamp", kind="stable")
    by_user = {u: g.to_numpy() for u, g in r.groupby("user")["item"]}
    return [by_user.get(u, np.zeros(0, dtype=int)) for u in range(1, n_users + 1)]


def ranking_row(ranks: np.ndarray, k: int = 10, seed: int = 0) -> dict[str, float]:
    """HR@k and NDCG@k with their 95% bootstrap intervals over the users."""
    from lib.stats import bootstrap_interval

    out = {}
    for name, per_user in (("HR", hit_rate(ranks, k)), ("NDCG", ndcg(ranks, k))):
        v, lo, hi = bootstrap_interval(lambda i: per_user[i].mean(), len(per_user), seed=seed)
        out |= {f"{name}@{k}": v, f"{name}@{k} low": lo, f"{name}@{k} high": hi}
    return out


def popularity_scores(train: sparse.csr_matrix) -> np.ndarray:
    """(n_users, n_items): every user gets the items' training interaction counts."""
    counts = np.asarray(train.sum(0)).ravel()
    return np.tile(counts, (train.shape[0], 1))


def item_similarity(train: sparse.csr_matrix, shrink: float = 10.0) -> np.ndarray:
    """(n_items, n_items) shrunk cosine similarity of the items' interaction columns, zero on the diagonal."""
    X = train.T.tocsr().astype(float)
    co = (X @ X.T).toarray()
    norms = np.sqrt(np.diag(co))
    sim = co / (np.outer(norms, norms) + shrink + 1e-12)
    np.fill_diagonal(sim, 0.0)
    return sim


def item_knn_scores(train: sparse.csr_matrix, neighbours: int | None = 100, shrink: float = 10.0,
                    profile: sparse.csr_matrix | None = None, sim: np.ndarray | None = None) -> np.ndarray:
    """(n_users, n_items) item-kNN: each item's summed cosine similarity (shrunk; the top `neighbours` kept, all when
    None) to the items of the user's `profile` (default: all their training items; a recent few: session kNN).
    Pass `sim` (`item_similarity(train, shrink)`) to reuse one similarity matrix across calls."""
    sim = item_similarity(train, shrink) if sim is None else sim
    if neighbours is not None and neighbours < sim.shape[0]:
        cut = -np.partition(-sim, neighbours - 1, axis=1)[:, neighbours - 1:neighbours]
        sim = np.where(sim >= cut, sim, 0.0)
    return np.asarray((train if profile is None else profile) @ sim.T)


def als_scores(train: sparse.csr_matrix, factors: int, reg: float, alpha: float = 1.0, iterations: int = 15,
               seed: int = 0) -> np.ndarray:
    """(n_users, n_items) scores of implicit-feedback ALS (the `implicit` library, Hu et al. 2008)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit's advice: its own threads, not BLAS's
        model = AlternatingLeastSquares(factors=factors, regularization=reg, alpha=alpha, iterations=iterations,
                                        random_state=seed, num_threads=1, calculate_training_loss=False)
        model.fit(train.astype(np.float32), show_progress=False)
    return np.asarray(model.user_factors) @ np.asarray(model.item_factors).T


def text_scores(train: sparse.csr_matrix, vectors: np.ndarray) -> np.ndarray:
    """(n_users, n_items): cosine of each item's text vector with the mean vector of the user's training items."""
    prof = np.asarray(train @ vectors)
    prof /= np.maximum(np.linalg.norm(prof, axis=1, keepdims=True), 1e-12)
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return prof @ v.T


def top_candidates(scores: np.ndarray, seen: sparse.csr_matrix, k: int) -> np.ndarray:
    """(n_users, k) the k highest-scoring unseen items of each user, best first."""
    s = np.where(seen.toarray().astype(bool), -np.inf, scores)
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def union_candidates(first: np.ndarray, second: np.ndarray, extra: int) -> np.ndarray:
    """(n_users, k + extra): each user's `first` candidates, then the first `extra` of `second` not among them."""
    rows = []
    for a, b in zip(first, second, strict=True):
        new = b[~np.isin(b, a)][:extra]
        if len(new) < extra:
            raise ValueError(f"union_candidates: expected at least {extra} new items in `second`; pass more of them")
        rows.append(np.concatenate([a, new]))
    return np.stack(rows)


def feature_names(scores: Iterable[str]) -> list[str]:
    """The re-ranker's feature names, in `candidate_features` order."""
    return [*scores, "list_rank", "log_popularity", "year", "genre_overlap"]


def candidate_features(cands: np.ndarray, scores: Mapping[str, np.ndarray], train: sparse.csr_matrix,
                       years: np.ndarray, genres: np.ndarray) -> np.ndarray:
    """(n_users, k, n_features) features of each candidate, named by `feature_names`: each model's score
    (standardised within the user's candidates), the candidate's position in the list (log), log popularity,
    release year, and the cosine of the item's genres with the user's genre profile."""
    def per_user(s: np.ndarray) -> np.ndarray:
        s = np.take_along_axis(s, cands, 1)
        return (s - s.mean(1, keepdims=True)) / (s.std(1, keepdims=True) + 1e-9)

    pop = np.log1p(np.asarray(train.sum(0)).ravel())[cands]
    prof = np.asarray(train @ genres)
    prof /= np.maximum(np.linalg.norm(prof, axis=1, keepdims=True), 1e-12)
    g = genres[cands] / np.maximum(np.linalg.norm(genres[cands], axis=2, keepdims=True), 1e-12)
    overlap = (g * prof[:, None, :]).sum(-1)
    rank = np.broadcast_to(np.log1p(np.arange(cands.shape[1])), cands.shape)
    return np.stack([*(per_user(v) for v in scores.values()), rank, pop, years[cands], overlap], -1)


class Reranker:
    """A logistic regression over candidate features, learned from which candidate was the held-out item."""

    def __init__(self, features: np.ndarray, cands: np.ndarray, targets: Sequence[int], c: float = 1.0) -> None:
        y = (cands == np.asarray(targets)[:, None]).astype(int)
        keep = y.any(1)  # users whose held-out item is among the candidates carry the signal
        if not keep.any():
            raise ValueError("Reranker: no held-out item is among the candidates; expected at least one")
        self.model = fit_logistic(features[keep].reshape(-1, features.shape[-1]), y[keep].ravel(), c)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(n_users, k) the learned score of each candidate."""
        n, k, d = features.shape
        return self.model.decision_function(features.reshape(n * k, d)).reshape(n, k)


def pick_c(features: np.ndarray, cands: np.ndarray, targets: np.ndarray, base_ranks: np.ndarray,
           cs: Sequence[float], k: int = 10) -> tuple[float, dict[float, float]]:
    """The re-ranker's C by two-fold cross-validation over the users (fit on one half, NDCG@k on the other)."""
    half = np.arange(len(targets)) % 2 == 0
    score = {}
    for c in cs:
        vals = []
        for fit in (half, ~half):
            rr = Reranker(features[fit], cands[fit], targets[fit], c)
            ranks = reranked_ranks(cands[~fit], rr.scores(features[~fit]), targets[~fit], base_ranks[~fit])
            vals.append(ndcg(ranks, k).mean())
        score[c] = float(np.mean(vals))
    return max(cs, key=lambda c: (score[c], -c)), score


def with_cold_slots(lists: np.ndarray, text: np.ndarray, seen: sparse.csr_matrix, cold_items: np.ndarray,
                    slots: int, k: int = 10) -> np.ndarray:
    """(n_users, k): the first k - slots items of each user's ranked list, then the `slots` unseen cold items that
    the text scorer ranks highest among those not already shown (a slot reserved for new movies)."""
    if not 0 <= slots <= k:
        raise ValueError(f"slots={slots}: expected 0 <= slots <= k = {k}")
    head = lists[:, :k - slots]
    s = np.where(seen.toarray().astype(bool) | ~np.asarray(cold_items, bool)[None, :], -np.inf, text).astype(float)
    np.put_along_axis(s, head, -np.inf, axis=1)  # never show an item twice
    tail = np.argsort(-s, axis=1, kind="stable")[:, :slots]
    return np.concatenate([head, tail], axis=1)


def list_ranks(lists: np.ndarray, targets: Sequence[int], fallback: Sequence[float]) -> np.ndarray:
    """The target's position (1 = top) in each user's shown list, else `fallback` (a rank beyond the list)."""
    hit = lists == np.asarray(targets)[:, None]
    return np.where(hit.any(1), hit.argmax(1) + 1, np.asarray(fallback, dtype=float))


def reranked_ranks(cands: np.ndarray, new_scores: np.ndarray, targets: Sequence[int],
                   base_ranks: Sequence[float]) -> np.ndarray:
    """The target's rank after re-ordering the candidates by `new_scores` (ties against the target); a target
    outside the candidates keeps its base rank (which is beyond the candidates)."""
    _refuse_nan(np.asarray(new_scores, dtype=float), "reranked_ranks")
    t = np.asarray(targets)
    hit = cands == t[:, None]
    own = np.where(hit, new_scores, 0.0).sum(1)  # the target's new score (0 where it is not a candidate)
    above = ((new_scores >= own[:, None]) & ~hit).sum(1)
    return np.where(hit.any(1), 1 + above, np.asarray(base_ranks, dtype=float))
