"""Per-view linear SVM with C chosen on the training speakers only (docs/METHOD.md
section 7).

:class:`ViewClassifier` is equivalent to::

    GridSearchCV(Pipeline([StandardScaler(), LinearSVC(C, class_weight="balanced")]),
                 {"C": Cs}, scoring="balanced_accuracy", cv=<speaker-grouped splits>)

plus probabilities calibrated on the out-of-fold decision values of the chosen C, fitted on
the training data only, but computed much faster. With ``calibration="sigmoid"`` the
probabilities (and ``predict``) are those of
``CalibratedClassifierCV(<best pipeline>, method="sigmoid", cv=<same splits>, ensemble=False)``.

* **One pass over the inner folds.** For every inner fold the fold's scaler is fitted once and
  every C is trained on it; the out-of-fold decision values of the chosen C are exactly what
  ``CalibratedClassifierCV(ensemble=False)`` calibrates on, so they are reused.
* **One Gram matrix per inner fold, every C and class from it** (``solver="exact"``, the
  default; :mod:`binser.svm`). With an L2 penalty the SVM weight vector lies in the span of
  the training rows (plus the intercept column), so each inner fold's standardised training
  rows give one ``n x n`` Gram matrix, and every one-vs-rest problem at every C is solved
  exactly from it by an active-set Newton method (C ascending, warm-started; one
  ``(G + I/(2C))^-1`` per C shared by every class). The solution is
  the optimum of liblinear's problem up to rounding, where liblinear stops at ``tol=1e-4``.
* ``solver="liblinear"``: the previous implementation, kept as the reference (``binser bench
  --parts classifier`` times both): the standardised rows are mapped onto an orthonormal basis
  of their span (``n x r``, ``r <= n``, from the Gram matrix's eigen-decomposition; every
  inner product preserved) and ``LinearSVC`` (liblinear's dual coordinate descent,
  ``max_iter=1000``, ``tol=1e-4``) is fitted once per C. Its decision values differ from the
  exact optimum by up to about 1e-4 (EMOVO whisper-base features: at most 8e-5), and by more
  where it stops at ``max_iter``.

Choices (documented here, visible as parameters):

* ``class_weight="balanced"``: the corpora are imbalanced and UA is the headline metric.
* C: the mean over inner folds of the balanced accuracy (UA over the classes present in the
  fold) decides; ties go to the first C in ``Cs`` (the smallest, i.e. the most regularised,
  for the default ascending grid), as in ``GridSearchCV``.
* Inner splits: ``GroupKFold(min(inner_splits, #speakers))`` over ``groups`` (the training
  speakers); with fewer than 2 speakers ``StratifiedKFold(shuffle=True, random_state)``
  (``KFold`` if a class has a single utterance).
* An inner fold whose training part lacks some classes gives those classes a decision value
  of (the fold's lowest decision value - 1), so they are never predicted there; those filled
  values are left out when that class's sigmoid is calibrated.
* Calibration ``"temperature"`` (default): ``softmax(t * decision)`` with one temperature
  ``t`` fitted by log loss on the out-of-fold decision values. One scalar cannot reorder a
  row, so ``predict`` is the SVM's own prediction (the grid search's), while the scores
  become probabilities comparable across views for fusion (docs/METHOD.md section 8).
* Calibration ``"sigmoid"``: Platt's sigmoid per class (one-vs-rest) on the out-of-fold
  decision values, with Platt's target smoothing, then rows normalised to sum to 1 (binary:
  one sigmoid on the positive class, ``p0 = 1 - p1``) -- the procedure of scikit-learn's
  ``CalibratedClassifierCV(method="sigmoid")``. Per-class sigmoids fitted on out-of-fold
  decisions can reorder classes when the final model's decisions are scaled differently:
  on EMOVO LOSO with openSMILE IS10 functionals, UA fell from 34.4 % (SVM arg-max) to
  21.8 %, hence not the default.
* ``predict`` is the arg-max of the calibrated probabilities, so a single view and a fusion
  with weight 1 on that view agree.
* ``max_iter=1000`` (scikit-learn's default) liblinear iterations (``solver="liblinear"``);
  fits that stop there, or exact solves whose active set has not settled after
  :data:`binser.svm.MAX_NEWTON_STEPS` Newton steps, are counted in ``n_not_converged_``. On EMOVO's side view (13 files with identical channels
  and a mono file give all-zero Side signals: identical feature rows with different labels)
  liblinear does not converge at C >= 0.1 within 5000 iterations either; 5000 took 3x as long
  (side/global-max, 6 folds: 181 s vs 58 s) for the same chosen C and UA.
"""
from __future__ import annotations

import hashlib
import warnings
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import logsumexp, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from .errors import ConfigError
from .svm import (class_weights, linear_gram, ovr_problems, prefers_primal, solve_grid,
                  solve_grid_primal, with_intercept)
from .validation import check_choice

_EIG_RTOL = 1e-10   # Gram eigenvalues below this fraction of the largest are treated as 0
CALIBRATIONS = ("temperature", "sigmoid")
SOLVERS = ("exact", "liblinear")
Split = tuple[np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------- inner splits
def inner_splits(y: np.ndarray, groups: Sequence | None, n_splits: int,
                 random_state: int | None = 0) -> tuple[list[Split], str]:
    """Inner CV splits of the training data -> ``(splits, kind)``.

    ``kind`` is ``"group"`` (speaker-grouped, used whenever there are >= 2 speakers),
    ``"stratified"`` or ``"kfold"``. The test parts of the splits partition ``range(len(y))``.
    """
    n = len(y)
    dummy = np.zeros((n, 1))
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != n:
            raise ConfigError(f"{len(groups)} groups for {n} training utterances")
        n_groups = len(np.unique(groups))
        if n_groups >= 2:
            cv = GroupKFold(n_splits=min(n_splits, n_groups))
            return list(cv.split(dummy, y, groups)), "group"
    smallest = np.unique(y, return_counts=True)[1].min()
    if smallest >= 2:
        cv = StratifiedKFold(min(n_splits, smallest), shuffle=True, random_state=random_state)
        return list(cv.split(dummy, y)), "stratified"
    if n < 2:
        raise ConfigError("need at least 2 training utterances for the inner cross-validation")
    cv = KFold(min(n_splits, n), shuffle=True, random_state=random_state)
    return list(cv.split(dummy)), "kfold"


# ------------------------------------------------------------------------- linear SVM core
def row_space_map(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-space reduction of ``xs`` ``(n, D)`` from its Gram matrix -> ``(coords, m)``.

    ``basis = xs.T @ m`` ``(D, r)`` is an orthonormal basis of the span of the rows;
    ``coords = xs @ basis`` ``(n, r)`` are computed as ``u * sqrt(w)`` from the eigen-pairs of
    ``xs @ xs.T``, so the ``D``-dimensional basis is never formed (cost ``n^2 D``, not
    ``n^2 D + n r D``). Other rows ``x`` map to ``(x @ xs.T) @ m``.
    """
    gram = xs @ xs.T
    with threadpool_limits(limits=1, user_api="blas"):  # small eigh: threads only contend
        w, u = np.linalg.eigh(gram)
    keep = w > max(w.max(), 0.0) * _EIG_RTOL
    if not keep.any():  # all-zero data: one zero coordinate keeps the shapes valid
        return np.zeros((xs.shape[0], 1)), np.zeros((xs.shape[0], 1))
    root = np.sqrt(w[keep])
    return u[:, keep] * root, u[:, keep] / root


def row_space_basis(xs: np.ndarray) -> np.ndarray:
    """Orthonormal basis ``(D, r)`` of the span of the rows of ``xs`` ``(n, D)``."""
    coords, m = row_space_map(xs)
    if not coords.any():
        return np.eye(xs.shape[1], 1)
    return xs.T @ m


def _svc(C: float, reduced: bool, params: "ViewClassifier") -> LinearSVC:
    return LinearSVC(C=C, class_weight=params.class_weight, dual=True if reduced else "auto",
                     max_iter=params.max_iter, random_state=params.random_state)


def _decision_columns(raw: np.ndarray, present: np.ndarray, k: int) -> np.ndarray:
    """Decision values of the problems on ``present`` classes ``(n, P)`` as ``(n, k)`` in
    global columns (binary: ``[-d, d]``); classes absent from training get the lowest value
    minus 1, so they are never predicted."""
    part = np.concatenate([-raw, raw], axis=1) if len(present) == 2 else raw
    out = np.full((raw.shape[0], k), part.min() - 1.0)
    out[:, present] = part
    return out


def _one_class_decisions(n_rows: int, present: np.ndarray, k: int) -> np.ndarray:
    """A training part with one class: that class wins everywhere."""
    out = np.full((n_rows, k), -1.0)
    out[:, present] = 1.0
    return out


class _FoldData:
    """One inner fold, standardised on its training part: the Gram matrices (``solver=
    "exact"``) or the rows mapped onto the span of the training rows (``"liblinear"``)."""

    def __init__(self, X: np.ndarray, train: np.ndarray, test: np.ndarray, solver: str):
        scaler = StandardScaler().fit(X[train])
        xtr, xte = scaler.transform(X[train]), scaler.transform(X[test])
        self.solver = solver
        if solver == "exact":
            self.primal = prefers_primal(*xtr.shape)
            if self.primal:
                self.xtr, self.xte = with_intercept(xtr), with_intercept(xte)
            else:
                self.gram, self.cross = linear_gram(xtr, xte)
            return
        self.reduced = X.shape[1] > len(train)
        if self.reduced:
            coords, m = row_space_map(xtr)
            xtr, xte = coords, (xte @ xtr.T) @ m
        self.xtr, self.xte = xtr, xte


def _exact_decisions(fold: _FoldData, ytr: np.ndarray, Cs: Sequence[float], k: int,
                     params: "ViewClassifier") -> tuple[np.ndarray, int]:
    """Decision values ``(nC, n_test, k)`` of the exact solver at every C; unsettled count."""
    present = np.unique(ytr)
    n_test = fold.xte.shape[0] if fold.primal else fold.cross.shape[0]
    if len(present) < 2:
        one = _one_class_decisions(n_test, present, k)
        return np.repeat(one[None], len(Cs), axis=0), 0
    if fold.primal:
        ws, unsettled = _exact_solutions(fold.xtr, ytr, present, Cs, k, params, primal=True)
        return np.stack([_decision_columns(fold.xte @ w.T, present, k) for w in ws]), unsettled
    betas, unsettled = _exact_solutions(fold.gram, ytr, present, Cs, k, params)
    out = np.stack([_decision_columns(fold.cross @ b.T, present, k) for b in betas])
    return out, unsettled


def _exact_solutions(system: np.ndarray, codes: np.ndarray, present: np.ndarray,
                     Cs: Sequence[float], k: int, params: "ViewClassifier", primal: bool = False
                     ) -> tuple[np.ndarray, int]:
    """The one-vs-rest problems of ``present`` classes at every C with the estimator's class
    weighting: ``beta`` ``(nC, P, n)`` from the Gram matrix ``system``
    (:func:`binser.svm.solve_grid`), or, with ``primal``, weights ``(nC, P, D+1)`` (intercept
    last) from the rows ``system`` with their intercept feature
    (:func:`binser.svm.solve_grid_primal`)."""
    weights = class_weights(codes, k, params.class_weight == "balanced")
    ys, cs = ovr_problems(codes, present, weights)
    return (solve_grid_primal if primal else solve_grid)(system, ys, cs, Cs)


def _liblinear_decisions(fold: _FoldData, ytr: np.ndarray, C: float, k: int,
                         params: "ViewClassifier") -> tuple[np.ndarray, bool]:
    """Out-of-fold decision values ``(n_test, k)`` of liblinear at one C; whether it converged."""
    present = np.unique(ytr)
    if len(present) < 2:
        return _one_class_decisions(fold.xte.shape[0], present, k), True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svc = _svc(C, fold.reduced, params).fit(fold.xtr, ytr)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    raw = svc.decision_function(fold.xte)
    return _decision_columns(raw.reshape(len(raw), -1), present, k), converged


def fold_decisions(fold: _FoldData, ytr: np.ndarray, Cs: Sequence[float], k: int,
                   params: "ViewClassifier") -> tuple[np.ndarray, int]:
    """Out-of-fold decision values ``(nC, n_test, k)`` of one inner fold at every C, and the
    number of fits that did not converge."""
    if fold.solver == "exact":
        return _exact_decisions(fold, ytr, Cs, k, params)
    decs, bad = [], 0
    for C in Cs:
        dec, ok = _liblinear_decisions(fold, ytr, C, k, params)
        decs.append(dec)
        bad += not ok
    return np.stack(decs), bad


# ----------------------------------------------------------------------- Platt calibration
def fit_sigmoid(f: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Platt's sigmoid ``P(pos | f) = 1 / (1 + exp(a*f + b))`` with smoothed targets -> ``(a, b)``."""
    f = np.asarray(f, dtype=np.float64)
    scale = max(np.abs(f).max(), 1e-300)
    scale = scale if scale >= 30 else 1.0  # rescale large decisions (a is rescaled back)
    fs = f / scale
    n_pos = float(positive.sum())
    n_neg = len(positive) - n_pos
    target = np.where(positive, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def loss_grad(ab: np.ndarray) -> tuple[float, np.ndarray]:
        z = ab[0] * fs + ab[1]
        loss = np.sum(np.logaddexp(0.0, z) - (1 - target) * z)
        resid = target - _expit(-z)  # dloss/dz = target - P(pos)
        return loss, np.array([resid @ fs, resid.sum()])

    start = np.array([0.0, np.log((n_neg + 1) / (n_pos + 1))])
    res = minimize(loss_grad, start, method="L-BFGS-B", jac=True,
                   options={"gtol": 1e-6, "ftol": 64 * np.finfo(float).eps})
    return float(res.x[0] / scale), float(res.x[1])


def _expit(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def sigmoid_proba(dec: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Calibrated ``(n, k)`` probabilities from ``(n, k)`` decisions and per-class ``a, b``."""
    if len(a) == 1:  # binary: one sigmoid on the positive class (column 1)
        p1 = _expit(-(a[0] * dec[:, 1] + b[0]))
        return np.stack([1 - p1, p1], axis=1)
    p = _expit(-(dec * a + b))
    total = p.sum(axis=1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[1])
    return np.divide(p, total, out=uniform, where=total > 0)


def fit_calibration(dec: np.ndarray, codes: np.ndarray, seen: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-class Platt parameters from out-of-fold decisions ``(n, k)`` -> ``(a, b)``.

    ``seen`` ``(n, k)``: whether the fold model that scored row ``i`` was trained on class
    ``c``; class ``c``'s sigmoid is fitted on those rows only. A class with no positive
    example among its rows (e.g. all its utterances come from one speaker) borrows the mean
    ``(a, b)`` of the classes that could be calibrated, or ``(-1, 0)`` (the logistic function
    of the decision value) if none could.
    """
    k = dec.shape[1]
    seen = np.ones(dec.shape, dtype=bool) if seen is None else seen
    columns = [1] if k == 2 else list(range(k))
    params: dict[int, tuple[float, float]] = {}
    for c in columns:
        rows = seen[:, c]
        if np.any(codes[rows] == c):
            params[c] = fit_sigmoid(dec[rows, c], codes[rows] == c)
    fitted = list(params.values())
    for c in columns:
        if c not in params:
            params[c] = tuple(np.mean(fitted, axis=0)) if fitted else (-1.0, 0.0)
    return np.array([params[c][0] for c in columns]), np.array([params[c][1] for c in columns])


def fit_temperature(dec: np.ndarray, codes: np.ndarray, seen: np.ndarray | None = None
                    ) -> float:
    """Temperature ``t > 0`` of ``softmax(t * dec)`` that minimises the log loss of
    out-of-fold decisions ``(n, k)`` with true classes ``codes``.

    ``seen`` ``(n, k)``: classes the fold model that scored row ``i`` was trained on; the
    others get probability 0 (their decision is masked) and rows whose true class was not
    seen are left out. ``t = 1`` if no row is usable. One scalar for all classes, so the
    arg-max of every row -- the SVM's own prediction -- is unchanged.
    """
    seen = np.ones(dec.shape, dtype=bool) if seen is None else seen
    rows = seen[np.arange(len(codes)), codes]
    if not rows.any():
        return 1.0
    d, m, c = dec[rows], seen[rows], codes[rows]
    scale = max(float(np.abs(d[m]).max()), 1e-12)   # search log t around 1 / |largest|

    def log_loss(log_t: float) -> float:
        z = np.where(m, d * (np.exp(log_t) / scale), -np.inf)
        return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(c)), c]))

    res = minimize_scalar(log_loss, bounds=(-10.0, 10.0), method="bounded",
                          options={"xatol": 1e-6})
    return float(np.exp(res.x) / scale)


def temperature_proba(dec: np.ndarray, t: float) -> np.ndarray:
    """Probabilities ``softmax(t * dec)`` ``(n, k)`` from decisions ``(n, k)``."""
    return softmax(t * dec, axis=1)


def _fingerprint(X: np.ndarray, y: np.ndarray, groups: Sequence | None) -> str:
    """A digest of features, labels and groups (which data a search ran on)."""
    digest = hashlib.blake2b(np.ascontiguousarray(X, dtype=np.float64).tobytes(), digest_size=16)
    digest.update(np.asarray(y).astype(str).tobytes())
    digest.update(b"no groups" if groups is None else np.asarray(groups).astype(str).tobytes())
    return digest.hexdigest()


def _balanced_accuracy(codes: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``codes``."""
    return float(np.mean([np.mean(pred[codes == c] == c) for c in np.unique(codes)]))


# ------------------------------------------------------------------------------ estimator
class ViewClassifier(ClassifierMixin, BaseEstimator):
    """Standardise -> linear SVM (C by speaker-grouped inner CV) -> calibrated probabilities.

    ``fit(X, y, groups)``: ``X`` ``(N, D)`` utterance features of the TRAINING data, ``y``
    ``N`` labels, ``groups`` ``N`` speaker ids (optional). Nothing outside these is used.
    Fitted attributes: ``classes_`` (sorted), ``C_``, ``best_score_`` (mean inner-fold UA at
    ``C_``), ``cv_scores_`` (one per C), ``split_kind_``, ``n_splits_``, ``scaler_``,
    ``coef_`` ``(K, D)`` (``(1, D)`` for two classes) and ``intercept_`` on standardised
    features, ``calib_a_``/``calib_b_`` (Platt parameters), ``n_not_converged_``.
    See the module docstring for the exact procedure.
    """

    def __init__(self, Cs: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0), inner_splits: int = 3,
                 calibration: str = "temperature", class_weight: str | None = "balanced",
                 max_iter: int = 1000, random_state: int | None = 0, solver: str = "exact"):
        self.Cs = Cs
        self.inner_splits = inner_splits
        self.calibration = calibration
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state
        self.solver = solver

    # -- checks
    def _check_params(self) -> None:
        check_choice(self.calibration, CALIBRATIONS, "calibration")
        check_choice(self.solver, SOLVERS, "solver")
        if len(self.Cs) == 0 or any(not np.isfinite(c) or c <= 0 for c in self.Cs):
            raise ConfigError(f"Cs must be positive finite numbers, got {self.Cs!r}")
        if int(self.inner_splits) < 2:
            raise ConfigError(f"inner_splits must be >= 2, got {self.inner_splits!r}")

    @staticmethod
    def _check_X(X, d: int | None = None) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ConfigError(f"expected a 2-D (N, D) feature matrix, got shape {X.shape}")
        if d is not None and X.shape[1] != d:
            raise ConfigError(f"features have {X.shape[1]} dimensions, the model expects {d}")
        if not np.isfinite(X).all():
            raise ConfigError("features contain NaN or infinite values")
        return X

    # -- fitting
    def fit(self, X, y, groups: Sequence | None = None) -> "ViewClassifier":
        """Choose C by inner CV on ``(X, y, groups)``, calibrate, refit on all of ``X``
        (:meth:`search` then :meth:`refit`)."""
        return self.search(X, y, groups).refit(X, y)

    def search(self, X, y, groups: Sequence | None = None) -> "ViewClassifier":
        """The inner cross-validation alone: ``C_``, ``best_score_``, ``cv_scores_``, the
        calibration, and the out-of-fold decisions of every C (``oof_decisions_`` ``(nC, N,
        K)``, on ``inner_splits_``) -- everything :meth:`fit` does except the final model."""
        self._check_params()
        X = self._check_X(X)
        y = np.asarray(y)
        if len(y) != len(X):
            raise ConfigError(f"{len(y)} labels for {len(X)} feature rows")
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ConfigError(f"need at least 2 classes to train, found {list(self.classes_)}")
        splits, self.split_kind_ = inner_splits(codes, groups, int(self.inner_splits),
                                                self.random_state)
        self.n_splits_ = len(splits)
        with threadpool_limits(limits=1, user_api="blas"):  # small matrices: threads contend
            oof, seen, scores, self.n_not_converged_ = self._grid_search(X, codes, splits)
        best = int(np.argmax(scores))
        self.cv_scores_ = scores
        self.C_, self.best_score_ = float(self.Cs[best]), float(scores[best])
        self.inner_splits_, self.oof_decisions_ = splits, oof
        self._search_fingerprint = _fingerprint(X, y, groups)
        self.calib_a_, self.calib_b_ = self._calibration(oof[best], codes, seen)
        return self

    def _calibration(self, dec: np.ndarray, codes: np.ndarray, seen: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Calibration parameters ``(a, b)`` from out-of-fold decisions ``(N, K)``."""
        if self.calibration == "temperature":
            rows = 1 if len(self.classes_) == 2 else len(self.classes_)
            return np.full(rows, fit_temperature(dec, codes, seen)), np.zeros(rows)
        return fit_calibration(dec, codes, seen)

    def refit(self, X, y) -> "ViewClassifier":
        """The final model at ``C_`` on all of ``(X, y)`` (the data :meth:`search` saw)."""
        if not hasattr(self, "C_"):
            raise ConfigError("this ViewClassifier has not searched C yet; call search first")
        X = self._check_X(X)
        classes, codes = np.unique(np.asarray(y), return_inverse=True)
        if len(classes) != len(self.classes_) or np.any(classes != self.classes_):
            raise ConfigError("refit needs the labels the search saw")
        with threadpool_limits(limits=1, user_api="blas"):
            self._refit(X, codes)
        self.n_features_in_ = X.shape[1]
        return self

    def _grid_search(self, X: np.ndarray, codes: np.ndarray, splits: list[Split]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Out-of-fold decisions ``(nC, N, K)``, classes seen by each row's fold model
        ``(N, K)``, mean fold UA per C ``(nC,)``, number of non-converged fits."""
        k = len(self.classes_)
        oof = np.zeros((len(self.Cs), len(codes), k))
        seen = np.zeros((len(codes), k), dtype=bool)
        fold_scores = np.zeros((len(self.Cs), len(splits)))
        not_converged = 0
        for s, (train, test) in enumerate(splits):
            fold = _FoldData(X, train, test, self.solver)
            present = np.unique(codes[train])
            if len(present) >= 2:
                seen[np.ix_(test, present)] = True
            decs, bad = fold_decisions(fold, codes[train], self.Cs, k, self)
            not_converged += bad
            oof[:, test] = decs
            for i, dec in enumerate(decs):
                fold_scores[i, s] = _balanced_accuracy(codes[test], dec.argmax(1))
        return oof, seen, fold_scores.mean(axis=1), not_converged

    def _refit(self, X: np.ndarray, codes: np.ndarray) -> None:
        """Scaler and SVM at ``C_`` on all of ``X``; weights stored in ``D`` dimensions."""
        self.scaler_ = StandardScaler().fit(X)
        xs = self.scaler_.transform(X)
        if self.solver == "exact":
            self._refit_exact(xs, codes)
            return
        reduced = X.shape[1] > X.shape[0]
        coords, m = row_space_map(xs) if reduced else (xs, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            svc = _svc(self.C_, reduced, self).fit(coords, codes)
        self.n_not_converged_ += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        # back to D dimensions: coef @ basis.T = (coef @ m.T) @ xs
        self.coef_ = (svc.coef_ @ m.T) @ xs if reduced else svc.coef_.copy()
        self.intercept_ = svc.intercept_.copy()

    def _refit_exact(self, xs: np.ndarray, codes: np.ndarray) -> None:
        """``coef_``/``intercept_`` of the exact solver at ``C_`` on standardised rows."""
        primal = prefers_primal(*xs.shape)
        system = with_intercept(xs) if primal else linear_gram(xs)[0]
        solutions, unsettled = _exact_solutions(system, codes, np.unique(codes), [self.C_],
                                                len(self.classes_), self, primal)
        self.n_not_converged_ += unsettled
        if primal:
            self.coef_, self.intercept_ = solutions[0][:, :-1].copy(), solutions[0][:, -1].copy()
        else:
            self.coef_ = solutions[0] @ xs            # w = X^T beta per problem
            self.intercept_ = solutions[0].sum(axis=1)

    # -- prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise ConfigError("this ViewClassifier is not fitted yet; call fit first")

    def _decision_matrix(self, X) -> np.ndarray:
        """``(N, K)`` decision values (binary: ``[-d, d]``)."""
        self._check_fitted()
        X = self._check_X(X, self.n_features_in_)
        raw = self.scaler_.transform(X) @ self.coef_.T + self.intercept_
        return np.concatenate([-raw, raw], axis=1) if raw.shape[1] == 1 else raw

    def decision_function(self, X) -> np.ndarray:
        """SVM decision values: ``(N, K)``, or ``(N,)`` for two classes (positive = ``classes_[1]``)."""
        dec = self._decision_matrix(X)
        return dec[:, 1] if dec.shape[1] == 2 else dec

    def predict_proba(self, X) -> np.ndarray:
        """Calibrated probabilities ``(N, K)`` in ``classes_`` order; rows sum to 1."""
        return self.proba_from_decisions(self._decision_matrix(X))

    def predict(self, X) -> np.ndarray:
        """Arg-max of :meth:`predict_proba` (first class on ties)."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    # -- nested out-of-fold scores
    def oof_proba(self, X, y, groups: Sequence | None = None) -> np.ndarray:
        """Out-of-fold calibrated probabilities ``(N, K)`` for each training utterance.

        The training data are split as in :meth:`fit` (speaker-grouped when there are >= 2
        speakers); every utterance is predicted by a model fitted (C search and calibration
        included) on the other inner folds only, i.e. never by a model that saw its speaker:
        the model of fold ``s`` is ``clone(self).fit(X[train_s], ...)``. Its C and calibration
        come from its own inner search on ``X[train_s]``; its final fit at that C is the one
        the search on ``X`` already made for fold ``s`` (same rows, same standardisation),
        so its decisions are read from ``oof_decisions_`` instead of being fitted again.
        Columns follow ``np.unique(y)``; a class missing from a fold's training part gets
        probability 0 there. Uses this estimator's search when it was made on the same
        ``(X, y, groups)``, else searches a clone.
        """
        X = self._check_X(X)
        y = np.asarray(y)
        parent = self if self._searched_on(X, y, groups) else clone(self).search(X, y, groups)
        classes, codes = np.unique(y, return_inverse=True)
        out = np.zeros((len(y), len(classes)))
        for train, test in parent.inner_splits_:
            sub_groups = None if groups is None else np.asarray(groups)[train]
            model = clone(self).search(X[train], y[train], sub_groups)
            dec = parent.oof_decisions_[list(self.Cs).index(model.C_), test]
            present = np.searchsorted(classes, model.classes_)
            out[np.ix_(test, present)] = model.proba_from_decisions(dec[:, present])
        return out

    def _searched_on(self, X: np.ndarray, y: np.ndarray, groups: Sequence | None) -> bool:
        """Whether :meth:`search` ran on exactly these rows, labels and groups."""
        return getattr(self, "_search_fingerprint", None) == _fingerprint(X, y, groups)

    def proba_from_decisions(self, dec: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N, K)`` from decision values ``(N, K)``."""
        if self.calibration == "temperature":
            return temperature_proba(dec, float(self.calib_a_[0]))
        return sigmoid_proba(dec, self.calib_a_, self.calib_b_)

    # -- plain-array state (for saving without pickle)
    def get_state(self) -> dict[str, np.ndarray]:
        """Everything needed to predict, as plain numpy arrays (no objects)."""
        self._check_fitted()
        return {
            "classes": np.asarray(self.classes_).astype(str),
            "mean": self.scaler_.mean_.copy(), "scale": self.scaler_.scale_.copy(),
            "coef": self.coef_.copy(), "intercept": self.intercept_.copy(),
            "calib_a": self.calib_a_.copy(), "calib_b": self.calib_b_.copy(),
            "C": np.array(self.C_), "best_score": np.array(self.best_score_),
            "Cs": np.asarray(self.Cs, dtype=float),
            "calibration": np.array(self.calibration),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> "ViewClassifier":
        """Rebuild a fitted classifier from :meth:`get_state` output (predict-only)."""
        calibration = str(state["calibration"]) if "calibration" in state else "sigmoid"
        model = cls(Cs=tuple(float(c) for c in state["Cs"]), calibration=calibration)
        model._check_params()
        model.classes_ = np.asarray(state["classes"])
        model.scaler_ = StandardScaler()
        model.scaler_.mean_ = np.asarray(state["mean"], dtype=np.float64)
        model.scaler_.scale_ = np.asarray(state["scale"], dtype=np.float64)
        model.scaler_.var_ = model.scaler_.scale_ ** 2
        model.scaler_.n_features_in_ = model.n_features_in_ = model.scaler_.mean_.shape[0]
        model.scaler_.n_samples_seen_ = 0
        model.coef_ = np.asarray(state["coef"], dtype=np.float64)
        model.intercept_ = np.asarray(state["intercept"], dtype=np.float64)
        model.calib_a_ = np.asarray(state["calib_a"], dtype=np.float64)
        model.calib_b_ = np.asarray(state["calib_b"], dtype=np.float64)
        model.C_, model.best_score_ = float(state["C"]), float(state["best_score"])
        return model


class FeatureFusionClassifier(ViewClassifier):
    """Feature-level fusion (paper Table 7): a :class:`ViewClassifier` on concatenated views."""


def concat_features(features: Mapping[str, np.ndarray], views: Sequence[str]) -> np.ndarray:
    """Concatenate per-view ``(N, D_v)`` features in ``views`` order -> ``(N, sum D_v)``."""
    missing = [v for v in views if v not in features]
    if missing:
        raise ConfigError(f"no features for view(s) {', '.join(missing)}")
    rows = {np.shape(features[v])[0] for v in views}
    if len(rows) != 1:
        raise ConfigError(f"views have different numbers of utterances: {sorted(rows)}")
    return np.concatenate([np.asarray(features[v]) for v in views], axis=1)
