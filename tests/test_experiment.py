"""End-to-end experiment on a tiny synthetic corpus, the results.json contract, and the
no-leak guarantee of the cross-validation loop."""
from __future__ import annotations

import json

import numpy as np
import pytest

from binser.demo import DemoSpec, make_demo_corpus
from binser.experiment import ExperimentSettings, run_experiment, run_folds
from binser.evaluation import folds
from binser.results import validate_results


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    root = make_demo_corpus(base / "corpus", DemoSpec(n_speakers=4, per_emotion=3,
                                                      max_duration_s=1.6))
    settings = ExperimentSettings(dataset="folder", root=str(root), protocol="loso",
                                  input_size=64, cache_dir=str(base / "cache"), n_boot=200,
                                  synthetic=True, baselines=("opensmile",),
                                  baseline_sets=("egemaps",))
    results = run_experiment(settings, out=base / "out", progress=False)
    return base, settings, results


def test_results_follow_the_contract(tiny_study):
    base, _, results = tiny_study
    assert validate_results(results) == []
    on_disk = json.loads((base / "out" / "results.json").read_text())
    assert validate_results(on_disk) == []
    assert on_disk["n_utterances"] == 48 and on_disk["classes"] == sorted(on_disk["classes"])
    names = {r["name"] for r in on_disk["runs"]}
    for view in ("left", "right", "mid", "side"):
        for pooling in ("global-max", "global-avg", "block-max", "block-avg"):
            assert f"{view}/{pooling}" in names
    for fusion in ("left+right", "mid+side", "left+right+mid+side"):
        assert f"score-fusion/{fusion}" in names and f"score-fusion/{fusion}@oracle" in names
        assert f"feature-fusion/{fusion}" in names
    runs = {r["name"]: r for r in on_disk["runs"]}
    assert "opensmile/egemaps" in runs                           # --baselines opensmile
    assert len(runs["left/block-max"]["fold_ua"]) == 4          # one per test speaker
    assert runs["score-fusion/left+right+mid+side"]["selection"] == "nested"
    assert len(runs["score-fusion/left+right+mid+side"]["weights"]) == 4  # per fold
    assert set(runs["score-fusion/left+right+mid+side@oracle"]["weights"]) == {"alpha", "beta", "gamma"}


def test_pooled_metrics_match_the_predictions_file(tiny_study):
    import csv

    from sklearn.metrics import balanced_accuracy_score

    base, _, results = tiny_study
    rows = list(csv.DictReader(open(base / "out" / "predictions.csv")))
    assert len(rows) == 48
    for run in results["runs"][:5]:
        ua = balanced_accuracy_score([r["label"] for r in rows], [r[run["name"]] for r in rows])
        assert run["ua"] == pytest.approx(ua)


def test_report_and_figures_are_written(tiny_study):
    base, _, _ = tiny_study
    md = (base / "out" / "report.md").read_text()
    assert "SYNTHETIC" in md and "Table 1" in md and "two-stage score-level fusion" in md
    assert "hand-crafted baselines" in md and "opensmile/egemaps" in md
    assert (base / "out" / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert (base / "out" / "figures" / "fig1_views.png").stat().st_size > 10_000
    assert list((base / "out" / "figures").glob("confusion_*.png"))


def test_planted_easy_and_hard_views_get_the_numbers_they_should():
    """Left carries the labels (well separated class centres), right, mid and side are pure
    noise: left and every fusion with it are near perfect, each noise view and mid+side stay
    near the 25 % chance level, and best-view picks left in every fold."""
    from binser.experiment import summarise_run

    rng = np.random.default_rng(1)
    n, k = 48, 4
    y = np.tile(np.arange(k), n // k)
    speakers = np.repeat([f"s{i}" for i in range(4)], n // 4)
    easy = 0.5 * rng.normal(size=(n, 10)) + 3 * rng.normal(size=(k, 10))[y]
    base = {("left", "stats"): easy}
    base.update({(v, "stats"): rng.normal(size=(n, 10)) for v in ("right", "mid", "side")})
    fold_list = folds(list(speakers), "loso")
    settings = ExperimentSettings(dataset="x", root="x", poolings=("stats",),
                                  fusion_pooling="stats", n_boot=10)
    runs, _ = run_folds(base, y, speakers, fold_list, settings, k, progress=False, n_jobs=1)
    ua = {name: summarise_run(r, y, list("abcd"), fold_list, 10, 0, speakers)["ua"]
          for name, r in runs.items()}
    for name in ("left/stats", "best-view", "score-fusion/left+right",
                 "score-fusion/left+right+mid+side", "feature-fusion/left+right"):
        assert ua[name] >= 0.95, (name, ua[name])
    for name in ("right/stats", "mid/stats", "side/stats", "score-fusion/mid+side",
                 "feature-fusion/mid+side"):
        assert ua[name] < 0.5, (name, ua[name])
    assert [f["choice"] for f in runs["best-view"].fold_extra] == ["left/stats"] * 4


def test_test_fold_never_influences_its_own_fold(tiny_study):
    """Planted leak: rewrite the test speaker's features of fold 0 so that they reveal the
    labels. If anything (scaling, C, calibration, fusion weights) were fitted with fold 0's test
    data, fold 0's choices would change; they must not."""
    rng = np.random.default_rng(0)
    n, k = 40, 4
    y = np.repeat(np.arange(k), n // k)
    speakers = np.array([f"s{i % 4}" for i in range(n)])
    fold_list = folds(list(speakers), "loso")
    base = {(v, p): rng.normal(size=(n, 12)) + 0.8 * y[:, None] * (rng.random(12) > 0.5)
            for v in ("left", "right", "mid", "side") for p in ("block-max",)}
    leaked = {key: X.copy() for key, X in base.items()}
    test0 = fold_list[0][1]
    for X in leaked.values():
        X[test0] = 0.0
        X[test0, :k] = 100.0 * np.eye(k)[y[test0]]      # a perfect label oracle
    settings = ExperimentSettings(dataset="x", root="x", poolings=("block-max",), n_boot=10)
    runs_a, _ = run_folds(base, y, speakers, fold_list, settings, k, progress=False)
    runs_b, _ = run_folds(leaked, y, speakers, fold_list, settings, k, progress=False)
    for name in runs_a:
        assert runs_a[name].fold_extra[0] == runs_b[name].fold_extra[0], name
    # not only the discrete choices: every probability fitted on fold 0's training part
    # (the out-of-fold scores behind the nested weights) is the same, bit for bit
    from binser.experiment import FoldResultCache

    train0 = fold_list[0][0]
    for key in base:
        a = FoldResultCache(None, y, speakers, train0, test0, 0, k).oof_proba(base[key])
        b = FoldResultCache(None, y, speakers, train0, test0, 0, k).oof_proba(leaked[key])
        np.testing.assert_array_equal(a, b)
        assert a.shape == (len(train0), k) and np.allclose(a.sum(axis=1), 1.0)


def test_second_run_reuses_the_feature_cache(tiny_study, monkeypatch):
    base, settings, results = tiny_study
    import binser.features as features

    calls = []
    original = features.SegmentFeatureExtractor._features if hasattr(
        features.SegmentFeatureExtractor, "_features") else None
    if original is None:
        pytest.skip("extractor has no _features hook")

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(features.SegmentFeatureExtractor, "_features", counting)
    again = run_experiment(settings, out=None, progress=False)
    assert calls == []
    assert [r["ua"] for r in again["runs"]] == [r["ua"] for r in results["runs"]]


@pytest.mark.slow
def test_finetune_mode_trains_per_fold_on_training_speakers_only(tmp_path):
    """Mode finetune: every fold fine-tunes its own network per view on its training
    speakers; the fold's test speaker is never among the speakers a network saw."""
    root = make_demo_corpus(tmp_path / "corpus", DemoSpec(n_speakers=3, per_emotion=2,
                                                          max_duration_s=1.2))
    settings = ExperimentSettings(dataset="folder", root=str(root), protocol="loso",
                                  mode="finetune", finetune_preset="cpu", finetune_epochs=1,
                                  input_size=32, views=("left", "right"),
                                  poolings=("block-max",), cache_dir=str(tmp_path / "cache"),
                                  n_boot=20)
    results = run_experiment(settings, out=None, progress=False)
    assert validate_results(results) == []
    assert results["mode"] == "finetune"
    folds_info = results["finetune"]["folds"]
    assert len(folds_info) == 3
    frozen_id = results["backbone_weights_id"]
    for k, fold in enumerate(folds_info):
        test_speakers = set(results["fold_test_speakers"][k])
        for view in ("left", "right"):
            record = fold[view]
            seen = set(record["train_speakers"]) | set(record["val_speakers"])
            assert seen and not (seen & test_speakers)
            assert record["weights_id"] != frozen_id
    names = {r["name"] for r in results["runs"]}
    assert {"left/block-max", "score-fusion/left+right", "feature-fusion/left+right"} <= names
    runs = {r["name"]: r for r in results["runs"]}
    assert "saw those utterances" in runs["score-fusion/left+right"]["caveat"]
    assert "caveat" not in runs["left/block-max"]


def test_threads_option_reaches_extraction_and_finetuning():
    from binser.cli import build_parser, settings_from_args
    from binser.experiment import finetune_settings

    args = build_parser().parse_args(["experiment", "--dataset", "emovo", "--root", "x",
                                      "--out", "o", "--threads", "1", "--mode", "finetune"])
    settings = settings_from_args(args, args.dataset, args.root)
    assert settings.num_threads == 1
    assert finetune_settings(settings).num_threads == 1
    default = settings_from_args(build_parser().parse_args(
        ["experiment", "--dataset", "emovo", "--root", "x", "--out", "o"]), "emovo", "x")
    assert default.num_threads is None


# --- the stages of run_experiment (prepare -> features -> evaluate -> assemble -> write) ---

# results.json's top-level keys of a frozen study without --speaker-norm, in their order
# (a new field may come in between)
RESULTS_KEYS = [
    "binser_version", "dataset", "synthetic", "protocol", "classes", "n_utterances",
    "n_speakers", "n_folds", "fold_test_speakers", "speaker_independent",
    "speaker_independence", "backbone", "backbone_input_size", "backbone_weights_id",
    "backbone_weights_sha256", "layer", "pretrained", "mode", "segments_per_view",
    "silent_views", "mono_files", "absent_views", "fusion_pooling", "fusion_search",
    "ci_method", "ci_note", "speaker_norm", "settings", "skipped", "runs", "comparisons",
    "timing"]


def test_stages_chained_by_hand_give_run_experiments_results(tiny_study):
    """prepare -> compute_features -> evaluate -> assemble, called one by one (warm caches),
    give the results run_experiment wrote, key order included; the frozen features are one
    set shared by every fold, the baselines inside it."""
    from binser.experiment import assemble, compute_features, evaluate, prepare

    base, settings, results = tiny_study
    study = prepare(settings, progress=False)
    assert study.classes == results["classes"] and len(study.folds) == 4
    np.testing.assert_array_equal(study.fold_of >= 0, study.tested)
    timing = {}
    features = compute_features(study, settings, progress=False, timing=timing)
    assert len(features.per_fold) == 4
    assert all(p is features.first for p in features.per_fold)
    assert ("opensmile", "egemaps") in features.first.layer_features()
    assert set(timing) == {"features_s", "baselines_s"}
    runs = evaluate(study, features, settings, progress=False)
    again = assemble(study, features, runs, settings, progress=False)
    on_disk = json.loads((base / "out" / "results.json").read_text())
    assert list(on_disk) == [*again, "timing"]        # timing is run_experiment's
    assert [key for key in on_disk if key in RESULTS_KEYS] == RESULTS_KEYS
    on_disk.pop("timing")
    assert json.loads(json.dumps(again)) == on_disk
    spent = results["timing"]
    assert spent["features_s"] + spent["baselines_s"] + spent["classifiers_s"] <= spent["total_s"]


def test_prepare_indexes_labels_and_leaves_bad_files_out(tmp_path):
    from binser.errors import BinserError
    from binser.experiment import prepare

    root = make_demo_corpus(tmp_path / "corpus", DemoSpec(n_speakers=2, per_emotion=1,
                                                          max_duration_s=1.0))
    bad = root / "anger" / "spk09_01.wav"
    bad.write_bytes(b"RIFF not audio")
    settings = ExperimentSettings(dataset="folder", root=str(root), on_error="skip")
    study = prepare(settings, progress=False)
    assert [str(p) for p, _ in study.skipped] == [str(bad)]
    assert len(study.corpus) == 8 and "spk09" not in set(study.speakers)
    assert [study.classes[i] for i in study.y] == [u.label for u in study.corpus]
    assert [sorted(set(study.speakers[test])) for _, test in study.folds] == [["spk01"], ["spk02"]]
    with pytest.raises(BinserError, match="spk09_01.wav"):
        prepare(ExperimentSettings(dataset="folder", root=str(root)), progress=False)


@pytest.mark.parametrize("purpose", ["a study", "a model"])
def test_start_corpus_refuses_one_class_before_reading_a_file(tmp_path, purpose):
    from binser.corpora import Corpus, Utterance
    from binser.errors import ConfigError
    from binser.startup import start_corpus

    def loader(dataset, root, manifest=None):   # files that do not exist: never read
        return Corpus("x", tmp_path, [Utterance(tmp_path / f"{i}.wav", "anger", f"s{i}")
                                      for i in range(3)])

    settings = ExperimentSettings(dataset="x", root=str(tmp_path))
    with pytest.raises(ConfigError, match=f"1 emotion class\\(es\\) \\(anger\\); {purpose} "
                                          "needs at least 2"):
        start_corpus(settings, loader, progress=False, purpose=purpose)


def test_shared_features_serve_every_fold_and_are_transformed_once():
    from binser.experiment import PooledFeatures, as_per_fold, distinct_map

    shared = PooledFeatures({None: {("left", "stats"): np.ones((3, 2))}}, {})
    per_fold = as_per_fold(shared, 3)
    assert len(per_fold) == 3 and all(p is shared for p in per_fold)
    plain = as_per_fold({("left", "stats"): np.zeros((3, 2))}, 2)
    assert plain[0] is plain[1] and plain[0].layer_features()[("left", "stats")].sum() == 0
    own = [PooledFeatures({None: {}}, {}), PooledFeatures({None: {}}, {})]
    assert as_per_fold(own, 2) == own and as_per_fold(own, 2)[1] is own[1]
    calls = []

    def transform(p):
        calls.append(p)
        return object()

    mapped = distinct_map([shared, own[0], shared, own[1]], transform)
    assert calls == [shared, own[0], own[1]]           # once per distinct object, in order
    assert mapped[0] is mapped[2] and len({id(m) for m in mapped}) == 3


def test_run_experiment_shows_one_overall_line_per_stage(tiny_study, capsys):
    _, settings, results = tiny_study
    run_experiment(settings, out=None, progress=True, report=False)
    err = capsys.readouterr().err
    for n, stage in enumerate(("prepare", "features", "evaluate", "assemble"), start=1):
        assert f"stage {n} of 5: {stage}" in err


def test_prosody_stage_weight_is_chosen_on_training_speakers_only():
    """The prosody view joins the four-view fusion as its last stage (weight eta). A label
    oracle planted in the prosody features of the test speaker's rows changes the fused
    test predictions' inputs but not one weight (alpha, beta, gamma, eta), nor any other run."""
    from binser.evaluation import folds
    from binser.experiment import PooledFeatures, evaluate_fold
    from binser.fusion import PROSODY_FUSION

    rng = np.random.default_rng(5)
    n, k = 64, 4
    y = np.repeat(np.arange(k), n // k)
    speakers = np.array([f"s{i % 4}" for i in range(n)])
    views = ("left", "right", "mid", "side")
    mats = {(v, "stats"): rng.normal(size=(n, 8)) + 0.8 * np.eye(k)[y] @ rng.normal(size=(k, 8))
            for v in views}
    settings = ExperimentSettings(dataset="x", root="x", backbone="whisper-tiny", layer=0,
                                  poolings=("stats",), n_boot=10, prosody="egemaps")
    key = settings.prosody_key()
    assert key == ("opensmile", "egemaps-mid")
    mats[key] = rng.normal(size=(n, 5)) + 1.2 * np.eye(k)[y] @ rng.normal(size=(k, 5))
    train, test = folds(list(speakers), "loso")[0]
    leaked = dict(mats)
    leaked[key] = mats[key].copy()
    leaked[key][test] = 40.0 * np.eye(k)[y[test]] @ np.eye(k, 5)
    silent = {v: np.zeros(n, bool) for v in views}
    a, _ = evaluate_fold(PooledFeatures({0: mats}, silent), y, speakers, train, test, settings, k)
    b, _ = evaluate_fold(PooledFeatures({0: leaked}, silent), y, speakers, train, test,
                         settings, k)
    name = f"score-fusion/{PROSODY_FUSION}"
    assert set(a[name][1]["weights"]) == {"alpha", "beta", "gamma", "eta"}
    assert a[name][1] == b[name][1]
    for run in a:
        if run not in (name, "opensmile/egemaps-mid"):
            np.testing.assert_array_equal(a[run][0], b[run][0])
    assert not np.array_equal(a["opensmile/egemaps-mid"][0], b["opensmile/egemaps-mid"][0])


def test_prosody_and_layer_set_options_are_checked_before_any_work(tmp_path, capsys):
    from binser.cli import main
    from binser.errors import ConfigError

    with pytest.raises(ConfigError, match="--views must hold"):
        ExperimentSettings(dataset="emovo", root=str(tmp_path), prosody="egemaps",
                           views=("left", "right")).validate()
    with pytest.raises(ConfigError, match="openSMILE feature set"):
        ExperimentSettings(dataset="emovo", root=str(tmp_path), prosody="nope").validate()
    with pytest.raises(ConfigError, match="auto-set"):
        ExperimentSettings(dataset="emovo", root=str(tmp_path), backbone="whisper-base",
                           layer="best").validate()
    code = main(["train", "--dataset", "emovo", "--root", str(tmp_path), "--out",
                 str(tmp_path / "m"), "--backbone", "whisper-base", "--layer", "auto-set",
                 "--allow-random"])
    assert code == 2 and "--layer auto-set and --prosody are experiment options" in \
        capsys.readouterr().err
