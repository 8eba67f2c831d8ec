"""Training the final system on a whole corpus.

:func:`train_model` fits the final system on ALL utterances of a corpus: per view a
:class:`~binser.classifier.ViewClassifier` on pooled backbone features (C chosen by
speaker-grouped inner CV), and the fusion weights chosen by nested CV, i.e. by
:func:`~binser.fusion.select_weights` (search ``settings.fusion_search``) on out-of-fold
probabilities over all speakers (:meth:`ViewClassifier.oof_proba`: no utterance is scored by
a model that saw its speaker). The pooling defaults to ``settings.resolved_fusion_pooling()``
(``stats`` for Whisper encoders, the paper's ``block-max`` for image CNNs).

Backbone families (model.json ``backbone.family``):

* ``imagenet``: an ImageNet CNN over 64-frame log-Mel segment images, one feature row per
  segment; frozen, or fine-tuned per view. A model.json without ``family`` (saved before the
  field existed) is of this family.
* ``whisper``: a frozen Whisper encoder (:mod:`binser.backbones.whisper`); the rows are the
  hidden states of ONE encoder layer ``backbone.layer`` (0..L, Hugging Face numbering), one
  row per 20 ms frame, for every view. ``settings.layer``: an index, None (the backbone's
  default) or ``"auto"``: every layer 0..L is tried and the one whose view classifiers have
  the best mean inner-CV UA (``best_score_``: speaker-grouped inner CV on the training data)
  over the model's views is kept, ties to the lower layer; every layer's score is recorded in
  ``training.layer_selection``.

Silent views. A view without signal of its own in a file (:func:`binser.views.silent_views`,
e.g. the Side of a mono file) has 0 feature rows. In training such rows are left out of that
view's classifier and score ``1/K`` for every class in the out-of-fold probabilities that
choose the fusion weights (exactly as :class:`binser.experiment.FoldResultCache`). In
prediction that view scores ``1/K`` for every label of that file, which shifts every fused
score by the same amount, so the other views decide; :attr:`Prediction.silent_views` lists
it. A file in which every view of the model is silent cannot be scored (an error).

Speaker normalisation (``settings.speaker_norm``; definition in
:mod:`binser.normalisation`). Training: each view's pooled features are standardised per
speaker over that speaker's rows with signal, ``(x - mean_s) / std_s`` (population std, a
std below 1e-8 counts as 1, silent rows become 0), before its classifier; per view a
:class:`~binser.normalisation.SpeakerNormaliser` keeps the fallback statistics (mean over
training speakers of their means and of their standard deviations: the "average training
speaker"). Prediction (transductive, label-free; labels are never read): the statistics of
speaker ``s`` come from the files of ``s`` given to the same :meth:`Model.predict` call (per
view, over that view's pooled rows with signal); where ``s`` has fewer than
``min_utterances`` (:data:`MIN_UTTERANCES` = 5) such rows, the fallback statistics are used.
:attr:`Prediction.speaker_norm` says which. Timeline windows use their file's statistics.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..validation import check_choice
from .io import _check_target
from .predict import DEFAULT_FUSION, MIN_UTTERANCES, Model, PoolingSpec


def _say(message: str, enabled: bool) -> None:
    if enabled:
        print(f"[binser] {message}", file=sys.stderr, flush=True)


def model_views(fusion: str | None, views: Sequence[str]) -> tuple[str, ...]:
    """Views a model needs: the fusion's, or the single view when ``fusion`` is None."""
    from ..fusion import FUSIONS
    from ..views import feature_views

    if fusion is None:
        if len(views) != 1:
            raise ConfigError(f"without a fusion, train exactly one view (got {list(views)})")
        needed = tuple(views)
    else:
        check_choice(fusion, FUSIONS, "fusion")
        missing = [v for v in FUSIONS[fusion] if v not in views]
        if missing:
            raise ConfigError(f"--fusion {fusion} trains the views {', '.join(FUSIONS[fusion])}, "
                              f"but --views {','.join(views)} leaves out {', '.join(missing)}; "
                              "drop --views, or use --fusion none with one view")
        needed = tuple(FUSIONS[fusion])
    if feature_views(needed):   # a saved model encodes every view with its backbone
        raise ConfigError(f"feature view(s) {', '.join(feature_views(needed))} cannot be saved "
                          "in a model yet (binser experiment only)")
    return needed


def training_layers(corpus, settings, views: tuple[str, ...],
                    finetuned_backbones: Mapping[str, Any] | None, progress: bool
                    ) -> tuple[dict[str, Any], Iterable[tuple[Any, dict[str, list[np.ndarray]]]]]:
    """``{view: backbone}`` and the features of every utterance as ``(layer, {view:
    [(n_i, d)]})`` pairs, one layer at a time (CNNs: the single layer None; Whisper: the
    layer asked for, the default, or every layer with ``layer="auto"``).

    Frozen (``finetuned_backbones`` None): one backbone for all views, each file decoded
    once. Fine-tuned: each view's own network extracts that view.
    """
    from ..backbones import load_backbone
    from ..experiment import iter_layer_features
    from ..features import SegmentFeatureExtractor

    if finetuned_backbones is None:
        backbone = load_backbone(settings)
        layers = iter_layer_features(corpus, replace(settings, views=views), backbone, progress)
        return {v: backbone for v in views}, layers
    missing = [v for v in views if v not in finetuned_backbones]
    if missing:
        raise ConfigError(f"no fine-tuned backbone for view(s) {', '.join(missing)}")
    features = {}
    for view in views:
        extractor = SegmentFeatureExtractor(finetuned_backbones[view], config=settings.frontend,
                                            views=(view,), cache_dir=settings.cache_dir,
                                            batch_size=settings.batch_size, progress=progress)
        features.update(extractor.extract([u.path for u in corpus]))
    return {v: finetuned_backbones[v] for v in views}, [(None, features)]


@dataclass
class LayerFit:
    """The view classifiers of one layer's features (and what they were trained on).

    ``inputs``: per view the classifier input ``(N, D)`` of every utterance (pooled, and
    speaker-normalised when asked); ``silent``: per view ``(N,)`` rows without signal (left
    out of training); ``normalisers``: per view the fitted SpeakerNormaliser (empty without
    speaker normalisation); ``n_rows``: per view the total segments or frames.
    """

    layer: int | None
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    silent: dict[str, np.ndarray] = field(default_factory=dict)
    classifiers: dict[str, Any] = field(default_factory=dict)
    normalisers: dict[str, Any] = field(default_factory=dict)
    n_rows: dict[str, int] = field(default_factory=dict)

    @property
    def view_scores(self) -> dict[str, float]:
        """Inner-CV UA (``best_score_``) of each view's classifier."""
        return {v: float(c.best_score_) for v, c in self.classifiers.items()}

    @property
    def score(self) -> float:
        """Mean inner-CV UA over the views."""
        return float(np.mean(list(self.view_scores.values())))


def pool_training_view(spec: PoolingSpec, arrays: Sequence[np.ndarray], view: str
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Pooled ``(N, D)`` and silent ``(N,)`` of one view; ConfigError when no training file
    has signal in it."""
    from ..pooling import PoolingInputError, pool_utterances

    try:
        return pool_utterances(spec.make(), arrays)
    except PoolingInputError as exc:
        raise ConfigError(f"view {view} carries no signal in any training file (e.g. the side "
                          f"of mono recordings; {exc}): train a fusion without it "
                          "(e.g. --fusion left+right)") from None


def fit_views(features: Mapping[str, Sequence[np.ndarray]], y: np.ndarray, groups: np.ndarray,
              views: Sequence[str], spec: PoolingSpec, seed: int, speaker_norm: bool,
              layer: int | None = None) -> LayerFit:
    """Pool, optionally speaker-normalise, and fit one ViewClassifier per view on the rows
    with signal (see the module docstring)."""
    from ..classifier import ViewClassifier
    from ..normalisation import SpeakerNormaliser, speaker_normalise

    fit = LayerFit(layer)
    for view in views:
        X, silent = pool_training_view(spec, features[view], view)
        if speaker_norm:
            fit.normalisers[view] = SpeakerNormaliser(MIN_UTTERANCES).fit(X, groups, ~silent)
            X = speaker_normalise(X, groups, ~silent)
        rows = ~silent
        fit.classifiers[view] = ViewClassifier(random_state=seed).fit(X[rows], y[rows],
                                                                      groups[rows])
        fit.inputs[view], fit.silent[view] = X, silent
        fit.n_rows[view] = int(sum(np.shape(f)[0] for f in features[view]))
    return fit


def fit_best_layer(layer_features: Iterable[tuple[Any, Mapping[str, Sequence[np.ndarray]]]],
                   y: np.ndarray, groups: np.ndarray, views: Sequence[str], spec: PoolingSpec,
                   settings, progress: bool = True
                   ) -> tuple[LayerFit, dict[Any, dict[str, Any]]]:
    """The :class:`LayerFit` of the layer with the best mean inner-CV UA over the views
    (ties: the lower layer), and every layer's ``{"mean", "views"}`` scores."""
    best: LayerFit | None = None
    scores: dict[Any, dict[str, Any]] = {}
    for layer, features in layer_features:
        fit = fit_views(features, y, groups, views, spec, settings.seed, settings.speaker_norm,
                        layer)
        scores[layer] = {"mean": fit.score, "views": fit.view_scores}
        if settings.resolved_layer() == "auto":
            _say(f"layer {layer}: mean inner-CV UA {100 * fit.score:.1f} %", progress)
        if best is None or (fit.score, -(layer or 0)) > (best.score, -(best.layer or 0)):
            best = fit
    if best is None:
        raise ConfigError("no encoder layer to train on")
    return best, scores


def oof_scores(X: np.ndarray, silent: np.ndarray | None, y: np.ndarray, groups: np.ndarray,
               labels: list[str], seed: int) -> np.ndarray:
    """Out-of-fold probabilities ``(N, K)`` over all speakers (speaker-grouped), columns in
    ``labels`` order; rows without signal get ``1/K`` and are left out of every fit."""
    from ..classifier import ViewClassifier

    rows = np.ones(len(y), bool) if silent is None else ~np.asarray(silent, bool)
    out = np.full((len(y), len(labels)), 1.0 / len(labels))
    proba = ViewClassifier(random_state=seed).oof_proba(X[rows], y[rows], groups[rows])
    block = np.zeros((int(rows.sum()), len(labels)))
    block[:, [labels.index(str(c)) for c in np.unique(y[rows])]] = proba
    out[rows] = block
    return out


def nested_fusion_weights(pooled: Mapping[str, np.ndarray], y: np.ndarray, groups: np.ndarray,
                          labels: list[str], fusion: str | None, seed: int,
                          silent: Mapping[str, np.ndarray] | None = None,
                          search: str = "staged") -> tuple[dict[str, float], float | None]:
    """Fusion weights by grid search (``search``: staged or joint) on out-of-fold
    probabilities over all speakers, and the out-of-fold UA they reach ({} and None
    without fusion). ``silent``: per view the rows without signal (scored 1/K)."""
    from ..fusion import FUSIONS, select_weights

    if fusion is None:
        return {}, None
    silent = silent or {}
    oof = {v: oof_scores(pooled[v], silent.get(v), y, groups, labels, seed)
           for v in FUSIONS[fusion]}
    return select_weights(oof, y, fusion, labels, search=search)


def train_model(settings, out_dir: str | Path | None = None, fusion: str | None = DEFAULT_FUSION,
                pooling: str | None = None, progress: bool = True,
                finetuned_backbones: Mapping[str, Any] | None = None,
                cv_results: Mapping[str, Any] | None = None, cross_validate: bool = False,
                overwrite: bool = False, corpus_loader: Callable[..., Any] | None = None
                ) -> Model:
    """Train the final system on ALL utterances of ``settings``' corpus; save it to
    ``out_dir`` if given.

    ``fusion``: a name from :data:`binser.fusion.FUSIONS` (its views are trained), or None to
    train the single view in ``settings.views``. ``pooling``: default
    ``settings.resolved_fusion_pooling()``. ``finetuned_backbones``: {view: Backbone}
    fine-tuned per view (from :mod:`binser.finetune`); None: in mode ``finetune`` one network
    per view is fine-tuned here on all utterances (:func:`final_finetuned_backbones`), in
    mode ``frozen`` the frozen backbone of ``settings`` is used (an ImageNet CNN, or a
    Whisper encoder at ``settings.layer``). ``settings.speaker_norm``: speaker-normalised
    features (see the module docstring); ``settings.fusion_search``: the weight search.
    ``cv_results``: a ``results.json`` dictionary of the same configuration for the model
    card; with ``cross_validate=True`` and none given, :func:`run_experiment` computes it.
    """
    from ..backbones import family_of
    from ..corpora import corpus as load_corpus
    from ..startup import start_corpus

    settings.validate()
    if settings.layer == "auto-set" or settings.prosody is not None:
        raise ConfigError("a saved model uses one encoder layer and the binaural views: "
                          "--layer auto-set and --prosody are experiment options (use --layer "
                          "auto or a layer index)")
    views = model_views(fusion, settings.views)
    spec = PoolingSpec(pooling or settings.resolved_fusion_pooling(), settings.blocks,
                       settings.levels, settings.pool_abs)
    target = None
    if out_dir is not None:   # checked (and locked) before any work; Model.save swaps it in
        from ..outputs import OutputFolder

        _check_target(Path(out_dir), overwrite)
        target = OutputFolder(out_dir, option="--out", overwrite=True)
    if finetuned_backbones is not None and not family_of(settings.backbone).finetune:
        raise ConfigError(f"{settings.backbone}: speech encoders are used frozen; fine-tuned "
                          "backbones apply to image CNNs only")
    # Load, two classes or more, bad files stopped before any expensive work or left out
    # (settings.on_error): the start-up binser experiment shares.
    started = start_corpus(settings, corpus_loader, progress, purpose="a model")
    corpus, _skipped = started.corpus, started.skipped
    labels = list(corpus.labels)
    y = np.array([u.label for u in corpus])
    groups = np.array([u.speaker for u in corpus])
    _say(f"training on all of {settings.dataset}: {len(corpus)} utterances, {len(labels)} "
         f"classes, {len(corpus.speakers)} speakers, views {', '.join(views)}", progress)
    if settings.speaker_norm:
        _warn_label_coverage(y, groups)
    if settings.mode == "finetune" and finetuned_backbones is None:
        finetuned_backbones = final_finetuned_backbones(corpus, settings, views, labels,
                                                        progress)
    backbones, layer_features = training_layers(corpus, settings, views, finetuned_backbones,
                                                progress)
    fit, layer_scores = fit_best_layer(layer_features, y, groups, views, spec, settings,
                                       progress)
    weights, oof_ua = nested_fusion_weights(fit.inputs, y, groups, labels, fusion,
                                            settings.seed, fit.silent, settings.fusion_search)
    if cross_validate and cv_results is None:
        from ..experiment import run_experiment

        _say(f"cross-validating the configuration ({settings.protocol}) for the model card",
             progress)
        cv_results = run_experiment(settings, out=None, progress=progress, report=False,
                                    corpus_loader=corpus_loader or load_corpus)
    info = training_info(corpus, settings, fit, oof_ua, cv_results, fusion, spec, layer_scores)
    info["n_skipped"] = len(_skipped)   # every file left out, naming problems and bad audio
    model = Model(labels, views, backbones, fit.classifiers, spec, fusion, weights,
                  settings.frontend, "frozen" if finetuned_backbones is None else "finetuned",
                  info, layer=fit.layer, normalisers=fit.normalisers)
    if target is not None:
        try:
            model.save(out_dir, overwrite=overwrite)
        finally:
            target.release()
        _say(f"model saved to {out_dir}", progress)
    return model


def _warn_label_coverage(y: np.ndarray, groups: np.ndarray) -> None:
    from ..normalisation import coverage_warning

    warning = coverage_warning(y, groups)
    if warning:
        _say(f"warning: {warning}", True)


def final_finetuned_backbones(corpus, settings, views: Sequence[str], labels: list[str],
                              progress: bool = True) -> dict[str, Any]:
    """One network per view fine-tuned on every utterance of ``corpus`` with the settings of
    an experiment in mode ``finetune`` (preset, epochs, input size, seed)."""
    from ..experiment import finetune_settings
    from ..finetune import finetune_views

    _say(f"fine-tuning one network per view on all {len(corpus)} utterances", progress)
    backbones, _ = finetune_views(
        [u.path for u in corpus], np.array([labels.index(u.label) for u in corpus]),
        [u.speaker for u in corpus], settings.backbone, settings.weights, views,
        settings.frontend, finetune_settings(settings), cache_dir=settings.cache_dir,
        progress=progress, allow_random=settings.allow_random, n_classes=len(labels))
    return backbones


def training_info(corpus, settings, fit: LayerFit, oof_ua, cv_results, fusion, spec,
                  layer_scores: Mapping[Any, Mapping[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """Facts about the training data and protocol (model.json ``training``, model card)."""
    labels = list(corpus.labels)
    counts = {lab: sum(1 for u in corpus if u.label == lab) for lab in labels}
    view = next(iter(fit.n_rows))
    info: dict[str, Any] = {
        "dataset": settings.dataset,
        "corpus_folder": Path(settings.root).name,
        "synthetic": bool(settings.synthetic),
        "n_utterances": len(corpus),
        "n_speakers": len(corpus.speakers),
        "speakers": list(corpus.speakers),
        "label_counts": counts,
        "n_segments_per_view": fit.n_rows[view],
        "silent_utterances": {v: int(s.sum()) for v, s in fit.silent.items()},
        "n_skipped": len(corpus.problems),
        "seed": settings.seed,
        "classifier_selection": "C by speaker-grouped inner CV on all utterances",
        "fusion_selection": (None if fusion is None else
                             f"{settings.fusion_search} grid search on out-of-fold "
                             "probabilities over all speakers (speaker-grouped, nested)"),
        "fusion_oof_ua": oof_ua,
        "inner_cv_ua": fit.view_scores,
        "pooling": spec.name,
        "speaker_norm": bool(settings.speaker_norm),
        "settings": _json_safe(settings.to_dict()),
        "cross_validation": _cv_summary(cv_results, spec.name, fusion,
                                        bool(settings.speaker_norm)),
    }
    if fit.layer is not None:   # encoders: the layer and how it was chosen
        info["layer"] = fit.layer
        info["layer_selection"] = _layer_selection(settings, fit, layer_scores or {})
    return info


def _layer_selection(settings, fit: LayerFit, scores: Mapping[Any, Mapping[str, Any]]
                     ) -> dict[str, Any]:
    """How the encoder layer was chosen, with every candidate layer's scores."""
    how = ("auto: the layer with the best mean inner-CV UA (speaker-grouped, training data) "
           "over the model's views; ties to the lower layer"
           if settings.resolved_layer() == "auto" else "given" if settings.layer is not None
           else f"the backbone's default (binser.defaults.DEFAULT_ENCODER_LAYER)")
    return {"method": how, "chosen": fit.layer,
            "scores": {str(k): float(v["mean"]) for k, v in scores.items()},
            "view_scores": {str(k): dict(v["views"]) for k, v in scores.items()}}


def _cv_summary(results: Mapping[str, Any] | None, pooling: str, fusion: str | None,
                speaker_norm: bool = False) -> dict[str, Any] | None:
    """The runs of a results.json that describe this model's configuration (for a
    speaker-normalised model, its ``speaker-norm:`` runs)."""
    if not results:
        return None
    from ..runnames import RunName

    def wanted(name: str) -> bool:
        if not RunName.is_valid(name):
            return False
        run = RunName.parse(name)
        return run.speaker_norm == speaker_norm and (
            (run.kind == "view" and run.pooling == pooling) or run.kind == "score-fusion"
            or (run.kind == "feature-fusion" and run.fusion == fusion))

    runs = [{k: r[k] for k in ("name", "ua", "wa", "macro_f1", "ua_ci95") if k in r}
            for r in results.get("runs", []) if wanted(r["name"])]
    return {"protocol": results.get("protocol"), "n_folds": results.get("n_folds"),
            "n_utterances": results.get("n_utterances"), "runs": runs}


def _json_safe(value: Any) -> Any:
    """Round-trip through JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))


