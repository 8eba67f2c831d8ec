"""binser.inputs: folders and globs expanded; mono, band-limited and clipped warnings."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from binser.errors import ConfigError
from binser.inputs import expand_inputs, file_warnings, input_warnings

SR = 16000


def noise(n: int, channels: int = 2, seed: int = 0, level: float = 0.3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-level, level, (channels, n))


def write(path: Path, audio: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.T, sr, subtype="FLOAT" if path.suffix.lower() == ".wav" else None)
    return path


def lowpass(audio: np.ndarray, sr: int, edge_hz: float) -> np.ndarray:
    """Zero every FFT bin above ``edge_hz`` (an ideal low-pass)."""
    spectrum = np.fft.rfft(audio, axis=-1)
    spectrum[:, np.fft.rfftfreq(audio.shape[1], 1 / sr) > edge_hz] = 0
    return np.fft.irfft(spectrum, n=audio.shape[1], axis=-1)


# --------------------------------------------------------------------------- expansion

@pytest.fixture()
def tree(tmp_path) -> Path:
    for rel in ("b/two.wav", "a/one.flac", "a/deep/three.WAV", ".hidden/x.wav", "a/.y.wav"):
        write(tmp_path / rel, noise(1600))
    (tmp_path / "a" / "notes.txt").write_text("not audio")
    return tmp_path


def test_folder_expands_to_its_media_files(tree):
    assert [p.relative_to(tree).as_posix() for p in expand_inputs([tree])] == [
        "a/deep/three.WAV", "a/one.flac", "b/two.wav"]


def test_globs_expand_and_duplicates_go(tree):
    files = expand_inputs([str(tree / "a" / "*"), str(tree / "**" / "*.wav"),
                           tree / "b" / "two.wav"])
    assert [p.relative_to(tree).as_posix() for p in files] == [
        "a/one.flac", "b/two.wav"]          # '**/*.wav' is case-sensitive: three.WAV not matched
    assert expand_inputs(["missing.wav"]) == [Path("missing.wav")]   # reported when read


def test_empty_folder_and_unmatched_glob_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="a folder without audio or video files"):
        expand_inputs([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="no audio or video file matches"):
        expand_inputs([str(tmp_path / "*.ogg")])


# --------------------------------------------------------------------------- warnings

def test_clean_stereo_has_no_warning():
    assert input_warnings(noise(SR), SR) == []


def test_mono_and_identical_channels():
    one = noise(SR, 1)
    assert input_warnings(one, SR) == ["mono input (1 channel): L = R, the Side view is all "
                                       "zeros"]
    assert input_warnings(one[0], SR)[0].startswith("mono input")
    assert input_warnings(np.vstack([one, one]), SR) == [
        "identical channels: L = R, the Side view is all zeros"]


def test_band_limited_by_rate_and_by_content():
    assert input_warnings(noise(8000), 8000) == [
        "band-limited: sample rate 8000 Hz (nothing above 4 kHz; the front end works at "
        "16000 Hz)"]
    telephone = lowpass(noise(SR * 2), SR, 3400.0)
    (line,) = input_warnings(telephone, SR)
    assert line.startswith("band-limited: ") and "above 4 kHz" in line
    # a little real content above 4 kHz (-30 dB) is not band-limited
    assert input_warnings(telephone + 0.03 * lowpass(noise(SR * 2, seed=1), SR, 8000), SR) == []


def test_clipped():
    loud = np.clip(noise(SR, level=3.0), -1, 1)       # two thirds of the samples at +-1
    (line,) = input_warnings(loud, SR)
    assert line.startswith("clipped: ") and float(line.split()[1]) == pytest.approx(67, abs=2)
    few = noise(SR)
    few[:, :10] = 1.0                                  # 10 of 16000 (0.06 %): below 0.1 %
    assert input_warnings(few, SR) == []


def test_file_warnings_read_the_files_own_rate(tmp_path):
    path = write(tmp_path / "phone.wav", noise(8000, 1), sr=8000)
    assert [w.split(":")[0] for w in file_warnings(path)] == ["mono input (1 channel)",
                                                              "band-limited"]
