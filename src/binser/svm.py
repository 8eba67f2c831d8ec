"""Exact linear L2-loss SVMs on a shared Gram matrix: every C and every one-vs-rest class of one
training set from one ``n x n`` matrix (the classifier stage's solver, docs/METHOD.md section 7).

Problem (liblinear's ``L2R_L2LOSS_SVC``, what ``LinearSVC(loss="squared_hinge", dual=True)``
solves, intercept as a regularised constant feature of value 1)::

    min_w  1/2 ||w||^2 + sum_i c_i * max(0, 1 - y_i * w.x~_i)^2       x~_i = [x_i, 1]    (S1)

with ``y_i`` in {-1, +1} and ``c_i = C * weight``: one-vs-rest for ``K > 2`` classes (class
``k`` positive with ``C * w_k``, every other row negative with ``C``, as liblinear weights
them), one problem for two classes (class 1 positive with ``C * w_1``, class 0 ``C * w_0``).
The optimum is unique (the objective is strictly convex) and lies in the span of the rows,
``w = sum_i beta_i x~_i``, so it is found from the Gram matrix ``G = X X^T + 1`` alone:

* **Active-set Newton** (Keerthi and DeCoste's finite Newton method, written in ``beta``):
  with ``S = {i : y_i o_i < 1}`` at the current outputs ``o = G beta``, the objective restricted
  to ``S`` is quadratic and its minimiser is ``beta_S = (G_SS + diag(1 / (2 c_S)))^-1 y_S``,
  ``beta_{not S} = 0``; an exact line search on the convex piecewise-quadratic objective
  between the current point and that minimiser follows. The method stops when the active set
  of the new point is the one it was solved on (then the KKT conditions hold exactly:
  ``y_i beta_i = 2 c_i (1 - y_i o_i) > 0`` on ``S``, ``y_i o_i >= 1`` and ``beta_i = 0`` off it),
  so the result is the optimum up to floating-point rounding, not a tolerance.
* One Gram matrix per training set serves every C and every class; the C grid is solved in
  ascending order, each C starting from the previous C's solution; one ``(G + I/(2C))^-1`` per
  C serves every class (rows weighted other than C, and rows off the active set, through
  small Woodbury / block-inverse corrections); where those corrections would be larger than
  the active set, a Cholesky factor of the active block is used instead.

Outputs of new rows ``Z``: ``(Z X^T + 1) beta``; weights in feature space: ``w = X^T beta``
(``(n, D)`` rows), intercept ``sum_i beta_i``.

liblinear stops its dual coordinate descent at a tolerance (``tol=1e-4``) or after
``max_iter`` passes, so its decision values differ from the exact optimum by about that
tolerance (far more where it stops at ``max_iter``); the tests compare with
``LinearSVC(tol=1e-10)`` as an independent reference.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.linalg import cho_factor, cho_solve, lapack, lu_factor, lu_solve

MAX_NEWTON_STEPS = 200      # a safeguard: the method ends in a handful of steps in practice


def linear_gram(xtr: np.ndarray, xte: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``G = xtr xtr^T + 1`` ``(n, n)`` and, if ``xte`` is given, ``xte xtr^T + 1`` ``(m, n)``
    (the constant 1 is the intercept feature)."""
    gram = xtr @ xtr.T + 1.0
    cross = None if xte is None else xte @ xtr.T + 1.0
    return gram, cross


def class_weights(codes: np.ndarray, n_classes: int, balanced: bool) -> np.ndarray:
    """Per-class weights ``(n_classes,)``: ``n / (K_present * n_k)`` (scikit-learn's
    ``"balanced"``, over the classes present) or ones; absent classes get 0."""
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    if not balanced:
        return np.ones(n_classes)
    present = counts > 0
    out = np.zeros(n_classes)
    out[present] = len(codes) / (present.sum() * counts[present])
    return out


def ovr_problems(codes: np.ndarray, present: np.ndarray, weights: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``(P, n)`` in {-1, +1} and per-row weights ``(P, n)`` (to be multiplied by C) of
    the binary problems for the classes ``present`` (sorted codes): one problem (class
    ``present[1]`` positive) for two classes, one per class otherwise (see module docstring)."""
    if len(present) == 2:
        y = np.where(codes == present[1], 1.0, -1.0)
        return y[None, :], weights[codes][None, :]
    ys = np.stack([np.where(codes == k, 1.0, -1.0) for k in present])
    cs = np.where(ys > 0, weights[present][:, None], 1.0)
    return ys, cs


def line_search(beta: np.ndarray, d: np.ndarray, o: np.ndarray, od: np.ndarray,
                y: np.ndarray, c: np.ndarray) -> float:
    """Exact minimiser ``t >= 0`` of the convex piecewise quadratic ``f(beta + t d)`` (``o =
    G beta``, ``od = G d``).

    ``f'(t) = d.o + t d.od - 2 sum_{i: r_i(t) > 0} c_i s_i r_i(t)`` with ``s_i = y_i od_i`` and
    ``r_i(t) = 1 - y_i o_i - t s_i`` is continuous, piecewise linear and non-decreasing; its
    pieces end where some ``r_i`` changes sign (``t = (1 - y_i o_i) / s_i``). The breakpoints
    are sorted and the piece holding the root is found from running sums of the curvature."""
    return step_length(float(d @ o), float(d @ od), o, od, y, c)   # d^T G beta, d^T G d


def step_length(a0: float, a1: float, o: np.ndarray, od: np.ndarray, y: np.ndarray,
                c: np.ndarray) -> float:
    """:func:`line_search` from the regulariser's slope ``a0 = dw.w`` and curvature ``a1 =
    dw.dw`` along the step and the outputs ``o`` and their change ``od`` (dual or primal)."""
    r0 = 1.0 - y * o
    s = y * od
    # rows active just after t = 0: r0 > 0, or r0 == 0 and r growing (s < 0)
    active = (r0 > 0) | ((r0 == 0) & (s < 0))
    slope0 = a0 - 2.0 * np.dot(c[active] * s[active], r0[active])
    curve0 = a1 + 2.0 * np.dot(c[active] * s[active], s[active])
    # breakpoints t_i > 0 where row i leaves (active, s > 0) or enters (inactive, s < 0)
    moving = (active & (s > 0)) | (~active & (s < 0))
    idx = np.flatnonzero(moving)
    tb = r0[idx] / s[idx]
    keep = tb > 0
    idx, tb = idx[keep], tb[keep]
    order = np.argsort(tb, kind="stable")
    idx, times = idx[order], tb[order]
    # crossing a breakpoint changes the curvature by -2 c s^2 (leaves) or +2 c s^2 (enters)
    dcurve = np.where(active[idx], -2.0, 2.0) * c[idx] * s[idx] ** 2
    curves = curve0 + np.concatenate([[0.0], np.cumsum(dcurve)])
    starts = np.concatenate([[0.0], times])
    slopes = slope0 + np.concatenate([[0.0], np.cumsum(curves[:-1] * np.diff(starts))])
    ends = np.concatenate([times, [np.inf]])
    # first piece whose end slope is >= 0 holds the root
    end_slopes = slopes + curves * np.where(np.isfinite(ends), ends - starts, 0.0)
    for k in np.flatnonzero((end_slopes >= 0) | ~np.isfinite(ends)):
        if slopes[k] >= 0:
            return float(starts[k])
        if curves[k] > 0:
            return float(starts[k] - slopes[k] / curves[k])
    return float(starts[-1])


def _solve_active(gram: np.ndarray, active: np.ndarray, y: np.ndarray, c: np.ndarray,
                  factors: dict, inverse: "RegularisedInverse | None" = None) -> np.ndarray:
    """Minimiser ``(n,)`` of the objective restricted to ``active`` (zero elsewhere):
    ``beta_S = (G_SS + diag(1 / (2 c_S)))^-1 y_S``.

    With ``inverse`` ``H = (G + I / (2 C))^-1`` and few inactive rows ``N`` plus active rows
    ``V`` weighted other than ``C`` (a class weight != 1), from blocks of ``H``: ``B = G +
    I/(2C) + E_V`` (``E`` the extra diagonal ``1/(2 c_i) - 1/(2C)`` on ``V``) has the inverse
    ``K = H - H_:V (E_V^-1 + H_VV)^-1 H_V:`` (Woodbury), and ``beta_S = z_S - (K_:N K_NN^-1
    z_N)_S`` with ``z = K [y_S; 0]`` (the inverse of a principal block), costing about
    ``n |N| |V| + |N|^3 + |V|^3`` instead of ``|S|^3``. Otherwise a Cholesky factor of the
    block, shared through ``factors`` by problems with the same active set and weights."""
    out = np.zeros(len(y))
    inactive = np.flatnonzero(~active)
    if inverse is not None:
        extra = 0.5 / c - 0.5 / inverse.C
        weighted = np.flatnonzero(active & (extra != 0.0))
        small = len(inactive) + len(weighted) < active.sum()
        if small and (len(inactive) or len(weighted) or inverse.ready):
            z = _woodbury_solve(inverse.matrix, active, y, extra, weighted, inactive)
            out[active] = z[active]
            return out
    key = (active.tobytes(), c[active].tobytes())
    if key not in factors:
        block = gram[np.ix_(active, active)]          # a new array: safe to overwrite
        block[np.diag_indices_from(block)] += 0.5 / c[active]
        factors[key] = cho_factor(block, lower=True, overwrite_a=True, check_finite=False)
    out[active] = cho_solve(factors[key], y[active], check_finite=False)
    return out


def _woodbury_solve(h: np.ndarray, active: np.ndarray, y: np.ndarray, extra: np.ndarray,
                    weighted: np.ndarray, inactive: np.ndarray) -> np.ndarray:
    """``z`` ``(n,)`` whose active part is ``beta_S`` (see :func:`_solve_active`)."""
    rhs = np.where(active, y, 0.0)
    if len(weighted):
        hv = h[:, weighted]
        capacitance = lu_factor(np.diag(1.0 / extra[weighted]) + hv[weighted],
                                check_finite=False)

        def k_times(v: np.ndarray) -> np.ndarray:        # K v
            hv_v = h @ v
            return hv_v - hv @ lu_solve(capacitance, hv_v[weighted], check_finite=False)

        def k_columns(idx: np.ndarray) -> np.ndarray:    # K[:, idx]
            cols = h[:, idx]
            return cols - hv @ lu_solve(capacitance, cols[weighted], check_finite=False)
    else:
        def k_times(v: np.ndarray) -> np.ndarray:
            return h @ v

        def k_columns(idx: np.ndarray) -> np.ndarray:
            return h[:, idx]
    z = k_times(rhs)
    if len(inactive):
        kn = k_columns(inactive)
        block = cho_factor(kn[inactive], lower=True, check_finite=False)
        z = z - kn @ cho_solve(block, z[inactive], check_finite=False)
    return z


class RegularisedInverse:
    """``H = (G + I / (2 C))^-1`` ``(n, n)`` for the problems of one C (every class), computed
    on first use (LAPACK ``potrf`` + ``potri``) and then shared by them."""

    def __init__(self, gram: np.ndarray, C: float):
        self.gram, self.C = gram, C
        self._matrix: np.ndarray | None = None

    @property
    def ready(self) -> bool:
        return self._matrix is not None

    @property
    def matrix(self) -> np.ndarray:
        if self._matrix is None:
            block = self.gram.copy()
            block[np.diag_indices_from(block)] += 0.5 / self.C
            factor, info = lapack.dpotrf(block, lower=True, clean=True, overwrite_a=True)
            if info == 0:
                inverse, info = lapack.dpotri(factor, lower=True, overwrite_c=True)
            if info != 0:
                raise np.linalg.LinAlgError(f"G + I/(2C) is not positive definite (info {info})")
            upper = inverse.T.copy()                  # potri fills the lower triangle only
            upper[np.diag_indices_from(upper)] = 0.0
            self._matrix = inverse + upper
        return self._matrix


def _settled(margins: np.ndarray, active: np.ndarray) -> bool:
    """Whether ``active`` is the active set at these margins (rows within rounding of the
    margin, ``|1 - y o| <= 1e-9``, may sit on either side)."""
    changed = (margins < 1.0) != active
    return not changed.any() or bool(np.all(np.abs(1.0 - margins[changed]) <= 1e-9))


def solve_squared_hinge(gram: np.ndarray, y: np.ndarray, c: np.ndarray,
                        beta: np.ndarray | None = None, factors: dict | None = None,
                        inverse: RegularisedInverse | None = None) -> tuple[np.ndarray, bool]:
    """Exact solution ``beta`` ``(n,)`` of problem (S1) for one binary problem; also whether
    the active set settled within :data:`MAX_NEWTON_STEPS`. ``beta``: a warm start;
    ``inverse``: the :class:`RegularisedInverse` of this C (any weights ``c_i``)."""
    factors = {} if factors is None else factors
    beta = np.zeros(len(y)) if beta is None else beta.copy()
    o = gram @ beta
    for _ in range(MAX_NEWTON_STEPS):
        active = y * o < 1.0
        target = (_solve_active(gram, active, y, c, factors, inverse) if active.any()
                  else np.zeros(len(y)))      # no active row: the minimiser is w = 0
        o_target = gram @ target                # target is 0 off the active set
        if _settled(y * o_target, active):   # the target meets its own active set: optimal
            return target, True
        d, od = target - beta, o_target - o
        t = line_search(beta, d, o, od, y, c)
        beta = beta + t * d
        o = o + t * od
    return beta, False


def solve_grid(gram: np.ndarray, ys: np.ndarray, cs: np.ndarray, Cs: Sequence[float]
               ) -> tuple[np.ndarray, int]:
    """Solutions ``(len(Cs), P, n)`` of every problem (rows of ``ys``/``cs``, see
    :func:`ovr_problems`) at every C (``c_i = C * cs``), and the number that did not settle.
    Solved in ascending C, each from the previous C's solution."""
    betas = np.zeros((len(Cs), len(ys), gram.shape[0]))
    not_settled = 0
    previous = [None] * len(ys)
    for i in np.argsort(np.asarray(Cs, dtype=float), kind="stable"):
        factors: dict = {}
        inverse = RegularisedInverse(gram, Cs[i])
        for p, (y, c) in enumerate(zip(ys, cs)):
            beta, ok = solve_squared_hinge(gram, y, Cs[i] * c, previous[p], factors,
                                           inverse)
            betas[i, p] = previous[p] = beta
            not_settled += not ok
    return betas, not_settled


# ------------------------------------------------------------------ more rows than dimensions
#
# With many more training rows than feature dimensions (see prefers_primal) the same problem
# (S1) is solved in feature space: the active-set Newton step is w_S = (I + 2 X~_S^T C_S X~_S)^-1 2 X~_S^T
# C_S y_S (a (D+1) x (D+1) system, built from the smaller of the active and inactive rows and
# the problem's weighted scatter matrix), the line search is the same (regulariser slope dw.w,
# curvature dw.dw). The optimum is the same unique point, so the two paths agree up to
# rounding; the cost per step is min(|S|, |N|) D^2 + D^3 / 3, linear in n.


def with_intercept(x: np.ndarray) -> np.ndarray:
    """``[x, 1]`` ``(n, D + 1)``: the rows with the constant intercept feature."""
    return np.hstack([x, np.ones((len(x), 1))])


def prefers_primal(n_rows: int, n_features: int) -> bool:
    """Whether the feature-space path is the cheaper one: more than three rows per dimension
    of ``[x, 1]`` (measured on one core: 12x faster at 1,200 x 88, level at 1,200 x 400, 2-7x
    slower at 1,200-2,450 x 1,024, where each of its about five Newton steps per problem
    factorises a new ``(D+1)^2`` system while the Gram path shares one inverse per C)."""
    return n_rows > 3 * (n_features + 1)


def weighted_scatters(xt: np.ndarray, cs: np.ndarray) -> np.ndarray:
    """``B_p = xt^T diag(cs_p) xt`` ``(P, D+1, D+1)`` for every problem (rows of ``cs``), from
    one scatter matrix per group of rows weighted alike in every problem (the classes)."""
    patterns, group = np.unique(cs.T, axis=0, return_inverse=True)
    group = np.asarray(group).ravel()
    scatters = np.stack([xt[group == g].T @ xt[group == g] for g in range(len(patterns))])
    return np.einsum("gp,gij->pij", patterns, scatters)


def _solve_active_primal(xt: np.ndarray, active: np.ndarray, y: np.ndarray, c: np.ndarray,
                         scatter: np.ndarray) -> np.ndarray:
    """``w_S = (I + 2 X~_S^T C_S X~_S)^-1 2 X~_S^T C_S y_S`` ``(D+1,)``; ``scatter`` is
    ``X~^T diag(c) X~`` over all rows (``c`` already scaled by C)."""
    inactive = ~active
    if inactive.sum() < active.sum():
        rows = xt[inactive]
        system = 2.0 * (scatter - (rows.T * c[inactive]) @ rows)
    else:
        rows = xt[active]
        system = 2.0 * (rows.T * c[active]) @ rows
    system[np.diag_indices_from(system)] += 1.0
    rhs = 2.0 * (xt[active].T @ (c[active] * y[active]))
    factor = cho_factor(system, lower=True, overwrite_a=True, check_finite=False)
    return cho_solve(factor, rhs, check_finite=False)


def solve_squared_hinge_primal(xt: np.ndarray, y: np.ndarray, c: np.ndarray,
                               scatter: np.ndarray, w: np.ndarray | None = None
                               ) -> tuple[np.ndarray, bool]:
    """Exact solution ``w`` ``(D+1,)`` (intercept last) of problem (S1) for one binary problem
    in feature space; also whether the active set settled. ``xt``: rows with the intercept
    feature; ``scatter``: ``xt^T diag(c) xt``; ``w``: a warm start."""
    w = np.zeros(xt.shape[1]) if w is None else w.copy()
    o = xt @ w
    for _ in range(MAX_NEWTON_STEPS):
        active = y * o < 1.0
        target = (_solve_active_primal(xt, active, y, c, scatter) if active.any()
                  else np.zeros(xt.shape[1]))
        o_target = xt @ target
        if _settled(y * o_target, active):
            return target, True
        dw, od = target - w, o_target - o
        t = step_length(float(dw @ w), float(dw @ dw), o, od, y, c)
        w = w + t * dw
        o = o + t * od
    return w, False


def solve_grid_primal(xt: np.ndarray, ys: np.ndarray, cs: np.ndarray, Cs: Sequence[float]
                      ) -> tuple[np.ndarray, int]:
    """:func:`solve_grid` in feature space: weights ``(len(Cs), P, D+1)`` (intercept last) of
    every problem at every C, and the number that did not settle; ``xt`` from
    :func:`with_intercept`."""
    scatters = weighted_scatters(xt, cs)
    ws = np.zeros((len(Cs), len(ys), xt.shape[1]))
    not_settled = 0
    previous = [None] * len(ys)
    for i in np.argsort(np.asarray(Cs, dtype=float), kind="stable"):
        for p, (y, c) in enumerate(zip(ys, cs)):
            w, ok = solve_squared_hinge_primal(xt, y, Cs[i] * c, Cs[i] * scatters[p],
                                               previous[p])
            ws[i, p] = previous[p] = w
            not_settled += not ok
    return ws, not_settled
