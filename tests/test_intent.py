"""lib.intent: the weighted product of classifiers, the pick of its weights, the similarity gate and the hand-off."""
from __future__ import annotations

import numpy as np

from lib.intent import (confidence, gate, handoff_curve, method_log_proba, mix, pick_threshold, pick_weights,
                        scores_to_log_proba)

LOG = np.log


def test_mix_is_a_renormalised_weighted_product():
    a, b = LOG([[0.8, 0.2]]), LOG([[0.3, 0.7]])
    z = np.array([[0.8 * 0.3 ** 2, 0.2 * 0.7 ** 2]])
    np.testing.assert_allclose(np.exp(mix([a, b], [1, 2])), z / z.sum())


def test_pick_weights_by_hand():
    y = np.array([0, 1, 1])
    right = LOG([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])  # right on all three
    wrong = LOG([[0.1, 0.9], [0.9, 0.1], [0.9, 0.1]])  # wrong on all three, and confident
    acc = lambda lp: float((lp.argmax(1) == y).mean())
    grid = [(1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (2.0, 0.0)]
    w, scores = pick_weights([[right], [wrong]], acc, grid)
    assert scores[(1.0, 0.0)] == scores[(2.0, 0.0)] == 1.0 and scores[(0.0, 1.0)] == 0.0
    assert w == (1.0, 0.0)  # a tie at 1.0: the smaller weights win
    _, by_seed = pick_weights([[right], [wrong, right]], acc, [(0.0, 1.0)])  # seed 0 wrong, seed 1 right
    assert by_seed[(0.0, 1.0)] == 0.5  # the seedless member is shared, the score is the mean over seeds


def test_scores_to_log_proba_is_a_tempered_softmax():
    lp = scores_to_log_proba(np.array([[0.9, 0.8, 0.1]]), temperature=0.1)
    z = np.exp([9.0, 8.0, 1.0])
    np.testing.assert_allclose(np.exp(lp), [z / z.sum()])


def test_gate_flattens_only_the_rows_below_the_floor():
    lp = LOG([[0.9, 0.1], [0.6, 0.4]])
    out = gate(lp, np.array([0.8, 0.3]), floor=0.5)
    np.testing.assert_allclose(out[0], lp[0])  # similar enough: the classifier's own answer
    np.testing.assert_allclose(np.exp(out[1]), [0.5, 0.5])  # unlike every known query: flat, confidence 1 / n
    assert confidence(out)[1] == 0.5


def test_handoff_curve_and_the_threshold_picked_with_interval_floors():
    conf_in = np.array([0.9] * 80 + [0.6] * 20)
    correct = np.array([True] * 76 + [False] * 4 + [True] * 12 + [False] * 8)
    conf_out = np.array([0.5] * 95 + [0.95] * 5)
    curve = handoff_curve(conf_in, correct, conf_out, [0.0, 0.55, 0.7])
    low, mid, high = curve
    assert mid["n_answered"] == 100 and high["n_answered"] == 80 and mid["n_out"] == 100
    assert abs(mid["precision"] - 0.88) < 1e-12 and abs(high["precision"] - 0.95) < 1e-12
    assert mid["oos_rejected"] == high["oos_rejected"] == 0.95 and low["oos_rejected"] == 0.0
    assert pick_threshold(curve, 0.90, 0.85)["threshold"] == 0.55  # estimates clear both floors at 0.55
    # Wilson lower ends: precision 88/100 -> 0.80, 76/80 -> 0.88; rejection 95/100 -> 0.89 < 0.90: none qualifies
    assert pick_threshold(curve, 0.90, 0.85, level=0.95)["threshold"] == 0.7  # ... so the strictest row
    assert pick_threshold(curve, 0.85, 0.85, level=0.95)["threshold"] == 0.7  # 0.55's precision 0.80 < 0.85


def test_method_log_proba_runs_one_member_or_the_weighted_mix():
    ran = []
    a, b = LOG([[0.8, 0.2]]), LOG([[0.3, 0.7]])
    members = {"a": lambda: ran.append("a") or a, "b": lambda: ran.append("b") or b}
    np.testing.assert_allclose(method_log_proba("b", members, (1.0, 1.0)), b)
    np.testing.assert_allclose(method_log_proba("ensemble", members, (1.0, 2.0)), mix([a, b], [1.0, 2.0]))
    ran.clear()
    np.testing.assert_allclose(method_log_proba("ensemble", members, (0.0, 1.0)), b)
    assert ran == ["b"]  # a member of weight 0 is not run
