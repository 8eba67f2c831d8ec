"""Speaker normalisation: only the speaker's own rows, never the labels; silent views."""
from __future__ import annotations

import numpy as np
import pytest

from binser.errors import ConfigError
from binser.normalisation import (SpeakerNormaliser, coverage_warning, label_coverage,
                                  speaker_normalise)
from binser.views import binaural_views, silent_views


def test_each_row_standardised_with_its_own_speaker_only():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(9, 3)) + np.repeat([[0.0], [10.0], [-5.0]], 3, axis=0)
    spk = np.repeat(["a", "b", "c"], 3)
    out = speaker_normalise(X, spk)
    for s in "abc":
        rows = X[spk == s]
        np.testing.assert_allclose(out[spk == s], (rows - rows.mean(0)) / rows.std(0))
    # changing another speaker's rows never changes this speaker's output
    X2 = X.copy()
    X2[spk == "b"] += rng.normal(size=(3, 3)) * 100
    np.testing.assert_array_equal(speaker_normalise(X2, spk)[spk == "a"], out[spk == "a"])


def test_labels_are_not_an_input_and_constant_dimensions_do_not_divide_by_zero():
    import inspect

    assert "label" not in " ".join(inspect.signature(speaker_normalise).parameters)
    X = np.array([[1.0, 5.0], [3.0, 5.0]])
    out = speaker_normalise(X, ["s", "s"])
    np.testing.assert_allclose(out, [[-1.0, 0.0], [1.0, 0.0]])


def test_masked_rows_are_left_out_of_the_statistics_and_zeroed():
    X = np.array([[1.0], [3.0], [100.0]])
    out = speaker_normalise(X, ["s"] * 3, mask=np.array([True, True, False]))
    np.testing.assert_allclose(out.ravel(), [-1.0, 1.0, 0.0])


def test_normaliser_falls_back_to_the_average_training_speaker():
    X = np.array([[0.0], [2.0], [10.0], [14.0]])
    norm = SpeakerNormaliser(min_utterances=2).fit(X, ["a", "a", "b", "b"])
    np.testing.assert_allclose(norm.fallback_mean_, [6.5])   # mean of 1 and 12
    np.testing.assert_allclose(norm.fallback_std_, [1.5])    # mean of 1 and 2
    out = norm.transform(np.array([[8.0], [3.0], [5.0]]), ["new", "c", "c"])
    assert norm.fallback_speakers_ == ["new"]
    np.testing.assert_allclose(out.ravel(), [1.0, -1.0, 1.0])
    back = SpeakerNormaliser.from_state(norm.get_state())
    np.testing.assert_allclose(back.transform(np.array([[8.0]]), ["x"]), [[1.0]])
    with pytest.raises(ConfigError, match="not fitted"):
        SpeakerNormaliser().transform(X, ["a"] * 4)


def test_coverage_warning_for_one_label_speakers():
    labels = ["joy", "anger", "joy", "sadness", "neutral", "anger"]
    assert coverage_warning(labels, ["a", "a", "a", "b", "b", "b"]) is None
    assert label_coverage(labels, ["a", "a", "a", "b", "b", "b"]) == {"a": 0.5, "b": 0.75}
    one_each = coverage_warning(labels, ["s1", "s2", "s1", "s3", "s4", "s2"])
    assert one_each is not None and "speaker normalisation" in one_each


def test_side_of_identical_or_mono_input_is_silent_real_stereo_is_not():
    rng = np.random.default_rng(1)
    x = rng.normal(size=16000).astype(np.float32) * 0.1
    assert silent_views(binaural_views(np.stack([x, x]))) == {"side"}
    near = np.stack([x, x + 1e-4 * rng.normal(size=16000).astype(np.float32)])
    assert "side" in silent_views(binaural_views(near))          # -60 dB below mid
    other = rng.normal(size=16000).astype(np.float32) * 0.1
    assert silent_views(binaural_views(np.stack([x, other]))) == set()
    dead = np.stack([x, np.zeros_like(x)])                          # one dead channel
    assert silent_views(binaural_views(dead)) == {"right"}
