"""Speaker-independent protocols and metrics (SPEC step 10).

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
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

from .errors import ConfigError

PROTOCOLS = ("loso", "losgo:K", "split")
_BOOT_CHUNK = 4_000_000  # resampled indices held at once


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
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot}")
    t, p = _checked_codes(y_true, y_pred, classes)
    correct = (t == p).astype(float)
    rng = np.random.default_rng(seed)
    n = len(t)
    per_chunk = max(1, _BOOT_CHUNK // n)
    uas = []
    for start in range(0, n_boot, per_chunk):
        idx = rng.integers(0, n, size=(min(per_chunk, n_boot - start), n))
        uas.append(_boot_uas(t, correct, idx, len(classes)))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(np.concatenate(uas), [alpha, 1 - alpha])
    return float(lo), float(hi)
