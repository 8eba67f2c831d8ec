"""Fine-tuning one ImageNet CNN per binaural view on emotion-labelled segments
(docs/METHOD.md section 5).

The paper's recipe (Zhang et al. 2020, eq. 1 and section III-B): the network's ImageNet
classification layer is replaced by a C-way layer, every segment carries its utterance's
label, and softmax cross-entropy is minimised with SGD (momentum 0.9, batch 30, learning rate
0.001, up to 300 epochs). On top of that, :func:`finetune_backbone` adds what a careful user
needs: early stopping on the utterance-level UA of held-out *training* speakers, a seed,
resumable checkpoints, a progress bar, mixed precision and ``torch.compile`` on a GPU.

:func:`finetuned_fold_features` runs it inside cross-validation: per fold and per view a
network is fine-tuned on the fold's training utterances only, then the segment features of
every utterance are computed with it and stored in the feature cache under the keys of
:class:`~binser.features.SegmentFeatureExtractor`, which carry the fine-tuned weights'
identity, so fine-tuned and frozen features never mix.

Trainable layers (``FinetuneSettings.trainable``)
-------------------------------------------------
``"all"`` trains every layer (the paper), ``"head"`` only the new C-way layer, and
``"last:N"`` the new layer plus the last ``N`` top-level *units* of the feature network:

- ``efficientnet_lite0`` (18 units): the stem (3x3 conv + BN), the 16 MBConv blocks
  ``_blocks.0`` .. ``_blocks.15`` and the head convolution (1x1 conv 320 -> 1280 + BN, then
  global average). ``last:1`` = head convolution; ``last:2`` = + the last MBConv block
  (192 -> 320); ``last:3`` = + ``_blocks.14`` ...
- ``alexnet`` (7 units): conv1 .. conv5 (each with its ReLU and max-pool) and the two
  fully-connected layers fc6 and fc7. ``last:2`` = fc6 + fc7 (plus the new fc8).

Frozen units run in eval mode; trainable units in train mode (dropout on), their batch-norm
layers by default in eval mode too (``FinetuneSettings.batchnorm``). The frozen part's output
does not change during training, so it is computed once per segment (:func:`frozen_outputs`,
float32) and reused by every epoch, every fold of a view and the final feature computation
(only the trained units run on it): the same arithmetic as running the whole network, up to
float rounding, and several times faster when most of the network is frozen.

Determinism: on the CPU a given seed gives bit-identical weights (head initialisation,
shuffling and dropout all draw from seeded generators). CUDA kernels are not bitwise
deterministic. The CUDA paths (mixed precision, ``torch.compile``, device placement) are
written for the GPU but were not exercised on one when this module was written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone, RandomWeightsWarning, get_backbone, weights_digest
from .config import FrontEndConfig
from .errors import BinserError, ConfigError, ModelError
from .parallel import torch_threads
from .validation import check_choice, check_choices, check_int_range

CHECKPOINT_FORMAT = "binser-finetuned-v1"   # bump when the training procedure changes
PREFIX_CACHE_BYTES = 3 << 30   # frozen-part outputs are kept in memory up to this size
PREFIX_BATCH = 128             # segments per forward pass of the frozen part
EVAL_BATCH = 256               # segments per forward pass during validation
AMP_MODES = ("auto", "off", "bf16", "fp16")


class FinetuneWarning(UserWarning):
    """Fine-tuning went on in a degraded way (no validation speakers, unreadable checkpoint)."""


# --------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FinetuneSettings:
    """How one network is fine-tuned; the paper's values are the defaults.

    ``batch_size`` segments per SGD step; ``lr`` learning rate; ``momentum`` SGD momentum;
    ``weight_decay`` L2 penalty (0: none, as in the paper); ``max_epochs`` passes over the
    training segments; ``patience`` epochs without a better validation UA before stopping;
    ``val_fraction`` share of the training *speakers* held out for validation
    (``max(1, round(val_fraction * speakers))``, at most all but one; 0: no validation,
    the last epoch's weights are kept); ``seed`` for the head's initialisation, the
    validation speakers, shuffling and dropout; ``trainable`` ``"all"``, ``"head"`` or
    ``"last:N"`` (see the module docstring for what N counts); ``input_size`` network input
    side in pixels (None: the backbone's default, 224 / 227); ``amp`` mixed precision on
    CUDA only (``"auto"``: bf16 where supported, else fp16; ``"off"``; ``"bf16"``;
    ``"fp16"`` with gradient scaling); ``compile`` ``torch.compile`` the trained part on
    CUDA only (off by default: each fold's network compiles anew, for train and eval mode
    and for the last, smaller batch, which a short run may not win back; falls back to
    eager execution with a warning if compiling fails); ``device`` ``"auto"`` (CUDA if
    available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:K"``; ``checkpoint_dir`` folder for resumable checkpoints and finished
    networks (None: none); ``max_segments_per_epoch`` random subset of the training
    segments used per epoch (None: all); ``batchnorm`` ``"frozen"`` keeps the running
    statistics of every batch-norm layer (eval mode; its scale and shift still learn), the
    usual choice when fine-tuning with small batches, and makes training and inference
    compute the same function; ``"train"`` normalises with batch statistics and updates the
    running ones (EfficientNet's momentum of 0.01 makes them lag for the first few hundred
    steps); ``num_threads`` torch CPU threads while fine-tuning (None: torch's setting);
    ``checkpoint_interval_s`` least seconds between two resumable checkpoints (after an
    epoch; 0: after every epoch). A finished run is always saved.
    """

    batch_size: int = 30
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    max_epochs: int = 300
    patience: int = 10
    val_fraction: float = 0.2
    seed: int = 0
    trainable: str = "all"
    input_size: int | None = None
    amp: str = "auto"
    compile: bool = False
    device: str = "auto"
    checkpoint_dir: str | None = None
    max_segments_per_epoch: int | None = None
    batchnorm: str = "frozen"
    num_threads: int | None = None
    checkpoint_interval_s: float = 30.0

    def __post_init__(self) -> None:
        _check_positive_int("batch_size", self.batch_size)
        _check_positive_int("max_epochs", self.max_epochs)
        _check_positive_int("patience", self.patience)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"fine-tuning lr must be > 0, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"fine-tuning momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        check_choice(self.amp, AMP_MODES, "amp mode", option="fine-tuning amp")
        check_choice(self.batchnorm, ("frozen", "train"), "batchnorm mode",
                     option="fine-tuning batchnorm")
        if self.input_size is not None:
            _check_positive_int("input_size", self.input_size)
        if self.max_segments_per_epoch is not None:
            _check_positive_int("max_segments_per_epoch", self.max_segments_per_epoch)
        if self.num_threads is not None:
            _check_positive_int("num_threads", self.num_threads)
        if not self.checkpoint_interval_s >= 0:
            raise ConfigError(f"checkpoint_interval_s must be >= 0, got "
                              f"{self.checkpoint_interval_s!r}")
        parse_trainable(self.trainable)
        _check_device_name(self.device)

    @classmethod
    def cpu_reduced(cls, **changes: Any) -> "FinetuneSettings":
        """A setting that fits a 2-core CPU: a full EMOVO LOSO fine-tuned experiment (6 folds
        x 4 views, ~4300 training segments per view and fold) in well under an hour.

        EfficientNet-Lite0 at 96 x 96 input, the last two units (the final MBConv block and
        the 1x1 head convolution, 1.03 M parameters with the new layer) trained, at most 8
        epochs with patience 3; everything else as in the paper (SGD, momentum 0.9, batch 30,
        learning rate 0.001).

        Measured on EMOVO (one view: 588 files, 5188 segments; LOSO fold 1: 3323 training
        and 972 validation segments) with ONE torch thread on the project's 2-core machine
        while other jobs ran (load ~6): decoding one view 4.5 s; frozen-part outputs of all
        segments 62-66 s (once per view, shared by the 6 folds); one epoch 8.5-10.6 s
        (~400 training images/s); features of all segments 3-10 s. One view end to end
        (6 folds, early stopping after 4-8 epochs) took 512 s, so 4 views ~35 min.
        Alternatives measured the same way: ``last:2`` at 64 px (frozen part 22 s, epoch
        4.8 s) and ``last:1`` at 96 px (66 s, 3.9 s) would take ~18 min.
        """
        values: dict[str, Any] = dict(trainable="last:2", input_size=96, max_epochs=8,
                                      patience=3)
        values.update(changes)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (for ``results.json``)."""
        return dataclasses.asdict(self)

    def training_fingerprint(self) -> dict[str, Any]:
        """The fields that change the trained weights (not where or how fast it runs)."""
        skip = {"compile", "device", "checkpoint_dir", "num_threads", "checkpoint_interval_s"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}


def _check_positive_int(name: str, value: Any) -> None:
    check_int_range(value, f"fine-tuning {name}", 1)


def _check_device_name(name: str) -> None:
    if name in ("auto", "cpu", "cuda"):
        return
    if isinstance(name, str) and name.startswith("cuda:") and name[5:].isdigit():
        return
    raise ConfigError(f"device must be auto, cpu, cuda or cuda:K, got {name!r}")


def parse_trainable(spec: str) -> int | None:
    """``"all"`` -> None (every unit), ``"head"`` -> 0, ``"last:N"`` -> N (N >= 1)."""
    if spec == "all":
        return None
    if spec == "head":
        return 0
    if isinstance(spec, str) and spec.startswith("last:") and spec[5:].isdigit() \
            and int(spec[5:]) >= 1:
        return int(spec[5:])
    raise ConfigError(f"trainable must be 'all', 'head' or 'last:N' (N >= 1), got {spec!r}")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; a CUDA request without CUDA is an error."""
    _check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp`` on ``device``: None on the CPU or with ``"off"``."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# --------------------------------------------------------------------------------------
# the networks as a chain of units
# --------------------------------------------------------------------------------------

class _ConvBnRelu6(nn.Module):
    """``relu6(bn(conv(x)))``, optionally globally averaged; shares the modules given."""

    def __init__(self, conv: nn.Module, bn: nn.Module, pool: bool = False):
        super().__init__()
        self.conv, self.bn, self.pool = conv, bn, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn(self.conv(x)))
        return x.mean(dim=(2, 3)) if self.pool else x


@dataclass
class Unit:
    """One top-level piece of a network: a module (sharing the network's parameters) and
    the state-dict prefixes of its weights."""

    name: str
    module: nn.Module
    prefixes: tuple[str, ...]


def network_units(backbone: Backbone) -> tuple[list[Unit], Unit]:
    """The feature network of ``backbone`` as a chain of units, and its classification head.

    Chaining the units (in eval mode) gives exactly ``backbone.model(x)``; the head unit maps
    those features to logits (EfficientNet: dropout then ``_fc``; AlexNet: fc8).
    """
    model = backbone.model
    if backbone.name == "efficientnet_lite0":
        units = [Unit("stem", _ConvBnRelu6(model._conv_stem, model._bn0),
                      ("_conv_stem.", "_bn0."))]
        units += [Unit(f"block{i}", block, (f"_blocks.{i}.",))
                  for i, block in enumerate(model._blocks)]
        units.append(Unit("head_conv", _ConvBnRelu6(model._conv_head, model._bn1, pool=True),
                          ("_conv_head.", "_bn1.")))
        head = Unit("fc", nn.Sequential(model._dropout, model._fc), ("_fc.",))
        return units, head
    if backbone.name == "alexnet":
        f, c = model.features, model.classifier
        units = [Unit("conv1", f[0:3], ("features.0.",)),
                 Unit("conv2", f[3:6], ("features.3.",)),
                 Unit("conv3", f[6:8], ("features.6.",)),
                 Unit("conv4", f[8:10], ("features.8.",)),
                 Unit("conv5", nn.Sequential(f[10:13], model.avgpool, nn.Flatten(1)),
                      ("features.10.",)),
                 Unit("fc6", c[0:3], ("classifier.1.",)),
                 Unit("fc7", c[3:6], ("classifier.4.",))]
        return units, Unit("fc8", c[6], ("classifier.6.",))
    raise ConfigError(f"fine-tuning does not know the layers of backbone {backbone.name!r}")


@dataclass
class _Split:
    """A network cut into a frozen prefix and a trained suffix (units + head)."""

    prefix: nn.Sequential          # frozen units
    body: nn.Sequential            # trained units (without the head): prefix + body = model
    suffix: nn.Sequential          # body + head
    trainable_prefixes: tuple[str, ...]
    trainable_units: list[str]


def split_network(backbone: Backbone, trainable: str) -> _Split:
    """Cut ``backbone.model`` into the frozen prefix and the trained suffix of ``trainable``."""
    units, head = network_units(backbone)
    n = parse_trainable(trainable)
    n = len(units) if n is None else n
    if n > len(units):
        raise ConfigError(f"trainable={trainable!r}: {backbone.name} has only {len(units)} "
                          f"units ({', '.join(u.name for u in units)})")
    cut = len(units) - n
    trained = units[cut:] + [head]
    return _Split(prefix=nn.Sequential(*[u.module for u in units[:cut]]),
                  body=nn.Sequential(*[u.module for u in units[cut:]]),
                  suffix=nn.Sequential(*[u.module for u in trained]),
                  trainable_prefixes=tuple(p for u in trained for p in u.prefixes),
                  trainable_units=[u.name for u in trained])


def trainable_state(model: nn.Module, prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    """The entries of ``model.state_dict()`` under ``prefixes`` (detached CPU copies)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            if k.startswith(tuple(prefixes))}


# --------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------

def load_view_images(paths: Sequence[str | Path], views: Sequence[str],
                     config: FrontEndConfig = FrontEndConfig(), progress: bool = True,
                     dtype: Any = np.float16) -> dict[str, list[np.ndarray]]:
    """Segment images ``{view: [(n_i, 3, F, L) array of paths[i], ...]}`` in [0, 1].

    Each file is decoded once for all ``views``. Stored as ``dtype`` (float16 by default:
    half the memory, ~3 significant digits, ample for training). Raises
    :class:`~binser.errors.AudioError` naming an unreadable file.
    """
    from tqdm.auto import tqdm

    from .audio import load_audio
    from .spectrogram import views_images
    from .views import all_views, binaural_views

    views = list(check_choices(views, all_views(), "view", option="--views"))
    out: dict[str, list[np.ndarray]] = {v: [] for v in views}
    for path in tqdm(list(paths), desc="images", unit="file", disable=not progress,
                     leave=False):
        audio = load_audio(path, sr=config.sample_rate, channels=config.channels,
                           max_duration_s=config.max_duration_s)
        signals = binaural_views(audio, config.side_scale, path)
        images = views_images({v: signals[v] for v in views}, config)
        for view in views:
            out[view].append(images[view].astype(dtype, copy=False))
    return out


# --------------------------------------------------------------------------------------
# running (parts of) a network on in-memory images
# --------------------------------------------------------------------------------------

def network_input(backbone: Backbone, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] -> resized, normalised float32 input on the model's
    device, channels-last (faster convolutions on CPU and CUDA alike)."""
    x = backbone.normalise(torch.as_tensor(images).to(backbone.device).float())
    return x.contiguous(memory_format=torch.channels_last)


def _run_batched(module: nn.Module, inputs, n: int, batch: int) -> torch.Tensor:
    """``module`` (eval mode, no gradient) over ``inputs(start, stop)`` batches of ``n``
    segments -> (n, ...) float32 on the module's device."""
    out = None
    with torch.no_grad():
        for start in range(0, n, batch):
            y = module(inputs(start, min(start + batch, n))).float()
            if out is None:
                out = torch.empty((n,) + tuple(y.shape[1:]), dtype=torch.float32,
                                  device=y.device)
                if out.ndim == 4:
                    out = out.contiguous(memory_format=torch.channels_last)
            out[start:start + len(y)] = y
    return out


@dataclass
class FrozenOutputs:
    """Outputs of a network's frozen units (float32, eval mode) for every segment of some
    utterances; they do not change while the units after them are trained, so one
    computation serves every epoch and every fold.

    ``key``: the network part that produced them (see :func:`frozen_key`); ``values``
    (S, ...) segments of all utterances in order; ``counts`` (U,) segments per utterance.
    """

    key: str
    values: torch.Tensor
    counts: np.ndarray
    seconds: float = 0.0

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)])

    def segments(self, utterances: Sequence[int]) -> torch.Tensor:
        """(S', ...) values of the segments of ``utterances``, in that order (a copy)."""
        off = self.offsets
        index = np.concatenate([np.arange(off[u], off[u + 1]) for u in utterances]) \
            if len(utterances) else np.zeros(0, dtype=np.int64)
        return self.values[torch.as_tensor(index, device=self.values.device)]

    def subset(self, utterances: Sequence[int]) -> "FrozenOutputs":
        """The outputs of ``utterances`` only (e.g. a fold's training utterances)."""
        utterances = np.asarray(utterances, dtype=np.int64)
        return FrozenOutputs(self.key, self.segments(utterances), self.counts[utterances],
                             self.seconds)


def frozen_key(backbone: Backbone, trainable: str) -> str:
    """Identity of the frozen part of ``backbone`` under ``trainable``: name, input size,
    number of frozen units and a digest of their weights (unchanged by fine-tuning)."""
    split = split_network(backbone, trainable)
    state = {k: v for k, v in backbone.model.state_dict().items()
             if not k.startswith(split.trainable_prefixes)}
    return (f"{backbone.name}|{backbone.input_size}|{len(split.prefix)}|"
            f"{weights_digest(state)}")


def _check_frozen(frozen: FrozenOutputs, backbone: Backbone, trainable: str,
                  counts: Sequence[int]) -> None:
    """Refuse frozen outputs of another network part or of other utterances."""
    key = frozen_key(backbone, trainable)
    if frozen.key != key:
        raise ConfigError(f"frozen outputs were computed by {frozen.key}, not {key}")
    if list(frozen.counts) != list(counts):
        raise ConfigError(f"frozen outputs cover {len(frozen.counts)} utterances / "
                          f"{int(np.sum(frozen.counts))} segments, the images "
                          f"{len(counts)} / {int(np.sum(counts))}")


def frozen_outputs(backbone: Backbone, trainable: str, images: Sequence[np.ndarray],
                   max_bytes: int = PREFIX_CACHE_BYTES) -> FrozenOutputs | None:
    """Frozen-part outputs of every segment of ``images`` (per utterance (n_i, 3, H, W)),
    or None when nothing is frozen or they would take more than ``max_bytes``.

    Runs in float32 on the backbone's device, whatever the training precision, so that
    features computed from them equal those of the whole network.
    """
    split = split_network(backbone, trainable)
    if len(split.prefix) == 0:
        return None
    t = time.perf_counter()
    counts = np.array([len(a) for a in images])
    was_training = backbone.model.training
    backbone.model.eval().to(memory_format=torch.channels_last)  # as in training: same kernels
    try:
        first = _run_batched(split.prefix, lambda a, b: network_input(backbone, images[0][:1]),
                             1, 1)
        if first[0].numel() * 4 * counts.sum() > max_bytes:
            return None
        flat = _Concatenated(images)
        values = _run_batched(split.prefix, lambda a, b: network_input(backbone, flat[a:b]),
                              int(counts.sum()), PREFIX_BATCH)
    finally:
        backbone.model.train(was_training)
    return FrozenOutputs(frozen_key(backbone, trainable), values, counts,
                         time.perf_counter() - t)


class _Concatenated:
    """Slices ``[a:b]`` over the segments of a list of (n_i, ...) arrays, as if
    concatenated (without building the whole concatenation)."""

    def __init__(self, arrays: Sequence[np.ndarray]):
        self.arrays = arrays
        self.offsets = np.concatenate([[0], np.cumsum([len(x) for x in arrays])])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, item: slice) -> np.ndarray:
        start, stop, _ = item.indices(len(self))
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pieces = []
        for i in range(first, len(self.arrays)):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            if lo >= stop:
                break
            pieces.append(self.arrays[i][max(start - lo, 0): min(stop, hi) - lo])
        return np.concatenate(pieces)


def segment_features(backbone: Backbone, trainable: str, images: Sequence[np.ndarray],
                     frozen: FrozenOutputs | None = None, batch: int = EVAL_BATCH
                     ) -> list[np.ndarray]:
    """Features ``[(n_i, d) float32, ...]`` of ``backbone.model`` (eval mode) for every
    utterance's segment images, computed from ``frozen`` outputs when given (only the
    units after them run), else from the images. Equal, up to float rounding, to
    :class:`~binser.features.SegmentFeatureExtractor` on the same images."""
    split = split_network(backbone, trainable)
    counts = [len(a) for a in images]
    was_training = backbone.model.training
    backbone.model.eval().to(memory_format=torch.channels_last)
    try:
        if frozen is not None:
            _check_frozen(frozen, backbone, trainable, counts)
            values = frozen.values
            out = _run_batched(split.body, lambda a, b: values[a:b], len(values), batch)
        else:
            flat = _Concatenated(images)
            out = _run_batched(backbone.model, lambda a, b: network_input(backbone, flat[a:b]),
                               len(flat), batch)
    finally:
        backbone.model.train(was_training)
    return np.split(out.cpu().numpy(), np.cumsum(counts)[:-1])


# --------------------------------------------------------------------------------------
# data for one fine-tuning run
# --------------------------------------------------------------------------------------

@dataclass
class _Data:
    """Which utterances train and which validate, and the labels per segment."""

    train_utts: np.ndarray     # (U_tr,) indices into the utterances given
    val_utts: np.ndarray       # (U_va,)
    train_y: np.ndarray        # (S_tr,) int64 class per training segment
    val_seg_utt: np.ndarray    # (S_va,) position in val_utts of each validation segment
    val_utt_y: np.ndarray      # (U_va,) class per validation utterance
    train_speakers: list[str]
    val_speakers: list[str]


def _check_inputs(images: Sequence[np.ndarray], labels: np.ndarray, groups: np.ndarray,
                  n_classes: int) -> None:
    if len(images) == 0:
        raise ConfigError("fine-tuning needs at least one training utterance")
    if len(labels) != len(images) or len(groups) != len(images):
        raise ConfigError(f"fine-tuning: {len(images)} utterances but {len(labels)} labels "
                          f"and {len(groups)} speaker ids")
    shapes = {a.shape[1:] for a in images}
    if len(shapes) != 1 or any(a.ndim != 4 or a.shape[1] != 3 or a.shape[0] < 1
                               for a in images):
        raise ConfigError(f"fine-tuning needs (n_i, 3, H, W) images of one size, got shapes "
                          f"{sorted(shapes)[:3]}")
    if n_classes < 2:
        raise ConfigError(f"fine-tuning needs at least 2 classes, got {n_classes}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ConfigError(f"labels must be class indices 0..{n_classes - 1}, got "
                          f"{labels.min()}..{labels.max()}")


def validation_speakers(groups: np.ndarray, val_fraction: float, seed: int) -> list[str]:
    """Speakers held out for validation: ``max(1, round(val_fraction * n))`` of the ``n``
    distinct ``groups`` (at most n - 1), drawn with ``seed``; [] if ``val_fraction`` is 0."""
    speakers = sorted({str(g) for g in groups})
    if val_fraction == 0:
        return []
    n_val = min(max(1, int(round(val_fraction * len(speakers)))), len(speakers) - 1)
    order = np.random.default_rng(seed).permutation(len(speakers))
    return sorted(speakers[i] for i in order[:n_val])


def _prepare_data(images: Sequence[np.ndarray], labels: np.ndarray, groups: np.ndarray,
                  settings: FinetuneSettings) -> _Data:
    """Hold out validation speakers and flatten utterances into segments."""
    groups = np.array([str(g) for g in groups])
    if settings.val_fraction > 0 and len(set(groups)) < 2:
        warnings.warn("fine-tuning: fewer than 2 training speakers; validation utterances "
                      "are held out by utterance instead of by speaker", FinetuneWarning,
                      stacklevel=3)
        groups = np.array([f"utt{i}" for i in range(len(groups))])
    val_speakers = validation_speakers(groups, settings.val_fraction, settings.seed)
    is_val = np.isin(groups, val_speakers)
    tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    counts = np.array([a.shape[0] for a in images])
    return _Data(train_utts=tr, val_utts=va,
                 train_y=np.repeat(labels[tr], counts[tr]).astype(np.int64),
                 val_seg_utt=np.repeat(np.arange(len(va)), counts[va]),
                 val_utt_y=labels[va].astype(np.int64),
                 train_speakers=[str(g) for g in sorted(set(groups[tr]))],
                 val_speakers=val_speakers)


def data_fingerprint(images: Sequence[np.ndarray], labels: np.ndarray, groups: np.ndarray,
                     n_classes: int) -> str:
    """sha256 (hex) over every image array's dtype, shape and bytes, the labels and speakers."""
    digest = hashlib.sha256(f"{n_classes}|{len(images)}|".encode())
    for array, label, group in zip(images, labels, groups):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}|{array.shape}|{int(label)}|{group}|".encode())
        digest.update(array.view(np.uint8).reshape(-1).data)
    return digest.hexdigest()


def run_key(backbone: Backbone, settings: FinetuneSettings, data_digest: str, n_classes: int,
            tag: str = "") -> str:
    """32 hex digits naming one fine-tuning run (base network, settings, data, ``tag``)."""
    text = json.dumps({"format": CHECKPOINT_FORMAT, "backbone": backbone.name,
                       "base_weights_id": backbone.weights_id,
                       "input_size": backbone.input_size, "n_classes": int(n_classes),
                       "settings": settings.training_fingerprint(), "data": data_digest,
                       "tag": tag}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------
# checkpoints (safetensors: tensors plus a str -> str metadata header; never pickle)
# --------------------------------------------------------------------------------------

def _save_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                      path: Path) -> None:
    """Write ``tensors`` (CPU, contiguous copies) and ``metadata`` atomically to ``path``."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False)
    handle.close()
    try:
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()},
                  handle.name, metadata=metadata)
        with open(handle.name, "rb") as written:
            os.fsync(written.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """(tensors, metadata) of ``path``; None with a warning when unreadable (recomputed)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # truncated or not a safetensors file
        warnings.warn(f"{path}: unreadable fine-tuning checkpoint ({type(exc).__name__}: "
                      f"{exc}); training again", FinetuneWarning, stacklevel=3)
        return None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        warnings.warn(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint; training again",
                      FinetuneWarning, stacklevel=3)
        return None
    return tensors, metadata


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor],
                  expected: dict[str, torch.Tensor], source: Path) -> None:
    """Copy ``state`` into ``model`` after checking names and shapes against ``expected``."""
    if set(state) != set(expected):
        raise ModelError(f"{source}: checkpoint holds {len(state)} tensors, expected "
                         f"{len(expected)} with other names")
    wrong = [k for k in state if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise ModelError(f"{source}: wrong tensor shapes in checkpoint: {', '.join(wrong[:5])}")
    model.load_state_dict(state, strict=False)


def load_finetuned(path: str | Path, backbone: Backbone,
                   trainable_prefixes: Sequence[str]) -> dict[str, Any]:
    """Load a finished fine-tuning checkpoint into ``backbone`` (its head already replaced);
    returns the training history stored with it. Raises ModelError if it does not fit."""
    path = Path(path)
    loaded = _load_safetensors(path)
    if loaded is None:
        raise ModelError(f"{path}: unreadable fine-tuning checkpoint")
    tensors, metadata = loaded
    if metadata.get("backbone") != backbone.name or \
            metadata.get("base_weights_id") != backbone.weights_id:
        raise ModelError(f"{path}: checkpoint was fine-tuned from {metadata.get('backbone')} "
                         f"weights {metadata.get('base_weights_id')}, not {backbone.name} "
                         f"weights {backbone.weights_id}")
    _load_weights(backbone.model, tensors,
                  trainable_state(backbone.model, trainable_prefixes), path)
    return json.loads(metadata.get("history", "{}"))


def load_finetuned_backbone(path: str | Path, weights: str | Path | None = None,
                            allow_random: bool = False) -> tuple[Backbone, dict[str, Any]]:
    """The network a fine-tuning run stored at ``path`` (``history["checkpoint"]``), rebuilt
    from the same base ``weights`` as the run used (checked by id), in eval mode on the CPU;
    and the run's history. Raises ModelError if the file is unreadable or does not fit."""
    path = Path(path)
    loaded = _load_safetensors(path)
    if loaded is None or loaded[1].get("kind") != "final":
        raise ModelError(f"{path}: not a finished fine-tuning checkpoint")
    metadata = loaded[1]
    try:
        settings = json.loads(metadata["settings"])
        backbone = get_backbone(metadata["backbone"], weights=weights,
                                input_size=int(metadata["input_size"]),
                                allow_random=allow_random)
        head = loaded[0][network_units(backbone)[1].prefixes[0] + "weight"]
    except (KeyError, ValueError, ConfigError) as exc:
        raise ModelError(f"{path}: incomplete fine-tuning metadata ({exc})") from exc
    backbone.replace_head(int(head.shape[0]))
    history = load_finetuned(path, backbone,
                             split_network(backbone, settings["trainable"]).trainable_prefixes)
    _finish(backbone)
    if backbone.weights_id != metadata.get("weights_id"):
        raise ModelError(f"{path}: weights id {backbone.weights_id} differs from the "
                         f"recorded {metadata.get('weights_id')}")
    return backbone, history


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------

@dataclass
class _Progress:
    """Training state that a checkpoint saves and restores."""

    epoch: int = 0                        # epochs completed
    best_epoch: int = 0                   # 1-based epoch of the best state (0: none yet)
    best_ua: float = -math.inf
    best_loss: float = math.inf
    stale: int = 0                        # epochs since the last improvement
    best_state: dict[str, torch.Tensor] | None = None
    history: dict[str, list[float]] = dataclasses.field(default_factory=lambda: {
        "train_loss": [], "val_loss": [], "val_ua": [], "epoch_seconds": [],
        "train_seconds": [], "train_segments": []})


class _Trainer:
    """One fine-tuning run of ``backbone`` (head already replaced) on ``data``."""

    def __init__(self, backbone: Backbone, images: Sequence[np.ndarray], data: _Data,
                 settings: FinetuneSettings, n_classes: int, device: torch.device,
                 frozen: FrozenOutputs | None = None):
        self.backbone, self.data, self.settings = backbone, data, settings
        self.n_classes, self.device = n_classes, device
        self.split = split_network(backbone, settings.trainable)
        self.amp = amp_dtype(settings.amp, device)
        backbone.model.to(device=device, memory_format=torch.channels_last)
        self._freeze()
        self.params = [p for p in self.split.suffix.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.params, lr=settings.lr,
                                         momentum=settings.momentum,
                                         weight_decay=settings.weight_decay)
        self.scaler = (torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.forward = self._compiled_suffix()
        if frozen is None and len(self.split.prefix):
            frozen = frozen_outputs(backbone, settings.trainable, images)
        self.frozen_seconds = 0.0 if frozen is None else frozen.seconds
        self.train_x = _Inputs(self, images, data.train_utts, frozen)
        self.val_x = _Inputs(self, images, data.val_utts, frozen)
        self.train_y = torch.as_tensor(data.train_y, device=device)
        self.val_y = torch.as_tensor(data.val_utt_y[data.val_seg_utt], device=device)

    # ------------------------------------------------------------ set-up

    def _freeze(self) -> None:
        """Only the suffix's parameters learn; the prefix runs in eval mode."""
        for p in self.backbone.model.parameters():
            p.requires_grad_(False)
        for p in self.split.suffix.parameters():
            p.requires_grad_(True)
        self.backbone.model.eval()

    def _compiled_suffix(self):
        """``torch.compile`` of the suffix on CUDA when asked, else the suffix itself."""
        if not (self.settings.compile and self.device.type == "cuda"):
            return self.split.suffix
        return torch.compile(self.split.suffix)

    def _suffix(self, x: torch.Tensor) -> torch.Tensor:
        """The trained part's output; a compiled version that fails falls back to eager."""
        try:
            return self.forward(x)
        except BinserError:
            raise
        except Exception as exc:
            if self.forward is self.split.suffix:
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); running "
                          "eagerly", FinetuneWarning, stacklevel=2)
            self.forward = self.split.suffix
            return self.forward(x)

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    # ------------------------------------------------------------ epochs

    def _batches(self) -> Iterator[torch.Tensor]:
        """Shuffled index batches of one epoch (seeded; optional subset; no single-segment
        last batch, which batch norm cannot train on)."""
        n = len(self.data.train_y)
        order = torch.randperm(n, generator=self.generator)
        if self.settings.max_segments_per_epoch is not None:
            order = order[: self.settings.max_segments_per_epoch]
        size = self.settings.batch_size
        for start in range(0, len(order), size):
            batch = order[start:start + size]
            if len(batch) >= 2 or len(order) == 1:
                yield batch

    def _train_mode(self) -> None:
        """Trained units in train mode (dropout on); batch norm too unless it is frozen."""
        self.split.suffix.train()
        if self.settings.batchnorm == "frozen":
            for module in self.split.suffix.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def train_epoch(self, bar) -> tuple[float, float, int]:
        """One pass of SGD; returns (mean segment loss, seconds, segments trained)."""
        self._train_mode()
        t = time.perf_counter()
        total, count = 0.0, 0
        for step, idx in enumerate(self._batches()):
            loss = self._step(self.train_x.batch(idx), self.train_y[idx.to(self.device)])
            total += loss * len(idx)
            count += len(idx)
            if step % 10 == 0:
                bar.set_postfix_str(f"batch loss {loss:.3f}", refresh=True)
        self.split.suffix.eval()
        return total / max(count, 1), time.perf_counter() - t, count

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = F.cross_entropy(self._suffix(x).float(), y)
        if not torch.isfinite(loss):
            raise BinserError(f"fine-tuning diverged (loss {loss.item()}); lower the "
                              f"learning rate (now {self.settings.lr})")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return float(loss.detach())

    def validate(self) -> tuple[float, float]:
        """(mean segment loss, utterance-level UA) on the validation speakers; (nan, nan)
        without validation data. Utterance scores: mean segment softmax, then arg-max."""
        from sklearn.metrics import balanced_accuracy_score

        if len(self.data.val_seg_utt) == 0:
            return math.nan, math.nan
        self.split.suffix.eval()
        probs, losses = [], []
        with torch.no_grad(), self._autocast():
            for start in range(0, len(self.val_y), EVAL_BATCH):
                idx = torch.arange(start, min(start + EVAL_BATCH, len(self.val_y)))
                logits = self._suffix(self.val_x.batch(idx)).float()
                y = self.val_y[idx.to(self.device)]
                losses.append(F.cross_entropy(logits, y, reduction="sum").item())
                probs.append(torch.softmax(logits, dim=1).cpu().numpy())
        seg_probs = np.concatenate(probs)
        utt = np.zeros((len(self.data.val_utt_y), self.n_classes))
        np.add.at(utt, self.data.val_seg_utt, seg_probs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # predicted classes absent from the truth
            ua = balanced_accuracy_score(self.data.val_utt_y, utt.argmax(axis=1))
        return sum(losses) / len(self.val_y), float(ua)

    # ------------------------------------------------------------ state

    def state(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.backbone.model, self.split.trainable_prefixes)

    def load_state(self, state: dict[str, torch.Tensor], source: Path) -> None:
        _load_weights(self.backbone.model, {k: v.to(self.device) for k, v in state.items()},
                      self.state(), source)

    def momentum_buffers(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.backbone.model.named_parameters()}
        return {names[id(p)]: self.optimizer.state[p]["momentum_buffer"]
                for p in self.params
                if self.optimizer.state.get(p, {}).get("momentum_buffer") is not None}

    def load_momentum(self, buffers: dict[str, torch.Tensor]) -> None:
        params = dict(self.backbone.model.named_parameters())
        for name, value in buffers.items():
            if name not in params:
                raise ModelError(f"checkpoint momentum for unknown parameter {name}")
            self.optimizer.state[params[name]]["momentum_buffer"] = value.to(self.device)


class _Inputs:
    """The suffix's inputs for some utterances' segments: their frozen-part outputs when
    those are cached, else the images, run through the frozen part batch by batch."""

    def __init__(self, trainer: _Trainer, images: Sequence[np.ndarray],
                 utterances: np.ndarray, frozen: FrozenOutputs | None):
        self.trainer = trainer
        self.cached = None if frozen is None else frozen.segments(utterances)
        self.images = None
        if frozen is None and len(utterances):
            self.images = np.concatenate([images[i] for i in utterances])

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, ...) suffix input of the segments ``idx`` (CPU int64 tensor)."""
        if self.cached is not None:
            return self.cached[idx.to(self.cached.device)]
        x = network_input(self.trainer.backbone, self.images[idx.numpy()])
        if len(self.trainer.split.prefix):
            with torch.no_grad():
                x = self.trainer.split.prefix(x).float()
        return x


# --------------------------------------------------------------------------------------
# resumable checkpoints
# --------------------------------------------------------------------------------------

def _partial_tensors(trainer: _Trainer, progress: _Progress) -> dict[str, torch.Tensor]:
    tensors = {f"current/{k}": v for k, v in trainer.state().items()}
    tensors.update({f"momentum/{k}": v for k, v in trainer.momentum_buffers().items()})
    if progress.best_state is not None:
        tensors.update({f"best/{k}": v for k, v in progress.best_state.items()})
    tensors["rng/shuffle"] = trainer.generator.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    if trainer.device.type == "cuda":
        tensors["rng/cuda"] = torch.cuda.get_rng_state(trainer.device)
    return tensors


def _save_partial(path: Path, trainer: _Trainer, progress: _Progress, key: str) -> None:
    metadata = {"format": CHECKPOINT_FORMAT, "kind": "partial", "key": key,
                "progress": json.dumps({"epoch": progress.epoch,
                                        "best_epoch": progress.best_epoch,
                                        "best_ua": progress.best_ua,
                                        "best_loss": progress.best_loss,
                                        "stale": progress.stale,
                                        "history": progress.history})}
    _save_safetensors(_partial_tensors(trainer, progress), metadata, path)


def _restore_partial(path: Path, trainer: _Trainer, key: str) -> _Progress | None:
    """The progress saved in ``path`` (weights, momentum and generators restored), or None."""
    loaded = _load_safetensors(path)
    if loaded is None:
        return None
    tensors, metadata = loaded
    if metadata.get("kind") != "partial" or metadata.get("key") != key:
        return None
    saved = json.loads(metadata["progress"])

    def group(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    params = dict(trainer.backbone.model.named_parameters())
    momentum = group("momentum/")
    if "rng/shuffle" not in tensors or "rng/torch" not in tensors or \
            any(name not in params for name in momentum):
        warnings.warn(f"{path}: incomplete resumable checkpoint; training again",
                      FinetuneWarning, stacklevel=3)
        return None
    try:
        trainer.load_state(group("current/"), path)   # checks everything before loading
    except ModelError as exc:
        warnings.warn(f"{exc}; training again", FinetuneWarning, stacklevel=3)
        return None
    trainer.load_momentum(momentum)
    trainer.generator.set_state(tensors["rng/shuffle"])
    torch.set_rng_state(tensors["rng/torch"])
    if trainer.device.type == "cuda" and "rng/cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng/cuda"], trainer.device)
    best = group("best/")
    return _Progress(epoch=saved["epoch"], best_epoch=saved["best_epoch"],
                     best_ua=saved["best_ua"], best_loss=saved["best_loss"],
                     stale=saved["stale"], best_state=best or None, history=saved["history"])


# --------------------------------------------------------------------------------------
# the public entry points
# --------------------------------------------------------------------------------------

def _improved(ua: float, loss: float, progress: _Progress) -> bool:
    """A higher validation UA, or the same UA with a lower validation loss."""
    return ua > progress.best_ua or (ua == progress.best_ua and loss < progress.best_loss)


def _seeded_head(backbone: Backbone, n_classes: int, seed: int) -> None:
    """Replace the classification layer by a fresh n_classes layer drawn with ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone.replace_head(n_classes)


def _train_loop(trainer: _Trainer, progress: _Progress, settings: FinetuneSettings,
                partial: Path | None, key: str, bar) -> _Progress:
    """Epochs until ``max_epochs`` or ``patience`` epochs without improvement."""
    has_val = len(trainer.data.val_seg_utt) > 0
    last_save = time.perf_counter()
    while progress.epoch < settings.max_epochs and progress.stale < settings.patience:
        t = time.perf_counter()
        loss, train_s, count = trainer.train_epoch(bar)
        val_loss, val_ua = trainer.validate()
        progress.epoch += 1
        h = progress.history
        h["train_loss"].append(loss)
        h["val_loss"].append(None if math.isnan(val_loss) else val_loss)
        h["val_ua"].append(None if math.isnan(val_ua) else val_ua)
        h["train_seconds"].append(train_s)
        h["train_segments"].append(count)
        h["epoch_seconds"].append(time.perf_counter() - t)
        if not has_val or _improved(val_ua, val_loss, progress):
            progress.best_ua, progress.best_loss = val_ua, val_loss
            progress.best_epoch, progress.stale = progress.epoch, 0
            progress.best_state = trainer.state()
        else:
            progress.stale += 1
        if partial is not None and \
                time.perf_counter() - last_save >= settings.checkpoint_interval_s:
            _save_partial(partial, trainer, progress, key)
            last_save = time.perf_counter()
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", val_loss=f"{val_loss:.3f}",
                        val_ua=f"{val_ua:.3f}", best=progress.best_epoch, refresh=True)
    return progress


def _history(progress: _Progress, trainer: _Trainer, data: _Data, settings: FinetuneSettings,
             seconds: float, resumed_epochs: int) -> dict[str, Any]:
    """Per-epoch lists plus the run's summary (JSON-ready)."""
    h = progress.history
    trained = sum(h["train_segments"][resumed_epochs:])
    train_s = sum(h["train_seconds"][resumed_epochs:])
    return {
        **{k: list(v) for k, v in h.items()},
        "epochs_run": progress.epoch,
        "best_epoch": progress.best_epoch,
        "best_val_ua": None if math.isnan(progress.best_ua) else progress.best_ua,
        "stopped_early": progress.epoch < settings.max_epochs,
        "resumed_at_epoch": resumed_epochs,
        "seconds": seconds,
        "frozen_seconds": trainer.frozen_seconds,   # frozen-part outputs (0: computed before)
        "train_images_per_s": trained / train_s if train_s > 0 else None,
        "n_train_segments": int(len(data.train_y)),
        "n_val_segments": int(len(data.val_seg_utt)),
        "n_train_utterances": int(len(data.train_utts)),
        "n_val_utterances": int(len(data.val_utts)),
        "train_speakers": data.train_speakers,
        "val_speakers": data.val_speakers,
        "trainable_units": trainer.split.trainable_units,
        "trainable_parameters": int(sum(p.numel() for p in trainer.params)),
        "device": str(trainer.device),
        "amp": None if trainer.amp is None else str(trainer.amp).replace("torch.", ""),
        "compiled": trainer.forward is not trainer.split.suffix,
        "from_checkpoint": False,
    }


def _final_metadata(backbone: Backbone, key: str, history: dict[str, Any],
                    settings: FinetuneSettings, base_id: str) -> dict[str, str]:
    return {"format": CHECKPOINT_FORMAT, "kind": "final", "key": key,
            "backbone": backbone.name, "base_weights_id": base_id,
            "weights_id": backbone.weights_id, "input_size": str(backbone.input_size),
            "settings": json.dumps(settings.to_dict()), "history": json.dumps(history)}


FrozenSource = Union[FrozenOutputs, Callable[[], Optional[FrozenOutputs]], None]


def finetune_backbone(backbone_name: str, weights: str | Path | None,
                      images: Sequence[np.ndarray], labels: np.ndarray, groups: np.ndarray,
                      n_classes: int, settings: FinetuneSettings = FinetuneSettings(),
                      progress: bool = True, allow_random: bool = False, tag: str = "",
                      desc: str = "fine-tune", frozen: FrozenSource = None,
                      ) -> tuple[Backbone, dict[str, Any]]:
    """Fine-tune a fresh ``backbone_name`` network on labelled utterances.

    ``images``: per training utterance, its segment images ``(n_i, 3, H, W)`` in [0, 1]
    (any float dtype); ``labels`` (U,) class index per utterance; ``groups`` (U,) speaker per
    utterance (validation holds out whole speakers); ``n_classes``: size of the new layer.
    Every segment gets its utterance's label; softmax cross-entropy, SGD. The state with the
    best utterance-level validation UA is kept (ties: the lower validation loss).

    ``frozen``: the frozen part's outputs for exactly these utterances (or a function that
    returns them, called only if training is needed), to share one computation between
    runs; computed here when None. With ``settings.checkpoint_dir`` a run is saved after
    every epoch and resumed if interrupted, and a finished run is loaded instead of trained
    again; the key covers the base weights, the settings that change training, the data
    and ``tag``.

    Returns the backbone (eval mode, on the training device, ``weights_id`` refreshed; its
    ``model`` gives the fine-tuned segment features) and the history: per-epoch
    ``train_loss``, ``val_loss``, ``val_ua``, ``epoch_seconds``, ``train_seconds``,
    ``train_segments``; and ``best_epoch``, ``seconds``, ``train_images_per_s``,
    ``train_speakers``, ``val_speakers``, ``base_weights_id``, ``weights_id``, ``key`` ...
    """
    labels = np.asarray(labels).astype(np.int64)
    groups = np.asarray(groups)
    _check_inputs(images, labels, groups, n_classes)
    t0 = time.perf_counter()
    device = resolve_device(settings.device)
    with torch_threads(settings.num_threads):
        backbone = get_backbone(backbone_name, weights=weights, input_size=settings.input_size,
                                allow_random=allow_random)
        base_id = backbone.weights_id
        key = run_key(backbone, settings, data_fingerprint(images, labels, groups, n_classes),
                      n_classes, tag)
        _seeded_head(backbone, n_classes, settings.seed)
        folder = None if settings.checkpoint_dir is None else Path(settings.checkpoint_dir)
        final = None if folder is None else folder / f"{key}.safetensors"
        if final is not None and final.is_file():
            done = _from_final(final, backbone, settings, base_id, device)
            if done is not None:
                return done
        backbone.model.to(device)
        outputs = frozen() if callable(frozen) else frozen
        if outputs is not None:
            _check_frozen(outputs, backbone, settings.trainable, [len(a) for a in images])
        data = _prepare_data(images, labels, groups, settings)
        state, trainer, resumed = _train(backbone, images, data, settings, n_classes, device,
                                         outputs, folder, key, progress, desc)
        if state.best_state is not None:
            trainer.load_state(state.best_state, final or Path("<memory>"))
        _finish(backbone)
        history = _history(state, trainer, data, settings, time.perf_counter() - t0, resumed)
        history.update(base_weights_id=base_id, weights_id=backbone.weights_id, key=key,
                       checkpoint=None if final is None else str(final))
        if final is not None:
            _save_safetensors(trainer.state(), _final_metadata(backbone, key, history,
                                                               settings, base_id), final)
            (folder / f"{key}.partial.safetensors").unlink(missing_ok=True)
    return backbone, history


def _train(backbone: Backbone, images: Sequence[np.ndarray], data: _Data,
           settings: FinetuneSettings, n_classes: int, device: torch.device,
           frozen: FrozenOutputs | None, folder: Path | None, key: str, progress: bool,
           desc: str) -> tuple[_Progress, _Trainer, int]:
    """Set up (or resume) and run the epochs, with seeded generators (global torch RNG
    state restored afterwards). Returns (final progress, trainer, epochs resumed from)."""
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=_cuda_devices(device)):
        torch.manual_seed(settings.seed)
        trainer = _Trainer(backbone, images, data, settings, n_classes, device, frozen)
        partial = None if folder is None else folder / f"{key}.partial.safetensors"
        state = None
        if partial is not None and partial.is_file():
            state = _restore_partial(partial, trainer, key)
        state = state or _Progress()
        resumed = state.epoch
        with tqdm(total=settings.max_epochs, initial=resumed, desc=desc, unit="epoch",
                  disable=not progress, leave=False) as bar:
            state = _train_loop(trainer, state, settings, partial, key, bar)
    return state, trainer, resumed


def _cuda_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _finish(backbone: Backbone) -> None:
    """Eval mode, every parameter trainable again (as get_backbone leaves them), new id."""
    for p in backbone.model.parameters():
        p.requires_grad_(True)
    backbone.model.eval()
    backbone.refresh_weights_id()


def _from_final(final: Path, backbone: Backbone, settings: FinetuneSettings, base_id: str,
                device: torch.device) -> tuple[Backbone, dict[str, Any]] | None:
    """The finished run stored in ``final`` loaded into ``backbone``, or None (retrain)."""
    split = split_network(backbone, settings.trainable)
    try:
        history = load_finetuned(final, backbone, split.trainable_prefixes)
    except ModelError as exc:
        warnings.warn(f"{exc}; training again", FinetuneWarning, stacklevel=3)
        return None
    _finish(backbone)
    if history.get("weights_id") != backbone.weights_id:
        warnings.warn(f"{final}: weights differ from those recorded; training again",
                      FinetuneWarning, stacklevel=3)
        return None
    backbone.model.to(device)
    history.update(from_checkpoint=True, base_weights_id=base_id,
                   weights_id=backbone.weights_id, checkpoint=str(final))
    return backbone, history


# --------------------------------------------------------------------------------------
# cross-validation: one network per fold and view
# --------------------------------------------------------------------------------------

class _Lazy:
    """A value computed on first use (the frozen outputs of a view: needed only when some
    fold must be trained or some features are not cached)."""

    def __init__(self, compute: Callable[[], Any]):
        self.compute, self.done, self.value = compute, False, None

    def __call__(self) -> Any:
        if not self.done:
            self.value, self.done = self.compute(), True
        return self.value


def _cached_features(cache, keys: list[str], dim: int) -> list[np.ndarray] | None:
    """Every file's features from the feature cache, or None if any is missing."""
    if cache is None:
        return None
    found = []
    for key in keys:
        array = cache.get(key, dim)
        if array is None:
            return None
        found.append(array)
    return found


def _fold_features(backbone: Backbone, settings: FinetuneSettings, view: str,
                   images: list[np.ndarray], frozen_all: _Lazy, cache, digests: list[str],
                   config: FrontEndConfig, batch_size: int
                   ) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Every file's segment features with a fine-tuned backbone: from the feature cache
    (keys as :class:`~binser.features.SegmentFeatureExtractor`'s), else computed from the
    view's frozen outputs (or images) and stored there."""
    from .features import backbone_cache_key

    t = time.perf_counter()
    keys = [backbone_cache_key(d, view, config, backbone) for d in digests]
    cached = _cached_features(cache, keys, backbone.feature_dim) if keys else None
    if cached is not None:
        return cached, {"features_from_cache": True, "extract_seconds":
                        time.perf_counter() - t, "extract_segments": 0,
                        "extract_images_per_s": None}
    features = segment_features(backbone, settings.trainable, images, frozen_all(),
                                batch_size)
    if cache is not None:
        for key, array in zip(keys, features):
            cache.put(key, array)
    seconds = time.perf_counter() - t
    n = int(sum(len(f) for f in features))
    return features, {"features_from_cache": False, "extract_seconds": seconds,
                      "extract_segments": n, "extract_images_per_s": n / seconds}


def _run_inputs(labels: np.ndarray, speakers: Sequence[str], n_classes: int | None,
                settings: FinetuneSettings, cache_dir: str | Path | None
                ) -> tuple[np.ndarray, np.ndarray, int, FinetuneSettings]:
    """Labels as int64, speakers as str, the class count, and the settings with checkpoints
    defaulting to ``<cache_dir>/finetuned``."""
    labels = np.asarray(labels).astype(np.int64)
    speakers = np.array([str(s) for s in speakers])
    n_classes = int(labels.max()) + 1 if n_classes is None else int(n_classes)
    if settings.checkpoint_dir is None and cache_dir is not None:
        settings = dataclasses.replace(settings,
                                       checkpoint_dir=str(Path(cache_dir) / "finetuned"))
    return labels, speakers, n_classes, settings


def finetuned_fold_features(paths: Sequence[str | Path], labels: np.ndarray,
                            speakers: Sequence[str],
                            fold_list: Sequence[tuple[np.ndarray, np.ndarray]],
                            backbone_name: str, weights: str | Path | None,
                            views: Sequence[str], config: FrontEndConfig = FrontEndConfig(),
                            settings: FinetuneSettings = FinetuneSettings(),
                            cache_dir: str | Path | None = None, batch_size: int = EVAL_BATCH,
                            progress: bool = True, allow_random: bool = False,
                            n_classes: int | None = None,
                            ) -> tuple[list[dict[str, list[np.ndarray]]],
                                       list[dict[str, dict[str, Any]]]]:
    """Per fold and view: fine-tune on the fold's training utterances, then featurise all.

    ``labels`` (N,) class indices; ``speakers`` (N,); ``fold_list`` ``[(train_idx,
    test_idx), ...]`` (e.g. from :func:`binser.evaluation.folds`). For each view the files
    are decoded once (float32 images); for each fold a fresh network is fine-tuned on
    ``train_idx`` only (validation speakers drawn from them), then the segment features of
    ALL ``paths`` are computed with it. The frozen part's outputs are computed once per view
    and shared by the folds' training and feature computation. Features go into the feature
    cache at ``cache_dir`` under :class:`~binser.features.SegmentFeatureExtractor`'s keys
    (which carry the fine-tuned weights' id, so they never mix with frozen features);
    finished networks into ``settings.checkpoint_dir`` (default ``<cache_dir>/finetuned``),
    so a rerun trains nothing and reads every feature from the cache. ``batch_size``:
    segments per forward pass when computing features.

    Returns ``(features, records)``: ``features[k][view]`` the list of ``(n_i, d)`` float32
    arrays of fold k; ``records[k][view]`` the fine-tuning history of that network plus
    ``fold``, ``view``, ``test_speakers``, ``weights_id`` and the feature timings.
    """
    from .cache import FeatureCache, file_sha256

    labels, speakers, n_classes, settings = _run_inputs(labels, speakers, n_classes, settings,
                                                        cache_dir)
    cache = None if cache_dir is None else FeatureCache(cache_dir)
    digests = [file_sha256(p) for p in paths] if cache is not None else []
    features: list[dict[str, list[np.ndarray]]] = [{} for _ in fold_list]
    records: list[dict[str, dict[str, Any]]] = [{} for _ in fold_list]
    for view in views:
        images = load_view_images(paths, (view,), config, progress, dtype=np.float32)[view]
        frozen_all = _Lazy(functools.partial(_view_frozen_outputs, backbone_name, weights,
                                             settings, images, allow_random))
        for k, (train_idx, test_idx) in enumerate(fold_list):
            train_idx = np.asarray(train_idx)
            backbone, history = finetune_backbone(
                backbone_name, weights, [images[i] for i in train_idx], labels[train_idx],
                speakers[train_idx], n_classes, settings, progress, allow_random,
                tag=f"{view}|{config.digest()}", desc=f"fold {k + 1}/{len(fold_list)} {view}",
                frozen=functools.partial(_subset, frozen_all, train_idx))
            with torch_threads(settings.num_threads):
                features[k][view], timing = _fold_features(backbone, settings, view, images,
                                                           frozen_all, cache, digests, config,
                                                           batch_size)
            records[k][view] = {**history, **timing, "fold": k, "view": view,
                                "test_speakers": sorted(set(speakers[test_idx]))}
            del backbone
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return features, records


def finetune_views(paths: Sequence[str | Path], labels: np.ndarray, speakers: Sequence[str],
                   backbone_name: str, weights: str | Path | None, views: Sequence[str],
                   config: FrontEndConfig = FrontEndConfig(),
                   settings: FinetuneSettings = FinetuneSettings(),
                   cache_dir: str | Path | None = None, progress: bool = True,
                   allow_random: bool = False, n_classes: int | None = None,
                   ) -> tuple[dict[str, Backbone], dict[str, dict[str, Any]]]:
    """The final networks of a model: one per view fine-tuned on ALL ``paths`` (validation
    speakers for early stopping drawn from them). ``labels`` (N,) class indices.

    Returns ``({view: fine-tuned Backbone}, {view: history})``; with ``cache_dir`` finished
    networks are kept under ``<cache_dir>/finetuned`` (a rerun trains nothing).
    """
    labels, speakers, n_classes, settings = _run_inputs(labels, speakers, n_classes, settings,
                                                        cache_dir)
    backbones, histories = {}, {}
    for view in views:
        images = load_view_images(paths, (view,), config, progress, dtype=np.float32)[view]
        backbones[view], histories[view] = finetune_backbone(
            backbone_name, weights, images, labels, speakers, n_classes, settings, progress,
            allow_random, tag=f"{view}|{config.digest()}", desc=f"final {view}")
    return backbones, histories


def _subset(frozen_all: _Lazy, utterances: np.ndarray) -> FrozenOutputs | None:
    """The view's frozen outputs (computed now if not yet) for ``utterances`` only; their
    ``seconds`` count the computation for the first run that needed it, 0 for the others."""
    first = not frozen_all.done
    frozen = frozen_all()
    if frozen is None:
        return None
    part = frozen.subset(utterances)
    part.seconds = frozen.seconds if first else 0.0
    return part


def _view_frozen_outputs(backbone_name: str, weights: str | Path | None,
                         settings: FinetuneSettings, images: Sequence[np.ndarray],
                         allow_random: bool) -> FrozenOutputs | None:
    """The frozen part's outputs for every utterance of one view (None: nothing frozen)."""
    with torch_threads(settings.num_threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # said once per fine-tuning
        backbone = get_backbone(backbone_name, weights=weights,
                                input_size=settings.input_size, allow_random=allow_random)
        backbone.model.to(resolve_device(settings.device))
        return frozen_outputs(backbone, settings.trainable, images)
