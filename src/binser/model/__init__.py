"""A trained binser system: train on a whole corpus, save as a safe folder, load, predict.

One module per concern:

- :mod:`binser.model.train`: :func:`train_model` (the final system on ALL utterances,
  layer choice for encoders, nested fusion weights) and its helpers;
- :mod:`binser.model.io`: the model folder (model.json + safetensors, checksums), saving
  (:func:`save_model`), loading and verification (:func:`load_model`, :func:`read_document`,
  :func:`verify_files`);
- :mod:`binser.model.predict`: :class:`Model` (scoring, :meth:`Model.predict`, timelines),
  :class:`Prediction`, the timeline windows, :func:`read_speakers_csv`;
- :mod:`binser.model.card`: :func:`model_card` (MODEL_CARD.md).

The backbone of a model is used only through the interface of
:mod:`binser.backbones.registry` (each family saves, describes and reloads its own part).
The command line's text output of a prediction lives in :mod:`binser.cli_format`.
"""
from __future__ import annotations

from .card import model_card  # noqa: F401
from .io import (FORMAT, FORMAT_VERSION, FRONTEND_BOUNDS, MAX_BLOCKS,  # noqa: F401
                 MAX_JSON_BYTES, MAX_MIN_UTTERANCES, MODEL_CARD, MODEL_JSON,
                 SPEAKER_NORM_DEFINITION, _check_frontend, content_sha256, load_model,
                 read_document, safe_member, save_model, verify_files)
from .predict import (CALL_SPEAKER, CLIP_BATCH, DEFAULT_FUSION, FRAMES_PER_S,  # noqa: F401
                      MIN_UTTERANCES, MODES, WINDOW_FRAMES, WINDOW_HOP, Model, PoolingSpec,
                      Prediction, encoder_windows, file_sha256, read_speakers_csv,
                      window_hop_length, window_sample_spans)
from .train import (LayerFit, _cv_summary, final_finetuned_backbones,  # noqa: F401
                    fit_best_layer, fit_views, model_views, nested_fusion_weights,
                    oof_scores, pool_training_view, train_model, training_info,
                    training_layers)
