"""The binaural views beside left/right/mid/side: ``steered`` (delay-and-sum
on the per-block GCC-PHAT delay), ``better-ear`` (per-block ear choice), the feature view
``spatial`` (ILD, IPD, IC, ITD per frame and band), and the fusion that grows from four views
to more (docs/METHOD.md sections 2b and 8, eqs. M19-M20)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from binser import spatial as sp
from binser.errors import ConfigError
from binser.fusion import FUSION_RULES, GRID, extended_rule, fuse, select_weights
from binser.views import binaural_views, view_frames

SR = 16000


def white(n: int, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def delayed(x: np.ndarray, d: int) -> np.ndarray:
    """``x[n - d]`` (0 outside): a copy of ``x`` that arrives ``d`` samples later."""
    out = np.zeros_like(x)
    if d >= 0:
        out[d:] = x[:x.size - d]
    else:
        out[:d] = x[-d:]
    return out


def advanced(x: np.ndarray, d: int) -> np.ndarray:
    """``x[n + d]`` (0 outside), written independently of binser.spatial."""
    return delayed(x, -d)


# ----------------------------------------------------------------------------- steered


@pytest.mark.parametrize("k", range(-10, 11))
def test_steered_of_a_delayed_pair_is_the_aligned_sum(k):
    left = white(int(1.3 * SR), seed=1)          # three blocks, the last one short
    right = delayed(left, k)                      # right lags by k samples
    assert sp.block_lags(left, right, SR).tolist() == [k, k, k]
    got = binaural_views(np.stack([left, right]), sample_rate=SR)["steered"]
    expected = left + advanced(right, k)          # = 2 * left where the copy overlaps
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    half = binaural_views(np.stack([left, right]), side_scale=0.5, sample_rate=SR)["steered"]
    np.testing.assert_allclose(half, 0.5 * expected, atol=1e-6, rtol=0)


def test_steered_is_mid_bit_for_bit_without_delay():
    audio = np.stack([white(SR, 2), white(SR, 2) * np.float32(0.5) + white(SR, 3)])
    views = binaural_views(audio)
    assert sp.block_lags(audio[0], audio[1], SR).tolist() == [0, 0]
    np.testing.assert_array_equal(views["steered"], views["mid"])


def test_steered_follows_a_delay_that_changes_between_blocks():
    n, block, h = 2 * SR, SR // 2, sp.samples(sp.CROSSFADE_MS / 2, SR)
    left = white(n, seed=5)
    plan = [3, -7, 12, 0]                         # one delay per 0.5 s block
    right = np.concatenate([delayed(left, d)[b * block:(b + 1) * block]
                            for b, d in enumerate(plan)])
    assert sp.block_lags(left, right, SR).tolist() == plan
    got = sp.steered(left, right, np.float32(1.0), SR)
    for b, d in enumerate(plan):                  # away from the crossfades: the aligned sum
        inner = slice(b * block + h + 16, (b + 1) * block - h - 16)
        np.testing.assert_allclose(got[inner], (left + advanced(right, d))[inner], atol=1e-6)


@pytest.mark.parametrize("n", [0, 1, 100, 8000, 8001, 8050, 8079, 8081, 20000])
def test_block_crossfade_weights_sum_to_one(n):
    total = np.zeros(n)
    for _, start, w in sp.block_weights(n, SR):
        assert np.all(w >= 0) and np.all(w <= 1)
        total[start:start + w.size] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_gcc_phat_matches_a_brute_force_correlation_search():
    rng = np.random.default_rng(0)
    left = rng.standard_normal(512)
    right = 0.3 * delayed(left, 5) + rng.standard_normal(512)
    n_fft = 1024
    cross = np.fft.rfft(right, n_fft) * np.conj(np.fft.rfft(left, n_fft))
    # reference: the phase-transformed correlation evaluated lag by lag (a direct DFT sum)
    phat = cross / np.abs(cross)
    freqs = np.arange(phat.size)
    weights = np.where((freqs == 0) | (freqs == n_fft // 2), 1.0, 2.0)
    scores = {k: float(np.sum(weights * (phat * np.exp(2j * np.pi * freqs * k / n_fft)).real))
              for k in range(-16, 17)}
    assert int(sp.gcc_phat_lags(cross, n_fft, 16)) == max(scores, key=scores.get) == 5
    assert int(sp.gcc_phat_lags(np.zeros(513, complex), n_fft, 16)) == 0   # no signal: 0


# ----------------------------------------------------------------------------- better-ear


def bursts(n: int, seed: int) -> np.ndarray:
    """Speech-like: noise bursts of 0.2 s every 0.4 s, silence between."""
    gate = (np.arange(n) // int(0.2 * SR)) % 2 == 0
    return white(n, seed) * gate.astype(np.float32)


def test_better_ear_picks_the_clean_ear():
    speech = bursts(2 * SR, 7)
    left = speech + np.float32(0.002) * white(2 * SR, 8)    # 34 dB below the bursts
    right = speech + np.float32(0.05) * white(2 * SR, 9)    # 6 dB below
    assert sp.better_ear_choice(left, right, SR).tolist() == [0, 0, 0, 0]
    np.testing.assert_array_equal(binaural_views(np.stack([left, right]))["better-ear"], left)
    np.testing.assert_array_equal(sp.better_ear(right, left, SR), left)   # either side


def test_better_ear_switches_per_block_with_a_crossfade():
    n, block, h = 2 * SR, SR // 2, sp.samples(sp.CROSSFADE_MS / 2, SR)
    speech = bursts(n, 10)
    quiet, loud = np.float32(0.002) * white(n, 11), np.float32(0.05) * white(n, 12)
    first = np.arange(n) < SR                      # noise on the right first, then the left
    left = speech + np.where(first, quiet, loud)
    right = speech + np.where(first, loud, quiet)
    assert sp.better_ear_choice(left, right, SR).tolist() == [0, 0, 1, 1]
    got = sp.better_ear(left, right, SR)
    np.testing.assert_array_equal(got[:2 * block - h], left[:2 * block - h])
    np.testing.assert_array_equal(got[2 * block + h:], right[2 * block + h:])
    mid_fade = 2 * block                           # halfway through the crossfade: the mean
    np.testing.assert_allclose(got[mid_fade], 0.5 * (left[mid_fade] + right[mid_fade]),
                               atol=0.02 * abs(left[mid_fade] - right[mid_fade]) + 1e-7)


def test_block_snr_estimate_by_hand():
    # two 0.5 s blocks of 50 frames of 10 ms: 6 quiet frames (energy 1e-6) and 44 at 1e-2,
    # then all 50 at 1e-4; the 10th percentile of block 1 is the 4.9th sorted value = 1e-6
    x = np.concatenate([np.full(6 * 160, 1e-3), np.full(44 * 160, 0.1),
                        np.full(50 * 160, 1e-2)])
    first = (6 * 1e-6 + 44 * 1e-2) / 50
    np.testing.assert_allclose(sp.block_snr_db(x, SR), [10 * np.log10(first / 1e-6), 0.0],
                               atol=1e-9)


# ----------------------------------------------------------------------------- spatial


def band_centre_phase(d: int) -> np.ndarray:
    """Expected IPD per band for a white pair with the right channel lagging by ``d``:
    the angle of the band's weighted sum of exp(+j w d) (independent of the code)."""
    import librosa

    bands = librosa.filters.mel(sr=SR, n_fft=512, n_mels=sp.SPATIAL_BANDS, fmin=20.0,
                                fmax=SR / 2, norm="slaney")
    omega = 2 * np.pi * np.arange(257) / 512
    return bands @ np.exp(1j * omega * d) / bands.sum(axis=1)


@pytest.mark.parametrize("d, gain_db", [(-12, -3.0), (-5, 0.0), (0, 6.0), (3, 1.5), (9, 10.0)])
def test_spatial_recovers_a_planted_delay_and_level_difference(d, gain_db):
    left = white(SR, 20)
    right = (delayed(left, d) * np.float32(10 ** (-gain_db / 20))).astype(np.float32)
    frames = view_frames(np.stack([left, right]), ["spatial"], SR)["spatial"]
    assert frames.shape == (1 + SR // 160, sp.SPATIAL_DIM) and frames.dtype == np.float32
    inner = frames[5:-5]                           # away from the zero-padded ends
    B = sp.SPATIAL_BANDS
    ild, cos, sin, ic, itd = (inner[:, :B], inner[:, B:2 * B], inner[:, 2 * B:3 * B],
                              inner[:, 3 * B:4 * B], inner[:, -1])
    assert np.all(np.abs(ild - gain_db) < 0.5)                      # ILD in dB, every band
    assert np.all(itd == pytest.approx(d * 1000 / SR))              # ITD in ms, every frame
    expected = band_centre_phase(d)
    low = np.abs(expected) > 0.9                   # bands narrow enough for one phase
    assert low.sum() >= 8
    phase = np.angle(expected[low])
    assert np.median(np.abs(cos[:, low] - np.cos(phase)), axis=0).max() < 0.1
    assert np.median(np.abs(sin[:, low] - np.sin(phase)), axis=0).max() < 0.1
    assert np.median(ic[:, low]) > 0.9


def test_spatial_coherence_is_low_for_independent_channels():
    frames = sp.spatial_frames(white(SR, 30), white(SR, 31), SR)
    ic = frames[:, 3 * sp.SPATIAL_BANDS:4 * sp.SPATIAL_BANDS]
    assert np.all((ic >= 0) & (ic <= 1 + 1e-6)) and ic.mean() < 0.6


def test_spatial_of_identical_channels_has_no_frames():
    x = white(SR, 40)
    assert view_frames(np.stack([x, x]), ["spatial", "left"], SR)["spatial"].shape == \
        (0, sp.SPATIAL_DIM)
    assert set(view_frames(np.stack([x, x]), ["left"], SR)) == set()   # signal views ignored


def test_feature_view_frames_are_cached_and_kept_out_of_the_backbone(tmp_path):
    import soundfile as sf

    from binser.features import FeatureViewExtractor, FrameFeatureExtractor, _check_views

    left = white(SR, 50)
    sf.write(tmp_path / "pair.wav", np.stack([left, delayed(left, 4)]).T, SR, subtype="FLOAT")
    sf.write(tmp_path / "mono.wav", left, SR, subtype="FLOAT")
    paths = [tmp_path / "pair.wav", tmp_path / "mono.wav"]
    extractor = FeatureViewExtractor(views=("spatial",), cache_dir=tmp_path / "cache",
                                     progress=False)
    first = extractor.extract(paths)["spatial"]
    assert extractor.n_computed == 2 and first[1].shape == (0, sp.SPATIAL_DIM)
    assert np.median(first[0][:, -1]) == pytest.approx(4 * 1000 / SR)
    again = extractor.extract(paths)["spatial"]
    assert extractor.n_computed == 0                                  # all from the cache
    np.testing.assert_array_equal(again[0], first[0])
    with pytest.raises(ConfigError, match="spatial are feature views"):
        _check_views(["left", "spatial"])
    with pytest.raises(ConfigError, match="left are signal views"):
        FeatureViewExtractor(views=("left",))
    with pytest.raises(ConfigError, match="spatial are feature views"):
        FrameFeatureExtractor(None, views=("left", "spatial"))      # refused before any work


# ----------------------------------------------------------------------------- fusion


def ua(y: np.ndarray, pred: np.ndarray) -> float:
    """Unweighted average recall, written out (independent of binser.fusion)."""
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def planted_scores(n: int, k: int, strong: str, seed: int) -> tuple[dict, np.ndarray]:
    """Random scores for six views; the ``strong`` ones put extra mass on the true class."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    scores = {}
    for view in ("left", "right", "mid", "side", "spatial", "steered"):
        s = rng.dirichlet(np.ones(k), size=n)
        if view in strong:
            s[np.arange(n), y] += 0.6
        scores[view] = s / s.sum(axis=1, keepdims=True)
    return scores, y


def test_the_grown_rule_is_the_four_view_fusion_against_the_mean_of_the_added_views():
    rule = FUSION_RULES["left+right+mid+side+spatial+steered"]
    assert rule.views == ("left", "right", "mid", "side", "spatial", "steered")
    assert rule.weights == ("alpha", "beta", "gamma", "eta")
    assert rule.title == "Left, Right, Mid, Side, Spatial, Steered"
    scores, _ = planted_scores(10, 3, "", seed=1)
    a, b, g, e = 0.3, 0.6, 0.8, 0.4
    four = g * (a * scores["left"] + (1 - a) * scores["right"]) + \
        (1 - g) * (b * scores["mid"] + (1 - b) * scores["side"])
    by_hand = e * four + (1 - e) * (scores["spatial"] + scores["steered"]) / 2
    got = fuse(scores, rule.name, {"alpha": a, "beta": b, "gamma": g, "eta": e})
    np.testing.assert_allclose(got, by_hand, atol=1e-12)
    three = extended_rule(("spatial", "steered", "mono"))           # a mean of three
    s3 = dict(scores, mono=scores["left"][::-1])
    expected = e * four + (1 - e) * (scores["spatial"] + scores["steered"] + s3["mono"]) / 3
    from binser.fusion import register_fusion, unregister_fusion

    register_fusion(three)
    try:
        np.testing.assert_allclose(fuse(s3, three.name, {"alpha": a, "beta": b, "gamma": g,
                                                         "eta": e}), expected, atol=1e-12)
    finally:
        unregister_fusion(three.name)


@pytest.mark.parametrize("search", ["staged", "joint"])
def test_eta_weighs_the_view_that_carries_the_signal(search):
    name = "left+right+mid+side+spatial+steered"
    scores, y = planted_scores(120, 4, ("spatial", "steered"), seed=3)
    weights, _ = select_weights(scores, y, name, list(range(4)), search=search)
    assert weights["eta"] <= 0.2                     # the added views decide
    scores, y = planted_scores(120, 4, ("left", "right", "mid", "side"), seed=4)
    weights, _ = select_weights(scores, y, name, list(range(4)), search=search)
    assert weights["eta"] >= 0.8                     # the four views decide


def test_the_weight_searches_match_brute_force_on_a_tiny_case():
    name = "left+right+mid+side+spatial+steered"
    scores, y = planted_scores(9, 3, ("spatial",), seed=11)
    classes = list(range(3))

    def fused(a, b, g, e):
        four = g * (a * scores["left"] + (1 - a) * scores["right"]) + \
            (1 - g) * (b * scores["mid"] + (1 - b) * scores["side"])
        return e * four + (1 - e) * (scores["spatial"] + scores["steered"]) / 2

    def key(ws, value):    # best UA, then closest to 0.5 in grid steps, then smallest
        return (-round(value, 12), sum(abs(round(w * 10) - 5) for w in ws), ws)

    joint = min(itertools.product(GRID, repeat=4),
                key=lambda ws: key(ws, ua(y, fused(*ws).argmax(1))))
    weights, best = select_weights(scores, y, name, classes, search="joint")
    assert tuple(weights.values()) == joint
    assert best == pytest.approx(ua(y, fused(*joint).argmax(1)), abs=1e-12)

    def pick(candidates):     # one stage: the grid value by the same rule
        return min(GRID, key=lambda w: key((w,), ua(y, candidates(w).argmax(1))))

    a = pick(lambda w: w * scores["left"] + (1 - w) * scores["right"])
    b = pick(lambda w: w * scores["mid"] + (1 - w) * scores["side"])
    g = pick(lambda w: fused(a, b, w, 1.0))
    e = pick(lambda w: fused(a, b, g, w))
    weights, best = select_weights(scores, y, name, classes, search="staged")
    assert weights == {"alpha": a, "beta": b, "gamma": g, "eta": e}
    assert best == pytest.approx(ua(y, fused(a, b, g, e).argmax(1)), abs=1e-12)


def test_malformed_grown_rules_are_refused():
    from binser.fusion import FusionRule, Stage, register_fusion

    with pytest.raises(ConfigError, match="added views"):
        extended_rule(())
    with pytest.raises(ConfigError, match="added views"):
        extended_rule(("left",))
    with pytest.raises(ConfigError, match="already exists"):
        register_fusion(extended_rule(("spatial",)))
    with pytest.raises(ConfigError, match="last stage needs a searched weight"):
        register_fusion(FusionRule("fixed-only", "x", (Stage("s", "w", "left", "right",
                                                             fixed=0.5),)))
    with pytest.raises(ConfigError, match="not in"):
        register_fusion(FusionRule("bad-fixed", "x", (
            Stage("a", "m", "left", "right", fixed=1.5), Stage("s", "w", "a", "mid"))))


# ----------------------------------------------------------------------------- the study


def test_the_study_takes_spatial_frames_from_the_stereo_files(tmp_path):
    from binser.audio import load_audio
    from binser.corpora import corpus
    from binser.demo import DemoSpec, make_demo_corpus
    from binser.experiment import ExperimentSettings, iter_layer_features

    root = make_demo_corpus(tmp_path / "corpus", DemoSpec(n_speakers=2, per_emotion=1,
                                                          max_duration_s=1.1))
    data = corpus("folder", root)
    settings = ExperimentSettings(dataset="folder", root=str(root), views=("spatial",),
                                  backbone="efficientnet_lite0", cache_dir=None)
    ((layer, features),) = list(iter_layer_features(data, settings, backbone=None,
                                                    progress=False))   # no backbone needed
    assert layer is None and list(features) == ["spatial"]
    for u, frames in zip(data, features["spatial"]):
        audio = load_audio(u.path, sr=SR)
        np.testing.assert_array_equal(frames, sp.spatial_frames(audio[0], audio[1], SR))
    with pytest.raises(ConfigError, match="finetune.*spatial"):
        ExperimentSettings(dataset="folder", root=str(root), views=("left", "spatial"),
                           mode="finetune").validate()


@pytest.mark.slow
def test_a_six_view_study_runs_end_to_end(tmp_path):
    from binser.demo import DemoSpec, make_demo_corpus
    from binser.experiment import ExperimentSettings, run_experiment
    from binser.results import validate_results

    root = make_demo_corpus(tmp_path / "corpus", DemoSpec(n_speakers=3, per_emotion=2,
                                                          max_duration_s=1.2))
    views = ("left", "right", "mid", "side", "spatial", "steered")
    settings = ExperimentSettings(dataset="folder", root=str(root), views=views,
                                  poolings=("stats",), input_size=32, n_boot=50,
                                  synthetic=True, cache_dir=str(tmp_path / "cache"))
    results = run_experiment(settings, out=tmp_path / "out", progress=False)
    assert validate_results(results) == []
    runs = {r["name"]: r for r in results["runs"]}
    assert {"spatial/stats", "steered/stats"} <= set(runs)
    grown = runs["score-fusion/left+right+mid+side+spatial+steered"]
    assert all(set(w) == {"alpha", "beta", "gamma", "eta"} for w in grown["weights"])
    assert "η=" in (tmp_path / "out" / "report.md").read_text()


def test_a_saved_model_refuses_the_feature_view_but_takes_steered():
    from binser.model import model_views

    with pytest.raises(ConfigError, match="feature view.*spatial.*cannot be saved"):
        model_views("left+right+mid+side+spatial", ("left", "right", "mid", "side", "spatial"))
    with pytest.raises(ConfigError, match="spatial cannot be saved"):
        model_views(None, ("spatial",))
    assert model_views("left+right+mid+side+steered",
                       ("left", "right", "mid", "side", "steered"))[-1] == "steered"
