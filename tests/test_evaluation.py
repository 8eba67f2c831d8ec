"""Protocols and metrics: scikit-learn as the reference, hand-built speaker lists."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from binser.errors import ConfigError
from binser.evaluation import bootstrap_ua_ci, folds, metrics, parse_protocol, speaker_groups

CLASSES = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]


def _speakers(counts: dict[str, int]) -> list[str]:
    rng = np.random.default_rng(0)
    names = [s for s, c in counts.items() for _ in range(c)]
    return list(rng.permutation(names))  # interleaved, as in a real corpus listing


def _assert_partition(speakers, fold_list):
    spk = np.asarray(speakers)
    seen = np.concatenate([test for _, test in fold_list])
    assert sorted(seen.tolist()) == list(range(len(spk)))  # every utterance tested once
    for train, test in fold_list:
        assert len(np.intersect1d(train, test)) == 0
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(spk)))
        assert not set(spk[train]) & set(spk[test])           # speaker-disjoint


def test_parse_protocol():
    assert parse_protocol("loso") == ("loso", None)
    assert parse_protocol("split") == ("split", None)
    assert parse_protocol("losgo:5") == ("losgo", 5)
    assert parse_protocol(" LOSGO:3 ") == ("losgo", 3)
    for bad in ("", "lopo", "losgo", "losgo:", "losgo:x", "losgo:1", "losgo:-2", "loso:3", "split:2"):
        with pytest.raises(ConfigError, match="protocol"):
            parse_protocol(bad)


def test_loso_one_fold_per_speaker_sorted():
    speakers = _speakers({"f2": 3, "m1": 5, "f1": 4})
    fl = folds(speakers, "loso")
    assert [np.asarray(speakers)[test][0] for _, test in fl] == ["f1", "f2", "m1"]
    assert [len(test) for _, test in fl] == [4, 3, 5]
    _assert_partition(speakers, fl)
    with pytest.raises(ConfigError, match="2 speakers"):
        folds(["a", "a"], "loso")


def test_losgo_greedy_groups_by_hand():
    counts = {"a": 10, "b": 9, "c": 8, "d": 3, "e": 2, "f": 2}
    # greedy: a->0 (10), b->1 (9), c->2 (8), d->2 (11), e->1 (11), f->0 (12)
    assert speaker_groups(_speakers(counts), 3) == [["a", "f"], ["b", "e"], ["c", "d"]]
    fl = folds(_speakers(counts), "losgo:3")
    assert [len(test) for _, test in fl] == [12, 11, 11]
    _assert_partition(_speakers(counts), fl)


def test_losgo5_balanced_and_deterministic():
    rng = np.random.default_rng(4)
    counts = {f"s{i:02d}": int(c) for i, c in enumerate(rng.integers(20, 40, size=31))}
    speakers = _speakers(counts)
    fl = folds(speakers, "losgo:5")
    assert len(fl) == 5
    _assert_partition(speakers, fl)
    sizes = [len(test) for _, test in fl]
    assert max(sizes) - min(sizes) <= max(counts.values())
    assert max(sizes) / min(sizes) < 1.15 and sum(sizes) == len(speakers)
    again = folds(list(reversed(speakers)), "losgo:5")  # order of listing does not matter
    spk, rev = np.asarray(speakers), np.asarray(list(reversed(speakers)))
    assert [set(spk[t]) for _, t in fl] == [set(rev[t]) for _, t in again]
    with pytest.raises(ConfigError, match="at least 6 speakers"):
        folds(["a", "b", "c", "d", "e"], "losgo:6")


def test_split_protocol():
    speakers = ["a", "b", "c", "d", "e"]
    splits = ["train", "test", None, "Train", "test"]
    (train, test), = folds(speakers, "split", splits)
    assert train.tolist() == [0, 3] and test.tolist() == [1, 4]
    with pytest.raises(ConfigError, match="0 test"):
        folds(speakers, "split", ["train"] * 5)
    with pytest.raises(ConfigError, match="split"):
        folds(speakers, "split")


def test_folds_accept_utterance_objects():
    @dataclass(frozen=True)
    class Utt:
        speaker: str
        split: str | None

    utts = [Utt("a", "train"), Utt("b", "test"), Utt("a", "train"), Utt("c", "test")]
    assert [t.tolist() for _, t in folds(utts, "loso")] == [[0, 2], [1], [3]]
    (train, test), = folds(utts, "split")
    assert train.tolist() == [0, 2] and test.tolist() == [1, 3]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.choice(CLASSES, size=200)
    y_pred = np.where(rng.random(200) < 0.4, y_true, rng.choice(CLASSES, size=200))
    m = metrics(y_true, y_pred, CLASSES)
    assert m["ua"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["wa"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["confusion"] == confusion_matrix(y_true, y_pred, labels=CLASSES).tolist()
    assert all(isinstance(v, int) for row in m["confusion"] for v in row)


def test_metrics_with_classes_absent_from_fold():
    y_true = ["anger", "anger", "joy", "joy", "joy"]
    y_pred = ["anger", "fear", "joy", "anger", "joy"]
    m = metrics(y_true, y_pred, CLASSES)
    assert m["ua"] == pytest.approx((1 / 2 + 2 / 3) / 2)       # recall over anger, joy only
    with pytest.warns(UserWarning):  # sklearn warns about 'fear' predicted but never true
        assert m["ua"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["wa"] == pytest.approx(3 / 5)
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert np.asarray(m["confusion"]).shape == (7, 7) and np.sum(m["confusion"]) == 5
    assert m["confusion"][0][:3] == [1, 0, 1]
    with pytest.raises(ConfigError, match="calm"):
        metrics(["calm"], ["joy"], CLASSES)
    with pytest.raises(ConfigError):
        metrics([], [], CLASSES)


def test_bootstrap_ci_contains_ua_and_narrows():
    rng = np.random.default_rng(5)

    def sample(n):
        y = rng.choice(CLASSES[:4], size=n)
        pred = np.where(rng.random(n) < 0.6, y, rng.choice(CLASSES[:4], size=n))
        return y, pred

    y_small, p_small = sample(80)
    y_big, p_big = sample(3000)
    lo_s, hi_s = bootstrap_ua_ci(y_small, p_small, CLASSES)
    lo_b, hi_b = bootstrap_ua_ci(y_big, p_big, CLASSES)
    assert lo_s <= metrics(y_small, p_small, CLASSES)["ua"] <= hi_s
    assert lo_b <= metrics(y_big, p_big, CLASSES)["ua"] <= hi_b
    assert (hi_b - lo_b) < 0.4 * (hi_s - lo_s)
    assert bootstrap_ua_ci(y_small, p_small, CLASSES, seed=7) == bootstrap_ua_ci(
        y_small, p_small, CLASSES, seed=7)
    assert bootstrap_ua_ci(y_small, y_small, CLASSES) == (1.0, 1.0)


def test_bootstrap_matches_loop_reference():
    rng = np.random.default_rng(6)
    y = rng.choice(CLASSES[:3], size=40)
    pred = np.where(rng.random(40) < 0.5, y, rng.choice(CLASSES[:3], size=40))
    lo, hi = bootstrap_ua_ci(y, pred, CLASSES, n_boot=200, seed=11, level=0.9)
    draw = np.random.default_rng(11).integers(0, 40, size=(200, 40))
    uas = [balanced_accuracy_score(y[i], pred[i]) for i in draw]
    ref = np.quantile(uas, [0.05, 0.95])
    assert (lo, hi) == pytest.approx(tuple(ref))
    with pytest.raises(ConfigError):
        bootstrap_ua_ci(y, pred, CLASSES, level=1.5)
