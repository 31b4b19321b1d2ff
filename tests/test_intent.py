"""lib.intent: the weighted product of classifiers and the pick of its weights on validation."""
from __future__ import annotations

import numpy as np

from lib.intent import mix, pick_weights

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
