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

``jitter``: every utterance gets one copy rendered in the signal domain and encoded again (a
second feature pass over the corpus, cached like any file): with probability 1/2 left and
right swapped, then an inter-channel gain ``g`` drawn uniformly from -3..+3 dB (``L' = L *
10^(g/40)``, ``R' = R * 10^(-g/40)``, so the level difference moves by ``g`` and the mean
level stays) and a delay ``d`` drawn uniformly from -0.5..+0.5 ms applied to the right
channel as a fractional delay (a linear phase ``exp(-2 pi i f d)`` on its zero-padded FFT, cut
back to the original length). Both change the mid and side waveforms, and the gain changes
Whisper's features of every view, hence the new encoding. The draws come from
``SeedSequence([seed, sha256(relative path)])`` (:func:`jitter_params`), so a copy depends only
on its file and the seed; copies are written once as 16 kHz FLAC under
``<cache>/augmented/jitter-<seed>/`` (atomically; named by the source's content, path, seed and channels) and the pooled features of the copy corpus
become rows ``N..2N-1`` exactly as the swapped rows do. ``--augment swap`` and ``jitter``
are alternatives (one copy per utterance).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import ConfigError

AUGMENTATIONS = ("swap", "jitter")
NOT_IMPLEMENTED = {
    "gain": "an inter-channel gain is part of --augment jitter (with the delay and a random "
            "swap, each copy encoded again)",
    "delay": "delay jitter is part of --augment jitter (with the gain and a random swap, each "
             "copy encoded again)",
}
GAIN_DB = 3.0          # inter-channel gain drawn from -GAIN_DB..+GAIN_DB
DELAY_MS = 0.5         # right-channel delay drawn from -DELAY_MS..+DELAY_MS
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
    if len(augment) > 1:
        raise ConfigError(f"--augment takes one of {', '.join(AUGMENTATIONS)} (one copy per "
                          f"utterance), got {','.join(augment)}")
    unknown = [v for v in views if v not in MIRROR]
    if unknown:
        raise ConfigError(f"--augment {augment[0]}: view(s) {', '.join(unknown)} have no known "
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


def stacked_rows(pooled, copies):
    """:class:`~binser.experiment.PooledFeatures` with ``2N`` rows: the originals, then the
    copies' rows (same views, poolings and layers)."""
    from .experiment import PooledFeatures, as_pooled

    pooled, copies = as_pooled(pooled), as_pooled(copies)
    by_layer = {layer: {key: np.concatenate([X, copies.by_layer[layer][key]])
                        for key, X in mats.items()}
                for layer, mats in pooled.by_layer.items()}
    n = len(next(iter(next(iter(pooled.by_layer.values())).values())))
    silent = {v: np.concatenate([pooled.silent.get(v, np.zeros(n, bool)),
                                 copies.silent.get(v, np.zeros(n, bool))])
              for v in set(pooled.silent) | set(copies.silent)}
    absent = tuple(v for v in pooled.absent if v in copies.absent)
    n_rows = {v: list(r) + list(copies.n_rows.get(v, r)) for v, r in pooled.n_rows.items()}
    return PooledFeatures(by_layer, silent, absent, n_rows)


def augmented_folds(fold_list: Sequence[tuple[np.ndarray, np.ndarray]], n: int
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each fold's training indices plus their copies' (``N + train``); test unchanged."""
    return [(np.concatenate([train, np.asarray(train) + n]), np.asarray(test))
            for train, test in fold_list]


def jitter_params(seed: int, relative_path: str) -> dict[str, float]:
    """The draws of one file's jittered copy: ``swap`` (0/1), ``gain_db``, ``delay_ms``."""
    import hashlib

    digest = int(hashlib.sha256(relative_path.encode()).hexdigest()[:16], 16)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), digest]))
    return {"swap": float(rng.random() < 0.5),
            "gain_db": float(rng.uniform(-GAIN_DB, GAIN_DB)),
            "delay_ms": float(rng.uniform(-DELAY_MS, DELAY_MS))}


def fractional_delay(signal: np.ndarray, delay_s: float, sr: int) -> np.ndarray:
    """``signal`` ``(N,)`` delayed by ``delay_s`` seconds (any real value) via a linear phase
    on its FFT, zero-padded by more than the delay so nothing wraps around; length kept."""
    n = len(signal)
    pad = n + 2 * int(np.ceil(abs(delay_s) * sr)) + 2
    spectrum = np.fft.rfft(signal, pad)
    freqs = np.fft.rfftfreq(pad, 1.0 / sr)
    return np.fft.irfft(spectrum * np.exp(-2j * np.pi * freqs * delay_s), pad)[:n]


def jitter_audio(audio: np.ndarray, params: dict[str, float], sr: int = 16000) -> np.ndarray:
    """The jittered copy ``(2, N)`` of ``audio`` ``(C, N)`` (mono: L = R) (module docstring)."""
    left, right = audio[0], audio[-1]
    if params["swap"]:
        left, right = right, left
    g = 10.0 ** (params["gain_db"] / 40.0)
    right = fractional_delay(right * (1.0 / g), params["delay_ms"] / 1000.0, sr)
    return np.stack([left * g, right]).astype(np.float32)


def jittered_corpus(corpus, folder, seed: int, progress: bool = True, channels=None):
    """A copy of ``corpus`` whose files are the jittered copies, written once into ``folder``
    and reused afterwards. A copy's name hashes what it depends on: the source file's content,
    its path within the corpus (the draws), the seed and the channels picked; written
    atomically (:func:`binser.scenes.run.write_flac`)."""
    import hashlib
    import os
    from pathlib import Path

    from .audio import load_audio
    from .cache import file_sha256
    from .corpora import Corpus, Utterance
    from .features import progress_bar
    from .scenes.run import write_flac

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    bar = progress_bar(len(corpus), progress, "file", "augment")
    for u in corpus:
        rel = os.path.relpath(u.path, corpus.root)
        key = f"{file_sha256(u.path)}|{rel}|{seed}|{channels}"
        target = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.flac"
        if not target.exists():
            audio = jitter_audio(load_audio(u.path, channels=channels), jitter_params(seed, rel))
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            write_flac(target, audio / peak if peak > 1.0 else audio)
        copies.append(Utterance(target, u.label, u.speaker, u.split))
        bar.update()
    bar.close()
    return Corpus(f"{corpus.name}+jitter", folder, copies)


def run_folds_augmented(pooled, y: np.ndarray, groups: np.ndarray,
                        fold_list: Sequence[tuple[np.ndarray, np.ndarray]], settings,
                        n_classes: int, progress: bool = True, run=None, copies=None):
    """:func:`binser.experiment.run_folds` with augmented training rows (``settings.augment``
    non-empty: the swapped rows, or ``copies``, the pooled features of the jittered copy
    corpus), predictions trimmed back to the ``N`` original utterances; without
    augmentation, ``run_folds`` itself. ``pooled``: one feature set for all folds or a
    list of one per fold (each distinct set augmented once). ``run``: the fold runner
    (default ``run_folds``)."""
    from .experiment import as_per_fold, distinct_map, run_folds

    run = run or run_folds
    if not settings.augment:
        return run(pooled, y, groups, fold_list, settings, n_classes, progress)
    n = len(y)
    folds = augmented_folds(fold_list, n)
    for _, test in folds:
        if np.any(test >= n):
            raise AssertionError("an augmented row reached a test fold")
    rows = distinct_map(as_per_fold(pooled, len(fold_list)),
                        swapped_rows if copies is None else lambda p: stacked_rows(p, copies))
    runs, test_proba = run(rows, np.concatenate([y, y]),
                           np.concatenate([groups, groups]), folds, settings, n_classes,
                           progress)
    for r in runs.values():
        if np.any(r.predicted[n:] >= 0):
            raise AssertionError(f"{r.name}: an augmented row was scored as a test utterance")
        r.predicted = r.predicted[:n]
    return runs, {view: proba[:n] for view, proba in test_proba.items()}
