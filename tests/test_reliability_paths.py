"""Reliability: output paths, settings up front, signals, workers,
whole output folders, predict's input checks, bounded model values.

The CLI runs as a subprocess on a tiny synthetic corpus (3 speakers x 4 emotions x 2 files,
0.7-0.8 s). Each test checks the exit code, that stderr's error is one line naming the
cause with no traceback, and that nothing was written (or the old folder is untouched).
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from binser.demo import DemoSpec, make_demo_corpus

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals, /proc")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
FAST = ["--threads", "1", "--n-boot", "20", "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_demo_corpus(tmp_path_factory.mktemp("paths") / "corpus",
                            DemoSpec(n_speakers=3, per_emotion=2, min_duration_s=0.7,
                                     max_duration_s=0.8))


def _binser(*argv: str, timeout: float = 240) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, "-m", "binser", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout, env=ENV)
    return done.returncode, done.stdout, done.stderr


def _one_line_error(stderr: str, *words: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("binser")]
    assert len(lines) == 1 and lines[0].startswith("binser: error:"), stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def _experiment(corpus: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["experiment", "--dataset", "folder", "--root", corpus, "--out", out,
            "--cache-dir", cache, "--backbone", "efficientnet_lite0", *FAST, *extra]


# ------------------------------------------------------------------ output and cache paths

PATH_CASES = {
    "out is a file": (lambda c, t: _experiment(c, t / "file.txt", t / "cache"),
                      ["--out", "is a file"]),
    "cache is a file": (lambda c, t: _experiment(c, t / "out", t / "file.txt"),
                        ["--cache-dir", "is a file"]),
    "out under a file": (lambda c, t: _experiment(c, t / "file.txt" / "out", t / "cache"),
                         ["--out", "not a folder"]),
    "out is someone's folder": (lambda c, t: _experiment(c, t / "other", t / "cache"),
                                ["--out", "holds no binser output"]),
    "train out not empty": (lambda c, t: ["train", "--dataset", "folder", "--root", c,
                                          "--out", t / "other", "--cache-dir", t / "cache",
                                          *FAST], ["--overwrite"]),
    "inspect -o txt": (lambda c, t: ["inspect", next(c.rglob("*.wav")), "-o", t / "x.txt"],
                       ["-o", "unsupported file type"]),
    "inspect -o under a wav": (lambda c, t: ["inspect", next(c.rglob("*.wav")), "-o",
                                             next(c.rglob("*.wav")) / "x.png"],
                               ["-o", "not a folder"]),
    "inspect -o /proc": (lambda c, t: ["inspect", next(c.rglob("*.wav")), "-o",
                                       "/proc/x.png"], ["/proc"]),
    "demo out is a file": (lambda c, t: ["demo", "--out", t / "file.txt", *FAST],
                           ["--out", "is a file"]),
}


@pytest.mark.parametrize("case", sorted(PATH_CASES))
def test_bad_output_paths_fail_at_once_naming_the_option(case, corpus, tmp_path):
    (tmp_path / "file.txt").write_text("keep me")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv, words = PATH_CASES[case]
    start = time.perf_counter()
    code, _, stderr = _binser(*argv(corpus, tmp_path))
    assert code == 2, stderr
    _one_line_error(stderr, *words)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "file.txt").read_text() == "keep me"
    assert time.perf_counter() - start < 60


# ------------------------------------------------------------------ settings up front

SETTING_CASES = {
    "protocol": (["--protocol", "banana"], ["protocol"]),
    "weights not weights": (["--weights", "{wav}"], ["--weights"]),
    "input size": (["--input-size", "5000"], ["--input-size"]),
    "one class": (["--root", "{one_class}"], ["2"]),
}


@pytest.mark.parametrize("case", sorted(SETTING_CASES))
def test_settings_are_checked_before_any_decoding(case, corpus, tmp_path):
    one_class = tmp_path / "one"
    (one_class / "anger").mkdir(parents=True)
    for wav in sorted((corpus / "anger").glob("*.wav"))[:4]:
        (one_class / "anger" / wav.name).symlink_to(wav)
    extra, words = SETTING_CASES[case]
    extra = [e.format(wav=next(corpus.rglob("*.wav")), one_class=one_class) for e in extra]
    code, _, stderr = _binser(*_experiment(corpus, tmp_path / "out", tmp_path / "cache"),
                              *extra)
    assert code == 2, stderr
    _one_line_error(stderr, *words)
    assert "preflight" not in stderr
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "cache").rglob("*.npy")) if (tmp_path / "cache").exists() \
        else True


@pytest.mark.parametrize("argv", [["--n-boot", "0"], ["--threads", "0"], ["--levels", "0"],
                                  ["--batch-size", "-1"]])
def test_cli_numbers_are_refused_by_argparse(argv, corpus, tmp_path):
    code, _, stderr = _binser(*_experiment(corpus, tmp_path / "out", tmp_path / "cache"),
                              *argv)
    assert code == 2 and argv[0] in stderr.splitlines()[-1] and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_train_refuses_options_it_would_ignore(corpus, tmp_path):
    base = ["train", "--dataset", "folder", "--root", corpus, "--out", tmp_path / "m",
            "--cache-dir", tmp_path / "cache", *FAST]
    code, _, stderr = _binser(*base, "--fusion", "mid+side", "--views", "left")
    assert code == 2
    _one_line_error(stderr, "--views", "mid")
    code, _, stderr = _binser(*base, "--no-report")
    assert code == 2
    _one_line_error(stderr, "--no-report")
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------ pipes and OS errors

def test_closed_stdout_is_a_quiet_exit():
    process = subprocess.Popen([sys.executable, "-m", "binser", "datasets"], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()   # the reader is gone before the first line (like `| head -0`)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 141
    assert b"Traceback" not in stderr and b"Broken" not in stderr, stderr


def test_os_error_is_one_line(monkeypatch, capsys):
    from binser import cli

    def fail(args):
        raise PermissionError(13, "Permission denied", "/somewhere/results.json")

    monkeypatch.setattr(cli, "cmd_datasets", fail)
    assert cli.main(["datasets"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "binser: error: /somewhere/results.json: Permission denied"


# ------------------------------------------------------------------ whole output folders

def test_rerun_replaces_the_folder_whole_and_a_lock_stops_a_second_writer(corpus, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    code, _, stderr = _binser(*_experiment(corpus, out, cache, "--views", "left,right"))
    assert code == 0, stderr
    (out / "stale.png").write_text("from an older run")
    code, _, stderr = _binser(*_experiment(corpus, out, cache, "--views", "left",
                                           "--poolings", "block-max", "--no-report"))
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "results.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".partial", ".old"))]
    # A run holding the folder's lock: a second run stops at once, the folder untouched.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with open(tmp_path / ".out.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        code, _, stderr = _binser(*_experiment(corpus, out, cache, "--views", "left"))
    assert code == 2
    _one_line_error(stderr, "another binser run")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


# ------------------------------------------------------------------ signals and workers

def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _session(pid: int) -> set[int]:
    """Live (not zombie) processes of the session led by ``pid``, other than ``pid``: every
    descendant, also after it was re-parented (loky does not call setsid)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != pid:
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[4]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def _start_and_wait_for_workers(argv: list, settle_s: float = 1.0, count: int = 2
                                ) -> tuple[subprocess.Popen, set[int]]:
    process = subprocess.Popen([sys.executable, "-m", "binser", *map(str, argv)], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        children = _children(process.pid)
        if len(children) >= count:   # loky workers (and their resource tracker)
            time.sleep(settle_s)
            return process, _children(process.pid) | children
        time.sleep(0.02)
    process.kill()
    pytest.fail("the classifier stage never started worker processes")


def _loky_workers(pid: int) -> set[int]:
    """The loky worker processes among ``pid``'s descendants (the resource tracker excluded)."""
    workers = set()
    for child in _children(pid):
        try:
            if b"popen_loky_posix" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.add(child)
        except OSError:
            pass
    return workers


def _reap(process: subprocess.Popen) -> None:
    """Wait for the killed command (a survivor holding its stdout keeps the pipe open, so
    do not wait for end-of-file)."""
    process.wait(timeout=120)
    for stream in (process.stdout, process.stderr):
        stream.close()


def _no_process_left(process: subprocess.Popen, seen: set[int], timeout: float = 60) -> None:
    """Within ``timeout`` s (generous: a loaded 2-core machine), nothing of the command's
    session is alive: no worker seen before the kill, none started while it happened."""
    deadline = time.time() + timeout
    while time.time() < deadline and (_session(process.pid)
                                      or any(_alive(pid) for pid in seen)):
        time.sleep(0.2)
    left = _session(process.pid) | {pid for pid in seen if _alive(pid)}
    for pid in left:   # do not leave them behind for the next test
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"processes survived the command: {sorted(left)}"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_no_worker_survives_the_command(how, corpus, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    (out / "results.json").write_text("{}")     # an older run's output
    (out / "report.html").write_text("old")
    before = {p.name: p.read_text() for p in out.iterdir()}
    process, children = _start_and_wait_for_workers(_experiment(corpus, out, cache))
    process.send_signal(getattr(signal, how))
    _, stderr = process.communicate(timeout=120)
    if how == "SIGTERM":
        assert process.returncode == 143, stderr
        assert "Traceback" not in stderr and "terminated" in stderr.splitlines()[-1]
    _no_process_left(process, children)
    assert {p.name: p.read_text() for p in out.iterdir()} == before   # untouched
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_sigkill_as_the_first_worker_appears_leaves_no_process(corpus, tmp_path):
    """SIGKILL the moment the first worker process exists (it has not run a task, and
    maybe not finished starting): the workers watch their parent from their initializer,
    so none of them (nor loky's resource tracker) outlives the command."""
    process, children = _start_and_wait_for_workers(
        _experiment(corpus, tmp_path / "out", tmp_path / "cache"), settle_s=0.0, count=1)
    process.kill()
    _reap(process)
    _no_process_left(process, children)


IDLE_WORKER = """
import time
from binser.executors import LocalExecutor
print("go", flush=True)
list(LocalExecutor().map_folds(time.sleep, [(120,)], 2))   # one task, two workers
"""


def test_a_worker_that_never_ran_a_task_dies_with_its_parent(tmp_path):
    """Two fold workers, one task: the idle worker has run nothing when the parent is
    SIGKILLed, yet it exits (watched from its initializer), and so does the resource
    tracker; before, it idled on for loky's 300 s timeout."""
    process = subprocess.Popen([sys.executable, "-c", IDLE_WORKER], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    # both loky workers exist (not just one worker and the resource tracker, also a child)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_loky_workers(process.pid)) < 2:
        time.sleep(0.05)
    seen = _children(process.pid)
    assert len(seen) >= 2, process.communicate(timeout=30)
    process.kill()
    _reap(process)
    _no_process_left(process, seen)


# ------------------------------------------------------------------ predict and models

def test_predict_applies_the_input_checks(corpus, tmp_path):
    model = tmp_path / "model"
    code, _, stderr = _binser("train", "--dataset", "folder", "--root", corpus, "--out", model,
                              "--cache-dir", tmp_path / "cache", "--fusion", "none",
                              "--views", "left", "--poolings", "block-max", *FAST)
    assert code == 0, stderr
    zero, one, cut = tmp_path / "zero.wav", tmp_path / "one.wav", tmp_path / "cut.wav"
    sf.write(zero, np.zeros((16000, 2), np.float32), 16000)
    sf.write(one, np.full((1, 2), 0.3, np.float32), 16000)
    data = next(corpus.rglob("*.wav")).read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    good = next(corpus.rglob("*.wav"))
    code, stdout, stderr = _binser("predict", model, zero, one, cut, good, "--quiet")
    assert code == 1 and "Traceback" not in stderr
    lines = stdout.splitlines()
    for bad in (zero, one, cut):
        assert any(str(bad) in line and "error" in line.lower() for line in lines), stdout
    assert not any(str(good) in line and "error" in line.lower() for line in lines), stdout


@pytest.mark.parametrize("field,value", [("segment_frames", 10 ** 7), ("n_mels", 200000),
                                         ("side_scale", 1e9), ("segment_hop", 10 ** 6)])
def test_model_front_end_values_are_bounded(field, value):
    from dataclasses import replace

    from binser.config import FrontEndConfig
    from binser.model import _check_frontend

    _check_frontend(FrontEndConfig())
    with pytest.raises(ValueError, match=field):
        _check_frontend(replace(FrontEndConfig(), **{field: value}))


@pytest.mark.parametrize("argv,words", [(["scan", "folder", "{wav}"], ["a file, not a corpus"]),
                                        (["predict", "{wav}", "{wav}"], ["a file, not a model"])])
def test_a_file_where_a_folder_is_wanted_is_named_so(argv, words, corpus):
    wav = next(corpus.rglob("*.wav"))
    code, _, stderr = _binser(*[a.format(wav=wav) for a in argv])
    assert code == 2
    _one_line_error(stderr, *words)
