"""``binser bench --parts classifier``: the classifier stage's cost, exact solver vs liblinear.

Two measurements, both wall time on this machine, both solvers run one after the other in the
same process (so a loaded machine slows both):

* :func:`study_stage_speed`: the default EMOVO study's classifier stage (``run_folds`` on the
  pooled whisper-base features of every view, pooling and layer, ``--layer auto``, nested
  fusion, feature fusion), with ``solver="exact"`` and with ``solver="liblinear"`` (the
  previous implementation), classifier cache off; the ratio and whether every run's
  predictions and fold choices agree.
* :func:`growth`: the cost of one feature matrix's classifier work in one outer fold (inner-CV
  search, final fit, nested out-of-fold scores) on synthetic features of EMOVO's shape (six
  speakers, seven classes balanced within every speaker, 1,024 dimensions) for 294 to 2,940
  utterances (EMOVO's 588 halved, doubled and five-fold); a table
  and the slope of log(seconds) against log(utterances) (least squares). Beside it the
  *floor* of an exact dual solver for the same fits (:func:`exact_floor_seconds`: one Gram
  matrix per fit and one factorisation per value of C, nothing per class), which bounds how
  flat the exact solver's growth can be.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import numpy as np

GROWTH_SIZES = (294, 588, 1176, 2940)          # 6 speakers x 7 classes x 7, 14, 28, 70
GROWTH_SIZES_QUICK = (294, 588, 1176)


def synthetic_features(n: int, dim: int = 1024, n_classes: int = 7, n_speakers: int = 6,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X (n, dim), y (n,), speakers (n,))``: balanced classes within every speaker (as in
    EMOVO), a weak class signal, a speaker offset, correlated dimensions."""
    rng = np.random.default_rng(seed)
    speakers = np.repeat(np.arange(n_speakers), -(-n // n_speakers))[:n]
    y = np.concatenate([np.arange(np.sum(speakers == s)) % n_classes for s in range(n_speakers)])
    mixing = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    X = (rng.standard_normal((n, dim)) + 0.25 * rng.standard_normal((n_classes, dim))[y]
         + 0.5 * rng.standard_normal((n_speakers, dim))[speakers]) @ mixing
    return X, y, speakers


def matrix_stage_seconds(X: np.ndarray, y: np.ndarray, speakers: np.ndarray, solver: str,
                         seed: int = 0) -> float:
    """Seconds for one matrix in the first LOSO fold: search, final fit, nested scores."""
    from threadpoolctl import threadpool_limits

    from .experiment import FoldResultCache

    train, test = np.flatnonzero(speakers != speakers[0]), np.flatnonzero(speakers == speakers[0])
    cache = FoldResultCache(None, y, speakers, train, test, seed, int(y.max()) + 1, solver)
    start = time.perf_counter()
    with threadpool_limits(1):
        cache.fit_predict(X)
        cache.oof_proba(X)
    return time.perf_counter() - start


def fit_sizes(y: np.ndarray, speakers: np.ndarray) -> list[tuple[int, int]]:
    """``(training rows, values of C)`` of every SVM fit :func:`matrix_stage_seconds` makes in
    the first LOSO fold with :class:`~binser.classifier.ViewClassifier`'s defaults (its
    ``Cs`` and ``inner_splits``): the search's inner fits (every C), the nested searches'
    inner fits on each inner training part (every C), the final fit (one C). (The nested
    scores' final fits reuse the search's, so they are not listed.)"""
    from .classifier import ViewClassifier, inner_splits

    defaults = ViewClassifier()
    n_cs, n_splits = len(defaults.Cs), int(defaults.inner_splits)
    train = np.flatnonzero(speakers != speakers[0])
    y_tr, g_tr = y[train], speakers[train]
    sizes = [(len(train), 1)]
    for part, _ in inner_splits(y_tr, g_tr, n_splits)[0]:
        sizes.append((len(part), n_cs))
        for sub, _ in inner_splits(y_tr[part], g_tr[part], n_splits)[0]:
            sizes.append((len(sub), n_cs))
    return sizes


def exact_floor_seconds(sizes: Sequence[tuple[int, int]], dim: int = 1024, seed: int = 0
                        ) -> float:
    """Seconds, one thread, of the least work any exact solver of the dual problem does for
    these fits: per fit the solver's Gram matrix of its rows (:func:`binser.svm.linear_gram`)
    and, per value of C, its shared inverse (:class:`binser.svm.RegularisedInverse`); nothing
    per class or per Newton step. Each distinct size is timed once (best of 2)."""
    from threadpoolctl import threadpool_limits

    from .svm import RegularisedInverse, linear_gram

    rng = np.random.default_rng(seed)
    timed: dict[int, tuple[float, float]] = {}
    with threadpool_limits(1):
        for n, _ in sizes:
            if n in timed:
                continue
            x = rng.standard_normal((n, dim))
            gram_s = inverse_s = np.inf
            for _ in range(2):
                start = time.perf_counter()
                gram, _ = linear_gram(x)
                mid = time.perf_counter()
                RegularisedInverse(gram, 1.0).matrix
                end = time.perf_counter()
                gram_s, inverse_s = min(gram_s, mid - start), min(inverse_s, end - mid)
            timed[n] = (gram_s, inverse_s)
    return float(sum(timed[n][0] + cs * timed[n][1] for n, cs in sizes))


def loglog_slope(sizes: Sequence[int], seconds: Sequence[float]) -> float:
    """Least-squares slope of log(seconds) against log(sizes)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def growth(sizes: Sequence[int] = GROWTH_SIZES, solvers: Sequence[str] = ("exact", "liblinear"),
           liblinear_up_to: int = 1200, progress: Callable[[str], None] | None = None
           ) -> dict[str, Any]:
    """Seconds per size and solver (liblinear only up to ``liblinear_up_to`` utterances: it
    takes minutes beyond), the exact solver's floor (:func:`exact_floor_seconds`, key
    ``"floor"``), and each one's log-log slope over the sizes it ran."""
    rows = []
    for n in sizes:
        X, y, speakers = synthetic_features(n)
        row: dict[str, Any] = {"utterances": n}
        for solver in solvers:
            if solver == "liblinear" and n > liblinear_up_to:
                row[solver] = None
                continue
            row[solver] = matrix_stage_seconds(X, y, speakers, solver)
            if progress:
                progress(f"classifier growth: {n} utterances, {solver}: {row[solver]:.2f} s")
        row["floor"] = exact_floor_seconds(fit_sizes(y, speakers))
        rows.append(row)
    slopes = {}
    for solver in (*solvers, "floor"):
        pts = [(r["utterances"], r[solver]) for r in rows if r.get(solver)]
        slopes[solver] = loglog_slope(*zip(*pts)) if len(pts) >= 2 else None
    return {"rows": rows, "slope": slopes}


def study_stage_speed(root: str, weights: str, cache_dir: str | None = None,
                      folds: int | None = None, progress: bool = True) -> dict[str, Any]:
    """The default EMOVO study's classifier stage with both solvers (see module docstring).
    Features come from (or go into) the pooled-feature cache at ``cache_dir``; ``folds``
    limits the outer folds (``--quick``)."""
    from .corpora import corpus as load_corpus
    from .evaluation import folds as make_folds
    from .experiment import (ExperimentSettings, cached_study_features, load_backbone,
                             run_folds)

    settings = ExperimentSettings(dataset="emovo", root=str(root), backbone="whisper-base",
                                  weights=str(weights), cache_dir=cache_dir)
    settings.validate()
    corpus = load_corpus("emovo", str(root))
    # no console lines here (stdout carries --json); extraction bars go to stderr
    pooled = cached_study_features(corpus, settings, load_backbone(settings), progress=False)
    classes = list(corpus.labels)
    y = np.array([classes.index(u.label) for u in corpus])
    speakers = np.array([u.speaker for u in corpus])
    fold_list = make_folds(list(speakers), settings.protocol, [u.split for u in corpus])
    fold_list = fold_list[:folds] if folds else fold_list
    out: dict[str, Any] = {"folds": len(fold_list), "utterances": len(y)}
    runs = {}
    for solver in ("exact", "liblinear"):
        stage = dataclasses.replace(settings, cache_dir=None, solver=solver)
        start = time.perf_counter()
        runs[solver], _ = run_folds(pooled, y, speakers, fold_list, stage, len(classes),
                                    progress=progress)
        out[f"{solver}_s"] = time.perf_counter() - start
    out["speedup"] = out["liblinear_s"] / out["exact_s"]
    out["runs"] = len(runs["exact"])
    out["identical_runs"] = sum(
        np.array_equal(runs["exact"][name].predicted, runs["liblinear"][name].predicted)
        and runs["exact"][name].fold_extra == runs["liblinear"][name].fold_extra
        for name in runs["exact"])
    return out
