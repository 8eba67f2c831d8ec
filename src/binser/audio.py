"""Audio input: any audio file, or the audio track of a video, as float32 ``(C, N)`` samples.

Decoding paths
--------------
* Audio files (wav, flac, ogg, mp3 and anything else libsndfile reads) go through
  :mod:`soundfile`. When libsndfile cannot open a file (e.g. ``.m4a``, ``.wma``), PyAV
  (FFmpeg) is tried as a fallback.
* Video containers (:data:`VIDEO_EXTENSIONS`: avi, mp4, mkv, webm, ...) go through PyAV,
  whose first audio stream is decoded to float planar samples; other streams are ignored.

Samples are in [-1, 1] full scale (integer PCM is scaled by ``1 / 2**(bits-1)``). The
channel count is kept for mono and stereo; a file with more than two channels is refused
unless ``channels=(i, j)`` picks two of them. The signal is resampled (soxr, 'HQ' quality,
an anti-aliasing polyphase resampler; scipy's ``resample_poly`` if soxr is missing) only
when the file's rate differs from the requested one.

Every failure is an :class:`~binser.errors.AudioError` naming the file and the cause; no
soundfile or FFmpeg exception escapes.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import AudioError, ConfigError

AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
    ".au", ".snd", ".caf", ".w64", ".rf64", ".m4a", ".aac", ".wma", ".mka",
})
VIDEO_EXTENSIONS = frozenset({
    ".avi", ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".ts", ".flv",
    ".wmv", ".3gp",
})

_MAX_CHANNELS = 2


@dataclass(frozen=True)
class AudioInfo:
    """Metadata of one input file (no sample decoding).

    ``frames`` is the number of samples per channel at ``sample_rate`` (Hz) as the header or
    container reports it (an estimate for some compressed streams); ``duration_s`` is
    ``frames / sample_rate`` in seconds; ``codec`` reads ``"<container>/<codec>"``.
    """

    path: Path
    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    codec: str


def is_video(path: str | Path) -> bool:
    """True when the file name has a video-container extension (decoded with PyAV)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def channels_identical(audio: np.ndarray) -> bool:
    """True when ``audio`` (C, N) has exactly two bit-identical channels (Side view all zero)."""
    audio = np.asarray(audio)
    return audio.ndim == 2 and audio.shape[0] == 2 and bool(np.array_equal(audio[0], audio[1]))


# ----------------------------------------------------------------------------- public API


def audio_info(path: str | Path) -> AudioInfo:
    """Read sample rate, channel count, length and codec from metadata only (cheap).

    Raises :class:`AudioError` for a missing, non-regular, empty, unreadable or corrupt
    file, a container without an audio stream, and a zero-length stream.
    """
    path = _check_file(path)
    if is_video(path):
        info = _av_info(path)
    else:
        try:
            info = _soundfile_info(path)
        except _SoundfileCannotOpen as sf_exc:
            info = _av_info(path, soundfile_cause=str(sf_exc))
    _check_not_empty_stream(path, info.frames)
    return info


def load_audio(path: str | Path, sr: int = 16000, channels: Sequence[int] | None = None,
               max_duration_s: float | None = None) -> np.ndarray:
    """Decode ``path`` to float32 samples of shape ``(C, N)`` at ``sr`` Hz.

    ``C`` is 1 or 2 (the file's count) unless ``channels`` (0-based indices, one or two of
    them, e.g. ``(0, 1)``) selects channels, which is required for files with more than two.
    ``max_duration_s`` (seconds) refuses longer inputs, checked from metadata before decoding
    where the format reports a length. Raises :class:`AudioError` naming the file and cause.
    """
    _check_arguments(sr, channels, max_duration_s)
    path = _check_file(path)
    audio, rate = _decode(path, channels, max_duration_s)
    audio = _select_channels(audio, channels, path)
    _check_samples(audio, rate, path, max_duration_s)
    if rate != sr:
        n_native = audio.shape[1]
        audio = _resample(audio, rate, sr)
        if audio.shape[1] == 0:  # found by fuzzing: 1 sample at 44.1 kHz -> 0 at 16 kHz
            raise AudioError(path, f"too short: {n_native} sample(s) at {rate} Hz leave none "
                                   f"after resampling to {sr} Hz")
    return audio


# ----------------------------------------------------------------------------- checks


def _check_arguments(sr: int, channels: Sequence[int] | None,
                     max_duration_s: float | None) -> None:
    """Validate the caller's options (not the file): ConfigError on nonsense."""
    if not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise ConfigError(f"sample rate must be a positive integer (Hz), got {sr!r}")
    if max_duration_s is not None and not max_duration_s > 0:
        raise ConfigError(f"max_duration_s must be > 0 seconds, got {max_duration_s!r}")
    if channels is not None:
        picks = list(channels)
        if not 1 <= len(picks) <= _MAX_CHANNELS or not all(
                isinstance(i, (int, np.integer)) and i >= 0 for i in picks):
            raise ConfigError(f"channels must be one or two 0-based indices, got {channels!r}")


def _check_file(path: str | Path) -> Path:
    """Return ``path`` as a Path if it is an existing, non-empty, readable regular file."""
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise AudioError(path, f"cannot read audio from {kind}")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioError(path, "permission denied (file is not readable)")
    return path


def _check_not_empty_stream(path: Path, frames: int) -> None:
    if frames == 0:
        raise AudioError(path, "zero-length audio (0 samples)")


def _check_header(path: Path, rate: float, n_channels: int, frames: int | None,
                  channels: Sequence[int] | None, max_duration_s: float | None) -> None:
    """Refuse, before decoding, what the metadata already shows to be unusable."""
    if not rate or rate <= 0:
        raise AudioError(path, f"invalid sample rate {rate!r} in file header")
    if n_channels < 1:
        raise AudioError(path, "no audio channels in file header")
    if frames is not None:
        _check_not_empty_stream(path, frames)
        _check_duration(path, frames / rate, max_duration_s)
    _check_channel_request(path, n_channels, channels)


def _check_duration(path: Path, duration_s: float, max_duration_s: float | None) -> None:
    if max_duration_s is not None and duration_s > max_duration_s:
        raise AudioError(path, f"too long: {duration_s:.2f} s exceeds the limit of "
                               f"max_duration_s={max_duration_s:g} s")


def _check_channel_request(path: Path, n_channels: int, channels: Sequence[int] | None) -> None:
    if channels is None:
        if n_channels > _MAX_CHANNELS:
            raise AudioError(path, f"{n_channels} channels; binser uses one or two: pass "
                                   f"channels=(i, j) (0-based) to pick the two to use")
        return
    bad = [i for i in channels if i >= n_channels]
    if bad:
        raise AudioError(path, f"channel index {bad[0]} out of range: the file has "
                               f"{n_channels} channel(s), indices 0..{n_channels - 1}")


def _check_samples(audio: np.ndarray, rate: int, path: Path,
                   max_duration_s: float | None) -> None:
    """Zero length, non-finite samples and (decoded) duration of ``audio`` (C, N)."""
    _check_not_empty_stream(path, audio.shape[1])
    finite = np.isfinite(audio)
    if not finite.all():
        channel, sample = np.argwhere(~finite)[0]
        raise AudioError(path, f"NaN or infinite samples (first in channel {channel} at "
                               f"sample {sample}, {sample / rate:.3f} s)")
    _check_duration(path, audio.shape[1] / rate, max_duration_s)


# ----------------------------------------------------------------------------- decoding


class _SoundfileCannotOpen(Exception):
    """libsndfile could not open the file (not a format it knows, or corrupt header)."""


def _decode(path: Path, channels: Sequence[int] | None,
            max_duration_s: float | None) -> tuple[np.ndarray, int]:
    """Decode the whole file: ``(audio (C, N) float32, rate Hz)`` at the file's own rate."""
    if is_video(path):
        return _av_decode(path, channels, max_duration_s)
    try:
        return _soundfile_decode(path, channels, max_duration_s)
    except _SoundfileCannotOpen as sf_exc:
        return _av_decode(path, channels, max_duration_s, soundfile_cause=str(sf_exc))


def _soundfile_open(path: Path):
    """Open with libsndfile, turning its errors into ``_SoundfileCannotOpen``."""
    import soundfile as sf

    try:
        return sf.SoundFile(str(path))
    except Exception as exc:  # LibsndfileError, TypeError, RuntimeError ...
        raise _SoundfileCannotOpen(getattr(exc, "error_string", None) or str(exc)) from exc


def _soundfile_info(path: Path) -> AudioInfo:
    with _soundfile_open(path) as f:
        return AudioInfo(path=path, sample_rate=int(f.samplerate), channels=int(f.channels),
                         frames=int(f.frames), duration_s=f.frames / f.samplerate,
                         codec=f"{f.format}/{f.subtype}".lower())


def _soundfile_decode(path: Path, channels: Sequence[int] | None,
                      max_duration_s: float | None) -> tuple[np.ndarray, int]:
    with _soundfile_open(path) as f:
        _check_header(path, f.samplerate, f.channels, f.frames, channels, max_duration_s)
        try:
            data = f.read(dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioError(path, f"corrupt audio data, decoding failed "
                                   f"({_describe(exc)})") from exc
        return np.ascontiguousarray(data.T), int(f.samplerate)


def _av_open(path: Path, soundfile_cause: str | None = None):
    """Open a container with PyAV; AudioError (both decoders' causes) if it cannot."""
    import av

    try:
        return av.open(str(path))
    except Exception as exc:
        tried = f"soundfile: {soundfile_cause}; " if soundfile_cause else ""
        raise AudioError(path, f"unreadable or corrupt: not a recognised audio or video "
                               f"file ({tried}ffmpeg: {_describe(exc)})") from exc


def _av_audio_stream(container, path: Path):
    streams = container.streams.audio
    if not streams:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        raise AudioError(path, f"no audio stream in the file (streams found: {kinds})")
    return streams[0]


def _av_stream_params(stream) -> tuple[int, int]:
    """(sample rate Hz, channel count) of a PyAV audio stream."""
    ctx = stream.codec_context
    return int(ctx.sample_rate or 0), int(ctx.channels or 0)


def _av_frames_from_header(stream, rate: int) -> int | None:
    """Stream length in samples from container metadata only, or None if not stated."""
    if stream.duration is not None and stream.time_base is not None:
        return int(round(float(stream.duration * stream.time_base) * rate))
    return None


def _av_frames_from_packets(container, stream, rate: int) -> int | None:
    """Stream length in samples from packet durations (demuxing only, no decoding)."""
    total = 0
    for packet in container.demux(stream):
        if packet.size and packet.duration is not None and packet.time_base is not None:
            total += packet.duration * packet.time_base
    return int(round(float(total) * rate))


def _av_info(path: Path, soundfile_cause: str | None = None) -> AudioInfo:
    container = _av_open(path, soundfile_cause)
    try:
        with container:
            stream = _av_audio_stream(container, path)
            rate, n_channels = _av_stream_params(stream)
            _check_header(path, rate, n_channels, None, None, None)
            frames = _av_frames_from_header(stream, rate)
            if frames is None:
                frames = _av_frames_from_packets(container, stream, rate)
            codec = f"{container.format.name.split(',')[0]}/{stream.codec_context.name}"
            return AudioInfo(path=path, sample_rate=rate, channels=n_channels, frames=frames,
                             duration_s=frames / rate, codec=codec)
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(path, f"corrupt or unreadable container ({_describe(exc)})") from exc


def _av_decode(path: Path, channels: Sequence[int] | None, max_duration_s: float | None,
               soundfile_cause: str | None = None) -> tuple[np.ndarray, int]:
    container = _av_open(path, soundfile_cause)
    try:
        with container:
            stream = _av_audio_stream(container, path)
            rate, n_channels = _av_stream_params(stream)
            frames = _av_frames_from_header(stream, rate)
            # a stated length of 0 is not trusted here: the decoded count decides
            _check_header(path, rate, n_channels, frames or None, channels, max_duration_s)
            return _av_decode_stream(container, stream, path, rate, max_duration_s), rate
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(path, f"corrupt audio data, decoding failed ({_describe(exc)})") from exc


def _av_decode_stream(container, stream, path: Path, rate: int,
                      max_duration_s: float | None) -> np.ndarray:
    """All samples of ``stream`` as float32 (C, N); stop once past ``max_duration_s``."""
    import av

    limit = None if max_duration_s is None else int(math.ceil(max_duration_s * rate))
    resampler = av.AudioResampler(format="fltp")  # keep layout and rate
    chunks: list[np.ndarray] = []
    count = 0
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray())
            count += out.samples
        if limit is not None and count > limit:
            _check_duration(path, count / rate, max_duration_s)
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray())
    return _concat_planes(chunks, path)


def _concat_planes(chunks: list[np.ndarray], path: Path) -> np.ndarray:
    """Join decoded (C, n_i) planar blocks into one float32 (C, N) array."""
    if not chunks:
        raise AudioError(path, "zero-length audio (the audio stream decoded to 0 samples)")
    counts = {c.shape[0] for c in chunks}
    if len(counts) > 1:
        raise AudioError(path, f"the channel count changes within the stream ({sorted(counts)})")
    return np.ascontiguousarray(np.concatenate(chunks, axis=1), dtype=np.float32)


def _describe(exc: BaseException) -> str:
    text = getattr(exc, "error_string", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


# ----------------------------------------------------------------------------- transforms


def _select_channels(audio: np.ndarray, channels: Sequence[int] | None,
                     path: Path) -> np.ndarray:
    """Pick ``channels`` (0-based) from ``audio`` (C, N); enforce C <= 2 otherwise."""
    _check_channel_request(path, audio.shape[0], channels)
    if channels is None:
        return audio
    return np.ascontiguousarray(audio[list(channels)])


def _resample(audio: np.ndarray, rate: int, sr: int) -> np.ndarray:
    """Band-limited resampling of (C, N) float32 from ``rate`` to ``sr`` Hz."""
    try:
        import soxr
    except ImportError:  # soxr ships with librosa; scipy is the fallback
        return _resample_poly(audio, rate, sr)
    out = soxr.resample(np.ascontiguousarray(audio.T), rate, sr, quality="HQ")
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).T)


def _resample_poly(audio: np.ndarray, rate: int, sr: int) -> np.ndarray:
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(sr))
    out = resample_poly(audio, sr // g, rate // g, axis=1)
    return np.ascontiguousarray(out, dtype=np.float32)
