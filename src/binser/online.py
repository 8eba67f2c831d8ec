"""How much of a speaker's audio online speaker normalisation needs: the offline evaluation
of :class:`binser.normalisation.OnlineSpeakerNormaliser` (beyond the paper).

:func:`online_curve`, per outer fold ``(train, test)`` and view ``v``:

* training rows: each training speaker standardised over its own rows with signal
  (:func:`~binser.normalisation.speaker_normalise`, as the ``speaker-norm:`` runs), then one
  classifier (``clone(estimator)``, default
  :class:`~binser.classifier.ViewClassifier` ``(random_state=seed)``) fitted on the
  training rows with signal; the fallback (average training speaker) from the same rows;
* orders: for order ``r`` (``0..n_orders-1``) each test speaker's rows in the order
  ``numpy.random.default_rng([seed, r]).permutation`` (test speakers sorted, folds in order;
  the same order for every view);
* for each ``k`` in ``ks``: every test row standardised with the statistics of itself and
  the ``k`` rows before it in a stream of its speaker
  (:func:`~binser.normalisation.window_normalise`: the stream is the rotation of order ``r``
  that meets the row at position ``k``, so over the rotations every row is scored once per
  ``k`` and order); fewer than ``warm_up`` rows with signal: the fallback; ``prior``: the
  statistics shrunk towards the fallback (as the normaliser's). Rows without
  signal score ``1/K``;
* the views' scores combined by ``combine(scores, fold)`` (default: the one view, or the
  mean of the views' probabilities), arg-max.

``ua[k]`` is the UA over the pooled test predictions of all folds, averaged over the orders
(``ua_orders[k]`` per order). ``offline_ua``: the same classifiers with every test speaker
standardised over all of its rows (transductive; the ``speaker-norm:`` figure); for
``k >= n_s - 1`` the curve reaches it. Labels never enter the statistics or the orders.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from sklearn.base import clone

from .errors import ConfigError
from .evaluation import metrics
from .normalisation import (TRANSDUCTIVE_CAVEAT, OnlineSpeakerNormaliser, speaker_normalise,
                            window_normalise)

DEFAULT_KS = (0, 1, 2, 5, 10, 20)
DEFAULT_ORDERS = 5


def _as_views(X, mask) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    features = dict(X) if isinstance(X, Mapping) else {"features": X}
    if isinstance(mask, Mapping):
        masks = dict(mask)
    else:
        masks = {v: mask for v in features}
    out_x = {v: np.asarray(x, dtype=np.float64) for v, x in features.items()}
    n = {len(x) for x in out_x.values()}
    if len(n) != 1 or any(x.ndim != 2 for x in out_x.values()):
        raise ConfigError("online curve: features must be (N, D) arrays with one N")
    rows = n.pop()
    out_m = {v: np.ones(rows, dtype=bool) if masks.get(v) is None
             else np.asarray(masks[v], dtype=bool) for v in out_x}
    return out_x, out_m


def _orders(speakers: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]],
            seed: int, r: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, r])
    out = {}
    for _, test in folds:
        for s in sorted(set(speakers[test].tolist())):
            out[s] = rng.permutation(np.flatnonzero(speakers == s))
    return out


def online_curve(X, y: Sequence, speakers: Sequence,
                 folds: Sequence[tuple[np.ndarray, np.ndarray]], *,
                 ks: Sequence[int] = DEFAULT_KS, n_orders: int = DEFAULT_ORDERS,
                 seed: int = 0, warm_up: int = 5, prior: float = 0.0, mask=None,
                 estimator=None,
                 combine: Callable[[Mapping[str, np.ndarray], int], np.ndarray] | None = None
                 ) -> dict[str, Any]:
    """UA as a function of how many of the speaker's utterances came before (module
    docstring).

    ``X``: ``(N, D)`` raw (not normalised) utterance features, or ``{view: (N, D)}``, or a
    list of such, one per fold (e.g. each fold's chosen encoder layers);
    ``mask``: rows with signal (``(N,)`` bool or ``{view: (N,)}``; None: all); ``folds``:
    outer ``(train, test)`` index arrays whose test parts hold whole speakers. Returns
    ``dict(ks, ua, ua_orders, offline_ua, warm_up, n_orders, seed, caveat, definition)``.
    """
    from .classifier import ViewClassifier

    per_fold = list(X) if isinstance(X, (list, tuple)) else [X] * len(folds)
    if len(per_fold) != len(folds):
        raise ConfigError(f"online curve: {len(per_fold)} feature sets for {len(folds)} folds")
    y = np.asarray(y)
    speakers = np.asarray(speakers).astype(str)
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0]
    if bad or not ks or n_orders < 1:
        raise ConfigError(f"online curve: ks must be integers >= 0 and n_orders >= 1, got "
                          f"ks={list(ks)}, n_orders={n_orders}")
    OnlineSpeakerNormaliser(warm_up, prior)._check()
    for _, test in folds:
        for s in set(speakers[test].tolist()):
            if not np.isin(np.flatnonzero(speakers == s), test).all():
                raise ConfigError(f"online curve: speaker {s} is split across a fold's test "
                                  "and training rows")
    classes, codes = np.unique(y, return_inverse=True)
    n_k = len(classes)
    estimator = ViewClassifier(random_state=seed) if estimator is None else estimator
    combine = combine or (lambda scores, fold: np.mean(list(scores.values()), axis=0))
    pred = np.full((n_orders, len(ks) + 1, len(y)), -1)      # last k slot: offline
    all_orders = [_orders(speakers, folds, seed, r) for r in range(n_orders)]
    for f, (train, test) in enumerate(folds):
        features, masks = _as_views(per_fold[f], mask)
        scores = [[{} for _ in range(len(ks) + 1)] for _ in range(n_orders)]
        for view, Xv in features.items():
            m = masks[view]
            Xtrain = speaker_normalise(Xv[train], speakers[train], m[train])
            fit = m[train]
            model = clone(estimator).fit(Xtrain[fit], y[train][fit], speakers[train][fit])
            fallback = OnlineSpeakerNormaliser(warm_up).fit(Xv[train], speakers[train], m[train])
            present = np.searchsorted(classes, model.classes_)

            def score(Z: np.ndarray) -> np.ndarray:
                proba = np.zeros((len(test), n_k))
                proba[:, present] = model.predict_proba(Z[test])
                proba[~m[test]] = 1.0 / n_k
                return proba

            offline = score(speaker_normalise(Xv, speakers, m))
            tested_here = set(speakers[test].tolist())
            for r in range(n_orders):
                orders = {s: o for s, o in all_orders[r].items() if s in tested_here}
                for i, k in enumerate(ks):
                    Z = window_normalise(Xv, speakers, orders, int(k),
                                         (fallback.fallback_mean_, fallback.fallback_std_),
                                         warm_up, m, prior)
                    scores[r][i][view] = score(Z)
                scores[r][-1][view] = offline
        for r in range(n_orders):
            for i in range(len(ks) + 1):
                pred[r, i, test] = np.asarray(combine(scores[r][i], f)).argmax(axis=1)
    tested = pred[0, 0] >= 0

    def ua(p: np.ndarray) -> float:
        return metrics(classes[codes[tested]], classes[p[tested]], list(classes))["ua"]

    ua_orders = [[ua(pred[r, i]) for r in range(n_orders)] for i in range(len(ks))]
    return {"ks": [int(k) for k in ks], "ua": [float(np.mean(u)) for u in ua_orders],
            "ua_orders": ua_orders, "offline_ua": ua(pred[0, -1]), "warm_up": int(warm_up),
            "prior": float(prior),
            "n_orders": int(n_orders), "seed": int(seed), "caveat": TRANSDUCTIVE_CAVEAT,
            "definition": "UA when each test utterance is standardised with the statistics "
                          "of itself and the k utterances of its speaker before it in a "
                          "random order (binser.online)"}


def plot_online_curve(curve: Mapping[str, Any], out_png: str | Path, title: str = "") -> Path:
    """UA (%) against k (utterances of the speaker before), the range over orders shaded,
    the offline (transductive) UA as a dashed line; PNG at ``out_png``."""
    from .plots import _save, plt

    ks = np.asarray(curve["ks"])
    ua = 100 * np.asarray(curve["ua"])
    per_order = 100 * np.asarray(curve["ua_orders"])
    fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    ax.fill_between(ks, per_order.min(axis=1), per_order.max(axis=1), alpha=0.25,
                    label=f"range over {curve['n_orders']} orders")
    prior = f", prior {curve['prior']:g}" if curve.get("prior") else ""
    ax.plot(ks, ua, marker="o", label=f"online (warm-up {curve['warm_up']}{prior})")
    ax.axhline(100 * curve["offline_ua"], linestyle="--", color="k",
               label="offline (all utterances)")
    ax.set_xlabel("utterances of the speaker before")
    ax.set_ylabel("UA (%)")
    ax.legend(fontsize=8)
    return _save(fig, ax, out_png, title)
