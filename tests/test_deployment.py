"""Speaker normalisation as deployed (binser.deployment): the transductive variant reproduces
the run, the others are reproducible for a seed and cost what a planted speaker offset says."""
from __future__ import annotations

import numpy as np
import pytest

from binser.deployment import _batches, deployment_variants
from binser.errors import ConfigError
from binser.evaluation import folds
from binser.experiment import (ExperimentSettings, PooledFeatures, run_folds, speaker_normalised,
                               summarise_run)

CLASSES = ["anger", "joy", "neutral", "sadness"]


@pytest.fixture(scope="module")
def study():
    """4 speakers x 24 utterances, 4 classes; each speaker adds a large constant offset to
    every feature (what speaker normalisation removes): (pooled, y, speakers, folds, runs)."""
    rng = np.random.default_rng(0)
    y = np.tile(np.repeat(np.arange(4), 6), 4)
    speakers = np.repeat([f"s{i}" for i in range(4)], 24)
    offset = {s: rng.normal(scale=3.0, size=8) for s in np.unique(speakers)}
    feats = {}
    for view in ("left", "right"):
        X = rng.normal(size=(len(y), 8)) + 0.8 * rng.normal(size=(4, 8))[y]
        feats[(view, "stats")] = X + np.array([offset[s] for s in speakers])
    pooled = PooledFeatures({None: feats}, {})
    fold_list = folds(list(speakers), "loso")
    settings = ExperimentSettings(dataset="x", root="x", views=("left", "right"),
                                  poolings=("stats",), fusion_pooling="stats", n_boot=10)
    runs, _ = run_folds(speaker_normalised(pooled, speakers), y, speakers, fold_list, settings,
                        4, progress=False, n_jobs=1)
    summary = {"speaker-norm:" + n: summarise_run(r, y, CLASSES, fold_list, 10, 0, speakers)
               for n, r in runs.items()}
    return pooled, y, speakers, fold_list, summary


def _variants(study, seed=1, **kw):
    pooled, y, speakers, fold_list, runs = study
    return deployment_variants(pooled, y, speakers, fold_list, runs, CLASSES,
                               fusion="left+right", seed=seed, ks=(3, 5, 10), n_draws=3, **kw)


def test_all_utterances_reproduce_the_run_and_the_fallback_pays_for_the_offset(study):
    out = _variants(study)
    kinds = [v["kind"] for v in out["variants"]]
    assert kinds == ["all", "random", "random", "random", "skewed", "skewed", "fallback"]
    by = {(v["kind"], v.get("k")): v for v in out["variants"]}
    assert by[("all", None)]["ua"] == out["run_ua"]            # the run, refitted here
    assert out["run_ua"] > 0.8 and by[("fallback", None)]["ua"] < 0.6
    # 3 utterances < 5: predict's fallback, so the same predictions as no utterance at all
    assert by[("random", 3)]["ua_draws"] == [by[("fallback", None)]["ua"]] * 3
    assert "fallback" in by[("random", 3)]["note"]
    assert by[("random", 10)]["ua"] > by[("fallback", None)]["ua"] + 0.2
    assert out["caveat"] == "transductive: uses all of the test speaker's recordings"
    skewed = [v for v in out["variants"] if v["kind"] == "skewed"]
    assert [v["labels"] for v in skewed] == [["neutral", "sadness"], ["anger", "joy"]]


def test_variants_are_reproducible_for_a_seed(study):
    a, b, c = _variants(study, seed=7), _variants(study, seed=7), _variants(study, seed=8)
    assert a == b
    draws = lambda out: [v["ua_draws"] for v in out["variants"] if v["kind"] == "random"]  # noqa: E731
    assert draws(a) != draws(c)
    _, y, speakers, fold_list, _ = study
    first = _batches(y, speakers, CLASSES, fold_list, (5,), 2, 7, {})
    again = _batches(y, speakers, CLASSES, fold_list, (5,), 2, 7, {})
    for u, v in zip(first, again):
        for s in u["batch"]:
            np.testing.assert_array_equal(u["batch"][s], v["batch"][s])
    drawn = first[1]["batch"]["s2"]                       # k = 5 of speaker s2's own rows
    assert len(drawn) == 5 and set(speakers[drawn]) == {"s2"}


def test_missing_run_or_bad_k_is_refused(study):
    pooled, y, speakers, fold_list, runs = study
    with pytest.raises(ConfigError, match="speaker-norm:score-fusion/left\\+right\\+mid\\+side"):
        deployment_variants(pooled, y, speakers, fold_list, runs, CLASSES)
    with pytest.raises(ConfigError, match="k values"):
        deployment_variants(pooled, y, speakers, fold_list, runs, CLASSES, fusion="left+right",
                            ks=(0,))
