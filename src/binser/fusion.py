"""Two-stage score-level fusion of the binaural views (SPEC step 9, paper eqs. 8-10).

Scores are ``(N, K)`` arrays per view whose columns follow one shared ``classes`` order and
which are comparable across views (calibrated probabilities from
:class:`binser.classifier.ViewClassifier`).

* ``s1 = a*s_left + (1-a)*s_right``                 (eq. 8, weight ``alpha``)
* ``s2 = b*s_mid + (1-b)*s_side``                   (eq. 9, weight ``beta``)
* ``s  = g*s1 + (1-g)*s2``                          (eq. 10, weight ``gamma``)

Weights take values on :data:`GRID` (0.0, 0.1, ..., 1.0). The criterion is UA (unweighted
average recall of the arg-max class over the classes present in ``y``). Ties (UA within 1e-12
of the best among the candidates searched) are broken deterministically: first prefer the
weights closest to equal weighting, measured as the sum over the searched weights of
``|w - 0.5|`` in grid steps; then the lexicographically smallest tuple of the searched weights,
in the order ``(alpha, beta, gamma)``. The arg-max over classes breaks its own ties towards the
first class in ``classes``.

The two-view fusions (``left+right``: ``alpha``; ``mid+side``: ``beta``) search their one
weight over the 11 grid values. The four-view fusion ``left+right+mid+side`` has two searches
(:data:`SEARCHES`):

* ``staged`` (default; the paper's two stages): ``alpha`` is the ``left+right`` choice on its
  own (UA of eq. 8 alone), ``beta`` is the ``mid+side`` choice on its own (eq. 9 alone), then
  ``gamma`` is searched over the 11 grid values with ``alpha`` and ``beta`` fixed (UA of eq.
  10; ties by the rule above applied to ``gamma`` alone). 3 x 11 candidates.
* ``joint``: all 11^3 ``(alpha, beta, gamma)`` searched together on the UA of eq. 10; ties by
  the rule above over all three weights.

Either way the reported UA is the UA of eq. 10 at the chosen weights. ``joint`` reaches at
least the staged UA on the data it searches, but may pick a different ``(alpha, beta)``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .errors import ConfigError

GRID = tuple(round(0.1 * i, 1) for i in range(11))
SEARCHES = ("staged", "joint")
FUSIONS: dict[str, tuple[str, ...]] = {
    "left+right": ("left", "right"),
    "mid+side": ("mid", "side"),
    "left+right+mid+side": ("left", "right", "mid", "side"),
}
# Which weights each fusion searches, in tie-break (lexicographic) order.
_WEIGHT_NAMES = {
    "left+right": ("alpha",),
    "mid+side": ("beta",),
    "left+right+mid+side": ("alpha", "beta", "gamma"),
}
_UA_TIE_TOL = 1e-12
_CHUNK_VALUES = 4_000_000  # fused score values held at once during the grid search


def two_stage_fusion(s_left: np.ndarray, s_right: np.ndarray, s_mid: np.ndarray,
                     s_side: np.ndarray, a: float, b: float, g: float) -> np.ndarray:
    """Eqs. 8-10 on ``(N, K)`` score arrays; returns ``g*s1 + (1-g)*s2`` as ``(N, K)``."""
    s1 = a * np.asarray(s_left) + (1 - a) * np.asarray(s_right)
    s2 = b * np.asarray(s_mid) + (1 - b) * np.asarray(s_side)
    return g * s1 + (1 - g) * s2


def _check_fusion(fusion_name: str, scores: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """The views of ``fusion_name``; raise ConfigError if unknown or if scores lack a view."""
    if fusion_name not in FUSIONS:
        raise ConfigError(f"unknown fusion {fusion_name!r}; choose one of {', '.join(FUSIONS)}")
    views = FUSIONS[fusion_name]
    missing = [v for v in views if v not in scores]
    if missing:
        raise ConfigError(f"fusion {fusion_name} needs scores for view(s) {', '.join(missing)}")
    shapes = {np.shape(scores[v]) for v in views}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ConfigError(f"fusion {fusion_name}: view scores must be (N, K) arrays of one shape, "
                          f"got {sorted(shapes)}")
    return views


def fuse(scores: Mapping[str, np.ndarray], fusion_name: str,
         weights: Mapping[str, float]) -> np.ndarray:
    """Fuse per-view ``(N, K)`` scores with ``weights`` (keys as in :func:`select_weights`)."""
    _check_fusion(fusion_name, scores)
    needed = _WEIGHT_NAMES[fusion_name]
    missing = [w for w in needed if w not in weights]
    if missing:
        raise ConfigError(f"fusion {fusion_name} needs weight(s) {', '.join(missing)}")
    s = {v: np.asarray(x, dtype=np.float64) for v, x in scores.items()}
    if fusion_name == "left+right":
        a = weights["alpha"]
        return a * s["left"] + (1 - a) * s["right"]
    if fusion_name == "mid+side":
        b = weights["beta"]
        return b * s["mid"] + (1 - b) * s["side"]
    return two_stage_fusion(s["left"], s["right"], s["mid"], s["side"],
                            weights["alpha"], weights["beta"], weights["gamma"])


def _label_codes(y: Sequence, classes: Sequence) -> np.ndarray:
    """Column index of each label in ``classes``; ConfigError for unknown labels."""
    index = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([index[v] for v in y], dtype=np.int64)
    except KeyError as err:
        raise ConfigError(f"label {err.args[0]!r} is not one of the classes {list(classes)}") from None


def _ua_of_predictions(pred: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """UA of each row of ``pred`` ``(M, N)`` class indices against true ``codes`` ``(N,)``."""
    recalls = [(pred[:, codes == c] == c).mean(axis=1) for c in np.unique(codes)]
    return np.mean(recalls, axis=0)


def _pair_candidates(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``w*first + (1-w)*second`` for every ``w`` in GRID -> ``(11, N, K)``."""
    return np.stack([w * first + (1 - w) * second for w in GRID])


def _grid_ua(scores: Mapping[str, np.ndarray], fusion_name: str, codes: np.ndarray) -> np.ndarray:
    """UA for every grid point: shape ``(11,)`` for pairs, ``(11, 11, 11)`` as [a, b, g]."""
    s = {v: np.asarray(x, dtype=np.float64) for v, x in scores.items()}
    if fusion_name == "left+right":
        return _ua_of_predictions(_pair_candidates(s["left"], s["right"]).argmax(-1), codes)
    if fusion_name == "mid+side":
        return _ua_of_predictions(_pair_candidates(s["mid"], s["side"]).argmax(-1), codes)
    s1 = _pair_candidates(s["left"], s["right"])   # (11a, N, K), same arithmetic as eq. 8
    s2 = _pair_candidates(s["mid"], s["side"])     # (11b, N, K), eq. 9
    n, k = s1.shape[1:]
    rows = max(1, _CHUNK_VALUES // (11 * n * k))   # alpha values per chunk
    ua = np.empty((11, 11, 11))
    for gi, g in enumerate(GRID):
        for start in range(0, 11, rows):
            fused = g * s1[start:start + rows, None] + (1 - g) * s2[None]   # (ra, 11b, N, K)
            pred = fused.argmax(-1).reshape(-1, n)
            ua[start:start + rows, :, gi] = _ua_of_predictions(pred, codes).reshape(-1, 11)
    return ua


def _tie_break(ua: np.ndarray) -> tuple[int, ...]:
    """Grid indices of the best entry of ``ua`` (one axis per searched weight), with the
    module's tie-breaking rule."""
    ties = np.argwhere(ua >= ua.max() - _UA_TIE_TOL)              # grid indices, (m, n_w)
    key = [(int(np.abs(t - 5).sum()), tuple(int(i) for i in t)) for t in ties]
    return tuple(int(i) for i in ties[min(range(len(ties)), key=key.__getitem__)])


def _staged_search(scores: Mapping[str, np.ndarray], codes: np.ndarray
                   ) -> tuple[tuple[int, int, int], float]:
    """Grid indices ``(alpha, beta, gamma)`` of the staged search and the UA they reach."""
    (ia,) = _tie_break(_grid_ua(scores, "left+right", codes))
    (ib,) = _tie_break(_grid_ua(scores, "mid+side", codes))
    s = {v: np.asarray(scores[v], dtype=np.float64) for v in FUSIONS["left+right+mid+side"]}
    a, b = GRID[ia], GRID[ib]
    s1 = a * s["left"] + (1 - a) * s["right"]          # same arithmetic as eq. 8 in fuse
    s2 = b * s["mid"] + (1 - b) * s["side"]
    ua = _ua_of_predictions(_pair_candidates(s1, s2).argmax(-1), codes)     # (11g,)
    (ig,) = _tie_break(ua)
    return (ia, ib, ig), float(ua[ig])


def select_weights(scores: Mapping[str, np.ndarray], y: Sequence, fusion_name: str,
                   classes: Sequence, search: str = "staged") -> tuple[dict[str, float], float]:
    """Grid search of the fusion weights maximising UA on ``(scores, y)``.

    ``scores``: view -> ``(N, K)`` with columns in ``classes`` order; ``y``: ``N`` labels.
    ``search``: ``"staged"`` or ``"joint"`` (:data:`SEARCHES`; they differ only for the four
    views). Returns ``(weights, ua)``; ``weights`` has ``alpha`` (left+right), ``beta``
    (mid+side) or all of ``alpha, beta, gamma`` (four views); ``ua`` is the UA at those
    weights. Searches and ties: see the module docstring.
    """
    if search not in SEARCHES:
        raise ConfigError(f"unknown weight search {search!r}; choose one of {', '.join(SEARCHES)}")
    _check_fusion(fusion_name, scores)
    codes = _label_codes(y, classes)
    if len(codes) == 0:
        raise ConfigError("select_weights: no utterances to choose the weights on")
    if np.shape(scores[FUSIONS[fusion_name][0]]) != (len(codes), len(classes)):
        raise ConfigError(f"scores of shape {np.shape(scores[FUSIONS[fusion_name][0]])} do not "
                          f"match {len(codes)} labels and {len(classes)} classes")
    names = _WEIGHT_NAMES[fusion_name]
    if search == "staged" and len(names) == 3:
        chosen, best = _staged_search(scores, codes)
    else:
        ua = _grid_ua(scores, fusion_name, codes)
        chosen = _tie_break(ua)
        best = float(ua[chosen])
    return {name: GRID[i] for name, i in zip(names, chosen)}, best
