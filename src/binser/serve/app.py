"""The ASGI app of ``binser serve`` (FastAPI; run by uvicorn): HTTP API, WebSocket stream,
web page. Needs the ``serve`` extra (``pip install 'binser[serve]'``).

Endpoints (a token, when set, is required everywhere except ``/``, ``/static/*`` and
``/health``: header ``Authorization: Bearer TOKEN`` or query ``?token=TOKEN``; 401 without):

* ``GET /`` the web page; ``GET /static/*`` its script and style (shipped in the package).
* ``GET /health`` -> ``{"status": "ok", "model": fingerprint, "streams": active}``.
* ``GET /model`` -> labels, views, family, window and hop, fingerprint, the model card.
* ``POST /predict`` (multipart, field ``file``; query ``timeline`` (default true),
  ``per_channel`` (default false)) -> ``predict --json``'s object for that file (per-channel:
  the engine's per-channel summary and windows), plus ``warnings``: a list of lines about
  the audio (mono, identical channels, band-limited, clipped; :mod:`binser.inputs`), empty
  when there is nothing to say (these are never written to the server's log). 400: no file or an empty one; 413: over
  ``max_upload_bytes``; 415: a content type that is not audio/*, video/* or
  application/octet-stream; 422: not decodable audio (the decoder's cause; never a server
  path). The upload goes to a temporary file that is always removed; the client's file
  name is used only for its (allow-listed) extension.
  Also 401 without the token (checked from the headers before any body byte is read),
  408 a body that stalls ``body_timeout_s``, 413 a body that passes ``max_upload_bytes``
  while it arrives (chunked bodies are counted too) or audio whose header declares more
  than ``max_duration_s`` seconds or ``max_decoded_samples`` samples (rate x duration x
  channels: a small compressed file cannot make the server decode gigabytes), 503 with
  ``Retry-After`` when ``compute_threads + max_queue`` uploads are already in the server.
  A client that disconnects while its upload waits for a compute slot is dropped from the
  queue; one that disconnects while its file is computed stops it at the next encoder call
  (Whisper models: between batches of windows; CNN models finish the file), and its result
  is discarded.
* ``WS /stream``: the protocol below. ``/openapi.json``: the OpenAPI schema (token-protected
  when a token is set); there is no ``/docs`` page (it would load Swagger UI from a CDN).

The guard in front of the app (:mod:`binser.serve.guard`) also refuses a Host header not in
``allowed_hosts`` and an Origin that is not the server's own nor in ``allowed_origins``
(DNS rebinding, cross-site pages and WebSockets), and adds a Content Security Policy and
the usual security headers to every response.

WebSocket protocol (JSON text messages, binary PCM):

1. client: ``{"type": "start", "sample_rate": 16000, "channels": 2, "format": "f32le",
   "per_channel": false}`` (format ``f32le`` or ``s16le``, interleaved little-endian;
   optional for speaker-normalised models: ``"speaker_stats"`` ``"online"`` (default:
   running statistics of this stream's windows, per channel in per-channel mode) or
   ``"fallback"`` (the average training speaker throughout), and ``"warm_up"`` (windows
   with signal before the stream's own statistics; default the model's, 5); see
   :mod:`binser.serve.stream`).
2. server: ``{"type": "ready", "labels", "views", "window_s", "hop_s", "per_channel",
   "max_duration_s", "max_message_bytes", "speaker_norm"}`` (``speaker_norm``: the
   statistics mode in words, None for a model without speaker normalisation; every window
   then says in its ``speaker_norm`` which statistics it used).
3. client: binary messages of whole PCM frames (any size up to ``max_message_bytes``);
   server: ``{"type": "window", ...}`` (a :class:`~binser.serve.stream.WindowResult`) for
   every complete window.
4. client: ``{"type": "stop"}``; server: the last windows, then ``{"type": "end",
   "summary": {...}}`` and closes with 1000.

The server reads every message as it arrives (so the client's pings are answered however
long the model takes) and computes the queued audio in order, all queued chunks at once.
A connection holds a stream slot only once its ``start`` was accepted.

Errors: the server sends ``{"type": "error", "code": C, "message": "..."}`` and closes with
code C: 1003 binary before ``start`` or an unknown message type; 1007 malformed JSON, bad
``start`` fields, partial frames or non-finite samples; 1008 missing or wrong token, no
``start`` within ``start_timeout_s`` (10 s), no message for ``stream_idle_s`` (30 s) after
``start``, stream longer than ``max_stream_s``, a sender more than ``max_backlog_s`` (30 s)
of audio ahead of the computation (send in real time, or slower); 1009 a message over
``max_message_bytes``; 1011 an internal error; 1012 the server is shutting down (it waits
at most ``shutdown_timeout_s`` for open streams, then closes them); 1013 too many
concurrent streams, or too many from this client address (try again later). A client that
vanishes mid-stream frees its slot at once.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.websockets import WebSocketDisconnect, WebSocketState

from .. import __version__
from ..errors import BinserError, ConfigError
from .guard import LOG, LOOPBACK_HOSTS, Guard
from .stream import (FORMATS, SAMPLES_PER_SECOND_CAP, StreamEngine, analyse_file,
                     check_stream_params, declared_work_error)

ALLOWED_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac",
                    ".aif", ".aiff", ".webm", ".mp4", ".mkv", ".mov", ".avi"}
ALLOWED_TYPES = ("audio/", "video/", "application/octet-stream")
START_TIMEOUT_S = 10.0
READ_CHUNK = 1 << 16


@dataclass
class ServeSettings:
    """Limits of one server. ``token``: required secret (None: none, loopback only).

    Sizes in bytes, durations in seconds of wall time except ``max_stream_s`` and
    ``max_duration_s``/``max_backlog_s`` (seconds of audio). ``max_decoded_samples``: the
    largest ``sample_rate x duration x channels`` an upload's header may declare (None:
    ``96000 * max_duration_s``, i.e. stereo 48 kHz for the longest allowed duration).
    ``allowed_hosts``: Host header names served (``"*"``: any); ``allowed_origins``:
    Origins accepted besides the server's own. ``window_batch``: Whisper timeline and
    stream windows (and a file's views) encoded per call
    (:func:`binser.features.window_batch`; 1: bit-identical to ``predict``, more: faster,
    scores equal to ``predict``'s within 1e-4)."""

    max_upload_bytes: int = 50 << 20
    max_stream_s: float = 3600.0
    max_streams: int = 4
    max_message_bytes: int = 1 << 20
    compute_threads: int = 2
    token: str | None = None
    max_duration_s: float = 600.0
    max_decoded_samples: int | None = None
    max_queue: int = 8
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    max_connections: int = 64
    start_timeout_s: float = START_TIMEOUT_S
    stream_idle_s: float = 30.0
    max_streams_per_client: int = 2
    max_backlog_s: float = 30.0
    shutdown_timeout_s: float = 10.0
    window_batch: int = 16
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)

    @property
    def decoded_samples_limit(self) -> int:
        if self.max_decoded_samples is not None:
            return int(self.max_decoded_samples)
        return int(SAMPLES_PER_SECOND_CAP * self.max_duration_s)


def create_app(model, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``model`` (a loaded :class:`binser.model.Model`)."""
    settings = settings or ServeSettings()
    app = FastAPI(title="binser", version=__version__, docs_url=None, redoc_url=None,
                  description="Binaural speech emotion recognition: predict files, stream "
                              "PCM over a WebSocket (protocol in binser.serve.app).")
    app.state.model = model
    app.state.settings = settings
    app.state.streams = 0
    app.state.clients = {}       # client address -> open streams
    app.state.uploads = 0        # /predict requests in the server (the guard's count)
    app.state.compute_s = 1.0    # running mean of an upload's compute time (Retry-After)
    app.state.limiter = anyio.CapacityLimiter(max(1, settings.compute_threads))
    static = resources.files("binser.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    def authorised(headers, query) -> bool:
        if not settings.token:
            return True
        given = query.get("token") or ""
        auth = headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), settings.token.encode())

    app.state.authorised = authorised
    app.add_middleware(Guard, state=app.state)

    def require_token(request: Request) -> None:
        if not authorised(request.headers, request.query_params):
            raise HTTPException(401, "missing or wrong token (Authorization: Bearer TOKEN "
                                     "or ?token=TOKEN)")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness: the model's fingerprint and the number of active streams."""
        return {"status": "ok", "model": model.fingerprint, "streams": app.state.streams}

    @app.get("/model")
    def model_info(request: Request) -> dict[str, Any]:
        """The model: labels, views, family, stream windows, fingerprint and model card."""
        require_token(request)
        probe = StreamEngine(model, model.frontend.sample_rate, 2)
        card = ""
        if model.path is not None and (Path(model.path) / "MODEL_CARD.md").is_file():
            card = (Path(model.path) / "MODEL_CARD.md").read_text(encoding="utf-8")
        return {"labels": model.labels, "views": list(model.views), "family": model.family,
                "fusion": model.fusion, "window_s": probe.window_s, "hop_s": probe.hop_s,
                "sample_rate": model.frontend.sample_rate, "fingerprint": model.fingerprint,
                "synthetic": bool(model.info.get("synthetic")), "card": card,
                "quantized": model.info.get("quantized"),
                "limits": {"max_upload_bytes": settings.max_upload_bytes,
                           "max_stream_s": settings.max_stream_s,
                           "max_streams": settings.max_streams,
                           "max_message_bytes": settings.max_message_bytes,
                           "max_duration_s": settings.max_duration_s,
                           "max_decoded_samples": settings.decoded_samples_limit,
                           "max_queue": settings.max_queue,
                           "stream_idle_s": settings.stream_idle_s,
                           "max_streams_per_client": settings.max_streams_per_client,
                           "max_backlog_s": settings.max_backlog_s,
                           "window_batch": settings.window_batch}}

    @app.post("/predict")
    async def predict(request: Request, file: UploadFile | None = File(None),
                      timeline: bool = Query(True), per_channel: bool = Query(False)
                      ) -> JSONResponse:
        """Predict the emotion of one uploaded audio or video file (multipart field
        ``file``): ``predict --json``'s object, with the timeline by default."""
        require_token(request)
        if file is None or not isinstance(file, StarletteUploadFile):
            raise HTTPException(400, "no file: send multipart/form-data with a field 'file'")
        ctype = (file.content_type or "application/octet-stream").lower()
        if not ctype.startswith(ALLOWED_TYPES):
            raise HTTPException(415, f"unsupported content type {ctype!r}: send audio/*, "
                                     "video/* or application/octet-stream")
        suffix = Path(file.filename or "").suffix.lower()
        suffix = suffix if suffix in ALLOWED_SUFFIXES else ""
        name = Path(file.filename or "upload").name[:200] or "upload"
        fd, tmp = tempfile.mkstemp(prefix="binser-upload-", suffix=suffix)
        try:
            size = 0
            with os.fdopen(fd, "wb") as handle:
                while chunk := await file.read(READ_CHUNK):
                    size += len(chunk)
                    if size > settings.max_upload_bytes:
                        raise HTTPException(413, f"upload larger than the limit of "
                                                 f"{settings.max_upload_bytes} bytes")
                    handle.write(chunk)
            if size == 0:
                raise HTTPException(400, "empty file")
            result = await _compute(app, request, _predict_file, model, tmp, name, timeline,
                                    per_channel, settings)
        finally:
            await file.close()
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if result is None:   # the client left: nobody reads an answer
            return JSONResponse({"detail": "cancelled: the client disconnected"}, 499)
        if result.get("too_large"):
            return JSONResponse({"detail": result["too_large"]}, status_code=413)
        if "error" in result and result.get("label") is None and result["error"]:
            return JSONResponse(result, status_code=422)
        return JSONResponse(result)

    @app.websocket("/stream")
    async def stream(ws: WebSocket) -> None:
        await _stream_session(app, ws, authorised)

    return app


async def _compute(app: FastAPI, request: Request, fn, *args) -> Any:
    """``fn(*args, cancel=event)`` in a compute thread once a slot is free; None if the
    client disconnected first (its place in the queue is given up at once; a computation
    already running is told through ``event``: Whisper models stop at the next encoder
    call (:func:`binser.features.window_batch`), any result is discarded). Times the wait
    and the computation into the request's log line."""
    timing = request.scope.setdefault("binser.timing", {})
    cancel = threading.Event()
    result: list[Any] = []
    began = time.perf_counter()

    async def watch(scope: anyio.CancelScope) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                cancel.set()
                timing["cancelled"] = True
                scope.cancel()
                return

    async with anyio.create_task_group() as group:
        group.start_soon(watch, group.cancel_scope)
        async with app.state.limiter:
            timing["wait_ms"] = 1000 * (time.perf_counter() - began)
            t0 = time.perf_counter()
            result.append(await anyio.to_thread.run_sync(
                lambda: fn(*args, cancel=cancel)))
            timing["compute_ms"] = 1000 * (time.perf_counter() - t0)
        group.cancel_scope.cancel()
    if cancel.is_set() or not result:
        return None
    return result[0]


def upload_too_large(path: str, settings: ServeSettings) -> str | None:
    """The reason an upload's header declares too much audio to decode, else None
    (:func:`binser.serve.stream.declared_work_error` with the server's limits)."""
    return declared_work_error(path, settings.max_duration_s, settings.decoded_samples_limit)


def _predict_file(model, tmp: str, name: str, timeline: bool, per_channel: bool,
                  settings: ServeSettings, cancel: threading.Event | None = None
                  ) -> dict[str, Any] | None:
    """Predict one temporary file; every path in the answer is the client's name.
    ``{"too_large": reason}`` when its header declares too much work; None if ``cancel``
    was set before the model ran."""
    reason = upload_too_large(tmp, settings)
    if reason is not None:
        return {"too_large": reason}
    if cancel is not None and cancel.is_set():
        return None
    from ..features import Cancelled, window_batch

    try:
        with window_batch(settings.window_batch, cancel):
            return _predict_checked(model, tmp, name, timeline, per_channel)
    except Cancelled:
        return None   # the client left: the encoder stopped at its next call


def _batched(settings: ServeSettings, fn, *args) -> Any:
    """``fn(*args)`` with the server's window batch (a compute thread)."""
    from ..features import window_batch

    with window_batch(settings.window_batch):
        return fn(*args)


def _feed_chunks(engine: StreamEngine, chunks: list[tuple[bytes, float]], fmt: str
                 ) -> list:
    """Every queued ``(PCM bytes, arrival time)`` chunk through the engine in one compute
    slot (each window's latency counts from its own chunk's arrival)."""
    out = []
    for data, arrived in chunks:
        out.extend(engine.feed_bytes(data, fmt, arrived))
    return out


def _predict_checked(model, tmp: str, name: str, timeline: bool, per_channel: bool
                     ) -> dict[str, Any]:
    if per_channel:
        try:
            out = analyse_file(model, tmp, per_channel=True)
        except BinserError as exc:
            return {"path": name, "label": None, "error": _clean(str(exc), tmp, name)}
        out["path"] = name
        out["label"] = None
        out["error"] = None
        out["warnings"] = _input_warnings(model, tmp)
        if not timeline:
            out.pop("windows")
        return out
    import warnings

    from ..views import MonoInputWarning

    with warnings.catch_warnings():   # said in the response instead of the server's log
        warnings.simplefilter("ignore", MonoInputWarning)
        prediction = model.predict([tmp], timeline=timeline, progress=False)[0].to_dict()
    prediction["path"] = name
    if prediction.get("error"):
        prediction["error"] = _clean(prediction["error"], tmp, name)
    else:
        prediction["warnings"] = _input_warnings(model, tmp)
    return prediction


def _input_warnings(model, tmp: str) -> list[str]:
    """The upload's audio warnings (:func:`binser.inputs.file_warnings`; none if it cannot
    be read again)."""
    from ..inputs import file_warnings

    try:
        return file_warnings(tmp, model.frontend.channels)
    except BinserError:
        return []


def _clean(message: str, tmp: str, name: str) -> str:
    return message.replace(tmp, name)


async def _close(ws: WebSocket, code: int, message: str) -> None:
    try:
        if ws.application_state == WebSocketState.CONNECTED:
            await ws.send_json({"type": "error", "code": code, "message": message})
            await ws.close(code=code, reason=message[:120])
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass


async def _stream_session(app: FastAPI, ws: WebSocket, authorised) -> None:
    settings: ServeSettings = app.state.settings
    await ws.accept()
    if not authorised(ws.headers, ws.query_params):
        await _close(ws, 1008, "missing or wrong token")
        return
    try:
        message = await _receive(ws, settings.start_timeout_s)
    except asyncio.TimeoutError:
        await _close(ws, 1008, f"no start message within {settings.start_timeout_s:g} s")
        return
    except WebSocketDisconnect:
        return
    start = await _start_message(ws, message, settings)
    if start is None:
        return
    client = ws.client.host if ws.client else "?"
    if app.state.streams >= settings.max_streams:
        await _close(ws, 1013, f"too many concurrent streams (limit {settings.max_streams}); "
                               "try again later")
        return
    if app.state.clients.get(client, 0) >= settings.max_streams_per_client:
        await _close(ws, 1013, f"too many streams from this client (limit "
                               f"{settings.max_streams_per_client}); try again later")
        return
    app.state.streams += 1     # a slot is held only from an accepted start on
    app.state.clients[client] = app.state.clients.get(client, 0) + 1
    try:
        await _run_stream(app, ws, settings, start)
    except WebSocketDisconnect:
        pass   # the client vanished: drop the engine, free the slot
    except Exception as exc:   # never leave a socket open on an unexpected error
        await _close(ws, 1011, f"internal error ({type(exc).__name__})")
    finally:
        app.state.streams -= 1
        app.state.clients[client] -= 1
        if not app.state.clients[client]:
            del app.state.clients[client]


async def _receive(ws: WebSocket, timeout: float | None = None) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.receive(), timeout) if timeout else await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message


class _StreamClosed(Exception):
    """The reader found a reason to close the stream (code, message)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


async def _reader(ws: WebSocket, settings: ServeSettings, start: dict[str, Any],
                  queue: asyncio.Queue, state: dict[str, Any]) -> None:
    """Read every message as it arrives (the WebSocket layer answers pings meanwhile) into
    ``queue``: whole-frame PCM ``bytes``, ``"stop"``, or a :class:`_StreamClosed` /
    :class:`WebSocketDisconnect`. ``state["backlog"]``: seconds of audio received, not yet
    computed; ``state["gone"]``: the client disconnected (queued audio is dropped)."""
    frame = start["channels"] * FORMATS[start["format"]].itemsize
    received = 0.0
    try:
        while True:
            try:
                message = await _receive(ws, settings.stream_idle_s)
            except asyncio.TimeoutError:
                raise _StreamClosed(1008, f"no message for {settings.stream_idle_s:g} s "
                                          "after start (send audio or stop)") from None
            data = message.get("bytes")
            if data is not None:
                if len(data) > settings.max_message_bytes:
                    raise _StreamClosed(1009, f"binary message of {len(data)} bytes exceeds "
                                              f"{settings.max_message_bytes}")
                seconds = len(data) / frame / start["sample_rate"]
                if received + seconds > settings.max_stream_s:
                    raise _StreamClosed(1008, f"stream longer than the limit of "
                                              f"{settings.max_stream_s:g} s")
                ahead = state["backlog"] + seconds
                if ahead > settings.max_backlog_s:
                    raise _StreamClosed(1008, f"the sender is {ahead:.1f} s of "
                                              "audio ahead of the computation (limit "
                                              f"{settings.max_backlog_s:g} s): send in real "
                                              "time")
                received += seconds
                state["backlog"] += seconds
                await queue.put((data, time.perf_counter()))
                continue
            text = message.get("text")
            if text is not None and len(text) > settings.max_message_bytes:
                raise _StreamClosed(1009, "text message too large")
            try:
                body = json.loads(text or "")
            except (json.JSONDecodeError, RecursionError):
                raise _StreamClosed(1007, "malformed JSON message") from None
            kind = body.get("type") if isinstance(body, dict) else None
            if kind != "stop":
                raise _StreamClosed(1003, f"unexpected message type {kind!r} (binary PCM or "
                                          "{\"type\": \"stop\"} expected)")
            await queue.put("stop")
            return
    except WebSocketDisconnect as gone:
        state["gone"] = True
        await queue.put(gone)
    except _StreamClosed as stop:
        await queue.put(stop)


async def _run_stream(app: FastAPI, ws: WebSocket, settings: ServeSettings,
                      start: dict[str, Any]) -> None:
    model = app.state.model
    try:
        engine = StreamEngine(model, start["sample_rate"], start["channels"],
                              per_channel=start["per_channel"],
                              speaker_stats=start["speaker_stats"], warm_up=start["warm_up"])
    except ConfigError as exc:
        await _close(ws, 1007, str(exc))
        return
    fmt = start["format"]
    frame = start["channels"] * FORMATS[fmt].itemsize
    await ws.send_json({"type": "ready", "labels": model.labels, "views": list(model.views),
                        "window_s": engine.window_s, "hop_s": engine.hop_s,
                        "per_channel": engine.per_channel,
                        "max_duration_s": settings.max_stream_s,
                        "max_message_bytes": settings.max_message_bytes,
                        "speaker_norm": engine.speaker_norm})
    limiter = app.state.limiter
    queue: asyncio.Queue = asyncio.Queue()
    state = {"backlog": 0.0, "gone": False}
    reader = asyncio.create_task(_reader(ws, settings, start, queue, state))
    began = time.perf_counter()
    try:
        while True:
            item = await queue.get()
            if state["gone"]:
                raise WebSocketDisconnect(1001)   # the client left: drop its queued audio
            if isinstance(item, tuple):      # PCM: this chunk and every one queued behind
                chunks = [item]
                while not queue.empty() and isinstance(queue._queue[0], tuple):  # noqa: SLF001
                    chunks.append(queue.get_nowait())
                bad = next((c for c, _ in chunks if len(c) % frame), None)
                if bad is not None:
                    await _close(ws, 1007, f"{len(bad)} bytes is not a whole number of {fmt} "
                                           f"frames of {start['channels']} channel(s) "
                                           f"({frame} bytes each)")
                    return
                try:
                    results = await anyio.to_thread.run_sync(
                        _batched, settings, _feed_chunks, engine, chunks, fmt,
                        limiter=limiter)
                except BinserError as exc:
                    await _close(ws, 1007, str(exc))
                    return
                seconds = sum(len(c) for c, _ in chunks) / frame / start["sample_rate"]
                state["backlog"] = max(0.0, state["backlog"] - seconds)
                for r in results:
                    await ws.send_json({"type": "window", **r.to_dict()})
            elif item == "stop":
                results = await anyio.to_thread.run_sync(_batched, settings, engine.finish,
                                                         limiter=limiter)
                for r in results:
                    await ws.send_json({"type": "window", **r.to_dict()})
                await ws.send_json({"type": "end", "summary": engine.summary()})
                await ws.close(1000)
                return
            elif isinstance(item, _StreamClosed):
                await _close(ws, item.code, item.message)
                return
            else:
                raise item               # WebSocketDisconnect: the client left
    finally:
        reader.cancel()
        LOG.info("stream from %s: %.1f s of audio, %d windows in %.1f s%s",
                 ws.client.host if ws.client else "?", engine.duration_s,
                 engine.summary()["windows"], time.perf_counter() - began,
                 " (client left)" if state["gone"] else "")


async def _start_message(ws: WebSocket, message: dict[str, Any], settings: ServeSettings
                         ) -> dict[str, Any] | None:
    """The validated start message, or None after closing the socket."""
    if message.get("bytes") is not None:
        await _close(ws, 1003, "binary data before the start message")
        return None
    text = message.get("text") or ""
    if len(text) > 4096:
        await _close(ws, 1009, "start message too large (at most 4096 characters)")
        return None
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        await _close(ws, 1007, "malformed JSON in the start message")
        return None
    if not isinstance(body, dict) or body.get("type") != "start":
        await _close(ws, 1003, "the first message must be {\"type\": \"start\", ...}")
        return None
    start = {"sample_rate": body.get("sample_rate"), "channels": body.get("channels", 2),
             "format": body.get("format", "f32le"),
             "per_channel": body.get("per_channel", False),
             "speaker_stats": body.get("speaker_stats", "online"),
             "warm_up": body.get("warm_up")}
    unknown = set(body) - {"type", "sample_rate", "channels", "format", "per_channel",
                           "speaker_stats", "warm_up"}
    try:
        if unknown:
            raise ConfigError(f"unknown start field(s): {', '.join(sorted(unknown))}")
        check_stream_params(start["sample_rate"], start["channels"], start["format"])
        if not isinstance(start["per_channel"], bool):
            raise ConfigError("per_channel must be true or false")
    except ConfigError as exc:
        await _close(ws, 1007, str(exc))
        return None
    return start
