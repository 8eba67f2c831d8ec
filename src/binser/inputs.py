"""Inputs of ``predict``, ``stream`` and ``serve``: folders and glob patterns expanded to
files, and the warnings a file's audio deserves (mono, band-limited, clipped).

``expand_inputs(items)``: each item in order, duplicates dropped (first place kept):

* an existing folder -> its audio/video files (by extension, any case, recursively, hidden
  entries skipped, symbolic links followed; :func:`binser.corpora.media_files`), sorted by
  their path below the folder; a folder without one is a :class:`ConfigError`;
* an item with ``*``, ``?`` or ``[`` that is not an existing path -> the audio/video files
  it matches (:func:`glob.glob`, ``**`` recursive), sorted; no match is a ConfigError;
* anything else -> itself (a missing or unreadable file is reported when it is read).

``input_warnings(audio, sample_rate)`` for decoded audio ``(C, N)`` float (full scale 1.0)
at the file's own rate, one line each, in this order:

* ``mono``: ``C == 1`` (L = R, the Side view is all zeros);
* ``identical channels``: two bit-identical channels (the Side view is all zeros);
* ``band-limited``: a sample rate below :data:`FRONT_END_RATE` (16 kHz; no content above
  half the rate), or, at a higher rate, less than :data:`BAND_LIMIT_DB` (-45 dB) of the
  power above :data:`BAND_EDGE_HZ` (4 kHz): telephone-band audio resampled up. The power
  spectrum is the mean of the channels' Hann-windowed periodograms of up to
  :data:`SPECTRUM_FRAMES` frames of 2048 samples spread evenly over the file;
* ``clipped``: at least :data:`CLIPPED_SHARE` (0.1 %) of the samples at or above
  :data:`CLIP_LEVEL` (0.999) in magnitude.

``file_warnings(path, channels)`` decodes ``path`` at its own rate and returns
``input_warnings`` of it (``channels``: the two 0-based channels used, as ``--channels``).
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import ConfigError

FRONT_END_RATE = 16000     # Hz: the front end's rate
BAND_EDGE_HZ = 4000.0      # Hz: telephone band edge
BAND_LIMIT_DB = -45.0      # power above the edge relative to the total, dB
SPECTRUM_FRAMES = 64       # frames averaged for the band check
FRAME = 2048               # samples per frame
CLIP_LEVEL = 0.999         # |sample| at or above this counts as at full scale
CLIPPED_SHARE = 0.001      # share of such samples from which a file is called clipped
_GLOB_CHARS = frozenset("*?[")


# --------------------------------------------------------------------------- expansion

def _is_media(path: Path) -> bool:
    from .corpora import MEDIA_EXTENSIONS

    return path.suffix.lower() in MEDIA_EXTENSIONS and not path.name.startswith(".")


def _expand_one(item: str | Path) -> list[Path]:
    from .corpora import media_files

    path = Path(item).expanduser()
    if path.is_dir():
        found = media_files(path)
        if not found:
            raise ConfigError(f"{item}: a folder without audio or video files")
        return found
    text = str(item)
    if not path.exists() and _GLOB_CHARS & set(text):
        matches = sorted(Path(m) for m in glob.glob(str(Path(text).expanduser()),
                                                    recursive=True))
        found = [m for m in matches if m.is_file() and _is_media(m)]
        if not found:
            raise ConfigError(f"{item}: no audio or video file matches this pattern")
        return found
    return [path if isinstance(item, Path) else Path(text)]


def expand_inputs(items: Iterable[str | Path]) -> list[Path]:
    """Folders and glob patterns of ``items`` as their audio/video files (module
    docstring); duplicates dropped, first place kept."""
    out: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        for path in _expand_one(item):
            if path not in seen:
                seen.add(path)
                out.append(path)
    return out


def expanded(items: Sequence[str | Path]) -> bool:
    """Whether any item is a folder or a pattern (so outputs should name each file)."""
    return any(Path(i).expanduser().is_dir()
               or (not Path(i).expanduser().exists() and _GLOB_CHARS & set(str(i)))
               for i in items)


# --------------------------------------------------------------------------- warnings

def _band_power_share(audio: np.ndarray, sample_rate: int) -> float | None:
    """Power above :data:`BAND_EDGE_HZ` over the total (None for silence)."""
    n = audio.shape[1]
    size = min(FRAME, n)
    if size < 16:
        return None
    starts = np.unique(np.linspace(0, n - size, min(SPECTRUM_FRAMES, max(1, n // size)))
                       .astype(int))
    window = np.hanning(size)
    frames = np.stack([audio[:, s:s + size] for s in starts])        # (F, C, size)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    spectrum = power.mean(axis=(0, 1))
    total = float(spectrum.sum())
    if total <= 0:
        return None
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    return float(spectrum[freqs > BAND_EDGE_HZ].sum()) / total


def _band_warning(audio: np.ndarray, sample_rate: int) -> str | None:
    if sample_rate < FRONT_END_RATE:
        return (f"band-limited: sample rate {sample_rate} Hz (nothing above "
                f"{sample_rate / 2000:g} kHz; the front end works at {FRONT_END_RATE} Hz)")
    share = _band_power_share(audio, sample_rate)
    level = None if share is None else 10 * np.log10(share) if share > 0 else -np.inf
    if level is None or level >= BAND_LIMIT_DB:
        return None
    shown = "no power" if level == -np.inf else f"{level:.0f} dB of the power"
    return f"band-limited: {shown} above {BAND_EDGE_HZ / 1000:g} kHz (telephone-band audio?)"


def input_warnings(audio: np.ndarray, sample_rate: int) -> list[str]:
    """Warnings for decoded audio ``(C, N)`` (or ``(N,)``) at ``sample_rate`` Hz (module
    docstring)."""
    audio = np.asarray(audio, dtype=np.float64)
    audio = audio[np.newaxis] if audio.ndim == 1 else audio
    out = []
    if audio.shape[0] == 1:
        out.append("mono input (1 channel): L = R, the Side view is all zeros")
    elif audio.shape[0] == 2 and np.array_equal(audio[0], audio[1]):
        out.append("identical channels: L = R, the Side view is all zeros")
    band = _band_warning(audio, sample_rate)
    if band:
        out.append(band)
    share = float(np.mean(np.abs(audio) >= CLIP_LEVEL)) if audio.size else 0.0
    if share >= CLIPPED_SHARE:
        out.append(f"clipped: {100 * share:.2g} % of the samples at full scale")
    return out


def file_warnings(path: str | Path, channels: Sequence[int] | None = None) -> list[str]:
    """:func:`input_warnings` of ``path`` decoded at its own sample rate."""
    from .audio import audio_info, load_audio

    rate = audio_info(path).sample_rate
    return input_warnings(load_audio(path, sr=rate, channels=channels), rate)
