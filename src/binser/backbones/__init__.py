"""Backbones: the networks that turn one view into a sequence of feature vectors
(docs/METHOD.md section 5).

One family per module, one registry here:

- :mod:`binser.backbones.imagenet`: the paper's setting, ImageNet CNNs (EfficientNet-Lite0,
  AlexNet) over 64-frame log-Mel segment images -> one feature vector per segment.
- :mod:`binser.backbones.whisper`: speech-pretrained Whisper encoders over the view's
  waveform -> the hidden states of one encoder layer, one vector per 20 ms frame.

Everything after the backbone (pooling, classifiers, fusion) treats both alike: a list of
``(n_i, d)`` arrays, one per utterance, rows in time order.
"""
from __future__ import annotations

from .imagenet import (ALEXNET_URL, BACKBONES, DEFAULT_INPUT_SIZE, IMAGENET_MEAN,  # noqa: F401
                       IMAGENET_STD, LITE_MEAN, LITE_STD, MIN_INPUT_SIZE, AlexNet, Backbone,
                       EfficientNetLite0, RandomWeightsWarning, get_backbone, read_state_dict,
                       set_threads, weights_digest)
from .whisper import (WHISPER_BACKBONES, WhisperBackbone, WhisperConfig,  # noqa: F401,E402
                      load_whisper, whisper_log_mel)

ALL_BACKBONES = BACKBONES + WHISPER_BACKBONES
