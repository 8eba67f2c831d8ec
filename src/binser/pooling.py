"""Segment-level features -> utterance-level features (docs/METHOD.md section 6,
eqs. M11-M12; paper eqs. 3-7).

Every transformer here takes a list of ``N`` arrays, one per utterance, each of shape
``(n_i, d)`` (``n_i >= 1`` segments in time order, ``d`` features per segment) and returns
one ``(N, D)`` float32 matrix. They are stateless scikit-learn transformers: ``fit`` only
records ``d`` so that ``transform`` can check later inputs.

Exact definitions (all per feature dimension):

* ``dX``, the first-order regression of ``X`` along time:
  ``dX[t] = (X[t+1] - X[t-1]) / 2`` with edge replication ``X[-1] := X[0]`` and
  ``X[n] := X[n-1]``; for ``n == 1`` this gives zeros.
* block ``b`` (0-based) of ``l`` covers segments ``[floor(b*n/l), floor((b+1)*n/l))``; if that
  range is empty (only possible when ``n < l``) the block is the single segment at
  ``min(floor(b*n/l), n-1)``. Every block is non-empty, so any ``n >= 1`` is defined.
* ``BlockTemporalPooling(blocks=l)`` output order:
  ``[pool(X_1), ..., pool(X_l), pool(dX_1), ..., pool(dX_l)]``, each part ``d`` values,
  so ``D = 2*l*d``.
* ``BlockTemporalPooling(absolute=True)`` pools ``|X|`` and ``|dX|`` instead of ``X`` and
  ``dX``: the paper's eqs. 6-7 write ``max |x_j|``. binser's default is the signed values
  (for ReLU features ``X >= 0`` the two differ only in ``dX``); RESULTS.md compares both.
* ``BlockTemporalPooling(levels=L)`` concatenates the single-level outputs for
  ``l = 1, 2, ..., L`` in that order (``D = 2*d*(1+2+...+L)``); ``blocks`` is ignored.
* ``StatsPooling`` (``stats``, beyond the paper; the usual pooling for speech encoders):
  ``[mean(X), std(X)]`` over all segments or frames, population standard deviation
  (``ddof=0``, so ``n == 1`` gives zeros), ``D = 2*d``. ``StatsPooling(blocks=l)``
  (``block-stats``): ``[mean(X_1), std(X_1), ..., mean(X_l), std(X_l)]`` over the same
  blocks as above (``D = 2*l*d``; no ``dX`` part: the standard deviation already describes
  the movement within a block).

:func:`pool_utterances` pools a list that may contain views without signal: an utterance
with ``n_i == 0`` rows (a silent view, see :func:`binser.views.silent_views`) gets a row of
zeros and is flagged in the returned mask.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .errors import BinserError, ConfigError
from .validation import check_choice

PAPER_POOLINGS = ("global-max", "global-avg", "block-max", "block-avg")
POOLINGS = PAPER_POOLINGS + ("stats", "block-stats")
_KINDS = ("max", "avg")


class PoolingInputError(BinserError, ValueError):
    """The segment features handed to a pooling transformer are malformed (e.g. empty)."""


def _check_kind(kind: str) -> None:
    check_choice(kind, _KINDS, "pooling kind")


def _check_segments(X: Sequence[np.ndarray], d: int | None = None,
                    dtype: type = np.float64) -> list[np.ndarray]:
    """Validate a list of ``(n_i, d)`` arrays (``n_i >= 1``, same ``d``); return them as
    ``dtype`` (float64 copies by default)."""
    if isinstance(X, np.ndarray) and X.ndim == 2:
        raise PoolingInputError("expected a list of (n_i, d) arrays, one per utterance, "
                                "got a single 2-D array")
    out = []
    for i, x in enumerate(X):
        a = np.asarray(x, dtype=dtype)
        if a.ndim != 2:
            raise PoolingInputError(f"utterance {i}: expected a 2-D (n, d) array, got shape {a.shape}")
        if a.shape[0] == 0:
            raise PoolingInputError(f"utterance {i}: no segments (n == 0), cannot pool")
        if d is not None and a.shape[1] != d:
            raise PoolingInputError(f"utterance {i}: feature size {a.shape[1]}, expected {d}")
        d = a.shape[1]
        out.append(a)
    if not out:
        raise PoolingInputError("no utterances to pool")
    return out


def temporal_delta(x: np.ndarray) -> np.ndarray:
    """First-order regression along time: ``(X[t+1] - X[t-1]) / 2``, edges replicated.

    ``x``: ``(n, d)``; returns ``(n, d)`` (zeros when ``n == 1``).
    """
    padded = np.concatenate([x[:1], x, x[-1:]], axis=0)
    return (padded[2:] - padded[:-2]) / 2.0


def block_bounds(n: int, l: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of the ``l`` consecutive blocks of ``n >= 1`` segments (never empty)."""
    bounds = []
    for b in range(l):
        start, stop = (b * n) // l, ((b + 1) * n) // l
        if stop <= start:
            start = min(start, n - 1)
            stop = start + 1
        bounds.append((start, stop))
    return bounds


def _pool(x: np.ndarray, kind: str) -> np.ndarray:
    """Pool ``(m, d)`` over its rows -> ``(d,)``."""
    return x.max(axis=0) if kind == "max" else x.mean(axis=0)


def block_pool(x: np.ndarray, l: int, kind: str, absolute: bool = False) -> np.ndarray:
    """One utterance ``(n, d)`` -> ``(2*l*d,)``: blocks of ``X`` then blocks of ``dX``
    (of ``|X|`` and ``|dX|`` with ``absolute``, eqs. 6-7)."""
    dx = temporal_delta(x)
    if absolute:
        x, dx = np.abs(x), np.abs(dx)
    bounds = block_bounds(x.shape[0], l)
    parts = [_pool(x[s:e], kind) for s, e in bounds] + [_pool(dx[s:e], kind) for s, e in bounds]
    return np.concatenate(parts)


class _SegmentPooling(TransformerMixin, BaseEstimator):
    """Shared ``fit`` / input checks; subclasses implement ``_pool_one``."""

    def fit(self, X: Sequence[np.ndarray], y=None) -> "_SegmentPooling":
        """Check the inputs and record the segment feature size ``segment_dim_``."""
        self._check_params()
        self.segment_dim_ = _check_segments(X)[0].shape[1]
        return self

    def transform(self, X: Sequence[np.ndarray]) -> np.ndarray:
        """List of ``(n_i, d)`` arrays -> ``(N, D)`` float32 (works without ``fit`` too)."""
        self._check_params()
        arrays = _check_segments(X, getattr(self, "segment_dim_", None))
        return np.stack([self._pool_one(a) for a in arrays]).astype(np.float32)

    def _check_params(self) -> None:
        _check_kind(self.kind)

    def _pool_one(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class GlobalPooling(_SegmentPooling):
    """Max or mean over all segments of an utterance, per dimension (``D = d``)."""

    def __init__(self, kind: str = "max"):
        self.kind = kind

    def _pool_one(self, x: np.ndarray) -> np.ndarray:
        return _pool(x, self.kind)


class BlockTemporalPooling(_SegmentPooling):
    """Block-based temporal pooling (paper eqs. 3-7); see the module docstring for the order.

    ``blocks=l`` gives ``D = 2*l*d``; ``levels=L`` gives ``D = 2*d*(1+...+L)``.
    """

    def __init__(self, kind: str = "max", blocks: int = 2, levels: int | None = None,
                 absolute: bool = False):
        self.kind = kind
        self.blocks = blocks
        self.levels = levels
        self.absolute = absolute

    def _check_params(self) -> None:
        _check_kind(self.kind)
        for name in ("blocks", "levels"):
            value = getattr(self, name)
            if value is None and name == "levels":
                continue
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")

    def block_counts(self) -> list[int]:
        """The ``l`` values whose outputs are concatenated, in output order."""
        return list(range(1, self.levels + 1)) if self.levels is not None else [self.blocks]

    def _pool_one(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([block_pool(x, l, self.kind, self.absolute)
                               for l in self.block_counts()])


class StatsPooling(_SegmentPooling):
    """Mean and standard deviation per dimension over all segments (``blocks=1``, ``D = 2*d``)
    or per block (``D = 2*blocks*d``); see the module docstring for the order."""

    def __init__(self, blocks: int = 1):
        self.blocks = blocks

    def _check_params(self) -> None:
        if not isinstance(self.blocks, (int, np.integer)) or isinstance(self.blocks, bool) \
                or self.blocks < 1:
            raise ConfigError(f"blocks must be an integer >= 1, got {self.blocks!r}")

    def _pool_one(self, x: np.ndarray) -> np.ndarray:
        parts = []
        for start, stop in block_bounds(x.shape[0], self.blocks):
            parts += [x[start:stop].mean(axis=0), x[start:stop].std(axis=0)]
        return np.concatenate(parts)


def pool_utterances(pooling: _SegmentPooling, X: Sequence[np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Pool utterances some of which may have no rows (silent views).

    Returns ``(features (N, D) float32, silent (N,) bool)``: rows of utterances with
    ``n_i == 0`` are zeros and flagged ``True``. Raises :class:`PoolingInputError` when every
    utterance is empty (the feature size ``D`` is then still known, but nothing can be
    learned from it; callers treat such a view as absent).
    """
    silent = np.array([np.shape(x)[0] == 0 for x in X], dtype=bool)
    if silent.all():
        raise PoolingInputError("every utterance is empty (a view without signal)")
    present = [x for x, s in zip(X, silent) if not s]
    pooled = pooling.fit_transform(present)
    out = np.zeros((len(X), pooled.shape[1]), dtype=np.float32)
    out[~silent] = pooled
    return out, silent


def make_pooling(name: str, blocks: int = 2, levels: int | None = None,
                 absolute: bool = False) -> _SegmentPooling:
    """Pooling transformer by run name: one of :data:`POOLINGS` (``absolute``: block
    pooling of ``|X|``, ``|dX|``)."""
    check_choice(name, POOLINGS, "pooling")
    if name == "stats":
        return StatsPooling(blocks=1)
    if name == "block-stats":
        return StatsPooling(blocks=blocks)
    family, kind = name.split("-")
    if family == "global":
        return GlobalPooling(kind=kind)
    return BlockTemporalPooling(kind=kind, blocks=blocks, levels=levels, absolute=absolute)
