"""The HTTP front door of ``binser serve``: checks made before a request reaches the app.

:class:`Guard` is a pure ASGI middleware around the FastAPI app. For every HTTP request and
WebSocket handshake, in this order, before any body byte is read:

1. **Host** must be in ``settings.allowed_hosts`` (loopback names by default; ``"*"``: any)
   and **Origin**, when the client sends one, must be the request's own origin
   (``scheme://Host``) or in ``settings.allowed_origins``: else 400 (HTTP) or a refused
   handshake (HTTP 403). This stops DNS rebinding and cross-site pages.
2. the **token** (``Authorization: Bearer`` or ``?token=``) on every path but ``/``,
   ``/static/*`` and ``/health``: else 401 (WebSockets: closed 1008 after the handshake,
   by the app, as before).
3. ``POST /predict`` only: **admission** (at most ``compute_threads + max_queue`` uploads
   in the server at once, else 503 with ``Retry-After``), then the **declared length**
   (``Content-Length`` over ``max_upload_bytes`` + 64 KiB of multipart framing: 413), then,
   while the body arrives, its bytes are **counted** (chunked bodies too): past the same
   limit the server answers 413 at once and the app sees a disconnect, so at most the limit
   is ever buffered. A body that stalls ``body_timeout_s`` seconds gets 408.

Every HTTP response gets the security headers :data:`SECURITY_HEADERS` (a Content Security
Policy allowing only this origin, ``nosniff``, no framing, no referrer). Each ``/predict``
is logged on the ``binser.serve`` logger (INFO): status, bytes, and milliseconds spent
reading the body, waiting for a compute slot, and computing (the app logs each stream
there too when it ends).

:class:`TimedH11Protocol` is uvicorn's h11 protocol with a header read timeout: a
connection that has not completed a request's headers within ``header_timeout_s`` seconds
of connecting (or of its previous response) is closed.
"""
from __future__ import annotations

import json
import logging
import math
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio

LOG = logging.getLogger("binser.serve")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
PUBLIC_PATHS = ("/", "/health")
FRAMING_SLACK = 1 << 16   # multipart boundaries and part headers beyond the file itself
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-opener-policy", b"same-origin")]


def host_name(host: str) -> str:
    """``"[::1]:8000"`` -> ``"::1"``, ``"Example.org:80"`` -> ``"example.org"``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class Refused(Exception):
    """A request the guard answers itself (status, message, extra headers)."""

    def __init__(self, status: int, message: str, headers: list | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or []


class Guard:
    """The ASGI middleware described in the module docstring. ``state``: the app's state
    (``settings``, ``authorised``, ``uploads`` counter, ``compute_s`` recent mean)."""

    def __init__(self, app, state):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        try:
            self._check_origin(scope, headers)
        except Refused as refused:
            LOG.warning("refused %s %s: %s", scope["type"], scope.get("path"), refused.message)
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await _respond(send, refused)
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        send = _secured(send)
        try:
            self._check_token(scope, headers)
        except Refused as refused:
            return await _respond(send, refused)
        if scope["path"] == "/predict" and scope["method"] == "POST":
            return await self._upload(scope, receive, send, headers)
        return await self.app(scope, receive, send)

    # ---------------------------------------------------------------- checks

    def _check_origin(self, scope, headers) -> None:
        settings = self.state.settings
        host = headers.get("host", "")
        if "*" not in settings.allowed_hosts and host_name(host) not in {
                h.lower() for h in settings.allowed_hosts}:
            raise Refused(400, f"host {host_name(host)!r} is not served here (allowed: "
                               f"{', '.join(settings.allowed_hosts)}; see --allow-host)")
        origin = headers.get("origin")
        if origin is None:
            return
        scheme = {"ws": "http", "wss": "https"}.get(scope["scheme"], scope["scheme"])
        own = f"{scheme}://{host}".lower()
        allowed = {o.rstrip("/").lower() for o in settings.allowed_origins}
        if origin.rstrip("/").lower() != own and origin.rstrip("/").lower() not in allowed \
                and "*" not in allowed:
            raise Refused(403, f"origin {origin[:100]!r} is not allowed (see --allow-origin)")

    def _check_token(self, scope, headers) -> None:
        path = scope["path"]
        if path in PUBLIC_PATHS or path.startswith("/static/"):
            return
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode(
            "latin-1")).items()}
        if not self.state.authorised(headers, query):
            raise Refused(401, "missing or wrong token (Authorization: Bearer TOKEN or "
                               "?token=TOKEN)")

    # ---------------------------------------------------------------- uploads

    async def _upload(self, scope, receive, send, headers) -> None:
        settings, state = self.state.settings, self.state
        room = settings.compute_threads + settings.max_queue
        if state.uploads >= room:
            wait = max(1, math.ceil(state.compute_s * (state.uploads + 1)
                                    / settings.compute_threads))
            LOG.info("POST /predict 503: %d uploads in the server (limit %d)",
                     state.uploads, room)
            return await _respond(send, Refused(
                503, f"server busy: {state.uploads} uploads in progress or queued; retry "
                     f"in {wait} s", [(b"retry-after", str(wait).encode())]))
        limit = settings.max_upload_bytes + FRAMING_SLACK
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return await _respond(send, _too_large(settings))
        state.uploads += 1
        timing = scope.setdefault("binser.timing", {})
        began = time.perf_counter()
        counted = {"bytes": 0, "done": False, "answered": False, "status": None}

        async def counted_receive():
            if counted["answered"]:
                return {"type": "http.disconnect"}
            try:
                with anyio.fail_after(settings.body_timeout_s if not counted["done"]
                                      else None):
                    message = await receive()
            except TimeoutError:
                await answer(Refused(408, f"request body stalled for more than "
                                          f"{settings.body_timeout_s:g} s"))
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                counted["bytes"] += len(message.get("body", b""))
                if counted["bytes"] > limit:
                    await answer(_too_large(settings))
                    return {"type": "http.disconnect"}
                if not message.get("more_body", False):
                    counted["done"] = True
                    timing["body_ms"] = 1000 * (time.perf_counter() - began)
            return message

        async def answer(refused: Refused) -> None:
            counted["answered"] = True
            counted["status"] = refused.status
            await _respond(send, refused)

        async def guarded_send(message):
            if counted["answered"]:
                return   # the guard has answered: the app's late reply is dropped
            if message["type"] == "http.response.start":
                counted["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not counted["answered"]:
                raise
        finally:
            state.uploads -= 1
            total = 1000 * (time.perf_counter() - began)
            if "compute_ms" in timing:   # a running mean of the compute time (Retry-After)
                state.compute_s = 0.8 * state.compute_s + 0.2 * timing["compute_ms"] / 1000
            LOG.info("POST /predict %s %d bytes in %.1f ms (body %.1f, wait %.1f, compute "
                     "%.1f ms)%s", counted["status"], counted["bytes"], total,
                     timing.get("body_ms", 0.0), timing.get("wait_ms", 0.0),
                     timing.get("compute_ms", 0.0),
                     " cancelled: the client left" if timing.get("cancelled") else "")


def _too_large(settings) -> Refused:
    return Refused(413, f"upload larger than the limit of {settings.max_upload_bytes} bytes")


def _secured(send):
    async def secured_send(message):
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            message = {**message, "headers": list(message.get("headers", [])) + [
                h for h in SECURITY_HEADERS if h[0] not in names]}
        await send(message)
    return secured_send


async def _respond(send, refused: Refused) -> None:
    body = json.dumps({"detail": refused.message}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *refused.headers]
    if refused.status in (400, 408, 413):
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------ uvicorn

def timed_h11_protocol(header_timeout_s: float):
    """uvicorn's h11 protocol class closing connections whose request headers do not
    arrive within ``header_timeout_s`` seconds."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():
                self.transport.close()   # headers still incomplete: a slow or idle client

        def handle_websocket_upgrade(self, event) -> None:
            self._disarm()
            super().handle_websocket_upgrade(event)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


def server_config(app, settings, host: str = "127.0.0.1", port: int = 8000, **kw: Any):
    """The ``uvicorn.Config`` of ``binser serve``: the h11 protocol with the header timeout,
    ``limit_concurrency``, ``timeout_keep_alive``, h11's header size limit, the WebSocket
    message limit, ``timeout_graceful_shutdown``."""
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, http=timed_h11_protocol(settings.header_timeout_s),
        limit_concurrency=settings.max_connections, timeout_keep_alive=5,
        h11_max_incomplete_event_size=16 << 10,
        ws_max_size=settings.max_message_bytes + 4096,
        timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_timeout_s)),
        server_header=False, **{"log_level": "warning", **kw})

