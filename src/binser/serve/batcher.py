"""Cross-stream batching of encoder windows for ``binser serve``.

One :class:`WindowEncoder` is shared by all the real-time streams of a server. A stream's
compute thread prepares its Whisper windows as before (views, silent views, log-Mel:
:func:`binser.features.encode_windows`) and, inside :func:`binser.features.window_batch`
with ``encoder=``, hands the windows' Mel chunks to the shared encoder and waits. The
encoder's own thread takes EVERY request queued at that moment (several streams whose
windows became complete together: real-time streams started together complete a window
every 0.5 s at the same instants), groups their chunks by backbone, Mel shape and layer set,
and encodes each group in calls of at most ``batch`` chunks, spread over ``workers`` threads
of one intra-op thread each (:func:`binser.parallel.single_thread_map`), in arrival order
(the cuts: :meth:`WindowEncoder.plan`). Each request gets its own chunks' frames back, in
its order, as soon as its last call is done.

Numbers: a chunk's frames equal its unbatched encoding (:meth:`~binser.backbones.whisper.
WhisperBackbone.encode_chunk`) to float32 rounding (within 1e-5 relative: a batched matrix
product may sum in another order), and may differ by that rounding with the company of the
batch; the same relaxation as one stream's own window batch (:func:`binser.features.
window_batch`). A call whose encoding raises gives that exception to each request with a
chunk in it (the other requests are unaffected).

Threads: the encoder's thread starts on the first request and ends after ``idle_s``
seconds without one (a later request starts it again); it is a daemon thread, so it never
keeps a process alive. ``calls`` counts encoder calls and ``chunks`` the chunks encoded,
``rounds`` the times the queue was taken (statistics for tests and logs).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError

IDLE_S = 10.0     # the encoder thread ends after this long without a request
MIN_CALL = 4      # chunks per call before a call may end at a request's end (plan())


@dataclass(eq=False)
class _Request:
    """One caller's Mel chunks ``[(n_mels, T_i), ...]`` for ``backbone`` at ``layers``."""

    backbone: Any
    mels: list[np.ndarray]
    layers: tuple[int, ...]
    result: list[dict[int, np.ndarray] | None] = field(default_factory=list)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class WindowEncoder:
    """Encode Mel chunks of many threads together (see the module docstring).

    ``batch``: most chunks per encoder call (>= 1); ``workers``: encoder calls at once
    (None: one per core this process may use); ``idle_s``: seconds the encoder thread waits
    for work before it ends."""

    def __init__(self, batch: int = 16, workers: int | None = None, idle_s: float = IDLE_S):
        from ..parallel import check_workers

        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"window batch must be a positive integer, got {batch!r}")
        self.batch = batch
        self.workers = check_workers(workers)
        self.idle_s = float(idle_s)
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._thread: threading.Thread | None = None
        self.calls = 0
        self.chunks = 0
        self.rounds = 0

    @property
    def pending(self) -> int:
        """Requests queued and not yet taken by the encoder thread."""
        with self._cond:
            return len(self._pending)

    def encode(self, backbone, mels: Sequence[np.ndarray], layers: Sequence[int]
               ) -> list[dict[int, np.ndarray]]:
        """Per chunk ``(n_mels, T_i)``, layer -> ``(ceil(T_i / 2), d)`` float32 frames
        (:meth:`~binser.backbones.whisper.WhisperBackbone.encode_chunks`), computed in a
        batch with whatever other threads asked for at the same time."""
        request = _Request(backbone, [np.asarray(m, np.float32) for m in mels],
                           tuple(int(k) for k in layers))
        request.result = [None] * len(request.mels)
        if not request.mels:
            return []
        with self._cond:
            self._pending.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="binser-window-encoder")
                self._thread.start()
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending:
                    self._cond.wait(self.idle_s)
                if not self._pending:
                    self._thread = None      # idle: a later request starts a new thread
                    return
                taken, self._pending = self._pending, []
                self.rounds += 1
            self._serve(taken)

    def _serve(self, taken: list[_Request]) -> None:
        """Encode every chunk of ``taken`` (:meth:`plan`), waking each request as soon as
        its last call is done."""
        from ..parallel import single_thread_map

        left = {id(r): len(r.mels) for r in taken}

        def finished(call: list[tuple[_Request, int]]) -> None:
            for request, _ in call:
                left[id(request)] -= 1
                if not left[id(request)]:
                    request.done.set()

        calls = self.plan(taken)
        try:
            single_thread_map(self._encode_call, calls, self.workers, on_result=finished)
        except BaseException as exc:    # noqa: BLE001 - handed to every waiting caller
            for request in taken:       # (the encoder thread goes on serving)
                if not request.done.is_set():
                    request.error = request.error or exc
                    request.done.set()

    def plan(self, taken: list[_Request]) -> list[list[tuple[_Request, int]]]:
        """The encoder calls for ``taken``: ``[(request, chunk index), ...]`` per call.

        Chunks are grouped by backbone, Mel shape and layers, in arrival order. A group of
        ``n`` chunks is cut into calls of at most ``cap = min(batch, ceil(n / workers))``
        chunks, and also at the end of a request once a call holds :data:`MIN_CALL` chunks:
        larger calls are no faster per chunk on the CPU, and smaller ones let the earlier
        requests go as soon as their own calls are done."""
        groups: dict[tuple, list[tuple[_Request, int]]] = {}
        for request in taken:
            for j, mel in enumerate(request.mels):
                key = (id(request.backbone), mel.shape, request.layers)
                groups.setdefault(key, []).append((request, j))
        calls = []
        for members in groups.values():
            cap = min(self.batch, -(-len(members) // self.workers))
            call: list[tuple[_Request, int]] = []
            for k, (request, j) in enumerate(members):
                call.append((request, j))
                ends = k + 1 == len(members) or members[k + 1][0] is not request
                if len(call) >= cap or (ends and len(call) >= MIN_CALL):
                    calls.append(call)
                    call = []
            if call:
                calls.append(call)
        return calls

    def _encode_call(self, call: list[tuple[_Request, int]]) -> None:
        """One encoder call for chunks of one shape; its frames (or the exception it
        raised) go to their requests."""
        first = call[0][0]
        try:
            frames = first.backbone.encode_chunks([r.mels[j] for r, j in call], first.layers)
        except Exception as exc:   # noqa: BLE001 - given to the requests of this call only
            for request, _ in call:
                request.error = exc
            return
        with self._cond:
            self.calls += 1
            self.chunks += len(call)
        for (request, j), f in zip(call, frames):
            request.result[j] = f
