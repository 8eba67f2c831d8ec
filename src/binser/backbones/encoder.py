"""Shared behaviour of frame encoders (backbones whose rows are encoder frames).

:class:`FrameEncoder` is the part of the :class:`~binser.backbones.registry.Backbone`
interface every speech encoder has in common; a family subclasses it and supplies
``encode(signals, layers) -> [{layer: (n_i, d)}, ...]``, ``n_layers`` (``L``: layers
``0..L``), ``frame_rate`` (rows per second), ``sample_rate`` (Hz of its input signals),
``n_frames(n_samples)`` (rows of a signal of that many samples), ``device``, ``to``,
``save``, ``describe`` and ``card_line``.

Chunks: :func:`binser.features.encode_signals` encodes long signals as the encoder's own
input chunks, each alone (so a signal's frames never depend on its batch):
``chunks(signal) -> [chunk, ...]`` (default: the whole signal is one chunk),
``encode_chunk(chunk, layers) -> {layer: (n_c, d)}`` (default: :meth:`encode` of that
chunk), ``encode_chunks(chunks, layers)`` (equal-shape chunks as one batch; default: one at
a time) and ``chunk_seconds(chunk)`` (seconds of audio a chunk covers, for progress; default
``chunk.shape[-1] / sample_rate``). A signal's frames are its chunks' frames in order.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class FrameEncoder:
    """Defaults of the frame-encoder part of the backbone interface (see the module)."""

    frame_rate: float
    sample_rate: int
    n_layers: int
    weights_id: str

    @property
    def layers(self) -> tuple[int, ...]:
        """Valid layer keys ``0..L``."""
        return tuple(range(self.n_layers + 1))

    @property
    def extractor_class(self) -> type:
        """:class:`~binser.features.FrameFeatureExtractor`: files -> encoder frames."""
        from ..features import FrameFeatureExtractor

        return FrameFeatureExtractor

    def refresh_weights_id(self) -> str:
        """Frozen encoders keep the identity they were loaded with."""
        return self.weights_id

    def chunks(self, signal: np.ndarray) -> list[Any]:
        """The encoder's input chunks of one signal (default: the signal itself)."""
        return [signal]

    def encode_chunk(self, chunk: Any, layers: Sequence[int]) -> dict[int, np.ndarray]:
        """One chunk encoded alone -> layer -> ``(n_c, d)`` float32."""
        return self.encode([chunk], layers)[0]

    def encode_chunks(self, chunks: Sequence[Any], layers: Sequence[int]
                      ) -> list[dict[int, np.ndarray]]:
        """Chunks of one shape encoded together (default: one at a time, exactly)."""
        return [self.encode_chunk(c, layers) for c in chunks]

    def chunk_seconds(self, chunk: Any) -> float:
        """Seconds of audio ``chunk`` covers."""
        return np.shape(chunk)[-1] / self.sample_rate

    def encode(self, signals: Sequence[np.ndarray], layers: Sequence[int]
               ) -> list[dict[int, np.ndarray]]:
        raise NotImplementedError
