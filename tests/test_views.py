"""Tests of binser.views: the binaural views and the channel statistics."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from binser.audio import load_audio
from binser.errors import AudioError
from binser.views import (ALL_VIEWS, VIEWS, MonoInputWarning, binaural_views,
                          channel_stats)

SR = 16000


def noise(n: int = 4000, channels: int = 2, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal((channels, n))).astype(np.float32)


def tone(n: int = SR, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


def energy(x: np.ndarray) -> float:
    return float(np.sum(np.square(x, dtype=np.float64)))


# ----------------------------------------------------------------------------- views


def test_view_names():
    assert VIEWS == ("left", "right", "mid", "side")
    assert ALL_VIEWS == ("left", "right", "mid", "side", "mono", "steered", "better-ear",
                         "spatial")


def test_views_are_exact_sums_and_differences():
    audio = noise()
    v = binaural_views(audio)
    assert set(v) == set(ALL_VIEWS) - {"spatial"}     # spatial is a feature view
    for name in v:
        assert v[name].shape == (audio.shape[1],) and v[name].dtype == np.float32
    np.testing.assert_array_equal(v["left"], audio[0])
    np.testing.assert_array_equal(v["right"], audio[1])
    np.testing.assert_array_equal(v["mid"], audio[0] + audio[1])
    np.testing.assert_array_equal(v["side"], audio[0] - audio[1])
    np.testing.assert_array_equal(v["mono"], (audio[0] + audio[1]) / np.float32(2))


def test_side_scale_half():
    audio = noise(seed=1)
    v = binaural_views(audio, side_scale=0.5)
    np.testing.assert_array_equal(v["mid"], np.float32(0.5) * (audio[0] + audio[1]))
    np.testing.assert_array_equal(v["side"], np.float32(0.5) * (audio[0] - audio[1]))
    np.testing.assert_array_equal(v["mono"], v["mid"])      # s = 1/2: Mid is the mono mix
    np.testing.assert_allclose(v["left"], v["mid"] + v["side"], rtol=0, atol=1e-7)


def test_views_tiny_hand_computed():
    audio = np.array([[1.0, 2.0, -3.0], [0.5, -2.0, 1.0]], np.float32)
    v = binaural_views(audio)
    assert v["mid"].tolist() == [1.5, 0.0, -2.0]
    assert v["side"].tolist() == [0.5, 4.0, -4.0]
    assert v["mono"].tolist() == [0.75, 0.0, -1.0]


def test_views_do_not_alias_the_input():
    audio = noise(100)
    v = binaural_views(audio)
    v["left"][:] = 9.0
    assert not np.any(audio[0] == 9.0)


@pytest.mark.parametrize("shape", ["1d", "2d"])
def test_mono_input_warns_and_side_is_zero(shape):
    x = noise(channels=1)
    audio = x[0] if shape == "1d" else x
    with pytest.warns(MonoInputWarning) as record:
        v = binaural_views(audio, path="clip.flac")
    message = str(record[0].message)
    assert "clip.flac" in message and "L = R" in message and "Side" in message
    np.testing.assert_array_equal(v["left"], x[0])
    np.testing.assert_array_equal(v["right"], x[0])
    np.testing.assert_array_equal(v["mid"], x[0] + x[0])
    np.testing.assert_array_equal(v["mono"], x[0])
    assert not np.any(v["side"])


def test_stereo_input_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binaural_views(noise())


def test_left_only_tone():
    x = tone()
    v = binaural_views(np.stack([x, np.zeros_like(x)]))
    assert energy(v["right"]) == 0.0
    assert energy(v["mid"]) == pytest.approx(energy(v["side"]), rel=1e-12)
    assert energy(v["mid"]) == pytest.approx(energy(x), rel=1e-6)


def test_more_than_two_channels_refused():
    with pytest.raises(AudioError, match="shape"):
        binaural_views(noise(channels=3), path="six.wav")


# ----------------------------------------------------------------------------- statistics


def delayed_pair(delay: int, n: int = SR, seed: int = 2) -> np.ndarray:
    """(2, n): white noise on the left; on the right the same, ``delay`` samples later.

    ``right[k] == left[k - delay]`` wherever both exist (a negative delay: right leads).
    """
    d = abs(delay)
    x = np.random.default_rng(seed).standard_normal(n + d).astype(np.float32) * 0.2
    left, right = (x[d:], x[:n]) if delay >= 0 else (x[:n], x[d:])
    return np.stack([left, right])


@pytest.mark.parametrize("delay", [8, -5, 0])
def test_delay_sign_and_size(delay):
    audio = delayed_pair(delay)
    n, d = audio.shape[1], abs(delay)
    if delay >= 0:
        np.testing.assert_array_equal(audio[1, d:], audio[0, :n - d])
    else:
        np.testing.assert_array_equal(audio[1, :n - d], audio[0, d:])
    stats = channel_stats(audio, SR)
    assert stats["delay_samples"] == delay
    assert stats["delay_ms"] == pytest.approx(1000.0 * delay / SR, abs=0.01)
    assert stats["correlation_at_delay"] == pytest.approx(1.0, abs=1e-6)
    if delay:
        assert abs(stats["correlation"]) < 0.1    # white noise decorrelates at zero lag
    assert stats["identical"] == (delay == 0)


def test_half_millisecond_delay_at_16k():
    stats = channel_stats(delayed_pair(8), SR)
    assert stats["delay_ms"] == pytest.approx(0.5, abs=0.01)
    assert stats["correlation_at_delay"] > 0.99


def test_delay_window_limits_search():
    audio = delayed_pair(40)                        # 2.5 ms
    assert channel_stats(audio, SR, max_delay_ms=5.0)["delay_samples"] == 40
    assert abs(channel_stats(audio, SR, max_delay_ms=2.0)["delay_samples"]) <= 32


def test_stats_against_numpy_references():
    rng = np.random.default_rng(3)
    left = rng.standard_normal(3000).astype(np.float32) * 0.5
    right = (0.6 * left + 0.1 * rng.standard_normal(3000)).astype(np.float32)
    stats = channel_stats(np.stack([left, right]), SR)
    assert stats["correlation"] == pytest.approx(np.corrcoef(left, right)[0, 1], abs=1e-9)
    l64, r64 = left.astype(np.float64), right.astype(np.float64)
    ratio = np.sqrt(np.mean((l64 - r64) ** 2) / np.mean((l64 + r64) ** 2))
    assert stats["side_mid_rms_ratio"] == pytest.approx(ratio, rel=1e-9)
    expected_db = [20 * np.log10(np.sqrt(np.mean(c ** 2))) for c in (l64, r64)]
    assert stats["rms_dbfs"] == pytest.approx(expected_db, abs=1e-9)
    assert stats["delay_samples"] == 0


def test_full_scale_square_is_0_dbfs_and_silence_is_floored():
    square = np.where(np.arange(1000) % 20 < 10, 1.0, -1.0).astype(np.float32)
    stats = channel_stats(np.stack([square, np.zeros_like(square)]), SR)
    assert stats["rms_dbfs"][0] == pytest.approx(0.0, abs=1e-9)
    assert stats["rms_dbfs"][1] == pytest.approx(-200.0)
    assert np.isfinite(stats["correlation"])


def test_identical_channels():
    x = noise(channels=1)[0]
    stats = channel_stats(np.stack([x, x]), SR)
    assert stats["identical"] is True
    assert stats["side_mid_rms_ratio"] == 0.0
    assert stats["correlation"] == 1.0 and stats["delay_ms"] == 0.0


def test_mono_stats():
    stats = channel_stats(noise(channels=1), SR)
    assert stats["channels"] == 1
    assert (stats["correlation"], stats["delay_ms"], stats["side_mid_rms_ratio"]) == (1.0, 0.0, 0.0)
    assert len(stats["rms_dbfs"]) == 1


# ----------------------------------------------------------------------------- EMOVO


# emovo_root: the conftest fixture (skips with a message where ../shared/data/emovo is absent)


@pytest.mark.emovo
def test_emovo_mono_file_views(emovo_root):
    path = emovo_root / "f1" / "rab-f1-b1.flac"
    with pytest.warns(MonoInputWarning, match="rab-f1-b1"):
        v = binaural_views(load_audio(path), path=path)
    assert not np.any(v["side"])


@pytest.mark.emovo
def test_emovo_identical_and_spaced_pair(emovo_root):
    same = channel_stats(load_audio(emovo_root / "f1" / "neu-f1-b1.flac"), SR)
    assert same["identical"] and same["side_mid_rms_ratio"] == 0.0
    # README: aligned L/R correlation 0.76-0.87 at an inter-channel delay of 0.38-0.54 ms
    spaced = channel_stats(load_audio(emovo_root / "f1" / "dis-f1-b1.flac"), SR)
    assert 0.2 < spaced["delay_ms"] < 0.8
    assert spaced["correlation_at_delay"] > 0.6
    assert spaced["correlation_at_delay"] > spaced["correlation"]


# ----------------------------------------------------------------------------- views as data


@pytest.fixture
def halfdiff_view(monkeypatch):
    """A test-only view registered in one place, the table: ``halfdiff = (L - R) / 4``,
    checked for silence, not a default view."""
    from binser.views import VIEW_DEFINITIONS, ViewSpec

    spec = ViewSpec("halfdiff", lambda left, right, s: (left - right) / np.float32(4.0),
                    can_be_silent=True)
    monkeypatch.setitem(VIEW_DEFINITIONS, spec.name, spec)
    return spec.name


def test_a_view_added_to_the_table_is_computed_everywhere(halfdiff_view, tmp_path):
    import soundfile as sf

    from binser.config import FrontEndConfig
    from binser.experiment import ExperimentSettings
    from binser.features import file_images
    from binser.runnames import RunName
    from binser.spectrogram import utterance_images
    from binser.views import all_views, default_views, file_silent_views

    audio = np.array([[1.0, 2.0, -3.0], [0.5, -2.0, 1.0]], np.float32)
    assert binaural_views(audio)[halfdiff_view].tolist() == [0.125, 1.0, -1.0]   # by hand
    assert halfdiff_view in all_views() and halfdiff_view not in default_views()
    # the study accepts it, and a run of it is a contract run name
    ExperimentSettings(dataset="folder", root=str(tmp_path),
                       views=("left", halfdiff_view)).validate()
    assert RunName.parse(f"{halfdiff_view}/stats") == RunName.single(halfdiff_view, "stats")
    # the front end computes its images from the decoded file
    stereo = noise(n=SR, seed=4)
    sf.write(tmp_path / "x.wav", stereo.T, SR, subtype="FLOAT")
    images = file_images(tmp_path / "x.wav", ["left", halfdiff_view])
    reference = utterance_images((stereo[0] - stereo[1]) / np.float32(4.0), FrontEndConfig())
    np.testing.assert_array_equal(images[halfdiff_view], reference)
    # and checks it for silence: identical channels leave it with no signal
    assert halfdiff_view in file_silent_views(binaural_views(np.stack([stereo[0]] * 2)))


def test_unknown_view_is_refused_with_the_table_names():
    from binser.experiment import ExperimentSettings

    from binser.errors import ConfigError

    with pytest.raises(ConfigError, match="view.*centre; choose from left, right, mid, side, mono"):
        ExperimentSettings(dataset="folder", root=".", views=("left", "centre")).validate()
