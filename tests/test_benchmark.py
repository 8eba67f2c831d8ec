"""binser bench: its librosa reference agrees with binser's front end, its figures are
computed as documented, memory is measured over the process tree, and the CLI prints JSON."""
from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import soundfile as sf

from binser.benchmark import (
    BenchOptions,
    compare_to_reference,
    emovo_files,
    extraction_speed,
    librosa_reference_images,
    run_bench,
    run_measured,
    summary,
)
from binser.cli import main
from binser.config import FrontEndConfig
from binser.errors import ConfigError, CorpusError
from binser.features import file_images
from binser.views import VIEWS

SR = 16000


def _stereo(path, seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    left = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.01 * rng.standard_normal(t.size)
    right = np.roll(left, 7) * 0.8 + 0.01 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack([left, right], axis=1), SR)
    return path


@pytest.fixture
def mini_emovo(tmp_path):
    root = tmp_path / "emovo"
    _stereo(root / "f1" / "rab-f1-b1.flac", 1.3, 0)
    _stereo(root / "f1" / "tri-f1-l1.flac", 0.5, 1)     # shorter than one segment
    _stereo(root / "m1" / "gio-m1-b2.flac", 2.1, 2)
    return root


@pytest.mark.parametrize("seconds", [0.5, 2.3])
def test_librosa_reference_matches_binser_front_end(tmp_path, seconds):
    path = _stereo(tmp_path / "a.flac", seconds)
    ours = file_images(path, VIEWS, FrontEndConfig())
    ref = librosa_reference_images(path, FrontEndConfig())
    for view in VIEWS:
        assert ours[view].shape == ref[view].shape
        np.testing.assert_allclose(ours[view], ref[view], atol=1e-4)


def test_emovo_files_quick_subset_and_missing_corpus(mini_emovo, tmp_path):
    assert [p.name for p in emovo_files(mini_emovo)] == [
        "rab-f1-b1.flac", "tri-f1-l1.flac", "gio-m1-b2.flac"]
    assert [p.name for p in emovo_files(mini_emovo, quick=True)] == [
        "rab-f1-b1.flac", "gio-m1-b2.flac"]
    with pytest.raises(CorpusError, match="no EMOVO corpus"):
        emovo_files(tmp_path / "absent")


def test_summary_ratios():
    figures = {"quick": True,
               "frontend": {"binser_xrt": 600.0, "vs_librosa": 12.0},
               "extraction": [{"ratio": 0.95, "binser_img_s": 50.0}, {"ratio": 0.5}],
               "opensmile": {"xrt": 150.0},
               "study": {"command": "binser experiment --backbone whisper-base --out OUT",
                         "cold": {"wall_s": 300.0, "peak_rss_mb": 900.0},
                         "warm": {"wall_s": 20.0, "peak_rss_mb": 1200.0}}}
    s = summary(figures)
    assert s["frontend_xrt"] == 600.0 and s["frontend_vs_opensmile"] == 4.0
    assert s["extraction_ratio"] == 0.95 and s["extraction_img_s"] == 50.0
    assert (s["study_cold_s"], s["study_warm_s"], s["peak_rss_mb"]) == (300.0, 20.0, 1200.0)
    assert s["gpu_extraction_ratio"] is None and s["study_backbone"] == "whisper-base"
    gpu = summary({**figures, "extraction_gpu": [{"ratio": 0.93, "binser_img_s": 4000.0}]})
    assert (gpu["gpu_extraction_ratio"], gpu["gpu_extraction_img_s"]) == (0.93, 4000.0)
    empty = summary({"quick": False})
    assert all(v is None for k, v in empty.items() if k != "quick")


def test_peak_memory_covers_child_processes(tmp_path):
    # the parent stays small; its child holds ~300 MiB for a moment
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import numpy, time; a = numpy.ones(300 * 2**20 // 8); time.sleep(1.0)'])")
    log = tmp_path / "not" / "yet" / "there.log"         # the folder is created
    measured = run_measured([sys.executable, "-c", code + "; print('done')"],
                            interval_s=0.05, log=log)
    assert measured["returncode"] == 0 and log.read_text().strip() == "done"
    assert measured["peak_rss_mb"] > 300
    failed = run_measured([sys.executable, "-c", "raise SystemExit(3)"])
    assert failed["returncode"] == 3


def test_extraction_ratio_is_binser_over_the_faster_bare_layout():
    (row,) = extraction_speed([("efficientnet_lite0", 32)], batch=4, threads=1, seconds=0.2)
    assert row["ceiling_img_s"] == max(row["bare_nchw_img_s"], row["bare_channels_last_img_s"])
    assert row["ratio"] == pytest.approx(row["binser_img_s"] / row["ceiling_img_s"])
    assert row["threads"] == 1 and row["binser_img_s"] > 0 and row["device"] == "cpu"


def test_gpu_extraction_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        extraction_speed([("efficientnet_lite0", 32)], batch=2, seconds=0.1, device="cuda")


def test_unknown_part_refused(mini_emovo):
    with pytest.raises(ConfigError, match="unknown bench part"):
        run_bench(BenchOptions(root=mini_emovo, parts=("gpu",)), report=lambda s: None)


@pytest.mark.parametrize("field,value,option", [
    ("seconds", -1.0, "--seconds"), ("seconds", 0.0, "--seconds"),
    ("seconds", float("nan"), "--seconds"), ("seconds", float("inf"), "--seconds"),
    ("threads", 0, "--threads"), ("threads", 1.5, "--threads"), ("batch", 0, "--batch-size"),
    ("batch", True, "--batch-size"), ("parts", (), "--parts"),
    ("whisper_weights", "nowhere", "--whisper-weights"), ("serve_model", "nowhere",
                                                          "--serve-model")])
def test_bench_options_are_checked_before_any_work(field, value, option, tmp_path):
    options = BenchOptions(root=tmp_path / "no corpus here", parts=("frontend",))
    setattr(options, field, tmp_path / value if field in ("whisper_weights", "serve_model")
            else value)
    with pytest.raises(ConfigError, match=option):   # not CorpusError: options come first
        run_bench(options, report=lambda s: None)


@pytest.mark.parametrize("argv", [["--seconds", "-1"], ["--seconds", "nan"], ["--seconds", "inf"],
                                  ["--threads", "0"], ["--batch-size", "-3"]])
def test_cli_bench_numbers_are_refused_in_one_line(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["bench", "--root", str(tmp_path), "--parts", "frontend", *argv])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[0]}" in err and "Traceback" not in err


@pytest.fixture
def emovo_with_mono(mini_emovo):
    """mini_emovo whose first file (compared with the reference) is mono."""
    path = mini_emovo / "f1" / "rab-f1-b1.flac"
    left, _ = sf.read(path, dtype="float32")
    sf.write(path, left[:, 0], SR)
    return mini_emovo


def test_silent_views_are_left_out_of_the_image_check(emovo_with_mono):
    out = compare_to_reference(emovo_files(emovo_with_mono), FrontEndConfig())
    assert out["silent_views_skipped"] == 1                  # the mono file's Side
    assert out["compared_views"] == 3 * len(VIEWS) - 1
    assert out["max_abs_diff"] < 1e-4


def test_cli_front_end_with_a_mono_file_agrees(emovo_with_mono, capsys):
    assert main(["bench", "--root", str(emovo_with_mono), "--parts", "frontend",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("front end:"))
    assert "1 silent view(s) skipped" in line and "e+00" not in line, line


def test_images_that_disagree_fail_the_bench(mini_emovo, monkeypatch, capsys):
    import binser.benchmark as benchmark

    honest = benchmark.librosa_reference_images

    def off_by_a_little(path, config):
        return {v: images + np.float32(0.01) for v, images in honest(path, config).items()}

    monkeypatch.setattr(benchmark, "librosa_reference_images", off_by_a_little)
    assert main(["bench", "--root", str(mini_emovo), "--parts", "frontend",
                 "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "front end check failed" in err and "differ from the librosa reference" in err
    lines = [line for line in re.split(r"[\r\n]", err) if line.startswith("binser:")]
    assert "Traceback" not in err and len(lines) == 1      # one error line (beside progress)


def test_cli_json_front_end_only(mini_emovo, capsys):
    assert main(["bench", "--root", str(mini_emovo), "--json", "--parts", "frontend",
                 "--threads", "1"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["frontend_xrt"] > 0 and out["frontend_vs_librosa"] > 0
    assert out["study_cold_s"] is None and out["extraction_ratio"] is None
    assert out["gpu_extraction_ratio"] is None
    assert out["details"]["frontend"]["max_abs_diff"] < 1e-4
    assert out["details"]["files"] == 3
    assert "front end:" in captured.err                      # progress on stderr


def test_cli_missing_corpus_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "--root", str(tmp_path / "nowhere"), "--parts", "frontend"]) == 2
    assert "no EMOVO corpus" in capsys.readouterr().err


def test_serve_part_without_a_model_is_skipped(mini_emovo, capsys):
    """bench --parts serve with no --serve-model: a message, no server, no failure."""
    assert main(["bench", "--root", str(mini_emovo), "--json", "--parts", "serve"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert "--serve-model" in out["details"]["serve"]["skipped"]
    assert out["serve_requests_s"] is None and out["serve_max_streams"] is None
    assert "serve: not measured" in captured.err


def test_long_stream_files_join_stereo_utterances(tmp_path):
    """Stream files for the serve part: the count asked for, each at least the length asked
    for, 16 kHz stereo, made of the inputs' samples (mono inputs skipped)."""
    import soundfile as sf

    from binser.benchmark import long_stream_files

    rng = np.random.default_rng(0)
    a, b, m = tmp_path / "a.wav", tmp_path / "b.wav", tmp_path / "m.wav"
    sf.write(a, 0.1 * rng.standard_normal((8000, 2)), 16000, subtype="PCM_16")
    sf.write(b, 0.1 * rng.standard_normal((12000, 2)), 16000, subtype="PCM_16")
    sf.write(m, 0.1 * rng.standard_normal(8000), 16000, subtype="PCM_16")
    out = long_stream_files([a, m, b], tmp_path / "s", count=3, seconds=2.0)
    assert len(out) == 3
    first, sr = sf.read(out[0], dtype="int16")
    assert sr == 16000 and first.shape[1] == 2 and len(first) >= 32000
    head = sf.read(a, dtype="int16")[0]
    assert np.array_equal(first[:8000], head)                      # a, then b (m skipped)
    assert np.array_equal(first[8000:20000], sf.read(b, dtype="int16")[0])
