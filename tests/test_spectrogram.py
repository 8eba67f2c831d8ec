"""Tests of binser.spectrogram: log-Mel, deltas, segments, images (docs/METHOD.md sections 3-4).

References are computed independently inside the tests: librosa for the log-Mel and the
deltas, scikit-image for the bilinear resize, hand-computed counts for the segments.
"""
from __future__ import annotations

import warnings

import librosa
import numpy as np
import pytest
import scipy.signal
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from binser.config import FrontEndConfig
from binser.errors import BinserError, ConfigError
from binser.spectrogram import (deltas, log_mel, log_mel_batch, n_segments, resize_images,
                                segment, segment_images, utterance_images, views_images)

SR = 16000
FLOOR_DB = -100.0


def librosa_log_mel(y: np.ndarray, config: FrontEndConfig = FrontEndConfig()) -> np.ndarray:
    """The contract's reference, in float64."""
    power = librosa.feature.melspectrogram(
        y=np.asarray(y, dtype=np.float64), sr=config.sample_rate, n_fft=config.n_fft,
        hop_length=config.hop_length, win_length=config.win_length, window=config.window,
        center=config.center, pad_mode="constant", power=2.0, n_mels=config.n_mels,
        fmin=config.fmin, fmax=config.fmax)
    return librosa.power_to_db(power, ref=1.0, amin=config.power_floor, top_db=None)


def noise_and_chirps(seconds: float, seed: int = 0) -> np.ndarray:
    """Float32 test signal: white noise, an up- and a down-chirp, and a silent stretch."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = (0.05 * rng.standard_normal(t.size)
         + 0.5 * scipy.signal.chirp(t, 60, seconds, 7800)
         + 0.2 * scipy.signal.chirp(t, 7000, seconds, 200, method="logarithmic"))
    y[int(0.4 * SR):int(0.7 * SR)] = 0.0  # silence: floor frames in the middle
    return y.astype(np.float32)


def minmax(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


# ----------------------------------------------------------------------------- log-Mel


def test_log_mel_matches_librosa_on_noise_and_chirps():
    y = noise_and_chirps(2.0)
    ours = log_mel(y, SR)
    ref = librosa_log_mel(y)
    assert ours.dtype == np.float32
    assert ours.shape == (64, 1 + y.size // 160) == ref.shape
    floor = ref <= FLOOR_DB + 1e-6
    assert floor.any() and (~floor).sum() > 0.8 * ref.size  # both kinds of bins are tested
    np.testing.assert_allclose(ours[~floor], ref[~floor], rtol=0, atol=1e-3)
    np.testing.assert_allclose(ours[floor], FLOOR_DB, rtol=0, atol=1e-4)


def test_log_mel_pure_chirp_precision_by_level():
    """Float32 FFT: tight near each frame's peak, still < 5 mdB 40-90 dB below it."""
    t = np.arange(SR) / SR
    y = (0.5 * scipy.signal.chirp(t, 50, 1.0, 7900)).astype(np.float32)
    ours, ref = log_mel(y, SR), librosa_log_mel(y)
    below_peak = ref.max(axis=0, keepdims=True) - ref
    near = below_peak < 40
    np.testing.assert_allclose(ours[near], ref[near], rtol=0, atol=1e-4)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=5e-3)


@pytest.mark.parametrize("n_samples", [1, 159, 160, 400, 511, 512, 16037])
def test_log_mel_frame_count_and_short_signals(n_samples):
    y = np.random.default_rng(n_samples).standard_normal(n_samples).astype(np.float32)
    ours = log_mel(y, SR)
    assert ours.shape == (64, 1 + n_samples // 160)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # librosa: n_fft too large for input
        ref = librosa_log_mel(y)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-3)


def test_log_mel_follows_a_non_default_config():
    config = FrontEndConfig(n_mels=40, fmin=50.0, fmax=7600.0, hop_ms=15.0, win_ms=20.0)
    y = noise_and_chirps(1.0, seed=3)
    ours, ref = log_mel(y, SR, config), librosa_log_mel(y, config)
    assert ours.shape == (40, 1 + y.size // 240) == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-3)


def test_log_mel_without_centring():
    config = FrontEndConfig(center=False)
    y = noise_and_chirps(0.5, seed=4)
    ours, ref = log_mel(y, SR, config), librosa_log_mel(y, config)
    assert ours.shape == (64, 1 + (y.size - 512) // 160) == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-3)


def test_all_zero_signal_gives_constant_finite_floor():
    out = log_mel(np.zeros(16000, dtype=np.float32), SR)
    assert out.shape == (64, 101)
    assert np.isfinite(out).all()
    assert np.ptp(out) == 0.0
    assert out[0, 0] == pytest.approx(FLOOR_DB, abs=1e-4)


def test_log_mel_batch_equals_per_view():
    y = noise_and_chirps(1.3, seed=5)
    views = np.stack([y, 0.5 * y[::-1], y * 0, np.roll(y, 1234)])
    batch = log_mel_batch(views, SR)
    assert batch.shape == (4, 64, 1 + y.size // 160) and batch.dtype == np.float32
    for v in range(4):
        np.testing.assert_allclose(batch[v], log_mel(views[v], SR), rtol=0, atol=1e-5)
    np.testing.assert_allclose(batch[1], librosa_log_mel(views[1]), rtol=0, atol=1e-3)


def test_log_mel_long_signal_spans_several_chunks():
    """More frames than one internal FFT chunk: seams must not show."""
    y = noise_and_chirps(50.0, seed=7)  # 5001 frames
    np.testing.assert_allclose(log_mel(y, SR), librosa_log_mel(y), rtol=0, atol=1e-3)


def test_sample_rate_mismatch_raises_config_error():
    with pytest.raises(ConfigError, match="16000"):
        log_mel(np.zeros(4410, dtype=np.float32), 44100)
    with pytest.raises(ConfigError):
        log_mel_batch(np.zeros((2, 800), dtype=np.float32), 8000)


def test_bad_signals_raise_binser_errors():
    with pytest.raises(BinserError):
        log_mel(np.zeros((2, 100), dtype=np.float32), SR)
    bad = np.zeros(1000, dtype=np.float32)
    bad[10] = np.nan
    with pytest.raises(BinserError, match="NaN"):
        log_mel(bad, SR)


# ----------------------------------------------------------------------------- deltas


@pytest.mark.parametrize("width", [3, 5, 9])
@pytest.mark.parametrize("order", [1, 2])
def test_deltas_match_librosa_2d(width, order):
    x = np.random.default_rng(width * 10 + order).standard_normal((64, 64))
    ref = librosa.feature.delta(x, width=width, order=order, axis=-1, mode="interp")
    np.testing.assert_allclose(deltas(x, width=width, order=order), ref, rtol=1e-9, atol=1e-9)
    ref0 = librosa.feature.delta(x, width=width, order=order, axis=0, mode="interp")
    np.testing.assert_allclose(deltas(x, width=width, order=order, axis=0), ref0,
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("width", [3, 5, 9])
@pytest.mark.parametrize("order", [1, 2])
def test_deltas_match_librosa_batched_float32(width, order):
    x = (20 * np.random.default_rng(width + order).standard_normal((5, 64, 64)) - 50)
    x = x.astype(np.float32)
    ours = deltas(x, width=width, order=order)
    assert ours.shape == x.shape and ours.dtype == np.float32
    for i in range(x.shape[0]):
        ref = librosa.feature.delta(x[i].astype(np.float64), width=width, order=order,
                                    mode="interp")
        np.testing.assert_allclose(ours[i], ref, rtol=1e-4, atol=1e-4)


def test_deltas_of_constant_and_linear_ramp():
    const = np.full((3, 4, 20), -100.0, dtype=np.float32)
    assert not deltas(const).any() and not deltas(const, order=2).any()
    ramp = np.tile(2.5 * np.arange(20.0), (4, 1))  # slope 2.5 per frame
    np.testing.assert_allclose(deltas(ramp, width=5), 2.5, atol=1e-9)
    np.testing.assert_allclose(deltas(ramp, width=5, order=2), 0.0, atol=1e-9)


@pytest.mark.parametrize("width, length", [(4, 20), (1, 20), (9, 8), (3, 3)])
def test_deltas_refuse_bad_width(width, length):
    with pytest.raises(ConfigError):
        deltas(np.zeros((2, length)), width=width, order=1 if length > 3 else 3)


# ----------------------------------------------------------------------------- segments


@pytest.mark.parametrize("T, expected", [(10, 1), (63, 1), (64, 1), (65, 2), (94, 2),
                                         (95, 3), (123, 3), (124, 3), (300, 9), (304, 9)])
def test_segment_counts_hand_computed(T, expected):
    assert n_segments(T, 64, 30) == expected
    logmel = np.random.default_rng(T).standard_normal((64, T)).astype(np.float32)
    assert segment(logmel, 64, 30).shape == (expected, 64, 64)


def test_segment_content_is_the_right_slice_and_a_copy():
    logmel = np.arange(64 * 300, dtype=np.float64).reshape(64, 300)
    segs = segment(logmel, 64, 30)
    assert segs.dtype == np.float32 and segs.flags.c_contiguous
    for i in range(segs.shape[0] - 1):
        np.testing.assert_array_equal(segs[i], logmel[:, 30 * i:30 * i + 64])
    # the last segment covers the tail (frames 240..299) and is padded with the minimum
    assert 30 * (segs.shape[0] - 2) + 64 < 300 <= 30 * (segs.shape[0] - 1) + 64
    np.testing.assert_array_equal(segs[-1][:, :60], logmel[:, 240:300])
    assert (segs[-1][:, 60:] == 0).all()
    segs[0, 0, 0] = 1e9
    assert logmel[0, 0] == 0  # a copy, not a view
    assert segment(logmel, 64, 30)[0, 0, 0] == 0


def test_short_utterance_gives_one_segment_padded_with_its_minimum():
    rng = np.random.default_rng(1)
    logmel = rng.uniform(-80, -10, size=(64, 10)).astype(np.float32)
    logmel[5, 3] = -95.0  # the minimum
    segs = segment(logmel, 64, 30)
    assert segs.shape == (1, 64, 64)
    np.testing.assert_array_equal(segs[0, :, :10], logmel)
    assert (segs[0, :, 10:] == np.float32(-95.0)).all()


def test_segment_rejects_bad_arguments():
    with pytest.raises(ConfigError):
        segment(np.zeros((64, 100)), frames=0)
    with pytest.raises(ConfigError):
        n_segments(100, 64, 0)
    with pytest.raises(BinserError):
        segment(np.zeros(100))


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 400), frames=st.integers(1, 80), hop=st.integers(1, 50))
def test_segment_count_property(T, frames, hop):
    n = n_segments(T, frames, hop)
    # the fewest segments that cover all T frames
    assert (n - 1) * hop + frames >= T and (n == 1 or (n - 2) * hop + frames < T)
    assert segment(np.zeros((3, T)), frames, hop).shape == (n, 3, frames)


# ----------------------------------------------------------------------------- images


def test_segment_images_channels_against_librosa_deltas():
    rng = np.random.default_rng(2)
    segs = rng.uniform(-90, 0, size=(4, 64, 64)).astype(np.float32)
    images = segment_images(segs, width=9)
    assert images.shape == (4, 3, 64, 64) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    for i in range(4):
        seg = segs[i].astype(np.float64)
        expected = [seg, librosa.feature.delta(seg, width=9, order=1, mode="interp"),
                    librosa.feature.delta(seg, width=9, order=2, mode="interp")]
        for c in range(3):
            assert images[i, c].min() == 0.0 and images[i, c].max() == pytest.approx(1.0)
            np.testing.assert_allclose(images[i, c], minmax(expected[c]), atol=2e-5)


def test_constant_channel_becomes_zero_without_nan():
    segs = np.stack([np.full((64, 64), -100.0), np.tile(np.arange(64.0), (64, 1))])
    images = segment_images(segs.astype(np.float32), width=9)
    assert np.isfinite(images).all()
    assert not images[0].any()  # constant segment: all three channels 0
    assert images[1, 0].max() == 1.0  # a ramp: static spans [0, 1]
    # A ramp's delta is constant and its delta-delta 0: both channels 0, not scaled noise.
    assert not images[1, 1:].any()


def test_segment_images_rejects_width_longer_than_segment():
    with pytest.raises(ConfigError):
        segment_images(np.zeros((2, 64, 5), dtype=np.float32), width=9)


def test_resize_to_227_matches_skimage_bilinear():
    skimage_transform = pytest.importorskip("skimage.transform")
    images = np.random.default_rng(3).random((2, 3, 64, 64)).astype(np.float32)
    out = resize_images(images, 227)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 227, 227)
    assert out.dtype == torch.float32
    ref = np.stack([skimage_transform.resize(im, (3, 227, 227), order=1, mode="edge",
                                             anti_aliasing=False, preserve_range=True)
                    for im in images])
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5)
    direct = torch.nn.functional.interpolate(torch.from_numpy(images), size=(227, 227),
                                             mode="bilinear", align_corners=False)
    assert torch.equal(out, direct)


def test_resize_keeps_constants_and_means_and_same_size():
    const = np.full((1, 3, 64, 64), 0.25, dtype=np.float32)
    assert torch.allclose(resize_images(const, 227), torch.tensor(0.25))
    ramp = np.broadcast_to(np.linspace(0, 1, 64, dtype=np.float32), (2, 3, 64, 64))
    up = resize_images(np.ascontiguousarray(ramp), 227)
    assert float(up.mean()) == pytest.approx(0.5, abs=5e-3)
    assert (up[..., 1:] >= up[..., :-1] - 1e-6).all()  # still monotone along W
    same = resize_images(torch.from_numpy(const), 64)
    assert isinstance(same, torch.Tensor) and torch.equal(same, torch.from_numpy(const))
    assert torch.equal(resize_images(const, 64), torch.from_numpy(const))
    with pytest.raises(ConfigError):
        resize_images(const, 0)


# ----------------------------------------------------------------------------- composition


@pytest.mark.parametrize("seconds", [0.05, 0.7, 3.1])
@pytest.mark.parametrize("config", [FrontEndConfig(),
                                    FrontEndConfig(segment_hop=7, delta_width=3),
                                    FrontEndConfig(segment_frames=20, segment_hop=20,
                                                   delta_width=5),
                                    FrontEndConfig(segment_frames=9, segment_hop=4,
                                                   delta_width=9)])
def test_utterance_images_is_the_composition(seconds, config):
    y = noise_and_chirps(seconds, seed=11)
    logmel = librosa_log_mel(y, config).astype(np.float32)
    segs = segment(logmel, config.segment_frames, config.segment_hop)
    expected = segment_images(segs, config.delta_width)
    ours = utterance_images(y, config)
    assert ours.shape == expected.shape == (
        n_segments(logmel.shape[1], config.segment_frames, config.segment_hop), 3, 64,
        config.segment_frames)
    np.testing.assert_allclose(ours, expected, atol=1e-4)


@pytest.mark.parametrize("seconds", [2.2, 0.3])  # 0.3 s: padded, views' minima differ
def test_views_images_equals_per_view_and_handles_silent_side(seconds):
    y = noise_and_chirps(seconds, seed=13)
    left, right = y, np.roll(y, 7) * np.float32(0.8)
    views = {"left": left, "right": right, "mid": left + right, "side": left - right,
             "silent": np.zeros_like(y)}
    out = views_images(views)
    assert list(out) == list(views)
    n = n_segments(1 + y.size // 160, 64, 30)
    for name, signal in views.items():
        assert out[name].shape == (n, 3, 64, 64) and out[name].dtype == np.float32
        np.testing.assert_allclose(out[name], utterance_images(signal), atol=1e-6)
    assert not out["silent"].any()  # all-zero view: floor everywhere -> all-zero images


def test_views_images_of_unequal_lengths_and_empty():
    y = noise_and_chirps(1.0, seed=17)
    out = views_images({"a": y, "b": y[:5000]})
    assert out["a"].shape[0] == n_segments(101, 64, 30) and out["b"].shape[0] == 1
    np.testing.assert_allclose(out["b"], utterance_images(y[:5000]), atol=1e-6)
    assert views_images({}) == {}
