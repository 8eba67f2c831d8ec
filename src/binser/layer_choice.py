"""Which encoder layers a view's classifier uses, chosen on the training speakers only.

An encoder gives one hidden-state sequence per layer; pooled (e.g. ``stats``), layer ``l`` of
view ``v`` is one ``(N, D)`` matrix ``X_l``. A candidate is a tuple of layers, its features
the column-wise concatenation ``[X_l1, X_l2, ...]`` (``(N, D * |set|)``), its score the
inner-CV UA of the classifier on the training speakers (what ``score(candidate)`` returns;
the caller computes it, e.g. ``FoldResultCache.inner_score``).

* ``--layer auto`` (:func:`best_layer`): the single layer with the best score; ties go to
  the lower layer.
* ``--layer auto-set`` (:func:`greedy_layer_set`): forward selection of up to
  :data:`MAX_LAYERS_IN_SET` layers: start from the best single layer; at each step add the
  layer whose set scores best (ties: the set with the lower layers, compared as sorted
  tuples); stop when no addition scores strictly better than the current set. At most
  ``L + (L-1) + (L-2)`` candidates are scored for ``L`` layers (18 for whisper-base's 7).

Both are selections on the inner folds, so the winning candidate's inner score is an
optimistic estimate of its outer UA (the more candidates, the more optimistic).
"""
from __future__ import annotations

from typing import Callable, Hashable, Mapping, Sequence

import numpy as np

MAX_LAYERS_IN_SET = 3
LayerSet = tuple[int, ...]


def best_layer(scores: Mapping[int, float]) -> int:
    """The layer with the highest score (ties: the lower layer)."""
    return max(scores, key=lambda layer: (scores[layer], -layer))


def _lower_first(candidate: LayerSet) -> tuple[int, ...]:
    return tuple(-layer for layer in candidate)


def greedy_layer_set(score: Callable[[LayerSet], float], layers: Sequence[int],
                     max_size: int = MAX_LAYERS_IN_SET) -> tuple[LayerSet, dict[LayerSet, float]]:
    """Forward selection of up to ``max_size`` layers (see the module docstring). Returns the
    chosen set (sorted) and the score of every candidate scored."""
    if max_size < 1:
        raise ValueError(f"a layer set holds at least one layer, got max_size={max_size}")
    scored: dict[LayerSet, float] = {(layer,): score((layer,)) for layer in sorted(layers)}
    chosen = max(scored, key=lambda c: (scored[c], _lower_first(c)))
    while len(chosen) < min(max_size, len(layers)):
        grown = {}
        for layer in sorted(set(layers) - set(chosen)):
            candidate = tuple(sorted(chosen + (layer,)))
            grown[candidate] = scored[candidate] = score(candidate)
        best = max(grown, key=lambda c: (grown[c], _lower_first(c)))
        if grown[best] <= scored[chosen]:
            break
        chosen = best
    return chosen, scored


def stacked(matrices: Mapping[Hashable, np.ndarray], candidate: Sequence[Hashable]) -> np.ndarray:
    """``[X_l1, X_l2, ...]`` ``(N, sum D)``: the candidate's matrices side by side."""
    return np.hstack([matrices[layer] for layer in candidate])


def set_name(candidate: Sequence[int]) -> str:
    """How a set is written in results and reports: ``"2+3+5"``."""
    return "+".join(str(layer) for layer in candidate)
