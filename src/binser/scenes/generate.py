"""Scene settings, the parameters of one file's scene, its rendering, and a whole corpus run.

See :mod:`binser.scenes` for the definitions (azimuth, SNR, SIR, DRR, RT60, levels).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import AudioError, ConfigError
from .acoustics import (NOISE_TYPES, BRIR, Room, diffuse_noise, draw_room, place_source,
                        room_brir)
from .hrir import SAMPLE_RATE, HRIRSet

TARGET_RMS_DBFS = -26.0           # the reverberant target's RMS over both ears
PEAK_LIMIT = 0.99                 # the mixture is scaled down if its peak would pass this
MIN_INTERFERER_SEPARATION = 20.0  # degrees between the target's and the interferer's azimuth
RT60_LIMITS = (0.1, 3.0)
DOWNMIXES = ("first", "mean")


# ------------------------------------------------------------------------------ settings

def parse_values(value: str | Sequence[float], option: str) -> tuple[float, ...]:
    """``"0,5,10"`` (or a sequence of numbers) -> finite floats; ConfigError otherwise."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        numbers = tuple(float(p) for p in parts if not (isinstance(p, str) and not p.strip()))
    except (TypeError, ValueError):
        raise ConfigError(f"{option} {value!r}: expected comma-separated numbers in dB, e.g. "
                          "0,5,10") from None
    if not numbers or not all(math.isfinite(n) for n in numbers):
        raise ConfigError(f"{option} {value!r}: expected one or more finite numbers, e.g. "
                          "0,5,10")
    return numbers


def parse_range(value: str | Sequence[float], option: str) -> tuple[float, float]:
    """``"LOW:HIGH"`` (or a pair) -> (low, high) with low <= high; ConfigError otherwise."""
    parts = value.split(":") if isinstance(value, str) else list(value)
    try:
        low, high = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"{option} {value!r}: expected a range LOW:HIGH, e.g. 0.2:0.9"
                          ) from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{option} {value!r}: the range's ends must be finite numbers")
    if low > high:
        raise ConfigError(f"{option} {value!r}: the range runs backwards; write LOW:HIGH "
                          f"({high:g}:{low:g})")
    return low, high


@dataclass(frozen=True)
class SceneSettings:
    """What a scene run draws from. Strings are parsed as on the command line (``snr``,
    ``sir``: ``"0,5,10"``; ``rt60``, ``azimuth``: ``"LOW:HIGH"``); ConfigError on bad values.

    ``hrir``: an HRIR file (None: :func:`~binser.scenes.hrir.default_hrir_path`);
    ``downmix``: how a multichannel source becomes mono, ``first`` channel (default: EMOVO's
    two microphones are ~0.5 ms apart, so their mean would comb-filter the speech) or
    ``mean``.
    """

    seed: int = 0
    snr: Any = (0.0, 5.0, 10.0, 20.0)
    rt60: Any = (0.2, 0.9)
    interferer_prob: float = 0.5
    sir: Any = (0.0, 5.0, 10.0)
    azimuth: Any = (-90.0, 90.0)
    hrir: str | None = None
    downmix: str = "first"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "snr", parse_values(self.snr, "--snr"))
        set_(self, "sir", parse_values(self.sir, "--sir"))
        set_(self, "rt60", parse_range(self.rt60, "--rt60"))
        set_(self, "azimuth", parse_range(self.azimuth, "--azimuth"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or self.seed < 0:
            raise ConfigError(f"--seed {self.seed!r}: expected a whole number >= 0")
        low, high = RT60_LIMITS
        if not (low <= self.rt60[0] and self.rt60[1] <= high):
            raise ConfigError(f"--rt60 {self.rt60[0]:g}:{self.rt60[1]:g}: RT60 must lie in "
                              f"{low:g}..{high:g} seconds")
        if not (-180.0 <= self.azimuth[0] and self.azimuth[1] <= 180.0):
            raise ConfigError(f"--azimuth {self.azimuth[0]:g}:{self.azimuth[1]:g}: azimuths "
                              "must lie in -180..180 degrees (0 front, 90 left)")
        prob = self.interferer_prob
        try:
            prob = float(prob) if isinstance(prob, str) else prob
        except ValueError:
            pass
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) \
                or not 0.0 <= prob <= 1.0:
            raise ConfigError(f"--interferer-prob {self.interferer_prob!r}: expected a "
                              "probability in 0..1")
        set_(self, "interferer_prob", float(prob))
        if self.downmix not in DOWNMIXES:
            raise ConfigError(f"--downmix {self.downmix!r}: choose {' or '.join(DOWNMIXES)}")

    def to_json(self) -> dict[str, Any]:
        """The settings as stored in ``scenes.json`` (the HRIR by its content, elsewhere)."""
        out = asdict(self)
        out.pop("hrir")
        out["snr"], out["sir"] = list(self.snr), list(self.sir)
        out["rt60"], out["azimuth"] = list(self.rt60), list(self.azimuth)
        return out


# ------------------------------------------------------------------------------ one scene

def file_rngs(seed: int, relative_path: str, n: int = 4) -> list[np.random.Generator]:
    """Independent generators for one file: ``SeedSequence([seed, h]).spawn(n)`` with ``h``
    the first 8 bytes (little-endian) of the SHA-256 of the file's path relative to the
    corpus root (POSIX form). Order: room and target, noise, interferer, tails."""
    h = int.from_bytes(hashlib.sha256(relative_path.encode("utf-8")).digest()[:8], "little")
    return [np.random.default_rng(s) for s in np.random.SeedSequence([seed, h]).spawn(n)]


@dataclass
class Scene:
    """One rendered scene: the ``mixture`` (2, N) float32 written to the file, its parts at
    the file's scale (``target``, ``noise``, ``interferer`` or None; mixture = their sum),
    and ``params`` (the manifest's columns)."""

    mixture: np.ndarray
    target: np.ndarray
    noise: np.ndarray
    interferer: np.ndarray | None
    params: dict[str, Any]
    brir: BRIR | None = field(default=None, repr=False)


def energy(x: np.ndarray) -> float:
    """Sum of squares over every channel and sample."""
    return float(np.sum(np.square(x, dtype=np.float64)))


def level_ratio_db(a: np.ndarray, b: np.ndarray) -> float:
    """``10 log10(energy(a) / energy(b))``: SNR, SIR (both ears together)."""
    return 10.0 * math.log10(energy(a) / energy(b))


def scaled_to(reference: np.ndarray, other: np.ndarray, ratio_db: float) -> np.ndarray:
    """``other`` scaled so that ``level_ratio_db(reference, scaled) == ratio_db``."""
    return other * math.sqrt(energy(reference) / energy(other) / 10 ** (ratio_db / 10))


def convolve(signal: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """(2, len(signal)): ``signal`` through each ear of ``ir`` (2, L), FFT convolution,
    cut to the signal's length (the direct sound arrives at sample 0)."""
    from scipy.signal import fftconvolve

    return fftconvolve(signal[None, :], ir, axes=-1)[:, :signal.size]


def draw_interferer_azimuth(rng: np.random.Generator, target: float,
                            span: tuple[float, float]) -> float:
    """Uniform over the azimuth range minus +-20 degrees around the target; where that leaves
    nothing, uniform over the whole circle minus the same window."""
    gap = MIN_INTERFERER_SEPARATION
    pieces = [(span[0], min(span[1], target - gap)), (max(span[0], target + gap), span[1])]
    pieces = [(a, b) for a, b in pieces if b > a]
    if not pieces:
        pieces = [(target + gap, target + 360.0 - gap)]
    lengths = np.array([b - a for a, b in pieces])
    u = rng.uniform(0.0, lengths.sum())
    k = int(np.searchsorted(np.cumsum(lengths), u, side="right").clip(0, len(pieces) - 1))
    value = pieces[k][0] + u - (np.cumsum(lengths)[k] - lengths[k])
    return float((value + 180.0) % 360.0 - 180.0)


def loop_to(signal: np.ndarray, n: int, start: int) -> np.ndarray:
    """``n`` samples of ``signal`` repeated end to end, from sample ``start``."""
    reps = -(-(start + n) // signal.size)
    return np.tile(signal, reps)[start:start + n]


def load_mono(path: str | Path, downmix: str = "first") -> np.ndarray:
    """A source file as mono float64 at 16 kHz: its first channel, or the mean of its
    channels (``downmix="mean"``)."""
    from ..audio import load_audio

    if downmix == "first":
        return load_audio(path, sr=SAMPLE_RATE, channels=(0,))[0].astype(np.float64)
    return load_audio(path, sr=SAMPLE_RATE).mean(axis=0, dtype=np.float64)


def render_scene(source: np.ndarray, rel: str, settings: SceneSettings, hrirs: HRIRSet,
                 interferers: Sequence[tuple[str, str, Path]] = (),
                 load: Callable[[Path], np.ndarray] | None = None) -> Scene:
    """Render the scene of one mono utterance ``source`` (N,) at 16 kHz whose path relative
    to its corpus root is ``rel``. ``interferers``: ``(relative path, speaker, path)`` of the
    other speakers' utterances; ``load(path) -> mono (M,)`` decodes the chosen one (default:
    :func:`load_mono` with ``settings.downmix``)."""
    if load is None:
        load = lambda path: load_mono(path, settings.downmix)  # noqa: E731
    room_rng, noise_rng, talk_rng, tail_rng = file_rngs(settings.seed, rel)
    source = np.asarray(source, np.float64)
    if not np.any(source):
        raise AudioError(rel, "the source is digital silence; no scene can be made")
    rt60 = float(room_rng.uniform(*settings.rt60))
    azimuth = float(room_rng.uniform(*settings.azimuth))
    talker = None
    if interferers and talk_rng.uniform() < settings.interferer_prob:
        talker = interferers[int(talk_rng.integers(len(interferers)))]
        other_az = draw_interferer_azimuth(talk_rng, azimuth, settings.azimuth)
        sir = float(talk_rng.choice(settings.sir))
    room = draw_room(room_rng, rt60, (azimuth,) if talker is None else (azimuth, other_az))
    brir = room_brir(tail_rng, hrirs, room, place_source(room_rng, room, azimuth))
    target = convolve(source, brir.ir)
    params = _room_params(rel, settings, hrirs, room, brir, azimuth)

    snr = float(noise_rng.choice(settings.snr))
    kind = str(noise_rng.choice(NOISE_TYPES))
    noise = scaled_to(target, diffuse_noise(noise_rng, hrirs, source.size, kind, source), snr)
    params.update(snr_db=snr, noise=kind)

    interferer = None
    if talker is not None:
        other_rel, other_speaker, other_path = talker
        other = np.asarray(load(other_path), np.float64)
        other = loop_to(other, source.size, int(talk_rng.integers(other.size)))
        other_brir = room_brir(tail_rng, hrirs, room, place_source(talk_rng, room, other_az))
        interferer = scaled_to(target, convolve(other, other_brir.ir), sir)
        params.update(interferer=other_rel, interferer_speaker=other_speaker,
                      interferer_azimuth_deg=round(other_az, 3), sir_db=sir)
    return _mixed(target, noise, interferer, params, brir)


def _room_params(rel, settings, hrirs, room: Room, brir: BRIR, azimuth) -> dict[str, Any]:
    hrir_az = float(hrirs.azimuth[brir.hrir_index])
    return {"source": rel, "azimuth_deg": round(azimuth, 3),
            "hrir_azimuth_deg": round((hrir_az + 180.0) % 360.0 - 180.0, 3),
            "distance_m": round(brir.extras["distance_m"], 3),
            "room_m": "x".join(f"{d:.2f}" for d in room.dims), "rt60_s": round(room.rt60, 4),
            "absorption": round(room.absorption, 4), "drr_db": round(brir.drr_db, 3),
            "interferer": "", "interferer_speaker": "", "interferer_azimuth_deg": "",
            "sir_db": "", "seed": settings.seed}


def _mixed(target, noise, interferer, params, brir) -> Scene:
    """Scale everything by one gain: target RMS at -26 dBFS over both ears, the mixture's
    peak at most 0.99 (the ratios are unchanged)."""
    mixture = target + noise + (interferer if interferer is not None else 0.0)
    gain = 10 ** (TARGET_RMS_DBFS / 20) / math.sqrt(energy(target) / target.size)
    peak = float(np.max(np.abs(mixture))) * gain
    if peak > PEAK_LIMIT:
        gain *= PEAK_LIMIT / peak
    parts = [None if p is None else (p * gain).astype(np.float32)
             for p in (target, noise, interferer)]
    return Scene(mixture=(mixture * gain).astype(np.float32), target=parts[0], noise=parts[1],
                 interferer=parts[2], params=params, brir=brir)
