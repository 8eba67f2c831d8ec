"""The backbone interface and the registry of backbone families (docs/METHOD.md section 5).

A **family** is one module that builds backbones of some names; the registry maps each
family name to a :class:`Family` (its module, the backbone names it serves and whether
its rows are encoder frames). Everything else finds a backbone's behaviour on the object
itself (:class:`Backbone`), never by comparing family names: adding a family is one module
and one :func:`register` call.

A family module provides

* ``load(name, weights=None, cache_dir=None, input_size=None, allow_random=False) ->
  Backbone``: a backbone by name, weights checked (:func:`load_backbone` calls it);
* ``model_spec(where, spec, mode) -> layer``: the family's part of a model.json
  ``backbone`` entry checked (:class:`~binser.errors.ModelError` naming ``where``), the
  encoder layer (None for single-output networks) returned;
* ``model_backbones(root, spec, files, views) -> {view: Backbone}``: the backbones of a
  verified model folder (``files``: view -> weights file name; ``spec``: model.json's
  ``backbone`` entry), the slow part of loading a model.

The :class:`Backbone` protocol (what the model, the feature extractors, the executors, the
stream engine and the benchmarks use):

* ``family`` (a registered name), ``name``, ``feature_dim`` (``d``), ``weights_id`` (16 hex
  digits naming every weight: feature caches are keyed by it), ``pretrained``, ``source``;
* geometry: ``frame_rate``: rows per second of audio for encoders (Whisper: 50, one row per
  20 ms), or None for networks whose rows are the front end's log-Mel segments (one row per
  ``segment_frames``-frame segment every ``segment_hop`` frames; ImageNet CNNs);
* ``layers``: the valid layer keys, ``(None,)`` for single-output networks, ``0..L`` for
  encoders (Hugging Face ``hidden_states`` numbering);
* ``encode(signals, layers) -> [{layer: (n_i, d)}, ...]`` float32 rows of each float32
  signal ``(N_i,)`` at the backbone's rate (CNNs: ``config``, the front end, as keyword);
* ``extractor_class``: the batched, cached file extractor
  (:class:`~binser.features.SegmentFeatureExtractor` or
  :class:`~binser.features.FrameFeatureExtractor`);
* ``device``, ``to(device) -> self``, ``refresh_weights_id() -> str`` (frozen encoders
  keep the identity they were loaded with);
* ``save(path, keep_head=False)``: the weights as one safetensors file; ``describe(mode,
  layer) -> dict``: the family's fields of model.json's ``backbone`` entry; ``card_line(mode,
  layer) -> str``: the model card's backbone line.

:func:`load_backbone`, :func:`resolve_backbone` and :func:`is_encoder` answer for a backbone
NAME (settings, the command line) through the registry, without importing torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, Sequence, runtime_checkable

from ..errors import ConfigError

DEFAULT_ENCODER = "whisper-base"
DEFAULT_CNN = "efficientnet_lite0"


@dataclass(frozen=True)
class Family:
    """One registered backbone family.

    ``name``: the family (model.json ``backbone.family``); ``module``: the importable module
    that implements it (imported on first use, so naming a family costs no torch import);
    ``names``: the backbone names it builds; ``encoder``: True when its rows are encoder
    frames with selectable layers (speech encoders), False for segment-image networks;
    ``finetune``: whether ``--mode finetune`` can train it per view.
    """

    name: str
    module: str
    names: tuple[str, ...]
    encoder: bool
    finetune: bool = False

    def implementation(self) -> ModuleType:
        """The family's module (``load``, ``model_spec``, ``model_backbones``)."""
        return importlib.import_module(self.module)


@runtime_checkable
class Backbone(Protocol):
    """What every backbone offers (see the module docstring for the contract)."""

    family: str
    name: str
    weights_id: str
    pretrained: bool
    source: str

    @property
    def feature_dim(self) -> int: ...

    @property
    def frame_rate(self) -> float | None: ...

    @property
    def layers(self) -> tuple[int | None, ...]: ...

    @property
    def extractor_class(self) -> type: ...

    @property
    def device(self) -> Any: ...

    def encode(self, signals: Sequence[Any], layers: Sequence[int | None], **kwargs: Any
               ) -> list[dict[int | None, Any]]: ...

    def to(self, device: Any) -> "Backbone": ...

    def refresh_weights_id(self) -> str: ...

    def save(self, path: str | Path, keep_head: bool = False) -> None: ...

    def describe(self, mode: str, layer: int | None) -> dict[str, Any]: ...

    def card_line(self, mode: str, layer: int | None) -> str: ...


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` to the registry (a new name, names no other family serves)."""
    if family.name in _FAMILIES:
        raise ConfigError(f"backbone family {family.name!r} is already registered")
    taken = [n for n in family.names if n in all_backbones()]
    if taken:
        raise ConfigError(f"backbone name(s) {', '.join(taken)} already belong to a family")
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a family (tests that register their own)."""
    _FAMILIES.pop(name, None)


def families() -> tuple[str, ...]:
    """Registered family names, in registration order."""
    return tuple(_FAMILIES)


def family(name: str) -> Family:
    """The registered family ``name``; ConfigError naming the known ones otherwise."""
    if name not in _FAMILIES:
        raise ConfigError(f"unknown backbone family {name!r} (known: {', '.join(_FAMILIES)})")
    return _FAMILIES[name]


def all_backbones() -> tuple[str, ...]:
    """Every backbone name of every registered family."""
    return tuple(n for f in _FAMILIES.values() for n in f.names)


def family_of(backbone: str) -> Family:
    """The family that builds backbone ``backbone`` (ConfigError for an unknown name)."""
    for fam in _FAMILIES.values():
        if str(backbone) in fam.names:
            return fam
    raise ConfigError(f"unknown backbone {backbone!r} (choose from: "
                      f"{', '.join(all_backbones())})")


def is_encoder(backbone: str) -> bool:
    """True for speech encoders (their features are frames with selectable layers)."""
    return any(str(backbone) in f.names and f.encoder for f in _FAMILIES.values())


def resolve_backbone(name: str, weights: str | None, cache_dir: str | Path | None) -> str:
    """``auto``: :data:`DEFAULT_ENCODER` (the best configuration measured, see RESULTS.md)
    when weights are given or binser's cache holds them, else the paper's ImageNet CNN
    :data:`DEFAULT_CNN` (packaged, offline). Any other name is returned unchanged."""
    if name != "auto":
        return name
    if weights is not None:
        return DEFAULT_ENCODER
    from .whisper import whisper_cache_folder

    folder = whisper_cache_folder(DEFAULT_ENCODER.split("-", 1)[1], cache_dir)
    return DEFAULT_ENCODER if (folder / "model.safetensors").is_file() else DEFAULT_CNN


def load_backbone(settings: Any, input_size: int | None = None):
    """The backbone of an experiment's ``settings`` (its ``backbone``, ``weights``,
    ``cache_dir``, ``input_size``, ``allow_random``), built by its family, weights checked."""
    fam = family_of(settings.backbone)
    return fam.implementation().load(settings.backbone, weights=settings.weights,
                                     cache_dir=settings.cache_dir,
                                     input_size=input_size or settings.input_size,
                                     allow_random=settings.allow_random)


register(Family("imagenet", "binser.backbones.imagenet", ("efficientnet_lite0", "alexnet"),
                encoder=False, finetune=True))
register(Family("whisper", "binser.backbones.whisper",
                tuple(f"whisper-{s}" for s in ("tiny", "base", "small", "medium", "large-v3")),
                encoder=True))
