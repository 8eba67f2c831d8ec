"""Stereo augmentation of the training rows (``binser experiment --augment swap``; experimental,
off by default, not yet shown to help).

``swap``: every utterance gets a left/right-swapped copy, ``L' = R``, ``R' = L``. Its views
are known without decoding or encoding anything: ``left' = right``, ``right' = left``,
``mid' = s(R + L) = mid`` and ``side' = s(R - L) = -side``; every front end binser has (the
log-Mel power of the image CNNs, Whisper's log-Mel) depends on the signal only through
``|STFT|``, so the features of ``-side`` are those of ``side`` bit for bit; ``mono`` is
unchanged too. So the swapped copy of utterance ``i`` is the row ``N + i`` of every
utterance-level matrix (:func:`swapped_rows`): ``X_left[N + i] = X_right[i]``, ``X_right[N +
i] = X_left[i]``, ``X_mid[N + i] = X_mid[i]``, ``X_side[N + i] = X_side[i]``, with the same
label and speaker, and silent flags swapped alike.

Training only: fold ``k``'s training indices become ``train ∪ (N + train)`` and its test
indices stay ``test`` (all ``< N``, :func:`augmented_folds`); the copy of a test utterance
(``N + test``) is in neither, so no augmented row ever trains on, or is scored as, a test
utterance, and each inner CV (grouped by speaker) keeps a copy with its original. Everything
fitted on the training rows sees the copies: scaling, C, the classifiers, and the nested
fusion weights (chosen on out-of-fold scores of original and swapped training rows). For
mid and side the copy duplicates the row (twice the weight of every row, which the C
search absorbs up to its grid).

Not implemented: inter-channel gain (+-3 dB) and sub-millisecond delay jitter (+-0.5 ms).
Both change the mid and side waveforms (``mid' = s(gL + R/g)`` is not a scaled ``mid``), and
a gain changes Whisper's features even of left and right (its log-Mel is offset by the
gain in dB before a non-linear encoder; only the CNN images, min-max scaled per image, are
nearly level-invariant), so each augmented copy would have to be encoded again: a second
feature pass over the corpus per copy. ``--augment gain`` and ``--augment delay`` are
refused with that reason.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import ConfigError

AUGMENTATIONS = ("swap",)
NOT_IMPLEMENTED = {
    "gain": "an inter-channel gain changes the mid and side waveforms (and Whisper's "
            "features of every view), so each copy needs a second encoding pass; not "
            "implemented",
    "delay": "delay jitter changes the mid and side waveforms, so each copy needs a second "
             "encoding pass; not implemented",
}
MIRROR = {"left": "right", "right": "left", "mid": "mid", "side": "side", "mono": "mono"}


def check_augment(augment: Sequence[str], views: Sequence[str], mode: str = "frozen",
                  baselines: Sequence[str] = ()) -> tuple[str, ...]:
    """The augmentations asked for, checked: ConfigError for an unknown or unimplemented
    one, a view without a known left/right mirror, fine-tuned mode or baselines."""
    augment = tuple(augment)
    for name in augment:
        if name in NOT_IMPLEMENTED:
            raise ConfigError(f"--augment {name}: {NOT_IMPLEMENTED[name]} (available: "
                              f"{', '.join(AUGMENTATIONS)})")
        if name not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {name!r}; choose from "
                              f"{', '.join(AUGMENTATIONS)}")
    if not augment:
        return augment
    unknown = [v for v in views if v not in MIRROR]
    if unknown:
        raise ConfigError(f"--augment swap: view(s) {', '.join(unknown)} have no known "
                          "left/right mirror among the cached features; drop them from --views "
                          "or leave out --augment")
    if mode != "frozen":
        raise ConfigError("--augment applies to mode frozen (fine-tuned networks are trained "
                          "per fold on the original files)")
    if baselines:
        raise ConfigError("--augment cannot be combined with --baselines (the baselines' "
                          "right-channel features are not computed)")
    return augment


def swapped_rows(pooled):
    """:class:`~binser.experiment.PooledFeatures` with ``2N`` rows: rows ``0..N-1`` the
    originals, row ``N + i`` the left/right swap of utterance ``i`` (module docstring)."""
    from .experiment import PooledFeatures, as_pooled

    pooled = as_pooled(pooled)
    by_layer: dict[Any, dict] = {}
    for layer, mats in pooled.by_layer.items():
        by_layer[layer] = {}
        for (view, pooling), X in mats.items():
            mirror = (MIRROR.get(view), pooling)
            if mirror not in mats:
                raise ConfigError(f"--augment swap: {view}/{pooling} has no mirror "
                                  f"{mirror[0]}/{pooling} among the features")
            by_layer[layer][(view, pooling)] = np.concatenate([X, mats[mirror]])
    silent = {v: np.concatenate([m, pooled.silent.get(MIRROR[v], m)])
              for v, m in pooled.silent.items()}
    n_rows = {v: list(r) + list(pooled.n_rows.get(MIRROR.get(v, v), r))
              for v, r in pooled.n_rows.items()}
    return PooledFeatures(by_layer, silent, pooled.absent, n_rows)


def augmented_folds(fold_list: Sequence[tuple[np.ndarray, np.ndarray]], n: int
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each fold's training indices plus their copies' (``N + train``); test unchanged."""
    return [(np.concatenate([train, np.asarray(train) + n]), np.asarray(test))
            for train, test in fold_list]


def run_folds_augmented(pooled, y: np.ndarray, groups: np.ndarray,
                        fold_list: Sequence[tuple[np.ndarray, np.ndarray]], settings,
                        n_classes: int, progress: bool = True, run=None):
    """:func:`binser.experiment.run_folds` with the swapped training rows (``settings.augment``
    non-empty), predictions trimmed back to the ``N`` original utterances; without
    augmentation, ``run_folds`` itself. ``run``: the fold runner (default ``run_folds``)."""
    from .experiment import run_folds

    run = run or run_folds
    if not settings.augment:
        return run(pooled, y, groups, fold_list, settings, n_classes, progress)
    n = len(y)
    folds = augmented_folds(fold_list, n)
    for _, test in folds:
        if np.any(test >= n):
            raise AssertionError("an augmented row reached a test fold")
    runs, test_proba = run(swapped_rows(pooled), np.concatenate([y, y]),
                           np.concatenate([groups, groups]), folds, settings, n_classes,
                           progress)
    for r in runs.values():
        if np.any(r.predicted[n:] >= 0):
            raise AssertionError(f"{r.name}: an augmented row was scored as a test utterance")
        r.predicted = r.predicted[:n]
    return runs, {view: proba[:n] for view, proba in test_proba.items()}
