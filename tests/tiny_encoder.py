"""A test-only backbone family: a tiny frame encoder in numpy (no network, no download).

It is the proof that a backbone family is one module and one registry line: the test
registers it with ``register(Family("tiny", "tiny_encoder", ("tiny-enc",), encoder=True))``
and trains, saves, loads and predicts with it through the ordinary code paths.

Definition (float32 signal ``x`` at 16 kHz): frames of :data:`HOP` = 320 samples (20 ms,
50 rows per second; the last one zero-padded), ``n = ceil(N / 320)`` rows. Layer 0, per
frame ``f``: ``log(mean(f^2) + 1e-8)``, the zero-crossing rate, and the log energies
``log(sum |F_k|^2 + 1e-8)`` of :data:`N_BANDS` equal bands of its real FFT, ``d`` = 8.
Layer ``l`` in 1..2: ``tanh(h_{l-1} @ W_l + b_l)`` with ``W_l, b_l`` drawn from
``default_rng(seed)`` (normal, scale 0.5). ``weights_id``: 16 hex digits of sha256 over
the weights.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from binser.backbones.encoder import FrameEncoder
from binser.errors import ConfigError, ModelError

HOP = 320
N_BANDS = 6
D = 2 + N_BANDS
N_LAYERS = 2


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (0.5 * rng.standard_normal(shape)).astype(np.float32)
            for l in range(1, N_LAYERS + 1)
            for name, shape in ((f"w{l}", (D, D)), (f"b{l}", (D,)))}


def frames0(signal: np.ndarray) -> np.ndarray:
    """Layer 0 rows ``(ceil(N / 320), 8)`` of one signal (see the module docstring)."""
    x = np.asarray(signal, np.float32)
    n = -(-len(x) // HOP)
    f = np.zeros((n, HOP), np.float32)
    f.reshape(-1)[:len(x)] = x
    energy = np.log(np.mean(f.astype(np.float64) ** 2, axis=1) + 1e-8)
    zcr = np.mean(np.signbit(f[:, 1:]) != np.signbit(f[:, :-1]), axis=1)
    power = np.abs(np.fft.rfft(f.astype(np.float64), axis=1)) ** 2
    bands = [np.log(b.sum(axis=1) + 1e-8) for b in np.array_split(power, N_BANDS, axis=1)]
    return np.column_stack([energy, zcr, *bands]).astype(np.float32)


class TinyEncoder(FrameEncoder):
    """The tiny encoder as a backbone (family ``tiny``)."""

    family = "tiny"
    frame_rate = 50.0
    sample_rate = 16000
    n_layers = N_LAYERS
    feature_dim = D

    def __init__(self, name: str, weights: Mapping[str, np.ndarray], source: str = "seed 0"):
        self.name, self.weights, self.source = name, dict(weights), source
        self.pretrained = True
        digest = hashlib.sha256()
        for key in sorted(self.weights):
            digest.update(key.encode() + self.weights[key].tobytes())
        self.weights_id = digest.hexdigest()[:16]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: Any) -> "TinyEncoder":
        if torch.device(device).type != "cpu":
            raise ConfigError(f"{self.name} runs on the CPU only")
        return self

    def n_frames(self, n_samples: int) -> int:
        return -(-int(n_samples) // HOP)

    def encode(self, signals: Sequence[np.ndarray], layers: Sequence[int]
               ) -> list[dict[int, np.ndarray]]:
        bad = [k for k in layers if k not in self.layers]
        if bad:
            raise ConfigError(f"{self.name}: layers must lie in 0..{N_LAYERS}, got {bad}")
        out = []
        for signal in signals:
            h = [frames0(signal)]
            for k in range(1, N_LAYERS + 1):
                h.append(np.tanh(h[-1] @ self.weights[f"w{k}"] + self.weights[f"b{k}"]))
            out.append({k: h[k].astype(np.float32) for k in layers})
        return out

    def save(self, path: str | Path, keep_head: bool = False) -> None:
        from safetensors.numpy import save_file

        save_file(self.weights, str(path), metadata={"binser": "tiny-encoder"})

    def describe(self, mode: str, layer: int | None) -> dict[str, Any]:
        return {"layer": layer, "head_stored": False}

    def card_line(self, mode: str, layer: int | None) -> str:
        return f"- backbone: tiny test encoder {self.name}, layer {layer}"


def load(name: str, weights: str | Path | None = None, cache_dir: str | Path | None = None,
         input_size: int | None = None, allow_random: bool = False) -> TinyEncoder:
    return TinyEncoder(name, _weights(0))


def model_spec(where: Path, spec: Mapping[str, Any], mode: str) -> int:
    layer = spec["layer"]
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= N_LAYERS:
        raise ModelError(f"{where}: backbone layer {layer!r} is not in 0..{N_LAYERS}")
    return layer


def model_backbones(root: Path, spec: Mapping[str, Any], files: Mapping[str, str],
                    views: Sequence[str]) -> dict[str, TinyEncoder]:
    from safetensors.numpy import load_file

    (name,) = {files[v] for v in views}
    backbone = TinyEncoder(spec["name"], load_file(str(root / name)), source=str(root / name))
    if any(spec["weights_id"][v] != backbone.weights_id for v in views):
        raise ModelError(f"{root / name}: weights differ from the ones trained with")
    return {v: backbone for v in views}
