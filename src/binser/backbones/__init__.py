"""Backbones: the networks that turn one view into a sequence of feature vectors
(docs/METHOD.md section 5).

One family per module, one registry (:mod:`binser.backbones.registry`: the
:class:`~binser.backbones.registry.Backbone` interface, :func:`register`,
:func:`load_backbone`, :func:`resolve_backbone`, :func:`is_encoder`):

- :mod:`binser.backbones.imagenet`: the paper's setting, ImageNet CNNs (EfficientNet-Lite0,
  AlexNet) over 64-frame log-Mel segment images -> one feature vector per segment.
- :mod:`binser.backbones.whisper`: speech-pretrained Whisper encoders over the view's
  waveform -> the hidden states of one encoder layer, one vector per 20 ms frame.

Everything after the backbone (pooling, classifiers, fusion) treats both alike: a list of
``(n_i, d)`` arrays, one per utterance, rows in time order. The family modules (and torch)
are imported on first use of one of their names, so naming or resolving a backbone is cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

from .registry import (DEFAULT_CNN, DEFAULT_ENCODER, Backbone, Family,  # noqa: F401
                       all_backbones, families, family, family_of, is_encoder, load_backbone,
                       register, resolve_backbone, unregister)

_LAZY = {
    "imagenet": ("ALEXNET_URL", "BACKBONES", "DEFAULT_INPUT_SIZE", "IMAGENET_MEAN",
                 "IMAGENET_STD", "LITE_MEAN", "LITE_STD", "MIN_INPUT_SIZE", "AlexNet",
                 "ImageNetBackbone", "EfficientNetLite0", "RandomWeightsWarning", "get_backbone",
                 "read_state_dict", "set_threads", "weights_digest"),
    "whisper": ("WHISPER_BACKBONES", "WhisperBackbone", "WhisperConfig", "load_whisper",
                "whisper_log_mel"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    """Names of the family modules, imported on first use; ``ALL_BACKBONES``: every name
    of every registered family (read at the time of the call)."""
    if name == "ALL_BACKBONES":
        return all_backbones()
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | {"ALL_BACKBONES"})
