"""Interruptions, concurrency and determinism of `binser experiment`.

The real command runs as a subprocess on a tiny synthetic corpus (24 files, 2 views, so 48
feature-cache entries). It is SIGKILLed while the features are being extracted (some but
not all cache entries written), then SIGINTed (Ctrl-C, to its process group) in a second
run; after each, every ``.npy`` in the cache must load as a finite float32 (n, d) array and
the only other files allowed are the writers' dot-temporaries. A third run resumes and its
``results.json`` must equal that of an uninterrupted run in a fresh cache. Two runs sharing
one fresh cache at once both finish with the same results, and the same command run twice
gives the same results (frozen mode: bit-identical predictions and metrics).

The subprocesses run with one BLAS/OpenMP thread (``OMP_NUM_THREADS=1``): on a loaded
2-core machine that is several times faster than oversubscribed torch threads, and every
run of a comparison uses the same setting.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from binser.demo import DemoSpec, make_demo_corpus

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
              pytest.mark.slow]   # whole studies in subprocesses, killed and resumed

N_FILES = 24
VIEWS = ("left", "right")
N_ENTRIES = N_FILES * len(VIEWS)     # one cache entry per (file, view)
FEATURE_DIM = 1280                   # efficientnet_lite0
ENTRY_NAME = re.compile(r"^[0-9a-f]{40}\.npy$")
TEMP_NAME = re.compile(r"^\.[0-9a-f]{40}\..+\.tmp$")


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory) -> Path:
    """The demo corpus (3 speakers x 4 emotions x 2) with a manifest: spk03 is the test
    split, so the study is one fold (fast, no worker processes)."""
    root = make_demo_corpus(tmp_path_factory.mktemp("interrupt") / "corpus",
                            DemoSpec(n_speakers=3, per_emotion=2, min_duration_s=0.7,
                                     max_duration_s=0.8))
    rows = ["path,label,speaker,split"]
    for path in sorted(root.rglob("*.wav")):
        speaker = path.stem.split("_")[0]
        rows.append(f"{path.relative_to(root).as_posix()},{path.parent.name},{speaker},"
                    f"{'test' if speaker == 'spk03' else 'train'}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    assert len(rows) - 1 == N_FILES
    return root


def _command(root: Path, out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "binser", "experiment", "--dataset", "csv", "--root",
            str(root), "--manifest", "manifest.csv", "--protocol", "split", "--out", str(out),
            "--cache-dir", str(cache), "--input-size", "32", "--views", ",".join(VIEWS),
            "--poolings", "block-max", "--n-boot", "50", "--batch-size", "2", "--quiet",
            "--no-report"]


def _start(command: list[str]) -> subprocess.Popen:
    """Start in its own process group (so a signal reaches it like a terminal's Ctrl-C)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)


def _finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _run(command: list[str]) -> None:
    code, _, err = _finish(_start(command))
    assert code == 0, err
    assert "Traceback" not in err


def _entries(cache: Path) -> list[Path]:
    """Segment-feature entries (classifier fold results under classifier/ not counted)."""
    return [p for p in cache.rglob("*.npy") if not p.name.startswith(".")
            and p.relative_to(cache).parts[0] not in ("classifier", "pooled")]


def _wait_until(condition, process: subprocess.Popen, timeout: float = 240) -> bool:
    """Poll ``condition()`` every 5 ms while ``process`` runs; True once it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def _assert_cache_sound(cache: Path) -> int:
    """Every feature entry loads as finite float32 (n, FEATURE_DIM) under its key's folder,
    every classifier fold result (under classifier/) as finite float64 (n, K), every pooled
    study matrix (under pooled/) as finite float32 (n, D); every other file is a writer's
    temporary. Returns the number of feature entries."""
    for path in cache.rglob("*"):
        fold_result = path.relative_to(cache).parts[0] == "classifier"
        pooled = path.relative_to(cache).parts[0] == "pooled"
        if path.is_dir():
            assert re.fullmatch(r"[0-9a-f]{2}|classifier|pooled", path.name), path
            continue
        if TEMP_NAME.match(path.name):
            continue                      # a killed writer's temporary: never read as an entry
        assert ENTRY_NAME.match(path.name) and path.parent.name == path.name[:2], path
        array = np.load(path, allow_pickle=False)
        assert array.dtype == (np.float64 if fold_result else np.float32), path
        assert array.ndim == 2 and array.shape[0] >= 1, path
        assert fold_result or pooled or array.shape[1] == FEATURE_DIM, path
        assert np.isfinite(array).all(), path
    return len(_entries(cache))


def _comparable(out: Path) -> dict:
    """results.json without what legitimately differs between runs (timing, cache path)."""
    results = json.loads((out / "results.json").read_text())
    results.pop("timing")
    results["settings"].pop("cache_dir")
    return results


@pytest.fixture(scope="module")
def reference(corpus_root, tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted run in a fresh cache."""
    base = tmp_path_factory.mktemp("reference")
    _run(_command(corpus_root, base / "out", base / "cache"))
    assert _assert_cache_sound(base / "cache") == N_ENTRIES
    return base, _comparable(base / "out")


def test_kill_then_ctrl_c_then_resume_gives_the_uninterrupted_results(corpus_root, reference,
                                                                       tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    command = _command(corpus_root, out, cache)

    # 1. SIGKILL as soon as the first entries exist (extraction in progress).
    process = _start(command)
    assert _wait_until(lambda: len(_entries(cache)) >= 1, process), _finish(process)[2]
    os.killpg(process.pid, signal.SIGKILL)
    code, _, _ = _finish(process)
    assert code == -signal.SIGKILL
    after_kill = _assert_cache_sound(cache)
    assert 0 < after_kill < N_ENTRIES

    # 2. Ctrl-C (SIGINT to the group) once the rerun has added entries of its own.
    process = _start(command)
    assert _wait_until(lambda: len(_entries(cache)) > after_kill, process), _finish(process)[2]
    os.killpg(process.pid, signal.SIGINT)
    code, _, err = _finish(process)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    after_interrupt = _assert_cache_sound(cache)
    assert after_kill < after_interrupt < N_ENTRIES
    assert not (out / "results.json").exists()

    # 3. Resume: finishes, and equals the uninterrupted run exactly.
    _run(command)
    assert _assert_cache_sound(cache) == N_ENTRIES
    reference_dir, expected = reference
    assert _comparable(out) == expected
    assert (out / "predictions.csv").read_text() == \
        (reference_dir / "out" / "predictions.csv").read_text()


def test_concurrent_runs_sharing_one_cache(corpus_root, reference, tmp_path):
    cache = tmp_path / "cache"
    processes = [_start(_command(corpus_root, tmp_path / f"out{i}", cache)) for i in (1, 2)]
    for process in processes:
        code, _, err = _finish(process)
        assert code == 0, err
        assert "Traceback" not in err
    assert _assert_cache_sound(cache) == N_ENTRIES
    first, second = _comparable(tmp_path / "out1"), _comparable(tmp_path / "out2")
    assert first == second == reference[1]


def test_thread_count_and_batch_size_do_not_change_results(corpus_root, reference, tmp_path):
    """Same inputs, same numbers: a cold run in a fresh cache with one worker thread and
    another batch size gives the reference run's predictions, metrics, confusions, fusion
    weights and C values bit for bit (features never depend on threads or batching)."""
    base, expected = reference
    out = tmp_path / "out"
    _run(_command(corpus_root, out, tmp_path / "cache") + ["--threads", "1", "--batch-size", "7"])
    got = _comparable(out)
    assert (got["settings"].pop("num_threads"), got["settings"].pop("batch_size")) == (1, 7)
    want = {**expected, "settings": {k: v for k, v in expected["settings"].items()
                                     if k not in ("num_threads", "batch_size")}}
    assert got == want
    assert (out / "predictions.csv").read_text() == \
        (base / "out" / "predictions.csv").read_text()
    runs = expected["runs"]
    assert {r["name"] for r in runs} >= {"left/block-max", "right/block-max",
                                         "score-fusion/left+right",
                                         "feature-fusion/left+right"}
