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
    assert len(pooled_aug) == len(fold_list) and all(p is pooled_aug[0] for p in pooled_aug)
    left_copies = pooled_aug[0].layer_features()[("left", "global-avg")][n:]   # shared once
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
    with pytest.raises(ConfigError, match="gain.*part of --augment jitter"):
        check_augment(("gain",), ("left", "right"))
    with pytest.raises(ConfigError, match="one of swap, jitter"):
        check_augment(("swap", "jitter"), ("left", "right"))
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


# ------------------------------------------------------------------ jitter (re-encoded copies)
def test_jitter_params_are_deterministic_per_file_and_in_range():
    from binser.augment import DELAY_MS, GAIN_DB, jitter_params

    a, b = jitter_params(0, "f1/a.flac"), jitter_params(0, "f1/a.flac")
    assert a == b and jitter_params(1, "f1/a.flac") != a and jitter_params(0, "f1/b.flac") != a
    draws = [jitter_params(0, f"x{i}.flac") for i in range(400)]
    assert all(abs(d["gain_db"]) <= GAIN_DB and abs(d["delay_ms"]) <= DELAY_MS for d in draws)
    assert 0.4 < np.mean([d["swap"] for d in draws]) < 0.6


def test_jitter_audio_gain_delay_and_swap_as_defined():
    from binser.augment import fractional_delay, jitter_audio

    sr, n = 16000, 4000
    rng = np.random.default_rng(0)
    left, right = rng.standard_normal(n), rng.standard_normal(n)
    out = jitter_audio(np.stack([left, right]), {"swap": 0.0, "gain_db": 2.0, "delay_ms": 0.0})
    level = 20 * np.log10(np.sqrt(np.mean(out[0] ** 2) / np.mean(out[1] ** 2))
                          / np.sqrt(np.mean(left ** 2) / np.mean(right ** 2)))
    assert level == pytest.approx(2.0, abs=1e-4)               # level difference moved by g
    swapped = jitter_audio(np.stack([left, right]), {"swap": 1.0, "gain_db": 0.0,
                                                     "delay_ms": 0.0})
    np.testing.assert_allclose(swapped[0], right, atol=1e-6)
    np.testing.assert_allclose(swapped[1], left, atol=1e-6)
    # an integer delay of 8 samples (0.5 ms) is an exact shift; a fractional one sits between
    shifted = fractional_delay(left, 8 / sr, sr)
    np.testing.assert_allclose(shifted[8:], left[:-8], atol=1e-9)
    np.testing.assert_allclose(shifted[:8], 0.0, atol=1e-9)
    half = fractional_delay(np.sin(2 * np.pi * 200 * np.arange(n) / sr), 0.25e-3, sr)
    ref = np.sin(2 * np.pi * 200 * (np.arange(n) / sr - 0.25e-3))
    np.testing.assert_allclose(half[200:-200], ref[200:-200], atol=1e-3)


def test_jittered_corpus_written_once_and_rows_stacked(tmp_path):
    import soundfile as sf

    from binser.augment import jittered_corpus, stacked_rows
    from binser.corpora import Corpus, Utterance
    from binser.experiment import PooledFeatures

    rng = np.random.default_rng(1)
    files = []
    for i in range(3):
        path = tmp_path / "src" / f"s{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, 0.1 * rng.standard_normal((8000, 2)), 16000)
        files.append(Utterance(path, "anger" if i else "joy", f"spk{i}", None))
    corpus = Corpus("tiny", tmp_path / "src", files)
    copies = jittered_corpus(corpus, tmp_path / "aug", seed=0, progress=False)
    assert [u.label for u in copies] == [u.label for u in corpus]
    assert [u.speaker for u in copies] == [u.speaker for u in corpus]
    stamps = [u.path.stat().st_mtime_ns for u in copies]
    again = jittered_corpus(corpus, tmp_path / "aug", seed=0, progress=False)
    assert [u.path.stat().st_mtime_ns for u in again] == stamps        # reused, not rewritten
    assert sf.info(copies[0].path).channels == 2
    a = PooledFeatures({None: {("left", "stats"): np.zeros((3, 2))}}, {})
    b = PooledFeatures({None: {("left", "stats"): np.ones((3, 2))}}, {})
    rows = stacked_rows(a, b).by_layer[None][("left", "stats")]
    np.testing.assert_array_equal(rows, np.vstack([np.zeros((3, 2)), np.ones((3, 2))]))
