"""One configuration object for the front end, with the paper's values as defaults.

Units are stated in each field's name or comment. ``FrontEndConfig.digest()`` is a stable
hash of every field, used to key feature caches so that features computed with different
settings never mix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class FrontEndConfig:
    """Audio -> log-Mel -> segments -> 3-channel images (docs/METHOD.md sections 1-4).

    Defaults follow Zhang et al. (2020): 16 kHz, 64 Mel bands 20-8000 Hz, Hamming window of
    25 ms, hop of 10 ms, 64-frame segments (0.64 s), segment hop 30 frames.
    """

    sample_rate: int = 16000          # Hz, every input is resampled to this
    n_mels: int = 64                  # Mel bands
    fmin: float = 20.0                # Hz, lowest Mel band edge
    fmax: float = 8000.0              # Hz, highest Mel band edge
    win_ms: float = 25.0              # analysis window length, ms
    hop_ms: float = 10.0              # frame hop, ms (the paper's "overlap of 10 ms")
    n_fft: int = 512                  # FFT size, samples (>= window length)
    window: str = "hamming"
    center: bool = True               # frames centred on hop multiples (zero padding)
    power_floor: float = 1e-10        # power floor before log: log-Mel is never -inf
    segment_frames: int = 64          # context window, frames (64 frames = 0.64 s)
    segment_hop: int = 30             # frames between segment starts
    delta_width: int = 9              # regression window for delta / delta-delta (odd, >= 3)
    side_scale: float = 1.0           # M = s*(L+R), S = s*(L-R); the paper's s = 1
    max_duration_s: float = 600.0     # longer inputs are refused (configurable)
    channels: tuple[int, int] | None = None   # 0-based (left, right) picked from every file
    #                                           (--channels I,J); None: the file's own 1 or 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", check_channel_pair(self.channels))
        if self.win_length > self.n_fft:
            raise ConfigError(f"window of {self.win_length} samples exceeds n_fft={self.n_fft}")
        if not 0 < self.fmin < self.fmax <= self.sample_rate / 2:
            raise ConfigError(f"need 0 < fmin < fmax <= sample_rate/2, got {self.fmin}, {self.fmax}")
        if self.segment_frames < 1 or self.segment_hop < 1:
            raise ConfigError("segment_frames and segment_hop must be >= 1")
        if self.delta_width < 3 or self.delta_width % 2 == 0:
            raise ConfigError(f"delta_width must be odd and >= 3, got {self.delta_width}")

    @property
    def win_length(self) -> int:
        """Window length in samples (400 at 16 kHz / 25 ms)."""
        return int(round(self.sample_rate * self.win_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        """Frame hop in samples (160 at 16 kHz / 10 ms)."""
        return int(round(self.sample_rate * self.hop_ms / 1000.0))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FrontEndConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown front-end option(s): {', '.join(sorted(unknown))}")
        return cls(**values)

    def digest(self) -> str:
        """Stable 16-hex-digit hash of every field (for cache keys). A field added after
        caches existed is left out while it holds its neutral value
        (:data:`NEUTRAL_FIELDS`), so those caches keep their keys."""
        values = {k: v for k, v in self.to_dict().items()
                  if not (k in NEUTRAL_FIELDS and v == NEUTRAL_FIELDS[k])}
        text = json.dumps(values, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


NEUTRAL_FIELDS: dict[str, Any] = {"channels": None}


def check_channel_pair(channels: Any) -> tuple[int, int] | None:
    """``channels`` as a tuple of two different 0-based channel indices (left, right), or
    None; ConfigError naming ``--channels I,J`` for anything else."""
    if channels is None:
        return None
    picks = list(channels) if isinstance(channels, (list, tuple)) else None
    if (picks is None or len(picks) != 2
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in picks)):
        raise ConfigError(f"channels (--channels I,J) must be two 0-based channel indices, "
                          f"got {channels!r}")
    if min(picks) < 0:
        raise ConfigError(f"channels (--channels I,J) must be >= 0, got {picks[0]},{picks[1]}")
    if picks[0] == picks[1]:
        raise ConfigError(f"channels (--channels I,J): left and right must be two different "
                          f"channels, got {picks[0]},{picks[1]}")
    return int(picks[0]), int(picks[1])
