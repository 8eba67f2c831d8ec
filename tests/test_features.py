"""Segment feature extraction: shapes, correctness of batching, the resumable cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import binser.features as features_module
from binser.backbones import get_backbone
from binser.config import FrontEndConfig
from binser.errors import ConfigError
from binser.features import (CacheWarning, FeatureCache, SegmentFeatureExtractor, cache_key,
                             file_sha256)
from binser.spectrogram import views_images
from binser.views import VIEWS, binaural_views

SR = 16000
DURATIONS_S = (1.0, 0.5, 1.3)  # 0.5 s < 0.64 s: one padded segment


def expected_segments(n_samples: int, frames: int = 64, hop: int = 30) -> int:
    """Segment count by hand: T = 1 + N // 160 frames (centred), starts 0, 30, ... until the
    segments cover all T frames."""
    t = 1 + n_samples // 160
    return 1 + max(0, -(-(t - frames) // hop))


@pytest.fixture(scope="module")
def backbone():
    """EfficientNet-Lite0 with its ImageNet weights, at a small input size for speed."""
    return get_backbone("efficientnet_lite0", input_size=64)


@pytest.fixture
def wavs(tmp_path) -> list[Path]:
    """Three stereo 16 kHz wav files: tones plus noise, left and right different."""
    rng = np.random.default_rng(0)
    paths = []
    for i, duration in enumerate(DURATIONS_S):
        t = np.arange(int(SR * duration)) / SR
        left = 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.05 * rng.standard_normal(t.size)
        right = 0.2 * np.sin(2 * np.pi * 900 * t) + 0.05 * rng.standard_normal(t.size)
        path = tmp_path / f"utt{i}.wav"
        sf.write(path, np.stack([left, right], axis=1).astype(np.float32), SR)
        paths.append(path)
    return paths


def count_forward(monkeypatch, backbone) -> list[int]:
    """Wrap ``backbone.model.forward``; the returned list grows by the batch size per call."""
    calls: list[int] = []
    original = backbone.model.forward

    def counting(x):
        calls.append(x.shape[0])
        return original(x)
    monkeypatch.setattr(backbone.model, "forward", counting)
    return calls


def extractor(backbone, **kwargs) -> SegmentFeatureExtractor:
    """An extractor without progress bar, on one thread (robust on a busy machine)."""
    kwargs.setdefault("progress", False)
    kwargs.setdefault("num_threads", 1)
    return SegmentFeatureExtractor(backbone, **kwargs)


def assert_same(a: dict, b: dict, tol: float = 1e-5) -> None:
    """Equal views and shapes; values within ``tol`` times the largest feature magnitude.

    Different batch sizes or memory layouts change float32 summation order inside the
    network, so features agree to float32 rounding relative to their scale, not bit for bit.
    """
    assert a.keys() == b.keys()
    for view in a:
        assert len(a[view]) == len(b[view])
        for x, y in zip(a[view], b[view]):
            assert x.shape == y.shape
            assert np.abs(x - y).max(initial=0.0) <= tol * max(1.0, np.abs(y).max(initial=0))


def test_shapes_and_values(backbone, wavs):
    out = extractor(backbone, batch_size=5).extract(wavs)
    assert tuple(out) == VIEWS
    for view in VIEWS:
        for path, duration, array in zip(wavs, DURATIONS_S, out[view]):
            assert array.shape == (expected_segments(int(SR * duration)), 1280)
            assert array.dtype == np.float32
    # the last file, computed by hand: decode -> views -> images -> normalise -> model
    audio = sf.read(wavs[2], dtype="float32")[0].T
    images = views_images(binaural_views(audio), FrontEndConfig())
    for view in VIEWS:
        with torch.inference_mode():
            manual = backbone.model(backbone.normalise(images[view])).numpy()
        assert_same({view: [out[view][2]]}, {view: [manual]})
    assert not np.allclose(out["left"][2], out["right"][2])


def test_batch_size_does_not_change_features(backbone, wavs):
    views = ("left", "side")
    reference = extractor(backbone, views=views, batch_size=64).extract(wavs)
    for batch_size in (1, 7):
        assert_same(extractor(backbone, views=views, batch_size=batch_size).extract(wavs),
                    reference)
    assert_same(extractor(backbone, views=views, batch_size=3,
                          channels_last=False).extract(wavs), reference)


def test_batches_are_filled_across_files_and_views(monkeypatch, backbone, wavs):
    calls = count_forward(monkeypatch, backbone)
    extractor(backbone, batch_size=4).extract(wavs)
    total = 4 * sum(expected_segments(int(SR * d)) for d in DURATIONS_S)  # 24 segments
    # one forward call per batch of 4 segments, each padded to the fixed sub-batch size
    from binser.features import SUB_BATCH
    assert calls == [SUB_BATCH] * (total // 4)


def test_second_run_uses_cache_without_backbone(monkeypatch, backbone, wavs, tmp_path):
    cache_dir = tmp_path / "cache"
    first = extractor(backbone, cache_dir=cache_dir, batch_size=8).extract(wavs)
    entries = sorted(cache_dir.glob("*/*.npy"))
    assert len(entries) == len(wavs) * len(VIEWS)
    assert all(p.parent.name == p.stem[:2] for p in entries)
    assert not list(cache_dir.rglob("*.tmp"))
    calls = count_forward(monkeypatch, backbone)
    hashed = []
    monkeypatch.setattr(features_module, "file_sha256",
                        lambda p: hashed.append(p) or file_sha256(p))
    again = extractor(backbone, cache_dir=cache_dir, batch_size=8)
    second = again.extract(wavs + [wavs[0]])
    assert calls == [] and again.n_computed == 0
    assert len(hashed) == len(wavs)  # each file hashed once per call, the repeat reused
    assert_same({v: first[v] + [first[v][0]] for v in VIEWS}, second, tol=0)


def test_killed_run_resumes(monkeypatch, backbone, wavs, tmp_path):
    cache_dir = tmp_path / "cache"
    real_load = features_module.load_audio
    loads = []

    def dies_on_second_file(path, **kwargs):
        loads.append(path)
        if len(loads) == 2:
            raise KeyboardInterrupt("killed")
        return real_load(path, **kwargs)
    monkeypatch.setattr(features_module, "load_audio", dies_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        extractor(backbone, cache_dir=cache_dir, batch_size=4).extract(wavs)
    assert len(list(cache_dir.glob("*/*.npy"))) == len(VIEWS)  # the first file only
    assert not list(cache_dir.rglob("*.tmp"))
    monkeypatch.setattr(features_module, "load_audio", real_load)

    resumed_extractor = extractor(backbone, cache_dir=cache_dir, batch_size=4)
    resumed = resumed_extractor.extract(wavs)
    n_rest = 4 * sum(expected_segments(int(SR * d)) for d in DURATIONS_S[1:])
    assert resumed_extractor.n_computed == n_rest and resumed_extractor.n_cached == len(VIEWS)
    uninterrupted = extractor(backbone, cache_dir=tmp_path / "fresh", batch_size=4)
    assert_same(resumed, uninterrupted.extract(wavs))


def test_corrupt_cache_entries_are_recomputed(backbone, wavs, tmp_path):
    cache_dir = tmp_path / "cache"
    first = extractor(backbone, cache_dir=cache_dir).extract(wavs)
    keys = extractor(backbone).keys(wavs[2])
    cache = FeatureCache(cache_dir)
    truncated = cache.path(keys["mid"])
    truncated.write_bytes(truncated.read_bytes()[:200])
    np.save(cache.path(keys["side"]), np.zeros((3, 5), np.float32))  # wrong width
    rerun = extractor(backbone, cache_dir=cache_dir)
    with pytest.warns(CacheWarning):
        second = rerun.extract(wavs)
    assert rerun.n_computed == 2 * expected_segments(int(SR * DURATIONS_S[2]))
    assert_same(first, second)
    assert cache.get(keys["mid"], 1280).shape == first["mid"][2].shape  # repaired


def test_feature_cache_roundtrip(tmp_path):
    cache = FeatureCache(tmp_path)
    key = cache_key("ab" * 32, "left", "cfg", "alexnet", "0123456789abcdef", 227)
    assert len(key) == 40 and cache.get(key) is None
    data = np.arange(12, dtype=np.float64).reshape(3, 4)
    path = cache.put(key, data)
    assert path == tmp_path / key[:2] / f"{key}.npy"
    got = cache.get(key, feature_dim=4)
    assert got.dtype == np.float32 and np.array_equal(got, data)
    with pytest.warns(CacheWarning):
        assert cache.get(key, feature_dim=5) is None
    with pytest.raises(ConfigError):
        cache.path("../escape")


def test_cache_key_depends_on_every_part():
    parts = ["ab" * 32, "left", "cfg", "alexnet", "0123456789abcdef", 227]
    base = cache_key(*parts)
    changed = ["cd" * 32, "right", "cfg2", "efficientnet_lite0", "fedcba9876543210", 224]
    for i, value in enumerate(changed):
        assert cache_key(*parts[:i], value, *parts[i + 1:]) != base
    assert cache_key(*parts) == base


def test_file_sha256_streams(tmp_path):
    import hashlib
    data = np.random.default_rng(1).bytes(3 * 1024 * 1024 + 17)
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
    assert file_sha256(tmp_path / "blob", chunk=1000) == hashlib.sha256(data).hexdigest()


def test_views_and_arguments_checked(backbone):
    with pytest.raises(ConfigError, match="views"):
        extractor(backbone, views=("left", "center"))
    with pytest.raises(ConfigError, match="views"):
        extractor(backbone, views=())
    with pytest.raises(ConfigError, match="batch_size"):
        extractor(backbone, batch_size=0)
    assert extractor(backbone).extract([]) == {v: [] for v in VIEWS}


def test_subset_of_views_and_threads_restored(backbone, wavs):
    before = torch.get_num_threads()
    out = extractor(backbone, views=("mono", "side"), num_threads=before + 1).extract(wavs[:1])
    assert tuple(out) == ("mono", "side")
    assert out["mono"][0].shape == (expected_segments(int(SR * DURATIONS_S[0])), 1280)
    assert torch.get_num_threads() == before


def test_changed_weights_never_reuse_cached_features(wavs, tmp_path):
    own = get_backbone("efficientnet_lite0", input_size=64)
    cache_dir = tmp_path / "cache"
    before = extractor(own, views=("left",), cache_dir=cache_dir).extract(wavs[:1])
    old_id = own.weights_id
    with torch.no_grad():
        own.model._bn1.bias += 0.5  # "fine-tuned" without calling refresh_weights_id()
    rerun = extractor(own, views=("left",), cache_dir=cache_dir)
    after = rerun.extract(wavs[:1])
    assert own.weights_id != old_id and rerun.n_computed == len(before["left"][0])
    assert not np.allclose(before["left"][0], after["left"][0])
    assert len(list(cache_dir.glob("*/*.npy"))) == 2


def test_progress_within_a_long_file(backbone, tmp_path, capsys):
    """A long file: the bar's segment count moves while that one file is being computed
    (refreshed per batch), not only when the file is done."""
    rng = np.random.default_rng(0)
    path = tmp_path / "long.wav"
    sf.write(path, (0.1 * rng.standard_normal((SR * 20, 2))).astype(np.float32), SR)
    extractor(backbone, batch_size=16, progress=True).extract([path])
    err = capsys.readouterr().err
    counts = {int(m) for m in __import__("re").findall(r"segments=(\d+)", err)}
    assert len(counts - {0}) >= 3      # several live updates during the single file
