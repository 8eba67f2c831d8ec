"""One outer fold and all of them: :class:`FoldResultCache` (each matrix's inner-CV search
once per fold, outputs cached), the layer choice, :func:`evaluate_fold` (views x poolings,
``best-view``, nested score fusions, feature fusions, the prosody stage), :func:`run_folds`
(folds in parallel) and the oracle fusions."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..cache import FeatureCache, file_sha256, update_with_array
from ..classifier import concat_features, ViewClassifier
from ..fusion import FOUR_VIEWS, fuse, FUSIONS, PROSODY, PROSODY_FUSION, select_weights
from ..layer_choice import best_layer, greedy_layer_set, set_name
from ..runnames import RunName
from .settings import ExperimentSettings
from .features import as_per_fold, as_pooled, PooledFeatures


@dataclass
class RunPredictions:
    """Pooled test predictions of one run, plus what each fold chose."""

    name: str
    predicted: np.ndarray                 # (N,) class indices, -1 where not tested
    extra: dict[str, Any] = field(default_factory=dict)
    fold_extra: list[dict[str, Any]] = field(default_factory=list)


def full_columns(proba: np.ndarray, classes_seen: np.ndarray, n_classes: int) -> np.ndarray:
    """Scatter probabilities over the classes a fold saw into all ``n_classes`` columns (a
    class absent from a training fold gets 0)."""
    full = np.zeros((len(proba), n_classes))
    full[:, np.asarray(classes_seen, dtype=int)] = proba
    return full


class FoldResultCache:
    """Classifier outputs of one outer fold: computed once (one inner-CV search per feature
    matrix, shared by the layer choice, the run, and the nested fusion scores) and cached on
    disk (float64, bit-exact reruns).

    An entry's key hashes everything its value depends on: the feature matrix, the rows
    without signal, the labels, the speakers, the fold's train/test indices, the
    classifier's parameters (solver included) and seed and the source of
    :mod:`binser.classifier` and :mod:`binser.svm`; so a rerun with the same inputs skips the
    SVMs and any change (another solver, edited solver code) recomputes. Entries live under
    ``<cache_dir>/classifier``; ``cache_dir=None`` disables the disk cache. Within the fold,
    each matrix's search (:meth:`ViewClassifier.search`) is kept in memory: the layer choice
    needs only its inner-CV score, the run adds the final fit, and the nested fusion scores
    reuse its per-inner-fold fits (:meth:`ViewClassifier.oof_proba`).

    Rows flagged in ``silent`` (a view without signal in that file) are left out of training
    and get uniform probabilities ``1/K`` at test time: in a score fusion they shift every
    class equally, so the other views decide.
    """

    FORMAT = "binser-fold-results-v3"

    def __init__(self, cache_dir: str | Path | None, y: np.ndarray, groups: np.ndarray,
                 train: np.ndarray, test: np.ndarray, seed: int, n_classes: int,
                 solver: str = "exact"):
        from .. import classifier, svm

        self.y, self.groups, self.train, self.test = y, groups, train, test
        self.seed, self.n_classes, self.solver = seed, n_classes, solver
        self.store = (FeatureCache(Path(cache_dir) / "classifier", dtype=np.float64)
                      if cache_dir is not None else None)
        self._searched: dict[str, ViewClassifier] = {}
        self._digests: dict[int, tuple[np.ndarray, bytes]] = {}
        self._context = hashlib.sha256()
        params = self._new_classifier().get_params()
        self._context.update(json.dumps([self.FORMAT, file_sha256(classifier.__file__),
                                         file_sha256(svm.__file__),
                                         repr(sorted(params.items())), n_classes]).encode())
        for array in (y, np.asarray(groups).astype(str), train, test):
            update_with_array(self._context, array)

    def _new_classifier(self) -> ViewClassifier:
        return ViewClassifier(random_state=self.seed, solver=self.solver)

    def _key(self, what: str, X: np.ndarray, silent: np.ndarray) -> str:
        digest = self._context.copy()
        digest.update(what.encode())
        digest.update(self._array_digest(X))
        update_with_array(digest, silent)
        return digest.hexdigest()[:40]

    def _array_digest(self, X: np.ndarray) -> bytes:
        """sha256 of a feature matrix, computed once per matrix and fold (each matrix is
        looked up several times: search, inner score, final fit, nested scores); the matrix
        is held with its digest, so its ``id`` is not reused while cached."""
        held = self._digests.get(id(X))
        if held is None or held[0] is not X:
            digest = hashlib.sha256()
            update_with_array(digest, X)
            held = self._digests[id(X)] = (X, digest.digest())
        return held[1]

    def _stored(self, what: str, X: np.ndarray, silent: np.ndarray, rows: int
                ) -> np.ndarray | None:
        if self.store is None:
            return None
        value = self.store.get(self._key(what, X, silent), self.n_classes)
        return value if value is not None and len(value) == rows else None

    def _cached(self, what: str, X: np.ndarray, silent: np.ndarray, rows: int,
                compute: Callable[[], np.ndarray]) -> np.ndarray:
        value = self._stored(what, X, silent, rows)
        if value is None:
            value = compute()
            if self.store is not None:
                self.store.put(self._key(what, X, silent), value)
        return value

    def _silent(self, X: np.ndarray, silent: np.ndarray | None) -> np.ndarray:
        return np.zeros(len(X), dtype=bool) if silent is None else np.asarray(silent, bool)

    def _used(self, silent: np.ndarray) -> np.ndarray:
        """The training rows with signal."""
        return self.train[~silent[self.train]]

    def searched(self, X: np.ndarray, silent: np.ndarray) -> ViewClassifier:
        """The inner-CV search on the training rows with signal (kept for this fold)."""
        key = self._key("search", X, silent)
        if key not in self._searched:
            used = self._used(silent)
            self._searched[key] = self._new_classifier().search(
                X[used], self.y[used], self.groups[used])
        return self._searched[key]

    def inner_score(self, X: np.ndarray, silent: np.ndarray | None = None) -> tuple[float, float]:
        """C and inner-CV score (mean UA over the inner folds at C, training speakers only)
        of the classifier :meth:`fit_predict` would fit, without its final fit."""
        silent = self._silent(X, silent)
        done = self._stored("fit_predict", X, silent, len(self.test) + 1)
        if done is not None:
            return float(done[0, 0]), float(done[0, 1])

        def compute() -> np.ndarray:
            clf = self.searched(X, silent)
            first = np.zeros((1, self.n_classes))
            first[0, :2] = clf.C_, clf.best_score_
            return first

        value = self._cached("inner_score", X, silent, 1, compute)
        return float(value[0, 0]), float(value[0, 1])

    def fit_predict(self, X: np.ndarray, silent: np.ndarray | None = None
                    ) -> tuple[np.ndarray, float, float]:
        """Test probabilities ``(n_test, K)`` of a classifier fitted on the training fold's
        rows with signal, its C and its inner-CV score (mean UA over the inner folds at C,
        training speakers only)."""
        silent = self._silent(X, silent)

        def compute() -> np.ndarray:
            used = self._used(silent)
            clf = self.searched(X, silent).refit(X[used], self.y[used])
            proba = full_columns(clf.predict_proba(X[self.test]), clf.classes_, self.n_classes)
            proba[silent[self.test]] = 1.0 / self.n_classes
            first = np.zeros((1, self.n_classes))
            first[0, :2] = clf.C_, clf.best_score_   # row 0: C and inner-CV score
            return np.vstack([first, proba])

        value = self._cached("fit_predict", X, silent, len(self.test) + 1, compute)
        return value[1:], float(value[0, 0]), float(value[0, 1])

    def oof_proba(self, X: np.ndarray, silent: np.ndarray | None = None) -> np.ndarray:
        """Out-of-fold probabilities ``(n_train, K)`` over the training speakers (nested
        fusion weights); rows without signal get ``1/K``."""
        silent = self._silent(X, silent)
        train = self.train

        def compute() -> np.ndarray:
            out = np.full((len(train), self.n_classes), 1.0 / self.n_classes)
            rows = ~silent[train]
            used = train[rows]
            proba = self.searched(X, silent).oof_proba(X[used], self.y[used], self.groups[used])
            out[rows] = full_columns(proba, np.unique(self.y[used]), self.n_classes)
            return out

        return self._cached("oof_proba", X, silent, len(train), compute)


def fusions_for(views: Sequence[str], absent: Sequence[str] = ()) -> dict[str, tuple[str, ...]]:
    """The score/feature fusions whose views were all computed, with absent views (no signal
    in the whole corpus) left out; a fusion left with one view is dropped."""
    out = {}
    for name, vs in FUSIONS.items():
        if all(v in views for v in vs):
            present = tuple(v for v in vs if v not in absent)
            if len(present) >= 2:
                out[name] = present
    return out


def choose_layers(pooled: PooledFeatures, cache: FoldResultCache, views: Sequence[str],
                  pooling: str, sets: bool = False) -> dict[str, Any]:
    """``--layer auto``: per view, the layer whose classifier at ``pooling`` has the best
    inner-CV UA on the training speakers (:func:`binser.layer_choice.best_layer`). With
    ``sets`` (``--layer auto-set``): the greedy set of up to 3 layers
    (:func:`binser.layer_choice.greedy_layer_set`; a tuple, or one layer when no set beats
    it). Also returns the inner-CV score of every single layer under ``"scores"`` and, with
    ``sets``, of every larger set scored under ``"set_scores"`` (keys like ``"2+3"``)."""
    chosen: dict[str, Any] = {"scores": {}, "set_scores": {}}
    for view in views:
        def score(candidate: tuple[int, ...]) -> float:
            X = pooled.matrix((view, pooling), candidate if len(candidate) > 1 else candidate[0])
            return cache.inner_score(X, pooled.silent.get(view))[1]

        if sets:
            best, scored = greedy_layer_set(score, sorted(pooled.by_layer))
            chosen[view] = best if len(best) > 1 else best[0]
            chosen["set_scores"][view] = {set_name(c): v for c, v in scored.items() if len(c) > 1}
            singles = {c[0]: v for c, v in scored.items() if len(c) == 1}
        else:
            singles = {layer: score((layer,)) for layer in sorted(pooled.by_layer)}
            chosen[view] = best_layer(singles)
        chosen["scores"][view] = {str(k): v for k, v in singles.items()}
    return chosen


def evaluate_fold(pooled: PooledFeatures, y: np.ndarray, groups: np.ndarray,
                  train: np.ndarray, test: np.ndarray, settings: ExperimentSettings,
                  n_classes: int) -> tuple[dict[str, tuple[np.ndarray, dict]], dict[str, np.ndarray]]:
    """One outer fold: every view x pooling, the best view chosen on the training speakers,
    nested score fusion, feature fusion.

    Everything here is fitted on ``train`` only. Returns run name -> (predicted class indices
    of ``test``, what the fold chose), and the test probabilities of the fusion views.
    """
    from threadpoolctl import threadpool_limits

    pooled = as_pooled(pooled)
    out: dict[str, tuple[np.ndarray, dict]] = {}
    test_proba: dict[str, np.ndarray] = {}
    fusion_pooling = settings.resolved_fusion_pooling()
    views = [v for v in settings.views if v not in pooled.absent]
    fusion_views = [v for v in views if any(v in members for members in FUSIONS.values())]
    cache = FoldResultCache(settings.cache_dir, y, groups, train, test, settings.seed, n_classes,
                            settings.solver)
    no_rows = np.zeros(len(y), dtype=bool)
    with threadpool_limits(1):    # liblinear is serial; folds run in parallel instead
        layer_of: dict[str, Any] = {}
        if pooled.auto:
            layer_of = choose_layers(pooled, cache, views, fusion_pooling,
                                     sets=settings.resolved_layer() == "auto-set")
        features = {key: pooled.matrix(key, layer_of[key[0]]) if key[0] in layer_of else X
                    for key, X in pooled.layer_features().items()}
        silent = {key: pooled.silent.get(key[0], no_rows) for key in features}
        inner: dict[str, float] = {}
        prosody_key, prosody_test = settings.prosody_key(), None
        for (view, pooling), X in features.items():
            if view in pooled.absent:
                continue
            proba, C, score = cache.fit_predict(X, silent[(view, pooling)])
            chosen: dict[str, Any] = {"C": C}
            if view in layer_of:
                chosen.update(layer=layer_of[view], layer_scores=layer_of["scores"][view])
                if view in layer_of["set_scores"]:
                    chosen["layer_set_scores"] = layer_of["set_scores"][view]
            out[f"{view}/{pooling}"] = (proba.argmax(axis=1), chosen)
            if view in settings.views:
                inner[f"{view}/{pooling}"] = score
            if pooling == fusion_pooling and view in fusion_views:
                test_proba[view] = proba
            if (view, pooling) == prosody_key:   # the functionals alone: the prosody scores
                prosody_test = proba
        if inner:   # the honest single-view comparator: chosen on the training speakers
            best = max(inner, key=lambda name: (inner[name], -list(inner).index(name)))
            out["best-view"] = (out[best][0], {"choice": best, "inner_ua": inner[best]})
        # Nested fusion weights: out-of-fold scores over the training speakers only.
        oof = {view: cache.oof_proba(features[(view, fusion_pooling)], pooled.silent.get(view))
               for view in fusion_views}
        uniform = np.full((len(train), n_classes), 1.0 / n_classes)
        for name, present in fusions_for(settings.views, pooled.absent).items():
            scores = {v: oof.get(v, uniform) for v in FUSIONS[name]}
            weights, _ = select_weights(scores, y[train], name, list(range(n_classes)),
                                        search=settings.fusion_search)
            test_scores = {v: test_proba.get(v, np.full((len(test), n_classes), 1.0 / n_classes))
                           for v in FUSIONS[name]}
            fused = fuse(test_scores, name, weights)
            out[f"score-fusion/{name}"] = (fused.argmax(axis=1), {"weights": weights})
            Xcat = concat_features({v: features[(v, fusion_pooling)] for v in present}, present)
            proba, C, _ = cache.fit_predict(Xcat)
            out[f"feature-fusion/{name}"] = (proba.argmax(axis=1), {"C": C})
        if prosody_test is not None and FOUR_VIEWS in fusions_for(settings.views):
            out.update(prosody_stage(cache.oof_proba(features[prosody_key]), prosody_test,
                                     oof, test_proba, y[train], settings.fusion_search))
    return out, test_proba


def prosody_stage(prosody_oof: np.ndarray, prosody_test: np.ndarray,
                  oof: Mapping[str, np.ndarray], test_proba: Mapping[str, np.ndarray],
                  y_train: np.ndarray, search: str = "staged"
                  ) -> dict[str, tuple[np.ndarray, dict]]:
    """``--prosody``: the four-view fusion grown by the prosody view (the openSMILE
    functionals' classifier: out-of-fold probabilities ``prosody_oof`` of the training rows,
    test probabilities ``prosody_test``) as its last stage, ``s_+ = eta*s + (1-eta)*
    s_prosody`` (docs/METHOD.md M20), every weight (``alpha, beta, gamma`` and ``eta``) chosen
    on the training speakers' out-of-fold scores like the other fusions'. Returns the run
    ``score-fusion/left+right+mid+side+prosody``."""
    names, n_classes = FUSIONS[PROSODY_FUSION], prosody_test.shape[1]
    scores = {v: oof.get(v, np.full_like(prosody_oof, 1.0 / n_classes))
              for v in names if v != PROSODY}
    scores[PROSODY] = prosody_oof
    weights, _ = select_weights(scores, y_train, PROSODY_FUSION, list(range(n_classes)),
                                search=search)
    test = {v: test_proba.get(v, np.full_like(prosody_test, 1.0 / n_classes))
            for v in names if v != PROSODY}
    test[PROSODY] = prosody_test
    fused = fuse(test, PROSODY_FUSION, weights)
    return {f"score-fusion/{PROSODY_FUSION}": (fused.argmax(axis=1), {"weights": weights})}


def default_jobs(n_folds: int) -> int:
    """Folds evaluated at once: one per core, at most one per fold."""
    return max(1, min(os.cpu_count() or 1, n_folds))


def run_folds(pooled: PooledFeatures | Sequence[PooledFeatures], y: np.ndarray, groups: np.ndarray,
              fold_list: Sequence[tuple[np.ndarray, np.ndarray]], settings: ExperimentSettings,
              n_classes: int, progress: bool = True, n_jobs: int | None = None,
              executor=None) -> tuple[dict[str, RunPredictions], dict[str, np.ndarray]]:
    """Cross-validate every single view x pooling, nested score fusion and feature fusion,
    folds in parallel processes.

    ``pooled``: utterance features for all folds (frozen mode), or one per fold (fine-tuned
    mode: each fold's networks saw only its training speakers).
    Returns the runs (keyed by run name) and, for the oracle fusion, the pooled test
    probabilities of each view at the fusion pooling. ``executor`` (default:
    ``settings.executor``): where the folds run (joblib processes or Ray tasks).
    """
    from ..executors import executor_for
    from ..progress import bar as progress_bar

    executor = executor or executor_for(settings)
    n = len(y)
    runs: dict[str, RunPredictions] = {}
    test_proba: dict[str, np.ndarray] = {}
    jobs = n_jobs or default_jobs(len(fold_list))
    per_fold = as_per_fold(pooled, len(fold_list))
    outcomes = executor.map_folds(
        evaluate_fold, [(fold_pooled, y, groups, train, test, settings, n_classes)
                        for fold_pooled, (train, test) in zip(per_fold, fold_list)], jobs)
    bar = progress_bar(total=len(fold_list), desc="folds", unit="fold", enabled=progress)
    for (train, test), (fold_runs, fold_proba) in zip(fold_list, outcomes):
        for name, (predicted, chosen) in fold_runs.items():
            r = runs.setdefault(name, RunPredictions(name, np.full(n, -1, dtype=int)))
            r.predicted[test] = predicted
            r.fold_extra.append(chosen)
            if name.startswith("score-fusion/"):
                r.extra["selection"] = "nested"
        for view, proba in fold_proba.items():
            test_proba.setdefault(view, np.zeros((n, n_classes)))[test] = proba
        bar.update()
    bar.close()
    return runs, test_proba


def oracle_fusions(test_proba: dict[str, np.ndarray], y: np.ndarray, n_classes: int,
                   tested: np.ndarray, fusions: Mapping[str, tuple[str, ...]],
                   search: str = "staged") -> dict[str, RunPredictions]:
    """The paper's weight choice: the grid point that scores best on the pooled test data
    (views absent from the corpus get uniform scores, so their weight has no effect)."""
    out = {}
    uniform = np.full((int(tested.sum()), n_classes), 1.0 / n_classes)
    for name in fusions:
        scores = {v: test_proba[v][tested] if v in test_proba else uniform
                  for v in FUSIONS[name]}
        weights, _ = select_weights(scores, y[tested], name, list(range(n_classes)),
                                    search=search)
        predicted = np.full(len(y), -1, dtype=int)
        predicted[tested] = fuse(scores, name, weights).argmax(axis=1)
        run_name = str(RunName.score_fusion(name, oracle=True))
        out[run_name] = RunPredictions(
            run_name, predicted,
            extra={"selection": "oracle", "weights": weights})
    return out
