"""The ``binser stream`` and ``binser serve`` commands and ``predict --per-channel``
(called from :mod:`binser.cli`)."""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import AudioError, ConfigError

if TYPE_CHECKING:   # numpy and the engine are imported where used: `binser --help` starts fast
    import numpy as np

    from .stream import StreamEngine


MIC_TIMEOUT_S = 5.0   # a microphone silent (no callbacks) this long is an error
SPEAKER_STATS_CHOICES = ("online", "fallback")   # binser.serve.stream.SPEAKER_STATS


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


SERVE_COMMANDS = {
    "stream": "emotion per analysis window of a file played in real time, raw PCM on "
              "standard input, or a microphone",
    "serve": "HTTP + WebSocket server with a web page (needs the 'serve' extra)",
}


def add_parser(name: str, p: argparse.ArgumentParser) -> None:
    """The options of the ``stream`` or ``serve`` sub-command (``name``) on ``p``."""
    (_stream_options if name == "stream" else _serve_options)(p)


def _stream_options(p: argparse.ArgumentParser) -> None:
    from .stream import FORMATS

    p.add_argument("model", help="model folder written by 'binser train'")
    p.add_argument("source", nargs="?", default=None,
                   help="audio/video file, a folder or quoted glob pattern (its files one "
                        "after another, each output naming its file), or - for raw "
                        "interleaved PCM on standard input (see --rate, --channels, "
                        "--format); omit with --mic")
    p.add_argument("--mic", action="store_true",
                   help="record from the default microphone (needs 'sounddevice')")
    p.add_argument("--rate", type=positive_int, default=16000,
                   help="standard input / microphone sample rate, Hz (default %(default)s)")
    p.add_argument("--channels", type=int, choices=(1, 2), default=2,
                   help="standard input / microphone channels (default %(default)s)")
    p.add_argument("--format", choices=tuple(FORMATS), default="s16le",
                   help="standard input sample format (default %(default)s)")
    p.add_argument("--chunk-ms", type=positive_float, default=100.0,
                   help="audio handed to the engine at a time, ms (default %(default)s)")
    p.add_argument("--fast", action="store_true",
                   help="a file as fast as possible instead of in real time")
    p.add_argument("--per-channel", action="store_true",
                   help="two-party recording: one speaker per channel, one timeline each")
    p.add_argument("--silence-db", type=float, default=None,
                   help="a channel (per-channel mode; default -50) or window (binaural mode; "
                        "default: off) quieter than this many dBFS is reported silent")
    p.add_argument("--duration", type=positive_float, default=None,
                   help="stop after this many seconds of audio (default: the end of the "
                        "file or input; Ctrl-C for a microphone)")
    p.add_argument("--speaker-stats", choices=SPEAKER_STATS_CHOICES, default="online",
                   help="speaker-normalised models: online (default): running statistics of "
                        "the stream's own windows (per channel with --per-channel; each file "
                        "of a folder its own stream), the average training speaker until "
                        "--warm-up windows; fallback: the average training speaker throughout")
    p.add_argument("--warm-up", type=positive_int, default=None, metavar="N",
                   help="online speaker statistics: windows with signal before a stream's own "
                        "statistics are used (default: the model's, 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def _serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder written by 'binser train'")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default %(default)s; any other needs --token)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    p.add_argument("--token", default=os.environ.get("BINSER_TOKEN"),
                   help="secret required by the API and the stream (default $BINSER_TOKEN)")
    p.add_argument("--max-upload-mb", type=positive_float, default=50.0,
                   help="largest upload, MiB (default %(default)s)")
    p.add_argument("--max-stream-s", type=positive_float, default=3600.0,
                   help="longest stream, seconds of audio (default %(default)s)")
    p.add_argument("--max-streams", type=positive_int, default=4,
                   help="concurrent WebSocket streams (default %(default)s)")
    p.add_argument("--threads", type=positive_int, default=2,
                   help="model computations run at once (default %(default)s)")
    p.add_argument("--max-duration-s", type=positive_float, default=600.0,
                   help="longest upload, seconds of audio as its header declares; the "
                        "decoded size (rate x duration x channels) is capped at 96000 x this "
                        "(default %(default)s)")
    p.add_argument("--max-queue", type=int, default=8,
                   help="uploads waiting for a compute slot before new ones get 503 with "
                        "Retry-After (default %(default)s)")
    p.add_argument("--max-connections", type=positive_int, default=64,
                   help="open connections before new requests get 503 (default %(default)s)")
    p.add_argument("--stream-idle-s", type=positive_float, default=30.0,
                   help="a stream with no message for this long after start is closed "
                        "(default %(default)s)")
    p.add_argument("--max-streams-per-client", type=positive_int, default=2,
                   help="concurrent streams from one client address (default %(default)s)")
    p.add_argument("--max-backlog-s", type=positive_float, default=30.0,
                   help="seconds of audio a stream may run ahead of the computation before it "
                        "is closed with an error (default %(default)s)")
    p.add_argument("--shutdown-timeout", type=positive_float, default=10.0,
                   help="on shutdown, seconds open streams and requests get before they are "
                        "closed (streams with code 1012) (default %(default)s)")
    p.add_argument("--quantize", choices=("int8", "bf16"), default=None,
                   help="Whisper models: int8 dynamically quantised encoder Linear layers, or "
                        "bf16 products in the encoder's Linear and Conv1d layers (faster on "
                        "CPUs with bfloat16 instructions); the scores change: see "
                        "binser.serve.quantize and RESULTS.md")
    p.add_argument("--window-batch", type=positive_int, default=16,
                   help="Whisper timeline/stream windows (and a file's views) encoded per "
                        "call: faster; scores equal predict's within 1e-4 (1: bit for bit) "
                        "(default %(default)s)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a Host name to serve besides the loopback names (repeatable; '*': "
                        "any; default for a non-loopback --host with --token: any)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web page origin (scheme://host:port) allowed to call the API and "
                        "open streams besides the server's own (repeatable)")


# ------------------------------------------------------------------------------ stream

def _stdin_chunks(args, chunk: float) -> Iterator[bytes]:
    from .stream import FORMATS

    frame = FORMATS[args.format].itemsize * args.channels
    size = max(1, int(chunk * args.rate)) * frame
    stdin = sys.stdin.buffer
    rest = b""
    while True:
        data = stdin.read(size)
        if not data:
            break
        data = rest + data
        cut = len(data) - len(data) % frame
        rest = data[cut:]
        yield data[:cut]
    if rest:
        print(f"binser: warning: standard input ended inside a frame; its last {len(rest)} "
              f"byte(s) were ignored (a frame is {frame} bytes: {args.channels} channel(s) "
              f"of {args.format})", file=sys.stderr)


def _mic_chunks(args, chunk: float) -> Iterator[np.ndarray]:
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise ConfigError(f"--mic needs the 'sounddevice' package and PortAudio ({exc})") \
            from exc
    import queue

    blocks: queue.Queue = queue.Queue()
    with sounddevice.InputStream(samplerate=args.rate, channels=args.channels,
                                 dtype="float32", blocksize=max(1, int(chunk * args.rate)),
                                 callback=lambda data, *_: blocks.put(data.copy())):
        print("binser: recording; Ctrl-C to stop", file=sys.stderr)
        while True:
            try:
                yield blocks.get(timeout=MIC_TIMEOUT_S)
            except queue.Empty:
                raise AudioError(None, f"no audio from the microphone for {MIC_TIMEOUT_S:g} "
                                       "s (is it connected and allowed?)") from None


def _show(result, as_json: bool, path: str | None = None) -> None:
    """One window; ``path`` (a file of a folder or pattern) is added to the JSON object."""
    from .stream import format_window

    if as_json:
        named = {"path": path} if path is not None else {}
        print(json.dumps({"type": "window", **named, **result.to_dict()}), flush=True)
    else:
        print(format_window(result), flush=True)


def run_stream(args: argparse.Namespace) -> int:
    from ..inputs import expand_inputs, expanded
    from ..model import Model
    from .stream import StreamEngine, check_speaker_stats, decode_pcm

    if args.mic == (args.source is not None):
        raise ConfigError("give one source: a file, - for standard input, or --mic")
    live = args.source == "-" or args.mic
    files = None if live else expand_inputs([args.source])   # folders and globs, up front
    model = Model.load(args.model)
    check_speaker_stats(model, args.speaker_stats, args.warm_up)   # before any audio
    chunk = args.chunk_ms / 1000.0
    if live:
        engine = StreamEngine(model, args.rate, args.channels, per_channel=args.per_channel,
                              silence_db=args.silence_db, **_speaker_stats(args))
        source = _stdin_chunks(args, chunk) if not args.mic else _mic_chunks(args, chunk)
        pieces = (decode_pcm(p, args.channels, args.format) if isinstance(p, bytes) else p
                  for p in source)
        try:
            _feed_all(engine, pieces, args)
        except KeyboardInterrupt as stop:   # Ctrl-C ends a recording: last windows, summary
            if not args.mic or type(stop) is not KeyboardInterrupt:   # SIGTERM stays fatal
                raise
            print("binser: recording stopped", file=sys.stderr)
        _finish(engine, args)
        return 0
    named = expanded([args.source])   # a folder or pattern: every output names its file
    for path in files:
        if named and not args.json:
            print(f"== {path}", flush=True)
        tag = str(path) if named else None
        _finish(_play_file(model, args, chunk, str(path), tag), args, tag)
    return 0


def _speaker_stats(args) -> dict[str, Any]:
    """The engine's ``speaker_stats`` and ``warm_up`` from ``--speaker-stats``/``--warm-up``."""
    return {"speaker_stats": args.speaker_stats, "warm_up": args.warm_up}


def _finish(engine: StreamEngine, args, path: str | None = None) -> None:
    """The engine's last windows and its summary (JSON: an ``end`` object)."""
    for r in engine.finish():
        _show(r, args.json, path)
    summary = engine.summary()
    if args.json:
        named = {"path": path} if path is not None else {}
        print(json.dumps({"type": "end", **named, "summary": summary}), flush=True)
    else:
        print(_summary_text(summary), flush=True)


def _feed_all(engine: StreamEngine, pieces: Iterator[np.ndarray], args,
              path: str | None = None) -> None:
    """Feed ``(n, channels)`` pieces until they end or ``--duration`` is reached, showing
    each completed window."""
    limit = None if args.duration is None else int(round(args.duration * engine.sample_rate))
    for piece in pieces:
        if limit is not None:
            piece = piece[:max(0, limit - engine.received)]
        for r in engine.feed(piece):
            _show(r, args.json, path)
        if limit is not None and engine.received >= limit:
            break


def _play_file(model, args, chunk: float, source: str, path: str | None = None
               ) -> StreamEngine:
    """File ``source`` (decoded at the model's rate) through a new engine in
    ``chunk``-second pieces, paced at real time unless ``--fast``; ``path`` names it in
    JSON output."""
    from ..preflight import checked_audio
    from .stream import StreamEngine, declared_work_error

    sr = model.frontend.sample_rate
    too_much = declared_work_error(source, model.frontend.max_duration_s)
    if too_much is not None:   # checked from the header, before decoding
        raise AudioError(source, too_much)
    audio = checked_audio(source, model.frontend)    # predict's input checks
    engine = StreamEngine(model, sr, audio.shape[0], per_channel=args.per_channel,
                          silence_db=args.silence_db, **_speaker_stats(args))
    step = max(1, int(chunk * sr))
    began = time.monotonic()

    def paced() -> Iterator[np.ndarray]:
        for s in range(0, audio.shape[1], step):
            frames = audio[:, s:s + step].T
            if not args.fast:   # real time: this chunk is "recorded" once its end is due
                due = began + (s + len(frames)) / sr
                time.sleep(max(0.0, due - time.monotonic()))
            yield frames

    _feed_all(engine, paced(), args, path)
    return engine


def _summary_text(summary: dict[str, Any]) -> str:
    def one(s):
        if s["label"] is None:
            return "(silent throughout)"
        best = sorted(s["scores"].items(), key=lambda kv: -kv[1])[:3]
        return f"{s['label']}  ({', '.join(f'{k} {v:.2f}' for k, v in best)})"

    head = (f"overall over {summary['windows']} windows, {summary['duration_s']:.2f} s "
            f"({summary['rule']}): ")
    if "channels" in summary:
        return head + "  |  ".join(f"{n}: {one(s)}" for n, s in summary["channels"].items())
    return head + one(summary)


# ------------------------------------------------------------------------------ predict

def predict_per_channel(model, args: argparse.Namespace) -> int:
    """``predict --per-channel``: each file through the engine, one timeline per channel."""
    from ..errors import BinserError
    from .stream import analyse_file, format_window

    out, failed = [], 0
    for path in args.files:
        try:
            result = analyse_file(model, path, per_channel=True)
        except BinserError as exc:
            if args.on_error == "fail":
                raise
            failed += 1
            result = {"path": str(path), "error": str(exc)}
        out.append(result)
    if getattr(args, "plot", None) is not None:   # one panel per file and channel
        from ..plots import channel_panels, plot_timeline

        panels = channel_panels(out)
        if panels:
            plot_timeline(panels, model.labels, args.plot)
    if not args.timeline:
        for result in out:
            result.pop("windows", None)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for result in out:
            if "error" in result:
                print(f"{result['path']}: ERROR {result['error']}")
                continue
            print(f"{result['path']}: {_summary_text(result['summary'])}")
            for w in result.get("windows", []):
                print("    " + format_window(w))
    return 1 if failed else 0


# ------------------------------------------------------------------------------ serve

def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_settings(args: argparse.Namespace):
    """The :class:`~binser.serve.app.ServeSettings` of ``binser serve``'s options."""
    from .app import ServeSettings
    from .guard import LOOPBACK_HOSTS

    if args.max_queue < 0:
        raise ConfigError(f"--max-queue must be 0 or more, got {args.max_queue}")
    hosts = tuple(LOOPBACK_HOSTS) + tuple(args.allow_host)
    if not is_loopback(args.host) and not args.allow_host:
        hosts = ("*",)   # reachable by any name; the token guards it
    elif args.host not in ("0.0.0.0", "::"):
        hosts += (args.host,)
    return ServeSettings(max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                         max_stream_s=args.max_stream_s, max_streams=args.max_streams,
                         compute_threads=args.threads, token=args.token or None,
                         max_duration_s=args.max_duration_s, max_queue=args.max_queue,
                         max_connections=args.max_connections,
                         stream_idle_s=args.stream_idle_s,
                         max_streams_per_client=args.max_streams_per_client,
                         max_backlog_s=args.max_backlog_s,
                         shutdown_timeout_s=args.shutdown_timeout,
                         window_batch=args.window_batch,
                         allowed_hosts=hosts, allowed_origins=tuple(args.allow_origin))


def run_serve(args: argparse.Namespace) -> int:
    try:
        import logging

        import uvicorn

        from .app import create_app
        from .guard import LOG, server_config
    except ImportError as exc:
        raise ConfigError(f"binser serve needs the 'serve' extra: pip install "
                          f"'binser[serve]' ({exc})") from exc
    from ..model import Model

    if not is_loopback(args.host) and not args.token:
        raise ConfigError(f"--host {args.host} is reachable from other machines: give "
                          "--token SECRET (or $BINSER_TOKEN), or bind 127.0.0.1")
    settings = serve_settings(args)
    model = Model.load(args.model)
    if args.quantize:
        from .quantize import quantize_model

        quantize_model(model, args.quantize)
    app = create_app(model, settings)
    if not LOG.handlers:   # one line per upload with its timings, on stderr
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("binser: %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
    print(f"binser: serving {args.model} on http://{args.host}:{args.port}/ "
          f"(OpenAPI schema at /openapi.json)", file=sys.stderr)
    uvicorn.Server(server_config(app, settings, host=args.host, port=args.port)).run()
    return 0
