"""Classifier fold results are cached on disk: a rerun with the same inputs skips the SVMs and
gives bit-identical outputs; any change of the inputs recomputes."""
from __future__ import annotations

import numpy as np
import pytest

from binser import classifier as classifier_module
from binser.cache import CacheWarning
from binser.experiment import ExperimentSettings, FoldResultCache, evaluate_fold


def _study(seed: int = 0):
    rng = np.random.default_rng(seed)
    n_speakers, per = 4, 12
    y = np.tile(np.arange(3), n_speakers * per // 3)
    groups = np.repeat([f"s{i}" for i in range(n_speakers)], per)
    pooled = {}
    for view in ("left", "right"):
        for pooling in ("global-max", "block-max"):
            centre = rng.normal(size=(3, 8))
            pooled[(view, pooling)] = centre[y] + rng.normal(scale=1.5, size=(len(y), 8))
    train, test = np.flatnonzero(groups != "s0"), np.flatnonzero(groups == "s0")
    return pooled, y, groups, train, test


def _settings(cache_dir, seed: int = 0, solver: str = "exact") -> ExperimentSettings:
    return ExperimentSettings(dataset="folder", root=".", views=("left", "right"),
                              poolings=("global-max", "block-max"), cache_dir=cache_dir,
                              seed=seed, solver=solver)


def _forbid_fitting(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a classifier was fitted although its result was cached")
    # every fit starts with the inner-CV search (fit = search + refit)
    monkeypatch.setattr(classifier_module.ViewClassifier, "search", refuse)


def test_rerun_reads_cached_results_bit_for_bit(tmp_path, monkeypatch):
    pooled, y, groups, train, test = _study()
    settings = _settings(str(tmp_path))
    first, first_proba = evaluate_fold(pooled, y, groups, train, test, settings, 3)
    entries = list((tmp_path / "classifier").rglob("*.npy"))
    # 4 single runs + 1 feature fusion (left+right) + 2 out-of-fold score sets
    assert len(entries) == 7
    _forbid_fitting(monkeypatch)
    again, again_proba = evaluate_fold(pooled, y, groups, train, test, settings, 3)
    assert again.keys() == first.keys()
    for name in first:
        np.testing.assert_array_equal(again[name][0], first[name][0])
        assert again[name][1] == first[name][1]          # C, fusion weights
    for view in first_proba:
        np.testing.assert_array_equal(again_proba[view], first_proba[view])


@pytest.mark.parametrize("change", ["labels", "features", "seed", "fold", "solver",
                                    "solver code"])
def test_any_changed_input_recomputes(tmp_path, monkeypatch, change):
    pooled, y, groups, train, test = _study()
    evaluate_fold(pooled, y, groups, train, test, _settings(str(tmp_path)), 3)
    seed, solver = 0, "exact"
    if change == "labels":
        y = y.copy()
        y[train[:3]] = (y[train[:3]] + 1) % 3
    elif change == "features":
        pooled = dict(pooled)
        X = pooled[("left", "global-max")].copy()
        X[0, 0] += 1e-9
        pooled[("left", "global-max")] = X
    elif change == "seed":
        seed = 1
    elif change == "solver":           # the previous solver never reads the new one's entries
        solver = "liblinear"
    elif change == "solver code":      # an edited solver (binser/svm.py) recomputes too
        from binser import svm
        from binser.experiment import folds as experiment   # where the cache reads sources

        real = experiment.file_sha256
        monkeypatch.setattr(experiment, "file_sha256",
                            lambda path: "edited" if path == svm.__file__ else real(path))
    else:
        train, test = np.flatnonzero(groups != "s1"), np.flatnonzero(groups == "s1")
    _forbid_fitting(monkeypatch)
    with pytest.raises(AssertionError, match="was fitted"):
        evaluate_fold(pooled, y, groups, train, test, _settings(str(tmp_path), seed, solver), 3)


def test_corrupt_entry_is_recomputed_with_a_warning(tmp_path):
    pooled, y, groups, train, test = _study()
    X = pooled[("left", "block-max")]
    cache = FoldResultCache(tmp_path, y, groups, train, test, seed=0, n_classes=3)
    proba, C, _ = cache.fit_predict(X)
    assert proba.shape == (len(test), 3) and C > 0
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    (entry,) = list(tmp_path.rglob("*.npy"))
    entry.write_bytes(entry.read_bytes()[:40])               # truncated
    with pytest.warns(CacheWarning, match="unreadable"):
        again, C_again, _ = cache.fit_predict(X)
    np.testing.assert_array_equal(again, proba)
    assert C_again == C


def test_no_cache_dir_writes_nothing(tmp_path, monkeypatch):
    pooled, y, groups, train, test = _study()
    monkeypatch.chdir(tmp_path)
    evaluate_fold(pooled, y, groups, train, test, _settings(None), 3)
    assert list(tmp_path.rglob("*")) == []
