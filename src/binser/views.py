"""Binaural views of a stereo signal, and channel statistics for ``binser inspect``.

Every view is one entry of :data:`VIEW_DEFINITIONS` (a :class:`ViewSpec`): its name, how it is
computed from the two channels, whether it is checked for silence and whether it is one of
the study's default views. Everything that lists views (:data:`VIEWS`, :data:`ALL_VIEWS`,
:func:`binaural_views`, the checks of ``--views``, the report's tables, the results
validator) derives from that table, so a new view is one entry (:func:`register_view`).

Definitions (``L``, ``R``: the left and right channels, rows 0 and 1 of ``audio`` (C, N);
``s``: ``side_scale``, the paper's ``s = 1``; ``s = 0.5`` gives the normalised sum/difference;
docs/METHOD.md section 2, eqs. M1-M4, and section 2b for the binaural views):

* ``left  = L``
* ``right = R``
* ``mid   = s * (L + R)``
* ``side  = s * (L - R)``
* ``mono  = (L + R) / 2``  (the usual mono down-mix, independent of ``s``; not a default
  study view and not checked for silence)
* ``steered = s * (L + R~)``, ``R~`` the right channel time-aligned on the per-block
  GCC-PHAT interaural delay (:func:`binser.spatial.steered`; equals ``mid`` where every
  block's delay is 0)
* ``better-ear``: per 0.5 s block the ear with the higher estimated speech-to-noise ratio,
  crossfaded at block edges (:func:`binser.spatial.better_ear`)
* ``spatial``: a *feature view*, not a signal: interaural cues per frame and band
  (:func:`binser.spatial.spatial_frames`, ``(T, 129)``), pooled and classified like the
  backbone's frames but never encoded by the backbone.

Signal views (``compute`` set) are float32 arrays of shape ``(N,)``, computed in float32, so
with ``s = 1`` (or any power of two) ``mid == left + right`` and ``side == left - right`` hold
exactly. A feature view (``frames`` set) gives ``(n, d)`` float32 frames of the stereo pair
(:func:`view_frames`); where the two channels are identical (a mono file) it has no
interaural information and gets ``n = 0`` frames, like a silent view.

Mono input (``C == 1`` or a 1-D array ``x``): a :class:`MonoInputWarning` is issued, then
``L = R = x``, so ``mid = 2 s x``, ``side`` is all zeros and ``mono = x``.

:func:`channel_stats` summarises how "binaural" a recording is; its delay sign convention is
**positive = the right channel lags (arrives after) the left channel**.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from . import spatial
from .audio import channels_identical
from .errors import AudioError, ConfigError

# (left (N,) float32, right (N,) float32, side_scale float32) -> view signal (N,) float32
# (with ViewSpec.rate: a 4th argument, the sample rate in Hz)
ViewFunction = Callable[..., np.ndarray]
# (left (N,) float32, right (N,) float32, sample rate Hz) -> frames (n, d) float32
FrameFunction = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class ViewSpec:
    """One binaural view.

    ``compute(left, right, scale)``: the view's ``(N,)`` float32 signal from the two
    ``(N,)`` float32 channels and the float32 side scale ``s`` (it must not alias its
    inputs). ``can_be_silent``: the view is checked for silence (:func:`silent_views`; a
    silent view gets no features). ``silence_reference``: its level counts towards the
    reference of that check (the loudest of these). ``default``: one of :data:`VIEWS`, the
    study's default ``--views``. ``rate``: ``compute`` takes the sample rate (Hz) as a 4th
    argument.

    A *feature view* has ``compute=None`` and ``frames(left, right, sample_rate) -> (n,
    frame_dim)`` float32 instead: its frames take the place of the backbone's (pooled, own
    classifier), the backbone never sees it (:func:`view_frames`).
    """
    name: str
    compute: ViewFunction | None
    can_be_silent: bool = True
    silence_reference: bool = False
    default: bool = False
    rate: bool = False
    frames: FrameFunction | None = None
    frame_dim: int = 0

    @property
    def is_signal(self) -> bool:
        """True for a signal view (a waveform for the backbone), False for a feature view."""
        return self.frames is None


VIEW_DEFINITIONS: dict[str, ViewSpec] = {spec.name: spec for spec in (
    ViewSpec("left", lambda left, right, s: left.copy(), True, True, True),
    ViewSpec("right", lambda left, right, s: right.copy(), True, True, True),
    ViewSpec("mid", lambda left, right, s: s * (left + right), True, True, True),
    ViewSpec("side", lambda left, right, s: s * (left - right), True, False, True),
    ViewSpec("mono", lambda left, right, s: (left + right) / np.float32(2.0), False, False,
             False),
    ViewSpec("steered", spatial.steered, True, False, False, rate=True),
    ViewSpec("better-ear", lambda left, right, s, sr: spatial.better_ear(left, right, sr),
             True, False, False, rate=True),
    ViewSpec("spatial", None, False, False, False, frames=spatial.spatial_frames,
             frame_dim=spatial.SPATIAL_DIM),
)}

# The built-in views (snapshots of the table at import; code that must see views registered
# later calls all_views() / default_views() / silence_checked_views()).
VIEWS = tuple(name for name, spec in VIEW_DEFINITIONS.items() if spec.default)
ALL_VIEWS = tuple(VIEW_DEFINITIONS)
SILENT_VIEW_DB = -40.0  # a view this far below the loudest of left/right/mid carries no signal

_DBFS_FLOOR = 1e-10  # RMS floor (full scale = 1.0) so that silence reads -200 dBFS, not -inf
MAX_AMPLITUDE = 1e15  # |sample| above this is not audio (float32 sums and spectra overflow)


def register_view(spec: ViewSpec) -> None:
    """Add ``spec`` to :data:`VIEW_DEFINITIONS` (a new name only; ConfigError otherwise)."""
    if spec.name in VIEW_DEFINITIONS or not spec.name or "/" in spec.name or "+" in spec.name:
        raise ConfigError(f"view name {spec.name!r} is taken or not a plain name")
    if (spec.compute is None) == (spec.frames is None) or (spec.frames and spec.frame_dim < 1):
        raise ConfigError(f"view {spec.name!r}: give either compute (a signal view) or frames "
                          "with frame_dim >= 1 (a feature view)")
    VIEW_DEFINITIONS[spec.name] = spec


def all_views() -> tuple[str, ...]:
    """Every view name in the table now, in table order."""
    return tuple(VIEW_DEFINITIONS)


def default_views() -> tuple[str, ...]:
    """The views a study computes when ``--views`` is not given."""
    return tuple(name for name, spec in VIEW_DEFINITIONS.items() if spec.default)


def silence_checked_views() -> tuple[str, ...]:
    """The views :func:`file_silent_views` checks for silence."""
    return tuple(name for name, spec in VIEW_DEFINITIONS.items()
                 if spec.can_be_silent and spec.is_signal)


def signal_views(views=None) -> tuple[str, ...]:
    """The signal views (waveforms for the backbone) among ``views`` (default: the table)."""
    names = tuple(VIEW_DEFINITIONS) if views is None else tuple(views)
    return tuple(v for v in names if v in VIEW_DEFINITIONS and VIEW_DEFINITIONS[v].is_signal)


def feature_views(views=None) -> tuple[str, ...]:
    """The feature views (frames of their own, no backbone) among ``views`` (default: the
    table)."""
    names = tuple(VIEW_DEFINITIONS) if views is None else tuple(views)
    return tuple(v for v in names if v in VIEW_DEFINITIONS and not VIEW_DEFINITIONS[v].is_signal)


def unknown_views(views) -> list[str]:
    """The names in ``views`` that are not in the table."""
    return [v for v in views if v not in VIEW_DEFINITIONS]


class MonoInputWarning(UserWarning):
    """A one-channel input was given where stereo is expected (L = R, Side all zeros)."""


def _as_channels(audio: np.ndarray, path: str | Path | None) -> np.ndarray:
    """``audio`` as float32 (C, N) with C in {1, 2}; a 1-D array is one channel."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[np.newaxis, :]
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise AudioError(path, f"expected audio of shape (1 or 2, N) or (N,), got {audio.shape}")
    peak = np.abs(audio).max() if audio.size else 0.0
    if peak > MAX_AMPLITUDE:
        raise AudioError(path, f"sample values up to {peak:.3g} (full scale is 1.0) exceed "
                               f"{MAX_AMPLITUDE:g}: not audio samples")
    return audio


def _warn_mono(path: str | Path | None) -> None:
    where = f"{path}: " if path is not None else ""
    warnings.warn(f"{where}mono input (1 channel): using L = R = the mono signal; "
                  f"the Side view is all zeros", MonoInputWarning, stacklevel=3)


def binaural_views(audio: np.ndarray, side_scale: float = 1.0,
                   path: str | Path | None = None, views=None,
                   sample_rate: int = 16000) -> dict[str, np.ndarray]:
    """The signal views of :data:`VIEW_DEFINITIONS` of ``audio`` (C, N) or (N,) at
    ``sample_rate`` Hz, each (N,) float32 (built in: ``{left, right, mid, side, mono,
    steered, better-ear}``).

    ``views``: compute only these signal views (feature views among them are ignored) plus
    the silence references (left, right, mid), so :func:`file_silent_views` gives the same
    answer whatever is asked; None: every signal view. See the module docstring for the
    definitions. ``path`` only names the file in the mono warning and in errors.
    """
    audio = _as_channels(audio, path)
    if audio.shape[0] == 1:
        _warn_mono(path)
    left, right = audio[0], audio[-1]   # mono: L = R = the one channel
    scale = np.float32(side_scale)
    wanted = None if views is None else set(views)
    out = {}
    for name, spec in VIEW_DEFINITIONS.items():
        if not spec.is_signal or (wanted is not None and name not in wanted
                                  and not spec.silence_reference):
            continue
        out[name] = (spec.compute(left, right, scale, int(sample_rate)) if spec.rate
                     else spec.compute(left, right, scale))
    return out


def view_frames(audio: np.ndarray, views, sample_rate: int = 16000,
                path: str | Path | None = None) -> dict[str, np.ndarray]:
    """The frames ``(n, frame_dim)`` float32 of each feature view in ``views`` (signal views
    are ignored) of ``audio`` (C, N) or (N,) at ``sample_rate`` Hz. A pair of identical
    channels (a mono file) carries no interaural cue: ``n = 0``."""
    audio = _as_channels(audio, path)
    left, right = audio[0], audio[-1]
    identical = audio.shape[0] == 1 or channels_identical(audio)
    out = {}
    for name in feature_views(views):
        spec = VIEW_DEFINITIONS[name]
        out[name] = (np.zeros((0, spec.frame_dim), np.float32) if identical else
                     np.ascontiguousarray(spec.frames(left, right, int(sample_rate)),
                                          dtype=np.float32))
    return out


def silent_views(signals: Mapping[str, np.ndarray],
                 threshold_db: float = SILENT_VIEW_DB) -> set[str]:
    """Views of one file that carry no signal of their own -> set of view names.

    A view is *silent* when its RMS lies more than ``-threshold_db`` dB below the reference
    level, the largest RMS of the views marked ``silence_reference`` (``left``, ``right`` and
    ``mid``) among ``signals`` (for a stereo
    file the mid view, ``L + R``; for a file with one dead channel, the live one). With the
    default -40 dB, the Side of identical channels or of a mono file (all zeros) is silent,
    while real stereo (EMOVO: Side/Mid RMS ratio about 1.1, i.e. +1 dB) is far from it.
    Encoders scale every input to its own maximum, so a silent view would otherwise turn
    into amplified rounding noise; binser gives such a view no frames (see
    :mod:`binser.features`). A file whose reference level is 0 (all silent) gives every view.
    """
    levels = {v: _rms(np.asarray(x)) for v, x in signals.items()}
    reference = max((levels[v] for v in levels if _is_reference(v)),
                    default=max(levels.values(), default=0.0))
    if reference <= 0.0:
        return set(levels)
    limit = reference * 10.0 ** (threshold_db / 20.0)
    return {v for v, level in levels.items() if level < limit}


def _is_reference(view: str) -> bool:
    spec = VIEW_DEFINITIONS.get(view)
    return spec is not None and spec.silence_reference


def file_silent_views(signals: Mapping[str, np.ndarray],
                      threshold_db: float = SILENT_VIEW_DB) -> set[str]:
    """:func:`silent_views` of the views of one file that can be silent (``can_be_silent``
    in :data:`VIEW_DEFINITIONS`; ``signals`` as returned by :func:`binaural_views`)."""
    return silent_views({v: signals[v] for v in silence_checked_views() if v in signals},
                        threshold_db)


# ----------------------------------------------------------------------------- statistics


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _dbfs(rms: float) -> float:
    """RMS level in dB relative to full scale 1.0 (a full-scale sine reads -3.01 dBFS)."""
    return float(20.0 * np.log10(max(rms, _DBFS_FLOOR)))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-length signals; 0.0 if either is constant."""
    a = a.astype(np.float64) - a.mean(dtype=np.float64)
    b = b.astype(np.float64) - b.mean(dtype=np.float64)
    denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / denom) if denom > 0 else 0.0


def _delay_lag(left: np.ndarray, right: np.ndarray, max_lag: int) -> tuple[int, float]:
    """Lag maximising ``c[k] = sum_n right[n + k] * left[n]`` over ``|k| <= max_lag``.

    Returns the integer lag and a sub-sample refinement of it (parabola through the peak
    and its two neighbours). A right channel equal to the left one delayed by D samples
    peaks at k = +D.
    """
    from scipy.signal import correlate, correlation_lags

    a = left.astype(np.float64) - left.mean(dtype=np.float64)
    b = right.astype(np.float64) - right.mean(dtype=np.float64)
    xcorr = correlate(b, a, mode="full", method="fft")
    lags = correlation_lags(b.size, a.size, mode="full")
    window = np.flatnonzero(np.abs(lags) <= max_lag)
    peak = window[np.argmax(xcorr[window])]
    return int(lags[peak]), float(lags[peak]) + _parabolic_offset(xcorr, peak)


def _parabolic_offset(values: np.ndarray, i: int) -> float:
    """Offset in (-0.5, 0.5) of the vertex of the parabola through values[i-1 .. i+1]."""
    if i == 0 or i == values.size - 1:
        return 0.0
    left, centre, right = values[i - 1], values[i], values[i + 1]
    curvature = left - 2.0 * centre + right
    if curvature >= 0.0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


def _aligned(left: np.ndarray, right: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping parts of ``left`` and ``right`` after undoing a right-channel lag ``lag``."""
    if lag >= 0:
        return left[: left.size - lag], right[lag:]
    return left[-lag:], right[: right.size + lag]


def channel_stats(audio: np.ndarray, sr: int, max_delay_ms: float = 5.0) -> dict:
    """Inter-channel statistics of ``audio`` (C, N) or (N,) at ``sr`` Hz.

    Returns a dict with

    * ``channels``: C (1 or 2);
    * ``correlation``: Pearson correlation of L and R at zero lag (0.0 if a channel is
      constant, unless the channels are identical);
    * ``delay_samples``: the integer lag within +-``max_delay_ms`` ms that maximises the
      cross-correlation of L and R (``scipy.signal.correlate``, FFT); positive = the right
      channel lags the left;
    * ``delay_ms``: that lag in ms, refined below one sample by a parabola through the
      correlation peak and its two neighbours;
    * ``correlation_at_delay``: Pearson correlation of the overlapping parts of L and R
      after aligning them by that lag;
    * ``side_mid_rms_ratio``: RMS(L - R) / RMS(L + R) (independent of the side scale;
      0.0 when both are zero, ``inf`` when only Mid is zero);
    * ``identical``: the two channels are bit-identical (Side all zeros);
    * ``rms_dbfs``: per-channel RMS level, dB re full scale 1.0 (floored at -200 dBFS).

    Mono input gives correlation 1, delay 0, ratio 0 and ``identical`` False.
    """
    audio = _as_channels(audio, None)
    if audio.shape[1] == 0:
        raise AudioError(None, "channel statistics need at least one sample, got 0")
    levels = [_dbfs(_rms(channel)) for channel in audio]
    if audio.shape[0] == 1:
        return {"channels": 1, "correlation": 1.0, "delay_samples": 0, "delay_ms": 0.0,
                "correlation_at_delay": 1.0, "side_mid_rms_ratio": 0.0, "identical": False,
                "rms_dbfs": levels}
    left, right = audio[0], audio[1]
    identical = channels_identical(audio)
    max_lag = int(round(max_delay_ms * sr / 1000.0))
    lag, fine_lag = (0, 0.0) if identical else _delay_lag(left, right, max_lag)
    return {
        "channels": 2,
        "correlation": 1.0 if identical else _pearson(left, right),
        "delay_samples": lag,
        "delay_ms": 1000.0 * fine_lag / sr,
        "correlation_at_delay": 1.0 if identical else _pearson(*_aligned(left, right, lag)),
        "side_mid_rms_ratio": _side_mid_ratio(left, right),
        "identical": identical,
        "rms_dbfs": levels,
    }


def _side_mid_ratio(left: np.ndarray, right: np.ndarray) -> float:
    side = _rms(left.astype(np.float64) - right)
    mid = _rms(left.astype(np.float64) + right)
    if mid == 0.0:
        return 0.0 if side == 0.0 else float("inf")
    return side / mid
