"""The ASGI app of ``binser serve`` (FastAPI; run by uvicorn): HTTP API, WebSocket stream,
web page. Needs the ``serve`` extra (``pip install 'binser[serve]'``).

Endpoints (a token, when set, is required everywhere except ``/``, ``/static/*`` and
``/health``: header ``Authorization: Bearer TOKEN`` or query ``?token=TOKEN``; 401 without):

* ``GET /`` the web page; ``GET /static/*`` its script and style (shipped in the package).
* ``GET /health`` -> ``{"status": "ok", "model": fingerprint, "streams": active}``.
* ``GET /model`` -> labels, views, family, window and hop, fingerprint, the model card.
* ``POST /predict`` (multipart, field ``file``; query ``timeline`` (default true),
  ``per_channel`` (default false)) -> ``predict --json``'s object for that file (per-channel:
  the engine's per-channel summary and windows). 400: no file or an empty one; 413: over
  ``max_upload_bytes``; 415: a content type that is not audio/*, video/* or
  application/octet-stream; 422: not decodable audio (the decoder's cause; never a server
  path). The upload goes to a temporary file that is always removed; the client's file
  name is used only for its (allow-listed) extension.
* ``WS /stream``: the protocol below. ``/docs`` and ``/openapi.json``: OpenAPI.

WebSocket protocol (JSON text messages, binary PCM):

1. client: ``{"type": "start", "sample_rate": 16000, "channels": 2, "format": "f32le",
   "per_channel": false}`` (format ``f32le`` or ``s16le``, interleaved little-endian).
2. server: ``{"type": "ready", "labels", "views", "window_s", "hop_s", "per_channel",
   "max_duration_s", "max_message_bytes"}``.
3. client: binary messages of whole PCM frames (any size up to ``max_message_bytes``);
   server: ``{"type": "window", ...}`` (a :class:`~binser.serve.stream.WindowResult`) for
   every complete window.
4. client: ``{"type": "stop"}``; server: the last windows, then ``{"type": "end",
   "summary": {...}}`` and closes with 1000.

Errors: the server sends ``{"type": "error", "code": C, "message": "..."}`` and closes with
code C: 1003 binary before ``start`` or an unknown message type; 1007 malformed JSON, bad
``start`` fields, partial frames or non-finite samples; 1008 missing or wrong token, no
``start`` within 10 s, stream longer than ``max_stream_s``; 1009 a message over
``max_message_bytes``; 1011 an internal error; 1013 too many concurrent streams (try again
later). A client that vanishes mid-stream frees its slot at once.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import tempfile
import time
from dataclasses import dataclass
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
from .stream import StreamEngine, analyse_file, check_stream_params

ALLOWED_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac",
                    ".aif", ".aiff", ".webm", ".mp4", ".mkv", ".mov", ".avi"}
ALLOWED_TYPES = ("audio/", "video/", "application/octet-stream")
START_TIMEOUT_S = 10.0
READ_CHUNK = 1 << 16


@dataclass
class ServeSettings:
    """Limits of one server. ``token``: required secret (None: none, loopback only)."""

    max_upload_bytes: int = 50 << 20
    max_stream_s: float = 3600.0
    max_streams: int = 4
    max_message_bytes: int = 1 << 20
    compute_threads: int = 2
    token: str | None = None


def create_app(model, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``model`` (a loaded :class:`binser.model.Model`)."""
    settings = settings or ServeSettings()
    app = FastAPI(title="binser", version=__version__,
                  description="Binaural speech emotion recognition: predict files, stream "
                              "PCM over a WebSocket (protocol in binser.serve.app).")
    app.state.model = model
    app.state.settings = settings
    app.state.streams = 0
    app.state.limiter = anyio.CapacityLimiter(max(1, settings.compute_threads))
    static = resources.files("binser.serve") / "static"

    @app.middleware("http")
    async def refuse_large_uploads(request: Request, call_next):
        # before the multipart body is read: a declared length over the limit is refused
        length = request.headers.get("content-length")
        if request.url.path == "/predict" and length and length.isdigit() \
                and int(length) > settings.max_upload_bytes + READ_CHUNK:
            return JSONResponse({"detail": f"upload larger than the limit of "
                                           f"{settings.max_upload_bytes} bytes"},
                                status_code=413)
        return await call_next(request)
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    def authorised(headers, query) -> bool:
        if not settings.token:
            return True
        given = query.get("token") or ""
        auth = headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), settings.token.encode())

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
                "limits": {"max_upload_bytes": settings.max_upload_bytes,
                           "max_stream_s": settings.max_stream_s,
                           "max_streams": settings.max_streams,
                           "max_message_bytes": settings.max_message_bytes}}

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
            result = await anyio.to_thread.run_sync(
                _predict_file, model, tmp, name, timeline, per_channel,
                limiter=app.state.limiter)
        finally:
            await file.close()
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if "error" in result and result.get("label") is None and result["error"]:
            return JSONResponse(result, status_code=422)
        return JSONResponse(result)

    @app.websocket("/stream")
    async def stream(ws: WebSocket) -> None:
        await _stream_session(app, ws, authorised)

    return app


def _predict_file(model, tmp: str, name: str, timeline: bool, per_channel: bool
                  ) -> dict[str, Any]:
    """Predict one temporary file; every path in the answer is the client's name."""
    if per_channel:
        try:
            out = analyse_file(model, tmp, per_channel=True)
        except BinserError as exc:
            return {"path": name, "label": None, "error": _clean(str(exc), tmp, name)}
        out["path"] = name
        out["label"] = None
        out["error"] = None
        if not timeline:
            out.pop("windows")
        return out
    prediction = model.predict([tmp], timeline=timeline, progress=False)[0].to_dict()
    prediction["path"] = name
    if prediction.get("error"):
        prediction["error"] = _clean(prediction["error"], tmp, name)
    return prediction


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
    if app.state.streams >= settings.max_streams:
        await _close(ws, 1013, f"too many concurrent streams (limit {settings.max_streams}); "
                               "try again later")
        return
    app.state.streams += 1
    try:
        await _run_stream(app, ws, settings)
    except WebSocketDisconnect:
        pass   # the client vanished: drop the engine, free the slot
    except Exception as exc:   # never leave a socket open on an unexpected error
        await _close(ws, 1011, f"internal error ({type(exc).__name__})")
    finally:
        app.state.streams -= 1


async def _receive(ws: WebSocket, timeout: float | None = None) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.receive(), timeout) if timeout else await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message


async def _run_stream(app: FastAPI, ws: WebSocket, settings: ServeSettings) -> None:
    model = app.state.model
    try:
        message = await _receive(ws, START_TIMEOUT_S)
    except asyncio.TimeoutError:
        await _close(ws, 1008, f"no start message within {START_TIMEOUT_S:g} s")
        return
    start = await _start_message(ws, message, settings)
    if start is None:
        return
    try:
        engine = StreamEngine(model, start["sample_rate"], start["channels"],
                              per_channel=start["per_channel"])
    except ConfigError as exc:
        await _close(ws, 1007, str(exc))
        return
    fmt = start["format"]
    await ws.send_json({"type": "ready", "labels": model.labels, "views": list(model.views),
                        "window_s": engine.window_s, "hop_s": engine.hop_s,
                        "per_channel": engine.per_channel,
                        "max_duration_s": settings.max_stream_s,
                        "max_message_bytes": settings.max_message_bytes})
    limiter = app.state.limiter
    while True:
        message = await _receive(ws)
        data = message.get("bytes")
        if data is not None:
            if len(data) > settings.max_message_bytes:
                await _close(ws, 1009, f"binary message of {len(data)} bytes exceeds "
                                       f"{settings.max_message_bytes}")
                return
            frame = start["channels"] * (4 if fmt == "f32le" else 2)
            if engine.duration_s + len(data) / frame / engine.sample_rate \
                    > settings.max_stream_s:
                await _close(ws, 1008, f"stream longer than the limit of "
                                       f"{settings.max_stream_s:g} s")
                return
            try:
                results = await anyio.to_thread.run_sync(engine.feed_bytes, data, fmt,
                                                         time.perf_counter(),
                                                         limiter=limiter)
            except BinserError as exc:
                await _close(ws, 1007, str(exc))
                return
            for r in results:
                await ws.send_json({"type": "window", **r.to_dict()})
            continue
        text = message.get("text")
        if text is not None and len(text) > settings.max_message_bytes:
            await _close(ws, 1009, "text message too large")
            return
        try:
            body = json.loads(text or "")
        except (json.JSONDecodeError, RecursionError):
            await _close(ws, 1007, "malformed JSON message")
            return
        kind = body.get("type") if isinstance(body, dict) else None
        if kind == "stop":
            results = await anyio.to_thread.run_sync(engine.finish, limiter=limiter)
            for r in results:
                await ws.send_json({"type": "window", **r.to_dict()})
            await ws.send_json({"type": "end", "summary": engine.summary()})
            await ws.close(1000)
            return
        await _close(ws, 1003, f"unexpected message type {kind!r} (binary PCM or "
                               "{\"type\": \"stop\"} expected)")
        return


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
             "per_channel": body.get("per_channel", False)}
    unknown = set(body) - {"type", "sample_rate", "channels", "format", "per_channel"}
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
