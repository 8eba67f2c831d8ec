"""Optional reduced-precision encoders for ``binser serve --quantize int8|bf16``.

:func:`quantize_model` changes a Whisper model's encoder(s); the classifiers stay float32.

* ``int8``: every ``torch.nn.Linear`` (attention projections and feed-forward layers: most
  of the arithmetic) becomes PyTorch's dynamically quantised version
  (``torch.ao.quantization.quantize_dynamic``, ``qint8``): weights stored as int8 with one
  scale per tensor, activations quantised per batch at run time, accumulation in int32.
  Convolutions and layer norms stay float32.
* ``bf16``: every ``torch.nn.Linear`` and ``torch.nn.Conv1d`` (the two stem convolutions)
  computes its product in bfloat16 (:class:`BFloat16Linear`, :class:`BFloat16Conv1d`):
  weights stored as bfloat16, the float32 input rounded to bfloat16, the product
  accumulated by the CPU's bfloat16 kernels, returned as float32, bias added in float32.
  Layer norms, softmax, GELU and the residual sums stay float32. Fast on CPUs with bfloat16
  instructions (AVX512-BF16 or AMX: about 2.3x a float32 matmul on this project's machine);
  elsewhere PyTorch emulates them (not measured by the project: time it first).

The numbers change: scores are no longer those of ``predict``, and the accuracy change is
the model's own (measure it on your data before relying on it; the project's figures are
in RESULTS.md where measured). Image-CNN models are refused: their Linear layers are not on
the feature path, so there is nothing to gain. PyTorch marks ``torch.ao.quantization``
deprecated (to move to torchao); its warnings are silenced here, and a PyTorch without it
gets a one-line ConfigError.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F

from ..errors import ConfigError

SCHEMES = ("int8", "bf16")


class BFloat16Linear(torch.nn.Module):
    """``y = float32(bf16(x) @ bf16(W)^T) + b`` for ``x (..., in)`` float32 -> ``(..., out)``
    float32; ``W`` stored as bfloat16, ``b`` as float32 (see the module docstring)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None
                             else linear.bias.detach().to(torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.to(torch.bfloat16), self.weight).to(torch.float32)
        return y if self.bias is None else y + self.bias


class BFloat16Conv1d(torch.nn.Module):
    """``torch.nn.Conv1d``'s output with the convolution computed in bfloat16 (input and
    weights rounded to bfloat16, result float32, bias added in float32)."""

    def __init__(self, conv: torch.nn.Conv1d):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ConfigError(f"--quantize bf16: Conv1d padding mode {conv.padding_mode!r} "
                              "is not supported")
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.register_buffer("weight", conv.weight.detach().to(torch.bfloat16))
        self.register_buffer("bias", None if conv.bias is None
                             else conv.bias.detach().to(torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv1d(x.to(torch.bfloat16), self.weight, None, self.stride, self.padding,
                     self.dilation, self.groups).to(torch.float32)
        return y if self.bias is None else y + self.bias[:, None]


def bfloat16_copy(module: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """A deep copy of ``module`` with every Linear and Conv1d computing in bfloat16, and the
    number of layers replaced; ``module`` itself is unchanged."""
    out = copy.deepcopy(module)
    replaced = 0
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, BFloat16Linear(child))
                replaced += 1
            elif isinstance(child, torch.nn.Conv1d):
                setattr(parent, name, BFloat16Conv1d(child))
                replaced += 1
    return out, replaced


def quantize_model(model, scheme: str = "int8") -> int:
    """Quantise ``model``'s encoder(s) in place (see the module docstring); returns the
    number of layers replaced (int8: Linear; bf16: Linear and Conv1d). ConfigError for an
    unknown scheme, an image-CNN model, an encoder off the CPU or (int8) a PyTorch without
    a quantised CPU engine."""
    if scheme not in SCHEMES:
        raise ConfigError(f"--quantize must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    from ..backbones import family

    if not family(model.family).encoder:
        raise ConfigError(f"--quantize {scheme} applies to Whisper models (an image CNN's "
                          "Linear layers are not on its feature path)")
    convert = bfloat16_copy if scheme == "bf16" else _int8_converter()
    replaced = 0
    seen: set[int] = set()
    for backbone in model.backbones.values():     # views may share one encoder
        if id(backbone) in seen:
            continue
        seen.add(id(backbone))
        if getattr(backbone, "device", torch.device("cpu")).type != "cpu":
            raise ConfigError(f"--quantize {scheme} runs on the CPU; this encoder is on "
                              f"{backbone.device}")
        backbone.model, count = convert(backbone.model)
        replaced += count
    model.info["quantized"] = scheme
    return replaced


def _int8_converter():
    """``module -> (dynamically quantised copy, Linear layers replaced)``, after choosing
    PyTorch's quantised CPU engine; ConfigError where there is none."""
    engines = torch.backends.quantized.supported_engines
    engine = next((e for e in ("fbgemm", "x86", "qnnpack") if e in engines), None)
    if engine is None:
        raise ConfigError("this PyTorch has no quantised CPU engine (fbgemm/qnnpack)")
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            quantize = torch.ao.quantization.quantize_dynamic
        except AttributeError:
            raise ConfigError("this PyTorch has no torch.ao.quantization."
                              "quantize_dynamic") from None

    def convert(module: torch.nn.Module) -> tuple[torch.nn.Module, int]:
        linear = sum(isinstance(m, torch.nn.Linear) for m in module.modules())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            return quantize(module, {torch.nn.Linear}, dtype=torch.qint8), linear
    return convert
