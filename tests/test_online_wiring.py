"""Online speaker normalisation where a speaker-normalised model predicts: ``predict
--online`` (each speaker's files in order, each standardised with that speaker's files so
far), the stream engine (running statistics of a stream's windows, per channel in
per-channel mode) and the server's WebSocket stream. References: the offline path
(``Model.predict`` with all of a prefix's files, ``speaker_normalise``) and today's
average-training-speaker fallback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from binser.cli import main
from binser.model import Model
from conftest import save_tiny_whisper

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def norm(tmp_path_factory):
    """A speaker-normalised left+right model on the tiny random Whisper encoder (layer 1),
    trained through the CLI on a 3-speaker synthetic corpus: (model, corpus files)."""
    from binser.demo import DemoSpec, make_demo_corpus

    base = tmp_path_factory.mktemp("online")
    root = make_demo_corpus(base / "corpus",
                            DemoSpec(n_speakers=3, per_emotion=2, max_duration_s=1.2))
    hf = save_tiny_whisper(base / "hf")
    code = main(["train", "--dataset", "folder", "--root", str(root), "--out",
                 str(base / "model"), "--backbone", "whisper-tiny", "--weights", str(hf),
                 "--layer", "1", "--speaker-norm", "--fusion", "left+right", "--cache-dir",
                 str(base / "cache"), "--quiet"])
    assert code == 0
    return Model.load(base / "model"), sorted(Path(root).glob("*/*.wav"))


@pytest.fixture(scope="module")
def files(norm, tmp_path_factory):
    """Six files of one speaker under neutral names (nothing tells their labels)."""
    folder = tmp_path_factory.mktemp("neutral")
    speaker = [f for f in norm[1] if f.name.startswith("spk02_")][:6]
    out = []
    for k, f in enumerate(speaker):
        out.append(folder / f"f{k}.wav")
        shutil.copy(f, out[-1])
    return out


def scores(predictions, labels) -> np.ndarray:
    return np.array([[p.scores[c] for c in labels] for p in predictions])


# ------------------------------------------------------------------------------ the estimator

def test_update_statistics_is_update_transform_row_by_row():
    from binser.normalisation import OnlineSpeakerNormaliser, speaker_normalise

    rng = np.random.default_rng(0)
    X = rng.normal(2.0, 3.0, size=(7, 4))
    a = OnlineSpeakerNormaliser(warm_up=3)._start(np.ones(4), 2 * np.ones(4))
    b = OnlineSpeakerNormaliser(warm_up=3)._start(np.ones(4), 2 * np.ones(4))
    want = a.update_transform(X, "k")
    for j in range(len(X)):
        mean, sd, n = b.update_statistics(X[j], "k")
        assert n == j + 1
        assert np.array_equal((X[j] - mean) / sd, want[j])
    # after all rows: the offline standardisation of the last row, by hand
    assert np.allclose(want[-1], speaker_normalise(X, ["s"] * 7)[-1], atol=1e-12)
    # a row without signal adds nothing and returns what the next row would meet first
    mean, sd, n = b.update_statistics(X[0], "k", signal=False)
    assert n == 7 and b.count("k") == 7
    assert np.allclose(mean, X.mean(axis=0)) and np.allclose(sd, X.std(axis=0))


# ------------------------------------------------------------------------------ predict --online

def test_predict_online_uses_earlier_files_only(norm, files):
    model, _ = norm
    labels = model.labels
    online = model.predict(files, speakers=["s"] * 6, online=True, warm_up=3, progress=False)
    # planted future files (another order of later files, and a file appended) leave the
    # past untouched, exactly
    later = model.predict(files[:4] + [files[5], files[4], files[0]], speakers=["s"] * 7,
                          online=True, warm_up=3, progress=False)
    assert np.array_equal(scores(online[:4], labels), scores(later[:4], labels))
    # before the warm-up: today's fallback (each file alone through predict)
    for j in range(2):
        (alone,) = model.predict(files[j:j + 1], progress=False)
        assert alone.speaker_norm.startswith("fallback")
        assert online[j].scores == pytest.approx(alone.scores, abs=1e-12)
    # from the warm-up on: file j as the offline predict of the files 0..j standardises it
    # (offline needs the model's 5 files for own statistics)
    for j in range(4, 6):
        prefix = model.predict(files[:j + 1], speakers=["s"] * (j + 1), progress=False)
        assert np.abs(scores(online[j:j + 1], labels) - scores(prefix[-1:], labels)).max() \
            < 1e-9
    # the last file: the offline normaliser over all six files
    offline = model.predict(files, speakers=["s"] * 6, progress=False)
    assert np.abs(scores(online[-1:], labels) - scores(offline[-1:], labels)).max() < 1e-9
    assert np.abs(scores(online[:1], labels) - scores(offline[:1], labels)).max() > 1e-6
    assert [p.speaker_norm for p in online] == [
        "fallback: average training speaker (online warm-up: 1 file of 3 so far)",
        "fallback: average training speaker (online warm-up: 2 files of 3 so far)",
        "own statistics over 3 files (online: this file and the 2 before it)",
        "own statistics over 4 files (online: this file and the 3 before it)",
        "own statistics over 5 files (online: this file and the 4 before it)",
        "own statistics over 6 files (online: this file and the 5 before it)"]


def test_predict_online_keeps_speakers_apart_and_timeline_uses_the_files_statistics(
        norm, files, tmp_path):
    model, corpus = norm
    other = [f for f in corpus if f.name.startswith("spk01_")][:3]
    mixed = [files[0], other[0], files[1], other[1], files[2], other[2], files[3]]
    who = ["s", "o", "s", "o", "s", "o", "s"]
    out = model.predict(mixed, speakers=who, online=True, warm_up=2, progress=False)
    alone = model.predict(files[:4], speakers=["s"] * 4, online=True, warm_up=2,
                          progress=False)
    assert [out[k].scores for k in (0, 2, 4, 6)] == [p.scores for p in alone]
    # a file of a single timeline window: the window is standardised as its file was
    data, sr = sf.read(files[4], dtype="int16")
    short = tmp_path / "short.wav"
    sf.write(short, data[:int(0.6 * sr)], sr, subtype="PCM_16")
    run = model.predict(files[:3] + [short], speakers=["s"] * 4, online=True, warm_up=2,
                        timeline=True, progress=False)
    assert len(run[3].timeline) == 1
    assert run[3].timeline[0]["scores"] == pytest.approx(run[3].scores, abs=1e-12)
    assert run[3].speaker_norm.startswith("own statistics over 4 files")


def test_predict_online_refusals(norm, files):
    from binser.errors import ConfigError

    model, _ = norm
    with pytest.raises(ConfigError, match="warm_up must be an integer >= 1"):
        model.predict(files[:1], online=True, warm_up=0, progress=False)
    with pytest.raises(ConfigError, match="online=True"):
        model.predict(files[:1], warm_up=3, progress=False)


def test_cli_predict_online(norm, files, capsys):
    model, _ = norm
    paths = [str(f) for f in files[:4]]
    assert main(["predict", str(model.path), *paths, "--speaker", "anna", "--online",
                 "--warm-up", "3", "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    notes = [e["speaker_norm"] for e in json.loads(captured.out)]
    assert [n.split(" (")[0] for n in notes] == [
        "fallback: average training speaker"] * 2 + [
        "own statistics over 3 files", "own statistics over 4 files"]
    assert "online speaker normalisation used the average training speaker (fallback) for " \
           "2 of 4 file(s): the first 2 files of each speaker (warm-up)" in captured.err
    assert main(["predict", str(model.path), paths[0], "--warm-up", "3", "--quiet"]) == 2
    assert "--warm-up is the warm-up of --online" in capsys.readouterr().err
    assert main(["predict", str(model.path), paths[0], "--online", "--per-channel",
                 "--quiet"]) == 2
    assert "--per-channel takes no" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the stream engine

def stereo(path: Path) -> np.ndarray:
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    return data


def run_engine(model, audio: np.ndarray, finish: bool = True, **kwargs):
    from binser.serve.stream import StreamEngine

    engine = StreamEngine(model, model.frontend.sample_rate, audio.shape[1], **kwargs)
    out = engine.feed(audio)
    return (out + engine.finish() if finish else out), engine


def window_reference(model, audio: np.ndarray, windows) -> np.ndarray:
    """Fused scores of each window standardised offline over the stream's windows up to it
    (speaker_normalise of the pooled rows 0..k), by hand from the clips' features."""
    from binser.features import clip_frames
    from binser.normalisation import speaker_normalise

    sr = model.frontend.sample_rate
    clips = [audio[int(round(w.start_s * sr)):int(round(w.end_s * sr))].T for w in windows]
    rows = clip_frames(model.backbone, clips, model.views, model.layer, model.frontend)
    out = []
    for k in range(len(clips)):
        proba = {}
        for v in model.views:
            X = model.pooling.make().fit_transform([r[v] for r in rows[:k + 1]])
            Z = speaker_normalise(X, ["s"] * (k + 1))
            proba[v] = model.view_proba(v, Z[-1:])
        out.append(model.fuse_scores(proba)[0])
    return np.array(out)


def test_stream_online_statistics(norm, files):
    model, _ = norm
    labels = model.labels
    audio = np.concatenate([stereo(f) for f in files[:3]])
    windows, engine = run_engine(model, audio, warm_up=3)
    got = np.array([[w.scores[c] for c in labels] for w in windows])
    assert len(windows) >= 6 and not any(w.silent for w in windows)
    # before the warm-up: the fallback stream's windows, exactly
    fallback, _ = run_engine(model, audio, speaker_stats="fallback")
    assert np.abs(got[:2] - np.array([[w.scores[c] for c in labels]
                                      for w in fallback[:2]])).max() < 1e-12
    assert {w.speaker_norm for w in fallback} == {
        "fallback: average training speaker (speaker_stats 'fallback': no running "
        "statistics)"}
    # from the warm-up on: the offline normaliser over the windows so far (the last
    # window: over the whole stream)
    want = window_reference(model, audio, windows)
    assert np.abs(got[2:] - want[2:]).max() < 1e-6
    assert np.abs(got[2:] - np.array([[w.scores[c] for c in labels]
                                      for w in fallback[2:]])).max() > 1e-6
    assert [w.speaker_norm.split(" (")[0] for w in windows[:4]] == [
        "fallback: average training speaker"] * 2 + [
        "own statistics over 3 windows", "own statistics over 4 windows"]
    assert engine.summary()["speaker_norm"].startswith(
        "online: running statistics of this stream's windows with signal, own from 3")
    # a planted future: windows complete before the join are the same whatever follows
    early, _ = run_engine(model, stereo(files[0]), finish=False, warm_up=3)
    other = np.concatenate([stereo(files[0]), stereo(files[5])])
    planted, _ = run_engine(model, other, warm_up=3)
    assert len(early) >= 1
    assert [w.scores for w in planted[:len(early)]] == [w.scores for w in early]
    assert [w.scores for w in windows[:len(early)]] == [w.scores for w in early]


def test_stream_per_channel_statistics_per_channel(norm, files):
    model, _ = norm
    a, b, c = (stereo(f)[:, 0] for f in files[:3])
    n = min(len(a), len(b), len(c))
    one, _ = run_engine(model, np.stack([a[:n], b[:n]], axis=1), per_channel=True,
                        warm_up=2)
    two, _ = run_engine(model, np.stack([a[:n], c[:n]], axis=1), per_channel=True,
                        warm_up=2)
    left = [w.channels["left"] for w in one]
    assert left == [w.channels["left"] for w in two]       # the other channel: no effect
    assert [w.channels["right"]["scores"] for w in one] != \
        [w.channels["right"]["scores"] for w in two]
    spoken = [x for x in left if not x["silent"]]
    assert spoken[0]["speaker_norm"].startswith("fallback")
    assert spoken[1]["speaker_norm"].startswith("own statistics over 2 windows")


@pytest.fixture(scope="module")
def cnn_norm(tmp_path_factory):
    """A speaker-normalised tiny image-CNN model (32 px, four views) and its corpus files."""
    from binser.demo import DemoSpec, make_demo_corpus
    from binser.experiment import ExperimentSettings
    from binser.model import train_model

    base = tmp_path_factory.mktemp("cnn-online")
    root = make_demo_corpus(base / "corpus",
                            DemoSpec(n_speakers=3, per_emotion=2, max_duration_s=1.2))
    settings = ExperimentSettings(dataset="folder", root=str(root), input_size=32,
                                  synthetic=True, cache_dir=str(base / "cache"),
                                  speaker_norm=True)
    train_model(settings, base / "model", progress=False)
    return Model.load(base / "model"), sorted(Path(root).glob("*/*.wav"))


def test_stream_online_image_cnn(cnn_norm):
    model, corpus = cnn_norm
    labels = model.labels
    first = np.concatenate([stereo(f) for f in corpus[:2]])
    audio = np.concatenate([first, stereo(corpus[2])])
    windows, engine = run_engine(model, audio, warm_up=3)
    fallback, _ = run_engine(model, audio, speaker_stats="fallback")
    got, old = (np.array([[w.scores[c] for c in labels] for w in ws])
                for ws in (windows, fallback))
    assert len(windows) >= 5
    assert np.abs(got[:2] - old[:2]).max() < 1e-9            # warm-up: the fallback
    assert np.abs(got[2:] - old[2:]).max() > 1e-6            # then the stream's own
    assert [w.speaker_norm.split(" (")[0] for w in windows[:3]] == [
        "fallback: average training speaker"] * 2 + ["own statistics over 3 windows"]
    early, _ = run_engine(model, first, finish=False, warm_up=3)
    planted, _ = run_engine(model, np.concatenate([first, stereo(corpus[3])]), warm_up=3)
    assert len(early) >= 4 and early[3].speaker_norm.startswith("own statistics")
    assert [w.scores for w in planted[:len(early)]] == [w.scores for w in early]
    assert [w.scores for w in windows[:len(early)]] == [w.scores for w in early]


def test_stream_plain_model_and_refusals(norm, files, tmp_path):
    from binser.errors import ConfigError
    from binser.serve.stream import StreamEngine, format_window

    model, _ = norm
    with pytest.raises(ConfigError, match="unknown speaker_stats 'always'"):
        StreamEngine(model, 16000, 2, speaker_stats="always")
    with pytest.raises(ConfigError, match="warm_up is the warm-up"):
        StreamEngine(model, 16000, 2, speaker_stats="fallback", warm_up=3)
    windows, _ = run_engine(model, stereo(files[0]), warm_up=1)
    assert format_window(windows[0]).endswith(
        "[speaker norm: own statistics over 1 window]")
    assert windows[0].to_dict()["speaker_norm"].startswith("own statistics over 1 window")


def test_cli_stream_online(norm, files, capsys):
    model, _ = norm
    assert main(["stream", str(model.path), str(files[0]), "--fast", "--json",
                 "--warm-up", "2"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    notes = [x["speaker_norm"] for x in lines if x["type"] == "window"]
    assert notes[0].startswith("fallback") and notes[1].startswith("own statistics over 2")
    assert lines[-1]["summary"]["speaker_norm"].startswith("online")
    assert main(["stream", str(model.path), str(files[0]), "--fast", "--json",
                 "--speaker-stats", "fallback", "--warm-up", "2"]) == 2
    assert "warm_up is the warm-up" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the server

def test_server_stream_online(norm, files):
    pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from binser.serve.app import ServeSettings, create_app

    model, _ = norm
    audio = stereo(files[0])
    start = {"type": "start", "sample_rate": 16000, "channels": 2, "format": "f32le"}
    want, _ = run_engine(model, audio, warm_up=2)

    def session(ws, body):
        ws.send_text(json.dumps(body))
        ready = ws.receive_json()
        ws.send_bytes(audio.astype("<f4").tobytes())
        ws.send_text(json.dumps({"type": "stop"}))
        got = []
        while (message := ws.receive_json())["type"] == "window":
            got.append(message)
        return ready, got, message

    with TestClient(create_app(model, ServeSettings()), base_url="http://127.0.0.1") as c:
        with c.websocket_connect("ws://127.0.0.1/stream") as ws:
            ready, got, end = session(ws, {**start, "warm_up": 2})
        assert ready["speaker_norm"].startswith("online: running statistics")
        # the server batches the windows that are ready together (--window-batch): equal to
        # the engine's one-at-a-time scores within its stated 1e-4, whatever the batches were
        # (they depend on how many chunks had arrived: a loaded machine batches differently)
        assert len(got) == len(want)
        assert max(abs(g["scores"][k] - w.scores[k]) for g, w in zip(got, want)
                   for k in w.scores) <= 1e-4
        assert [set(g["scores"]) for g in got] == [set(w.scores) for w in want]
        assert [g["speaker_norm"] for g in got] == [w.speaker_norm for w in want]
        assert end["summary"]["speaker_norm"] == ready["speaker_norm"]
        with c.websocket_connect("ws://127.0.0.1/stream") as ws:
            ready, got, _ = session(ws, {**start, "speaker_stats": "fallback"})
        assert ready["speaker_norm"].startswith("fallback")
        assert {g["speaker_norm"] for g in got} == {ready["speaker_norm"]}
        with pytest.raises(WebSocketDisconnect) as info:
            with c.websocket_connect("ws://127.0.0.1/stream") as ws:
                ws.send_text(json.dumps({**start, "speaker_stats": "never"}))
                message = ws.receive_json()
                assert message["type"] == "error" and "speaker_stats" in message["message"]
                ws.receive_json()
        assert info.value.code == 1007
