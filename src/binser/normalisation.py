"""Speaker normalisation of utterance-level features (beyond the paper; between pooling and
the classifier).

Definition: for speaker ``s`` with utterance-level rows ``X_s`` (``n_s x D``, only rows that
carry signal, see ``mask``), ``mu_s = mean(X_s)`` and ``sd_s = std(X_s)`` (population,
``ddof=0``) per dimension; every row ``x`` of that speaker becomes ``(x - mu_s) / sd_s``,
where ``sd_s < 1e-8`` (a constant dimension, or a single utterance) counts as 1. Rows that
carry no signal (``mask`` False) become 0.

Labels are never used, so the statistics of a *test* speaker come from that speaker's own
unlabelled utterances: the evaluation is transductive (it needs a batch of the test
speaker's recordings) but label-free, and every output built on it says so
(:data:`TRANSDUCTIVE_CAVEAT`; :mod:`binser.deployment` measures what a deployment with a
few of the speaker's recordings, or none, gets instead).

It removes what is constant within a speaker (voice, microphone, level). It helps where each
speaker shows several emotions (acted corpora such as EMOVO, every actor all seven) and
destroys the signal where each speaker shows one (talk shows, most speakers one label):
:func:`label_coverage` measures that, and ``scan``/``experiment`` warn when coverage is low.

:class:`SpeakerNormaliser` is the same operation as an estimator for prediction: ``fit``
keeps the statistics of the training speakers and a fallback (the mean over training
speakers of ``mu_s`` and ``sd_s``: an "average speaker") for a speaker with fewer than
``min_utterances`` utterances at prediction time.

:class:`OnlineSpeakerNormaliser` is the streaming form (``predict --online`` within a call,
``binser stream``, the server's streams; :meth:`binser.model.Model.online_statistics`): per
key (a speaker, a stream or a stream's channel; one normaliser per view)
running statistics of the rows with signal seen so far. Each new row is first added to its
key's statistics (so the statistics hold the earlier rows and the row itself, never a later
one), then standardised with them once they hold at least ``warm_up`` rows, else with the
average-training-speaker fallback (as :class:`SpeakerNormaliser` for a speaker with fewer
than ``min_utterances``). After all of a speaker's ``n`` rows, the last row is standardised
exactly as :func:`speaker_normalise` standardises it (up to rounding). Optionally
(``prior = m > 0``) the statistics of ``n`` rows are shrunk towards the fallback as if ``m``
rows of the average training speaker were added: ``mean = (n mu + m mu_f) / (n + m)``,
``var = (n (sd^2 + (mu - mean)^2) + m (sd_f^2 + (mu_f - mean)^2)) / (n + m)`` (the pooled
variance of the two groups), so the gain starts before the warm-up and the last row of a
speaker is no longer exactly the offline one.
:func:`window_normalise` is the same rule for a whole evaluation at once (every row with
``k`` predecessors in a given order); :mod:`binser.online` turns it into the UA curve.
"""
from __future__ import annotations

import threading
from typing import Hashable, Mapping, Sequence

import numpy as np

from .errors import ConfigError

STD_FLOOR = 1e-8
# Beside every speaker-normalised figure (README, RESULTS, report rows and claims).
TRANSDUCTIVE_CAVEAT = "transductive: uses all of the test speaker's recordings"
LOW_COVERAGE = 0.5   # warn when speakers show on average fewer than this share of the labels


class SpeakerAssumptionWarning(UserWarning):
    """A speaker-normalised model was given several files without speaker information and
    treated them as one speaker."""


def one_speaker_assumption(n_files: int, min_utterances: int, online: bool = False) -> str:
    """What ``predict`` assumed for ``n_files`` files given without speaker information
    (``online``: ``predict --online``, running statistics in the order given)."""
    how = (f"statistics over all {n_files} files" if n_files >= min_utterances else
           f"fewer than {min_utterances} files, so the average training speaker's statistics")
    if online:
        how = ("online: running statistics of the files in the order given, the average "
               f"training speaker's for the first {min_utterances - 1}")
    return (f"speaker normalisation: {n_files} files given without speaker information "
            f"(--speaker/--speakers); assumed they are ONE speaker ({how}); files of "
            "different speakers then share wrong statistics: name the speakers")


def speaker_statistics(X: np.ndarray, speakers: Sequence, mask: np.ndarray | None = None
                       ) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """``{speaker: (mean (D,), std (D,), n_rows)}`` over each speaker's rows with ``mask``.

    A speaker whose rows are all masked out gets mean 0, std 1 and ``n_rows`` 0.
    """
    X = np.asarray(X, dtype=np.float64)
    speakers = np.asarray(speakers).astype(str)
    if X.ndim != 2 or len(speakers) != len(X):
        raise ConfigError(f"speaker normalisation needs (N, D) features and N speakers, got "
                          f"{X.shape} and {len(speakers)}")
    mask = np.ones(len(X), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    out = {}
    for s in np.unique(speakers):
        rows = X[(speakers == s) & mask]
        if len(rows) == 0:
            out[str(s)] = (np.zeros(X.shape[1]), np.ones(X.shape[1]), 0)
            continue
        sd = rows.std(axis=0)
        out[str(s)] = (rows.mean(axis=0), np.where(sd < STD_FLOOR, 1.0, sd), len(rows))
    return out


def apply_statistics(X: np.ndarray, speakers: Sequence,
                     stats: Mapping[str, tuple[np.ndarray, np.ndarray, int]],
                     mask: np.ndarray | None = None) -> np.ndarray:
    """Standardise each row with its speaker's ``(mean, std)`` -> ``(N, D)`` float64;
    masked-out rows become 0."""
    X = np.asarray(X, dtype=np.float64)
    speakers = np.asarray(speakers).astype(str)
    out = np.zeros_like(X)
    mask = np.ones(len(X), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    for s in np.unique(speakers):
        rows = (speakers == s) & mask
        mean, sd, _ = stats[str(s)]
        out[rows] = (X[rows] - mean) / sd
    return out


def speaker_normalise(X: np.ndarray, speakers: Sequence, mask: np.ndarray | None = None
                      ) -> np.ndarray:
    """Every row standardised over its own speaker's rows (see the module docstring)."""
    return apply_statistics(X, speakers, speaker_statistics(X, speakers, mask), mask)


def label_coverage(labels: Sequence, speakers: Sequence) -> dict[str, float]:
    """Share of the corpus's labels each speaker shows -> ``{speaker: fraction}``."""
    labels, speakers = np.asarray(labels).astype(str), np.asarray(speakers).astype(str)
    n_labels = len(np.unique(labels))
    return {str(s): len(np.unique(labels[speakers == s])) / n_labels
            for s in np.unique(speakers)}


def coverage_warning(labels: Sequence, speakers: Sequence) -> str | None:
    """A one-line warning when speakers cover few labels (speaker normalisation would remove
    the emotion along with the speaker), else None."""
    coverage = label_coverage(labels, speakers)
    mean = float(np.mean(list(coverage.values()))) if coverage else 1.0
    single = sum(1 for c in coverage.values() if c * len(set(map(str, labels))) <= 1)
    if mean >= LOW_COVERAGE:
        return None
    return (f"speakers show on average {100 * mean:.0f}% of the labels ({single} of "
            f"{len(coverage)} speakers a single label): speaker normalisation would remove "
            "the emotion with the speaker; read the speaker-norm: runs with care")


class SpeakerNormaliser:
    """Per-speaker standardisation as an estimator (for a trained model's prediction).

    ``fit(X, speakers, mask)`` keeps each training speaker's statistics and the fallback
    (mean over speakers of their means and standard deviations). ``transform(X, speakers,
    mask)`` uses the statistics of the rows given for each speaker when there are at least
    ``min_utterances`` of them, else the fallback; ``fallback_speakers_`` lists the speakers
    of the last ``transform`` that used it.
    """

    def __init__(self, min_utterances: int = 5):
        self.min_utterances = min_utterances

    def fit(self, X: np.ndarray, speakers: Sequence, mask: np.ndarray | None = None
            ) -> "SpeakerNormaliser":
        stats = speaker_statistics(X, speakers, mask)
        used = [v for v in stats.values() if v[2] > 0]
        if not used:
            raise ConfigError("speaker normalisation: no rows with signal to fit on")
        self.fallback_mean_ = np.mean([m for m, _, _ in used], axis=0)
        self.fallback_std_ = np.mean([s for _, s, _ in used], axis=0)
        return self

    def transform(self, X: np.ndarray, speakers: Sequence, mask: np.ndarray | None = None
                  ) -> np.ndarray:
        if not hasattr(self, "fallback_mean_"):
            raise ConfigError("this SpeakerNormaliser is not fitted yet; call fit first")
        stats = speaker_statistics(X, speakers, mask)
        self.fallback_speakers_ = sorted(s for s, v in stats.items()
                                         if v[2] < self.min_utterances)
        for s in self.fallback_speakers_:
            stats[s] = (self.fallback_mean_, self.fallback_std_, 0)
        return apply_statistics(X, speakers, stats, mask)

    def get_state(self) -> dict[str, np.ndarray]:
        return {"fallback_mean": self.fallback_mean_, "fallback_std": self.fallback_std_,
                "min_utterances": np.array(self.min_utterances)}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> "SpeakerNormaliser":
        out = cls(int(state["min_utterances"]))
        out.fallback_mean_ = np.asarray(state["fallback_mean"], dtype=np.float64)
        out.fallback_std_ = np.asarray(state["fallback_std"], dtype=np.float64)
        return out


class OnlineSpeakerNormaliser:
    """Running per-key standardisation of rows as they arrive (module docstring).

    ``fit(X, speakers, mask)`` keeps only the average-training-speaker fallback (exactly as
    :class:`SpeakerNormaliser`; :meth:`from_offline` takes it from a fitted one).
    ``update_transform(X, key, mask)`` takes rows of one key in arrival order and returns
    them standardised ``(n, D)`` float64: row ``j`` (with signal) is first added to ``key``'s
    running mean and variance (Welford's update, float64, population variance; a standard
    deviation below 1e-8 counts as 1), then standardised with them when ``key`` has at least
    ``warm_up`` rows with signal, else with the fallback; ``prior > 0`` shrinks the
    statistics towards the fallback (module docstring). Rows without signal (``mask``
    False) are not added and become 0. Safe to call from several threads.
    """

    def __init__(self, warm_up: int = 5, prior: float = 0.0):
        self.warm_up = warm_up
        self.prior = prior

    def _check(self) -> None:
        if (isinstance(self.warm_up, bool) or not isinstance(self.warm_up, (int, np.integer))
                or self.warm_up < 1):
            raise ConfigError(f"online normalisation: warm_up must be an integer >= 1, got "
                              f"{self.warm_up!r}")
        if not np.isfinite(self.prior) or self.prior < 0:
            raise ConfigError(f"online normalisation: prior must be a finite number >= 0, "
                              f"got {self.prior!r}")

    def fit(self, X: np.ndarray, speakers: Sequence, mask: np.ndarray | None = None
            ) -> "OnlineSpeakerNormaliser":
        self._check()
        offline = SpeakerNormaliser().fit(X, speakers, mask)
        return self._start(offline.fallback_mean_, offline.fallback_std_)

    @classmethod
    def from_offline(cls, normaliser: SpeakerNormaliser, warm_up: int | None = None,
                     prior: float = 0.0) -> "OnlineSpeakerNormaliser":
        """The online form of a fitted :class:`SpeakerNormaliser` (same fallback; ``warm_up``
        defaults to its ``min_utterances``)."""
        if not hasattr(normaliser, "fallback_mean_"):
            raise ConfigError("this SpeakerNormaliser is not fitted yet; call fit first")
        out = cls(normaliser.min_utterances if warm_up is None else warm_up, prior)
        out._check()
        return out._start(normaliser.fallback_mean_, normaliser.fallback_std_)

    def _start(self, mean: np.ndarray, std: np.ndarray) -> "OnlineSpeakerNormaliser":
        self.fallback_mean_ = np.asarray(mean, dtype=np.float64)
        self.fallback_std_ = np.asarray(std, dtype=np.float64)
        self._running: dict[Hashable, list] = {}   # key -> [n, mean (D,), M2 (D,)]
        self._lock = threading.Lock()
        return self

    def update_transform(self, X: np.ndarray, key: Hashable, mask: np.ndarray | None = None
                         ) -> np.ndarray:
        if not hasattr(self, "fallback_mean_"):
            raise ConfigError("this OnlineSpeakerNormaliser is not fitted yet; call fit first")
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        d = len(self.fallback_mean_)
        if X.ndim != 2 or X.shape[1] != d:
            raise ConfigError(f"online normalisation: expected rows of {d} features, got "
                              f"shape {X.shape}")
        mask = np.ones(len(X), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        out = np.zeros_like(X)
        with self._lock:
            state = self._running.setdefault(key, [0, np.zeros(d), np.zeros(d)])
            for j in np.flatnonzero(mask):
                mean, sd = self._add(state, X[j])
                out[j] = (X[j] - mean) / sd
        return out

    def update_statistics(self, x: np.ndarray, key: Hashable, signal: bool = True
                          ) -> tuple[np.ndarray, np.ndarray, int]:
        """One row ``x`` (D,) of ``key``: added to its statistics when ``signal``, as
        :meth:`update_transform` adds it -> ``(mean (D,), std (D,), n)``: the statistics
        that row is standardised with (``(x - mean) / std`` equals :meth:`update_transform`'s
        output; the fallback's while ``n < warm_up``) and ``n``, the rows with signal of
        ``key`` so far, this one included. ``signal`` False adds nothing and returns the
        statistics the next row would meet before its own joins them."""
        if not hasattr(self, "fallback_mean_"):
            raise ConfigError("this OnlineSpeakerNormaliser is not fitted yet; call fit first")
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        d = len(self.fallback_mean_)
        if len(x) != d:
            raise ConfigError(f"online normalisation: expected rows of {d} features, got "
                              f"{len(x)}")
        with self._lock:
            state = self._running.setdefault(key, [0, np.zeros(d), np.zeros(d)])
            mean, sd = self._add(state, x) if signal else self._current(state)
            return mean, sd, int(state[0])

    def _add(self, state: list, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Welford's update of ``state`` = [n, mean, M2] with row ``x``; the statistics
        the row is standardised with (caller holds the lock)."""
        state[0] += 1
        delta = x - state[1]
        state[1] = state[1] + delta / state[0]
        state[2] = state[2] + delta * (x - state[1])
        return self._current(state)

    def _current(self, state: list) -> tuple[np.ndarray, np.ndarray]:
        """The key's own (possibly shrunk) statistics from ``warm_up`` rows on, else the
        fallback."""
        if state[0] >= self.warm_up:
            return shrunk_statistics(state[0], state[1], state[2] / state[0], self.prior,
                                     self.fallback_mean_, self.fallback_std_)
        return self.fallback_mean_, self.fallback_std_

    def count(self, key: Hashable) -> int:
        """Rows with signal seen so far for ``key``."""
        with self._lock:
            return int(self._running.get(key, [0])[0])

    def reset(self, key: Hashable | None = None) -> None:
        """Forget ``key``'s statistics (every key's when None)."""
        with self._lock:
            if key is None:
                self._running.clear()
            else:
                self._running.pop(key, None)


def shrunk_statistics(n: int, mean: np.ndarray, var: np.ndarray, prior: float,
                      fallback_mean: np.ndarray, fallback_std: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` of ``n`` rows (``mean``, population ``var``) pooled with ``prior``
    pseudo-rows of the fallback speaker (module docstring; ``prior = 0``: the rows' own);
    a standard deviation below 1e-8 counts as 1."""
    if prior > 0:
        pooled = (n * mean + prior * fallback_mean) / (n + prior)
        var = (n * (var + (mean - pooled) ** 2)
               + prior * (fallback_std ** 2 + (fallback_mean - pooled) ** 2)) / (n + prior)
        mean = pooled
    sd = np.sqrt(var)
    return mean, np.where(sd < STD_FLOOR, 1.0, sd)


def window_normalise(X: np.ndarray, speakers: Sequence, orders: Mapping[str, np.ndarray],
                     k: int, fallback: tuple[np.ndarray, np.ndarray], warm_up: int,
                     mask: np.ndarray | None = None, prior: float = 0.0) -> np.ndarray:
    """Every row standardised as :class:`OnlineSpeakerNormaliser` would at position ``k`` of
    a stream -> ``(N, D)`` float64.

    ``orders``: per speaker a permutation ``p`` of that speaker's row indices. The row at
    position ``i`` of ``p`` is preceded by the ``k`` rows ``p[i-k], ..., p[i-1]``, indices
    taken cyclically (the stream ``p[i-k:] + p[:i-k]``, a rotation of ``p``, meets it at
    position ``k``); ``k >= n_s - 1`` means all of the speaker's other rows. Its statistics:
    the rows with signal among those and itself; fewer than ``warm_up`` -> ``fallback``
    ``(mean, std)``; ``prior``: as :class:`OnlineSpeakerNormaliser`'s. Rows without signal
    become 0. Rows of speakers not in ``orders`` too.
    """
    X = np.asarray(X, dtype=np.float64)
    speakers = np.asarray(speakers).astype(str)
    mask = np.ones(len(X), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if k < 0:
        raise ConfigError(f"online normalisation: k must be >= 0, got {k}")
    out = np.zeros_like(X)
    for s, order in orders.items():
        order = np.asarray(order)
        if sorted(order.tolist()) != np.flatnonzero(speakers == s).tolist():
            raise ConfigError(f"online normalisation: the order of speaker {s} must be a "
                              "permutation of that speaker's rows")
        n = len(order)
        width = min(k + 1, n)
        for i, row in enumerate(order):
            if not mask[row]:
                continue
            window = order[(i - width + 1 + np.arange(width)) % n]
            used = X[window[mask[window]]]
            if len(used) < warm_up:
                mean, sd = fallback
            else:
                mean, sd = shrunk_statistics(len(used), used.mean(axis=0), used.var(axis=0),
                                             prior, *fallback)
            out[row] = (X[row] - mean) / sd
    return out
