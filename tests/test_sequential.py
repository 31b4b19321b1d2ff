"""lib.sequential (SASRec as a GPT over item ids) and the sequences it reads, on tiny configs."""
import numpy as np
import pandas as pd
import pytest

from lib.recommend import item_sequences, leave_one_out
from lib.sequential import item_gpt, next_item_scores, sasrec_scores, sequence_windows


def test_windows_make_every_item_but_the_first_a_target_exactly_once():
    seqs = [list(range(1, 12)), [15, 17], [13]]  # no item in two sequences
    for length in (2, 3, 4, 50):
        wins = [w["input_ids"] for w in sequence_windows(seqs, length)]
        assert all(2 <= len(w) <= length for w in wins)
        targets = sorted(t for w in wins for t in w[1:])  # the causal-LM loss predicts w[1:] from what precedes
        assert targets == [*range(2, 12), 17]  # a one-item sequence has no target and gives no window
        for w in wins:  # each window is a contiguous piece of its sequence
            s = next(s for s in seqs if w[0] in s)
            start = s.index(w[0])
            assert s[start:start + len(w)] == w
    with pytest.raises(ValueError, match="at least 2"):
        sequence_windows(seqs, 1)


def test_item_sequences_are_each_stages_training_items_in_time_order():
    r = pd.DataFrame({"user": [1, 1, 1, 1, 2, 2, 2, 1], "item": [4, 2, 9, 7, 3, 5, 8, 6],
                      "timestamp": [30, 10, 20, 20, 5, 1, 9, 40]})
    side = leave_one_out(r)
    # user 1 in time: 2 (10), 9 and 7 (20, a tie kept in file order), 4 (30), 6 (40); user 2: 5, 3, 8
    assert [s.tolist() for s in item_sequences(r, side, "validation", 3)] == [[2, 9, 7], [5], []]
    assert [s.tolist() for s in item_sequences(r, side, "test", 3)] == [[2, 9, 7, 4], [5, 3], []]


def test_scores_read_each_users_last_item_whatever_else_is_in_the_batch():
    model = item_gpt(n_items=9, length=4, n_embd=8, n_head=2, dropout=0.0)
    short, long = [3, 1], [2, 5, 7, 8, 9, 4]
    alone = next_item_scores(model, [short], 4)
    together = next_item_scores(model, [long, short], 4, batch_size=2)
    assert alone.shape == (1, 9) and together.shape == (2, 9)
    assert np.allclose(together[1], alone[0], atol=1e-5)  # right padding does not reach the last real position
    assert np.allclose(together[0], next_item_scores(model, [long[-4:]], 4)[0], atol=1e-5)  # only the last 4 items
    assert not np.allclose(together[0], together[1])
    with pytest.raises(ValueError, match="empty sequence"):
        next_item_scores(model, [short, []], 4)


def test_a_tiny_sasrec_learns_a_fixed_order():
    cycle = [1, 2, 3, 4, 5, 6]
    seqs = [[cycle[(start + k) % 6] for k in range(12)] for start in range(6)]  # each user walks the same cycle
    scores, history, wall = sasrec_scores(seqs, n_items=6, epochs=60, length=6, n_embd=16, lr=1e-2, batch_size=4)
    nxt = [cycle[(cycle.index(s[-1]) + 1) % 6] for s in seqs]
    assert (scores.argmax(1) + 1).tolist() == nxt  # column j is item j + 1
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"] and wall > 0
