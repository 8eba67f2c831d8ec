"""Streaming engine: PCM chunks of any size in, one result per analysis window out.

:class:`StreamEngine` takes interleaved PCM (1 or 2 channels, a declared sample rate,
float32 or int16) in chunks of any size and returns a :class:`WindowResult` for every
analysis window as soon as the audio it needs has arrived; :meth:`StreamEngine.finish`
scores the windows that need the end of the stream. Windows and numbers:

* **Image-CNN models** (family ``imagenet``): the windows are ``Model.predict``'s timeline
  segments: window ``k`` covers log-Mel frames ``[k*hop, k*hop + frames)`` (64 and 30 frames
  by default: 0.64 s every 0.3 s). Frame ``t`` is computed from the samples
  ``[t*hop_length - n_fft//2, t*hop_length + n_fft//2)`` exactly as the centred whole-file
  log-Mel does (zeros before the start and after the end of the stream), so a window is
  complete once ``(k*hop + frames - 1)*hop_length + n_fft//2`` samples have arrived (about
  0.66 s after its start) and its image, features and scores equal the whole-file ones. A
  stream shorter than one segment gets one segment at :meth:`finish` (padded with its
  minimum, as predict does).
* **Whisper models** (family ``whisper``): the windows are ``Model.predict``'s timeline
  windows (1 s every 0.5 s: samples ``[8000k, 8000k + 16000)`` at 16 kHz; at the end of the
  stream the last may be shorter and the count follows
  :func:`binser.model.window_sample_spans`), each scored as a file holding exactly that
  window's audio by the same function predict uses (:meth:`binser.model.Model.score_clips`),
  so a window is complete once its last sample has arrived and its numbers equal predict's
  timeline entry.

Silent views. Image-CNN models: ``Model.predict`` decides once per file which views carry
no signal (:func:`binser.views.silent_views`, -40 dB below the louder of left/right/mid);
the engine cannot see the future and decides per window, over the window's own samples
``[start, end)``. The two agree whenever a view is silent throughout (mono input, identical
channels, a dead channel) or nowhere; they can differ on a file whose Side is silent in
some windows only. Whisper models decide per window in both (the window is the file). A
window in which every view of the model is silent (digital silence) is reported
``silent`` without a label.

Per-channel mode (two-party recordings, one speaker per channel): each channel is scored
as a mono recording of its own (L = R = that channel, so the Side view is silent and the
other views decide, exactly as predict scores a mono file); there is no binaural fusion
across the channels. A channel whose RMS over the window's span is below ``silence_db``
dBFS (default -50) is reported silent there, without a label or scores.

Speaker-normalised models (``speaker_stats``): by default (``"online"``) each stream, and
in per-channel mode each channel, keeps running statistics of its own windows: a window's
pooled features (per view, views with signal only) join its stream's statistics and are
standardised with them (:meth:`binser.model.Model.online_statistics`; the window itself and
the earlier ones, never a later one) once ``warm_up`` windows (default: the model's
``min_utterances``, 5) have signal, before that with the average training speaker. Windows
overlap (1 s every 0.5 s for Whisper), so five windows are about three seconds of speech.
``"fallback"`` keeps the average training speaker throughout (every window standardised
alone, as before online normalisation existed). Each window says which was used in its
``speaker_norm`` field (per channel in per-channel mode; None for a model without speaker
normalisation), and the summary's ``speaker_norm`` states the mode and warm-up. A
stream's statistics live and die with its engine (a new stream starts from the fallback).

Resampling: a stream at another rate than the model's (16 kHz) is resampled with soxr's
streaming resampler (HQ, the quality ``load_audio`` uses); its output equals the one-shot
resampling of the whole file up to a few 1e-6, so results match predict within tolerance
but not bit for bit.

Memory: the engine keeps only the samples the next windows need (about one window plus one
hop, a ring of at most ~1.2 s per channel at 16 kHz) and running sums for the summary;
a chunk is processed in pieces of at most :data:`MAX_PIECE_S` seconds, so an endless input
in chunks of any size runs in bounded memory.

Latency (``latency_ms``): wall time from the moment the chunk holding a window's last
needed sample was handed to :meth:`StreamEngine.feed` (or :meth:`finish` was called; or its
``arrived`` time, which ``binser serve`` sets to when the WebSocket message was received, so
waiting for a compute slot counts) to the moment its result was ready.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from ..errors import AudioError, ConfigError

FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}
MIN_RATE, MAX_RATE = 8000, 192000
CHANNEL_NAMES = ("left", "right")
DEFAULT_SILENCE_DB = -50.0     # per-channel mode: a channel window below this is silent
SPEAKER_STATS = ("online", "fallback")   # speaker-normalised models: per-stream statistics
FALLBACK_NOTE = ("fallback: average training speaker (speaker_stats 'fallback': no running "
                 "statistics)")
MAX_PIECE_S = 1.0              # audio appended at a time inside feed()
_MAX_AMPLITUDE = 1e15


@dataclass
class WindowResult:
    """One analysis window. ``label``/``scores`` (fused) and ``views`` (per-view scores) in
    binaural mode; ``channels`` ({"left": {...}, "right": {...}}, each with ``label``,
    ``scores``, ``views``, ``silent_views``, ``silent``, ``speaker_norm``) in per-channel
    mode, where the top-level ``label`` is None. ``silent``: no view (binaural) carried
    signal here. ``speaker_norm``: speaker-normalised models, which statistics standardised
    this window (module docstring; None when silent, and for other models)."""

    index: int
    start_s: float
    end_s: float
    label: str | None
    scores: dict[str, float] = field(default_factory=dict)
    views: dict[str, dict[str, float]] = field(default_factory=dict)
    silent_views: list[str] = field(default_factory=list)
    silent: bool = False
    latency_ms: float = 0.0
    channels: dict[str, dict[str, Any]] | None = None
    speaker_norm: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_stream_params(sample_rate: Any, channels: Any, fmt: Any = "f32le") -> None:
    """ConfigError unless the stream parameters are usable."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) \
            or not MIN_RATE <= sample_rate <= MAX_RATE:
        raise ConfigError(f"sample_rate must be an integer in {MIN_RATE}..{MAX_RATE} Hz, "
                          f"got {sample_rate!r}")
    if isinstance(channels, bool) or channels not in (1, 2):
        raise ConfigError(f"channels must be 1 or 2, got {channels!r}")
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def check_speaker_stats(model, speaker_stats: Any, warm_up: Any = None) -> bool:
    """ConfigError unless ``speaker_stats`` is one of :data:`SPEAKER_STATS` and ``warm_up``
    (None or an integer >= 1) is given only where online statistics are used; True when
    they are (a speaker-normalised model and ``"online"``)."""
    from ..validation import check_choice

    check_choice(speaker_stats, SPEAKER_STATS, "speaker_stats")
    online = bool(model.speaker_norm) and speaker_stats == "online"
    if warm_up is not None and not online:
        raise ConfigError("warm_up is the warm-up of online speaker normalisation: it needs "
                          "a speaker-normalised model (train --speaker-norm) and "
                          "speaker_stats 'online'")
    if warm_up is not None and (isinstance(warm_up, bool) or not isinstance(warm_up, int)
                                or warm_up < 1):
        raise ConfigError(f"warm_up must be an integer >= 1, got {warm_up!r}")
    return online


def decode_pcm(data: bytes, channels: int, fmt: str = "f32le") -> np.ndarray:
    """Interleaved little-endian PCM bytes -> float32 ``(n, channels)`` (int16 scaled by
    1/32768); ConfigError for a partial frame or non-finite samples."""
    dtype = FORMATS[fmt]
    frame = dtype.itemsize * channels
    if len(data) % frame:
        raise ConfigError(f"{len(data)} bytes is not a whole number of {fmt} frames of "
                          f"{channels} channel(s) ({frame} bytes each)")
    x = np.frombuffer(data, dtype=dtype).astype(np.float32)
    if fmt == "s16le":
        x /= np.float32(32768.0)
    return x.reshape(-1, channels)


class _SegmentWindows:
    """Image-CNN windows: the front end's segments (window ``k`` starts at ``k*hop``
    samples; it is computed from the centred frames it covers, see the module docstring)."""

    def __init__(self, model):
        self.cfg = model.frontend
        if not self.cfg.center:
            raise ConfigError("streaming needs the centred log-Mel framing (center=True)")
        self.hop = self.cfg.segment_hop * self.cfg.hop_length
        self.length = self.cfg.segment_frames * self.cfg.hop_length

    def need(self, k: int) -> tuple[int, int]:
        """Samples ``[lo, hi)`` window ``k`` is computed from (lo may be negative)."""
        start = k * self.hop
        half = self.cfg.n_fft // 2
        last = start + (self.cfg.segment_frames - 1) * self.cfg.hop_length
        return start - half, last - half + self.cfg.n_fft

    def count(self, total: int) -> int:
        """Windows of a stream of ``total`` samples (predict's segment count)."""
        from ..spectrogram import n_segments

        frames = 1 + total // self.cfg.hop_length
        return n_segments(frames, self.cfg.segment_frames, self.cfg.segment_hop)


class _ClipWindows:
    """Encoder windows: 1 s every 0.5 s, each its own samples (``Model.window_spans``)."""

    def __init__(self, model):
        from ..model import window_hop_length

        self.model = model
        self.hop, self.length = window_hop_length(model.frontend.sample_rate)

    def need(self, k: int) -> tuple[int, int]:
        """Samples ``[lo, hi)`` window ``k`` is computed from: exactly its own."""
        start = k * self.hop
        return start, start + self.length

    def count(self, total: int) -> int:
        """Windows of a stream of ``total`` samples (predict's timeline count)."""
        return len(self.model.window_spans(total))


class _Analyser:
    """Windows over ONE source of 1 or 2 channels at the model's rate (see the module
    docstring): a ring of samples, window spans, features, scores."""

    def __init__(self, model, channels: int, silence_db: float | None,
                 online: dict[str, Any] | None = None, key: str = "(stream)"):
        self.model = model
        self.online, self.key = online, key   # running speaker statistics (or None)
        self.note = FALLBACK_NOTE if model.speaker_norm and online is None else None
        self.cfg = model.frontend
        self.sr = self.cfg.sample_rate
        self.channels = channels
        self.silence = None if silence_db is None else 10.0 ** (silence_db / 20.0)
        self.windows = (_ClipWindows if model.windowed else _SegmentWindows)(model)
        self.hop, self.length = self.windows.hop, self.windows.length
        self._score = self._score_clips if model.windowed else self._score_segments
        self.buf = np.zeros((channels, 0), np.float32)
        self.base = 0          # absolute index of buf[:, 0]
        self.total = 0         # samples received
        self.next = 0          # next window index
        self.mel_min: dict[str, float] = {}   # per view: smallest log-Mel value so far (dB)

    # ------------------------------------------------------------ spans

    def need(self, k: int) -> tuple[int, int]:
        """Samples ``[lo, hi)`` window ``k`` is computed from (lo may be negative)."""
        return self.windows.need(k)

    def samples(self, lo: int, hi: int) -> np.ndarray:
        """``(C, hi - lo)`` samples, zeros outside ``[0, total)``."""
        out = np.zeros((self.channels, hi - lo), np.float32)
        a, b = max(lo, self.base), min(hi, self.total)
        if b > a:
            out[:, a - lo:b - lo] = self.buf[:, a - self.base:b - self.base]
        return out

    def append(self, x: np.ndarray) -> None:
        self.buf = np.concatenate([self.buf, x], axis=1)
        self.total += x.shape[1]

    def trim(self) -> None:
        lo = max(0, self.need(self.next)[0])
        if lo > self.base:
            self.buf = self.buf[:, lo - self.base:].copy()
            self.base = lo

    def ready(self) -> list[int]:
        out = []
        k = self.next
        while self.need(k)[1] <= self.total:
            out.append(k)
            k += 1
        return out

    def remaining(self) -> list[int]:
        """Windows still due at the end of the stream (predict's count)."""
        if self.total == 0:
            return []
        return list(range(self.next, self.windows.count(self.total)))

    def span(self, k: int) -> tuple[int, int]:
        """The window's own samples ``[start, end)`` (clipped to the stream)."""
        start = k * self.hop
        return start, max(start, min(start + self.length, self.total))

    # ------------------------------------------------------------ views and scores

    def views(self, signal: np.ndarray) -> dict[str, np.ndarray]:
        from ..views import MonoInputWarning, binaural_views

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MonoInputWarning)
            return binaural_views(signal, self.cfg.side_scale)

    def score(self, ks: Sequence[int], final: bool) -> list[dict[str, Any]]:
        """Per window: ``{"silent", "silent_views", "label", "scores", "views"}``."""
        return self._score(ks, final)

    def _score_segments(self, ks: Sequence[int], final: bool) -> list[dict[str, Any]]:
        """Image-CNN windows: each window's segment image through the model's backbones."""
        from ..views import VIEWS, silent_views

        model = self.model
        items = []
        for k in ks:
            a, b = self.span(k)
            own = self.samples(a, b)
            if self.silence is not None and _rms(own) < self.silence:
                items.append(_silent_item(model.views))
                continue
            own_views = self.views(own)
            silent = silent_views({v: own_views[v] for v in VIEWS})
            quiet = [v for v in model.views if v in silent]
            if len(quiet) == len(model.views):
                items.append(_silent_item(quiet))
                continue
            items.append({"k": k, "silent": False, "silent_views": quiet})
        todo = [it for it in items if not it["silent"]]
        if todo:
            for it, features in zip(todo, self._cnn_rows(todo, final)):
                if self.online is not None:   # in window order: earlier windows only
                    pooled = {v: model.pool(v, [features[v]]) for v in model.views}
                    fused, per_view, notes = model.score_online(pooled, [self.key],
                                                                self.online)
                    it["speaker_norm"] = notes[0]
                else:
                    fused, per_view = model.score_segments({v: [features[v]]
                                                            for v in model.views})
                    it["speaker_norm"] = self.note
                it["label"] = model.labels[int(np.argmax(fused[0]))]
                it["scores"] = _labels(model.labels, fused[0])
                it["views"] = {v: _labels(model.labels, per_view[v][0]) for v in model.views}
                del it["k"]
        return items

    def _score_clips(self, ks: Sequence[int], final: bool = False) -> list[dict[str, Any]]:
        """Whisper windows: each window's samples scored as a file (Model.score_clips);
        per-channel mode first marks windows below the silence threshold."""
        items: list[dict[str, Any] | None] = []
        clips, where = [], []
        for k in ks:
            own = self.samples(*self.span(k))
            if self.silence is not None and _rms(own) < self.silence:
                items.append(_silent_item(self.model.views))
            else:
                where.append(len(items))
                items.append(None)
                clips.append(own)
        scored = []
        if clips and self.online is not None:   # in window order: earlier windows only
            scored = self.model.score_clips(clips, [self.key] * len(clips), online=self.online)
        elif clips:
            scored = [{**item, "speaker_norm": None if item["silent"] else self.note}
                      for item in self.model.score_clips(clips)]
        for j, item in zip(where, scored):
            items[j] = item
        return items  # type: ignore[return-value]

    def _cnn_rows(self, todo: list[dict], final: bool) -> list[dict[str, np.ndarray]]:
        import torch

        from ..features import cnn_features
        from ..spectrogram import _logmel_images, log_mel_batch

        model, cfg = self.model, self.cfg
        images = []   # per window {view: (1, 3, F, L)}
        for it in todo:
            k, silent = it["k"], set(it["silent_views"])
            wanted = [v for v in model.views if v not in silent]
            lo, hi = self.need(k)
            short = final and 1 + self.total // cfg.hop_length < cfg.segment_frames
            if short:   # the whole stream is shorter than one segment: predict's padding
                views = self.views(self.samples(0, self.total))
                mels = log_mel_batch(np.stack([views[v] for v in wanted]), self.sr, cfg)
            else:
                views = self.views(self.samples(lo, hi))
                mels = log_mel_batch(np.stack([views[v] for v in wanted]), self.sr,
                                     replace(cfg, center=False))
                # frames past the end of the stream: predict pads the last segment with
                # the utterance's minimum; the running minimum of every frame seen so far
                # (windows overlap, so they cover every frame) is that minimum
                valid = 1 + self.total // cfg.hop_length - k * cfg.segment_hop
                for i, v in enumerate(wanted):
                    seen = mels[i, :, :max(valid, 0)]
                    if seen.size:
                        self.mel_min[v] = min(self.mel_min.get(v, np.inf), float(seen.min()))
                    if valid < cfg.segment_frames:
                        mels[i, :, max(valid, 0):] = self.mel_min.get(v, float(mels[i].min()))
            imgs = _logmel_images(mels, cfg)
            images.append({v: imgs[i] for i, v in enumerate(wanted)})
        empty = np.zeros((0, model.backbones[model.views[0]].feature_dim), np.float32)
        rows: list[dict[str, np.ndarray]] = [{v: empty for v in model.views} for _ in todo]
        groups: dict[int, tuple[Any, list[str]]] = {}
        for v in model.views:
            groups.setdefault(id(model.backbones[v]), (model.backbones[v], []))[1].append(v)
        for backbone, views in groups.values():
            owners = [(i, v) for i, imgs in enumerate(images) for v in views if v in imgs]
            if not owners:
                continue
            batch = np.concatenate([images[i][v] for i, v in owners])
            backbone.model.eval()
            backbone.model.to(memory_format=torch.channels_last)
            out = cnn_features(backbone, batch)   # the extractor's own arithmetic
            for j, (i, v) in enumerate(owners):
                rows[i][v] = out[j:j + 1]
        return rows


class StreamEngine:
    """Feed PCM chunks, get a :class:`WindowResult` per complete analysis window.

    ``model``: a loaded :class:`binser.model.Model`. ``sample_rate``/``channels``: the
    stream's declared rate (8-192 kHz) and channel count (1 or 2). ``per_channel``: score
    each channel as its own speaker (needs 2 channels). ``silence_db``: per-channel mode's
    silence threshold (dBFS of a channel over a window); in binaural mode None (default)
    keeps predict's behaviour, a number also marks quiet windows silent.
    ``speaker_stats`` and ``warm_up`` (speaker-normalised models): ``"online"`` (default)
    running statistics of this stream's windows (per channel in per-channel mode) from
    ``warm_up`` windows with signal on (default: the model's ``min_utterances``), or
    ``"fallback"``: the average training speaker throughout. See the module docstring for
    the windows, their equality with ``Model.predict`` and the memory bound.
    """

    def __init__(self, model, sample_rate: int, channels: int, per_channel: bool = False,
                 silence_db: float | None = None, speaker_stats: str = "online",
                 warm_up: int | None = None):
        check_stream_params(sample_rate, channels)
        if per_channel and channels != 2:
            raise ConfigError("per-channel mode needs a 2-channel (stereo) stream, one "
                              f"speaker per channel; got {channels} channel(s)")
        online = check_speaker_stats(model, speaker_stats, warm_up)
        self.speaker_stats = speaker_stats if model.speaker_norm else None
        self.model = model
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.per_channel = bool(per_channel)
        if per_channel and silence_db is None:
            silence_db = DEFAULT_SILENCE_DB
        self.silence_db = silence_db
        sources = ([(name, 1) for name in CHANNEL_NAMES] if per_channel
                   else [(None, channels)])
        from ..model.predict import STREAM_KEY

        self.analysers = [(name, _Analyser(model, c, silence_db,
                                           model.online_normalisers(warm_up) if online
                                           else None, name or STREAM_KEY))
                          for name, c in sources]   # per channel: its own statistics
        self.warm_up = (self.analysers[0][1].online[model.views[0]].warm_up if online
                        else None)
        self.model_rate = model.frontend.sample_rate
        self.resampler = None
        if self.sample_rate != self.model_rate:
            import soxr

            self.resampler = soxr.ResampleStream(self.sample_rate, self.model_rate,
                                                 self.channels, dtype="float32",
                                                 quality="HQ")
        self.received = 0          # input frames (at the declared rate)
        self.finished = False
        self._sums: dict[str | None, np.ndarray] = {}
        self._counts: dict[str | None, int] = {}
        self._windows = 0
        self._silent: dict[str | None, int] = {}

    @property
    def speaker_norm(self) -> str | None:
        """The speaker statistics of this stream in words (None: the model has no speaker
        normalisation)."""
        if self.speaker_stats == "online":
            where = "each channel's" if self.per_channel else "this stream's"
            return (f"online: running statistics of {where} windows with signal, own from "
                    f"{self.warm_up} windows on, the average training speaker before")
        return FALLBACK_NOTE if self.speaker_stats == "fallback" else None

    @property
    def duration_s(self) -> float:
        """Seconds of audio received so far."""
        return self.received / self.sample_rate

    @property
    def window_s(self) -> float:
        a = self.analysers[0][1]
        return a.length / a.sr

    @property
    def hop_s(self) -> float:
        a = self.analysers[0][1]
        return a.hop / a.sr

    def feed_bytes(self, data: bytes, fmt: str = "f32le", arrived: float | None = None
                   ) -> list[WindowResult]:
        """:meth:`feed` for interleaved little-endian PCM bytes (``f32le`` or ``s16le``)."""
        return self.feed(decode_pcm(data, self.channels, fmt), arrived)

    def feed(self, pcm: np.ndarray, arrived: float | None = None) -> list[WindowResult]:
        """Append interleaved samples ``(n, channels)`` (or ``(n,)`` for one channel),
        full scale 1.0; return the windows completed by them (possibly none).
        ``arrived``: the ``time.perf_counter()`` at which the chunk arrived (a server that
        queues chunks for a compute slot passes it, so ``latency_ms`` includes the wait);
        default: now."""
        t0 = time.perf_counter() if arrived is None else float(arrived)
        if self.finished:
            raise ConfigError("the stream is finished; start a new StreamEngine")
        x = np.asarray(pcm, dtype=np.float32)
        if x.ndim == 1 and self.channels == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ConfigError(f"expected samples of shape (n, {self.channels}), got {x.shape}")
        if not np.isfinite(x).all() or (x.size and np.abs(x).max() > _MAX_AMPLITUDE):
            raise AudioError(None, "stream holds NaN, infinite or absurdly large samples")
        out: list[WindowResult] = []
        piece = max(1, int(MAX_PIECE_S * self.sample_rate))
        for s in range(0, len(x), piece):
            chunk = x[s:s + piece]
            self.received += len(chunk)
            if self.resampler is not None:
                chunk = self.resampler.resample_chunk(np.ascontiguousarray(chunk))
            self._append(chunk)
            out.extend(self._emit(t0, final=False))
        return out

    def finish(self) -> list[WindowResult]:
        """End of stream: the windows that needed it (predict's last windows)."""
        t0 = time.perf_counter()
        if self.finished:
            return []
        if self.resampler is not None:
            tail = self.resampler.resample_chunk(np.zeros((0, self.channels), np.float32),
                                                 last=True)
            self._append(np.asarray(tail, np.float32).reshape(-1, self.channels))
        self.finished = True
        return self._emit(t0, final=True)

    def summary(self) -> dict[str, Any]:
        """The overall result so far by :func:`binser.overall.overall` (the one rule shared
        with ``predict --timeline``: mean fused scores over the windows with signal, argmax
        label; per channel in per-channel mode), window counts, duration, ``rule`` (the rule
        in words)."""
        from ..overall import RULE, overall

        def one(key):
            return overall(self.model.labels, self._sums.get(key), self._counts.get(key, 0),
                           self._silent.get(key, 0))

        out: dict[str, Any] = {"duration_s": round(self.duration_s, 6),
                               "windows": self._windows, "rule": RULE}
        if self.speaker_norm is not None:
            out["speaker_norm"] = self.speaker_norm
        if self.per_channel:
            out["label"] = None
            out["channels"] = {name: one(name) for name in CHANNEL_NAMES}
        else:
            out.update(one(None))
            out["windows"] = self._windows
        return out

    # ------------------------------------------------------------ internals

    def _append(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk, np.float32)
        if not len(chunk):
            return
        if self.per_channel:
            for c, (_, analyser) in enumerate(self.analysers):
                analyser.append(np.ascontiguousarray(chunk[:, c][None, :]))
        else:
            self.analysers[0][1].append(np.ascontiguousarray(chunk.T))

    def _emit(self, t0: float, final: bool) -> list[WindowResult]:
        first = self.analysers[0][1]
        ks = first.remaining() if final else first.ready()
        if not ks:
            return []
        scored = {name: a.score(ks, final) for name, a in self.analysers}
        duration = self.received / self.sample_rate
        results = []
        for j, k in enumerate(ks):
            a, b = first.span(k)
            start = a / first.sr
            end = start + first.length / first.sr
            if final:
                end = max(start, min(end, duration))
            result = WindowResult(k, round(start, 6), round(end, 6), None)
            if self.per_channel:
                result.channels = {name: scored[name][j] for name, _ in self.analysers}
                result.silent = all(c["silent"] for c in result.channels.values())
            else:
                item = scored[None][j]
                result.label, result.scores = item["label"], item["scores"]
                result.views, result.silent = item["views"], item["silent"]
                result.silent_views = item["silent_views"]
                result.speaker_norm = item.get("speaker_norm")
            self._account(result)
            result.latency_ms = round(1000.0 * (time.perf_counter() - t0), 3)
            results.append(result)
        for _, analyser in self.analysers:
            analyser.next = ks[-1] + 1
            analyser.trim()
        return results

    def _account(self, result: WindowResult) -> None:
        self._windows += 1
        items = (result.channels.items() if result.channels is not None
                 else [(None, {"silent": result.silent, "scores": result.scores})])
        for key, item in items:
            if item["silent"]:
                self._silent[key] = self._silent.get(key, 0) + 1
                continue
            row = np.array([item["scores"][lab] for lab in self.model.labels])
            self._sums[key] = self._sums.get(key, 0.0) + row
            self._counts[key] = self._counts.get(key, 0) + 1


def _silent_item(views: Sequence[str]) -> dict[str, Any]:
    """A window without signal: no label, no scores, no speaker statistics."""
    return {"silent": True, "silent_views": list(views), "label": None, "scores": {},
            "views": {}, "speaker_norm": None}


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _labels(labels: Sequence[str], row: np.ndarray) -> dict[str, float]:
    return {lab: float(p) for lab, p in zip(labels, row)}


# --------------------------------------------------------------------------------------
# whole files through the engine (predict --per-channel)
# --------------------------------------------------------------------------------------

def analyse_file(model, path, per_channel: bool = False, silence_db: float | None = None,
                 chunk_s: float | None = None) -> dict[str, Any]:
    """Decode one file at the model's rate and run it through a :class:`StreamEngine`
    (in chunks of ``chunk_s`` seconds, default all at once) -> ``{"path", "summary",
    "windows": [WindowResult dicts]}``. The file passes the same input checks as
    ``predict`` first (:func:`binser.preflight.checked_audio`: unreadable, truncated,
    all-zero, too short or too long files raise :class:`AudioError`)."""
    from ..preflight import checked_audio

    sr = model.frontend.sample_rate
    audio = checked_audio(path, model.frontend)
    if per_channel and audio.shape[0] != 2:
        raise AudioError(path, "per-channel mode needs a stereo file (one speaker per "
                               f"channel); this one has {audio.shape[0]} channel(s)")
    engine = StreamEngine(model, sr, audio.shape[0], per_channel=per_channel,
                          silence_db=silence_db)
    frames = audio.T
    step = len(frames) if not chunk_s else max(1, int(chunk_s * sr))
    windows = []
    for s in range(0, len(frames), max(1, step)):
        windows.extend(engine.feed(frames[s:s + step]))
    windows.extend(engine.finish())
    return {"path": str(path), "summary": engine.summary(),
            "windows": [w.to_dict() for w in windows]}


SAMPLES_PER_SECOND_CAP = 96000   # decoded samples per second of allowed duration (48 kHz x 2)


def declared_work_error(path, max_duration_s: float, max_samples: int | None = None
                        ) -> str | None:
    """Why the header of ``path`` declares too much audio to decode (longer than
    ``max_duration_s`` seconds, or more than ``max_samples`` = rate x duration x channels
    samples, default :data:`SAMPLES_PER_SECOND_CAP` x ``max_duration_s``), else None; also
    None when the header cannot be read (the decoder then reports the real cause). A small
    compressed file declaring 192 kHz x 599 s would otherwise decode to gigabytes."""
    from ..audio import audio_info
    from ..errors import BinserError

    try:
        info = audio_info(path)
    except BinserError:
        return None
    limit = int(SAMPLES_PER_SECOND_CAP * max_duration_s) if max_samples is None \
        else int(max_samples)
    samples = info.frames * info.channels
    if info.duration_s > max_duration_s:
        return (f"audio too long: its header declares {info.duration_s:.1f} s, over the "
                f"limit of {max_duration_s:g} s (--max-duration-s)")
    if samples > limit:
        return (f"audio too large to decode: its header declares {info.sample_rate} Hz x "
                f"{info.duration_s:.1f} s x {info.channels} channel(s) = {samples} samples, "
                f"over the limit of {limit}")
    return None


def format_window(result: WindowResult | dict[str, Any], top: int = 3) -> str:
    """One text line per window: times, label and top scores (per channel in
    per-channel mode), ``silent`` where nothing was scored; speaker-normalised models add
    ``[speaker norm: fallback]`` or ``[speaker norm: own statistics over N windows]``."""
    r = result.to_dict() if isinstance(result, WindowResult) else result

    def part(item: dict[str, Any]) -> str:
        if item.get("silent"):
            return "(silent)"
        best = sorted(item["scores"].items(), key=lambda kv: -kv[1])[:top]
        note = item.get("speaker_norm")
        tag = "" if not note else (" [speaker norm: fallback]" if note.startswith("fallback")
                                   else f" [speaker norm: {note.split(' (')[0]}]")
        return f"{item['label']:<10s} " + ", ".join(f"{k} {v:.2f}" for k, v in best) + tag

    head = f"{r['start_s']:7.2f}-{r['end_s']:7.2f} s  "
    if r.get("channels"):
        return head + "  |  ".join(f"{name}: {part(item)}"
                                   for name, item in r["channels"].items())
    return head + part(r)
