"""Speech encoders inside the study: frame features per view and layer (cache, silent views),
--layer auto chosen on training speakers only, speaker normalisation without labels, and an
end-to-end experiment on the tiny corpus with a tiny random Whisper."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from binser.backbones.whisper import WhisperConfig, load_whisper
from binser.demo import DemoSpec, make_demo_corpus
from binser.evaluation import folds
from binser.experiment import (ExperimentSettings, PooledFeatures, evaluate_fold, run_experiment,
                               run_folds, speaker_normalised)
from binser.features import FrameFeatureExtractor
from binser.errors import ConfigError
from binser.results import validate_results
from dataclasses import replace
from test_whisper import random_encoder, save_hf_folder

TINY = WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4,
                     encoder_ffn_dim=128, num_mel_bins=80, max_source_positions=1500)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_hf_folder(tmp_path_factory.mktemp("tinyw") / "hf", random_encoder(TINY, 1), TINY)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    return make_demo_corpus(tmp_path_factory.mktemp("corpus") / "c",
                            DemoSpec(n_speakers=4, per_emotion=3, max_duration_s=1.6))


def test_frame_features_cache_and_silent_side(tmp_path, tiny_dir):
    torch.set_num_threads(1)
    backbone = load_whisper("whisper-tiny", tiny_dir)
    rng = np.random.default_rng(0)
    stereo = (0.1 * rng.standard_normal((2, 16000))).astype(np.float32)
    sf.write(tmp_path / "stereo.wav", stereo.T, 16000, subtype="FLOAT")
    sf.write(tmp_path / "mono.wav", stereo[0], 16000, subtype="FLOAT")
    paths = [tmp_path / "stereo.wav", tmp_path / "mono.wav"]
    extractor = FrameFeatureExtractor(backbone, layers=(0, 2), cache_dir=tmp_path / "cache",
                                      progress=False)
    with pytest.warns(UserWarning, match="mono"):
        first = extractor.extract(paths)
    assert extractor.n_computed == 7          # 4 stereo views + 3 mono views with signal
    assert first[2]["side"][1].shape == (0, 64) and first[2]["side"][0].shape == (50, 64)
    alone = backbone.encode_one(stereo[0], [2])[2]
    np.testing.assert_allclose(first[2]["left"][0], alone, atol=1e-5)
    assert not np.allclose(first[0]["left"][0], first[2]["left"][0])
    again = extractor.extract(paths, keep=[2])
    assert extractor.n_computed == 0 and extractor.n_cached == 8 and list(again) == [2]
    np.testing.assert_array_equal(again[2]["mid"][0], first[2]["mid"][0])


def _planted(n=48, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n // k)
    speakers = np.array([f"s{i % 4}" for i in range(n)])
    signal = {(v, "stats"): rng.normal(size=(n, 10)) + 1.5 * y[:, None] * (rng.random(10) > .5)
              for v in ("left", "right", "mid", "side")}
    noise = {key: rng.normal(size=(n, 10)) for key in signal}
    return y, speakers, signal, noise


def test_layer_auto_never_sees_the_test_fold(tmp_path):
    """Layer 1 is noise on the training speakers; planting a perfect label oracle into its
    test rows must change neither the layer chosen nor any test probability."""
    y, speakers, signal, noise = _planted()
    train, test = folds(list(speakers), "loso")[0]
    leaked = {key: X.copy() for key, X in noise.items()}
    for X in leaked.values():
        X[test] = 0.0
        X[test, :4] = 50.0 * np.eye(4)[y[test]]
    settings = ExperimentSettings(dataset="x", root="x", backbone="whisper-tiny", layer="auto",
                                  poolings=("stats",), n_boot=10)
    silent = {v: np.zeros(len(y), bool) for v in ("left", "right", "mid", "side")}
    a, proba_a = evaluate_fold(PooledFeatures({0: signal, 1: noise}, silent), y, speakers,
                               train, test, settings, 4)
    b, proba_b = evaluate_fold(PooledFeatures({0: signal, 1: leaked}, silent), y, speakers,
                               train, test, settings, 4)
    for view in ("left", "right", "mid", "side"):
        assert a[f"{view}/stats"][1] == b[f"{view}/stats"][1]
        assert a[f"{view}/stats"][1]["layer"] == 0
    for view in proba_a:
        np.testing.assert_array_equal(proba_a[view], proba_b[view])
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0])


def test_speaker_norm_is_label_free_and_fold_local():
    """Changing the labels of the test speaker changes nothing the fold predicts for it."""
    y, speakers, signal, _ = _planted(seed=2)
    fold_list = folds(list(speakers), "loso")[:1]
    test = fold_list[0][1]
    pooled = speaker_normalised(PooledFeatures({None: signal}, {}), speakers)
    relabelled = y.copy()
    relabelled[test] = (relabelled[test] + 1) % 4
    settings = ExperimentSettings(dataset="x", root="x", poolings=("stats",),
                                  fusion_pooling="stats", n_boot=10)
    runs_a, _ = run_folds(pooled, y, speakers, fold_list, settings, 4, progress=False, n_jobs=1)
    runs_b, _ = run_folds(pooled, relabelled, speakers, fold_list, settings, 4, progress=False,
                          n_jobs=1)
    for name in runs_a:
        np.testing.assert_array_equal(runs_a[name].predicted[test], runs_b[name].predicted[test])


def test_a_planted_test_speaker_row_never_reaches_training_statistics():
    """One wild row (1e6 in every feature) planted in the test speaker: the normalised
    training rows stay bit-identical and so does every choice of the fold; the test speaker's
    other rows move (their statistics are the test speaker's own). A global standardisation,
    the leak this guards against, would fail the same check."""
    y, speakers, signal, _ = _planted(seed=2)
    fold_list = folds(list(speakers), "loso")[:1]
    train, test = fold_list[0]
    planted = {key: X.copy() for key, X in signal.items()}
    for X in planted.values():
        X[test[0]] = 1e6
    a = speaker_normalised(PooledFeatures({None: signal}, {}), speakers)
    b = speaker_normalised(PooledFeatures({None: planted}, {}), speakers)
    for key in signal:
        Xa, Xb = a.layer_features()[key], b.layer_features()[key]
        np.testing.assert_array_equal(Xa[train], Xb[train])
        assert np.abs(Xa[test[1:]] - Xb[test[1:]]).max() > 0.1
        for s in np.unique(speakers):                    # and really per speaker: mean 0
            np.testing.assert_allclose(Xa[speakers == s].mean(0), 0, atol=1e-9)
    settings = ExperimentSettings(dataset="x", root="x", poolings=("stats",),
                                  fusion_pooling="stats", n_boot=10)
    runs_a, _ = run_folds(a, y, speakers, fold_list, settings, 4, progress=False, n_jobs=1)
    runs_b, _ = run_folds(b, y, speakers, fold_list, settings, 4, progress=False, n_jobs=1)
    for name in runs_a:
        assert runs_a[name].fold_extra == runs_b[name].fold_extra, name
    key = ("left", "stats")
    leaky = [(X - X.mean(0)) / X.std(0) for X in (signal[key], planted[key])]
    assert not np.array_equal(leaky[0][train], leaky[1][train])


@pytest.mark.slow
def test_end_to_end_with_a_tiny_whisper(tmp_path, tiny_dir, tiny_corpus):
    settings = ExperimentSettings(dataset="folder", root=str(tiny_corpus), protocol="loso",
                                  backbone="whisper-tiny", weights=str(tiny_dir), layer="auto",
                                  poolings=("global-avg", "block-max", "stats"),
                                  speaker_norm=True, cache_dir=str(tmp_path / "cache"),
                                  n_boot=50, synthetic=True, num_threads=1)
    results = run_experiment(settings, out=tmp_path / "out", progress=False)
    assert validate_results(results) == []
    names = {r["name"] for r in results["runs"]}
    assert {"left/stats", "best-view", "score-fusion/left+right+mid+side",
            "speaker-norm:score-fusion/left+right+mid+side", "speaker-norm:best-view"} <= names
    runs = {r["name"]: r for r in results["runs"]}
    assert all(layer in (0, 1, 2) for layer in runs["left/stats"]["fold_layer"])
    assert runs["speaker-norm:left/stats"]["speaker_norm"] is True
    assert results["backbone"] == "whisper-tiny" and len(results["backbone_weights_sha256"]) == 64
    assert results["ci_method"] == "speaker-bootstrap" and results["fusion_search"] == "staged"
    _check_claims_against_the_predictions(results, tmp_path / "out" / "predictions.csv")
    assert results["ci_note"].startswith("4 speakers (< 10): approximate")
    # speaker normalisation as deployed: the transductive variant is the run's own figure
    deployment = results["speaker_norm_deployment"]
    assert deployment["fusion"] == "speaker-norm:score-fusion/left+right+mid+side"
    first = deployment["variants"][0]
    assert first["kind"] == "all" and first["ua"] == \
        runs["speaker-norm:score-fusion/left+right+mid+side"]["ua"]
    assert [v["k"] for v in deployment["variants"] if v["kind"] == "random"] == [5, 10, 20]
    # online: the same classifiers and weights; with all of the speaker's utterances the
    # curve's offline end is the run's own transductive figure
    online = results["speaker_norm_online"]
    assert online["fusion"] == "left+right+mid+side" and online["ks"] == [0, 1, 2, 5, 10, 20]
    assert online["offline_ua"] == pytest.approx(
        runs["speaker-norm:score-fusion/left+right+mid+side"]["ua"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "TRANSDUCTIVE" in report and "whisper-tiny (speech encoder)" in report
    assert "Speaker normalisation online" in report
    assert (tmp_path / "out" / "figures" / "online_norm.png").is_file()


def _check_claims_against_the_predictions(results, csv_path):
    """Every claim's numbers recomputed from predictions.csv (scikit-learn per speaker), Holm
    by hand, and the verdict forced by 4 speakers: the floor 2/16 exceeds 0.05."""
    import csv

    from sklearn.metrics import balanced_accuracy_score

    rows = list(csv.DictReader(open(csv_path)))
    claims = results["comparisons"]
    assert len(claims) > 5
    order = sorted(range(len(claims)), key=lambda i: claims[i]["p_value"])
    m, running = len(claims), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * claims[i]["p_value"]))
        assert claims[i]["p_holm"] == pytest.approx(running, abs=1e-12)
    for c in claims:
        truth = np.array([r["label"] for r in rows])
        a, b = np.array([r[c["a"]] for r in rows]), np.array([r[c["b"]] for r in rows])
        spk = np.array([r["speaker"] for r in rows])
        assert c["diff"] == pytest.approx(balanced_accuracy_score(truth, a)
                                          - balanced_accuracy_score(truth, b), abs=1e-12)
        for s, d in c["speaker_diff"].items():
            k = spk == s
            assert d == pytest.approx(balanced_accuracy_score(truth[k], a[k])
                                      - balanced_accuracy_score(truth[k], b[k]), abs=1e-12)
        assert c["n_better"] + c["n_worse"] + c["n_tied"] == c["n_speakers"] == 4
        assert c["p_floor"] == 2 / 16 and c["p_value"] >= 2 / 16
        assert c["verdict"] == "cannot be decided with 4 speakers"
        assert ("caveat" in c) == ("speaker-norm:" in c["a"] + c["b"])


def test_features_do_not_depend_on_the_thread_count_or_the_batch(tmp_path, tiny_dir):
    """--threads 1 and 2 give bit-identical frames and CNN features (binser.parallel)."""
    from binser.backbones import get_backbone
    from binser.features import SegmentFeatureExtractor

    rng = np.random.default_rng(5)
    for i, seconds in enumerate((0.7, 1.9, 1.2)):
        sf.write(tmp_path / f"f{i}.wav", (0.1 * rng.standard_normal((int(16000 * seconds), 2))
                                          ).astype(np.float32), 16000, subtype="FLOAT")
    paths = sorted(tmp_path.glob("f*.wav"))
    whisper = load_whisper("whisper-tiny", tiny_dir)
    frames = [FrameFeatureExtractor(whisper, layers=(2,), num_threads=t, progress=False)
              .extract(paths)[2] for t in (1, 2)]
    alone = FrameFeatureExtractor(whisper, layers=(2,), progress=False).extract(paths[1:2])[2]
    cnn = get_backbone("efficientnet_lite0", input_size=64)
    segments = [SegmentFeatureExtractor(cnn, num_threads=t, batch_size=b, progress=False)
                .extract(paths) for t, b in ((1, 64), (2, 64), (2, 5))]
    for view in ("left", "side"):
        for i in range(3):
            np.testing.assert_array_equal(frames[0][view][i], frames[1][view][i])
            np.testing.assert_array_equal(segments[0][view][i], segments[1][view][i])
            np.testing.assert_array_equal(segments[0][view][i], segments[2][view][i])
        np.testing.assert_array_equal(alone[view][0], frames[1][view][1])


def test_a_mono_corpus_has_no_side_runs_and_shows_n_a(tmp_path, tiny_dir, tiny_corpus):
    """Side carries no signal in any file: no side runs, listed under absent_views, left out
    of the fusions (mid+side dropped), n/a in the report; not 4 % UA below chance."""
    mono_root = tmp_path / "mono"
    for path in sorted(tiny_corpus.rglob("*.wav")):
        data, sr = sf.read(path, dtype="float32")
        target = mono_root / path.relative_to(tiny_corpus)
        target.parent.mkdir(parents=True, exist_ok=True)
        sf.write(target, data[:, 0], sr, subtype="FLOAT")
    settings = ExperimentSettings(dataset="folder", root=str(mono_root), protocol="loso",
                                  backbone="whisper-tiny", weights=str(tiny_dir), layer=1,
                                  poolings=("stats",), cache_dir=str(tmp_path / "cache"),
                                  n_boot=20, synthetic=True, num_threads=1)
    with pytest.warns(UserWarning, match="mono"):
        results = run_experiment(settings, out=tmp_path / "out", progress=False)
    names = {r["name"] for r in results["runs"]}
    assert results["absent_views"] == ["side"] and not any(results["silent_views"].values())
    assert not any(n.startswith("side/") for n in names)
    assert "score-fusion/mid+side" not in names and "score-fusion/left+right+mid+side" in names
    assert validate_results(results) == []
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| Side | n/a | n/a | n/a | n/a |" in report and "side: every file (n/a)" in report


def test_scan_warns_when_speakers_show_one_label_each(tmp_path):
    from binser.corpora import corpus
    from binser.scan import format_scan, scan_corpus

    rng = np.random.default_rng(0)
    for label, speakers in (("joy", ("s1", "s2")), ("anger", ("s3", "s4")),
                            ("sadness", ("s5", "s6"))):
        for spk in speakers:
            folder = tmp_path / label
            folder.mkdir(exist_ok=True)
            sf.write(folder / f"{spk}_a.wav", 0.1 * rng.standard_normal((8000, 2)), 16000)
    text = format_scan(scan_corpus(corpus("folder", tmp_path), progress=False))
    assert "warning: speakers show on average 33% of the labels (6 of 6 speakers a single" \
        in text


@pytest.mark.slow
def test_mono_files_are_flagged_in_results_and_report(tmp_path, tiny_dir, tiny_corpus):
    import shutil

    root = tmp_path / "mixed"
    shutil.copytree(tiny_corpus, root)
    victim = sorted(root.rglob("*.wav"))[0]
    data, sr = sf.read(victim, dtype="float32")
    sf.write(victim, data[:, 0], sr, subtype="FLOAT")
    settings = ExperimentSettings(dataset="folder", root=str(root), protocol="loso",
                                  backbone="whisper-tiny", weights=str(tiny_dir), layer=1,
                                  poolings=("stats",), views=("left", "right"),
                                  cache_dir=str(tmp_path / "cache"), n_boot=20, synthetic=True,
                                  num_threads=1)
    with pytest.warns(UserWarning, match="mono"):
        results = run_experiment(settings, out=tmp_path / "out", progress=False)
    assert results["mono_files"] == [str(victim)]
    assert f"| mono files (L = R) | 1 ({victim.name}) |" in \
        (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_warm_rerun_reads_pooled_features_not_frames(tmp_path, tiny_dir, tiny_corpus,
                                                     monkeypatch):
    """The pooled-feature cache: a rerun gives the same results without reading frames."""
    import binser.features as features_module

    settings = ExperimentSettings(dataset="folder", root=str(tiny_corpus), protocol="loso",
                                  backbone="whisper-tiny", weights=str(tiny_dir), layer="auto",
                                  poolings=("stats", "block-max"), views=("left", "side"),
                                  cache_dir=str(tmp_path / "cache"), n_boot=20, synthetic=True,
                                  num_threads=1)
    first = run_experiment(settings, out=None, progress=False, report=False)

    def no_frames(*args, **kwargs):
        raise AssertionError("frames were read although the pooled features are cached")
    monkeypatch.setattr(features_module.FrameFeatureExtractor, "extract", no_frames)
    again = run_experiment(settings, out=None, progress=False, report=False)
    assert again["runs"] == first["runs"] and again["segments_per_view"] == \
        first["segments_per_view"]
    with pytest.raises(AssertionError, match="frames were read"):   # another setting: a miss
        run_experiment(replace(settings, poolings=("stats",)), out=None, progress=False,
                       report=False)


def test_layer_auto_set_grows_on_complementary_layers_and_never_sees_the_test_fold():
    """Two layers each carry half the class signal: auto-set picks both (side by side) on the
    training speakers; a label oracle planted in a third layer's test rows changes neither
    the sets chosen nor any prediction."""
    rng = np.random.default_rng(3)
    n, k = 64, 4
    y = np.repeat(np.arange(k), n // k)
    speakers = np.array([f"s{i % 4}" for i in range(n)])
    views = ("left", "right", "mid", "side")
    half_a = {(v, "stats"): rng.normal(size=(n, 6)) + 2.0 * (y[:, None] % 2) for v in views}
    half_b = {(v, "stats"): rng.normal(size=(n, 6)) + 2.0 * (y[:, None] // 2) for v in views}
    noise = {key: rng.normal(size=(n, 6)) for key in half_a}
    train, test = folds(list(speakers), "loso")[0]
    leaked = {key: X.copy() for key, X in noise.items()}
    for X in leaked.values():
        X[test] = 0.0
        X[test, :4] = 50.0 * np.eye(4)[y[test]]
    settings = ExperimentSettings(dataset="x", root="x", backbone="whisper-tiny",
                                  layer="auto-set", poolings=("stats",), n_boot=10)
    silent = {v: np.zeros(n, bool) for v in views}
    a, proba_a = evaluate_fold(PooledFeatures({0: half_a, 1: half_b, 2: noise}, silent), y,
                               speakers, train, test, settings, k)
    b, proba_b = evaluate_fold(PooledFeatures({0: half_a, 1: half_b, 2: leaked}, silent), y,
                               speakers, train, test, settings, k)
    for view in views:
        chosen = a[f"{view}/stats"][1]
        assert chosen == b[f"{view}/stats"][1]
        assert chosen["layer"] == (0, 1)
        assert set(chosen["layer_set_scores"]) >= {"0+1"} and set(chosen["layer_scores"]) == {
            "0", "1", "2"}
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0])
    single = dataclasses.replace(settings, layer="auto")
    c, _ = evaluate_fold(PooledFeatures({0: half_a, 1: half_b, 2: noise}, silent), y,
                         speakers, train, test, single, k)
    assert c["left/stats"][1]["layer"] in (0, 1) and "layer_set_scores" not in c["left/stats"][1]


@pytest.mark.slow
def test_classifier_head_runs_beside_the_svm_and_is_compared_with_it(tmp_path, tiny_dir,
                                                                       tiny_corpus):
    """--classifier head: per view a trained head on the layer's frames and the nested
    fusion of the heads' scores, as head:<name> runs with the same fields, each compared
    with the SVM's run; the SVM's runs are those of a study without the head."""
    base = ExperimentSettings(dataset="folder", root=str(tiny_corpus), protocol="loso",
                              backbone="whisper-tiny", weights=str(tiny_dir), layer=2,
                              poolings=("stats",), cache_dir=str(tmp_path / "cache"),
                              n_boot=20, synthetic=True, num_threads=1)
    plain = run_experiment(base, out=None, progress=False, report=False)
    with_head = run_experiment(dataclasses.replace(base, classifier="head"), out=None,
                               progress=False, report=False)
    assert validate_results(with_head) == []
    runs = {r["name"]: r for r in with_head["runs"]}
    heads = [n for n in runs if n.startswith("head:")]
    assert set(heads) == {"head:left/stats", "head:right/stats", "head:mid/stats",
                          "head:side/stats", "head:score-fusion/left+right",
                          "head:score-fusion/mid+side", "head:score-fusion/left+right+mid+side"}
    assert all(runs[n]["classifier"] == "head" and len(runs[n]["fold_ua"]) == 4 for n in heads)
    assert len(runs["head:score-fusion/left+right+mid+side"]["weights"]) == 4
    for r in plain["runs"]:                                 # the SVM's runs unchanged
        assert runs[r["name"]]["ua"] == r["ua"] and runs[r["name"]]["confusion"] == r["confusion"]
    claims = {c["claim"]: c for c in with_head["comparisons"]}
    assert claims["the trained head beats the SVM (left)"]["a"] == "head:left/stats"
    assert claims["the heads' four-view fusion beats the SVMs'"]["b"] == \
        "score-fusion/left+right+mid+side"
    with pytest.raises(ConfigError, match="one encoder layer"):
        dataclasses.replace(base, classifier="head", layer="auto").validate()
