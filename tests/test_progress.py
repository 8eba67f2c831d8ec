"""binser.progress: the overall line, stage bars, grouped warnings (hand-computed cases)."""
from __future__ import annotations

import io
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from binser.progress import (StageTracker, bar, clock, group_text, grouped_warnings,
                             overall_text, say, split_file, time_left)


def test_clock_and_time_left_by_hand():
    assert clock(75.2) == "1:15"
    assert clock(3 * 3600 + 61) == "3:01:01"
    assert clock(None) == "?"
    assert time_left(30.0, 0.25) == pytest.approx(90.0)   # 30 s for a quarter -> 90 s more
    assert time_left(5.0, 0.0) is None
    assert overall_text(2, 5, "features", 41, 80) == \
        "stage 2 of 5: features | elapsed 0:41 | left ~1:20"


def test_tracker_weights_and_bar_fraction_move_the_overall_line():
    out = io.StringIO()
    with StageTracker(["check files", "features"], weights=[1, 3], file=out) as stages:
        with stages.stage("check files"):
            assert stages.done == 0.0
        assert stages.done == pytest.approx(0.25)
        with stages.stage("features"):
            b = bar(total=10, desc="layer 4", unit="file", mininterval=0)
            assert b.desc.startswith("features: layer 4")   # named after the stage
            b.update(5)
            assert stages.done == pytest.approx(0.25 + 0.75 * 0.5)
            b.close()
        assert stages.done == pytest.approx(1.0)
    text = out.getvalue()
    assert "stage 1 of 2: check files" in text and "stage 2 of 2: features" in text
    assert re.search(r"elapsed \d+:\d\d \| left ~", text)


def test_tracker_rejects_bad_stages():
    with pytest.raises(ValueError, match="distinct"):
        StageTracker(["a", "a"])
    with pytest.raises(ValueError, match="positive weight"):
        StageTracker(["a", "b"], weights=[1, 0])
    with StageTracker(["a", "b"], enabled=False) as stages:
        with stages.stage("b"):
            pass
        with pytest.raises(ValueError, match="comes before"):
            with stages.stage("a"):
                pass
        with pytest.raises(ValueError, match="unknown stage"):
            with stages.stage("c"):
                pass


def test_bar_without_tracker_keeps_its_name():
    b = bar(total=3, desc="features", file=io.StringIO())
    assert b.desc == "features" and b.pos == 0
    b.close()


def test_say_never_shares_a_line_with_a_bar():
    out = io.StringIO()
    with StageTracker(["features"], file=out) as stages, stages.stage("features"):
        b = bar(total=4, desc="files", file=out, mininterval=0)
        b.update(1)
        say("binser: warning: something", file=out)
        b.update(1)
        b.close()
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out.getvalue())   # cursor moves
    lines = re.split(r"[\r\n]", plain)
    assert "binser: warning: something" in lines     # a whole line of its own


def test_split_file():
    assert split_file("/d/a.wav: mono input") == ("/d/a.wav", "mono input")
    assert split_file("a.flac: too short") == ("a.flac", "too short")
    assert split_file("no speakers given: all one") == (None, "no speakers given: all one")
    assert split_file("plain") == (None, "plain")


def test_group_text_by_hand():
    files = [f"/x/{c}.wav" for c in "abcd"]
    assert group_text("mono input", files, "results.json 'mono_files'") == \
        "mono input (4 files: a.wav, b.wav, c.wav, ...; all listed in results.json 'mono_files')"


def test_grouped_warnings_one_line_per_kind():
    class DemoWarning(UserWarning):
        pass

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with grouped_warnings({DemoWarning: "results.json"}):
            for i in range(5):
                warnings.warn(f"/c/f{i}.wav: mono input", DemoWarning)
            warnings.warn("/c/f0.wav: mono input", DemoWarning)      # same file again
            warnings.warn("/c/g.wav: clipped", DemoWarning)
            warnings.warn("something else", UserWarning)
            warnings.warn("something else", UserWarning)
    texts = [str(w.message) for w in shown]
    assert texts == ["mono input (5 files: f0.wav, f1.wav, f2.wav, ...; all listed in "
                     "results.json)", "/c/g.wav: clipped", "something else"]


def test_grouped_warnings_keep_outer_filters():
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("ignore")
        with grouped_warnings():
            warnings.warn("/c/a.wav: x")
            warnings.warn("/c/b.wav: x")
    assert shown == []


def test_one_grouped_mono_warning_for_a_mono_corpus(tmp_path):
    """A corpus of mono files through the real per-file code path: one warning, a count."""
    sf = pytest.importorskip("soundfile")
    from binser.features import file_views
    from binser.views import MonoInputWarning

    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        path = tmp_path / f"spk{i}.wav"
        sf.write(path, 0.1 * rng.standard_normal(8000).astype(np.float32), 16000)
        paths.append(path)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with grouped_warnings({MonoInputWarning: "results.json 'mono_files'"}) as caught:
            for path in paths:
                file_views(path)
    assert len(caught) >= 6                              # one per file before grouping
    mono = [str(w.message) for w in shown if w.category is MonoInputWarning]
    assert len(mono) == 1
    assert mono[0].startswith("mono input (1 channel)")
    assert "(6 files: spk0.wav, spk1.wav, spk2.wav, ...; all listed in results.json" in mono[0]


def test_module_does_not_import_torch_or_numpy():
    code = ("import sys, binser.progress; "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_overall_line_ticks_without_a_bar(monkeypatch):
    import binser.progress as progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(progress, "TICK_S", 0.05)
    out = Terminal()
    import time

    with StageTracker(["long step"], file=out) as stages, stages.stage("long step"):
        deadline = time.monotonic() + 30      # a loaded machine may tick late, not never
        while out.getvalue().count("stage 1 of 1: long step") < 4 and \
                time.monotonic() < deadline:
            time.sleep(0.02)
    assert out.getvalue().count("stage 1 of 1: long step") >= 4   # redrawn while it waits
    log = io.StringIO()                                            # a file: one plain line
    with StageTracker(["long step"], file=log) as stages, stages.stage("long step"):
        time.sleep(0.2)
    assert log.getvalue().startswith("stage 1 of 1: long step | elapsed 0:00 | left ~?")
    assert log.getvalue().count("\n") == 1 and "\x1b" not in log.getvalue()


def test_above_bars_wraps_a_printer(capsys):
    from binser.progress import above_bars

    lines = []
    write = above_bars(lines.append)
    b = bar(total=2, desc="x", mininterval=0)
    b.update(1)
    write("report line")
    b.close()
    assert lines == ["report line"]


def test_bench_parts_are_stages_with_named_bars(tmp_path, capsys):
    """bench: one stage per part on the overall line, the part's bars named after it, and
    the result lines on lines of their own."""
    sf = pytest.importorskip("soundfile")
    from binser.benchmark import BENCH_ORDER, PARTS, BenchOptions, run_bench

    assert sorted(BENCH_ORDER) == sorted(PARTS)
    rng = np.random.default_rng(1)
    for actor, name in (("f1", "rab-f1-b1.flac"), ("m1", "gio-m1-b2.flac")):
        (tmp_path / actor).mkdir()
        sf.write(tmp_path / actor / name, 0.1 * rng.standard_normal((16000, 2)), 16000)
    lines = []
    run_bench(BenchOptions(root=tmp_path, quick=True, parts=("serve", "frontend")),
              report=lines.append)
    err = capsys.readouterr().err
    assert "stage 1 of 2: frontend" in err and "stage 2 of 2: serve" in err
    assert "frontend: binser:" in err and "frontend: librosa reference:" in err
    assert any(line.startswith("front end: binser") for line in lines)
    assert any(line.startswith("serve: not measured") for line in lines)


def test_the_command_shows_warnings_on_lines_of_their_own():
    from binser.cli import _show_warning
    from binser.views import MonoInputWarning

    out = io.StringIO()
    b = bar(total=4, desc="features", file=out, mininterval=0)
    b.update(1)
    _show_warning("a.wav: mono input", MonoInputWarning, "x.py", 1, file=out)
    _show_warning("old api", DeprecationWarning, "lib.py", 7, file=out)
    b.close()
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out.getvalue())
    lines = re.split(r"[\r\n]", plain)
    assert "binser: warning: a.wav: mono input" in lines
    assert "lib.py:7: DeprecationWarning: old api" in lines


def test_feature_bars_are_named_after_their_stage():
    from binser.features import progress_bar

    out = io.StringIO()
    with StageTracker(["prepare", "features"], file=out) as stages:
        with stages.stage("features"):
            b = progress_bar(4, True, unit="file", desc="encoding")
            assert b.desc.startswith("features: encoding")
            b.close()
    plain = progress_bar(4, True, desc="features")
    assert plain.desc.startswith("features") and plain.leave is False
    plain.close()
