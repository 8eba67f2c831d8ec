"""Bad input, one file at a time: preflight and the command line.

Every kind of bad input is planted in a tiny synthetic corpus (or given alone to
``binser inspect``). Each must be named with its cause by :mod:`binser.preflight`, by
``binser inspect`` (exit 2), by ``binser scan`` (listed; exit 2 with ``--on-error fail``)
and by ``binser experiment`` (exit 2 before any feature is computed with the default
``--on-error fail``; with ``--on-error skip`` the study completes without the file and
``results.json`` lists it under ``skipped``). No traceback reaches the user.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf

from binser.cli import main
from binser.config import FrontEndConfig
from binser.corpora import corpus
from binser.demo import DemoSpec, make_demo_corpus
from binser.errors import BinserError, ConfigError
from binser.preflight import (SILENCE_DBFS, apply_on_error, check_corpus, check_file,
                              check_inputs, peak_dbfs, screen_corpus)

SR = 16000


# --------------------------------------------------------------------------- bad files


def _tone(seconds: float, rate: int = SR, level: float = 0.3) -> np.ndarray:
    """Stereo (N, 2) float32 test tone, 440 Hz left, 660 Hz right."""
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)],
                             axis=1)).astype(np.float32)


def _write(path: Path, data: np.ndarray, rate: int = SR, subtype: str = "PCM_16") -> None:
    sf.write(path, data, rate, subtype=subtype, format=path.suffix[1:].upper())


def _missing(path: Path) -> None:
    path.symlink_to(path.parent / "does-not-exist.wav")   # a dangling link: no file behind it


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    _write(path, _tone(1.0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])   # the header still declares 1 s of samples


def _corrupt(path: Path) -> None:
    _write(path, _tone(1.0))
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    data[start:start + 4000] = np.random.default_rng(0).integers(0, 256, 4000,
                                                                  dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _not_audio(path: Path) -> None:
    path.write_text("path,label\nthis is a CSV file with an audio extension\n" * 20)


def _video_without_audio(path: Path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8),
                                               format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _zero_length(path: Path) -> None:
    _write(path, np.zeros((0, 2), np.float32))


def _too_short(path: Path) -> None:
    _write(path, _tone(100 / SR))            # 100 samples = 6.25 ms < one 25 ms frame


def _too_long(path: Path) -> None:
    # 601 s > the default limit of 600 s, kept small on disk: 1 kHz, 8-bit
    _write(path, _tone(601.0, rate=1000), rate=1000, subtype="PCM_U8")


def _silent(path: Path) -> None:
    _write(path, np.zeros((SR, 2), np.float32))


def _quiet(path: Path) -> None:
    _write(path, _tone(1.0, level=1e-5), subtype="FLOAT")      # peak -100 dBFS


def _all_nan(path: Path) -> None:
    _write(path, np.full((SR, 2), np.nan, np.float32), subtype="FLOAT")


def _infinite(path: Path) -> None:
    data = _tone(1.0)
    data[SR // 2, 1] = np.inf
    _write(path, data, subtype="FLOAT")


def _huge_values(path: Path) -> None:
    _write(path, _tone(1.0, level=1e20), subtype="FLOAT")    # garbage in a float file


def _good(path: Path) -> None:
    _write(path, _tone(1.0))


@dataclass(frozen=True)
class Bad:
    """One kind of bad input: where it goes in a folder corpus, how to make it, and a
    fragment its reported cause must contain."""

    rel: str
    make: Callable[[Path], None]
    cause: str
    has_audio_file: bool = True     # False: a naming problem, not the file's content


BAD: dict[str, Bad] = {
    "missing": Bad("anger/spk01_90.wav", _missing, "broken symbolic link"),
    "empty": Bad("anger/spk02_91.wav", _empty, "empty file (0 bytes)"),
    "truncated": Bad("joy/spk01_92.wav", _truncated, "truncated"),
    "corrupt": Bad("joy/spk02_93.flac", _corrupt, "corrupt audio data"),
    "not-audio": Bad("neutral/spk02_94.wav", _not_audio, "not a recognised audio or video file"),
    "video-without-audio": Bad("neutral/spk03_95.mp4", _video_without_audio,
                               "no audio stream"),
    "zero-length": Bad("sadness/spk03_96.wav", _zero_length, "zero-length audio"),
    "too-short": Bad("sadness/spk01_97.wav", _too_short, "too short"),
    "too-long": Bad("anger/spk02_98.wav", _too_long, "too long: 601.00 s exceeds"),
    "silent": Bad("joy/spk03_99.wav", _silent, "silent: every sample is zero"),
    "quiet": Bad("joy/spk03_89.wav", _quiet, "silent: peak level -100.0 dBFS"),
    "all-nan": Bad("neutral/spk01_88.wav", _all_nan, "NaN or infinite samples"),
    "infinite": Bad("neutral/spk01_87.wav", _infinite, "NaN or infinite samples"),
    "huge-values": Bad("sadness/spk02_86.wav", _huge_values, "implausible sample values"),
    "no-label-folder": Bad("spk01_85.wav", _good, "is not inside a label folder",
                           has_audio_file=False),
}
FILE_KINDS = [k for k, b in BAD.items() if b.has_audio_file]


def _plant(root: Path, kind: str) -> Path:
    bad = BAD[kind]
    path = root / bad.rel
    path.parent.mkdir(parents=True, exist_ok=True)
    bad.make(path)
    return path


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clean_corpus(tmp_path_factory) -> Path:
    """3 speakers x 4 emotions x 2 utterances of 0.7-0.8 s (24 good files)."""
    return make_demo_corpus(tmp_path_factory.mktemp("clean") / "corpus",
                            DemoSpec(n_speakers=3, per_emotion=2, min_duration_s=0.7,
                                     max_duration_s=0.8))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """In-process feature extraction with one torch thread: far faster than two contended
    threads on a loaded 2-core machine; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    """Each bad kind alone in a folder, for preflight and ``binser inspect``."""
    base = tmp_path_factory.mktemp("bad")
    return {kind: _plant(base / kind, kind) for kind in BAD}


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``binser.main(argv)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


EXPERIMENT_FAST = ["--input-size", "32", "--views", "left,right", "--poolings", "block-max",
                   "--n-boot", "50", "--quiet", "--no-report"]


def _experiment(root: Path, out: Path, cache: Path, *extra: str) -> tuple[int, str, str]:
    return _run_cli(["experiment", "--dataset", "folder", "--root", str(root), "--out",
                     str(out), "--cache-dir", str(cache), *EXPERIMENT_FAST, *extra])


@pytest.fixture(scope="module")
def all_bad(clean_corpus, tmp_path_factory):
    """The clean corpus with every bad kind planted at once, and the CLI's answers."""
    base = tmp_path_factory.mktemp("allbad")
    root = base / "corpus"
    shutil.copytree(clean_corpus, root)
    paths = {kind: _plant(root, kind) for kind in BAD}
    runs = {
        "scan": _run_cli(["scan", "folder", str(root), "--quiet"]),
        "scan-fail": _run_cli(["scan", "folder", str(root), "--quiet", "--on-error", "fail"]),
        "experiment-fail": _experiment(root, base / "out-fail", base / "cache-fail"),
        "experiment-skip": _experiment(root, base / "out-skip", base / "cache-skip",
                                       "--on-error", "skip"),
    }
    return base, paths, runs


def _assert_named(text: str, path: Path, cause: str) -> None:
    """``text`` has a line naming ``path`` with ``cause``, and no traceback."""
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if path.name in line]
    assert lines, f"{path.name} not named in:\n{text}"
    assert any(cause in line for line in lines), f"cause {cause!r} not in {lines}"


# --------------------------------------------------------------------------- preflight


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_preflight_names_each_bad_file_and_cause(kind, bad_files, clean_corpus):
    good = sorted(clean_corpus.rglob("*.wav"))[0]
    report = check_inputs([good, bad_files[kind], good], progress=False)
    assert report.ok == [0, 2]
    assert len(report.problems) == 1
    path, cause = report.problems[0]
    assert path == bad_files[kind] and BAD[kind].cause in cause


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_check_file_raises_binser_error_naming_the_file(kind, bad_files):
    with pytest.raises(BinserError) as info:
        check_file(bad_files[kind])
    assert str(bad_files[kind]) in str(info.value) and BAD[kind].cause in str(info.value)


def test_missing_labels_are_problems(bad_files):
    good = bad_files["no-label-folder"]
    report = check_inputs([good, good, good], labels=["grumpy", " ", None], progress=False)
    assert report.ok == [0]            # any label is accepted: corpora have their own sets
    assert [c for _, c in report.problems] == ["no label", "no label"]


def test_a_good_file_passes(clean_corpus):
    paths = sorted(clean_corpus.rglob("*.wav"))
    report = check_inputs(paths, progress=False)
    assert report.ok == list(range(len(paths))) and report.problems == []


def test_limits_are_configurable(bad_files, tmp_path):
    path = tmp_path / "two_seconds.wav"
    _write(path, _tone(2.0))
    assert check_inputs([path], max_duration_s=1.5, progress=False).problems[0][1].startswith(
        "too long: 2.00 s exceeds the limit of max_duration_s=1.5 s")
    assert check_inputs([path], config=FrontEndConfig(max_duration_s=1.0),
                        progress=False).ok == []
    assert check_inputs([path], max_duration_s=2.5, progress=False).ok == [0]
    with pytest.raises(ConfigError):
        check_inputs([path], max_duration_s=0, progress=False)


def test_silence_threshold_is_the_peak_level(tmp_path):
    """-89 dBFS peak is kept, -91 dBFS is silent (threshold -90 dBFS)."""
    loud, quiet = tmp_path / "loud.wav", tmp_path / "quiet.wav"
    _write(loud, _tone(1.0, level=10 ** (-89 / 20)), subtype="FLOAT")
    _write(quiet, _tone(1.0, level=10 ** (-91 / 20)), subtype="FLOAT")
    assert SILENCE_DBFS == -90.0
    report = check_inputs([loud, quiet], progress=False)
    assert report.ok == [0] and "silent: peak level -91.0 dBFS" in report.problems[0][1]
    assert peak_dbfs(np.array([0.5, -1.0])) == 0.0 and peak_dbfs(np.zeros(3)) == -np.inf


def test_one_frame_is_the_shortest_usable_length(tmp_path):
    """400 samples (one 25 ms window at 16 kHz) pass, 399 do not."""
    ok, short = tmp_path / "ok.wav", tmp_path / "short.wav"
    _write(ok, _tone(400 / SR))
    _write(short, _tone(399 / SR))
    report = check_inputs([ok, short], progress=False)
    assert report.ok == [0] and "399 samples" in report.problems[0][1]


def test_truncated_mp3_is_caught_by_its_announced_length(tmp_path):
    path = tmp_path / "cut.mp3"
    sf.write(path, _tone(1.0), SR, format="MP3")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = check_inputs([path], progress=False)
    assert report.ok == [] and report.problems[0][1].startswith("truncated: the header announces")


def test_apply_on_error_policies(bad_files, clean_corpus):
    good = sorted(clean_corpus.rglob("*.wav"))[0]
    report = check_inputs([good, bad_files["silent"], bad_files["empty"]], progress=False)
    assert apply_on_error(report, "skip") == [0]
    with pytest.raises(BinserError) as info:
        apply_on_error(report, "fail")
    message = str(info.value)
    assert message.count("\n") == 2    # a header line, then one line per bad file
    assert f"{bad_files['silent']}: silent" in message and f"{bad_files['empty']}: empty" in message
    with pytest.raises(ConfigError):
        apply_on_error(report, "ignore")
    only_bad = check_inputs([bad_files["silent"]], progress=False)
    with pytest.raises(BinserError, match="no usable input file"):
        apply_on_error(only_bad, "skip")


def test_screen_corpus_folds_naming_problems_in(all_bad):
    base, paths, _ = all_bad
    found = corpus("folder", base / "corpus")
    report = check_corpus(found, progress=False)
    assert {p for p, _ in report.problems} == set(paths.values())
    kept, skipped = screen_corpus(found, "skip", progress=False)
    assert len(kept) == 24 and not {u.path for u in kept} & set(paths.values())
    assert skipped == report.problems
    with pytest.raises(BinserError):
        screen_corpus(found, "fail", progress=False)


# --------------------------------------------------------------------------- binser inspect


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_inspect_reports_file_and_cause(kind, bad_files):
    code, out, err = _run_cli(["inspect", str(bad_files[kind])])
    assert code == 2 and out == ""
    assert err.startswith("binser: error: ")
    _assert_named(err, bad_files[kind], BAD[kind].cause)


def test_inspect_good_file_still_works(clean_corpus):
    path = sorted(clean_corpus.rglob("*.wav"))[0]
    code, out, err = _run_cli(["inspect", str(path)])
    assert code == 0 and "Traceback" not in err
    assert re.search(r"^channels: +2 \(stereo\)$", out, re.M), out


# --------------------------------------------------------------------------- binser scan


@pytest.mark.parametrize("kind", list(BAD))
def test_scan_lists_every_bad_file_and_goes_on(kind, all_bad):
    _, paths, runs = all_bad
    code, out, err = runs["scan"]
    assert code == 1 and "Traceback" not in err     # 1: some files cannot be used
    assert f"{len(BAD)} of {24 + len(BAD)} file(s) cannot be used" in err
    assert "utterances      " in out          # the scan report itself was printed
    section = out.split("files an experiment cannot use")[1]
    _assert_named(section, paths[kind], BAD[kind].cause)


@pytest.mark.parametrize("kind", list(BAD))
def test_scan_fail_stops_listing_every_bad_file(kind, all_bad):
    _, paths, runs = all_bad
    code, out, err = runs["scan-fail"]
    assert code == 2 and out == ""
    assert err.startswith(f"binser: error: {len(BAD)} input file(s) cannot be used")
    _assert_named(err, paths[kind], BAD[kind].cause)


# --------------------------------------------------------------------------- binser experiment


@pytest.mark.parametrize("kind", list(BAD))
def test_experiment_fails_on_one_bad_file_before_any_work(kind, clean_corpus, tmp_path):
    root = tmp_path / "corpus"
    shutil.copytree(clean_corpus, root)
    path = _plant(root, kind)
    code, out, err = _experiment(root, tmp_path / "out", tmp_path / "cache")
    assert code == 2
    assert err.startswith("binser: error: 1 input file(s) cannot be used; nothing was computed")
    _assert_named(err, path, BAD[kind].cause)
    assert not (tmp_path / "out" / "results.json").exists()
    assert not list((tmp_path / "cache").rglob("*.npy"))    # no feature was computed


@pytest.mark.parametrize("kind", list(BAD))
def test_experiment_fail_lists_every_bad_file(kind, all_bad):
    base, paths, runs = all_bad
    code, _, err = runs["experiment-fail"]
    assert code == 2
    _assert_named(err, paths[kind], BAD[kind].cause)
    assert not (base / "out-fail" / "results.json").exists()


@pytest.mark.parametrize("kind", list(BAD))
def test_experiment_skip_completes_and_lists_the_skipped(kind, all_bad):
    base, paths, runs = all_bad
    code, out, err = runs["experiment-skip"]
    assert code == 0, err
    assert "Traceback" not in err
    results = json.loads((base / "out-skip" / "results.json").read_text())
    reasons = {Path(s["path"]): s["reason"] for s in results["skipped"]}
    assert BAD[kind].cause in reasons[paths[kind]]
    assert len(reasons) == len(BAD)
    assert results["n_utterances"] == 24 and results["settings"]["on_error"] == "skip"
    for run in results["runs"]:
        assert np.asarray(run["confusion"]).sum() == 24


def test_experiment_missing_file_in_a_manifest(clean_corpus, tmp_path):
    """A manifest row naming a file that is not there: named, with its line, exit 2."""
    rows = ["path,label,speaker"]
    rows += [f"{p.relative_to(clean_corpus)},{p.parent.name},{p.stem.split('_')[0]}"
             for p in sorted(clean_corpus.rglob("*.wav"))]
    rows.append("anger/spk09_01.wav,anger,spk09")
    (clean_corpus / "list.csv").write_text("\n".join(rows) + "\n")
    try:
        code, _, err = _run_cli(["experiment", "--dataset", "csv", "--root", str(clean_corpus),
                                 "--manifest", "list.csv", "--out", str(tmp_path / "out"),
                                 "--cache-dir", str(tmp_path / "cache"), *EXPERIMENT_FAST])
    finally:
        (clean_corpus / "list.csv").unlink()
    assert code == 2
    _assert_named(err, clean_corpus / "anger" / "spk09_01.wav",
                  "list.csv line 26: file not found")
