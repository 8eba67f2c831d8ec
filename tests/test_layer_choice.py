"""binser.layer_choice: the single best layer and the greedy layer set, on hand-made scores."""
from __future__ import annotations

import numpy as np
import pytest

from binser.layer_choice import best_layer, greedy_layer_set, set_name, stacked


def test_best_layer_breaks_ties_towards_the_lower_layer():
    assert best_layer({1: 0.5, 2: 0.7, 3: 0.7, 4: 0.6}) == 2


def _scorer(table, calls):
    def score(candidate):
        calls.append(candidate)
        return table.get(candidate, 0.0)
    return score


def test_greedy_set_grows_while_the_inner_score_improves_and_stops_at_three():
    table = {(1,): 0.50, (2,): 0.55, (3,): 0.52,
             (1, 2): 0.54, (2, 3): 0.58, (2, 4): 0.56, (4,): 0.4,
             (1, 2, 3): 0.57, (2, 3, 4): 0.60}
    calls = []
    chosen, scored = greedy_layer_set(_scorer(table, calls), [1, 2, 3, 4])
    assert chosen == (2, 3, 4)
    # 4 singles, 3 pairs containing 2, 2 triples containing (2, 3): nothing else scored
    assert len(calls) == 9 and set(scored) == set(calls)
    assert all(2 in c for c in calls if len(c) > 1)


def test_greedy_set_keeps_the_single_layer_when_no_pair_is_strictly_better():
    table = {(1,): 0.5, (2,): 0.6, (1, 2): 0.6, (2, 3): 0.59, (3,): 0.1}
    chosen, _ = greedy_layer_set(_scorer(table, []), [1, 2, 3])
    assert chosen == (2,)


def test_greedy_set_ties_go_to_the_lower_layers_and_max_size_is_respected():
    table = {(1,): 0.5, (2,): 0.5, (3,): 0.4, (1, 2): 0.6, (1, 3): 0.6}
    chosen, _ = greedy_layer_set(_scorer(table, []), [1, 2, 3], max_size=2)
    assert chosen == (1, 2)
    with pytest.raises(ValueError):
        greedy_layer_set(_scorer(table, []), [1, 2], max_size=0)


def test_stacked_and_set_name():
    mats = {3: np.ones((2, 2)), 5: np.zeros((2, 3))}
    out = stacked(mats, (3, 5))
    assert out.shape == (2, 5) and out[:, :2].sum() == 4 and out[:, 2:].sum() == 0
    assert set_name((3, 5)) == "3+5"
