"""`binser experiment`: the paper's study on any corpus, with honest (nested) fusion weights.

Steps: corpus -> segment features per view (cached) -> pooling (stateless, per utterance) ->
per fold: a linear SVM per view x pooling, nested fusion weights from training-fold
out-of-fold scores, feature fusion -> pooled metrics -> ``results.json`` (docs/METHOD.md
section 10; the contract is checked by :mod:`binser.results`).

Nothing is fitted on a test fold: scaling, C and calibration live inside
:class:`~binser.classifier.ViewClassifier`, fitted on the training fold; fusion weights for
``nested`` come from out-of-fold scores of the training speakers. The ``oracle`` fusion (the
paper's choice of weights on the test data) is reported too, named as such.

The package, one module a step: :mod:`.settings`, :mod:`.features`, :mod:`.folds`,
:mod:`.summary`, :mod:`.stages`; every name is importable from ``binser.experiment``.
"""
from __future__ import annotations

from .settings import (  # noqa: F401
    MODES, FINETUNE_NESTED_CAVEAT, FINETUNE_PRESETS, BASELINES, CLASSIFIERS, LAYER_POLICIES, PROSODY_VIEW, ExperimentSettings, _progress)
from .features import (  # noqa: F401
    encoder_layers, extract_features, iter_layer_features, _feature_view_frames, finetune_settings, finetuned_features, pool_features, POOLED_FORMAT, _pooled_layer_key, _pooled_keys, cached_study_features, pooled_study_features, baseline_features, PooledFeatures, as_pooled, as_per_fold, distinct, distinct_map, jittered_features, mono_files, _layer_description, speaker_normalised)
from .folds import (  # noqa: F401
    RunPredictions, full_columns, FoldResultCache, fusions_for, choose_layers, evaluate_fold, prosody_stage, default_jobs, run_folds, oracle_fusions)
from .summary import (  # noqa: F401
    summarise_run, comparison_pairs, compare_runs, write_json_atomic, write_predictions_csv)
from .stages import (  # noqa: F401
    STAGES, STAGE_WEIGHTS, Study, StudyFeatures, _timed, prepare, _say_study, compute_features, evaluate, head_runs, _evaluate_family, assemble, study_section, backbone_section, features_section, _small_sample, method_section, runs_section, write_outputs, run_experiment, _deployment, _online)
from ..backbones import (DEFAULT_CNN, DEFAULT_ENCODER, is_encoder, load_backbone,  # noqa: F401
                         resolve_backbone)
