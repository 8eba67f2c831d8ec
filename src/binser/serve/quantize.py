"""Optional int8 encoder for ``binser serve --quantize int8``.

:func:`quantize_model` replaces every ``torch.nn.Linear`` of a Whisper model's encoder
(attention projections and feed-forward layers: most of its arithmetic) by PyTorch's
dynamically quantised version (``torch.ao.quantization.quantize_dynamic``, ``qint8``):
weights stored as int8 with one scale per tensor, activations quantised per batch at run
time, accumulation in int32. Convolutions, layer norms and the classifiers stay float32.

The numbers change: scores are no longer those of ``predict``, and the accuracy change is
the model's own (measure it on your data before relying on it; the project's figures are
in RESULTS.md where measured). Image-CNN models are refused: their Linear layers are not on
the feature path, so there is nothing to gain. PyTorch marks ``torch.ao.quantization``
deprecated (to move to torchao); its warnings are silenced here, and a PyTorch without it
gets a one-line ConfigError.
"""
from __future__ import annotations

import warnings

from ..errors import ConfigError

SCHEMES = ("int8",)


def quantize_model(model, scheme: str = "int8") -> int:
    """Quantise ``model``'s encoder(s) in place (see the module docstring); returns the
    number of Linear layers replaced. ConfigError for an unknown scheme, an image-CNN
    model or a PyTorch without a quantised CPU engine."""
    import torch

    if scheme not in SCHEMES:
        raise ConfigError(f"--quantize must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    from ..backbones import family

    if not family(model.family).encoder:
        raise ConfigError("--quantize int8 applies to Whisper models (an image CNN's Linear "
                          "layers are not on its feature path)")
    engines = torch.backends.quantized.supported_engines
    engine = next((e for e in ("fbgemm", "x86", "qnnpack") if e in engines), None)
    if engine is None:
        raise ConfigError("this PyTorch has no quantised CPU engine (fbgemm/qnnpack)")
    torch.backends.quantized.engine = engine
    replaced = 0
    seen: set[int] = set()
    for backbone in model.backbones.values():
        if id(backbone) in seen:
            continue
        seen.add(id(backbone))
        if getattr(backbone, "device", torch.device("cpu")).type != "cpu":
            raise ConfigError("--quantize int8 runs on the CPU; this encoder is on "
                              f"{backbone.device}")
        linear = sum(isinstance(m, torch.nn.Linear) for m in backbone.model.modules())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            try:
                quantize = torch.ao.quantization.quantize_dynamic
            except AttributeError:
                raise ConfigError("this PyTorch has no torch.ao.quantization."
                                  "quantize_dynamic") from None
            backbone.model = quantize(backbone.model, {torch.nn.Linear}, dtype=torch.qint8)
        replaced += linear
    model.info["quantized"] = scheme
    return replaced
