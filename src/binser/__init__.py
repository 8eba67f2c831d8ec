"""binser: binaural speech emotion recognition (Zhang et al., IEEE Access 2020, and beyond).

The package mirrors the pipeline; each step is one module:

audio -> views -> spectrogram (log-Mel, segments, images) -> backbones/features (deep
segment features) -> pooling -> classifier -> fusion -> evaluation -> report.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .config import FrontEndConfig
from .errors import AudioError, BinserError, ConfigError, CorpusError, ModelError

# Public API, imported lazily so that `import binser` stays fast (torch is heavy).
_LAZY = {
    "load_audio": ("audio", "load_audio"),
    "audio_info": ("audio", "audio_info"),
    "binaural_views": ("views", "binaural_views"),
    "log_mel": ("spectrogram", "log_mel"),
    "deltas": ("spectrogram", "deltas"),
    "segment": ("spectrogram", "segment"),
    "segment_images": ("spectrogram", "segment_images"),
    "resize_images": ("spectrogram", "resize_images"),
    "utterance_images": ("spectrogram", "utterance_images"),
    "corpus": ("corpora", "corpus"),
    "DATASETS": ("corpora", "DATASETS"),
    "Utterance": ("corpora", "Utterance"),
    "get_backbone": ("backbones", "get_backbone"),
    "SegmentFeatureExtractor": ("features", "SegmentFeatureExtractor"),
    "GlobalPooling": ("pooling", "GlobalPooling"),
    "BlockTemporalPooling": ("pooling", "BlockTemporalPooling"),
    "ViewClassifier": ("classifier", "ViewClassifier"),
    "two_stage_fusion": ("fusion", "two_stage_fusion"),
    "run_experiment": ("experiment", "run_experiment"),
    "ExperimentSettings": ("experiment", "ExperimentSettings"),
    "Model": ("model", "Model"),
    "train_model": ("model", "train_model"),
    "Prediction": ("model", "Prediction"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'binser' has no attribute {name!r}")


__all__ = ["FrontEndConfig", "AudioError", "BinserError", "ConfigError", "CorpusError",
           "ModelError", *_LAZY]
