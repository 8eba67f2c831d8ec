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
unless ``channels=(i, j)`` (the CLI's ``--channels I,J``) picks two of them. The signal is
resampled (soxr, 'HQ' quality, an anti-aliasing polyphase resampler; scipy's
``resample_poly`` if soxr is missing) only when the file's rate differs from the requested
one.

Every failure is an :class:`~binser.errors.AudioError` naming the file and the cause; no
soundfile or FFmpeg exception escapes.

Decoder chatter
---------------
The C decoders print diagnostics of their own straight to the process's standard error
(mpg123 inside libsndfile: ``Warning: Xing stream size off ...``, ``Note: Trying to
resync...``; FFmpeg, where its logging is switched on: ``[mp3float @ 0x...] ...``). While a
file is decoded, :func:`quiet_decoders` sends file descriptor 2 to a temporary file and
FFmpeg's logging off; afterwards it writes back whatever else arrived meanwhile (other
threads' progress bars, warnings) and drops the decoders' lines, :data:`DECODER_CHATTER`.
What goes wrong is reported once, by binser, as an :class:`~binser.errors.AudioError`.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

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
CHANNELS_OPTION = "--channels I,J"      # how the CLI picks two channels (0-based)
CHANNELS_KEYWORD = "channels=(i, j)"    # ... and the Python API


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
    with quiet_decoders():
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

    ``C`` is 1 or 2 (the file's count) unless ``channels`` (0-based indices, one or two
    different ones, e.g. ``(0, 1)``; the CLI's ``--channels I,J``) selects channels, which is
    required for files with more than two.
    ``max_duration_s`` (seconds) refuses longer inputs, checked from metadata before decoding
    where the format reports a length. Raises :class:`AudioError` naming the file and cause.
    """
    _check_arguments(sr, channels, max_duration_s)
    path = _check_file(path)
    with quiet_decoders():
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
        if (not 1 <= len(picks) <= _MAX_CHANNELS or len(set(picks)) != len(picks)
                or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                           and i >= 0 for i in picks)):
            raise ConfigError(f"channels must be one or two different 0-based indices "
                              f"({CHANNELS_KEYWORD}; the CLI's {CHANNELS_OPTION}), "
                              f"got {channels!r}")


def _check_file(path: str | Path) -> Path:
    """Return ``path`` as a Path if it is an existing, non-empty, readable regular file."""
    path = Path(path)
    try:
        status = path.stat()   # follows symbolic links
    except OSError as exc:
        raise AudioError(path, stat_failure(path, exc)) from None
    except ValueError as exc:   # e.g. a NUL character in the name
        raise AudioError(path, f"invalid file name ({exc})") from None
    if not stat.S_ISREG(status.st_mode):
        kind = "a directory" if stat.S_ISDIR(status.st_mode) else "not a regular file"
        raise AudioError(path, f"cannot read audio from {kind}")
    if status.st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise AudioError(path, "permission denied (file is not readable)")
    return path


def stat_failure(path: Path, exc: OSError) -> str:
    """Why ``path`` cannot be looked at (``exc`` from ``stat``), in words: a symbolic link
    loop and a broken link are named as such rather than as a missing file."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if exc.errno == errno.ENOENT and path.is_symlink():
        return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
    if exc.errno == errno.ENOENT:
        return "file not found"
    if exc.errno == errno.ENOTDIR:
        return "file not found (a part of the path is a file, not a folder)"
    if exc.errno == errno.EACCES:
        return "permission denied (a folder on the path cannot be searched)"
    return exc.strerror or type(exc).__name__


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
            raise AudioError(path, f"{n_channels} channels; binser uses one or two: pick the "
                                   f"left and right one with {CHANNELS_OPTION} (0-based; "
                                   f"Python: {CHANNELS_KEYWORD})")
        return
    bad = [i for i in channels if i >= n_channels]
    if bad:
        raise AudioError(path, f"channel {bad[0]} asked for ({CHANNELS_OPTION}) is out "
                               f"of range: the file has {n_channels} channel(s), indices "
                               f"0..{n_channels - 1}")


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
        cause = (getattr(exc, "error_string", None) or str(exc)).rstrip(".")
        if cause.startswith("File does not exist or is not a regular file"):
            cause = "format not recognised"   # libsndfile's words when its MP3 probe fails;
            #                                   the file was checked to exist and be regular
        raise _SoundfileCannotOpen(cause) from exc


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


def _av_stream_params(stream, container, path: Path,
                      soundfile_cause: str | None) -> tuple[int, int]:
    """(sample rate Hz, channel count) of a PyAV audio stream.

    FFmpeg picks a demuxer by the file name when the content matches none, so random bytes
    named ``x.flac`` open as a FLAC stream without parameters: a stream whose sample rate or
    channel count is unknown is refused as data that is not audio of that kind."""
    ctx = stream.codec_context
    rate, n_channels = int(ctx.sample_rate or 0), int(ctx.channels or 0)
    if rate <= 0 or n_channels < 1:
        codec = (ctx.name or container.format.name.split(",")[0]).upper()
        tried = f"soundfile: {soundfile_cause}; " if soundfile_cause else ""
        raise AudioError(path, f"not a decodable audio file: the data is not valid {codec} "
                               f"audio ({tried}ffmpeg: no sample rate or channel count in "
                               f"the stream)")
    return rate, n_channels


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
            rate, n_channels = _av_stream_params(stream, container, path, soundfile_cause)
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
            rate, n_channels = _av_stream_params(stream, container, path, soundfile_cause)
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
    """``"<exception class>: <message>"``; an OSError (FFmpeg's errors are) without its
    errno and the C function's name."""
    text = (getattr(exc, "error_string", None) or getattr(exc, "strerror", None) or str(exc)
            or type(exc).__name__)
    return f"{type(exc).__name__}: {text}"


# ----------------------------------------------------------------------------- decoder chatter

# Lines the C decoders print on their own: FFmpeg's "[mp3float @ 0x55d0...] ..." and mpg123's
# "Warning: ...", "Note: ..." and "[src/libmpg123/parse.c:123] error: ...".
DECODER_CHATTER = re.compile(
    rb"^\r?(?:\[[^\]\n]*(?: @ 0x[0-9a-fA-F]+|\.c:)[^\]\n]*\]"
    rb"|(?:Warning|Note|Error|error|warning|Big trouble): )")


class _NativeStderr:
    """File descriptor 2 redirected to a temporary file while any decode runs (a count over
    threads); restored when the last one ends, and the captured lines written back except
    :data:`DECODER_CHATTER`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved_fd: int | None = None
        self._capture = None
        self._av_level: object = None

    def enter(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._start()
            self._depth += 1

    def exit(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._stop()

    def _start(self) -> None:
        self._av_level = _set_av_log_level(None)
        _flush_stderr()
        try:
            capture = tempfile.TemporaryFile()
            saved = os.dup(2)
        except OSError:   # no descriptor 2 (a daemon) or no temp space: leave it alone
            return
        try:
            os.dup2(capture.fileno(), 2)
        except OSError:
            os.close(saved)
            capture.close()
            return
        self._saved_fd, self._capture = saved, capture

    def _stop(self) -> None:
        _set_av_log_level(self._av_level)
        if self._saved_fd is None:
            return
        _flush_stderr()
        saved, capture = self._saved_fd, self._capture
        self._saved_fd, self._capture = None, None
        os.dup2(saved, 2)
        os.close(saved)
        with capture:
            capture.seek(0)
            kept = without_chatter(capture.read())
        if kept:
            with contextlib.suppress(OSError):
                os.write(2, kept)


_NATIVE_STDERR = _NativeStderr()


def without_chatter(text: bytes) -> bytes:
    """``text`` without the lines that match :data:`DECODER_CHATTER`."""
    return b"".join(line for line in text.splitlines(keepends=True)
                    if not DECODER_CHATTER.match(line))


def _flush_stderr() -> None:
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def _set_av_log_level(level: object) -> object:
    """Set PyAV's FFmpeg log level (None: off) if PyAV is loaded; return the previous one."""
    av = sys.modules.get("av")
    logging = getattr(av, "logging", None)
    if logging is None:
        return None
    previous = logging.get_level()
    if previous != level:
        logging.set_level(level)
    return previous


@contextlib.contextmanager
def quiet_decoders() -> Iterator[None]:
    """Run the body with the decoders' own stderr output dropped (see the module docstring:
    *Decoder chatter*); binser's messages and other threads' output are kept."""
    _NATIVE_STDERR.enter()
    try:
        yield
    finally:
        _NATIVE_STDERR.exit()


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
