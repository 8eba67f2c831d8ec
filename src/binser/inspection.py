"""`binser inspect`: what is in one file, and does it carry binaural information?"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .audio import audio_info, load_audio
from .config import FrontEndConfig
from .plots import plot_views_spectrogram
from .spectrogram import log_mel_batch
from .views import VIEWS, binaural_views, channel_stats


@dataclass(frozen=True)
class FileInspection:
    """Facts about one file. Durations in seconds, delay in ms, levels in dBFS."""

    path: str
    native_sample_rate: int
    channels: int
    duration_s: float
    codec: str
    stats: dict

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_file(path: str | Path, config: FrontEndConfig = FrontEndConfig(),
                 figure: str | Path | None = None) -> FileInspection:
    """Read ``path`` (audio or video), compute channel statistics and optionally save the
    four-view Mel spectrogram figure (the paper's Fig. 1) to ``figure``."""
    info = audio_info(path)
    audio = load_audio(path, sr=config.sample_rate, max_duration_s=config.max_duration_s)
    stats = channel_stats(audio, config.sample_rate)
    if figure is not None:
        views = binaural_views(audio, side_scale=config.side_scale, path=path)
        stacked = np.stack([views[v] for v in VIEWS])
        logmels = log_mel_batch(stacked, config.sample_rate, config)
        plot_views_spectrogram(dict(zip(VIEWS, logmels)), figure, config,
                               title=f"{Path(path).name}: log-Mel of the four binaural views")
    return FileInspection(path=str(path), native_sample_rate=int(info.sample_rate),
                          channels=int(info.channels), duration_s=float(info.duration_s),
                          codec=str(info.codec), stats=stats)


def format_inspection(result: FileInspection) -> str:
    """Human-readable summary of :func:`inspect_file`'s result."""
    lines = [f"file:          {result.path}",
             f"sample rate:   {result.native_sample_rate} Hz ({result.codec})",
             f"channels:      {result.channels}",
             f"duration:      {result.duration_s:.2f} s"]
    for key, value in result.stats.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{key + ':':<15}{text}")
    return "\n".join(lines)
