"""Throughput of the Whisper windows: views that are the same signal
encoded once (bit-identical), windows batched under ``window_batch`` (frames equal to the
one-at-a-time ones within 1e-5 relative; scores within 1e-4, the relaxed equality the
server states), and the server's uploads with a timeline against ``predict --timeline``."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import save_tiny_whisper, train_tiny_whisper_model
from binser.errors import ConfigError
from binser.model import Model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from binser.backbones import load_whisper

    return load_whisper("whisper-tiny", save_tiny_whisper(tmp_path_factory.mktemp("tw") / "hf"))


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    folder, root = train_tiny_whisper_model(tmp_path_factory.mktemp("tput"))
    return Model.load(folder), root


def _signals(n: int = 5, seconds: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [(0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)
            for _ in range(n)]


def _count_chunks(backbone, monkeypatch) -> list[int]:
    """Counts the Mel chunks the backbone encodes (alone or in batches)."""
    counted = [0]
    one, many = backbone.encode_chunk, backbone.encode_chunks

    def chunk(mel, layers):
        counted[0] += 1
        return one(mel, layers)

    def chunks(mels, layers):
        counted[0] += len(mels)
        return many(mels, layers)

    monkeypatch.setattr(backbone, "encode_chunk", chunk)
    monkeypatch.setattr(backbone, "encode_chunks", chunks)
    return counted


def test_identical_signals_are_encoded_once(tiny, monkeypatch):
    from binser.features import clip_frames, encode_signals, unique_signals

    x, y = _signals(2)
    unique, where = unique_signals([x, x.copy(), y, x])
    assert len(unique) == 2 and where == [0, 0, 1, 0]
    alone = [encode_signals(tiny, [s], (1,))[0][1] for s in (x, y)]
    counted = _count_chunks(tiny, monkeypatch)
    got = encode_signals(tiny, [x, x.copy(), y], (1,))
    assert counted[0] == 2
    assert np.array_equal(got[0][1], alone[0]) and np.array_equal(got[1][1], alone[0])
    assert np.array_equal(got[2][1], alone[1])
    # a mono window: L = R are one signal (M = L + R = 2L is another: Whisper's log-Mel
    # is not gain-invariant; Side silent): two encodings, not three
    counted[0] = 0
    (frames,) = clip_frames(tiny, [x[None, :]], ["left", "right", "mid", "side"], 1)
    assert counted[0] == 2
    assert np.array_equal(frames["left"], alone[0]) and np.array_equal(frames["right"],
                                                                       alone[0])
    assert np.array_equal(frames["mid"], encode_signals(tiny, [x + x], (1,))[0][1])
    assert frames["side"].shape[0] == 0


def test_batched_windows_equal_one_at_a_time_within_1e_5_relative(tiny, monkeypatch):
    from binser.features import encode_windows, window_batch

    signals = _signals(7) + _signals(2, seconds=0.8)     # two lengths: two groups
    exact = encode_windows(tiny, signals, (1, 2), batch=1)
    counted = _count_chunks(tiny, monkeypatch)
    batched = encode_windows(tiny, signals, (1, 2), batch=4)
    assert counted[0] == len(signals)
    for a, b in zip(batched, exact):
        for layer in (1, 2):
            assert a[layer].shape == b[layer].shape
            scale = max(1.0, float(np.abs(b[layer]).max()))
            assert np.abs(a[layer] - b[layer]).max() <= 1e-5 * scale
    with window_batch(4):                      # the thread's setting is the default
        inside = encode_windows(tiny, signals, (1,))
        seen = []
        other = threading.Thread(target=lambda: seen.append(
            encode_windows(tiny, signals[:1], (1,))[0][1]))
        other.start()
        other.join()
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(inside, batched))
    assert np.array_equal(seen[0], exact[0][1])              # other threads: unbatched
    outside = encode_windows(tiny, signals, (1,))
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(outside, exact))
    with pytest.raises(ConfigError):
        with window_batch(0):
            pass


def test_server_timeline_equals_predict_within_1e_4(whisper, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from binser.serve.app import ServeSettings, create_app

    model, root = whisper
    parts = [sf.read(p, dtype="float32")[0] for p in sorted(Path(root).glob("*/*.wav"))[:3]]
    path = tmp_path / "three.wav"
    sf.write(path, np.concatenate(parts), 16000, subtype="FLOAT")
    (want,) = model.predict([path], timeline=True, progress=False)
    assert len(want.timeline) >= 5
    for batch, tolerance in ((16, 1e-4), (1, 0.0)):   # the stated bound; 1: bit-exact
        app = create_app(model, ServeSettings(window_batch=batch))
        with TestClient(app, base_url="http://127.0.0.1") as client:
            r = client.post("/predict", files={"file": ("t.wav", path.read_bytes(),
                                                        "audio/wav")})
        assert r.status_code == 200, r.text
        got = r.json()["timeline"]
        assert [(w["start_s"], w["end_s"]) for w in got] == \
            [(w["start_s"], w["end_s"]) for w in want.timeline]
        diff = max(abs(g["scores"][k] - w["scores"][k]) for g, w in zip(got, want.timeline)
                   for k in model.labels)
        assert diff <= tolerance, (batch, diff)


def test_quantize_int8_replaces_the_encoder_linear_layers(whisper, tmp_path):
    import copy
    import types

    import torch

    from binser.serve.quantize import quantize_model

    model, root = whisper
    wav = sorted(Path(root).glob("*/*.wav"))[0]
    backbone = model.backbones[model.views[0]]
    signal = sf.read(wav, dtype="float32")[0][:, 0]
    before = backbone.encode_one(signal, (model.layer,))[model.layer]
    (float_pred,) = model.predict([wav], progress=False)
    q = copy.copy(model)
    q.info = dict(model.info)
    shared = {id(b): copy.copy(b) for b in model.backbones.values()}
    q.backbones = {v: shared[id(b)] for v, b in model.backbones.items()}
    linear = sum(isinstance(m, torch.nn.Linear) for m in backbone.model.modules())
    assert quantize_model(q, "int8") == linear * len(shared) and linear > 0
    qb = q.backbones[q.views[0]]
    assert not any(isinstance(m, torch.nn.Linear) for m in qb.model.modules())
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in qb.model.modules())
    assert q.info["quantized"] == "int8" and "quantized" not in model.info
    after = qb.encode_one(signal, (model.layer,))[model.layer]
    assert after.shape == before.shape and not np.array_equal(after, before)
    assert np.corrcoef(after.ravel(), before.ravel())[0, 1] > 0.95
    (int8_pred,) = q.predict([wav], progress=False)
    assert sum(int8_pred.scores.values()) == pytest.approx(1.0)
    assert float_pred.scores != int8_pred.scores
    with pytest.raises(ConfigError, match="Whisper"):
        quantize_model(types.SimpleNamespace(family="imagenet", backbones={}, info={}))
    with pytest.raises(ConfigError, match="int8"):
        quantize_model(q, "int4")


def test_a_client_leaving_stops_the_encoder(whisper, tmp_path, monkeypatch):
    """The server's computation of an upload whose client left stops at the next encoder
    call: here the client leaves while the file's own views are encoded, and none of its
    timeline windows is encoded (before, the whole timeline ran for nobody)."""
    import threading

    from binser.features import Cancelled, encode_windows, window_batch
    from binser.serve.app import ServeSettings, _predict_file

    model, root = whisper
    parts = [sf.read(p, dtype="float32")[0] for p in sorted(Path(root).glob("*/*.wav"))[:4]]
    path = tmp_path / "four.wav"
    sf.write(path, np.concatenate(parts), 16000, subtype="FLOAT")
    backbone = model.backbones[model.views[0]]
    left = threading.Event()
    shapes: list[int] = []
    real = backbone.encode_chunks

    def encode_chunks(mels, layers):
        shapes.extend(m.shape[1] for m in mels)
        left.set()                       # the client disconnects during this call
        return real(mels, layers)

    monkeypatch.setattr(backbone, "encode_chunks", encode_chunks)
    out = _predict_file(model, str(path), "four.wav", True, False, ServeSettings(), left)
    assert out is None
    assert shapes and min(shapes) > 100   # only the whole file's views (> 1 s of Mel)
    with pytest.raises(Cancelled):        # and directly: a set event stops the next call
        with window_batch(4, left):
            encode_windows(backbone, _signals(2), (1,))


def test_identical_cnn_images_are_computed_once(monkeypatch):
    import warnings

    from binser.backbones import get_backbone
    from binser.features import cnn_features

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = get_backbone("efficientnet_lite0", weights="random", input_size=64,
                                allow_random=True)
    backbone.model.eval()
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 3, 64, 64), dtype=np.float32)
    alone = cnn_features(backbone, np.stack([a, b]))
    rows = []
    real = backbone.model.forward

    def forward(x):
        rows.append(len(x))
        return real(x)

    monkeypatch.setattr(backbone.model, "forward", forward)
    got = cnn_features(backbone, np.stack([a.copy() for _ in range(17)] + [b]))
    assert sum(rows) == 16          # one padded sub-batch holding a and b once (not two)
    assert np.array_equal(got, alone[[0] * 17 + [1]])   # bit for bit (company-independent)


# ------------------------------------------------------------------ cross-stream batching

def _mels(backbone, signals):
    return [backbone.log_mel(s) for s in signals]


def test_shared_encoder_batches_several_threads_and_routes_each_its_frames(tiny, monkeypatch):
    """Three threads' Mel chunks (two shapes) queued together are encoded in one call per
    shape; each thread gets its own chunks' frames, within 1e-5 relative of encoding each
    chunk alone (routing errors would be off by the whole signal: they are all different)."""
    from binser.serve.batcher import WindowEncoder

    encoder = WindowEncoder(batch=16, workers=1)
    asks = [_signals(3), _signals(2) + _signals(1, seconds=0.8), _signals(1) +
            _signals(1, seconds=0.8)]
    asks[1] = [2.0 * s for s in asks[1]]
    asks[2] = [s[::-1].copy() for s in asks[2]]
    alone = [[tiny.encode_chunk(m, (1, 2)) for m in _mels(tiny, sigs)] for sigs in asks]
    calls: list[int] = []
    real = tiny.encode_chunks
    first_held = threading.Event()

    def encode_chunks(mels, layers):
        calls.append(len(mels))
        if len(calls) == 1:          # hold the first call until the two others queue
            first_held.set()
            assert _wait_for(lambda: encoder.pending == 2)
        return real(mels, layers)

    monkeypatch.setattr(tiny, "encode_chunks", encode_chunks)
    got: dict[int, list] = {}

    def ask(k):
        got[k] = encoder.encode(tiny, _mels(tiny, asks[k]), (1, 2))

    first = threading.Thread(target=ask, args=(0,))
    first.start()
    assert first_held.wait(30)
    others = [threading.Thread(target=ask, args=(k,)) for k in (1, 2)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(60)
    # thread 0 alone, then one call per shape holding the chunks of threads 1 and 2
    # (each has fewer than MIN_CALL chunks of a shape, so no cut at a request's end)
    assert calls[0] == 3 and sorted(calls[1:]) == [2, 3]
    assert encoder.rounds == 2 and encoder.calls == 3 and encoder.chunks == 8
    for k in range(3):
        assert len(got[k]) == len(alone[k])
        for a, b in zip(got[k], alone[k]):
            for layer in (1, 2):
                scale = max(1.0, float(np.abs(b[layer]).max()))
                assert np.abs(a[layer] - b[layer]).max() <= 1e-5 * scale


def test_shared_encoder_splits_over_workers_and_reports_errors(tiny, monkeypatch):
    from binser.serve.batcher import WindowEncoder

    encoder = WindowEncoder(batch=2, workers=2, idle_s=0.2)
    sizes: list[int] = []
    real = tiny.encode_chunks

    def encode_chunks(mels, layers):
        sizes.append(len(mels))
        return real(mels, layers)

    monkeypatch.setattr(tiny, "encode_chunks", encode_chunks)
    out = encoder.encode(tiny, _mels(tiny, _signals(5)), (1,))
    assert len(out) == 5 and sorted(sizes) == [1, 2, 2]      # at most `batch` per call
    assert _wait_for(lambda: encoder._thread is None)         # idle: the thread ended
    assert encoder.encode(tiny, [], (1,)) == []

    def broken(mels, layers):
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(tiny, "encode_chunks", broken)
    with pytest.raises(RuntimeError, match="encoder failed"):  # the caller gets the error
        encoder.encode(tiny, _mels(tiny, _signals(1)), (1,))
    monkeypatch.setattr(tiny, "encode_chunks", real)
    assert len(encoder.encode(tiny, _mels(tiny, _signals(1)), (1,))) == 1   # and goes on
    with pytest.raises(ConfigError):
        WindowEncoder(batch=0)


def test_window_batch_with_a_shared_encoder_equals_one_at_a_time(tiny):
    """clip_frames (the stream engine's path) inside window_batch(encoder=...): every
    window's views go through the shared encoder; frames within 1e-5 of batch=1."""
    from binser.features import clip_frames, window_batch
    from binser.serve.batcher import WindowEncoder

    rng = np.random.default_rng(3)
    clips = [(0.1 * rng.standard_normal((2, 16000))).astype(np.float32) for _ in range(3)]
    views = ["left", "right", "mid", "side"]
    exact = clip_frames(tiny, clips, views, 1, batch=1)
    encoder = WindowEncoder(batch=16, workers=1)
    with window_batch(16, encoder=encoder):
        shared = clip_frames(tiny, clips, views, 1)
    assert encoder.chunks == 12 and encoder.calls == 1
    for a, b in zip(shared, exact):
        for v in views:
            scale = max(1.0, float(np.abs(b[v]).max()))
            assert a[v].shape == b[v].shape
            assert np.abs(a[v] - b[v]).max() <= 1e-5 * scale


def _wait_for(condition, timeout: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


def test_concurrent_streams_share_encoder_calls_and_get_their_own_windows(whisper,
                                                                         monkeypatch):
    """Three WebSocket streams at once against a real server: their windows meet in the
    server's shared encoder (fewer encoder rounds than requests: some round served
    several streams), and each stream gets its own windows, within 1e-5 of the same audio
    through an engine alone (one window at a time, bit-exact to predict)."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("websockets")
    import json

    from test_serve import Server, closed_with, ws_connect
    from binser.serve.app import ServeSettings, create_app
    from binser.serve.stream import StreamEngine

    model, root = whisper
    wavs = sorted(Path(root).glob("*/*.wav"))
    audios = [np.concatenate([sf.read(p, dtype="float32", always_2d=True)[0]
                              for p in wavs[k:k + 2]]) for k in (0, 2, 4)]
    app = create_app(model, ServeSettings(max_streams=3, max_streams_per_client=3,
                                          max_message_bytes=1 << 20))
    encoder = app.state.encoder
    requests = [0]
    real_encode, real_chunks = encoder.encode, model.backbone.encode_chunks

    def encode(backbone, mels, layers):
        requests[0] += 1
        return real_encode(backbone, mels, layers)

    def encode_chunks(mels, layers):     # the first call waits for other streams to queue
        if encoder.calls == 0:
            _wait_for(lambda: encoder.pending >= 2, timeout=10)
        return real_chunks(mels, layers)

    monkeypatch.setattr(encoder, "encode", encode)
    monkeypatch.setattr(model.backbone, "encode_chunks", encode_chunks)
    server = Server(app)
    got: dict[int, list] = {}

    def stream(k):
        x = audios[k]
        with ws_connect(server) as ws:
            ws.send(json.dumps({"type": "start", "sample_rate": 16000,
                                "channels": x.shape[1], "format": "f32le"}))
            json.loads(ws.recv(timeout=20))
            ws.send(x.tobytes())
            ws.send('{"type": "stop"}')
            got[k] = [m for m in closed_with(ws, 1000) if m["type"] == "window"]

    try:
        threads = [threading.Thread(target=stream, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        server.stop()
    assert encoder.rounds < requests[0], (encoder.rounds, requests[0])
    for k in range(3):
        engine = StreamEngine(model, 16000, audios[k].shape[1])
        alone = engine.feed(audios[k]) + engine.finish()
        assert len(got[k]) == len(alone) >= 3
        for g, a in zip(got[k], alone):
            assert (g["start_s"], g["end_s"]) == (a.start_s, a.end_s)
            assert max(abs(g["scores"][lab] - a.scores[lab]) for lab in model.labels) <= 1e-5


def test_shared_encoder_plan_cuts_calls_at_request_ends_and_wakes_each_early(tiny,
                                                                             monkeypatch):
    from binser.serve.batcher import WindowEncoder, _Request

    def req(n, frames=100):
        return _Request(tiny, [np.zeros((80, frames), np.float32)] * n, (1,))

    def sizes(encoder, requests):
        return [[(requests.index(r), j) for r, j in call] for call in encoder.plan(requests)]

    four = [req(4) for _ in range(4)]                  # four stereo windows, one core
    assert sizes(WindowEncoder(16, 1), four) == [[(k, j) for j in range(4)] for k in range(4)]
    assert [len(c) for c in WindowEncoder(16, 2).plan(four[:1])] == [2, 2]   # one: 2 + 2
    mono = [req(2) for _ in range(4)]                  # two mono windows per call
    assert sizes(WindowEncoder(16, 1), mono) == [[(0, 0), (0, 1), (1, 0), (1, 1)],
                                                 [(2, 0), (2, 1), (3, 0), (3, 1)]]
    assert [len(c) for c in WindowEncoder(3, 1).plan(four[:2])] == [3, 3, 2]  # the cap
    mixed = [req(2), req(1, 80)]                       # one call per Mel shape
    assert [len(c) for c in WindowEncoder(16, 1).plan(mixed)] == [2, 1]
    # the first request is woken when its own call is done, before the next call runs
    encoder = WindowEncoder(16, 1)
    first_back = threading.Event()
    real = tiny.encode_chunks
    held = threading.Event()

    def encode_chunks(mels, layers):
        if not held.is_set():            # round 1: hold until A and B are queued
            held.set()
            assert _wait_for(lambda: encoder.pending == 2)
        elif encoder.calls == 2:         # round 2, A's call done: A is back before B's
            assert first_back.wait(10)
        return real(mels, layers)

    monkeypatch.setattr(tiny, "encode_chunks", encode_chunks)
    mels = _mels(tiny, _signals(4))
    blocker = threading.Thread(target=lambda: encoder.encode(tiny, mels[:1], (1,)))
    blocker.start()
    assert held.wait(30)
    a = threading.Thread(target=lambda: (encoder.encode(tiny, mels, (1,)), first_back.set()))
    b = threading.Thread(target=lambda: encoder.encode(tiny, mels, (1,)))
    a.start()
    assert _wait_for(lambda: encoder.pending == 1)
    b.start()
    for t in (blocker, a, b):
        t.join(60)
    assert first_back.is_set() and encoder.calls == 3
