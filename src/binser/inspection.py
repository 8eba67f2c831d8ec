"""`binser inspect`: what is in one file, and does it carry binaural information?"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .audio import audio_info, load_audio
from .config import FrontEndConfig
from .plots import plot_views_spectrogram
from .spectrogram import log_mel_batch
from .views import VIEWS, MonoInputWarning, binaural_views, channel_stats

LABEL_WIDTH = 22   # text report: labels padded to this many characters


@dataclass(frozen=True)
class FileInspection:
    """Facts about one file. Durations in seconds, delay in ms, levels in dBFS.

    ``channels`` is the file's own channel count; ``picked_channels`` the two 0-based
    channels used as left and right (``--channels I,J``), None when the file's own one or
    two are used; ``stats`` is :func:`binser.views.channel_stats` of the channels used.
    """

    path: str
    native_sample_rate: int
    channels: int
    duration_s: float
    codec: str
    stats: dict
    picked_channels: tuple[int, int] | None = None

    @property
    def mono(self) -> bool:
        """True when the signal used has one channel (L = R: the binaural views collapse)."""
        return int(self.stats.get("channels", self.channels)) == 1

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_file(path: str | Path, config: FrontEndConfig = FrontEndConfig(),
                 figure: str | Path | None = None) -> FileInspection:
    """Read ``path`` (audio or video), compute channel statistics and optionally save the
    four-view Mel spectrogram figure (the paper's Fig. 1) to ``figure``. The channels used
    are ``config.channels`` (left, right) when set. A mono file is not warned about here:
    the result says so (:attr:`FileInspection.mono`; see :func:`mono_note`)."""
    info = audio_info(path)
    audio = load_audio(path, sr=config.sample_rate, channels=config.channels,
                       max_duration_s=config.max_duration_s)
    stats = channel_stats(audio, config.sample_rate)
    if figure is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MonoInputWarning)
            views = binaural_views(audio, side_scale=config.side_scale, path=path)
        stacked = np.stack([views[v] for v in VIEWS])
        logmels = log_mel_batch(stacked, config.sample_rate, config)
        plot_views_spectrogram(dict(zip(VIEWS, logmels)), figure, config,
                               title=f"{Path(path).name}: log-Mel of the four binaural views")
    return FileInspection(path=str(path), native_sample_rate=int(info.sample_rate),
                          channels=int(info.channels), duration_s=float(info.duration_s),
                          codec=str(info.codec), stats=stats,
                          picked_channels=config.channels)


def mono_note(result: FileInspection) -> str | None:
    """The warning for a mono file (one line), None for stereo."""
    if not result.mono:
        return None
    return (f"{result.path}: mono file (1 channel): binser uses L = R, so the Side view is "
            f"all zeros and the four binaural views collapse to two (left = right, mid = 2 x "
            f"left)")


def _line(label: str, value: str) -> str:
    return f"{label + ':':<{LABEL_WIDTH}}{value}"


def _channels_text(result: FileInspection) -> str:
    if result.picked_channels is not None:
        left, right = result.picked_channels
        return f"{result.channels} (using {left} as left and {right} as right: --channels " \
               f"{left},{right})"
    return f"{result.channels} ({'mono' if result.mono else 'stereo'})"


def _levels_text(levels: list[float], mono: bool) -> str:
    if mono:
        return f"{levels[0]:.2f} dBFS"
    return f"left {levels[0]:.2f} dBFS, right {levels[1]:.2f} dBFS"


def format_inspection(result: FileInspection) -> str:
    """Human-readable summary of :func:`inspect_file`'s result: one fact a line, rounded
    (levels to 0.01 dB, correlations and ratios to 0.001, delays to 0.001 ms). For a mono
    file the inter-channel figures, meaningless there, are left out. ``--json`` gives the
    unrounded values."""
    s = result.stats
    lines = [_line("file", result.path),
             _line("codec", result.codec),
             _line("sample rate", f"{result.native_sample_rate} Hz"),
             _line("channels", _channels_text(result)),
             _line("duration", f"{result.duration_s:.2f} s"),
             _line("RMS level", _levels_text(list(s["rms_dbfs"]), result.mono))]
    if result.mono:
        lines.append(_line("binaural views", "collapse: L = R, the Side view is all zeros"))
        return "\n".join(lines)
    lines += [_line("L/R correlation", f"{s['correlation']:.3f}"),
              _line("inter-channel delay", f"{s['delay_ms']:.3f} ms ({s['delay_samples']} "
                                           f"samples; positive: the right channel lags)"),
              _line("correlation at delay", f"{s['correlation_at_delay']:.3f}"),
              _line("Side/Mid RMS ratio", f"{s['side_mid_rms_ratio']:.3f}"),
              _line("identical channels", "yes (the Side view is all zeros)"
                    if s["identical"] else "no")]
    return "\n".join(lines)
