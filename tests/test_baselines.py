"""Tests of binser.baselines: openSMILE functionals per binaural view, cache, run names."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from binser.baselines import (BASELINE_VIEWS, OPENSMILE_SETS, OpenSmileWarning,
                              baseline_run_name, opensmile_baselines, opensmile_cache_key,
                              opensmile_features, opensmile_speed, parse_baseline_run_name,
                              require_opensmile)
from binser.config import FrontEndConfig
from binser.errors import AudioError, BinserError, ConfigError
from binser.features import CacheWarning
from binser.results import BASELINE

SR = 16000

try:
    import opensmile
except ImportError:  # the optional extra is not installed
    opensmile = None

needs_opensmile = pytest.mark.skipif(
    opensmile is None, reason="the optional 'opensmile' package is not installed "
                              "(pip install 'binser[opensmile]'); openSMILE tests skipped")


def noise(n: int = SR, amp: float = 0.05, seed: int = 0) -> np.ndarray:
    """(n,) float32 Gaussian noise of standard deviation ``amp``."""
    return (amp * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def write(path: Path, channels: list[np.ndarray]) -> Path:
    """Write float32 channels to a FLOAT wav (no quantisation) and return the path."""
    data = np.stack(channels, axis=1) if len(channels) > 1 else channels[0]
    sf.write(path, data, SR, subtype="FLOAT")
    return path


def column(feature_set: str, name: str) -> int:
    """Index of functional ``name`` in ``feature_set``'s output."""
    smile = opensmile.Smile(getattr(opensmile.FeatureSet, OPENSMILE_SETS[feature_set]),
                            opensmile.FeatureLevel.Functionals)
    return list(smile.feature_names).index(name)


class CountCalls:
    """Wrap ``Smile.process_signal`` and count its calls."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = opensmile.Smile.process_signal

        def counting(smile, *args, **kwargs):
            self.calls += 1
            return original(smile, *args, **kwargs)

        monkeypatch.setattr(opensmile.Smile, "process_signal", counting)


# ------------------------------------------------------------------------- names (no opensmile)


def test_sets_and_views():
    assert OPENSMILE_SETS == {"is10": "IS10", "compare2016": "ComParE_2016",
                              "egemaps": "eGeMAPSv02"}
    assert BASELINE_VIEWS == ("left", "right", "mono")


def test_run_names_match_the_results_contract():
    assert baseline_run_name("is10") == "opensmile/is10"
    assert baseline_run_name("compare2016", "left") == "opensmile/compare2016"
    assert baseline_run_name("egemaps", "mono") == "opensmile/egemaps-mono"
    for feature_set in OPENSMILE_SETS:
        for view in ("left", "right", "mid", "side", "mono"):
            name = baseline_run_name(feature_set, view)
            assert BASELINE.match(name), name
            assert parse_baseline_run_name(name) == (feature_set, view)


@pytest.mark.parametrize("name", ["opensmile/is11", "opensmile/is10-left", "opensmile/is10-x",
                                  "left/global-max", "opensmile/", "is10"])
def test_bad_run_names_are_refused(name):
    with pytest.raises(ConfigError):
        parse_baseline_run_name(name)


def test_unknown_set_or_view_is_a_config_error(tmp_path):
    path = write(tmp_path / "a.wav", [noise(), noise(seed=1)])
    with pytest.raises(ConfigError, match="emobase"):
        opensmile_features([path], "emobase", progress=False)
    with pytest.raises(ConfigError, match="centre"):
        opensmile_features([path], "is10", "centre", progress=False)
    with pytest.raises(ConfigError, match="workers"):
        opensmile_features([path], "is10", workers=0, progress=False)


def test_cache_key_depends_on_every_part():
    config = FrontEndConfig()
    base = opensmile_cache_key("ab" * 32, "left", "is10", config, "2.6.0")
    others = [opensmile_cache_key("cd" * 32, "left", "is10", config, "2.6.0"),
              opensmile_cache_key("ab" * 32, "right", "is10", config, "2.6.0"),
              opensmile_cache_key("ab" * 32, "left", "egemaps", config, "2.6.0"),
              opensmile_cache_key("ab" * 32, "left", "is10", FrontEndConfig(side_scale=0.5),
                                  "2.6.0"),
              opensmile_cache_key("ab" * 32, "left", "is10", config, "2.5.0")]
    assert len({base, *others}) == 6
    # fields that do not change the signal keep the key (the Mel front end is irrelevant)
    assert base == opensmile_cache_key("ab" * 32, "left", "is10", FrontEndConfig(n_mels=40),
                                       "2.6.0")


def test_missing_opensmile_gives_an_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "opensmile", None)  # makes `import opensmile` fail
    with pytest.raises(BinserError, match=r"binser\[opensmile\]"):
        require_opensmile()
    path = write(tmp_path / "a.wav", [noise(), noise(seed=1)])
    with pytest.raises(BinserError, match=r"install binser\[opensmile\]"):
        opensmile_features([path], progress=False)


# ------------------------------------------------------------------------- features


@needs_opensmile
def test_dimensions_of_the_three_sets(tmp_path):
    path = write(tmp_path / "a.wav", [noise(), noise(seed=1)])
    out = opensmile_baselines([path, path], tuple(OPENSMILE_SETS), ("left",), progress=False)
    dims = {"opensmile/is10": 1582, "opensmile/compare2016": 6373, "opensmile/egemaps": 88}
    assert set(out) == set(dims)
    for name, dim in dims.items():
        assert out[name].shape == (2, dim) and out[name].dtype == np.float32
        assert np.isfinite(out[name]).all()
        np.testing.assert_array_equal(out[name][0], out[name][1])


@needs_opensmile
def test_louder_file_has_larger_loudness_and_energy(tmp_path):
    quiet = noise(amp=0.02)
    paths = [write(tmp_path / "quiet.wav", [quiet, quiet]),
             write(tmp_path / "loud.wav", [10 * quiet, 10 * quiet])]
    loud_is10 = opensmile_features(paths, "is10", progress=False)[:, column(
        "is10", "pcm_loudness_sma_amean")]
    # IS10 loudness is intensity ** 0.3, intensity ~ amplitude ** 2: x10 amplitude -> x10 ** 0.6
    assert loud_is10[1] > loud_is10[0] > 0
    assert loud_is10[1] / loud_is10[0] == pytest.approx(10 ** 0.6, rel=0.05)
    rms = opensmile_features(paths, "compare2016", progress=False)[:, column(
        "compare2016", "pcm_RMSenergy_sma_amean")]
    # frame RMS energy of stationary noise is close to the signal's RMS (numpy reference)
    reference = [float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
                 for x in (quiet, 10 * quiet)]
    np.testing.assert_allclose(rms, reference, rtol=0.1)
    gemaps = opensmile_features(paths, "egemaps", progress=False)[:, column(
        "egemaps", "loudness_sma3_amean")]
    assert gemaps[1] > 2 * gemaps[0] > 0


@needs_opensmile
def test_views_differ_on_different_channels_and_match_mono_files(tmp_path):
    left, right = noise(seed=1), noise(amp=0.1, seed=2)
    stereo = write(tmp_path / "stereo.wav", [left, right])
    twin = write(tmp_path / "twin.wav", [left, left])
    references = [write(tmp_path / "l.wav", [left]), write(tmp_path / "r.wav", [right]),
                  write(tmp_path / "m.wav", [(left + right) / np.float32(2)])]
    out = opensmile_baselines([stereo, twin], ("egemaps",), BASELINE_VIEWS, progress=False)
    assert not np.allclose(out["opensmile/egemaps"][0], out["opensmile/egemaps-right"][0])
    np.testing.assert_array_equal(out["opensmile/egemaps"][1], out["opensmile/egemaps-right"][1])
    np.testing.assert_array_equal(out["opensmile/egemaps"][1], out["opensmile/egemaps-mono"][1])
    # independent reference: the same functionals of one-channel files holding each view
    with pytest.warns(UserWarning, match="mono input"):
        expected = opensmile_features(references, "egemaps", "left", progress=False)
    np.testing.assert_array_equal(out["opensmile/egemaps"][0], expected[0])
    np.testing.assert_array_equal(out["opensmile/egemaps-right"][0], expected[1])
    np.testing.assert_array_equal(out["opensmile/egemaps-mono"][0], expected[2])


@needs_opensmile
def test_cache_is_hit_and_corrupt_entries_are_recomputed(tmp_path, monkeypatch):
    paths = [write(tmp_path / f"{i}.wav", [noise(seed=i), noise(seed=i + 10)]) for i in range(3)]
    cache = tmp_path / "cache"
    counter = CountCalls(monkeypatch)
    first = opensmile_features(paths, "egemaps", "left", cache_dir=cache, progress=False)
    assert counter.calls == 3
    entries = sorted(cache.rglob("*.npy"))
    assert len(entries) == 3 and not list(cache.rglob("*.tmp"))
    second = opensmile_features(paths, "egemaps", "left", cache_dir=cache, progress=False)
    assert counter.calls == 3  # all from the cache
    np.testing.assert_array_equal(first, second)
    opensmile_features(paths, "egemaps", "right", cache_dir=cache, progress=False)
    assert counter.calls == 6  # another view is another entry
    entries[0].write_bytes(b"not a numpy file")
    with pytest.warns(CacheWarning, match="unreadable"):
        third = opensmile_features(paths, "egemaps", "left", cache_dir=cache, progress=False)
    assert counter.calls == 7  # only the corrupt entry was recomputed
    np.testing.assert_array_equal(first, third)
    np.save(entries[1], np.zeros((1, 5), np.float32))  # wrong width
    with pytest.warns(CacheWarning, match="shape"):
        opensmile_features(paths, "egemaps", "left", cache_dir=cache, progress=False)
    assert counter.calls == 8


@needs_opensmile
def test_identical_content_is_computed_once(tmp_path, monkeypatch):
    x = [noise(seed=3), noise(seed=4)]
    paths = [write(tmp_path / "a.wav", x), write(tmp_path / "b.wav", x)]
    counter = CountCalls(monkeypatch)
    out = opensmile_features(paths + paths[:1], "egemaps", progress=False)
    assert counter.calls == 1
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


@needs_opensmile
def test_threads_give_the_serial_result(tmp_path):
    paths = [write(tmp_path / f"{i}.wav", [noise(seed=i), noise(seed=i + 5)]) for i in range(4)]
    serial = opensmile_baselines(paths, ("is10", "egemaps"), ("left", "right"), workers=1,
                                 progress=False)
    threaded = opensmile_baselines(paths, ("is10", "egemaps"), ("left", "right"), workers=2,
                                   progress=False)
    assert serial.keys() == threaded.keys()
    for name in serial:
        np.testing.assert_array_equal(serial[name], threaded[name])


@needs_opensmile
def test_non_finite_functionals_become_zero_with_one_warning(tmp_path):
    paths = [write(tmp_path / f"short{i}.wav", [noise(100, seed=i), noise(100, seed=i + 1)])
             for i in range(2)]  # too short for openSMILE: it writes NaN
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = opensmile_features(paths, "is10", progress=False)
    ours = [w for w in caught if issubclass(w.category, OpenSmileWarning)]
    assert len(ours) == 1 and "non-finite" in str(ours[0].message)
    assert "2 (file, set, view)" in str(ours[0].message)
    np.testing.assert_array_equal(out, np.zeros((2, 1582), np.float32))


@needs_opensmile
def test_over_full_scale_views_are_clipped_with_a_warning(tmp_path):
    x = np.full(SR, 0.8, np.float32) * np.sign(noise(seed=7))
    path = write(tmp_path / "hot.wav", [x, x])  # mid = 1.6 x: beyond 16-bit full scale
    clipped = write(tmp_path / "clipped.wav", [np.clip(2 * x, -1.0, 32767 / 32768)])
    with pytest.warns(OpenSmileWarning, match="clipped"):
        mid = opensmile_features([path], "egemaps", "mid", progress=False)
    with pytest.warns(UserWarning, match="mono input"):
        reference = opensmile_features([clipped], "egemaps", "left", progress=False)
    np.testing.assert_array_equal(mid, reference)


@needs_opensmile
def test_bad_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF????WAVEjunk")
    with pytest.raises(AudioError, match="broken.wav"):
        opensmile_features([bad], "egemaps", progress=False)


@needs_opensmile
def test_speed_is_positive(tmp_path):
    paths = [write(tmp_path / "a.wav", [noise(2 * SR), noise(2 * SR, seed=1)])]
    speed = opensmile_speed(paths, "egemaps")
    assert speed > 1.0  # far faster than real time on any machine


@needs_opensmile
def test_emovo_left_and_right_differ(emovo_root):
    path = sorted((emovo_root / "f1").glob("*.flac"))[0]
    out = opensmile_baselines([path], ("is10",), ("left", "right"), progress=False)
    left, right = out["opensmile/is10"], out["opensmile/is10-right"]
    assert left.shape == (1, 1582) and np.isfinite(left).all()
    assert not np.allclose(left, right)
