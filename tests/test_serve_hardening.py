"""binser serve as a hostile or careless client meets it: every attack we know of
against a real uvicorn on 127.0.0.1 (or the app in-process where the socket does
not matter). Each test fails on the server before the guard: chunked bodies read whole,
headers trusted, queues unbounded, idle streams kept, HTML built from labels."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")
from binser.serve import app as serve_app  # noqa: E402
from binser.serve.app import ServeSettings, create_app  # noqa: E402
from test_serve import LOCAL, Server, _wait, closed_with  # noqa: E402

START = '{"type": "start", "sample_rate": 16000, "channels": 2}'


# trained, model, wav: the tiny model's fixtures in conftest.py


@pytest.fixture
def serve(model):
    """``serve(**settings)``: a real server on 127.0.0.1 with those settings."""
    started = []

    def make(**kw):
        app = create_app(model, ServeSettings(**kw))
        server = Server(app)
        server.app = app
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def _connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def _status(sock: socket.socket, timeout: float = 30) -> tuple[int, str]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n")[0].decode("latin-1")
    return int(head.split()[1]), head


def _chunked_head(token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
            "Content-Type: multipart/form-data; boundary=XyZ\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()


# ------------------------------------------------------------------ uploads

def test_chunked_upload_refused_before_a_megabyte_arrives(serve, private_tmp, caplog):
    """A chunked body (no Content-Length) is counted as it arrives: 413 comes back while
    the client is still sending (paced at 64 KiB per 0.1 s), the server has read less than
    1 MB of it, and nothing reached the temporary folder."""
    caplog.set_level("INFO", logger="binser.serve")
    server = serve(max_upload_bytes=200_000)
    sock = _connect(server)
    sock.sendall(_chunked_head())
    part = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            b"Content-Type: audio/wav\r\n\r\n")
    sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
    piece = b"\0" * 65536
    sent, answered = 0, b""
    while sent < 4 << 20 and not answered:
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(0.1)
        sock.setblocking(False)
        try:
            answered = sock.recv(65536)
        except BlockingIOError:
            pass
        sock.setblocking(True)
    status = int(answered.split()[1]) if answered else _status(sock)[0]
    sock.close()
    assert status == 413
    assert sent < 4 << 20, "the whole body was sent before the server answered"
    assert _wait(lambda: any("POST /predict 413" in r.getMessage() for r in caplog.records))
    line = next(r.getMessage() for r in caplog.records if "POST /predict 413" in r.getMessage())
    assert int(line.split()[3]) < 1 << 20, line      # bytes the server read
    assert not any(p.stat().st_size >= 1 << 20 for p in private_tmp.rglob("*") if p.is_file())


def test_token_checked_before_the_body(serve):
    """Without the token the answer is 401 as soon as the headers are in (no body sent)."""
    server = serve(token="s3cret")
    sock = _connect(server)
    sock.sendall(_chunked_head())
    status, _ = _status(sock, timeout=20)
    sock.close()
    assert status == 401


def _bomb(path: Path) -> Path:
    """A tiny FLAC whose STREAMINFO declares 192 kHz x 599 s x 2 channels (230 million
    samples, 0.9 GB as float32) while holding 0.2 s."""
    t = np.arange(int(0.2 * 192000)) / 192000
    tone = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(path, np.stack([tone, tone], 1), 192000, format="FLAC")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0          # STREAMINFO first
    word = int.from_bytes(data[18:26], "big")
    word = (word & ~((1 << 36) - 1)) | (192000 * 599)           # total samples, 36 bits
    data[18:26] = word.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def test_decompression_bomb_refused_from_its_header(model, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from binser.audio import audio_info

    bomb = _bomb(tmp_path / "bomb.flac")
    info = audio_info(bomb)
    assert (info.sample_rate, info.channels) == (192000, 2)
    assert info.duration_s == pytest.approx(599)
    assert bomb.stat().st_size < 100_000

    def never(*a, **k):
        raise AssertionError("the model ran on a bomb")

    monkeypatch.setattr(model, "predict", never)
    with TestClient(create_app(model, ServeSettings()), base_url=LOCAL) as c:
        r = c.post("/predict", files={"file": ("b.flac", bomb.read_bytes(), "audio/flac")})
        assert r.status_code == 413, r.text
        assert "192000 Hz" in r.json()["detail"] and "samples" in r.json()["detail"]
        limited = create_app(model, ServeSettings(max_duration_s=60))
    with TestClient(limited, base_url=LOCAL) as c:
        r = c.post("/predict", files={"file": ("b.flac", bomb.read_bytes(), "audio/flac")})
        assert r.status_code == 413 and "599.0 s" in r.json()["detail"]


class Gate:
    """A stand-in for the model computation: each call records its file name and blocks
    until released (or cancelled)."""

    def __init__(self):
        self.calls: list[str] = []
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, model, tmp, name, timeline, per_channel, settings, cancel=None):
        self.calls.append(name)
        self.entered.release()
        assert self.release.wait(60)
        return {"path": name, "label": "anger", "scores": {}, "error": None}


def _upload(server, name: str, data: bytes) -> socket.socket:
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" +
            name.encode() + b"\"\r\nContent-Type: audio/wav\r\n\r\n" + data + b"\r\n--XyZ--\r\n")
    sock = _connect(server)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: multipart/form-data; boundary=XyZ\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return sock


def test_a_client_that_leaves_frees_its_place(serve, monkeypatch, wav, caplog):
    """One compute slot: A computes, B waits, B's client leaves, C arrives. B is never
    computed (C runs right after A), and each upload is logged with its timings."""
    gate = Gate()
    monkeypatch.setattr(serve_app, "_predict_file", gate)
    server = serve(compute_threads=1, max_queue=4)
    data = wav.read_bytes()
    caplog.set_level("INFO", logger="binser.serve")
    a = _upload(server, "a.wav", data)
    assert gate.entered.acquire(timeout=30)
    b = _upload(server, "b.wav", data)
    assert _wait(lambda: server.app.state.uploads == 2)
    limiter = server.app.state.limiter   # B's body is in and B waits for the slot
    assert _wait(lambda: limiter.statistics().tasks_waiting == 1)
    b.close()
    assert _wait(lambda: server.app.state.uploads == 1), "B still holds its place"
    c = _upload(server, "c.wav", data)
    gate.release.set()
    assert _status(a)[0] == 200 and _status(c)[0] == 200
    a.close(), c.close()
    assert gate.calls == ["a.wav", "c.wav"]
    logged = [r.getMessage() for r in caplog.records if "POST /predict" in r.getMessage()]
    assert any("cancelled" in m for m in logged), logged
    assert any(m.startswith("POST /predict 200") and "compute" in m for m in logged), logged


def test_full_queue_answers_503_with_retry_after(serve, monkeypatch, wav):
    gate = Gate()
    monkeypatch.setattr(serve_app, "_predict_file", gate)
    server = serve(compute_threads=1, max_queue=1)
    data = wav.read_bytes()
    a = _upload(server, "a.wav", data)
    assert gate.entered.acquire(timeout=30)
    b = _upload(server, "b.wav", data)
    assert _wait(lambda: server.app.state.uploads == 2)
    c = _upload(server, "c.wav", data)
    status, head = _status(c, timeout=20)
    assert status == 503 and "retry-after: " in head.lower()
    assert int(head.lower().split("retry-after: ")[1].split()[0]) >= 1
    gate.release.set()
    assert _status(a)[0] == 200 and _status(b)[0] == 200
    for s in (a, b, c):
        s.close()
    assert gate.calls == ["a.wav", "b.wav"]


def test_half_sent_headers_are_closed(serve):
    """A client that never finishes its request headers is disconnected after the header
    timeout, and the server goes on answering others."""
    server = serve(header_timeout_s=1.0)
    sock = _connect(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    sock.settimeout(30)
    began = time.monotonic()
    assert sock.recv(100) == b""         # closed by the server
    assert time.monotonic() - began < 20
    sock.close()
    ok = _connect(server)
    ok.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert _status(ok)[0] == 200
    ok.close()


# ------------------------------------------------------------------ Host, Origin, headers

def test_host_and_origin_allow_list(model):
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    app = create_app(model, ServeSettings(allowed_origins=("http://app.example:3000",)))
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/health").status_code == 200
        r = c.get("/health", headers={"host": "rebind.attacker.example"})
        assert r.status_code == 400 and "--allow-host" in r.json()["detail"]
        assert c.get("/health", headers={"host": "localhost:8000"}).status_code == 200
        assert c.get("/health", headers={"origin": "http://evil.example"}).status_code == 403
        assert c.get("/health", headers={"origin": "http://127.0.0.1"}).status_code == 200
        assert c.get("/health", headers={"origin": "http://app.example:3000"}
                     ).status_code == 200
        with pytest.raises(WebSocketDisconnect) as info:
            with c.websocket_connect("ws://127.0.0.1/stream",
                                     headers={"origin": "http://evil.example"}) as ws:
                ws.receive_json()
        assert info.value.code == 1008
        with c.websocket_connect("ws://127.0.0.1/stream",
                                 headers={"origin": "http://127.0.0.1"}) as ws:
            ws.send_text(START)
            assert ws.receive_json()["type"] == "ready"


def test_cross_site_websocket_refused_by_a_real_server(serve):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    server = serve()
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{server.port}/stream", origin="http://evil.example",
                open_timeout=20)
    assert info.value.response.status_code == 403


def test_security_headers_and_no_cdn(model):
    from fastapi.testclient import TestClient

    with TestClient(create_app(model, ServeSettings(token="t")), base_url=LOCAL) as c:
        for path in ("/", "/health", "/static/app.js", "/model"):
            h = c.get(path).headers
            assert "frame-ancestors 'none'" in h["content-security-policy"], path
            assert "script-src 'self'" in h["content-security-policy"]
            assert h["x-content-type-options"] == "nosniff"
            assert h["x-frame-options"] == "DENY" and h["referrer-policy"] == "no-referrer"
        assert c.get("/docs?token=t").status_code == 404
        assert c.get("/openapi.json").status_code == 401            # behind the token
        assert c.get("/openapi.json?token=t").status_code == 200


def test_page_never_builds_html_from_data():
    from importlib import resources

    static = resources.files("binser.serve") / "static"
    script = (static / "app.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "textContent" in script
    assert "<script>" not in (static / "index.html").read_text(encoding="utf-8")  # CSP


# ------------------------------------------------------------------ streams

def test_idle_stream_times_out_and_unstarted_ones_hold_no_slot(serve):
    from test_serve import ws_connect

    server = serve(max_streams=1, stream_idle_s=1.0, start_timeout_s=20)
    with ws_connect(server) as idle_before_start:
        with ws_connect(server) as ws:        # the only slot is still free
            ws.send(START)
            assert json.loads(ws.recv(timeout=20))["type"] == "ready"
            began = time.monotonic()
            messages = closed_with(ws, 1008)   # then nothing: closed after ~1 s
            assert "no message" in messages[-1]["message"]
            assert time.monotonic() - began < 20
        # the slot is given back in the server's handler after the close handshake
        assert _wait(lambda: server.app.state.streams == 0)
        idle_before_start.send(START)
        assert json.loads(idle_before_start.recv(timeout=20))["type"] == "ready"
    assert _wait(lambda: server.app.state.streams == 0)


def test_per_client_stream_limit(serve):
    from test_serve import ws_connect

    server = serve(max_streams=4, max_streams_per_client=1)
    with ws_connect(server) as a, ws_connect(server) as b:
        a.send(START)
        assert json.loads(a.recv(timeout=20))["type"] == "ready"
        b.send(START)
        messages = closed_with(b, 1013)
        assert "this client" in messages[-1]["message"]


def test_fast_sender_gets_its_windows_or_a_clear_error(serve, model, wav, caplog):
    """All at once: within the backlog limit every window and the summary come back; far
    ahead of the computation (limit 0.5 s here) a clear 1008 error, not a ping timeout."""
    from test_serve import ws_connect

    caplog.set_level("INFO", logger="binser.serve")
    x, sr = sf.read(wav, dtype="float32", always_2d=True)
    audio = np.concatenate([x] * 6)                      # ~4.5 s
    server = serve(max_message_bytes=64_000)
    with ws_connect(server) as ws:
        ws.send(START)
        json.loads(ws.recv(timeout=20))
        for s in range(0, len(audio), 4000):
            ws.send(audio[s:s + 4000].tobytes())
        ws.send('{"type": "stop"}')
        messages = closed_with(ws, 1000)
    windows = [m for m in messages if m["type"] == "window"]
    assert messages[-1]["type"] == "end" and len(windows) == messages[-1]["summary"]["windows"]
    assert len(windows) >= 10
    assert _wait(lambda: any(f"{len(windows)} windows in" in r.getMessage()
                             for r in caplog.records))              # the stream's log line
    strict = serve(max_message_bytes=64_000, max_backlog_s=0.5)
    long = np.concatenate([audio] * 4)                   # ~18 s, sent in a burst
    with ws_connect(strict) as ws:
        ws.send(START)
        json.loads(ws.recv(timeout=20))
        from websockets.exceptions import ConnectionClosed
        try:
            for s in range(0, len(long), 4000):
                ws.send(long[s:s + 4000].tobytes())
        except ConnectionClosed:
            pass
        messages = closed_with(ws, 1008)
    assert "real time" in messages[-1]["message"]


def test_shutdown_closes_streams_with_1012_in_bounded_time(serve):
    from test_serve import ws_connect

    server = serve(shutdown_timeout_s=1.0)
    with ws_connect(server) as ws:
        ws.send(START)
        json.loads(ws.recv(timeout=20))
        began = time.monotonic()
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        closed_with(ws, 1012)
        stopper.join(30)
    assert time.monotonic() - began < 20 and not server.thread.is_alive()


# ------------------------------------------------------------------ the command's options

def test_serve_options_become_settings():
    from binser.cli import build_parser
    from binser.serve.commands import serve_settings

    args = build_parser().parse_args(
        ["serve", "m", "--max-duration-s", "60", "--max-queue", "3", "--allow-origin",
         "http://a.example", "--allow-host", "box.lan", "--shutdown-timeout", "4",
         "--max-backlog-s", "5", "--stream-idle-s", "7", "--max-streams-per-client", "1"])
    s = serve_settings(args)
    assert (s.max_duration_s, s.max_queue, s.shutdown_timeout_s) == (60, 3, 4)
    assert s.decoded_samples_limit == 96000 * 60
    assert "box.lan" in s.allowed_hosts and "127.0.0.1" in s.allowed_hosts
    assert s.allowed_origins == ("http://a.example",)
    assert (s.max_backlog_s, s.stream_idle_s, s.max_streams_per_client) == (5, 7, 1)
    wide = serve_settings(build_parser().parse_args(["serve", "m", "--host", "0.0.0.0",
                                                     "--token", "x"]))
    assert wide.allowed_hosts == ("*",)


# ------------------------------------------------------------------ browser

def test_page_shows_a_crafted_label_as_text(model, serve, wav):
    """A model whose label is HTML: the page shows the characters, runs nothing."""
    import copy

    from test_serve import CHROMIUM, CHROMIUM_ARGS

    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium): browser test skipped")
    evil = '<img src=x onerror="window.pwned=1">'
    crafted = copy.copy(model)
    crafted.labels = [evil] + list(model.labels[1:])
    app = create_app(crafted, ServeSettings())
    server = Server(app)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(server.url + "/", timeout=20_000)
            page.wait_for_function("document.getElementById('legend').children.length > 0",
                                   timeout=20_000)
            assert evil in page.text_content("#legend")
            assert page.evaluate("document.querySelectorAll('#legend img').length") == 0
            assert page.evaluate("window.pwned === undefined")
            browser.close()
    finally:
        server.stop()


def test_stream_command_refuses_the_bomb_from_its_header(trained, tmp_path, capsys,
                                                         monkeypatch):
    """binser stream FILE: the same header check before decoding (it decoded 2.3 GB)."""
    from binser import preflight
    from binser.cli import main

    bomb = _bomb(tmp_path / "bomb.flac")

    def never(*a, **k):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(preflight, "load_audio", never)
    assert main(["stream", str(trained[1]), str(bomb), "--fast", "--duration", "3"]) == 2
    err = capsys.readouterr().err
    assert "too large to decode" in err and "192000 Hz" in err and "Traceback" not in err


def test_pings_answered_while_the_model_is_behind(serve, monkeypatch):
    """A hundred messages queued behind a slow computation: the client's ping is still
    answered at once (the server drains the socket), and every chunk is then computed."""
    from test_serve import ws_connect

    real = serve_app._feed_chunks
    calls = []

    def slow(engine, chunks, fmt):
        calls.append(len(chunks))
        time.sleep(1.0)                  # the model far behind
        return real(engine, chunks, fmt)

    monkeypatch.setattr(serve_app, "_feed_chunks", slow)
    server = serve(max_message_bytes=64_000)
    chunk = np.zeros((800, 2), np.float32).tobytes()     # 0.05 s each
    with ws_connect(server) as ws:
        ws.send(START)
        json.loads(ws.recv(timeout=20))
        for _ in range(100):
            ws.send(chunk)
        began = time.monotonic()
        assert ws.ping().wait(timeout=10)
        assert time.monotonic() - began < 5
        ws.send('{"type": "stop"}')
        messages = closed_with(ws, 1000)
    assert messages[-1]["type"] == "end" and messages[-1]["summary"]["duration_s"] == 5.0
    assert sum(calls) == 100 and len(calls) < 100          # queued chunks computed together
