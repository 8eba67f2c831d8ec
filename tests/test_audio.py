"""Tests of binser.audio: every decoding path, resampling fidelity and every bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from binser.audio import (AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, AudioInfo, audio_info,
                          channels_identical, is_video, load_audio)
from binser.errors import AudioError, BinserError, ConfigError

av = pytest.importorskip("av")

TARGET_SR = 16000
TONE_HZ = 1000.0
TONE_AMP = 0.5
RATES = (8000, 16000, 44100, 48000)
# (format for soundfile, subtype, length tolerance in source samples, codec amplitude
# tolerance; the resampler itself must keep the decoded amplitude within 1 %)
SF_FORMATS = {
    "wav": ("WAV", "PCM_16", 0, 0.01),
    "flac": ("FLAC", "PCM_24", 0, 0.01),
    "ogg": ("OGG", "VORBIS", 1152, 0.05),
    "mp3": ("MP3", "MPEG_LAYER_III", 2 * 1152, 0.05),
}


# ----------------------------------------------------------------------------- helpers


def tone(sr: int, seconds: float = 1.0, freq: float = TONE_HZ, amp: float = TONE_AMP) -> np.ndarray:
    """Sine of ``freq`` Hz and peak ``amp``, float32 (N,)."""
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def left_only(sr: int, seconds: float = 1.0) -> np.ndarray:
    """Stereo (2, N): the tone on the left, silence on the right."""
    x = tone(sr, seconds)
    return np.stack([x, np.zeros_like(x)])


def write_sf(path: Path, audio: np.ndarray, sr: int, fmt: str, subtype: str) -> Path:
    """Write ``audio`` (C, N) with libsndfile."""
    if fmt == "MP3" and "MP3" not in sf.available_formats():  # pragma: no cover
        return write_av(path, audio, sr, "libmp3lame", container="mp3")
    sf.write(str(path), audio.T, sr, format=fmt, subtype=subtype)
    return path


def write_av(path: Path, audio: np.ndarray | None, sr: int, codec: str | None,
             container: str | None = None, video: bool = False) -> Path:
    """Write a container with PyAV: an audio stream from ``audio`` (C, N) and/or a video.

    Every stream is added before anything is muxed (FFmpeg needs them all for the header).
    """
    with av.open(str(path), "w", format=container) as out:
        video_stream = _add_video_stream(out) if video else None
        audio_stream = None if audio is None else _add_audio_stream(out, audio.shape[0], sr, codec)
        if video_stream is not None:
            _encode_video(out, video_stream)
        if audio_stream is not None:
            _encode_audio(out, audio_stream, audio, sr)
    return path


def _add_video_stream(out):
    stream = out.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    return stream


def _add_audio_stream(out, n_channels: int, sr: int, codec: str):
    return out.add_stream(codec, rate=sr, layout={1: "mono", 2: "stereo"}[n_channels])


def _encode_video(out, stream) -> None:
    for i in range(10):
        image = np.full((48, 64, 3), 20 * i, np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def _encode_audio(out, stream, audio: np.ndarray, sr: int) -> None:
    layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
    for start in range(0, audio.shape[1], 4000):
        block = np.ascontiguousarray(audio[:, start:start + 4000], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
        frame.sample_rate, frame.pts = sr, start
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def middle(x: np.ndarray, margin_s: float = 0.1, sr: int = TARGET_SR) -> np.ndarray:
    """Drop ``margin_s`` at each end (codec and resampler edge effects)."""
    m = int(margin_s * sr)
    return x[..., m:x.shape[-1] - m]


def peak_hz(x: np.ndarray, sr: int = TARGET_SR) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1.0 / sr)[np.argmax(spectrum)])


def sine_amplitude(x: np.ndarray) -> float:
    """Peak amplitude of a pure sine from its RMS (sqrt(2) * RMS)."""
    return float(np.sqrt(2.0 * np.mean(np.square(x, dtype=np.float64))))


def energy(x: np.ndarray) -> float:
    return float(np.sum(np.square(x, dtype=np.float64)))


def assert_names_file(excinfo, path: Path) -> None:
    assert isinstance(excinfo.value, BinserError)
    assert path.name in str(excinfo.value)
    assert excinfo.value.path == path


# ----------------------------------------------------------------------------- good inputs


@pytest.mark.parametrize("ext", sorted(SF_FORMATS))
@pytest.mark.parametrize("rate", RATES)
def test_soundfile_formats_resample_keep_tone_and_channel_order(tmp_path, ext, rate):
    fmt, subtype, length_tol, amp_tol = SF_FORMATS[ext]
    path = write_sf(tmp_path / f"tone.{ext}", left_only(rate), rate, fmt, subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 2 and y.shape[0] == 2
    assert abs(y.shape[1] - TARGET_SR) <= 1 + length_tol * TARGET_SR / rate
    left, right = middle(y)
    assert abs(peak_hz(left) - TONE_HZ) <= 2.0
    decoded, _ = sf.read(str(path), dtype="float64", always_2d=True)   # at the source rate
    assert sine_amplitude(left) == pytest.approx(sine_amplitude(middle(decoded[:, 0], sr=rate)),
                                                 rel=0.01)
    assert sine_amplitude(left) == pytest.approx(TONE_AMP, rel=amp_tol)
    assert energy(right) < 1e-3 * energy(left)   # the tone stays on the left


def test_native_rate_is_not_resampled(tmp_path):
    ints = (np.random.default_rng(1).integers(-20000, 20000, (2, 3000))).astype(np.int16)
    path = tmp_path / "pcm.wav"
    sf.write(str(path), ints.T, TARGET_SR, subtype="PCM_16")
    y = load_audio(path)
    np.testing.assert_array_equal(y, ints.astype(np.float32) / 32768.0)


def test_other_target_rate(tmp_path):
    path = write_sf(tmp_path / "t.wav", left_only(48000, 0.5), 48000, "WAV", "PCM_16")
    y = load_audio(path, sr=8000)
    assert y.shape == (2, 4000)
    assert abs(peak_hz(middle(y[0], sr=8000), sr=8000) - TONE_HZ) <= 4.0


def test_resampler_matches_independent_polyphase_reference(tmp_path):
    from scipy.signal import butter, resample_poly, sosfiltfilt

    noise = np.random.default_rng(2).standard_normal(44100)
    # band-limited to 6 kHz: the two filters differ only in their 7-8 kHz transition bands
    x = (0.1 * sosfiltfilt(butter(8, 6000, fs=44100, output="sos"), noise)).astype(np.float32)
    path = tmp_path / "noise.flac"
    sf.write(str(path), x, 44100, subtype="PCM_24")
    y = load_audio(path)[0]
    ref = resample_poly(sf.read(str(path), dtype="float64")[0], 160, 441)
    n = min(y.size, ref.size)
    # both are anti-aliasing resamplers: they agree in-band, far from the edges
    err = middle(y[:n] - ref[:n])
    assert np.sqrt(np.mean(err ** 2)) < 0.005 * np.sqrt(np.mean(ref ** 2))  # linear interp: 2.8 %


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_resampler_removes_content_above_the_new_nyquist(tmp_path, rate):
    path = tmp_path / "high.wav"
    sf.write(str(path), tone(rate, 0.5, freq=10000.0), rate, subtype="FLOAT")
    y = load_audio(path)[0]
    # a 10 kHz tone cannot exist at 16 kHz: without an anti-aliasing filter it folds to 6 kHz
    assert energy(middle(y)) < 1e-6 * energy(middle(tone(TARGET_SR, 0.5, freq=1000.0)))


def test_scipy_fallback_without_soxr(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "soxr", None)   # "import soxr" now raises ImportError
    path = write_sf(tmp_path / "t.wav", left_only(44100), 44100, "WAV", "FLOAT")
    y = load_audio(path)
    assert y.shape == (2, TARGET_SR) and y.dtype == np.float32
    assert abs(peak_hz(middle(y[0])) - TONE_HZ) <= 2.0
    assert sine_amplitude(middle(y[0])) == pytest.approx(TONE_AMP, rel=0.01)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_mono_stays_mono(tmp_path, ext):
    fmt, subtype, _, amp_tol = SF_FORMATS[ext]
    path = write_sf(tmp_path / f"mono.{ext}", tone(44100)[None], 44100, fmt, subtype)
    y = load_audio(path)
    assert y.shape[0] == 1
    assert sine_amplitude(middle(y[0])) == pytest.approx(TONE_AMP, rel=amp_tol)


def six_channel(sr: int = 48000) -> np.ndarray:
    """(6, N): channel k carries a tone of 300 + 200 k Hz."""
    return np.stack([tone(sr, 0.5, 300.0 + 200.0 * k, 0.1) for k in range(6)])


@pytest.mark.parametrize("ext,fmt", [("wav", "WAV"), ("flac", "FLAC")])
def test_six_channels_refused_unless_two_are_picked(tmp_path, ext, fmt):
    path = write_sf(tmp_path / f"six.{ext}", six_channel(), 48000, fmt, "PCM_16")
    with pytest.raises(AudioError, match="6 channels") as excinfo:
        load_audio(path)
    assert_names_file(excinfo, path)
    y = load_audio(path, channels=(4, 1))
    assert y.shape == (2, 8000)
    assert peak_hz(middle(y[0])) == pytest.approx(1100.0, abs=2.5)
    assert peak_hz(middle(y[1])) == pytest.approx(500.0, abs=2.5)


def test_channels_can_pick_from_stereo(tmp_path):
    path = write_sf(tmp_path / "st.wav", left_only(16000), 16000, "WAV", "FLOAT")
    swapped = load_audio(path, channels=(1, 0))
    original = load_audio(path)
    np.testing.assert_array_equal(swapped, original[::-1])
    np.testing.assert_array_equal(load_audio(path, channels=(0,)), original[:1])


VIDEO_CASES = [  # name, codec, container, rate, with video, length tolerance (source samples)
    ("aac.mp4", "aac", None, 48000, False, 2 * 1024),
    ("aac_video.mp4", "aac", None, 44100, True, 2 * 1024),
    ("pcm_video.avi", "pcm_s16le", None, 48000, True, 0),
    ("flac_video.mkv", "flac", None, 8000, True, 0),
    ("opus.webm", "libopus", None, 48000, False, 2 * 960),
    ("aac.m4a", "aac", "mp4", 48000, False, 2 * 1024),   # audio name, soundfile -> PyAV fallback
]


@pytest.mark.parametrize("name,codec,container,rate,video,length_tol", VIDEO_CASES)
def test_pyav_containers(tmp_path, name, codec, container, rate, video, length_tol):
    if codec not in av.codecs_available:
        pytest.skip(f"FFmpeg build lacks the {codec} encoder")
    path = write_av(tmp_path / name, left_only(rate), rate, codec, container, video)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.shape[0] == 2
    assert abs(y.shape[1] - TARGET_SR) <= 1 + length_tol * TARGET_SR / rate
    left, right = middle(y)
    assert abs(peak_hz(left) - TONE_HZ) <= 2.0
    assert sine_amplitude(left) == pytest.approx(TONE_AMP, rel=0.02)
    assert energy(right) < 1e-3 * energy(left)
    info = audio_info(path)
    assert (info.sample_rate, info.channels) == (rate, 2)
    assert info.codec.endswith(codec.replace("lib", "")) or codec in info.codec
    assert info.duration_s == pytest.approx(1.0, abs=2 * length_tol / rate + 0.01)


def test_audio_info_from_header(tmp_path):
    path = write_sf(tmp_path / "i.flac", left_only(44100, 0.75), 44100, "FLAC", "PCM_16")
    info = audio_info(path)
    assert isinstance(info, AudioInfo)
    assert info == AudioInfo(path=path, sample_rate=44100, channels=2, frames=33075,
                             duration_s=0.75, codec="flac/pcm_16")
    with pytest.raises(Exception):
        info.frames = 3   # frozen


def test_is_video_and_extension_sets():
    assert is_video("x/clip.MP4") and is_video(Path("a.avi")) and is_video("a.webm")
    assert not is_video("a.wav") and not is_video("a.flac")
    assert {".wav", ".flac", ".ogg", ".mp3"} <= AUDIO_EXTENSIONS
    assert {".avi", ".mp4", ".mkv", ".webm"} <= VIDEO_EXTENSIONS
    assert not AUDIO_EXTENSIONS & VIDEO_EXTENSIONS


def test_channels_identical():
    x = np.random.default_rng(3).standard_normal(100).astype(np.float32)
    assert channels_identical(np.stack([x, x]))
    y = x.copy()
    y[50] = np.nextafter(y[50], np.float32(10))   # one ulp apart is not identical
    assert not channels_identical(np.stack([x, y]))
    assert not channels_identical(x[None])


def test_identical_channels_survive_resampling(tmp_path):
    x = tone(44100) * np.float32(0.9)
    path = write_sf(tmp_path / "dup.wav", np.stack([x, x]), 44100, "WAV", "PCM_16")
    assert channels_identical(load_audio(path))


# ----------------------------------------------------------------------------- bad inputs


def _check_refused(path: Path, match: str, **kwargs) -> None:
    with pytest.raises(AudioError, match=match) as excinfo:
        load_audio(path, **kwargs)
    assert_names_file(excinfo, path)


def test_missing_file(tmp_path):
    _check_refused(tmp_path / "nope.wav", "not found")
    with pytest.raises(AudioError, match="not found"):
        audio_info(tmp_path / "nope.wav")


def test_directory(tmp_path):
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    _check_refused(folder, "directory")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.flac"
    path.touch()
    _check_refused(path, "empty")
    with pytest.raises(AudioError, match="empty"):
        audio_info(path)


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3", "ogg", "mp4", "avi"])
def test_random_bytes_with_audio_extension(tmp_path, ext):
    path = tmp_path / f"noise.{ext}"
    path.write_bytes(np.random.default_rng(len(ext)).bytes(5000))
    _check_refused(path, "unreadable or corrupt")
    with pytest.raises(AudioError, match="unreadable or corrupt"):
        audio_info(path)


def test_truncated_wav_loads_what_is_there_or_raises(tmp_path):
    path = write_sf(tmp_path / "cut.wav", left_only(16000), 16000, "WAV", "PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 1])   # the header still promises 1 s
    try:
        y = load_audio(path)
    except AudioError as exc:
        assert path.name in str(exc)
    else:
        assert y.shape[0] == 2 and 0 < y.shape[1] < TARGET_SR


def test_corrupt_flac_body_loads_or_raises(tmp_path):
    path = write_sf(tmp_path / "bad.flac", left_only(16000), 16000, "FLAC", "PCM_16")
    data = bytearray(path.read_bytes())
    data[200:-100] = np.random.default_rng(4).bytes(len(data) - 300)
    path.write_bytes(bytes(data))
    try:
        y = load_audio(path)
    except AudioError as exc:
        assert path.name in str(exc)
    else:
        assert y.dtype == np.float32 and np.isfinite(y).all()


def test_header_only_wav_is_zero_length(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(str(path), np.zeros((0, 2), np.float32), 16000)
    assert path.stat().st_size > 0
    _check_refused(path, "zero-length")
    with pytest.raises(AudioError, match="zero-length"):
        audio_info(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad):
    x = left_only(16000, 0.2)
    x[1, 1234] = bad
    path = write_sf(tmp_path / "nan.wav", x, 16000, "WAV", "FLOAT")
    _check_refused(path, "NaN or infinite")


def test_video_without_audio_stream(tmp_path):
    path = write_av(tmp_path / "silent_film.mp4", None, 0, None, video=True)
    _check_refused(path, "no audio stream")
    with pytest.raises(AudioError, match="no audio stream"):
        audio_info(path)


def test_max_duration_checked_from_header_before_decoding(tmp_path, monkeypatch):
    path = write_sf(tmp_path / "long.wav", left_only(16000, 2.0), 16000, "WAV", "PCM_16")
    assert load_audio(path, max_duration_s=2.5).shape == (2, 32000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the header already shows it is too long")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    _check_refused(path, "too long", max_duration_s=1.5)


def test_max_duration_on_video(tmp_path):
    path = write_av(tmp_path / "long.avi", left_only(16000, 2.0), 16000, "pcm_s16le", video=True)
    _check_refused(path, "too long", max_duration_s=1.0)
    assert load_audio(path, max_duration_s=3.0).shape == (2, 32000)


def test_channel_index_out_of_range(tmp_path):
    path = write_sf(tmp_path / "st.wav", left_only(16000, 0.1), 16000, "WAV", "PCM_16")
    _check_refused(path, "out of range", channels=(0, 2))


@pytest.mark.parametrize("kwargs", [{"sr": 0}, {"sr": 16000.5}, {"channels": (0, 1, 2)},
                                    {"channels": (-1, 0)}, {"channels": ()},
                                    {"max_duration_s": 0}])
def test_bad_options(tmp_path, kwargs):
    path = write_sf(tmp_path / "st.wav", left_only(16000, 0.1), 16000, "WAV", "PCM_16")
    with pytest.raises(ConfigError):
        load_audio(path, **kwargs)


# ----------------------------------------------------------------------------- EMOVO


# emovo_root: the conftest fixture (skips with a message where ../shared/data/emovo is absent)


@pytest.mark.emovo
def test_emovo_mono_file(emovo_root):
    path = emovo_root / "f1" / "rab-f1-b1.flac"
    y = load_audio(path)
    assert y.shape[0] == 1 and y.shape[1] > TARGET_SR
    info = audio_info(path)
    assert (info.channels, info.sample_rate, info.frames) == (1, 16000, y.shape[1])


@pytest.mark.emovo
def test_emovo_identical_channels(emovo_root):
    identical = [p.name for p in sorted((emovo_root / "f1").glob("neu-f1-*.flac"))[:3]
                 if channels_identical(load_audio(p))]
    assert identical, "expected bit-identical channels in f1/neu-f1-*"
    assert not channels_identical(load_audio(emovo_root / "f1" / "dis-f1-b1.flac"))
