"""The Ray executor: the same study on a (local, 2-CPU) Ray cluster gives identical numbers,
also when a feature actor is killed mid-run; features of a tiny Whisper equal bit for bit;
a clear one-line error where ray is not installed."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from binser import cli
from binser import executors
from binser.demo import DemoSpec, make_demo_corpus
from binser.experiment import ExperimentSettings, run_experiment
from binser.executors import RAY_MISSING, RayExecutor


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip(
        "ray", reason="ray is not installed: pip install 'binser[ray]' to run the Ray tests")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=200 * 1024 ** 2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_demo_corpus(tmp_path_factory.mktemp("corpus") / "c",
                            DemoSpec(n_speakers=4, per_emotion=2, max_duration_s=1.4))


def settings(corpus: Path, cache: Path, executor: str) -> ExperimentSettings:
    return ExperimentSettings(dataset="folder", root=str(corpus), protocol="loso",
                              backbone="efficientnet_lite0", input_size=32,
                              poolings=("global-avg", "block-max"), cache_dir=str(cache),
                              n_boot=20, synthetic=True, num_threads=1, executor=executor)


def same_results(a_out: Path, b_out: Path, a: dict, b: dict) -> None:
    assert a["runs"] == b["runs"]                     # every metric, CI and fold choice
    assert a["comparisons"] == b["comparisons"]
    assert (a_out / "predictions.csv").read_bytes() == (b_out / "predictions.csv").read_bytes()


@pytest.fixture(scope="module")
def local_run(corpus, tmp_path_factory):
    base = tmp_path_factory.mktemp("local")
    results = run_experiment(settings(corpus, base / "cache", "local"), out=base / "out",
                             progress=False, report=False)
    return base / "out", results


@pytest.mark.slow
def test_ray_results_equal_local(ray_cluster, corpus, local_run, tmp_path):
    results = run_experiment(settings(corpus, tmp_path / "cache", "ray"), out=tmp_path / "out",
                             progress=False, report=False)
    same_results(local_run[0], tmp_path / "out", local_run[1], results)
    assert results["settings"]["executor"] == "ray"
    # the driver wrote the workers' features into the cache: a rerun reads them all
    entries = list((tmp_path / "cache").glob("[0-9a-f][0-9a-f]/*.npy"))
    assert len(entries) >= 4 * len(list(Path(corpus).rglob("*.wav")))


@pytest.mark.slow
def test_killed_actor_is_retried_with_identical_results(ray_cluster, corpus, local_run,
                                                        tmp_path, monkeypatch):
    seen: list[RayExecutor] = []

    def kill_first_actor(executor: RayExecutor, actor: int, submitted: int) -> None:
        if submitted == 1 and not seen:      # the first batch is on actor `actor` now
            seen.append(executor)
            os.kill(executor.pids[actor], signal.SIGKILL)

    monkeypatch.setattr(RayExecutor, "fault_hook", staticmethod(kill_first_actor))
    monkeypatch.setattr(executors, "FILES_PER_TASK", 4)
    results = run_experiment(settings(corpus, tmp_path / "cache", "ray"), out=tmp_path / "out",
                             progress=False, report=False)
    assert seen and seen[0].retried >= 1
    same_results(local_run[0], tmp_path / "out", local_run[1], results)


@pytest.mark.slow
def test_tiny_whisper_frames_equal_on_ray(ray_cluster, corpus, tmp_path):
    from test_encoder_study import TINY
    from test_whisper import random_encoder, save_hf_folder

    from binser.backbones.whisper import load_whisper
    from binser.features import FrameFeatureExtractor

    folder = save_hf_folder(tmp_path / "hf", random_encoder(TINY, 1), TINY)
    whisper = load_whisper("whisper-tiny", folder)
    paths = sorted(Path(corpus).rglob("*.wav"))[:6]
    local = FrameFeatureExtractor(whisper, layers=(1, 2), num_threads=1,
                                  progress=False).extract(paths)
    remote = FrameFeatureExtractor(whisper, layers=(1, 2), cache_dir=tmp_path / "cache",
                                   progress=False)
    RayExecutor(workers=2, files_per_task=2).prepare_features(remote, paths, progress=False)
    assert remote.n_computed == 0            # nothing left for the driver to compute ...
    got = remote.extract(paths)
    assert remote.n_computed == 0 and remote.n_cached == len(paths) * 4   # ... all cached
    for layer in (1, 2):
        for view, rows in local[layer].items():
            for a, b in zip(rows, got[layer][view]):
                np.testing.assert_array_equal(a, b)


def test_ray_missing_is_one_clear_line(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(executors, "ray_available", lambda: False)
    code = cli.main(["experiment", "--dataset", "folder", "--root", str(corpus), "--out",
                     str(tmp_path / "out"), "--backbone", "efficientnet_lite0",
                     "--executor", "ray", "--quiet"])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"binser: error: {RAY_MISSING}"
    assert not (tmp_path / "out").exists()


def test_ray_address_needs_the_ray_executor(corpus, tmp_path, capsys):
    code = cli.main(["experiment", "--dataset", "folder", "--root", str(corpus), "--out",
                     str(tmp_path / "out"), "--backbone", "efficientnet_lite0",
                     "--ray-address", "auto", "--quiet"])
    assert code == 2
    assert "--ray-address applies to --executor ray" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_ray_part_smoke(ray_cluster, corpus):
    from binser.benchmark import ray_speed, summary

    paths = sorted(Path(corpus).rglob("*.wav"))[:4]
    figures = ray_speed(paths, None, workers=(1, 2), threads=2)
    assert [r["workers"] for r in figures["ray"]] == [1, 2]
    assert all(r["identical"] and r["vs_local"] > 0 for r in figures["ray"])
    assert set(summary({"quick": True, "ray": figures})["ray_vs_local"]) == {"1", "2"}


@pytest.mark.slow
def test_train_and_predict_on_ray_equal_local(ray_cluster, corpus, tmp_path):
    from dataclasses import replace

    from binser.model import train_model

    local = settings(corpus, tmp_path / "cache_local", "local")
    model = train_model(local, None, progress=False)
    remote = train_model(replace(local, executor="ray", cache_dir=str(tmp_path / "cache_ray")),
                         None, progress=False)
    assert remote.weights == model.weights
    paths = sorted(Path(corpus).rglob("*.wav"))[:5]
    here = model.predict(paths, progress=False)
    there = model.predict(paths, progress=False, executor=RayExecutor(workers=2),
                          cache_dir=tmp_path / "predict_cache")
    assert [p.to_dict() for p in here] == [p.to_dict() for p in there]
    assert [p.to_dict() for p in remote.predict(paths, progress=False)] == \
        [p.to_dict() for p in here]


@pytest.mark.slow
def test_interrupted_driver_keeps_finished_batches(ray_cluster, corpus, tmp_path, monkeypatch):
    submitted: list[int] = []

    def interrupt(executor: RayExecutor, actor: int, n: int) -> None:
        submitted.append(n)
        if n == 4:                           # batches 1-2 are back by now, or soon
            raise KeyboardInterrupt

    monkeypatch.setattr(executors, "FILES_PER_TASK", 4)
    monkeypatch.setattr(RayExecutor, "fault_hook", staticmethod(interrupt))
    run = settings(corpus, tmp_path / "cache", "ray")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(run, out=tmp_path / "out", progress=False, report=False)
    kept = list((tmp_path / "cache").glob("[0-9a-f][0-9a-f]/*.npy"))
    assert kept and not (tmp_path / "out").exists()
    submitted.clear()
    monkeypatch.setattr(RayExecutor, "fault_hook",
                        staticmethod(lambda e, a, n: submitted.append(n)))
    run_experiment(run, out=tmp_path / "out", progress=False, report=False)
    n_files = len(list(Path(corpus).rglob("*.wav")))
    assert 0 < len(submitted) < n_files // 4   # only the batches not finished before


def test_gpu_features_get_their_own_cache_keys(tmp_path):
    from binser.cache import FeatureCache
    from binser.executors import _Overlay, _Tagged

    disk = FeatureCache(tmp_path)
    tagged = _Overlay({}, _Tagged(disk, "cuda"))
    key = "ab" * 20
    tagged.put(key, np.ones((2, 3), np.float32))
    assert disk.get(key) is None and tagged.has(key)       # CPU runs never read it
    np.testing.assert_array_equal(tagged.get(key, 3), np.ones((2, 3), np.float32))
