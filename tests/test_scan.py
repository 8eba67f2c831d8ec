"""scan_corpus on a synthetic corpus (mono, identical channels, corrupt file) and on EMOVO."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from binser.corpora import corpus
from binser.errors import AudioError, ConfigError
from binser.scan import (NAMING_CAUSE, ScanReport, causes_by_kind, format_scan, scan_corpus,
                         scan_file, unusable_summary)

SR = 16000


def noise(frames: int, channels: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (frames, channels))


def write(path: Path, data: np.ndarray, sr: int = SR, subtype: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype=subtype)
    return path


def write_mkv(path: Path, left: np.ndarray, right: np.ndarray, sr: int = SR) -> Path:
    """A Matroska file with one 16-bit stereo PCM audio stream (decoded through PyAV)."""
    import av

    packed = np.stack([left, right], axis=1).reshape(1, -1).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=sr, layout="stereo")
        frame = av.AudioFrame.from_ndarray(packed, format="s16", layout="stereo")
        frame.sample_rate = sr
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


@pytest.fixture()
def synthetic(tmp_path) -> Path:
    """A folder corpus: stereo, mono, identical (int and float), long stereo, video, corrupt."""
    root = tmp_path / "corpus"
    stereo = noise(1600, 2, 0)
    write(root / "anger/a_1.wav", stereo)                                 # 0.1 s stereo
    write(root / "anger/b_1.flac", noise(3200, 1, 1))                     # 0.2 s mono
    same = noise(2400, 1, 2)
    write(root / "joy/a_2.wav", np.hstack([same, same]))                 # 0.15 s identical
    write(root / "joy/b_2.wav", np.hstack([same, same]), subtype="FLOAT")  # identical float
    # 20 s at 16 kHz spans two comparison blocks: channels differ in the very last sample
    long = noise(320_000, 1, 3)
    late = np.hstack([long, long])
    late[-1, 1] = -late[-1, 1]
    write(root / "sadness/a_3.wav", late)
    ints = (noise(1600, 1, 4)[:, 0] * 20000).astype(np.int16)
    write_mkv(root / "sadness/b_3.mkv", ints, ints)                      # identical, video path
    bad = root / "sadness/c_3.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00not really a wave file")
    return root


def test_scan_flags_mono_identical_and_unreadable(synthetic):
    report = scan_corpus(corpus("folder", synthetic), progress=False)
    rel = lambda paths: sorted(p.relative_to(synthetic).as_posix() for p in paths)  # noqa: E731
    assert isinstance(report, ScanReport) and report.n_utterances == 7
    assert rel(report.mono) == ["anger/b_1.flac"]
    assert rel(report.identical_channels) == ["joy/a_2.wav", "joy/b_2.wav", "sadness/b_3.mkv"]
    assert rel([p for p, _ in report.unreadable]) == ["sadness/c_3.wav"]
    assert report.unreadable[0][1]  # a reason is given
    assert report.n_readable == 6
    expected = (1600 + 3200 + 2400 + 2400 + 320_000 + 1600) / SR
    assert report.total_duration_s == pytest.approx(expected, abs=1e-3)
    assert report.max_duration_s == pytest.approx(20.0, abs=1e-3)
    assert report.min_duration_s == pytest.approx(0.1, abs=1e-3)
    assert report.label_counts == {"anger": 2, "joy": 2, "sadness": 3}
    assert report.speaker_counts == {"a": 3, "b": 3, "c": 1}
    assert report.channel_counts == {1: 1, 2: 5}
    assert report.sample_rates == {SR: 6}


def test_scan_one_worker_matches_two(synthetic):
    c = corpus("folder", synthetic)
    one = scan_corpus(c, progress=False, workers=1)
    two = scan_corpus(c, progress=False, workers=2)
    for attr in ("mono", "identical_channels", "unreadable", "total_duration_s", "codecs"):
        assert getattr(one, attr) == getattr(two, attr)


def test_scan_fail_mode_raises_naming_the_file(synthetic):
    with pytest.raises(AudioError) as info:
        scan_corpus(corpus("folder", synthetic), progress=False, on_error="fail")
    assert info.value.path.name == "c_3.wav"
    with pytest.raises(ConfigError):
        scan_corpus(corpus("folder", synthetic), progress=False, on_error="ignore")


def test_scan_file_identical_agrees_with_decoded_comparison(synthetic):
    for path in sorted(synthetic.rglob("*.wav")) + sorted(synthetic.rglob("*.flac")):
        if path.name == "c_3.wav":
            continue
        data, _ = sf.read(path, always_2d=True, dtype="float64")
        expected = data.shape[1] == 2 and bool(np.array_equal(data[:, 0], data[:, 1]))
        assert scan_file(path).identical == expected, path


def test_problems_are_carried_and_formatted(synthetic):
    write(synthetic / "x_9.wav", noise(160, 2, 5))   # not inside a label folder
    report = scan_corpus(corpus("folder", synthetic), progress=False)
    assert [p.name for p, _ in report.problems] == ["x_9.wav"]
    text = format_scan(report)
    assert "anger/b_1.flac" in text and "joy/a_2.wav" in text and "sadness/b_3.mkv" in text
    assert "sadness/c_3.wav" in text and "  x_9.wav: " in text
    assert "mono files (Side view all zeros, L = R): 1" in text
    assert "bit-identical channels (Side view all zeros): 3" in text
    assert "unreadable files: 1" in text
    assert "files breaking the naming rule: 1" in text
    lines = text.splitlines()
    assert any(line.split()[:2] == ["sadness", "3"] for line in lines)


def test_emovo_scan(emovo_root):
    start = time.perf_counter()
    report = scan_corpus(corpus("emovo", emovo_root), progress=False)
    elapsed = time.perf_counter() - start
    assert report.n_utterances == 588 and not report.unreadable and not report.problems
    assert len(report.label_counts) == 7 and len(report.speaker_counts) == 6
    assert [p.relative_to(emovo_root).as_posix() for p in report.mono] == ["f1/rab-f1-b1.flac"]
    identical = [p.relative_to(emovo_root).as_posix() for p in report.identical_channels]
    assert len(identical) == 13 and all(p.startswith("f1/neu-f1-") for p in identical)
    assert report.total_duration_s / 60 == pytest.approx(30.6, abs=0.05)
    reference = sum(sf.info(str(p)).duration for p in emovo_root.rglob("*.flac"))
    assert report.total_duration_s == pytest.approx(reference, rel=1e-9)
    print(f"EMOVO scan: {elapsed:.2f} s")


# --------------------------------------------------------------------------- exit status


def test_cause_kinds_and_summary():
    naming = [(Path("x.wav"), "file is not inside a label folder (<root>/<label>/<file>)")]
    files = [(Path("a.wav"), "silent: every sample is zero"),
             (Path("b.wav"), "silent: peak level -100.0 dBFS is below -90 dBFS"),
             (Path("c.wav"), "empty file (0 bytes)"),
             (Path("d.wav"), "too short: 10 samples (0.6 ms) at 16000 Hz ...")]
    counts = causes_by_kind(naming, files)
    assert counts == {"silent": 2, NAMING_CAUSE: 1, "empty file": 1, "too short": 1}
    assert list(counts)[0] == "silent"          # most frequent first
    assert unusable_summary(counts, 9) == (f"5 of 9 file(s) cannot be used: 2 silent, 1 "
                                           f"{NAMING_CAUSE}, 1 empty file, 1 too short")
    assert unusable_summary({}, 9) is None
    rows = [(Path("a.wav"), "m.csv line 3: file not found (a.wav)"),
            (Path("b.wav"), "m.csv line 4: empty label"),
            (Path("c.wav"), "m.csv line 9: file not found (c.wav)")]
    assert causes_by_kind(rows, []) == {"manifest row: file not found": 2,
                                        "manifest row: empty label": 1}


def _scan_cli(root: Path, *extra: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from binser.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["scan", "folder", str(root), "--quiet", *extra])
    return code, out.getvalue(), err.getvalue()


def test_scan_exit_status_by_cause(tmp_path):
    root = tmp_path / "corpus"
    for i in range(3):
        write(root / f"anger/s{i}_1.wav", noise(1600, 2, i))
    code, out, err = _scan_cli(root)
    assert code == 0 and "cannot be used" not in err
    write(root / "anger/s9_2.wav", np.zeros((1600, 2)))          # silent
    write(root / "joy/s9_3.wav", noise(100, 2, 7))                # shorter than one frame
    write(root / "loose.wav", noise(1600, 2, 8))                  # no label folder
    code, out, err = _scan_cli(root)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"binser: 3 of 6 file(s) cannot be used: 1 {NAMING_CAUSE}, 1 silent, 1 too short")
    assert "files an experiment cannot use (left out with --on-error skip): 3" in out
    code, out, err = _scan_cli(root, "--on-error", "fail")
    assert code == 2 and "3 input file(s) cannot be used" in err and out == ""


def test_scan_csv_with_its_own_label_counts_bad_rows_by_cause(tmp_path):
    import contextlib
    import io

    from binser.cli import main

    root = tmp_path / "corpus"
    for i in range(3):
        write(root / f"s{i}.wav", noise(1600, 2, i))
    (root / "m.csv").write_text("path,label,speaker\ns0.wav,frustrated,a\ns1.wav,calm,b\n"
                                "s2.wav,,c\ngone.wav,calm,c\n")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["scan", "csv", str(root), "--quiet"])
    assert code == 1
    assert "frustrated" in out.getvalue() and "calm" in out.getvalue()
    assert err.getvalue().strip().splitlines()[-1] == (
        "binser: 2 of 4 file(s) cannot be used: 1 manifest row: empty label, 1 manifest "
        "row: file not found")
