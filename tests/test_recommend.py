"""Notebook 12's pieces: the MovieLens-100K loader and its errors, the splits, and the metrics against hand counts."""
import importlib.util

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from lib.data import DataFormatError, DataNotFoundError, load_movielens, movielens_dir
from lib.recommend import (Reranker, auc, candidate_features, draw_balanced, full_ranks, hit_rate, interactions,
                           leave_one_out, like_examples, like_prompt, ndcg, other_like_features, LikeMF,
                           reranked_ranks, text_like_features, time_split, top_candidates, genre_matrix)
from lib.splits import assert_disjoint

HAVE_RECBOLE = importlib.util.find_spec("recbole") is not None
needs_recbole = pytest.mark.skipif(not HAVE_RECBOLE, reason="recbole (MovieLens-100K's files) not installed; "
                                                            "run `make setup`")
HEADERS = {"inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
           "item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
           "user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"}


def write_ml(folder, inter=None, item=None, user=None):
    """A tiny MovieLens in RecBole's atomic format: 2 users, 3 movies, 5 ratings (or the given bodies)."""
    bodies = {"inter": inter or ["1\t1\t5\t100", "1\t2\t2\t200", "2\t1\t4\t150", "2\t3\t3\t50", "1\t3\t4\t300"],
              "item": item or ["1\tToy Story\t1995\tAnimation Children's Comedy", "2\tGoldenEye\t1995\tAction",
                               "3\tFour Rooms\t1995\tThriller"],
              "user": user or ["1\t24\tM\ttechnician\t85711", "2\t53\tF\tother\t94043"]}
    for k, rows in bodies.items():
        (folder / f"ml-100k.{k}").write_text("\n".join([HEADERS[k], *rows]) + "\n", encoding="utf-8")
    return folder


# ---------------------------------------------------------------- loader

@needs_recbole
def test_real_movielens_has_the_published_sizes():
    ml = load_movielens()
    assert (len(ml.ratings), ml.ratings["user"].nunique(), ml.ratings["item"].nunique()) == (100_000, 943, 1682)
    assert len(ml.items) == 1682 and len(ml.users) == 943 and set(ml.ratings["rating"]) == {1, 2, 3, 4, 5}
    assert ml.items.loc[1, "title"] == "Toy Story" and ml.items.loc[1, "year"] == 1995


def test_loader_reads_a_tiny_copy(tmp_path):
    ml = load_movielens(write_ml(tmp_path))
    assert ml.ratings.shape == (5, 4) and list(ml.ratings.columns) == ["user", "item", "rating", "timestamp"]
    assert ml.items.loc[1, "genres"] == "Animation Children's Comedy" and ml.users["user"].tolist() == [1, 2]


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataNotFoundError, match=r"recbole is not installed.*pip install --no-deps recbole==1\.2\.1"):
        movielens_dir()


def test_missing_file_is_named(tmp_path):
    write_ml(tmp_path)
    (tmp_path / "ml-100k.user").unlink()
    with pytest.raises(DataNotFoundError, match=r"ml-100k\.user not found"):
        load_movielens(tmp_path)


@pytest.mark.parametrize("kwargs, where", [
    ({"inter": ["1\t1\t5"]}, r"ml-100k\.inter:2: expected 4 tab-separated fields, got 3"),
    ({"inter": ["1\t1\tfive\t100"]}, r"ml-100k\.inter:2: rating='five': expected a number"),
    ({"inter": ["1\t9\t5\t100"]}, r"ml-100k\.inter:2: item 9 has ratings but no row in ml-100k\.item"),
    ({"inter": ["1\t1\t5\t100", "1\t2\t7\t100"]}, r"ml-100k\.inter:3: expected ratings from 1 to 5"),
])
def test_malformed_files_name_file_and_line(tmp_path, kwargs, where):
    with pytest.raises(DataFormatError, match=where):
        load_movielens(write_ml(tmp_path, **kwargs))


def test_wrong_header_is_named(tmp_path):
    write_ml(tmp_path)
    path = tmp_path / "ml-100k.item"
    path.write_text(path.read_text().replace("movie_title", "title"), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"ml-100k\.item:1: expected the header fields item_id, movie_title"):
        load_movielens(tmp_path)


# ---------------------------------------------------------------- splits

def toy_ratings(n_users=6, per_user=15, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(u, int(i), int(rng.integers(1, 6)), int(t))
            for u in range(1, n_users + 1)
            for i, t in zip(rng.choice(np.arange(1, 40), per_user, replace=False),
                            np.sort(rng.choice(10_000, per_user, replace=False)))]
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def test_time_split_orders_the_sides_and_keeps_ties_together():
    t = np.array([5, 1, 9, 3, 3, 7, 8, 2, 6, 4, 10, 10])
    side = time_split(t, (0.5, 0.25, 0.25))
    assert t[side == "train"].max() < t[side == "validation"].min() <= t[side == "validation"].max() \
        < t[side == "test"].min()
    assert len(set(side[t == 3])) == 1 and len(set(side[t == 10])) == 1
    with pytest.raises(ValueError, match="three positive shares"):
        time_split(t, (0.5, 0.5, 0.0))


def test_like_examples_history_is_earlier_and_never_holds_the_target():
    r = toy_ratings()
    ex = like_examples(r, n_history=10, fractions=(0.6, 0.2, 0.2))
    assert len(ex) == 6 * (15 - 10) and ex["history"].map(len).eq(10).all()
    when = {(u, i): t for u, i, t in zip(r["user"], r["item"], r["timestamp"])}
    likes = {(u, i): int(y > 3) for u, i, y in zip(r["user"], r["item"], r["rating"])}
    for row in ex.itertuples():
        assert row.item not in row.history  # the target's own rating never leaks into its history
        assert all(when[(row.user, h)] <= row.timestamp for h in row.history)
        assert list(row.history_likes) == [likes[(row.user, h)] for h in row.history]
        assert row.like == likes[(row.user, row.item)]
    by_side = {s: ex[ex["split"] == s] for s in ("train", "validation", "test")}
    assert by_side["train"]["timestamp"].max() < by_side["validation"]["timestamp"].min()
    assert by_side["validation"]["timestamp"].max() < by_side["test"]["timestamp"].min()
    key = lambda row: (row[0], row[1])  # (user, item): no target interaction is on two sides
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert_disjoint(by_side[a][["user", "item"]].itertuples(index=False),
                        by_side[b][["user", "item"]].itertuples(index=False), key)


def test_leave_one_out_holds_out_each_users_last_two():
    r = toy_ratings()
    side = leave_one_out(r)
    for u, g in r.assign(side=side).groupby("user"):
        g = g.sort_values("timestamp")
        assert g["side"].tolist() == ["train"] * 13 + ["validation", "test"]


def test_last_interactions_are_the_latest_training_ones_of_each_stage():
    from lib.recommend import last_interactions

    r = toy_ratings(n_users=3, per_user=15)
    side = leave_one_out(r)
    for stage, held in (("validation", ("validation", "test")), ("test", ("test",))):
        R = last_interactions(r, side, stage, 3, 3, 40)
        for u, g in r.assign(side=side).groupby("user"):
            g = g[~g["side"].isin(held)].sort_values("timestamp", kind="stable")
            assert set(np.flatnonzero(R[u - 1].toarray()[0]) + 1) == set(g["item"].tail(3))
    with pytest.raises(ValueError, match="at least one"):
        last_interactions(r, side, "test", 0, 3, 40)


def test_item_knn_reads_only_the_profile_it_is_given():
    from lib.recommend import item_knn_scores

    train = interactions([0, 0, 1, 1, 2], [0, 1, 0, 1, 2], 3, 3)  # items 0 and 1 co-watched; item 2 alone
    only_item_2 = interactions([0], [2], 3, 3)
    full, recent = item_knn_scores(train, None, 0.0), item_knn_scores(train, None, 0.0, profile=only_item_2)
    assert np.isclose(full[0, 0], 1.0) and np.isclose(full[0, 1], 1.0)  # each is the other's perfect neighbour
    assert np.allclose(recent, 0.0)  # item 2 shares no user with anything: no score from it
    from lib.recommend import item_similarity

    shared = item_similarity(train, 0.0)  # one matrix passed in gives what each call computes for itself
    assert np.array_equal(item_knn_scores(train, 1, 0.0, sim=shared), item_knn_scores(train, 1, 0.0))
    assert not item_knn_scores(train, None, 0.0, sim=np.zeros((3, 3))).any()  # the matrix passed in is the one used


def test_out_of_fold_features_never_use_the_example_itself():
    r = toy_ratings(n_users=20, per_user=15)
    r["like"] = (r["rating"] > 3).astype(int)
    ex = r.iloc[:30].copy()  # examples that are themselves training interactions
    f = other_like_features(ex, r, 40, LikeMF(4, 1.0, 3), folds=3)
    counts = r.groupby("item").size()
    assert (np.expm1(f["log_count"]).round() == ex["item"].map(counts).to_numpy() - 1).all()
    item, mean = ex["item"].iloc[0], r["like"].mean()
    others = r[(r["item"] == item) & (r.index != ex.index[0])]["like"]  # the item's other ratings only
    assert np.isclose(f["like_rate"].iloc[0], (others.sum() + 5 * mean) / (len(others) + 5))


def test_draw_balanced_has_both_classes():
    y = np.array([1] * 95 + [0] * 5)
    for seed in range(10):
        idx = draw_balanced(y, 4, seed)
        assert len(set(idx)) == 4 and 0 < y[idx].sum() < 4


# ---------------------------------------------------------------- metrics, by hand

def test_auc_by_hand():
    # positives 0.8, 0.4; negatives 0.5, 0.1: pairs (0.8>0.5, 0.8>0.1, 0.4<0.5, 0.4>0.1) -> 3 of 4
    assert auc([1, 1, 0, 0], [0.8, 0.4, 0.5, 0.1]) == 0.75
    assert auc([1, 0], [0.3, 0.3]) == 0.5  # a tie counts one half
    assert auc([1, 1, 0], [0.9, 0.2, 0.2]) == 0.75  # (1 + 0.5) / 2
    with pytest.raises(ValueError, match="both classes"):
        auc([1, 1], [0.1, 0.2])


def test_hit_rate_and_ndcg_by_hand():
    ranks = np.array([1, 3, 10, 11])
    assert hit_rate(ranks, 10).tolist() == [1, 1, 1, 0]
    assert np.allclose(ndcg(ranks, 10), [1.0, 0.5, 1 / np.log2(11), 0.0])
    assert np.isclose(ndcg(ranks, 10).mean(), (1 + 0.5 + 1 / np.log2(11)) / 4)


def test_full_ranks_refuses_nan_scores_which_would_rank_their_target_first():
    scores = np.array([[0.1, 0.5, 0.2], [np.nan, np.nan, np.nan]])
    with pytest.raises(ValueError, match="NaN scores for 1 user row"):
        full_ranks(scores, [2, 0], sparse.csr_matrix((2, 3)))
    with pytest.raises(ValueError, match="reranked_ranks: NaN"):
        reranked_ranks(np.array([[0, 1]]), np.array([[np.nan, 0.0]]), [0], [5])


def test_full_ranks_skip_seen_items_and_count_ties_against_the_target():
    scores = np.array([[0.9, 0.8, 0.5, 0.5, 0.1], [0.1, 0.2, 0.3, 0.4, 0.5]])
    seen = sparse.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]))
    # user 0: item 0 (0.9) is seen, item 1 (0.8) beats the target 2, item 3 ties with it -> rank 3
    # user 1: target 3 (0.4); item 4 (0.5) is seen -> rank 1
    assert full_ranks(scores, [2, 3], seen).tolist() == [3, 1]


def test_top_candidates_and_reranking():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    seen = sparse.csr_matrix(np.array([[0, 1, 0, 0, 0]]))
    cands = top_candidates(scores, seen, 3)
    assert cands.tolist() == [[0, 2, 3]]
    # new scores put the target (item 3) first; a target outside the candidates keeps its base rank
    assert reranked_ranks(cands, np.array([[0.1, 0.2, 0.9]]), [3], [3]).tolist() == [1]
    assert reranked_ranks(cands, np.array([[0.1, 0.2, 0.9]]), [4], [4]).tolist() == [4]


def test_reranker_learns_a_feature_that_marks_the_target():
    rng = np.random.default_rng(0)
    n, k = 200, 10
    cands = np.tile(np.arange(k), (n, 1))
    targets = rng.integers(0, k, n)
    feats = rng.normal(size=(n, k, 7))
    feats[np.arange(n), targets, 2] += 3.0  # the "text" feature marks the held-out item
    rr = Reranker(feats, cands, targets, c=1.0)
    ranks = reranked_ranks(cands, rr.scores(feats), targets, np.full(n, k + 1))
    assert hit_rate(ranks, 1).mean() > 0.8


def test_text_features_and_prompt_on_a_tiny_catalogue(tmp_path):
    ml = load_movielens(write_ml(tmp_path))
    genres, names = genre_matrix(ml.items, 4)
    assert names == ["Action", "Animation", "Children's", "Comedy", "Thriller"] and genres[1].sum() == 3
    ex = pd.DataFrame({"user": [1], "item": [3], "like": [1], "history": [(1, 2)], "history_likes": [(1, 0)]})
    vec = np.eye(4)
    f = text_like_features(ex, vec, genres).iloc[0]
    assert f["like_share"] == 0.5 and f["sim_liked"] == 0.0 and f["genre_overlap"] == 0.0
    prompt = like_prompt(ml.items, (1, 2), (1, 0), 3)
    assert "- Toy Story (1995): liked\n- GoldenEye (1995): disliked" in prompt
    assert prompt.endswith("Will the user like Four Rooms (1995; Thriller)? Answer Yes or No.\nAnswer:")


def test_candidate_features_shape():
    train = interactions([0, 0, 1], [0, 1, 2], 2, 5)
    cands = np.array([[2, 3], [0, 4]])
    s = np.arange(10, dtype=float).reshape(2, 5)
    f = candidate_features(cands, {"base": s, "text": s, "knn": s}, train, np.zeros(5), np.eye(5))
    assert f.shape == (2, 2, 7) and np.allclose(f[:, :, 0].mean(1), 0)


def test_auc_interval_and_paired_auc_on_a_tiny_set():
    from lib.recommend import auc_interval, paired_auc

    y = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    good, bad = y + 0.1 * np.arange(8), -y.astype(float)
    mean, sd, lo, hi = auc_interval(y, [good, good], n_boot=50)
    assert (mean, sd, lo, hi) == (1.0, 0.0, 1.0, 1.0)  # a perfect scorer: every resample has AUC 1
    diff, lo, hi, p = paired_auc(y, [good], [bad], n_boot=50)
    assert diff == lo == hi == 1.0 and p == 0.0  # perfect against perfectly wrong on every resample


def test_cold_slots_by_hand():
    from lib.recommend import list_ranks, with_cold_slots

    lists = np.array([[4, 3, 2]])
    text = np.array([[0.1, 0.9, 0.8, 0.7, 0.2, 0.5]])
    seen = sparse.csr_matrix(np.array([[0, 1, 0, 0, 0, 0]]))
    cold = np.array([0, 1, 1, 1, 0, 1], bool)  # items 1, 2, 3 and 5 are cold; item 1 is seen, item 3 is shown
    # keep 4 and 3, then the best unseen cold item not shown: 2 (0.8); two slots keep 4 only, then 2 and 3
    out = with_cold_slots(lists, text, seen, cold, slots=1, k=3)
    assert out.tolist() == [[4, 3, 2]] and with_cold_slots(lists, text, seen, cold, 2, 3).tolist() == [[4, 2, 3]]
    assert list_ranks(np.array([[4, 2, 5]]), [5], [9]).tolist() == [3]
    assert list_ranks(np.array([[4, 2, 5]]), [0], [9]).tolist() == [9]
