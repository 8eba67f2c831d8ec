"""Folders and globs in `predict` and `stream`; the server's per-file audio warnings."""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from binser.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LOCAL = "http://127.0.0.1"


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def two_files(trained, tmp_path_factory) -> Path:
    """A folder holding links to two files of the tiny model's corpus (one in a subfolder)."""
    folder = tmp_path_factory.mktemp("inputs") / "calls"
    (folder / "sub").mkdir(parents=True)
    first, second = sorted(Path(trained[2]).glob("*/*.wav"))[:2]
    (folder / "b.wav").symlink_to(first)
    (folder / "sub" / "a.wav").symlink_to(second)
    (folder / "notes.txt").write_text("not audio")
    return folder


def test_predict_folder_and_glob_expand(trained, two_files):
    code, out, err = _cli("predict", str(trained[1]), str(two_files), "--json", "--quiet")
    assert code == 0, err
    by_folder = json.loads(out)
    assert [Path(p["path"]).relative_to(two_files).as_posix() for p in by_folder] == [
        "b.wav", "sub/a.wav"]
    code, out, err = _cli("predict", str(trained[1]), str(two_files / "*.wav"),
                          str(two_files / "b.wav"), "--json", "--quiet")
    assert code == 0, err
    by_glob = json.loads(out)
    assert [p["path"] for p in by_glob] == [str(two_files / "b.wav")]   # listed once
    labels = sorted(by_folder[0]["scores"])    # the same file, batched with another or alone
    assert np.allclose([by_glob[0]["scores"][k] for k in labels],
                       [by_folder[0]["scores"][k] for k in labels], atol=1e-9)


def test_predict_empty_folder_fails_before_loading(tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = _cli("predict", str(tmp_path / "no-model"), str(tmp_path / "empty"))
    assert code == 2 and "a folder without audio or video files" in err and out == ""


def test_stream_folder_names_each_file(trained, two_files):
    code, out, err = _cli("stream", str(trained[1]), str(two_files), "--fast", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    ends = [line for line in lines if line["type"] == "end"]
    assert [Path(e["path"]).name for e in ends] == ["b.wav", "a.wav"]
    assert all("path" in line for line in lines)
    # each file's windows come before its own end line
    assert lines[-1] is ends[-1] and lines.index(ends[0]) > 0


def _mono(path: Path, sr: int = 16000, seconds: float = 1.0) -> Path:
    rng = np.random.default_rng(0)
    sf.write(path, rng.uniform(-0.3, 0.3, int(sr * seconds)), sr)
    return path


def test_server_answers_carry_the_audio_warnings(model, wav, tmp_path, caplog):
    from fastapi.testclient import TestClient

    from binser.serve.app import ServeSettings, create_app

    mono = _mono(tmp_path / "mono.wav")
    phone = _mono(tmp_path / "phone.wav", sr=8000)
    with TestClient(create_app(model, ServeSettings()), base_url=LOCAL) as client, \
            caplog.at_level(logging.WARNING):
        def post(path: Path, query: str = "") -> dict:
            r = client.post(f"/predict{query}",
                            files={"file": (path.name, path.read_bytes(), "audio/wav")})
            assert r.status_code == 200, r.text
            return r.json()

        assert post(wav)["warnings"] == []
        assert post(mono)["warnings"] == ["mono input (1 channel): L = R, the Side view is "
                                          "all zeros"]
        assert [w.split(":")[0] for w in post(phone)["warnings"]] == [
            "mono input (1 channel)", "band-limited"]
        loud = tmp_path / "loud.wav"
        sf.write(loud, np.clip(3 * sf.read(wav)[0], -1, 1), 16000)
        (line,) = post(loud, "?per_channel=true")["warnings"]
        assert line.startswith("clipped: ")
    assert "binser-upload-" not in caplog.text     # no warning under a temporary name
