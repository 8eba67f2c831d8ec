"""Head-related impulse responses (HRIRs): read, check, resample once to 16 kHz, look up.

Sources:

* a ``.npz`` with ``ir`` float (M, 2, N) (measured direction, ear 0 = left / 1 = right, tap:
  the SOFA ``Data.IR`` layout), ``sources`` (M, 3) = azimuth in degrees, elevation in degrees,
  distance in metres, and ``samplerate`` (Hz, a scalar) -- the layout of the MIT KEMAR file
  in ``../shared/data/hrtf/mit-kemar.npz`` (the default, :func:`default_hrir_path`);
* a SOFA file (``.sofa``, read with ``sofar``: ``pip install 'binser[sofa]'``), whose
  ``Data.IR``, ``Data.SamplingRate`` and ``SourcePosition`` (spherical or cartesian) are used.

Direction convention (SOFA's and the KEMAR file's): azimuth 0 = straight ahead, increasing
counter-clockwise seen from above, so +90 = the listener's left and -90 (= 270) the right;
elevation 0 = ear height, +90 = above. Azimuths are handled modulo 360.

The impulse responses are resampled once, on loading, to 16 kHz with
``scipy.signal.resample_poly`` (polyphase, Kaiser-windowed anti-aliasing filter), so at 16 kHz
a 512-tap 44.1 kHz HRIR has 186 taps. :meth:`HRIRSet.nearest` picks the measured direction
of smallest great-circle angle to a requested one (no interpolation).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import ConfigError

SAMPLE_RATE = 16000
MIN_TAPS = 8
CROSS_SPECTRA_FFT = 1024


def default_hrir_path() -> Path:
    """``$BINSER_HRTF``, else ``../shared/data/hrtf/mit-kemar.npz`` from the current folder."""
    return Path(os.environ.get("BINSER_HRTF",
                               Path("..") / "shared" / "data" / "hrtf" / "mit-kemar.npz"))


@dataclass(frozen=True, eq=False)
class HRIRSet:
    """Measured HRIRs at :data:`SAMPLE_RATE`.

    ``ir``: float64 (M, 2, L); ``azimuth``, ``elevation``: (M,) degrees; ``path``: the file
    read; ``sha256``: its content hash; ``source_rate``: the file's own sample rate.
    """

    ir: np.ndarray
    azimuth: np.ndarray
    elevation: np.ndarray
    path: Path
    sha256: str
    source_rate: float

    @property
    def taps(self) -> int:
        return int(self.ir.shape[-1])

    def unit_vectors(self) -> np.ndarray:
        """(M, 3) unit vectors of the measured directions (x front, y left, z up)."""
        return unit_vector(self.azimuth, self.elevation)

    def nearest(self, azimuth, elevation=0.0) -> np.ndarray:
        """Index (or indices, shaped like the inputs) of the measured direction nearest to
        each (azimuth, elevation) in degrees, by great-circle angle."""
        wanted = unit_vector(np.asarray(azimuth, float), np.asarray(elevation, float))
        return self.nearest_vectors(wanted)

    def nearest_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """Index of the nearest measured direction for each row of ``vectors`` (..., 3)
        (any length, not zero)."""
        v = np.asarray(vectors, float)
        v = v / np.linalg.norm(v, axis=-1, keepdims=True)
        return np.argmax(v @ self.unit_vectors().T, axis=-1)

    @cached_property
    def diffuse_cross_spectra(self) -> tuple[np.ndarray, ...]:
        """``(freqs, a, b, c)`` on a 1024-point FFT grid at 16 kHz: ``a = mean |H_L|^2``,
        ``b = mean |H_R|^2``, ``c = mean H_L conj(H_R)`` over the measured directions (the
        cross-spectral matrix of a diffuse field of equal-power sources)."""
        n = max(CROSS_SPECTRA_FFT, self.taps)
        spectra = np.fft.rfft(self.ir, n=n, axis=-1)   # (M, 2, F)
        left, right = spectra[:, 0], spectra[:, 1]
        return (np.fft.rfftfreq(n, 1 / SAMPLE_RATE), np.mean(np.abs(left) ** 2, axis=0),
                np.mean(np.abs(right) ** 2, axis=0), np.mean(left * np.conj(right), axis=0))

    @cached_property
    def mean_energy(self) -> float:
        """Energy of a diffuse-average HRIR: the mean of :meth:`energy` over directions and
        ears."""
        return float(np.mean(self.energy()))

    def energy(self) -> np.ndarray:
        """(M, 2) energy (sum of squares) of each direction's left and right HRIR."""
        return np.sum(self.ir ** 2, axis=-1)


def unit_vector(azimuth, elevation) -> np.ndarray:
    """Unit vectors (..., 3) for azimuth/elevation in degrees (x front, y left, z up)."""
    az, el = np.radians(azimuth), np.radians(elevation)
    return np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az),
                                        np.sin(el)), axis=-1)


def load_hrir(path: str | Path | None = None) -> HRIRSet:
    """Read and check an HRIR file (``.npz`` or ``.sofa``), resampled to 16 kHz.

    ConfigError (one line, naming the file) when it is missing, unreadable, lacks an array,
    has the wrong shape (``ir`` not (M, 2, N) with N >= 8, ``sources`` not (M, 3)), a sample
    rate that is not a finite number >= 16000 Hz, non-finite values or all-zero responses.
    """
    path = Path(path) if path is not None else default_hrir_path()
    if not path.is_file():
        raise ConfigError(f"--hrir {path}: HRIR file not found (the MIT KEMAR set lives in "
                          "../shared/data/hrtf/mit-kemar.npz beside the project)")
    if path.suffix.lower() == ".sofa":
        ir, sources, rate = _read_sofa(path)
    else:
        ir, sources, rate = _read_npz(path)
    ir, sources, rate = _checked(path, ir, sources, rate)
    return HRIRSet(ir=_resample(ir, rate), azimuth=np.mod(sources[:, 0], 360.0),
                   elevation=sources[:, 1].copy(), path=Path(os.path.abspath(path)),
                   sha256=_sha256(path), source_rate=rate)


def _read_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("ir", "sources", "samplerate") if k not in data.files]
            if missing:
                raise ConfigError(f"--hrir {path}: not an HRIR file: lacks array(s) "
                                  f"{', '.join(missing)} (expected ir (M,2,N), sources (M,3), "
                                  "samplerate)")
            return data["ir"], data["sources"], data["samplerate"]
    except ConfigError:
        raise
    except Exception as exc:   # noqa: BLE001  (zip, pickle, format errors: all one message)
        raise ConfigError(f"--hrir {path}: cannot read as .npz ({type(exc).__name__}: "
                          f"{exc})") from None


def _read_sofa(path: Path):
    try:
        import sofar
    except ImportError:
        raise ConfigError(f"--hrir {path}: reading SOFA files needs sofar: pip install "
                          "'binser[sofa]'") from None
    try:
        sofa = sofar.read_sofa(str(path), verify=False, verbose=False)
        ir, rate = np.asarray(sofa.Data_IR), np.asarray(sofa.Data_SamplingRate)
        positions = np.asarray(sofa.SourcePosition, float)
        kind = str(getattr(sofa, "SourcePosition_Type", "spherical")).lower()
    except Exception as exc:   # noqa: BLE001
        raise ConfigError(f"--hrir {path}: cannot read as SOFA ({type(exc).__name__}: "
                          f"{exc})") from None
    if kind.startswith("cartesian") and positions.ndim == 2 and positions.shape[1] == 3:
        x, y, z = positions.T
        positions = np.stack([np.degrees(np.arctan2(y, x)),
                              np.degrees(np.arctan2(z, np.hypot(x, y))),
                              np.sqrt(x * x + y * y + z * z)], axis=1)
    return ir, positions, rate


def _checked(path: Path, ir, sources, rate):
    ir, sources, rate = np.asarray(ir), np.asarray(sources), np.asarray(rate)
    if ir.ndim != 3 or ir.shape[1] != 2 or ir.shape[0] < 1 or ir.shape[2] < MIN_TAPS:
        raise ConfigError(f"--hrir {path}: ir has shape {ir.shape}; expected (M, 2, N): M "
                          f"directions, 2 ears (left, right), N >= {MIN_TAPS} taps")
    if sources.shape != (ir.shape[0], 3):
        raise ConfigError(f"--hrir {path}: sources has shape {sources.shape}; expected "
                          f"({ir.shape[0]}, 3): azimuth, elevation, distance per direction")
    if rate.size != 1 or not np.issubdtype(rate.dtype, np.number) \
            or not np.isfinite(rate).all() or float(rate.ravel()[0]) < SAMPLE_RATE:
        raise ConfigError(f"--hrir {path}: sample rate {rate.ravel().tolist()} Hz; expected "
                          f"one finite rate >= {SAMPLE_RATE} Hz")
    if not (np.isfinite(ir).all() and np.isfinite(sources).all()):
        raise ConfigError(f"--hrir {path}: holds non-finite values (NaN or inf)")
    if not np.abs(ir).reshape(len(ir), -1).max(axis=1).all():
        raise ConfigError(f"--hrir {path}: some impulse responses are all zeros")
    return ir.astype(np.float64), sources.astype(np.float64), float(rate.ravel()[0])


def _resample(ir: np.ndarray, rate: float) -> np.ndarray:
    """(M, 2, N) at ``rate`` -> (M, 2, ceil(N * 16000 / rate)) at 16 kHz."""
    if rate == SAMPLE_RATE:
        return ir.copy()
    from scipy.signal import resample_poly

    ratio = Fraction(SAMPLE_RATE / rate).limit_denominator(10000)
    return resample_poly(ir, ratio.numerator, ratio.denominator, axis=-1)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
