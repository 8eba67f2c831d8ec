"""Speaker-independent protocols and metrics (docs/METHOD.md section 10).

Protocols (strings as on the command line):

* ``loso``: one fold per speaker, folds in sorted speaker order; the test fold is that
  speaker's utterances, training is everyone else.
* ``losgo:K``: ``K`` speaker-disjoint groups of near-equal utterance count, built greedily and
  deterministically: speakers sorted by utterance count (descending), then name, each go to
  the group with the fewest utterances so far (lowest group index on ties). Fold ``k`` tests
  group ``k``.
* ``split``: one fold; train on utterances whose split is ``"train"``, test on ``"test"``
  (case-insensitive); other splits (e.g. ``None``) are unused.

Metrics (fractions in 0..1): ``ua`` is the unweighted average recall over the classes present
in ``y_true`` (identical to scikit-learn's ``balanced_accuracy_score``: a class absent from the
fold's truth contributes no recall); ``wa`` is accuracy; ``macro_f1`` is the mean F1 over the
classes present in ``y_true`` or ``y_pred`` (scikit-learn's ``f1_score(average="macro")``
default labels); ``confusion`` counts with rows = true class, columns = predicted class, both
in ``classes`` order.

Uncertainty of UA (all intervals are percentile intervals: the ``(1-level)/2`` and
``(1+level)/2`` quantiles, NumPy's default linear interpolation, of the resampled UAs; each
resample's UA is taken over the classes present in that resample):

* utterance bootstrap (:func:`bootstrap_ua_ci`): each resample draws ``N`` utterances with
  replacement.
* speaker bootstrap (:func:`speaker_bootstrap_ua_ci`): speakers are sorted (as strings) and
  numbered ``0..S-1``; each resample draws ``S`` speaker numbers with replacement (row ``b`` of
  ``numpy.random.default_rng(seed).integers(0, S, size=(n_boot, S))``, drawn in consecutive
  chunks of rows) and takes all utterances of every drawn speaker, once per draw. Because
  speakers, not utterances, are the independent units under speaker-independent evaluation,
  this is the interval to report. It needs at least 2 speakers; :func:`ua_ci` falls back to
  the utterance bootstrap for a single speaker (and :func:`ua_ci_with_method` says so).

Paired comparison of systems ``a`` and ``b`` on the same utterances
(:func:`paired_comparison`): ``diff = UA_a - UA_b`` on all utterances. ``ci95`` is the 95%
percentile interval of ``UA_a - UA_b`` over speaker-bootstrap resamples that use the *same*
drawn speakers for both systems (same draws as above, from ``default_rng(seed)``). ``p_value``
is a two-sided permutation test of "no difference": a swap pattern ``z`` in ``{0, 1}^S`` swaps
the two systems' predictions of speaker ``s``'s utterances where ``z_s = 1``; the statistic is
``|UA_a' - UA_b'|`` of the pooled swapped predictions. When ``2^S <= n_perm`` all ``2^S``
patterns (the observed one, ``z = 0``, included) are enumerated and ``p = #{stat >= obs - 1e-12}
/ 2^S`` (``p_method = "exact"``; its smallest value is ``2 / 2^S``, e.g. 0.03125 for 6
speakers). Otherwise ``n_perm`` patterns are drawn uniformly (``integers(0, 2, size=(n_perm,
S))`` from the same generator, after the bootstrap draws) and ``p = (1 + #{stat >= obs -
1e-12}) / (1 + n_perm)`` (``p_method = "monte-carlo"``). :func:`swap_test_floor` gives the
smallest attainable ``p`` for ``S`` speakers (``2 / 2^S`` exact: the observed pattern and its
complement, which only exchanges ``a`` and ``b``, always count; ``1 / (1 + n_perm)``
monte-carlo). ``speaker_diff`` is each speaker's ``UA_a - UA_b`` over that speaker's
utterances (UA over the classes present for that speaker); ``n_better`` / ``n_worse`` /
``n_tied`` count speakers with a difference above / below / within ``1e-12`` of 0.

Claims of one run (:func:`adjust_claims`): Holm's step-down correction across the ``m``
claims of a run (``p_holm``; the ``i``-th smallest raw p becomes ``max_{j <= i} min(1, (m - j +
1) p_(j))``), and the verdict on ``p_holm`` (:func:`claim_verdict`). Because ``p >= floor``,
the smallest attainable ``p_holm`` is ``min(1, m * floor)``; when that exceeds ``alpha`` no
outcome of the data could support or refute the claim, and the verdict says
``"cannot be decided with S speakers"`` rather than ``"undecided"``. Speaker-bootstrap
intervals with fewer than :data:`APPROXIMATE_BELOW` speakers are called approximate: their
coverage falls short of the nominal level (:func:`speaker_bootstrap_coverage` measures it by
simulation; :data:`COVERAGE_NOTE` states the measured figures).

Small samples (:func:`small_sample_warnings`): one warning line when a study has fewer than
:data:`FEW_SPEAKERS` speakers (its intervals and paired tests are unreliable; the line
states the smallest p the speaker-swap test can give with that many speakers, and that
"undecided" then means the data cannot decide, not that the systems are equal), one when
any fold's test utterances miss a class of the study (that fold's UA averages over fewer
classes), and one when any fold's training utterances miss a class (its classifier can
never predict that class).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

from .errors import ConfigError
from .validation import check_choice

PROTOCOLS = ("loso", "losgo:K", "split")
CI_METHODS = ("speaker-bootstrap", "utterance-bootstrap")
_BOOT_CHUNK = 4_000_000  # resampled indices held at once
_PERM_TOL = 1e-12        # permutation statistics within this of the observed one count as >=
_PAIRED_METHOD = "paired speaker bootstrap; speaker-swap permutation test"
_DIFF_TOL = 1e-12        # a speaker's UA difference within this of 0 counts as a tie
APPROXIMATE_BELOW = 10   # speaker-bootstrap intervals with fewer speakers are approximate
FEW_SPEAKERS = 5         # fewer speakers than this: a small-sample warning
# Measured by speaker_bootstrap_coverage(S) (1000 simulated studies, seed 0) for S = 6 and 12
# (tests/test_evaluation.py recomputes both figures and checks this text).
COVERAGE_6, COVERAGE_12 = 84.5, 91.4   # percent, nominal 95 %
COVERAGE_NOTE = ("approximate: with few speakers the speaker bootstrap under-covers; in a "
                 "simulation (7 classes, 14 utterances per class and speaker, speaker effects "
                 "as in EMOVO) the nominal 95% interval covered the true UA {c6}% of the time "
                 "with 6 speakers and {c12}% with 12")


def parse_protocol(protocol: str) -> tuple[str, int | None]:
    """``"loso"`` -> ``("loso", None)``, ``"losgo:5"`` -> ``("losgo", 5)``, ``"split"`` -> ``("split", None)``."""
    text = str(protocol).strip().lower()
    if text in ("loso", "split"):
        return text, None
    kind, sep, k = text.partition(":")
    if kind == "losgo" and sep:
        try:
            groups = int(k)
        except ValueError:
            raise ConfigError(f"protocol {protocol!r}: K in losgo:K must be an integer") from None
        if groups < 2:
            raise ConfigError(f"protocol {protocol!r}: losgo needs K >= 2 groups")
        return "losgo", groups
    raise ConfigError(f"unknown protocol {protocol!r}; use loso, losgo:K (e.g. losgo:5) or split")


def _speakers_and_splits(speakers: Sequence[Any], splits: Sequence[str | None] | None
                         ) -> tuple[list[str], list[str | None] | None]:
    """Accept plain speaker strings or objects with ``.speaker`` / ``.split`` (a Corpus)."""
    items = list(speakers)
    if items and hasattr(items[0], "speaker"):
        if splits is None:
            splits = [getattr(u, "split", None) for u in items]
        items = [u.speaker for u in items]
    return [str(s) for s in items], None if splits is None else list(splits)


def _loso(speakers: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    names = sorted(set(speakers.tolist()))
    if len(names) < 2:
        raise ConfigError(f"loso needs at least 2 speakers, found {len(names)}")
    return [(np.flatnonzero(speakers != s), np.flatnonzero(speakers == s)) for s in names]


def speaker_groups(speakers: Sequence[str], k: int) -> list[list[str]]:
    """Greedy near-equal partition of the speakers into ``k`` groups (see module docstring)."""
    counts = Counter(speakers)
    if k > len(counts):
        raise ConfigError(f"losgo:{k} needs at least {k} speakers, found {len(counts)}")
    groups: list[list[str]] = [[] for _ in range(k)]
    sizes = [0] * k
    for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        target = min(range(k), key=lambda g: (sizes[g], g))
        groups[target].append(name)
        sizes[target] += count
    return groups


def _losgo(speakers: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for group in speaker_groups(speakers.tolist(), k):
        test = np.isin(speakers, group)
        out.append((np.flatnonzero(~test), np.flatnonzero(test)))
    return out


def _split(splits: Sequence[str | None] | None, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if splits is None:
        raise ConfigError("protocol split needs each utterance's split (train/test)")
    if len(splits) != n:
        raise ConfigError(f"protocol split: {len(splits)} split values for {n} utterances")
    names = np.array([("" if s is None else str(s).lower()) for s in splits])
    train, test = np.flatnonzero(names == "train"), np.flatnonzero(names == "test")
    if len(train) == 0 or len(test) == 0:
        raise ConfigError(f"protocol split needs train and test utterances, found "
                          f"{len(train)} train and {len(test)} test")
    return [(train, test)]


def folds(speakers: Sequence[Any], protocol: str,
          splits: Sequence[str | None] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train_idx, test_idx)`` index arrays (sorted, int64) for each fold of ``protocol``.

    ``speakers``: one speaker id per utterance (or a Corpus / list of Utterance, whose
    ``.speaker`` and ``.split`` are used); ``splits``: per-utterance split, for ``split``.
    For ``loso`` and ``losgo:K`` every utterance is in exactly one test fold.
    """
    kind, k = parse_protocol(protocol)
    names, splits = _speakers_and_splits(speakers, splits)
    if not names:
        raise ConfigError("no utterances to split into folds")
    spk = np.array(names)
    if kind == "loso":
        return _loso(spk)
    if kind == "losgo":
        return _losgo(spk, k)
    return _split(splits, len(names))


def speaker_independence(fold_list: Sequence[tuple[np.ndarray, np.ndarray]],
                         speakers: Sequence[Any]) -> dict[str, Any]:
    """Whether every fold's training and test speakers are disjoint, verified.

    Returns ``dict(independent, reason)``: ``independent`` is False when a fold shares a
    speaker between its training and test parts (e.g. a ``split`` manifest with the same
    speaker in both), or when every utterance is its own speaker (a ``folder`` corpus whose
    file names carry no speaker: the folds are then leave-one-utterance-out).
    """
    spk = np.asarray(speakers).astype(str)
    shared = []
    for k, (train, test) in enumerate(fold_list):
        common = sorted(set(spk[train]) & set(spk[test]))
        if common:
            shared.append(f"fold {k + 1}: {', '.join(common[:5])}")
    if shared:
        return {"independent": False,
                "reason": "speakers in both training and test data (" + "; ".join(shared[:5])
                          + "): SPEAKER-DEPENDENT evaluation"}
    if len(spk) > 1 and len(np.unique(spk)) == len(spk):
        return {"independent": False,
                "reason": "every utterance has its own speaker id (file names carry no "
                          "speaker?): the folds may hold one person's recordings on both "
                          "sides; treat the results as SPEAKER-DEPENDENT"}
    return {"independent": True, "reason": "every fold's training and test speakers are "
                                           "disjoint (verified)"}


def _codes(labels: Sequence, classes: Sequence, what: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([index[v] for v in labels], dtype=np.int64)
    except KeyError as err:
        raise ConfigError(f"{what} label {err.args[0]!r} is not one of the classes {list(classes)}") from None


def _checked_codes(y_true: Sequence, y_pred: Sequence, classes: Sequence
                   ) -> tuple[np.ndarray, np.ndarray]:
    t, p = _codes(y_true, classes, "true"), _codes(y_pred, classes, "predicted")
    if len(t) != len(p):
        raise ConfigError(f"{len(t)} true labels but {len(p)} predictions")
    if len(t) == 0:
        raise ConfigError("no predictions to score")
    return t, p


def confusion_counts(t: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """``(k, k)`` int64 counts, rows true code, columns predicted code."""
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def metrics(y_true: Sequence, y_pred: Sequence, classes: Sequence) -> dict[str, Any]:
    """``dict(ua, wa, macro_f1, confusion)`` for label sequences (see module docstring)."""
    t, p = _checked_codes(y_true, y_pred, classes)
    cm = confusion_counts(t, p, len(classes))
    tp = np.diag(cm).astype(float)
    true_n, pred_n = cm.sum(1), cm.sum(0)
    present = true_n > 0
    used = present | (pred_n > 0)
    f1 = 2 * tp[used] / (true_n[used] + pred_n[used])
    return {
        "ua": float(np.mean(tp[present] / true_n[present])),
        "wa": float(tp.sum() / len(t)),
        "macro_f1": float(f1.mean()),
        "confusion": cm.tolist(),
    }


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must be in (0, 1), got {level}")


def _check_count(value: int, name: str, flag: str) -> int:
    """``value`` as an int if it is an integer >= 1, else ConfigError naming ``flag``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} ({flag}) must be an integer >= 1, got {value!r}")
    return int(value)


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return float(lo), float(hi)


def _boot_uas(t: np.ndarray, correct: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """UA of each resample: ``idx`` ``(B, N)`` indices into ``t`` / ``correct`` -> ``(B,)``."""
    b = idx.shape[0]
    flat = (np.arange(b)[:, None] * k + t[idx]).ravel()
    totals = np.bincount(flat, minlength=b * k).reshape(b, k)
    hits = np.bincount(flat, weights=correct[idx].ravel(), minlength=b * k).reshape(b, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(totals > 0, hits / totals, np.nan)
    return np.nanmean(recall, axis=1)


def bootstrap_ua_ci(y_true: Sequence, y_pred: Sequence, classes: Sequence, n_boot: int = 1000,
                    seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of UA, resampling utterances with replacement.

    Each of ``n_boot`` resamples draws ``N`` utterances (``numpy.random.default_rng(seed)``);
    classes absent from a resample are left out of its UA, as in :func:`metrics`.
    """
    _check_level(level)
    n_boot = _check_count(n_boot, "n_boot", "--n-boot")
    t, p = _checked_codes(y_true, y_pred, classes)
    correct = (t == p).astype(float)
    rng = np.random.default_rng(seed)
    n = len(t)
    per_chunk = max(1, _BOOT_CHUNK // n)
    uas = []
    for start in range(0, n_boot, per_chunk):
        idx = rng.integers(0, n, size=(min(per_chunk, n_boot - start), n))
        uas.append(_boot_uas(t, correct, idx, len(classes)))
    return _percentile_interval(np.concatenate(uas), level)


def _speaker_codes(groups: Sequence[Any], n: int) -> tuple[np.ndarray, int]:
    """Speaker number of each utterance (speakers sorted as strings) and the speaker count."""
    names, _ = _speakers_and_splits(groups, None)
    if len(names) != n:
        raise ConfigError(f"{len(names)} speaker ids for {n} utterances")
    unique, inverse = np.unique(np.array(names), return_inverse=True)
    return inverse.astype(np.int64).ravel(), len(unique)


def _speaker_tables(t: np.ndarray, g: np.ndarray, s: int, k: int,
                    *hits: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(S, K)`` utterance counts per speaker and true class, and one ``(S, K)`` table of
    summed ``hits`` (0/1 per utterance) for each array in ``hits``."""
    cell = g * k + t
    totals = np.bincount(cell, minlength=s * k).reshape(s, k).astype(float)
    tables = [np.bincount(cell, weights=h.astype(float), minlength=s * k).reshape(s, k)
              for h in hits]
    return totals, tables


def _speaker_draws(rng: np.random.Generator, s: int, n_boot: int):
    """Yield ``(b, S)`` float weights (times each speaker is drawn) for ``n_boot`` resamples."""
    per_chunk = max(1, _BOOT_CHUNK // s)
    for start in range(0, n_boot, per_chunk):
        b = min(per_chunk, n_boot - start)
        idx = rng.integers(0, s, size=(b, s))
        flat = (np.arange(b)[:, None] * s + idx).ravel()
        yield np.bincount(flat, minlength=b * s).reshape(b, s).astype(float)


def _ua_from_counts(hits: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """UA of each row of ``(M, K)`` per-class hits / totals, over classes with totals > 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(totals > 0, hits / totals, np.nan)
    return np.nanmean(recall, axis=1)


def _speaker_boot_uas(t: np.ndarray, p: np.ndarray, g: np.ndarray, s: int, k: int,
                      n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot,)`` UAs of the speaker-bootstrap resamples (see the module docstring)."""
    totals, (hits,) = _speaker_tables(t, g, s, k, t == p)
    rng = np.random.default_rng(seed)
    return np.concatenate([_ua_from_counts(w @ hits, w @ totals)
                           for w in _speaker_draws(rng, s, n_boot)])


def speaker_bootstrap_ua_ci(y_true: Sequence, y_pred: Sequence, groups: Sequence[Any],
                            classes: Sequence, n_boot: int = 1000, seed: int = 0,
                            level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of UA, resampling speakers (clusters) with replacement.

    ``groups``: the speaker of each utterance (or utterance objects with ``.speaker``). Each
    resample draws ``S`` speakers with replacement and keeps all their utterances (a speaker
    drawn twice counts twice); see the module docstring for the exact draws. Raises
    ConfigError for fewer than 2 speakers, where every resample is the data itself and the
    interval would collapse to a point (:func:`ua_ci` falls back to the utterance bootstrap).
    """
    _check_level(level)
    n_boot = _check_count(n_boot, "n_boot", "--n-boot")
    t, p = _checked_codes(y_true, y_pred, classes)
    g, s = _speaker_codes(groups, len(t))
    if s < 2:
        raise ConfigError("the speaker bootstrap needs at least 2 speakers, found 1; "
                          "use the utterance bootstrap")
    return _percentile_interval(_speaker_boot_uas(t, p, g, s, len(classes), n_boot, seed), level)


def ua_ci_with_method(y_true: Sequence, y_pred: Sequence, classes: Sequence,
                      groups: Sequence[Any] | None = None, method: str = "speaker-bootstrap",
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95
                      ) -> tuple[float, float, str]:
    """``(lo, hi, method_used)``: the UA interval by ``method`` (one of :data:`CI_METHODS`).

    ``speaker-bootstrap`` needs ``groups`` (ConfigError without); with a single speaker it
    falls back to the utterance bootstrap and ``method_used`` is ``"utterance-bootstrap"``.
    ``utterance-bootstrap`` ignores ``groups``.
    """
    check_choice(method, CI_METHODS, "interval method")
    n_boot = _check_count(n_boot, "n_boot", "--n-boot")
    if method == "speaker-bootstrap":
        if groups is None:
            raise ConfigError("the speaker bootstrap needs the speaker of each utterance (groups)")
        t, _ = _checked_codes(y_true, y_pred, classes)
        if _speaker_codes(groups, len(t))[1] >= 2:
            lo, hi = speaker_bootstrap_ua_ci(y_true, y_pred, groups, classes, n_boot, seed, level)
            return lo, hi, "speaker-bootstrap"
    lo, hi = bootstrap_ua_ci(y_true, y_pred, classes, n_boot, seed, level)
    return lo, hi, "utterance-bootstrap"


def ua_ci(y_true: Sequence, y_pred: Sequence, classes: Sequence,
          groups: Sequence[Any] | None = None, method: str = "speaker-bootstrap",
          n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """``(lo, hi)`` of :func:`ua_ci_with_method` (which also says which method was used)."""
    lo, hi, _ = ua_ci_with_method(y_true, y_pred, classes, groups, method, n_boot, seed, level)
    return lo, hi


def _swap_patterns(s: int, n_perm: int, rng: np.random.Generator):
    """``(exact, chunks)``: all ``2^S`` 0/1 swap patterns if ``2^S <= n_perm`` (one chunk),
    else ``n_perm`` uniform random patterns in chunks of rows; each chunk ``(m, S)`` float."""
    if 2 ** s <= n_perm:
        codes = np.arange(2 ** s)[:, None]
        return True, [((codes >> np.arange(s)) & 1).astype(float)]
    per_chunk = max(1, _BOOT_CHUNK // s)
    sizes = [min(per_chunk, n_perm - start) for start in range(0, n_perm, per_chunk)]
    return False, (rng.integers(0, 2, size=(m, s)).astype(float) for m in sizes)


def _swap_stats(z: np.ndarray, hits_a: np.ndarray, hits_b: np.ndarray,
                totals: np.ndarray) -> np.ndarray:
    """``|UA_a' - UA_b'|`` for each swap pattern row of ``z`` ``(M, S)``."""
    moved = z @ (hits_b - hits_a)                      # (M, K) hits system a gains by swapping
    n = totals.sum(0)[None]
    ua_a = _ua_from_counts(hits_a.sum(0)[None] + moved, n)
    ua_b = _ua_from_counts(hits_b.sum(0)[None] - moved, n)
    return np.abs(ua_a - ua_b)


def _swap_permutation_p(hits_a: np.ndarray, hits_b: np.ndarray, totals: np.ndarray,
                        n_perm: int, rng: np.random.Generator) -> tuple[float, str]:
    """Two-sided speaker-swap permutation p-value and ``"exact"`` / ``"monte-carlo"``."""
    s = len(totals)
    observed = _swap_stats(np.zeros((1, s)), hits_a, hits_b, totals)[0]
    exact, chunks = _swap_patterns(s, n_perm, rng)
    count = sum(int(np.sum(_swap_stats(z, hits_a, hits_b, totals) >= observed - _PERM_TOL))
                for z in chunks)
    if exact:
        return count / 2 ** s, "exact"
    return (1 + count) / (1 + n_perm), "monte-carlo"


def paired_comparison(y_true: Sequence, pred_a: Sequence, pred_b: Sequence,
                      groups: Sequence[Any], classes: Sequence, n_boot: int = 1000,
                      n_perm: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Compare systems ``a`` and ``b`` (predicted labels for the same utterances).

    Returns ``dict(ua_a, ua_b, diff, ci95, p_value, p_method, n_speakers, method, p_floor,
    speaker_diff, n_better, n_worse, n_tied)`` with ``diff = ua_a - ua_b``, ``ci95 = [lo,
    hi]`` of the difference, ``p_floor`` the smallest p the test can give here and
    ``speaker_diff`` ``{speaker: UA_a - UA_b}`` on each speaker's own utterances; exact
    definitions in the module docstring. ConfigError for fewer than 2 speakers (nothing to
    resample or swap).
    """
    n_boot = _check_count(n_boot, "n_boot", "--n-boot")
    n_perm = _check_count(n_perm, "n_perm", "--n-perm")
    t, pa = _checked_codes(y_true, pred_a, classes)
    _, pb = _checked_codes(y_true, pred_b, classes)
    g, s = _speaker_codes(groups, len(t))
    if s < 2:
        raise ConfigError("a paired comparison needs at least 2 speakers, found 1")
    totals, (hits_a, hits_b) = _speaker_tables(t, g, s, len(classes), t == pa, t == pb)
    ua_a = float(_ua_from_counts(hits_a.sum(0)[None], totals.sum(0)[None])[0])
    ua_b = float(_ua_from_counts(hits_b.sum(0)[None], totals.sum(0)[None])[0])
    rng = np.random.default_rng(seed)
    diffs = np.concatenate([_ua_from_counts(w @ hits_a, w @ totals)
                            - _ua_from_counts(w @ hits_b, w @ totals)
                            for w in _speaker_draws(rng, s, n_boot)])
    lo, hi = _percentile_interval(diffs, 0.95)
    p_value, p_method = _swap_permutation_p(hits_a, hits_b, totals, n_perm, rng)
    per_speaker = _ua_from_counts(hits_a, totals) - _ua_from_counts(hits_b, totals)
    names = np.unique(np.array(_speakers_and_splits(groups, None)[0]))
    return {"ua_a": ua_a, "ua_b": ua_b, "diff": ua_a - ua_b, "ci95": [lo, hi],
            "p_value": float(p_value), "p_method": p_method, "n_speakers": s,
            "method": _PAIRED_METHOD, "p_floor": swap_test_floor(s, n_perm),
            "speaker_diff": {str(n): float(d) for n, d in zip(names, per_speaker)},
            "n_better": int(np.sum(per_speaker > _DIFF_TOL)),
            "n_worse": int(np.sum(per_speaker < -_DIFF_TOL)),
            "n_tied": int(np.sum(np.abs(per_speaker) <= _DIFF_TOL))}


def swap_test_floor(n_speakers: int, n_perm: int = 10000) -> float:
    """The smallest p-value the speaker-swap test of :func:`paired_comparison` can return.

    Exact test (``2^S <= n_perm``): ``2 / 2^S`` (the observed swap pattern and its
    complement always reach the observed statistic): 0.25 for 3 speakers, 0.03125 for 6.
    Monte-carlo test: ``1 / (1 + n_perm)`` (e.g. 24 speakers, ``n_perm = 10000``: 9.999e-05).
    """
    s = _check_count(n_speakers, "number of speakers", "n_speakers")
    n_perm = _check_count(n_perm, "n_perm", "--n-perm")
    if s < 2:
        raise ConfigError("a swap test needs at least 2 speakers, found 1")
    return 2.0 / 2 ** s if 2 ** s <= n_perm else 1.0 / (1 + n_perm)


def verdict(comparison: dict[str, Any], alpha: float = 0.05) -> str:
    """Verdict on the claim "system a beats system b" from :func:`paired_comparison`.

    ``"supported"``: ``ci95`` lies entirely above 0 and ``p_value <= alpha``;
    ``"refuted"``: ``ci95`` lies entirely below 0 and ``p_value <= alpha`` (b beats a);
    ``"undecided"`` otherwise. Requiring the permutation test as well keeps the verdict
    honest with few speakers, where the speaker bootstrap is optimistic (with 2 speakers the
    exact test cannot reach p < 0.5).
    """
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    lo, hi = comparison["ci95"]
    if comparison["p_value"] <= alpha:
        if lo > 0:
            return "supported"
        if hi < 0:
            return "refuted"
    return "undecided"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (see the module docstring)."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ConfigError(f"Holm correction needs p-values in 0..1, got {list(p_values)!r}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped) if m else stepped
    return adjusted.tolist()


def claim_verdict(comparison: dict[str, Any], n_claims: int = 1, alpha: float = 0.05) -> str:
    """Verdict on "a beats b" from Holm's adjusted p (``p_holm``, else the raw ``p_value``
    when ``n_claims`` is 1): ``"cannot be decided with S speakers"`` when even the smallest
    attainable adjusted p, ``min(1, n_claims * p_floor)``, exceeds ``alpha``; else the rule of
    :func:`verdict` applied to the adjusted p."""
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    floor = comparison.get("p_floor", swap_test_floor(comparison["n_speakers"]))
    if min(1.0, n_claims * floor) > alpha:
        return f"cannot be decided with {comparison['n_speakers']} speakers"
    p = comparison.get("p_holm", comparison["p_value"]) if n_claims > 1 else comparison["p_value"]
    return verdict({**comparison, "p_value": p}, alpha)


def _decision_note(c: dict[str, Any], m: int, alpha: float) -> str:
    floor = c["p_floor"]
    text = (f"{c['n_speakers']} speakers: smallest attainable p {floor:.3g}; Holm over {m} "
            f"claim{'s' if m != 1 else ''}: smallest attainable adjusted p "
            f"{min(1.0, m * floor):.3g}")
    return text + (f" > alpha {alpha:g}" if min(1.0, m * floor) > alpha else "")


def adjust_claims(comparisons: Sequence[dict[str, Any]], alpha: float = 0.05
                  ) -> list[dict[str, Any]]:
    """The claims of one run with Holm's correction across them: each gains ``p_holm``,
    ``n_claims``, ``verdict_raw`` (the rule of :func:`verdict` on the raw p), ``verdict`` (on
    ``p_holm``, :func:`claim_verdict`), ``decision_note`` and, below
    :data:`APPROXIMATE_BELOW` speakers, ``ci95_note`` (the interval is approximate)."""
    m = len(comparisons)
    adjusted = holm([c["p_value"] for c in comparisons])
    out = []
    for c, p in zip(comparisons, adjusted):
        c = {**c, "p_holm": float(p), "n_claims": m,
             "p_floor": c.get("p_floor", swap_test_floor(c["n_speakers"]))}
        c["verdict_raw"] = verdict(c, alpha)
        c["verdict"] = claim_verdict(c, m, alpha)
        c["decision_note"] = _decision_note(c, m, alpha)
        if c["n_speakers"] < APPROXIMATE_BELOW:
            c["ci95_note"] = interval_note(c["n_speakers"])
        out.append(c)
    return out


def interval_note(n_speakers: int) -> str | None:
    """The caveat of a speaker-bootstrap interval over ``n_speakers`` speakers (None from
    :data:`APPROXIMATE_BELOW` speakers on)."""
    if n_speakers >= APPROXIMATE_BELOW:
        return None
    return (f"{n_speakers} speakers (< {APPROXIMATE_BELOW}): "
            + COVERAGE_NOTE.format(c6=COVERAGE_6, c12=COVERAGE_12))


def speaker_bootstrap_coverage(n_speakers: int, n_sims: int = 1000, n_boot: int = 400,
                               seed: int = 0, n_classes: int = 7, per_class: int = 14,
                               speaker_sd: float = 0.6, cell_sd: float = 0.5,
                               level: float = 0.95) -> float:
    """Share of simulated studies whose speaker-bootstrap interval (:func:`speaker_bootstrap_ua_ci`)
    covers the true UA.

    Each study has ``n_speakers`` speakers with ``per_class`` utterances of each of
    ``n_classes`` classes; utterance ``i`` of speaker ``s`` and class ``k`` is recognised with
    probability ``sigmoid(mu_k + u_s + e_sk)``, ``u_s ~ N(0, speaker_sd^2)`` (a speaker easy
    or hard for every class), ``e_sk ~ N(0, cell_sd^2)``, ``mu_k`` evenly spaced from
    ``logit(0.35)`` to ``logit(0.75)``. The true UA is ``mean_k E[sigmoid(mu_k + N(0,
    speaker_sd^2 + cell_sd^2))]`` (Gauss-Hermite quadrature, 80 nodes). Defaults mimic EMOVO
    (7 emotions, 14 utterances each per actor, fold UAs 30-77 %). Deterministic for ``seed``.
    """
    n_speakers = _check_count(n_speakers, "number of speakers", "n_speakers")
    n_sims = _check_count(n_sims, "n_sims", "n_sims")
    if n_speakers < 2:
        raise ConfigError("the speaker bootstrap needs at least 2 speakers")
    logit = lambda q: np.log(q / (1 - q))  # noqa: E731
    mu = np.linspace(logit(0.35), logit(0.75), n_classes)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    scale = np.hypot(speaker_sd, cell_sd)
    truth = float(np.mean([np.sum(weights / (1 + np.exp(-(m + scale * nodes))))
                           / weights.sum() for m in mu]))
    rng = np.random.default_rng(seed)
    y_true = np.tile(np.repeat(np.arange(n_classes), per_class), n_speakers)
    groups = np.repeat(np.arange(n_speakers), n_classes * per_class)
    covered = 0
    for b in range(n_sims):
        logits = (mu[None] + speaker_sd * rng.standard_normal((n_speakers, 1))
                  + cell_sd * rng.standard_normal((n_speakers, n_classes)))
        prob = np.repeat(1 / (1 + np.exp(-logits)), per_class, axis=1).ravel()
        correct = rng.random(len(prob)) < prob
        y_pred = np.where(correct, y_true, (y_true + 1) % n_classes)
        lo, hi = speaker_bootstrap_ua_ci(y_true, y_pred, groups, list(range(n_classes)),
                                         n_boot=n_boot, seed=seed + 1 + b, level=level)
        covered += lo <= truth <= hi
    return covered / n_sims


def few_speakers_warning(n_speakers: int, n_perm: int = 10000) -> str | None:
    """The warning for a study of ``n_speakers`` speakers (None from :data:`FEW_SPEAKERS` on):
    what is unreliable and the smallest p a paired comparison can reach."""
    n = _check_count(n_speakers, "number of speakers", "n_speakers")
    if n >= FEW_SPEAKERS:
        return None
    head = (f"only {n} speaker{'s' if n != 1 else ''} (fewer than {FEW_SPEAKERS}): the UA "
            "intervals and the paired tests are unreliable")
    if n < 2:
        return head + "; no paired comparison is possible with one speaker"
    return (head + f"; with {n} speakers no paired comparison can reach p below "
            f"{swap_test_floor(n, n_perm):.3g}, so 'undecided' means these data cannot "
            "decide, not that the systems are equal")


def _fold_name(k: int, test: np.ndarray, speakers: np.ndarray) -> str:
    names = sorted({str(x) for x in speakers[test]})
    shown = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
    return f"fold {k + 1} ({shown})"


def _missing_line(misses: list[tuple[str, list[str]]], n_folds: int, where: str,
                  consequence: str) -> str | None:
    if not misses:
        return None
    listed = "; ".join(f"{name} has no {', '.join(labels)}" for name, labels in misses[:6])
    more = f"; and {len(misses) - 6} more" if len(misses) > 6 else ""
    return (f"{len(misses)} of {n_folds} fold{'s' if n_folds != 1 else ''} miss a class in "
            f"their {where} utterances ({listed}{more}): {consequence}")


def small_sample_warnings(fold_list: Sequence[tuple[np.ndarray, np.ndarray]],
                          labels: Sequence[Any], speakers: Sequence[Any],
                          classes: Sequence[Any] | None = None, n_perm: int = 10000
                          ) -> list[str]:
    """Warnings for a study whose numbers rest on too little data (module docstring):
    fewer than :data:`FEW_SPEAKERS` speakers, folds whose test or training utterances miss
    a class of ``classes`` (default: the labels present). ``fold_list``: ``(train, test)``
    index arrays into ``labels``/``speakers``. An empty list when none applies."""
    labels = np.asarray([str(x) for x in labels])
    speakers = np.asarray([str(x) for x in speakers])
    if len(labels) != len(speakers):
        raise ConfigError(f"{len(labels)} labels for {len(speakers)} speakers")
    wanted = sorted({str(c) for c in (np.unique(labels) if classes is None else classes)})
    tested = np.unique(np.concatenate([np.asarray(te, dtype=int) for _, te in fold_list])) \
        if len(fold_list) else np.array([], dtype=int)
    out = [few_speakers_warning(len(np.unique(speakers[tested])) if len(tested) else
                                len(np.unique(speakers)), n_perm)]
    test_miss, train_miss = [], []
    for k, (train, test) in enumerate(fold_list):
        train, test = np.asarray(train, dtype=int), np.asarray(test, dtype=int)
        name = _fold_name(k, test, speakers)
        for misses, idx in ((test_miss, test), (train_miss, train)):
            absent = [c for c in wanted if c not in set(labels[idx])]
            if absent:
                misses.append((name, absent))
    out.append(_missing_line(test_miss, len(fold_list), "test",
                             "their UA averages over the classes present only"))
    out.append(_missing_line(train_miss, len(fold_list), "training",
                             "their classifiers can never predict those classes"))
    return [line for line in out if line]
