"""A small, deterministic, SYNTHETIC stereo emotional-speech corpus for the demo and tests.

Each utterance is a harmonic "voice" (glottal-like pulse train through formant resonators)
with syllable-rate amplitude modulation. Emotions differ in pitch level and range, loudness,
tempo and spectral tilt; speakers differ in pitch, formants and their position between the two
microphones (gain and inter-channel delay), and each channel gets its own noise. It is not
speech: it exercises every step of binser on data with a learnable, speaker-independent
signal, and every output built from it says "synthetic".

Layout written (the ``folder`` corpus): ``<root>/<label>/<speaker>_<nn>.wav``, 16 kHz stereo.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal as sps

SAMPLE_RATE = 16000

# label -> (pitch factor, pitch range in semitones, level in dB, syllables per second, tilt)
EMOTION_STYLES: dict[str, tuple[float, float, float, float, float]] = {
    "anger": (1.30, 5.0, -6.0, 5.5, 0.35),
    "joy": (1.35, 9.0, -10.0, 4.5, 0.55),
    "neutral": (1.00, 2.0, -16.0, 4.0, 0.75),
    "sadness": (0.85, 1.5, -22.0, 2.5, 0.92),
}


@dataclass(frozen=True)
class DemoSpec:
    """Size of the demo corpus (defaults: 6 speakers x 4 emotions x 6 utterances = 144)."""

    n_speakers: int = 6
    per_emotion: int = 6
    min_duration_s: float = 1.0
    max_duration_s: float = 2.2
    seed: int = 2020


def _speaker_traits(index: int, rng: np.random.Generator) -> dict[str, float]:
    female = index % 2 == 0
    return {
        "f0": (210.0 if female else 120.0) * rng.uniform(0.9, 1.1),
        "formant_shift": (1.12 if female else 1.0) * rng.uniform(0.95, 1.05),
        "pan": rng.uniform(-0.6, 0.6),            # -1 left mic only ... +1 right mic only
        "delay_samples": float(rng.integers(-8, 9)),  # inter-channel delay, samples
    }


def _voice(duration_s: float, f0: float, style: tuple[float, float, float, float, float],
           formant_shift: float, rng: np.random.Generator) -> np.ndarray:
    """One mono synthetic utterance, float64 (N,) at 16 kHz."""
    pitch_factor, range_st, level_db, syll_rate, tilt = style
    n = int(duration_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    contour = range_st * np.sin(2 * np.pi * rng.uniform(0.4, 1.2) * t + rng.uniform(0, 2 * np.pi))
    f_inst = f0 * pitch_factor * 2.0 ** (contour / 12.0)
    phase = 2 * np.pi * np.cumsum(f_inst) / SAMPLE_RATE
    # Glottal-like source: sum of harmonics with a spectral tilt (bright for anger).
    source = np.zeros(n)
    for k in range(1, 30):
        source += (tilt ** k) * np.sin(k * phase) * (k * f_inst < SAMPLE_RATE / 2 - 200)
    # Formant resonators (a neutral vowel, shifted per speaker).
    voice = np.zeros(n)
    for formant, bandwidth, gain in ((550.0, 90.0, 1.0), (1500.0, 120.0, 0.6), (2500.0, 180.0, 0.35)):
        fc = formant * formant_shift
        b, a = sps.iirpeak(fc, fc / bandwidth, fs=SAMPLE_RATE)
        voice += gain * sps.lfilter(b, a, source)
    # Syllables: raised-cosine bursts at the emotion's rate.
    envelope = np.clip(np.sin(np.pi * syll_rate * t + rng.uniform(0, np.pi)), 0.0, None) ** 1.5
    voice *= envelope
    voice /= np.max(np.abs(voice)) + 1e-12
    return voice * 10.0 ** (level_db / 20.0)


def _to_stereo(mono: np.ndarray, pan: float, delay: float, rng: np.random.Generator) -> np.ndarray:
    """Two spaced microphones: constant-power pan, a fractional delay on one side, and noise."""
    angle = (pan + 1.0) * np.pi / 4.0
    left = np.cos(angle) * mono
    right = np.sin(angle) * mono
    shift = int(round(abs(delay)))
    if shift:
        if delay > 0:   # right lags left
            right = np.concatenate([np.zeros(shift), right[:-shift]])
        else:
            left = np.concatenate([np.zeros(shift), left[:-shift]])
    noise = 10.0 ** (-50.0 / 20.0)
    stereo = np.stack([left, right]) + noise * rng.standard_normal((2, mono.size))
    return np.clip(stereo, -1.0, 1.0).astype(np.float32)


def make_demo_corpus(root: str | Path, spec: DemoSpec = DemoSpec()) -> Path:
    """Write the synthetic corpus under ``root`` (idempotent: same files every time).

    Returns ``root``. Files already present with the expected name are left alone, so a
    second call is cheap.
    """
    root = Path(root)
    rng_master = np.random.default_rng(spec.seed)
    traits = [_speaker_traits(i, rng_master) for i in range(spec.n_speakers)]
    for s, trait in enumerate(traits):
        speaker = f"spk{s + 1:02d}"
        for label, style in EMOTION_STYLES.items():
            folder = root / label
            folder.mkdir(parents=True, exist_ok=True)
            for u in range(spec.per_emotion):
                # One generator per utterance: the file is the same whatever else exists.
                seed = [spec.seed, s, list(EMOTION_STYLES).index(label), u]
                rng = np.random.default_rng(seed)
                path = folder / f"{speaker}_{u + 1:02d}.wav"
                if path.exists():
                    continue
                duration = rng.uniform(spec.min_duration_s, spec.max_duration_s)
                mono = _voice(duration, trait["f0"], style, trait["formant_shift"], rng)
                stereo = _to_stereo(mono, trait["pan"], trait["delay_samples"], rng)
                tmp = path.with_name(path.name + ".part")
                sf.write(tmp, stereo.T, SAMPLE_RATE, subtype="PCM_16", format="WAV")
                tmp.replace(path)
    (root / "README.txt").write_text(
        "SYNTHETIC demo corpus written by binser.demo.make_demo_corpus: not speech, not real "
        "emotions. Layout <label>/<speaker>_<nn>.wav (the 'folder' corpus).\n")
    return root
