"""Property-based fuzzing of the loaders and the front end.

Random bytes, and random bytes behind valid-looking RIFF/WAVE, fLaC, OggS and ID3 headers,
are written under audio and video names and handed to ``load_audio`` and ``audio_info``;
random shapes, lengths and values go into ``log_mel``, ``segment``, ``segment_images`` and
``binaural_views``. The only outcomes allowed: a correct-shaped finite result, or binser's
own error (:class:`~binser.errors.BinserError`, with a message). Anything else (a
soundfile/FFmpeg/numpy exception, NaN or inf in a result, a wrong shape) fails the test.
"""
from __future__ import annotations

import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from binser.audio import audio_info, load_audio
from binser.config import FrontEndConfig
from binser.errors import AudioError, BinserError
from binser.spectrogram import log_mel, n_segments, segment, segment_images
from binser.views import ALL_VIEWS, binaural_views

FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".mp4")
CONFIG = FrontEndConfig()

# --------------------------------------------------------------------------- headers


def _wav_header(channels: int, rate: int, bits: int, data_size: int, fmt: int = 1) -> bytes:
    """A canonical 44-byte RIFF/WAVE header (fields as given, not checked)."""
    block = (channels * bits // 8) & 0xFFFF
    fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, fmt, channels, rate,
                            (rate * block) & 0xFFFFFFFF, block, bits)
    return (struct.pack("<4sI4s", b"RIFF", (36 + data_size) & 0xFFFFFFFF, b"WAVE") + fmt_chunk
            + struct.pack("<4sI", b"data", data_size))


@st.composite
def wav_headers(draw) -> bytes:
    """Plausible and implausible WAV headers: any channel count, rate, bit depth, format."""
    return _wav_header(channels=draw(st.integers(0, 9)),
                       rate=draw(st.sampled_from([0, 1, 8000, 16000, 44100, 2 ** 31 - 1])),
                       bits=draw(st.sampled_from([0, 8, 16, 24, 32, 64])),
                       data_size=draw(st.integers(0, 2 ** 32 - 1)),
                       fmt=draw(st.sampled_from([1, 3, 0xFFFE, 7, 0])))


HEADERS = st.one_of(
    wav_headers(),
    st.just(b"RIFF\x24\x00\x00\x00WAVEfmt "),
    st.just(b"fLaC\x00\x00\x00\x22"),                         # STREAMINFO block header
    st.just(b"OggS\x00\x02" + bytes(20)),                     # first page of a stream
    st.just(b"ID3\x03\x00\x00\x00\x00\x00\x00"),              # empty ID3v2 tag
    st.just(b"\xff\xfb\x90\x64"),                             # an MPEG-1 layer III frame header
    st.just(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"),  # MP4 ftyp box
)


# --------------------------------------------------------------------------- helpers


def _check_audio_outcome(path: Path) -> None:
    """load_audio: a finite float32 (C, N), C in {1, 2}, N >= 1, or an AudioError."""
    try:
        audio = load_audio(path)
    except AudioError as error:
        assert error.path == path and error.cause
        return
    assert audio.dtype == np.float32 and audio.ndim == 2
    assert audio.shape[0] in (1, 2) and audio.shape[1] >= 1
    assert np.isfinite(audio).all()


def _check_info_outcome(path: Path) -> None:
    """audio_info: sane metadata, or an AudioError."""
    try:
        info = audio_info(path)
    except AudioError as error:
        assert error.path == path and error.cause
        return
    assert info.sample_rate > 0 and info.channels >= 1 and info.frames >= 1
    assert np.isfinite(info.duration_s) and info.duration_s > 0


def _fuzz_file(payload: bytes, extension: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzz{extension}"
        path.write_bytes(payload)
        _check_info_outcome(path)
        _check_audio_outcome(path)


# --------------------------------------------------------------------------- loaders


@FUZZ
@given(payload=st.binary(min_size=0, max_size=2048), extension=st.sampled_from(EXTENSIONS))
def test_random_bytes_give_audio_or_audio_error(payload, extension):
    _fuzz_file(payload, extension)


@FUZZ
@given(header=HEADERS, tail=st.binary(min_size=0, max_size=4096),
       extension=st.sampled_from(EXTENSIONS))
# found by fuzzing: one mu-law sample at 44.1 kHz resampled to an empty (1, 0) array
@example(header=_wav_header(1, 44100, 8, 1, fmt=7), tail=b"\x00", extension=".wav")
def test_valid_looking_headers_then_random_bytes(header, tail, extension):
    _fuzz_file(header + tail, extension)


@settings(max_examples=30, deadline=None, database=None)
@given(channels=st.integers(1, 2), rate=st.sampled_from([8000, 16000, 22050]),
       frames=st.integers(1, 2000), fmt=st.sampled_from([1, 3]),
       data=st.data())
def test_well_formed_wav_with_random_samples(channels, rate, frames, fmt, data):
    """A correct header with random sample bytes (PCM16 or float32, NaN and huge values
    included): audio of the right shape, or an AudioError (non-finite samples)."""
    bits = 16 if fmt == 1 else 32
    body = data.draw(st.binary(min_size=frames * channels * bits // 8,
                               max_size=frames * channels * bits // 8))
    payload = _wav_header(channels, rate, bits, len(body), fmt) + body
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.wav"
        path.write_bytes(payload)
        try:
            audio = load_audio(path, sr=rate)
        except AudioError as error:
            assert "NaN or infinite" in error.cause or "sample values" in error.cause
            return
        assert audio.shape == (channels, frames) and np.isfinite(audio).all()


# --------------------------------------------------------------------------- front end

FLOATS32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
SPECIAL = st.sampled_from([0.0, 1.0, -1.0, 1e-30, 3e38, -3e38, 1e20])


def _signal(length: int, kind: str, values: list[float]) -> np.ndarray:
    """A (length,) float32 test signal: random values, a constant or a repeated pattern."""
    if kind == "constant":
        return np.full(length, values[0] if values else 0.0, np.float32)
    pattern = np.asarray(values or [0.0], np.float32)
    return np.resize(pattern, length).astype(np.float32)


SIGNALS = st.builds(_signal, length=st.integers(0, 4000),
                    kind=st.sampled_from(["random", "constant"]),
                    values=st.lists(st.one_of(FLOATS32, SPECIAL), min_size=1, max_size=64))


@FUZZ
@given(signal=SIGNALS)
@example(signal=np.full(3, 3e38, np.float32))     # found by fuzzing: float32 power overflow
@example(signal=np.zeros(0, np.float32))
def test_log_mel_is_finite_and_shaped_or_binser_error(signal):
    try:
        out = log_mel(signal, CONFIG.sample_rate, CONFIG)
    except BinserError as error:
        assert str(error)
        return
    assert out.shape == (CONFIG.n_mels, 1 + signal.size // CONFIG.hop_length)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert (out >= 10 * np.log10(CONFIG.power_floor) - 1e-3).all()


@FUZZ
@given(n_bands=st.integers(0, 70), n_frames=st.integers(0, 200),
       frames=st.integers(-2, 90), hop=st.integers(-2, 70),
       values=st.lists(st.one_of(FLOATS32, SPECIAL), min_size=1, max_size=32))
@example(n_bands=0, n_frames=5, frames=64, hop=30, values=[0.0])  # found: min of empty array
def test_segment_is_shaped_or_binser_error(n_bands, n_frames, frames, hop, values):
    logmel = np.resize(np.asarray(values, np.float32), (n_bands, n_frames))
    try:
        out = segment(logmel, frames=frames, hop=hop)
    except BinserError as error:
        assert str(error)
        return
    n = n_segments(n_frames, frames, hop)
    assert out.shape == (n, n_bands, frames) and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0, :, : min(frames, n_frames)],
                                  logmel[:, : min(frames, n_frames)])


@FUZZ
@given(n=st.integers(0, 4), n_bands=st.integers(1, 12), length=st.integers(1, 80),
       width=st.sampled_from([-1, 0, 3, 4, 5, 9, 81]),
       values=st.lists(st.one_of(FLOATS32, SPECIAL), min_size=1, max_size=32),
       constant=st.booleans())
@example(n=1, n_bands=2, length=20, width=9, values=[3e38, -3e38], constant=False)  # overflow
@example(n=1, n_bands=2, length=20, width=9, values=[float("nan")], constant=True)
def test_segment_images_are_unit_range_or_binser_error(n, n_bands, length, width, values,
                                                       constant):
    pattern = np.asarray(values[:1] if constant else values, np.float32)
    segments = np.resize(pattern, (n, n_bands, length))
    try:
        images = segment_images(segments, width=width)
    except BinserError as error:
        assert str(error)
        return
    assert images.shape == (n, 3, n_bands, length) and images.dtype == np.float32
    assert np.isfinite(images).all()
    assert (images >= 0).all() and (images <= 1).all()


@FUZZ
@given(shape=st.sampled_from([(0,), (1,), (5,), (1, 0), (1, 1), (2, 1), (2, 7), (3, 4),
                              (2, 3, 4), (0, 5)]),
       values=st.lists(st.one_of(FLOATS32, SPECIAL), min_size=1, max_size=16),
       side_scale=st.sampled_from([1.0, 0.5, 0.0, -1.0]))
@example(shape=(2, 3), values=[3e38], side_scale=1.0)  # found by fuzzing: mid = L + R = inf
def test_binaural_views_are_finite_or_binser_error(shape, values, side_scale):
    audio = np.resize(np.asarray(values, np.float32), shape)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            views = binaural_views(audio, side_scale=side_scale)
    except BinserError as error:
        assert str(error)
        return
    n = shape[-1]
    assert set(views) == set(ALL_VIEWS) - {"spatial"}   # spatial: frames, not a signal
    for name, view in views.items():
        assert view.shape == (n,) and view.dtype == np.float32, name
        assert np.isfinite(view).all(), name
