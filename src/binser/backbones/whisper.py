"""Whisper encoders as backbones: one vector per 20 ms frame from ONE chosen encoder layer.

A view (float32 signal ``(N,)`` at 16 kHz) becomes Whisper's log-Mel spectrogram
(:func:`whisper_log_mel`, ``(n_mels, T)`` with ``T = N // 160``, one frame per 10 ms), which
the encoder (:class:`WhisperEncoder`) turns into hidden states ``(ceil(T / 2), d)``, one row
per 20 ms (:data:`FRAME_S`). The backbone (:class:`WhisperBackbone`) returns, per view and per
requested layer, those rows as a float32 array ``(n, d)``; these rows are the view's
"segments" for everything downstream (pooling, classifiers, fusion).

Front end (exactly Whisper's, on the real, unpadded length), :func:`whisper_log_mel`:

1. STFT with a periodic Hann window of :data:`N_FFT` = 400 samples (25 ms), hop :data:`HOP`
   = 160 (10 ms), centred (the signal is reflect-padded by 200 samples on both sides, as
   ``torch.stft(center=True)``), giving ``1 + N // 160`` frames; the last frame is dropped,
   leaving ``T = N // 160``. Power ``|X|^2``. Computed in float64.
2. Slaney-normalised Mel filterbank, 0-8000 Hz (``librosa.filters.mel(sr=16000, n_fft=400,
   n_mels=n_mels)``), ``mel = F @ |X|^2``.
3. ``L = log10(max(mel, 1e-10))``; ``L = max(L, max(L) - 8)`` with the maximum taken over the
   whole utterance (all bands and frames); ``(L + 4) / 4``; returned as float32.

Reflect padding needs at least ``N_FFT // 2 + 1`` = 201 samples (12.6 ms); shorter signals
(which would give at most one Mel frame) raise :class:`~binser.errors.AudioError`.

Encoder (:class:`WhisperEncoder`, parameter names of Hugging Face's ``WhisperEncoder``):
``conv1`` (n_mels -> d, kernel 3, padding 1) + GELU, ``conv2`` (d -> d, kernel 3, stride 2,
padding 1) + GELU, plus the first ``ceil(T / 2)`` rows of the position table
``embed_positions.weight`` (``max_source_positions`` rows, so ``T <= 2 * max_source_positions``
= 3000 Mel frames = 30 s), then ``encoder_layers`` pre-norm Transformer blocks (``x + attn(LN(x))``,
``x + fc2(GELU(fc1(LN(x))))``; exact erf GELU; LayerNorm eps 1e-5; queries scaled by
``head_dim ** -0.5``; ``k_proj`` without bias) and a final ``layer_norm``.

Layer indices follow Hugging Face's ``hidden_states``: 0 = conv stem + positions, ``i`` in
``1 .. L-1`` = output of block ``i``, ``L`` = output of the last block after the final
``layer_norm`` (``L = encoder_layers``; whisper-base has ``L = 6``, indices 0..6).

Padding: the original model always sees 30 s (zero-padded Mel), and attention lets every frame
see that padding, so its outputs depend on the padding. Here every input is encoded on its own
real length; batches of different lengths are masked so that each item equals encoding it
alone: Mel frames and ``conv1`` activations beyond an item's length are zeroed (so ``conv2``
sees at the edge exactly the zero padding it sees on the unpadded input), and attention ignores
keys at output frames ``>= ceil(length / 2)``.

Long inputs (:meth:`WhisperBackbone.encode`): the log-Mel of the whole signal (its clamp uses
the whole utterance's maximum) is cut into chunks of :data:`CHUNK_FRAMES` = 3000 frames (30 s;
the last one shorter), each encoded on its own length; the outputs are concatenated in time, so
a signal gives ``n = sum_c ceil(T_c / 2)`` rows (``= ceil(T / 2)`` below 30 s).

Weights (:func:`load_whisper`): a Hugging Face folder (``model.safetensors`` [+ ``config.json``]),
such a ``.safetensors`` file, or an openai-whisper ``.pt`` checkpoint (read with
``weights_only=True``; no pickled code runs); without one, the cache folder
``<cache_dir>/whisper/<size>/`` or, if allowed, a download from the Hugging Face hub
(``openai/whisper-<size>``; needs the optional package ``huggingface_hub``). Weights are cast
to float32.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cache import default_cache_dir, file_sha256
from ..errors import AudioError, ConfigError, ModelError
from ..validation import check_choice
from .encoder import FrameEncoder
from .imagenet import state_dict_problems, weights_digest, weights_read_failure
from .registry import family

WHISPER_BACKBONES = family("whisper").names     # whisper-tiny ... whisper-large-v3
WHISPER_SIZES = tuple(n[len("whisper-"):] for n in WHISPER_BACKBONES)
HUB_REPO = "openai/whisper-{size}"
SAMPLE_RATE = 16000
HOP = 160
N_FFT = 400
CHUNK_FRAMES = 3000
FRAME_S = 0.02
MIN_SAMPLES = N_FFT // 2 + 1  # reflect padding of N_FFT // 2 needs more samples than that

# (d_model, encoder_layers, encoder_attention_heads, num_mel_bins) of the released models;
# large / large-v2 are not offered by name but recognised, so their weights are not taken
# for large-v3 by mistake.
RELEASED_DIMS = {
    "tiny": (384, 4, 6, 80),
    "base": (512, 6, 8, 80),
    "small": (768, 12, 12, 80),
    "medium": (1024, 24, 16, 80),
    "large-v3": (1280, 32, 20, 128),
    "large-v2": (1280, 32, 20, 80),
}

_HUB_FILES = ("model.safetensors", "config.json")


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------

_LIMITS = {  # field -> (lowest, highest) accepted value
    "d_model": (1, 4096),
    "encoder_layers": (1, 64),
    "encoder_attention_heads": (1, 4096),
    "encoder_ffn_dim": (1, 65536),
    "num_mel_bins": (1, 256),
    "max_source_positions": (1, 65536),
}


def _require(values: Any, keys: Sequence[str], what: str) -> None:
    """ConfigError unless ``values`` is a mapping holding every one of ``keys``."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{what}: expected a dict, got {type(values).__name__}")
    missing = [k for k in keys if k not in values]
    if missing:
        raise ConfigError(f"{what}: missing {', '.join(missing)}")


@dataclass(frozen=True)
class WhisperConfig:
    """Dimensions of a Whisper encoder (Hugging Face ``config.json`` names).

    ``d_model``: width d; ``encoder_layers``: number of blocks L; ``encoder_attention_heads``:
    heads (``d_model`` must be divisible by it); ``encoder_ffn_dim``: hidden width of the
    feed-forward part (4 d in every released model); ``num_mel_bins``: Mel bands of the input
    (80, or 128 for large-v3); ``max_source_positions``: rows of the position table (1500,
    i.e. at most 3000 Mel frames). Invalid values raise :class:`ConfigError`.
    """

    d_model: int
    encoder_layers: int
    encoder_attention_heads: int
    encoder_ffn_dim: int
    num_mel_bins: int
    max_source_positions: int = 1500

    def __post_init__(self) -> None:
        for name, (low, high) in _LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise ConfigError(f"Whisper config: {name} must be an integer, got {value!r}")
            if not low <= value <= high:
                raise ConfigError(f"Whisper config: {name} must be in {low}..{high}, "
                                  f"got {value}")
            object.__setattr__(self, name, int(value))
        if self.d_model % self.encoder_attention_heads:
            raise ConfigError(f"Whisper config: d_model {self.d_model} is not divisible by "
                              f"encoder_attention_heads {self.encoder_attention_heads}")

    @classmethod
    def from_hf(cls, config: Mapping) -> "WhisperConfig":
        """From a Hugging Face ``config.json`` dict (extra keys, e.g. the decoder's, ignored).

        ``encoder_ffn_dim`` defaults to ``4 * d_model`` and ``max_source_positions`` to 1500
        when absent; an ``activation_function`` other than GELU or a ``model_type`` other than
        whisper raise :class:`ConfigError`.
        """
        _require(config, (), "Whisper config")
        if config.get("model_type", "whisper") != "whisper":
            raise ConfigError(f"Whisper config: model_type is {config['model_type']!r}, "
                              "not 'whisper'")
        if config.get("activation_function", "gelu") != "gelu":
            raise ConfigError("Whisper config: only activation_function 'gelu' is supported, "
                              f"got {config['activation_function']!r}")
        _require(config, ("d_model", "encoder_layers", "encoder_attention_heads",
                          "num_mel_bins"), "Whisper config")
        d = config["d_model"]
        return cls(d_model=d, encoder_layers=config["encoder_layers"],
                   encoder_attention_heads=config["encoder_attention_heads"],
                   encoder_ffn_dim=config.get("encoder_ffn_dim",
                                              4 * d if isinstance(d, Integral) else d),
                   num_mel_bins=config["num_mel_bins"],
                   max_source_positions=config.get("max_source_positions", 1500))

    @classmethod
    def from_openai_dims(cls, dims: Mapping) -> "WhisperConfig":
        """From an openai-whisper checkpoint's ``dims`` (n_mels, n_audio_ctx, n_audio_state,
        n_audio_head, n_audio_layer); the feed-forward width is ``4 * n_audio_state``."""
        _require(dims, ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head",
                        "n_audio_layer"), "Whisper dims")
        d = dims["n_audio_state"]
        return cls(d_model=d, encoder_layers=dims["n_audio_layer"],
                   encoder_attention_heads=dims["n_audio_head"],
                   encoder_ffn_dim=4 * d if isinstance(d, Integral) else d,
                   num_mel_bins=dims["n_mels"], max_source_positions=dims["n_audio_ctx"])

    def to_dict(self) -> dict[str, int | str]:
        """Hugging Face ``config.json`` keys (readable back by :meth:`from_hf`)."""
        return {"model_type": "whisper", "d_model": self.d_model,
                "encoder_layers": self.encoder_layers,
                "encoder_attention_heads": self.encoder_attention_heads,
                "encoder_ffn_dim": self.encoder_ffn_dim, "num_mel_bins": self.num_mel_bins,
                "max_source_positions": self.max_source_positions}

    @property
    def dims(self) -> tuple[int, int, int, int]:
        """(d_model, encoder_layers, encoder_attention_heads, num_mel_bins)."""
        return (self.d_model, self.encoder_layers, self.encoder_attention_heads,
                self.num_mel_bins)


# --------------------------------------------------------------------------------------
# front end
# --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _mel_filters(n_mels: int) -> torch.Tensor:
    """Slaney Mel filterbank (n_mels, N_FFT // 2 + 1), 0-8000 Hz, float64 (read-only use)."""
    import librosa  # heavy import, once per band count

    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels, fmin=0.0,
                                fmax=SAMPLE_RATE / 2, htk=False, norm="slaney",
                                dtype=np.float64)
    return torch.from_numpy(np.ascontiguousarray(basis))


def whisper_log_mel(signal: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Whisper's normalised log-Mel of a 16 kHz signal ``(N,)`` -> ``(n_mels, N // 160)`` float32.

    See the module docstring for the exact definition. Needs ``N >= 201`` samples (else
    :class:`AudioError`); non-finite samples also raise :class:`AudioError`.
    """
    x = np.asarray(signal)
    if x.ndim != 1:
        raise AudioError(None, f"Whisper front end expects a 1-D signal, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise AudioError(None, f"Whisper front end expects real samples, got dtype {x.dtype}")
    if isinstance(n_mels, bool) or not isinstance(n_mels, Integral) or not 1 <= n_mels <= 256:
        raise ConfigError(f"n_mels must be an integer in 1..256, got {n_mels!r}")
    if x.size < MIN_SAMPLES:
        raise AudioError(None, f"signal of {x.size} samples is too short for Whisper's front "
                               f"end: at least {MIN_SAMPLES} samples "
                               f"({1000 * MIN_SAMPLES / SAMPLE_RATE:.1f} ms at 16 kHz)")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise AudioError(None, "signal holds non-finite samples (NaN or inf)")
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)
    spec = torch.stft(torch.from_numpy(x), N_FFT, HOP, window=window, center=True,
                      pad_mode="reflect", return_complex=True)  # (201, 1 + N // 160)
    parts = torch.view_as_real(spec[:, :-1])
    power = parts[..., 0] ** 2 + parts[..., 1] ** 2
    log_spec = torch.clamp(_mel_filters(int(n_mels)) @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).to(torch.float32).numpy()


def n_output_frames(n_samples: int) -> int:
    """Rows :meth:`WhisperBackbone.encode` returns for a signal of ``n_samples`` samples."""
    t = int(n_samples) // HOP
    full, rest = divmod(t, CHUNK_FRAMES)
    return full * (CHUNK_FRAMES // 2) + (rest + 1) // 2


# --------------------------------------------------------------------------------------
# encoder
# --------------------------------------------------------------------------------------

class WhisperSelfAttention(nn.Module):
    """Multi-head self-attention with Hugging Face's names (``k_proj`` has no bias)."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = d_model // heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S, d), boolean mask broadcastable to (B, heads, S, S) (True = attend)."""
        b, s, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)),
                                             split(self.v_proj(x)), attn_mask=mask,
                                             scale=self.head_dim ** -0.5)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, d))


class WhisperEncoderBlock(nn.Module):
    """Pre-norm Transformer block: ``x + attn(LN(x))``, then ``x + fc2(GELU(fc1(LN(x))))``."""

    def __init__(self, config: WhisperConfig):
        super().__init__()
        d = config.d_model
        self.self_attn = WhisperSelfAttention(d, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask)
        x = x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        if x.dtype == torch.float16:  # as Hugging Face does, against inf in half precision
            limit = torch.finfo(torch.float16).max - 1000
            x = torch.clamp(x, min=-limit, max=limit)
        return x


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder; state-dict names equal Hugging Face's ``WhisperEncoder``'s.

    ``forward(mel (B, n_mels, T), lengths (B,) | None, layers)`` -> ``{i: (B, ceil(T/2), d)}``
    for every requested layer index ``i`` (0..L, Hugging Face ``hidden_states`` numbering);
    rows at or beyond an item's ``ceil(length / 2)`` are padding (finite, meaningless).
    """

    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.conv1 = nn.Conv1d(config.num_mel_bins, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(config.max_source_positions, d)
        self.layers = nn.ModuleList(WhisperEncoderBlock(config)
                                    for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(d)

    def check_layers(self, layers: Iterable[int]) -> list[int]:
        """Sorted distinct layer indices; :class:`ConfigError` unless each is in 0..L."""
        n = self.config.encoder_layers
        try:
            wanted = list(layers)
        except TypeError:
            raise ConfigError(f"layers must be a sequence of integers in 0..{n}, "
                              f"got {layers!r}") from None
        bad = [i for i in wanted if isinstance(i, bool) or not isinstance(i, Integral)
               or not 0 <= i <= n]
        if bad or not wanted:
            raise ConfigError(f"Whisper layer indices must be integers in 0..{n} (0 = conv "
                              f"stem + positions, {n} = last block after the final layer "
                              f"norm); got {wanted!r}")
        return sorted({int(i) for i in wanted})

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor | None = None,
                layers: Sequence[int] = ()) -> dict[int, torch.Tensor]:
        wanted = self.check_layers(layers)
        cfg = self.config
        if mel.ndim != 3 or mel.shape[1] != cfg.num_mel_bins:
            raise ConfigError(f"Whisper encoder expects Mel input (B, {cfg.num_mel_bins}, T), "
                              f"got {tuple(mel.shape)}")
        batch, _, t = mel.shape
        if not 1 <= t <= 2 * cfg.max_source_positions:
            raise ConfigError(f"Whisper encoder: {t} Mel frames; must be 1.."
                              f"{2 * cfg.max_source_positions} (30 s), encode longer "
                              "inputs in chunks")
        n_out = (t + 1) // 2
        mask = None
        if lengths is not None:
            lengths = torch.as_tensor(lengths).to(device=mel.device, dtype=torch.long)
            if lengths.shape != (batch,):
                raise ConfigError(f"lengths must have shape ({batch},), got "
                                  f"{tuple(lengths.shape)}")
            low, high = int(lengths.min()), int(lengths.max())
            if low < 1 or high > t:
                raise ConfigError(f"lengths must be in 1..{t} (Mel frames), got {low}..{high}")
            if low == t:
                lengths = None  # nothing padded: no mask needed
        if lengths is not None:
            valid = torch.arange(t, device=mel.device) < lengths[:, None]  # (B, T)
            mel = mel.masked_fill(~valid[:, None, :], 0.0)
            x = F.gelu(self.conv1(mel)).masked_fill(~valid[:, None, :], 0.0)
            keys = torch.arange(n_out, device=mel.device) < ((lengths + 1) // 2)[:, None]
            mask = keys[:, None, None, :]  # (B, 1, 1, S): True = attend
        else:
            x = F.gelu(self.conv1(mel))
        h = F.gelu(self.conv2(x)).transpose(1, 2) + self.embed_positions.weight[:n_out]
        out = {0: h} if 0 in wanted else {}
        n_layers = cfg.encoder_layers
        for i in range(max(wanted)):
            h = self.layers[i](h, mask)
            if i + 1 == n_layers:
                h = self.layer_norm(h)
            if i + 1 in wanted:
                out[i + 1] = h
        return out


# --------------------------------------------------------------------------------------
# the backbone
# --------------------------------------------------------------------------------------

@dataclass(eq=False)
class WhisperBackbone(FrameEncoder):
    """A Whisper encoder with its identity; :meth:`encode` maps signals to layer outputs
    (the :class:`~binser.backbones.registry.Backbone` interface, family ``whisper``: one row
    per 20 ms, layers ``0..L``; chunks are the 30 s Mel chunks).

    ``name``: e.g. ``"whisper-base"``; ``size``: ``"base"``; ``model``: :class:`WhisperEncoder`
    in eval mode (float32 on the CPU until :meth:`to`); ``weights_id``: 16 hex digits of
    :func:`~binser.backbones.imagenet.weights_digest` over the (float32) state dict;
    ``weights_sha256``: sha256 of the weights file read (full hex); ``source``: that file.
    """

    name: str
    size: str
    config: WhisperConfig
    model: WhisperEncoder = field(repr=False)
    weights_id: str
    weights_sha256: str
    source: str
    pretrained: bool = True
    family: ClassVar[str] = "whisper"
    frame_rate: ClassVar[float] = 1.0 / FRAME_S     # 50 rows per second
    sample_rate: ClassVar[int] = SAMPLE_RATE

    @property
    def feature_dim(self) -> int:
        """d: width of every layer's output."""
        return self.config.d_model

    @property
    def n_layers(self) -> int:
        """L: valid layer indices are 0..L."""
        return self.config.encoder_layers

    @property
    def n_mels(self) -> int:
        """Mel bands of the front end (80, or 128 for large-v3)."""
        return self.config.num_mel_bins

    @property
    def device(self) -> torch.device:
        """Device of the model's weights."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point type of the model's weights."""
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None
           ) -> "WhisperBackbone":
        """Move the model (optionally cast to float16/bfloat16, on a GPU only); returns self."""
        device = torch.device(device)
        if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ConfigError(f"{self.name}: dtype must be float32, float16 or bfloat16, "
                              f"got {dtype}")
        if dtype in (torch.float16, torch.bfloat16) and device.type == "cpu":
            raise ConfigError(f"{self.name}: {dtype} is only supported on a GPU, not on the CPU")
        self.model.to(device=device, dtype=dtype)
        return self

    def log_mel(self, signal: np.ndarray) -> np.ndarray:
        """:func:`whisper_log_mel` with this model's band count."""
        return whisper_log_mel(signal, self.n_mels)

    def encode(self, signals: Sequence[np.ndarray], layers: Sequence[int],
               max_batch_frames: int = 24000) -> list[dict[int, np.ndarray]]:
        """Per signal ``(N_i,)``, a dict layer index -> ``(n_i, d)`` float32 hidden states.

        ``n_i = sum_c ceil(T_c / 2)`` over the signal's 30 s chunks (:func:`n_output_frames`).
        Chunks of similar length (sorted by length) are batched up to ``max_batch_frames``
        padded Mel frames per batch (a longer chunk goes alone) and masked, so results do
        not depend on the batching. No gradient.
        """
        wanted = self.model.check_layers(layers)
        if isinstance(signals, np.ndarray) and signals.ndim == 1:
            raise ConfigError("encode expects a sequence of signals; use encode_one for one")
        if isinstance(max_batch_frames, bool) or not isinstance(max_batch_frames, Integral) \
                or max_batch_frames < 1:
            raise ConfigError(f"max_batch_frames must be a positive integer, "
                              f"got {max_batch_frames!r}")
        chunks = []  # (signal index, chunk index, (n_mels, T_c) float32)
        n_chunks = []
        for i, signal in enumerate(signals):
            try:
                pieces = self.mel_chunks(signal)
            except AudioError as exc:
                raise AudioError(None, f"signal {i}: {exc.cause}") from None
            n_chunks.append(len(pieces))
            chunks.extend((i, c, piece) for c, piece in enumerate(pieces))
        outputs: list[list[dict[int, np.ndarray] | None]] = [[None] * n for n in n_chunks]
        order = sorted(range(len(chunks)), key=lambda k: -chunks[k][2].shape[1])
        device, dtype = self.device, self.dtype
        start = 0
        with torch.inference_mode():
            while start < len(order):
                longest = chunks[order[start]][2].shape[1]
                count = max(1, min(len(order) - start, int(max_batch_frames) // longest))
                members = [chunks[k] for k in order[start:start + count]]
                start += count
                batch = np.zeros((len(members), self.n_mels, longest), dtype=np.float32)
                lengths = [m[2].shape[1] for m in members]
                for j, (_, _, mel) in enumerate(members):
                    batch[j, :, :mel.shape[1]] = mel
                mel_t = torch.from_numpy(batch).to(device=device, dtype=dtype)
                result = self.model(mel_t, torch.tensor(lengths), wanted)
                result = {k: v.float().cpu().numpy() for k, v in result.items()}
                for j, (i, c, _) in enumerate(members):
                    rows = (lengths[j] + 1) // 2
                    outputs[i][c] = {k: v[j, :rows].copy() for k, v in result.items()}
        joined = []
        for parts in outputs:
            joined.append({k: parts[0][k] if len(parts) == 1 else
                           np.concatenate([p[k] for p in parts], axis=0) for k in wanted})
        return joined

    def mel_chunks(self, signal: np.ndarray) -> list[np.ndarray]:
        """The signal's log-Mel (normalised over the whole signal) cut into chunks of at
        most :data:`CHUNK_FRAMES` frames ``[(n_mels, T_c), ...]``: the encoder's inputs."""
        mel = self.log_mel(signal)
        return [mel[:, s:s + CHUNK_FRAMES] for s in range(0, mel.shape[1], CHUNK_FRAMES)]

    def encode_chunk(self, mel: np.ndarray, layers: Sequence[int]) -> dict[int, np.ndarray]:
        """One Mel chunk ``(n_mels, T_c)`` encoded alone (no padding, no mask) -> layer ->
        ``(ceil(T_c / 2), d)`` float32. A signal of at most 30 s is one chunk, and this
        equals :meth:`encode` of that signal."""
        wanted = self.model.check_layers(layers)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[None]
            result = self.model(x.to(device=self.device, dtype=self.dtype), None, wanted)
            return {k: v[0].float().cpu().numpy() for k, v in result.items()}

    def encode_chunks(self, mels: Sequence[np.ndarray], layers: Sequence[int]
                      ) -> list[dict[int, np.ndarray]]:
        """Mel chunks of ONE length ``(n_mels, T)`` encoded as one batch (no padding, so no
        mask) -> per chunk, layer -> ``(ceil(T / 2), d)`` float32. Equals
        :meth:`encode_chunk` of each to float32 rounding (about 1e-6: a batched matrix
        product may sum in another order), not bit for bit."""
        wanted = self.model.check_layers(layers)
        if len({m.shape for m in mels}) > 1:
            raise ConfigError("encode_chunks needs Mel chunks of one shape")
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(np.stack(mels), dtype=np.float32))
            result = self.model(x.to(device=self.device, dtype=self.dtype), None, wanted)
            result = {k: v.float().cpu().numpy() for k, v in result.items()}
        return [{k: v[j].copy() for k, v in result.items()} for j in range(len(mels))]

    def encode_one(self, signal: np.ndarray, layers: Sequence[int]) -> dict[int, np.ndarray]:
        """:meth:`encode` for a single signal ``(N,)``."""
        return self.encode([signal], layers)[0]

    def chunks(self, signal: np.ndarray) -> list[np.ndarray]:
        """The encoder's input chunks: :meth:`mel_chunks`."""
        return self.mel_chunks(signal)

    def chunk_seconds(self, chunk: np.ndarray) -> float:
        """Seconds of audio a Mel chunk ``(n_mels, T_c)`` covers (``T_c`` hops of 10 ms)."""
        return chunk.shape[1] * HOP / SAMPLE_RATE

    def n_frames(self, n_samples: int) -> int:
        """Rows of a signal of ``n_samples`` samples (:func:`n_output_frames`)."""
        return n_output_frames(n_samples)

    def save(self, path: str | Path, keep_head: bool = False) -> None:
        """The encoder's state dict as float32 safetensors under Hugging Face's encoder
        names without prefix (readable by :func:`load_whisper`; no head to keep)."""
        from safetensors.torch import save_file

        state = {k: v.detach().to(device="cpu", dtype=torch.float32).clone().contiguous()
                 for k, v in self.model.state_dict().items()}
        save_file(state, str(path), metadata={"format": "pt", "binser": "whisper-encoder",
                                              "name": self.name})

    def describe(self, mode: str, layer: int | None) -> dict[str, Any]:
        """model.json ``backbone`` fields of this family: layer, encoder config, the source
        weights' sha256."""
        return {"layer": layer, "config": self.config.to_dict(),
                "weights_sha256": str(self.weights_sha256), "dtype": "float32",
                "head_stored": False}

    def card_line(self, mode: str, layer: int | None) -> str:
        """The model card's backbone line."""
        return (f"- backbone: speech encoder {self.name}, layer {layer}, weights "
                f"sha256 {str(self.weights_sha256)[:16]}, frozen (hidden states of that "
                "layer, one row per 20 ms)")


# --------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------

_OPENAI_BLOCK = re.compile(r"encoder\.blocks\.(\d+)\.(.+)")
_OPENAI_BLOCK_PARTS = (
    ("attn.query.", "self_attn.q_proj."),
    ("attn.key.", "self_attn.k_proj."),
    ("attn.value.", "self_attn.v_proj."),
    ("attn.out.", "self_attn.out_proj."),
    ("attn_ln.", "self_attn_layer_norm."),
    ("mlp.0.", "fc1."),
    ("mlp.2.", "fc2."),
    ("mlp_ln.", "final_layer_norm."),
)
_OPENAI_TOP = (
    ("encoder.conv1.", "conv1."),
    ("encoder.conv2.", "conv2."),
    ("encoder.ln_post.", "layer_norm."),
)


def _openai_to_hf(key: str) -> str:
    """openai-whisper encoder name -> Hugging Face name (unknown names: prefix stripped)."""
    if key == "encoder.positional_embedding":
        return "embed_positions.weight"
    for old, new in _OPENAI_TOP:
        if key.startswith(old):
            return new + key[len(old):]
    match = _OPENAI_BLOCK.fullmatch(key)
    if match:
        index, rest = match.groups()
        for old, new in _OPENAI_BLOCK_PARTS:
            if rest.startswith(old):
                return f"layers.{index}.{new}{rest[len(old):]}"
    return key[len("encoder."):]


def _encoder_names(keys: Iterable[str]) -> dict[str, str]:
    """Map our (Hugging Face, prefix-free) names to the names in a checkpoint.

    openai-whisper names (``encoder.blocks.*``) are translated; otherwise the prefix
    ``model.encoder.`` or ``encoder.`` is stripped and other tensors (decoder, output
    projection) are ignored; a prefix-free encoder state dict is taken as it is.
    """
    keys = list(keys)
    if any(k.startswith("encoder.blocks.") or k == "encoder.positional_embedding"
           for k in keys):
        return {_openai_to_hf(k): k for k in keys if k.startswith("encoder.")}
    for prefix in ("model.encoder.", "encoder."):
        if any(k.startswith(prefix) for k in keys):
            return {k[len(prefix):]: k for k in keys if k.startswith(prefix)}
    return {k: k for k in keys}


def _sha256(path: Path) -> str:
    """sha256 of a weights file (:func:`binser.cache.file_sha256`), ModelError if unreadable."""
    try:
        return file_sha256(path)
    except AudioError as exc:
        raise ModelError(f"{path}: cannot read weights file ({exc.cause})") from exc


def _read_config_json(path: Path) -> WhisperConfig:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read Whisper config ({type(exc).__name__}: "
                         f"{exc})") from exc
    try:
        return WhisperConfig.from_hf(data)
    except ConfigError as exc:
        raise ModelError(f"{path}: {exc}") from exc


def _infer_config(state: Mapping[str, torch.Tensor], source: str | Path) -> WhisperConfig:
    """Dimensions from tensor shapes (heads = d_model // 64, as in every released size)."""
    needed = ("conv1.weight", "embed_positions.weight", "layers.0.fc1.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise ModelError(f"{source}: cannot infer the Whisper dimensions (no config.json) "
                         f"because tensors are missing: {', '.join(missing)}")
    d, n_mels = state["conv1.weight"].shape[:2]
    indices = [int(m.group(1)) for k in state for m in [re.match(r"layers\.(\d+)\.", k)] if m]
    try:
        return WhisperConfig(d_model=int(d), encoder_layers=max(indices) + 1,
                             encoder_attention_heads=max(1, int(d) // 64),
                             encoder_ffn_dim=int(state["layers.0.fc1.weight"].shape[0]),
                             num_mel_bins=int(n_mels),
                             max_source_positions=int(state["embed_positions.weight"].shape[0]))
    except ConfigError as exc:
        raise ModelError(f"{source}: tensor shapes give an invalid Whisper config ({exc})") \
            from exc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The encoder tensors of a ``.safetensors`` file, under our names (decoder not read)."""
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            names = _encoder_names(handle.keys())
            return {new: handle.get_tensor(old) for new, old in names.items()}
    except Exception as exc:  # truncated file, not safetensors, ...
        raise ModelError(weights_read_failure(path, exc)) from exc


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], WhisperConfig | None]:
    """An openai-whisper ``.pt`` checkpoint (with its dims) or a plain state dict."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(weights_read_failure(path, exc)) from exc
    config = None
    if isinstance(loaded, Mapping) and "model_state_dict" in loaded:
        try:
            config = WhisperConfig.from_openai_dims(loaded.get("dims"))
        except ConfigError as exc:
            raise ModelError(f"{path}: {exc}") from exc
        loaded = loaded["model_state_dict"]
    elif isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise ModelError(f"{path}: expected a state dict (name -> tensor), "
                         f"got {type(loaded).__name__}")
    names = _encoder_names(str(k) for k in loaded)
    state = {new: loaded[old] for new, old in names.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{path}: non-tensor entries in state dict: {', '.join(bad[:5])}")
    return state, config


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], WhisperConfig, Path]:
    """State dict (our names), config and the weights file actually read."""
    if path.is_dir():
        file = path / "model.safetensors"
        if not file.is_file():
            sharded = (path / "model.safetensors.index.json").is_file()
            raise ModelError(f"{path}: no model.safetensors in this folder"
                             + (" (sharded checkpoints are not supported)" if sharded else
                                "; expected a Hugging Face openai/whisper-<size> folder "
                                "(model.safetensors + config.json)"))
    elif path.is_file():
        file = path
    else:
        raise ModelError(f"{path}: Whisper weights not found (no such file or folder)")
    beside = file.parent / "config.json"
    if file.suffix == ".safetensors":
        state, config = _read_safetensors(file), None
    else:
        state, config = _read_torch(file)
    if not state:
        raise ModelError(f"{file}: holds no Whisper encoder tensors (expected names like "
                         "model.encoder.conv1.weight or encoder.blocks.0.attn.query.weight)")
    if config is None:
        config = _read_config_json(beside) if beside.is_file() else _infer_config(state, file)
    return state, config, file


def _build_model(config: WhisperConfig, state: Mapping[str, torch.Tensor],
                 source: Path) -> WhisperEncoder:
    """Check ``state`` against the model of ``config`` and load it (float32, eval mode)."""
    with torch.device("meta"):  # no time spent on an initialisation overwritten anyway
        model = WhisperEncoder(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
             for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    wrong += [f"{k} has dtype {state[k].dtype}" for k in expected
              if k in state and not state[k].is_floating_point()]
    problems = state_dict_problems(missing, unexpected, wrong, wrong_label="wrong")
    if problems:
        raise ModelError(f"{source}: weights do not fit a Whisper encoder with "
                         f"{config.to_dict()} ({problems})")
    model.load_state_dict({k: state[k].to(torch.float32).contiguous() for k in expected},
                          strict=True, assign=True)
    return model.eval()


def _check_size(name: str, size: str, config: WhisperConfig, source: Path) -> None:
    """ModelError when the weights are those of another released size.

    Dimensions that no released model has (small test models, custom encoders) are accepted
    under any name.
    """
    if config.dims == RELEASED_DIMS[size]:
        return
    other = [s for s, dims in RELEASED_DIMS.items() if dims == config.dims]
    if other:
        want = dict(zip(("d_model", "layers", "heads", "mel bins"), RELEASED_DIMS[size]))
        got = dict(zip(("d_model", "layers", "heads", "mel bins"), config.dims))
        raise ModelError(f"{source}: these are whisper-{other[0]} weights ({got}), not "
                         f"{name} ({want}); pick the backbone name that matches the weights")


def whisper_cache_folder(size: str, cache_dir: str | Path | None = None) -> Path:
    """Where downloaded weights of ``size`` live: ``<cache_dir>/whisper/<size>/``."""
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "whisper" / size


def _place(src: Path, dst: Path, staging: Path) -> None:
    """Put ``src`` at ``dst`` atomically (a rename within ``dst``'s folder)."""
    inside = src.resolve().is_relative_to(staging.resolve()) and not src.is_symlink()
    if inside:
        os.replace(src, dst)
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _cached_or_downloaded(name: str, size: str, cache_dir: str | Path | None,
                          download: bool) -> Path:
    """The cache folder holding ``model.safetensors`` + ``config.json`` (downloaded if needed)."""
    folder = whisper_cache_folder(size, cache_dir)
    if all((folder / f).is_file() for f in _HUB_FILES):
        return folder
    repo = HUB_REPO.format(size=size)
    if not download:
        reason = "downloading is disabled"
    else:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            reason = "the optional package huggingface_hub is not installed"
        else:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
                try:
                    got = {f: Path(hf_hub_download(repo_id=repo, filename=f,
                                                   local_dir=str(staging)))
                           for f in _HUB_FILES}
                    for f in _HUB_FILES:  # config.json last: it completes the folder
                        _place(got[f], folder / f, staging)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                return folder
            except Exception as exc:  # no network, no such file, disk full, ...
                reason = f"downloading from {repo} failed ({type(exc).__name__}: {exc})"
    raise ModelError(
        f"{name}: no Whisper weights found in {folder} (model.safetensors + config.json); "
        f"{reason}. To get them, pass --weights FOLDER with a Hugging Face {repo} folder "
        "(model.safetensors + config.json) or an openai-whisper .pt file, or "
        "`pip install huggingface_hub` and run with network access so they are downloaded "
        f"into {folder}")


def load_whisper(name: str, weights: str | Path | None = None,
                 cache_dir: str | Path | None = None, download: bool = True) -> WhisperBackbone:
    """Load backbone ``name`` (one of :data:`WHISPER_BACKBONES`), eval mode, float32, CPU.

    ``weights``: a Hugging Face folder (``model.safetensors``, encoder-only or the full model,
    and ``config.json``; without it the dimensions are inferred from the tensor shapes), such
    a ``.safetensors`` file (``config.json`` beside it used if present), or an openai-whisper
    ``.pt`` checkpoint. ``None``: ``<cache_dir>/whisper/<size>/`` (``cache_dir`` None: binser's
    default cache), downloaded there from ``openai/whisper-<size>`` when absent and
    ``download``. Raises :class:`ConfigError` for an unknown name and :class:`ModelError` for
    missing, unreadable or unfitting weights, including weights of another released size.
    """
    check_choice(name, WHISPER_BACKBONES, "Whisper backbone")
    size = name[len("whisper-"):]
    if weights is None:
        weights = _cached_or_downloaded(name, size, cache_dir, download)
    state, config, file = _read_weights(Path(weights))
    _check_size(name, size, config, file)
    model = _build_model(config, state, file)
    return WhisperBackbone(name=name, size=size, config=config, model=model,
                           weights_id=weights_digest(model.state_dict()),
                           weights_sha256=_sha256(file), source=str(file))


# --------------------------------------------------------------------------------------
# the family's registry functions (binser.backbones.registry)
# --------------------------------------------------------------------------------------

_HEX64 = re.compile(r"[0-9a-f]{64}")


def load(name: str, weights: str | Path | None = None, cache_dir: str | Path | None = None,
         input_size: int | None = None, allow_random: bool = False) -> WhisperBackbone:
    """:func:`load_whisper` (encoders have no input size and no random weights)."""
    return load_whisper(name, weights=weights, cache_dir=cache_dir)


def model_spec(where: Path, spec: Mapping[str, Any], mode: str) -> int:
    """Check a model.json ``backbone`` entry of a Whisper model (name, frozen mode, the
    config within :class:`WhisperConfig`'s limits, ``layer`` in 0..L, ``feature_dim ==
    d_model``, a sha256); ModelError naming ``where``. Returns the layer."""
    if spec["name"] not in WHISPER_BACKBONES:
        raise ModelError(f"{where}: unknown Whisper backbone {spec['name']!r} (known: "
                         f"{', '.join(WHISPER_BACKBONES)})")
    if mode != "frozen":
        raise ModelError(f"{where}: Whisper models are frozen, model.json says mode {mode!r}")
    config = _model_config(where, spec)
    layer = spec["layer"]
    if isinstance(layer, bool) or not isinstance(layer, int) \
            or not 0 <= layer <= config.encoder_layers:
        raise ModelError(f"{where}: backbone layer {layer!r} is not a layer of this encoder "
                         f"(an integer in 0..{config.encoder_layers})")
    if spec["feature_dim"] != config.d_model:
        raise ModelError(f"{where}: backbone feature_dim {spec['feature_dim']!r} differs from "
                         f"the encoder's d_model {config.d_model}")
    sha = spec["weights_sha256"]
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise ModelError(f"{where}: backbone weights_sha256 must be 64 lowercase hex digits")
    return layer


def _model_config(where: Path, spec: Mapping[str, Any]) -> WhisperConfig:
    try:
        return WhisperConfig.from_hf(spec["config"])
    except ConfigError as exc:
        raise ModelError(f"{where}: backbone config: {exc}") from exc


def model_backbones(root: Path, spec: Mapping[str, Any], files: Mapping[str, str],
                    views: Sequence[str]) -> dict[str, WhisperBackbone]:
    """The one encoder every view of a model folder shares, its identity checked."""
    names = {files[v] for v in views}
    if len(names) != 1:
        raise ModelError(f"{root / 'model.json'}: a Whisper model has one encoder file for "
                         f"all views, got {sorted(names)}")
    path = root / names.pop()
    backbone = _read_encoder(path, spec["name"], _model_config(root / "model.json", spec))
    for view in views:
        if str(spec["weights_id"][view]) != backbone.weights_id:
            raise ModelError(f"{path}: encoder weights have identity {backbone.weights_id}, "
                             f"model.json records {spec['weights_id'][view]!r} for {view}")
    backbone.weights_sha256 = spec["weights_sha256"]   # the source weights' digest
    backbone.pretrained = bool(spec["pretrained"])
    return {v: backbone for v in views}


def _read_encoder(path: Path, name: str, config: WhisperConfig) -> WhisperBackbone:
    """A WhisperBackbone from a model folder's encoder file: exactly the float32 tensors of
    ``config``'s encoder (ModelError otherwise)."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:   # truncated or not safetensors: never a raw exception
        raise ModelError(f"{path}: unreadable safetensors file ({type(exc).__name__}: "
                         f"{exc})") from exc
    with torch.device("meta"):   # no time spent on an initialisation overwritten anyway
        model = WhisperEncoder(config)
    problem = _state_problem(state, model.state_dict())
    if problem:
        raise ModelError(f"{path}: weights do not fit the Whisper encoder of model.json "
                         f"({problem})")
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    return WhisperBackbone(name=name, size=name[len("whisper-"):], config=config, model=model,
                           weights_id=weights_digest(model.state_dict()), weights_sha256="",
                           source=str(path))


def _state_problem(state: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
    """What is wrong with a state dict against the expected one (names, shapes, float32)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} {state[k].dtype}" for k in expected
             if k in state and (tuple(state[k].shape) != tuple(expected[k].shape)
                                or state[k].dtype != torch.float32)]
    parts = [f"{what} {len(keys)}: {', '.join(keys[:6])}" for what, keys in
             (("missing", missing), ("unexpected", unexpected),
              ("wrong shape or dtype", wrong)) if keys]
    return " | ".join(parts) or None
