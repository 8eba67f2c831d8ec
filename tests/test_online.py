"""Online speaker normalisation (binser.normalisation.OnlineSpeakerNormaliser,
window_normalise) and its offline evaluation (binser.online): only earlier utterances are
used, the warm-up falls back to the average training speaker, and with all of a speaker's
utterances before it the curve reaches the offline speaker normalisation."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from binser.classifier import ViewClassifier
from binser.errors import ConfigError
from binser.normalisation import (OnlineSpeakerNormaliser, SpeakerNormaliser,
                                  speaker_normalise, window_normalise)
from binser.online import online_curve, plot_online_curve


def corpus(n_speakers: int = 4, per_class: int = 6, d: int = 5, seed: int = 0):
    """Three classes along dimension 0..2; each speaker adds a large offset to every row, so
    the classes separate only after per-speaker standardisation."""
    rng = np.random.default_rng(seed)
    X, y, spk = [], [], []
    for s in range(n_speakers):
        offset = rng.normal(scale=4.0, size=d)
        for c in range(3):
            rows = rng.normal(size=(per_class, d)) + offset
            rows[:, c] += 2.0
            X.append(rows)
            y += [f"c{c}"] * per_class
            spk += [f"s{s}"] * per_class
    return np.vstack(X), np.array(y), np.array(spk)


def loso(spk):
    return [(np.flatnonzero(spk != s), np.flatnonzero(spk == s)) for s in np.unique(spk)]


def test_stream_uses_only_earlier_rows_and_ends_at_the_offline_statistics():
    X, _, spk = corpus()
    norm = OnlineSpeakerNormaliser(warm_up=3).fit(X[spk != "s0"], spk[spk != "s0"])
    rows = X[spk == "s0"]
    out = norm.update_transform(rows, "s0")
    assert norm.count("s0") == len(rows)
    planted = rows.copy()
    planted[7:] += 1000.0                                 # future rows change
    norm.reset("s0")
    out2 = norm.update_transform(planted, "s0")
    np.testing.assert_array_equal(out[:7], out2[:7])
    assert not np.allclose(out[7:], out2[7:])
    # before the warm-up: the average training speaker (SpeakerNormaliser's fallback)
    offline = SpeakerNormaliser(min_utterances=3).fit(X[spk != "s0"], spk[spk != "s0"])
    np.testing.assert_allclose(out[:2], offline.transform(rows[:2], ["new", "new"]))
    # row j from the warm-up on: standardised over rows 0..j, as speaker_normalise would
    for j in (2, 9, len(rows) - 1):
        np.testing.assert_allclose(out[j], speaker_normalise(rows[:j + 1], ["s0"] * (j + 1))[j],
                                   rtol=1e-10, atol=1e-10)
    # row by row gives the same; keys do not mix; from_offline shares the fallback
    again = OnlineSpeakerNormaliser.from_offline(offline)
    assert again.warm_up == 3
    one_by_one = np.vstack([again.update_transform(r, "a") for r in rows])
    np.testing.assert_allclose(one_by_one, out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(again.update_transform(rows[:1], "b"), out[:1])


def test_prior_pools_the_rows_with_pseudo_rows_of_the_average_speaker():
    # fallback mean 0, std 1 (speakers a and b: means -1 and 1, stds 1 and 1)
    norm = OnlineSpeakerNormaliser(warm_up=1, prior=1.0).fit(
        np.array([[-2.0], [0.0], [0.0], [2.0]]), ["a", "a", "b", "b"])
    np.testing.assert_allclose([norm.fallback_mean_[0], norm.fallback_std_[0]], [0.0, 1.0])
    x = 3.0        # one row: mean x/2, variance ((x - x/2)^2 + 1 + (x/2)^2) / 2
    out = norm.update_transform(np.array([[x]]), "s")
    np.testing.assert_allclose(out, [[(x - x / 2) / np.sqrt((x * x / 2 + 1) / 2)]])
    # two rows 3 and 5 (mean 4, var 1) with prior 2: mean 2, var (2*(1+4) + 2*(1+4)) / 4
    norm = OnlineSpeakerNormaliser(warm_up=1, prior=2.0).fit(
        np.array([[-2.0], [0.0], [0.0], [2.0]]), ["a", "a", "b", "b"])
    out = norm.update_transform(np.array([[3.0], [5.0]]), "s")
    np.testing.assert_allclose(out[1], [(5.0 - 2.0) / np.sqrt(5.0)])
    with pytest.raises(ConfigError, match="prior"):
        OnlineSpeakerNormaliser(prior=-1.0).fit(np.zeros((2, 1)), ["a", "b"])


def test_rows_without_signal_are_zero_and_not_counted():
    X, _, spk = corpus()
    norm = OnlineSpeakerNormaliser(warm_up=2).fit(X, spk)
    mask = np.array([True, False, True, True])
    out = norm.update_transform(X[:4], "s", mask)
    assert norm.count("s") == 3
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_allclose(out[3], speaker_normalise(X[[0, 2, 3]], ["s"] * 3)[2])


def test_window_is_the_stream_of_a_rotation_and_ignores_later_rows():
    X, _, spk = corpus()
    rows = np.flatnonzero(spk == "s1")
    order = np.random.default_rng(1).permutation(rows)
    fallback = OnlineSpeakerNormaliser(warm_up=3).fit(X[spk != "s1"], spk[spk != "s1"])
    fb = (fallback.fallback_mean_, fallback.fallback_std_)
    for k, prior in ((0, 0.0), (1, 0.0), (4, 0.0), (9, 0.0), (4, 2.5)):
        Z = window_normalise(X, spk, {"s1": order}, k, fb, warm_up=3, prior=prior)
        stream_norm = OnlineSpeakerNormaliser(3, prior).fit(X[spk != "s1"], spk[spk != "s1"])
        for i in (0, 5, len(order) - 1):
            stream = np.roll(order, -(i - k))[:k + 1]     # rotation meeting order[i] at k
            assert stream[-1] == order[i]
            stream_norm.reset()
            expect = stream_norm.update_transform(X[stream], "s1")[-1]
            np.testing.assert_allclose(Z[order[i]], expect, rtol=1e-10, atol=1e-10)
    # a planted change in the row after order[5] (a later row of the stream) changes nothing
    planted = X.copy()
    planted[order[6]] += 1000.0
    for k in (0, 3):
        a = window_normalise(X, spk, {"s1": order}, k, fb, 3)
        b = window_normalise(planted, spk, {"s1": order}, k, fb, 3)
        np.testing.assert_array_equal(a[order[5]], b[order[5]])
    with pytest.raises(ConfigError, match="permutation"):
        window_normalise(X, spk, {"s1": order[:-1]}, 2, fb, 3)


def test_curve_reaches_the_offline_speaker_normalisation_and_starts_at_the_fallback():
    X, y, spk = corpus()
    folds = loso(spk)
    curve = online_curve(X, y, spk, folds, ks=(0, 3, 100), n_orders=2, warm_up=3)
    # independent reference: the offline speaker normaliser + the same classifier per fold
    pred = np.empty(len(y), dtype=object)
    fallback_pred = np.empty(len(y), dtype=object)
    for train, test in folds:
        clf = ViewClassifier(random_state=0).fit(speaker_normalise(X[train], spk[train]),
                                                 y[train], spk[train])
        pred[test] = clf.predict(speaker_normalise(X, spk)[test])
        norm = SpeakerNormaliser(min_utterances=10 ** 6).fit(X[train], spk[train])
        fallback_pred[test] = clf.predict(norm.transform(X[test], ["new"] * len(test)))
    offline = balanced_accuracy_score(y, pred.astype(str))
    assert curve["offline_ua"] == pytest.approx(offline)
    assert curve["ua_orders"][-1] == [pytest.approx(offline)] * 2
    # k = 0 with warm-up 3: every row uses the fallback, whatever the order
    assert curve["ua_orders"][0] == [pytest.approx(balanced_accuracy_score(
        y, fallback_pred.astype(str)))] * 2
    assert curve["ua"][0] < curve["offline_ua"] - 0.2     # the offsets hide the classes
    assert curve["ks"] == [0, 3, 100] and curve["warm_up"] == 3


def test_curve_over_views_and_bad_input(tmp_path):
    X, y, spk = corpus()
    views = {"left": X, "right": X + 0.1}
    curve = online_curve(views, y, spk, loso(spk), ks=(0, 100), n_orders=1, warm_up=2)
    assert 0.0 <= curve["ua"][0] <= 1.0 and curve["ua"][-1] == pytest.approx(curve["offline_ua"])
    png = plot_online_curve(curve, tmp_path / "online.png", title="toy")
    assert png.stat().st_size > 1000
    with pytest.raises(ConfigError, match="ks"):
        online_curve(X, y, spk, loso(spk), ks=(-1,))
    with pytest.raises(ConfigError, match="split across"):
        online_curve(X, y, spk, [(np.arange(10), np.arange(10, len(y)))])
    with pytest.raises(ConfigError, match="warm_up"):
        OnlineSpeakerNormaliser(warm_up=0).fit(X, spk)
    with pytest.raises(ConfigError, match="not fitted"):
        OnlineSpeakerNormaliser().update_transform(X[:1], "s")
    with pytest.raises(ConfigError, match="expected rows of 5"):
        OnlineSpeakerNormaliser().fit(X, spk).update_transform(X[:1, :3], "s")
