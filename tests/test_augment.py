"""Stereo augmentation of training rows (binser.augment): the swapped rows, the folds, and a
planted check that no augmented row ever reaches a test fold or its scores."""
from __future__ import annotations

import numpy as np
import pytest

from binser.augment import (augmented_folds, check_augment, run_folds_augmented, swapped_rows)
from binser.errors import ConfigError
from binser.evaluation import folds
from binser.experiment import ExperimentSettings, PooledFeatures, run_folds


def test_swapped_rows_mirror_left_and_right_and_copy_mid_and_side():
    rng = np.random.default_rng(0)
    mats = {(v, "stats"): rng.standard_normal((5, 3)) for v in ("left", "right", "mid", "side")}
    silent = {v: np.array([False, True, False, False, False]) for v in ("mid", "side")}
    silent["left"] = np.array([True, False, False, False, False])
    silent["right"] = np.zeros(5, bool)
    pooled = swapped_rows(PooledFeatures({None: mats}, silent, (), {"left": [1] * 5,
                                                                     "right": [2] * 5}))
    out = pooled.layer_features()
    assert np.array_equal(out[("left", "stats")][5:], mats[("right", "stats")])
    assert np.array_equal(out[("right", "stats")][5:], mats[("left", "stats")])
    for v in ("left", "right", "mid", "side"):
        assert np.array_equal(out[(v, "stats")][:5], mats[(v, "stats")])   # originals first
    for v in ("mid", "side"):
        assert np.array_equal(out[(v, "stats")][5:], mats[(v, "stats")])
    assert list(pooled.silent["right"]) == [False] * 5 + [True] + [False] * 4
    assert pooled.n_rows["left"] == [1] * 5 + [2] * 5


def test_side_features_do_not_depend_on_the_sign_of_side():
    """Why the swap needs no encoding: side' = -side and every front end reads |STFT|."""
    from binser.backbones.whisper import whisper_log_mel
    from binser.spectrogram import log_mel

    x = np.random.default_rng(1).standard_normal(8000).astype(np.float32)
    assert np.array_equal(log_mel(x, 16000), log_mel(-x, 16000))
    assert np.array_equal(whisper_log_mel(x), whisper_log_mel(-x))


def test_folds_gain_training_copies_only():
    fold_list = folds(["a", "a", "b", "b", "c"], "loso")
    for (train, test), (atrain, atest) in zip(fold_list, augmented_folds(fold_list, 5)):
        assert np.array_equal(atest, test)
        assert set(atrain) == set(train) | {i + 5 for i in train}
        assert not set(atrain) & ({i + 5 for i in test} | set(test))


def planted(n_per=6, speakers=4, k=3, seed=0):
    """Left carries no label information and right carries it perfectly; a left/right swap
    puts the informative rows into left's training data (only the copies)."""
    rng = np.random.default_rng(seed)
    n = n_per * speakers
    y = np.tile(np.arange(k), n // k)
    groups = np.repeat([f"s{i}" for i in range(speakers)], n_per)
    informative = np.eye(k)[y] * 5 + 0.1 * rng.standard_normal((n, k))
    mats = {("left", "global-avg"): rng.standard_normal((n, k)),
            ("right", "global-avg"): informative,
            ("mid", "global-avg"): rng.standard_normal((n, k)),
            ("side", "global-avg"): rng.standard_normal((n, k))}
    return PooledFeatures({None: mats}, {}), y, groups


def test_no_augmented_row_reaches_a_test_fold_or_its_scores():
    pooled, y, groups = planted()
    n = len(y)
    fold_list = folds(list(groups), "loso")
    settings = ExperimentSettings(dataset="x", root="x", poolings=("global-avg",),
                                  augment=("swap",))
    seen = []

    def spy(pooled_aug, y_aug, groups_aug, fold_aug, *args):
        seen.append((pooled_aug, y_aug, groups_aug, fold_aug))
        return run_folds(pooled_aug, y_aug, groups_aug, fold_aug, *args, n_jobs=1)

    runs, proba = run_folds_augmented(pooled, y, groups, fold_list, settings, 3, False, run=spy)
    pooled_aug, y_aug, groups_aug, fold_aug = seen[0]
    assert len(y_aug) == 2 * n and np.array_equal(groups_aug[n:], groups)
    for (train, test), (atrain, atest) in zip(fold_list, fold_aug):
        assert atest.max() < n and np.array_equal(atest, test)          # test: originals only
        assert not set(atrain) & set(test + n)                          # nor their copies
        assert set(groups_aug[atrain]).isdisjoint(set(groups[test]))   # speaker-independent
    assert all(len(r.predicted) == n and (r.predicted >= 0).all() for r in runs.values())
    assert all(p.shape == (n, 3) for p in proba.values())
    # planted: the informative copies train left's classifier, but left is scored on its own
    # (uninformative) test rows: near chance, while right is perfect
    ua = {name: np.mean([np.mean(r.predicted[y == c] == c) for c in range(3)])
          for name, r in runs.items()}
    assert ua["right/global-avg"] == 1.0
    assert ua["left/global-avg"] < 0.6
    # and had the copies of test utterances been scored, left would have been perfect
    left_copies = pooled_aug.layer_features()[("left", "global-avg")][n:]
    assert np.array_equal(left_copies, pooled.layer_features()[("right", "global-avg")])


def test_without_augment_the_folds_are_run_as_before():
    pooled, y, groups = planted()
    fold_list = folds(list(groups), "loso")
    settings = ExperimentSettings(dataset="x", root="x", poolings=("global-avg",))
    calls = []
    run_folds_augmented(pooled, y, groups, fold_list, settings, 3, False,
                        run=lambda *a: calls.append(a) or ({}, {}))
    assert calls[0][0] is pooled and calls[0][3] is fold_list


def test_augment_options_are_checked_up_front():
    with pytest.raises(ConfigError, match="gain.*not implemented"):
        check_augment(("gain",), ("left", "right"))
    with pytest.raises(ConfigError, match="unknown augmentation 'flip'"):
        check_augment(("flip",), ("left",))
    with pytest.raises(ConfigError, match="no known left/right mirror"):
        check_augment(("swap",), ("left", "right", "spatial"))
    with pytest.raises(ConfigError, match="mode frozen"):
        check_augment(("swap",), ("left",), mode="finetune")
    with pytest.raises(ConfigError, match="--baselines"):
        ExperimentSettings(dataset="x", root="x", augment=("swap",),
                           baselines=("opensmile",)).validate()
    assert check_augment((), ("spatial",)) == ()
