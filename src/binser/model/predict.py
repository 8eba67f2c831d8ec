"""A trained binser system: train on a whole corpus, save as a safe folder, load, predict.

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

The model folder (format ``binser-model``, version 1) holds only data, never code:

* ``model.json``: labels, views, pooling, fusion name and weights, front-end configuration,
  backbone identity, per-view file names, scalar classifier settings, training facts, a
  ``sha256`` map of every other file in the folder, and ``content_sha256``: the sha256 of the
  canonical JSON of the document without that field (``json.dumps(doc, sort_keys=True,
  separators=(",", ":"), ensure_ascii=True)``). model.json cannot hold a hash of itself;
  ``content_sha256`` is its checksum, and because it covers the ``sha256`` map it
  fingerprints the whole folder (:attr:`Model.fingerprint`). Checksums detect corruption and
  editing, not a deliberate forgery (anyone can recompute them): compare the fingerprint with
  the one published by whoever trained the model to check a model's origin.
  ``backbone`` holds ``family``; for ``imagenet`` the name, ``input_size``, ``feature_dim``,
  per-view ``weights_id``; for ``whisper`` the name, ``layer``, the encoder ``config``
  (:meth:`WhisperConfig.to_dict`, Hugging Face ``config.json`` keys), ``feature_dim``
  (= ``d_model``), per-view ``weights_id`` and ``weights_sha256``: the sha256 of the weights
  file the encoder was read from at training. ``speaker_norm`` (bool; absent = false), and
  with it ``speaker_norm_definition``, ``speaker_norm_min_utterances`` and
  ``normaliser_files``.
* ``backbone.safetensors`` (frozen mode, saved once) or ``backbone_<view>.safetensors``
  (fine-tuned mode, one network per view): the network weights. Frozen CNNs: the ImageNet
  classification layer is not needed and is stored as a zero 1-class placeholder; the loaded
  backbone keeps the ``weights_id`` recorded at training (its feature weights are the same),
  so a feature cache is shared between experiments, training and prediction. Whisper: the
  whole encoder state dict in float32 under Hugging Face's encoder names without prefix
  (``conv1.weight``, ``layers.0.fc1.weight``, ``layer_norm.weight``, ...), which
  :func:`~binser.backbones.whisper.load_whisper` also reads; layers above the chosen one are
  kept (never run).
* ``classifier_<view>.safetensors``: the standardiser, the SVM weights and the Platt
  parameters of each view as float64 arrays, and the class order as indices into ``labels``.
* ``normaliser_<view>.safetensors`` (speaker-normalised models): ``fallback_mean`` and
  ``fallback_std``, float64 ``(D,)``.
* ``MODEL_CARD.md``: data, protocol, cross-validated scores when known, intended use, limits.

Loading (:meth:`Model.load`) reads JSON and safetensors only (no pickle, no ``torch.load``),
checks the format name and version, the JSON checksum, every file's sha256, that every file
name is a plain name inside the folder (no absolute path, no ``..``, no separator, no symlink
leading out), the shapes of every array, and for Whisper models the name, the config (the
limits of :class:`~binser.backbones.whisper.WhisperConfig`), ``layer`` in 0..L,
``feature_dim == d_model``, the encoder tensors (names, shapes, float32) and their identity;
any failure is a :class:`ModelError` naming the file and the cause.

Prediction (:meth:`Model.predict`) extracts features of all files in one batched run, pools
them per utterance, scores each view with its classifier and fuses the scores. With
``timeline=True`` parts of each file are also scored alone, through the same pooling,
(normalisation,) classifiers and fusion:

* CNN: each segment alone; its single-segment array ``(1, d)`` is pooled (for block pooling
  with n = 1 every block is that segment and the delta part is zero). Segment ``k`` covers
  ``[k*hop, k*hop + frames)`` analysis frames, reported as ``start_s = k*hop*hop_ms/1000`` and
  ``end_s = start_s + frames*hop_ms/1000`` (clipped to the file's duration when known).
* Whisper: windows of 1.0 s with a hop of 0.5 s. The file's ``n`` encoder frames
  (:func:`~binser.backbones.whisper.n_output_frames` of its ``N`` samples) give the count
  ``K = 1 + max(0, ceil((n - 50) / 25))`` (:func:`encoder_windows`: windows of
  :data:`WINDOW_FRAMES` = 50 frames every :data:`WINDOW_HOP` = 25, every frame in one, only
  the last shorter); window ``k`` is the samples ``[8000k, min(8000k + 16000, N))`` at
  16 kHz (:func:`window_sample_spans`), ``start_s = 0.5 k``, ``end_s = min(start_s + 1.0,
  N / 16000)``. Each window is scored AS A FILE HOLDING EXACTLY THAT AUDIO
  (:meth:`Model.score_clips`): its own views and silent views, its own log-Mel and encoder
  run, pooling, classifiers, fusion (speaker-normalised models use the file's statistics).
  That is the one definition a stream can honour (it cannot see the rest of the file), so a
  file fed to :class:`binser.serve.stream.StreamEngine` in chunks of any size gives the same
  windows and numbers. An entry whose views are all silent there is ``"silent": true``
  with no label or scores. (Whole-file scores still come from the whole file's frames.)

Timeline entries: ``{"start_s", "end_s", "label", "scores", "silent", "silent_views"}``
(CNN entries: the file's silent views, never ``silent``).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .. import __version__
from ..config import FrontEndConfig
from ..errors import AudioError, BinserError, ConfigError, ModelError
from ..validation import check_choice
from ..features import file_sha256  # noqa: F401  (one streaming file hash for caches and models)
from ..preflight import check_on_error

FORMAT = "binser-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
MODEL_CARD = "MODEL_CARD.md"
MAX_JSON_BYTES = 16 << 20     # a model.json larger than this is refused unread
MAX_BLOCKS = 64               # pooling blocks / levels a model may ask for
MAX_INPUT_SIZE = 1024         # backbone input side, pixels
MAX_MIN_UTTERANCES = 1_000_000
DEFAULT_FUSION = "left+right+mid+side"
MODES = ("frozen", "finetuned")
FAMILIES = ("imagenet", "whisper")
FRAMES_PER_S = 50             # Whisper encoder rows per second (one per 20 ms)
WINDOW_FRAMES = 50            # Whisper timeline window: 1.0 s
WINDOW_HOP = 25               # Whisper timeline hop: 0.5 s
CLIP_BATCH = 32               # Whisper timeline windows scored per step (memory, progress)
MIN_UTTERANCES = 5            # files of a speaker needed for own normalisation statistics
CALL_SPEAKER = "(all files of the call)"
SPEAKER_NORM_DEFINITION = (
    "per view, pooled features standardised per speaker: (x - mean_s) / std_s over the "
    "speaker's rows with signal (population std; std < 1e-8 counts as 1; silent rows 0). "
    "Training: each training speaker's own statistics. Prediction (transductive, "
    "label-free): statistics of each speaker's files in the same predict call; a speaker "
    "with fewer than min_utterances such files uses the fallback, the average training "
    "speaker (mean over training speakers of their means and of their standard deviations)")
_CLASSIFIER_ARRAYS = ("class_index", "mean", "scale", "coef", "intercept", "calib_a", "calib_b")
_NORMALISER_ARRAYS = ("fallback_mean", "fallback_std")
_FILE_MAPS = ("backbone_files", "classifier_files", "normaliser_files")
_HEX64 = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------------------
# small value types
# --------------------------------------------------------------------------------------

@dataclass
class Prediction:
    """The result for one input file.

    ``scores``: fused score per label (calibrated probabilities combined by the fusion; they
    sum to 1). ``view_scores``: per view, that view's classifier probabilities per label.
    ``timeline``: with ``timeline=True``, one ``{"start_s", "end_s", "scores"}`` per segment
    (CNN) or window (Whisper) in time order (seconds). ``error``: why the file could not be
    scored (then ``label`` is None and the score dicts are empty). ``silent_views``: the
    model's views without signal in this file (they score ``1/K`` per label, so the other
    views decide). ``speaker_norm``: for speaker-normalised models, which statistics
    standardised this file (``"own statistics over N files"`` or ``"fallback: average
    training speaker (only N files)"``); None otherwise.
    """

    path: str
    label: str | None
    scores: dict[str, float] = field(default_factory=dict)
    view_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    timeline: list[dict[str, Any]] | None = None
    error: str | None = None
    silent_views: list[str] = field(default_factory=list)
    speaker_norm: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PoolingSpec:
    """Which pooling turns segment features ``(n, d)`` into one utterance vector ``(D,)``."""

    name: str = "block-max"
    blocks: int = 2
    levels: int | None = None
    absolute: bool = False          # block pooling of |X|, |dX| (paper eqs. 6-7)

    def make(self):
        """A fresh pooling transformer (stateless)."""
        from ..pooling import make_pooling

        return make_pooling(self.name, blocks=self.blocks, levels=self.levels,
                            absolute=bool(self.absolute))

    def output_dim(self, d: int) -> int:
        """Pooled size ``D`` for segment features of size ``d``."""
        return int(self.make().fit_transform([np.zeros((1, d), np.float32)]).shape[1])


def encoder_windows(n_frames: int) -> list[tuple[int, int]]:
    """Whisper timeline windows ``[start, stop)`` over ``n_frames`` encoder rows (see the
    module docstring): one window of everything up to :data:`WINDOW_FRAMES` rows, else
    ``1 + ceil((n - 50) / 25)`` windows starting every :data:`WINDOW_HOP` rows."""
    n = int(n_frames)
    if n <= WINDOW_FRAMES:
        return [(0, n)]
    count = 1 + -(-(n - WINDOW_FRAMES) // WINDOW_HOP)
    return [(k * WINDOW_HOP, min(k * WINDOW_HOP + WINDOW_FRAMES, n)) for k in range(count)]


def window_sample_spans(n_samples: int, sample_rate: int = 16000) -> list[tuple[int, int]]:
    """Sample spans ``[a, b)`` of the Whisper timeline windows of a signal of ``n_samples``
    at ``sample_rate`` (see the module docstring; one span per :func:`encoder_windows`)."""
    from ..backbones.whisper import n_output_frames

    hop, length = window_hop_length(sample_rate)
    count = len(encoder_windows(n_output_frames(n_samples))) if n_samples > 0 else 0
    return [(k * hop, min(k * hop + length, n_samples)) for k in range(count)]


def window_hop_length(sample_rate: int = 16000) -> tuple[int, int]:
    """``(hop, length)`` in samples of the Whisper timeline windows (0.5 s, 1.0 s)."""
    per_frame = sample_rate // FRAMES_PER_S
    return WINDOW_HOP * per_frame, WINDOW_FRAMES * per_frame


def backbone_family(backbone: Any) -> str:
    """``"whisper"`` for speech encoders (they have ``encode``), else ``"imagenet"``."""
    return "whisper" if hasattr(backbone, "encode") else "imagenet"


# --------------------------------------------------------------------------------------
# checksums and safe file names
# --------------------------------------------------------------------------------------

def content_sha256(document: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``document`` without its ``content_sha256`` field."""
    body = {k: v for k, v in document.items() if k != "content_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def safe_member(root: Path, name: object, what: str = "file") -> Path:
    """``root / name`` for a plain file name that stays inside ``root``; else ModelError.

    Refused: non-strings, empty names, absolute paths, any ``..``, path separators, NUL, and
    names whose real path (symlinks followed) lies outside ``root``.
    """
    bad = (not isinstance(name, str) or not name.strip() or ".." in name or "/" in name
           or "\\" in name or "\0" in name or os.path.isabs(name) or name != name.strip())
    if bad:
        raise ModelError(f"{root}: refusing {what} name {name!r} in {MODEL_JSON}: it must be a "
                         "plain file name inside the model folder (path escape)")
    path = root / name
    real, real_root = path.resolve(), root.resolve()
    if not real.is_relative_to(real_root):
        raise ModelError(f"{path}: refusing {what}: it leads outside the model folder "
                         f"(to {real}; path escape)")
    if not real.is_file():
        raise ModelError(f"{path}: {what} listed in {MODEL_JSON} is missing or not a file")
    return path


# --------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------

class Model:
    """A trained system: backbone(s), per-view classifiers, pooling and fusion.

    ``backbones``: view -> backbone (frozen mode: one object shared by every view; an
    ImageNet :class:`~binser.backbones.Backbone` or a
    :class:`~binser.backbones.whisper.WhisperBackbone`). ``classifiers``: view -> fitted
    :class:`ViewClassifier` (classes are label strings). ``fusion``: a name from
    :data:`binser.fusion.FUSIONS` whose views are ``views``, or None for a single view.
    ``info``: facts about training (goes into model.json and the model card). ``layer``: the
    encoder layer of a Whisper model (None for CNNs). ``normalisers``: view -> fitted
    :class:`~binser.normalisation.SpeakerNormaliser` for a speaker-normalised model, else
    empty.
    """

    def __init__(self, labels: Sequence[str], views: Sequence[str],
                 backbones: Mapping[str, Any], classifiers: Mapping[str, Any],
                 pooling: PoolingSpec, fusion: str | None, weights: Mapping[str, float],
                 frontend: FrontEndConfig = FrontEndConfig(), mode: str = "frozen",
                 info: Mapping[str, Any] | None = None, layer: int | None = None,
                 normalisers: Mapping[str, Any] | None = None):
        self.labels = list(labels)
        self.views = tuple(views)
        self.backbones = dict(backbones)
        self.classifiers = dict(classifiers)
        self.pooling = pooling
        self.fusion = fusion
        self.weights = dict(weights)
        self.frontend = frontend
        self.mode = mode
        self.info = dict(info or {})
        self.layer = None if layer is None else int(layer)
        self.normalisers = dict(normalisers or {})
        self.path: Path | None = None
        self.fingerprint: str | None = None   # content_sha256 once saved or loaded
        _check_fusion_views(fusion, self.views)
        if self.family == "whisper" and self.layer is None:
            raise ConfigError("a Whisper model needs the encoder layer its classifiers use")
        if self.normalisers and set(self.normalisers) != set(self.views):
            raise ConfigError(f"speaker normalisers for views {sorted(self.normalisers)}, "
                              f"expected one per view {list(self.views)}")

    def __repr__(self) -> str:
        return (f"Model(labels={self.labels}, views={list(self.views)}, mode={self.mode!r}, "
                f"backbone={self.backbones[self.views[0]].name!r}, layer={self.layer}, "
                f"fusion={self.fusion!r}, weights={self.weights}, "
                f"speaker_norm={self.speaker_norm}, path={self.path})")

    @property
    def family(self) -> str:
        """``"whisper"`` or ``"imagenet"`` (see the module docstring)."""
        return backbone_family(self.backbones[self.views[0]])

    @property
    def speaker_norm(self) -> bool:
        """True when features are speaker-normalised before the classifiers."""
        return bool(self.normalisers)

    @property
    def min_utterances(self) -> int | None:
        """Files a speaker needs in one predict call for its own statistics (None without
        speaker normalisation)."""
        if not self.normalisers:
            return None
        return int(self.normalisers[self.views[0]].min_utterances)

    # ------------------------------------------------------------------ scoring

    def pool(self, view: str, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``[(n_i, d), ...]`` of one view -> pooled ``(N, D)`` float32 and the silent
        mask ``(N,)`` (0-row arrays give zero rows, flagged True)."""
        silent = np.array([np.shape(a)[0] == 0 for a in arrays], dtype=bool)
        X = np.zeros((len(arrays), self.classifiers[view].n_features_in_), dtype=np.float32)
        if not silent.all():
            X[~silent] = self.pooling.make().fit_transform(
                [a for a, s in zip(arrays, silent) if not s])
        return X, silent

    def view_proba(self, view: str, X: np.ndarray, silent: np.ndarray | None = None
                   ) -> np.ndarray:
        """Probabilities ``(N, K)`` of one view's classifier, columns in ``labels`` order;
        rows flagged in ``silent`` get ``1/K``."""
        X = np.asarray(X)
        rows = np.ones(len(X), bool) if silent is None else ~np.asarray(silent, bool)
        out = np.full((len(X), len(self.labels)), 1.0 / len(self.labels))
        if rows.any():
            clf = self.classifiers[view]
            block = np.zeros((int(rows.sum()), len(self.labels)))
            block[:, [self.labels.index(str(c)) for c in clf.classes_]] = clf.predict_proba(X[rows])
            out[rows] = block
        return out

    def fuse_scores(self, view_proba: Mapping[str, np.ndarray]) -> np.ndarray:
        """Fused ``(N, K)`` scores from per-view ``(N, K)`` probabilities."""
        from ..fusion import fuse

        if self.fusion is None:
            return np.asarray(view_proba[self.views[0]], dtype=np.float64)
        return fuse(view_proba, self.fusion, self.weights)

    def speaker_statistics(self, pooled: Mapping[str, tuple[np.ndarray, np.ndarray]],
                           speakers: np.ndarray
                           ) -> tuple[dict[str, dict], dict[str, set[str]]]:
        """Per view ``{speaker: (mean, std, n)}`` from each speaker's pooled rows with signal,
        the fallback statistics where ``n < min_utterances``; and per view the speakers that
        use the fallback."""
        from ..normalisation import speaker_statistics

        stats, fallback = {}, {}
        for view, (X, silent) in pooled.items():
            norm = self.normalisers[view]
            stats[view] = speaker_statistics(X, speakers, ~silent)
            fallback[view] = {s for s, (_, _, n) in stats[view].items()
                              if n < norm.min_utterances}
            for s in fallback[view]:
                stats[view][s] = (norm.fallback_mean_, norm.fallback_std_, 0)
        return stats, fallback

    def _inputs(self, pooled: Mapping[str, tuple[np.ndarray, np.ndarray]],
                speakers: np.ndarray | None, stats: Mapping[str, dict] | None
                ) -> dict[str, np.ndarray]:
        """Classifier inputs per view: pooled rows, speaker-normalised if the model is."""
        if not self.speaker_norm:
            return {v: X for v, (X, _) in pooled.items()}
        from ..normalisation import apply_statistics

        return {v: apply_statistics(X, speakers, stats[v], ~silent)
                for v, (X, silent) in pooled.items()}

    def _score_pooled(self, pooled: Mapping[str, tuple[np.ndarray, np.ndarray]],
                      speakers: np.ndarray | None = None,
                      stats: Mapping[str, dict] | None = None
                      ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        inputs = self._inputs(pooled, speakers, stats)
        per_view = {v: self.view_proba(v, inputs[v], pooled[v][1]) for v in self.views}
        return self.fuse_scores(per_view), per_view

    def score_segments(self, features: Mapping[str, Sequence[np.ndarray]],
                       speakers: Sequence[str] | None = None
                       ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Segment or frame features ``{view: [(n_i, d), ...]}`` -> fused ``(N, K)`` and
        per-view ``{view: (N, K)}`` scores. Speaker-normalised models take each speaker's
        statistics from these rows (``speakers``: one id per utterance; None: one speaker)."""
        pooled = {v: self.pool(v, list(features[v])) for v in self.views}
        who = self._speaker_ids(speakers, len(pooled[self.views[0]][0]))
        stats = self.speaker_statistics(pooled, who)[0] if self.speaker_norm else None
        return self._score_pooled(pooled, who, stats)

    def score_clips(self, clips: Sequence[np.ndarray], speakers: Sequence[str] | None = None,
                    stats: Mapping[str, dict] | None = None, progress: bool = False
                    ) -> list[dict[str, Any]]:
        """Whisper models: score each clip ``(C, N_i)`` (float32 at the model's rate, C = 1
        or 2) as a file holding exactly that audio (:func:`binser.features.clip_frames`,
        then pooling, classifiers and fusion).

        Speaker-normalised models: ``stats`` (from :meth:`speaker_statistics`) with one
        ``speakers`` id per clip; without them each clip is its own speaker (so one clip
        uses the average-training-speaker fallback). Returns per clip ``{"silent",
        "silent_views", "label", "scores", "views"}``; a clip whose views are all silent
        has ``silent`` True, label None and empty scores. ``progress``: a bar over clips."""
        from ..features import clip_frames, progress_bar

        if self.family != "whisper":
            raise ConfigError("score_clips is for Whisper models; image-CNN models score "
                              "segments of the whole file (predict(timeline=True))")
        clips = list(clips)
        if speakers is None or stats is None:
            speakers, stats = [str(i) for i in range(len(clips))], None
        backbone = self.backbones[self.views[0]]
        out: list[dict[str, Any]] = []
        bar = progress_bar(len(clips), progress, unit="window", desc="timeline")
        try:
            for s in range(0, len(clips), CLIP_BATCH):
                part = clips[s:s + CLIP_BATCH]
                rows = clip_frames(backbone, part, self.views, self.layer, self.frontend)
                pooled = {v: self.pool(v, [r[v] for r in rows]) for v in self.views}
                who = np.array([str(x) for x in speakers[s:s + len(part)]], dtype=str)
                if self.speaker_norm and stats is None:
                    stats_part = self.speaker_statistics(pooled, who)[0]
                else:
                    stats_part = stats
                fused, per_view = self._score_pooled(pooled, who, stats_part)
                for j in range(len(part)):
                    quiet = [v for v in self.views if pooled[v][1][j]]
                    if len(quiet) == len(self.views):
                        out.append({"silent": True, "silent_views": quiet, "label": None,
                                    "scores": {}, "views": {}})
                        continue
                    out.append({"silent": False, "silent_views": quiet,
                                "label": self.labels[int(np.argmax(fused[j]))],
                                "scores": self._label_dict(fused[j]),
                                "views": {v: self._label_dict(per_view[v][j])
                                          for v in self.views}})
                bar.update(len(part))
        finally:
            bar.close()
        return out

    def _label_dict(self, row: np.ndarray) -> dict[str, float]:
        return {label: float(p) for label, p in zip(self.labels, row)}

    def _speaker_ids(self, speakers: Sequence[str] | None, n: int) -> np.ndarray:
        """One speaker id per file (``str``); None: every file is one speaker."""
        if speakers is None:
            return np.array([CALL_SPEAKER] * n, dtype=str).reshape(n)
        if not self.speaker_norm:
            raise ConfigError("speakers are used only by a model trained with speaker "
                              "normalisation (train --speaker-norm); this model was not")
        if isinstance(speakers, (str, bytes)) or len(speakers) != n:
            raise ConfigError(f"speakers must list one speaker id per file ({n}), got "
                              f"{1 if isinstance(speakers, (str, bytes)) else len(speakers)}")
        return np.array([str(s) for s in speakers], dtype=str).reshape(n)

    # ------------------------------------------------------------------ prediction

    def predict(self, paths: Sequence[str | Path], timeline: bool = False, batch_size: int = 64,
                progress: bool = True, on_error: str = "skip",
                cache_dir: str | Path | None = None,
                speakers: Sequence[str] | None = None, executor=None) -> list[Prediction]:
        """Predict the emotion of each audio or video file (one batched feature run).

        ``on_error``: ``"skip"`` reports a file that cannot be read (or in which every view
        of the model is silent) in its Prediction's ``error`` and goes on; ``"fail"`` raises
        the :class:`AudioError`. ``cache_dir``: an optional feature cache. ``batch_size``:
        segments per network call (CNN) or files decoded and encoded together (Whisper).
        ``speakers`` (speaker-normalised models only): one speaker id per path, or None: all
        files of this call are one speaker (see the module docstring; with several files a
        :class:`~binser.normalisation.SpeakerAssumptionWarning` says so). ``executor``: where
        the features are computed (:mod:`binser.executors`; default: here). Returns one
        :class:`Prediction` per path, in order.
        """
        check_on_error(on_error)
        paths = [Path(p) for p in paths]
        ids = self._speaker_ids(speakers, len(paths))
        features, failures = self._checked_extract(paths, batch_size, progress, on_error,
                                                   cache_dir, executor)
        self._refuse_all_silent(paths, features, failures, on_error)
        good = [i for i in range(len(paths)) if i not in failures]
        out = [Prediction(str(p), None, error=failures[i]) if i in failures else None
               for i, p in enumerate(paths)]
        if good:
            chosen = {v: [features[v][i] for i in good] for v in self.views}
            pooled = {v: self.pool(v, chosen[v]) for v in self.views}
            who = ids[good]
            if self.speaker_norm and speakers is None and len(good) > 1:
                import warnings

                from ..normalisation import SpeakerAssumptionWarning, one_speaker_assumption

                warnings.warn(one_speaker_assumption(len(good), self.min_utterances),
                              SpeakerAssumptionWarning, stacklevel=2)
            stats, notes = self._call_statistics(pooled, who)
            fused, per_view = self._score_pooled(pooled, who, stats)
            for row, i in enumerate(good):
                out[i] = Prediction(
                    str(paths[i]), self.labels[int(np.argmax(fused[row]))],
                    self._label_dict(fused[row]),
                    {v: self._label_dict(per_view[v][row]) for v in self.views},
                    self._timeline(paths[i], {v: chosen[v][row] for v in self.views},
                                   who[row], stats, progress) if timeline else None,
                    silent_views=[v for v in self.views if pooled[v][1][row]],
                    speaker_norm=notes[row])
        return out  # type: ignore[return-value]

    def _refuse_all_silent(self, paths: list[Path], features: Mapping[str, list],
                           failures: dict[int, str], on_error: str) -> None:
        """A file without signal in every view of the model: an error (nothing to score)."""
        for i, path in enumerate(paths):
            if i in failures or any(np.shape(features[v][i])[0] for v in self.views):
                continue
            error = AudioError(path, f"no signal in any of the model's views "
                                     f"({', '.join(self.views)}): nothing to score")
            if on_error == "fail":
                raise error
            failures[i] = str(error)

    def _call_statistics(self, pooled: Mapping[str, tuple[np.ndarray, np.ndarray]],
                         who: np.ndarray) -> tuple[dict[str, dict] | None, list[str | None]]:
        """Speaker statistics of one predict call and each file's ``speaker_norm`` note."""
        if not self.speaker_norm:
            return None, [None] * len(who)
        stats, fallback = self.speaker_statistics(pooled, who)
        files = Counter(who.tolist())
        notes = []
        for row, speaker in enumerate(who.tolist()):
            fell_back = [v for v in self.views
                         if not pooled[v][1][row] and speaker in fallback[v]]
            notes.append(self._norm_note(files[speaker], fell_back))
        return stats, notes

    def _norm_note(self, n_files: int, fell_back: list[str]) -> str:
        files = f"{n_files} file{'' if n_files == 1 else 's'}"
        if not fell_back:
            return f"own statistics over {files}"
        if n_files < self.min_utterances:
            return f"fallback: average training speaker (only {files})"
        return (f"fallback: average training speaker for view(s) {', '.join(fell_back)} "
                f"(fewer than {self.min_utterances} files with signal there); own statistics "
                f"over {files} for the others")

    def _checked_extract(self, paths: list[Path], batch_size: int, progress: bool,
                         on_error: str, cache_dir: str | Path | None, executor=None
                         ) -> tuple[dict[str, list[np.ndarray | None]], dict[int, str]]:
        """:meth:`_extract` of the files that pass the same input checks as ``inspect``,
        ``scan`` and ``experiment`` (:func:`binser.preflight.check_file`: unreadable,
        truncated, silent, too short or too long); the others are failures."""
        from ..preflight import check_file

        failures: dict[int, str] = {}
        for i, path in enumerate(paths):
            try:
                check_file(path, self.frontend)
            except AudioError as error:
                if on_error == "fail":
                    raise
                failures[i] = str(error)
        keep = [i for i in range(len(paths)) if i not in failures]
        found, failed = (self._extract([paths[i] for i in keep], batch_size, progress,
                                       on_error, cache_dir, executor) if keep else ({}, {}))
        features: dict[str, list] = {v: [None] * len(paths) for v in self.views}
        for view, rows in found.items():
            for j, row in enumerate(rows):
                features[view][keep[j]] = row
        failures.update({keep[j]: message for j, message in failed.items()})
        return features, failures

    def _extract(self, paths: list[Path], batch_size: int, progress: bool, on_error: str,
                 cache_dir: str | Path | None, executor=None
                 ) -> tuple[dict[str, list[np.ndarray | None]], dict[int, str]]:
        """Features per view for every path, and {path index: error message}.

        Views that share a backbone (frozen mode) are extracted together, decoding each
        file once; fine-tuned views each run their own network.
        """
        features: dict[str, list] = {}
        failures: dict[int, str] = {}
        skip = on_error == "skip"
        for backbone, views in self._backbone_groups():
            if self.family == "whisper":
                extractor = _TolerantFrameExtractor(
                    backbone, config=self.frontend, views=views, layers=(self.layer,),
                    cache_dir=cache_dir, batch_files=batch_size, progress=progress, skip=skip)
                if executor is not None:   # where the missing features are computed
                    executor.prepare_features(extractor, paths, progress)
                features.update(extractor.extract(paths)[self.layer])
            else:
                extractor = _TolerantExtractor(backbone, config=self.frontend, views=views,
                                               cache_dir=cache_dir, batch_size=batch_size,
                                               progress=progress, skip=skip)
                if executor is not None:
                    executor.prepare_features(extractor, paths, progress)
                features.update(extractor.extract(paths))
            for index, message in extractor.failures.items():
                failures.setdefault(index, message)
        return features, failures

    def _backbone_groups(self) -> list[tuple[Any, tuple[str, ...]]]:
        """(backbone, views it serves) in view order, one entry per distinct network."""
        groups: dict[int, tuple[Any, list[str]]] = {}
        for view in self.views:
            backbone = self.backbones[view]
            groups.setdefault(id(backbone), (backbone, []))[1].append(view)
        return [(b, tuple(vs)) for b, vs in groups.values()]

    def _timeline(self, path: Path, rows: Mapping[str, np.ndarray], speaker: str,
                  stats: Mapping[str, dict] | None, progress: bool = False
                  ) -> list[dict[str, Any]]:
        """The timeline entries of one file: each segment (CNN) or window (Whisper) scored
        (see the module docstring for the spans, times and what a window sees)."""
        if self.family == "whisper":
            return self._window_timeline(path, speaker, stats, progress)
        n = max(np.shape(rows[v])[0] for v in self.views)
        times = self._segment_times(path, n)
        pooled = {v: self.pool(v, [rows[v][k:k + 1] for k in range(n)]) for v in self.views}
        fused, _ = self._score_pooled(pooled, np.array([speaker] * n, dtype=str), stats)
        quiet = [v for v in self.views if not np.shape(rows[v])[0]]
        return [{"start_s": round(start, 6), "end_s": round(end, 6),
                 "label": self.labels[int(np.argmax(fused[k]))],
                 "scores": self._label_dict(fused[k]), "silent": False,
                 "silent_views": quiet}
                for k, (start, end) in enumerate(times)]

    def _window_timeline(self, path: Path, speaker: str, stats: Mapping[str, dict] | None,
                         progress: bool) -> list[dict[str, Any]]:
        """Whisper timeline: each window of the file scored alone (:meth:`score_clips`)."""
        from ..audio import load_audio

        sr = self.frontend.sample_rate
        audio = load_audio(path, sr=sr, channels=self.frontend.channels,
                           max_duration_s=self.frontend.max_duration_s)
        spans = window_sample_spans(audio.shape[1], sr)
        scored = self.score_clips([audio[:, a:b] for a, b in spans],
                                  [speaker] * len(spans) if stats is not None else None,
                                  stats, progress=progress and len(spans) > CLIP_BATCH)
        return [{"start_s": round(a / sr, 6), "end_s": round(b / sr, 6),
                 **{k: item[k] for k in ("label", "scores", "silent", "silent_views")}}
                for (a, b), item in zip(spans, scored)]

    def _segment_times(self, path: Path, n: int) -> list[tuple[float, float]]:
        """``(start_s, end_s)`` of a CNN timeline's ``n`` segments (module docstring)."""
        duration = _duration_or_none(path)
        hop_s = self.frontend.hop_ms / 1000.0
        times = []
        for k in range(n):
            start = k * self.frontend.segment_hop * hop_s
            end = start + self.frontend.segment_frames * hop_s
            if duration is not None:
                end = max(start, min(end, duration))
            times.append((start, end))
        return times

    # ------------------------------------------------------------------ saving

    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write the model folder ``out_dir`` (see the module docstring); returns its path.

        The folder is written under a temporary name and renamed into place, so an
        interrupted save leaves no half-written model. An existing non-empty ``out_dir`` is
        replaced only with ``overwrite=True`` and only if it holds a ``model.json``.
        """
        out = Path(out_dir)
        _check_target(out, overwrite)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            document = self._write_files(tmp)
            _write_json(tmp / MODEL_JSON, document)
            if out.exists():
                shutil.rmtree(out)   # empty, or a model folder and overwrite=True
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path, self.fingerprint = out, document["content_sha256"]
        return out

    def _write_files(self, folder: Path) -> dict[str, Any]:
        """Write weights, classifiers, normalisers and card into ``folder``; return
        model.json's content."""
        backbone_files = self._write_backbones(folder)
        classifier_files, normaliser_files = {}, {}
        for view in self.views:
            name = f"classifier_{view}.safetensors"
            _save_classifier(self.classifiers[view], self.labels, view, folder / name)
            classifier_files[view] = name
            if self.speaker_norm:
                name = f"normaliser_{view}.safetensors"
                _save_normaliser(self.normalisers[view], view, folder / name)
                normaliser_files[view] = name
        (folder / MODEL_CARD).write_text(model_card(self), encoding="utf-8")
        files = sorted(set(backbone_files.values()) | set(classifier_files.values())
                       | set(normaliser_files.values()) | {MODEL_CARD})
        mode = 0o666 & ~_umask()   # safetensors writes 0600: share like any other file
        for name in files:
            os.chmod(folder / name, mode)
        document = self._document(backbone_files, classifier_files, normaliser_files)
        document["sha256"] = {name: file_sha256(folder / name) for name in files}
        document["content_sha256"] = content_sha256(document)
        return document

    def _write_backbones(self, folder: Path) -> dict[str, str]:
        """One weights file per distinct network -> {view: file name}."""
        names: dict[str, str] = {}
        groups = self._backbone_groups()
        for backbone, views in groups:
            name = ("backbone.safetensors" if len(groups) == 1 and self.mode == "frozen"
                    else f"backbone_{views[0]}.safetensors")
            if self.family == "whisper":
                _save_encoder(backbone, folder / name)
            else:
                _save_backbone(backbone, folder / name, keep_head=self.mode != "frozen")
            names.update({v: name for v in views})
        return names

    def _document(self, backbone_files: dict[str, str], classifier_files: dict[str, str],
                  normaliser_files: dict[str, str]) -> dict[str, Any]:
        """model.json without the checksums."""
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "binser_version": __version__,
            "labels": self.labels,
            "views": list(self.views),
            "mode": self.mode,
            "pooling": dataclasses.asdict(self.pooling),
            "fusion": {"name": self.fusion, "weights": self.weights},
            "frontend": self.frontend.to_dict(),
            "backbone": self._backbone_document(),
            "backbone_files": backbone_files,
            "classifier_files": classifier_files,
            "classifiers": {v: _classifier_scalars(self.classifiers[v]) for v in self.views},
            "speaker_norm": self.speaker_norm,
            "training": self.info,
        }
        if self.speaker_norm:
            document.update(speaker_norm_definition=SPEAKER_NORM_DEFINITION,
                            speaker_norm_min_utterances=self.min_utterances,
                            normaliser_files=normaliser_files)
        return document

    def _backbone_document(self) -> dict[str, Any]:
        """model.json's ``backbone``: family, identity and (Whisper) layer and config."""
        first = self.backbones[self.views[0]]
        common = {"name": first.name, "feature_dim": int(first.feature_dim),
                  "weights_id": {v: self.backbones[v].weights_id for v in self.views},
                  "pretrained": bool(first.pretrained), "source": str(first.source)}
        if self.family == "whisper":
            return {"family": "whisper", **common, "layer": self.layer,
                    "config": first.config.to_dict(),
                    "weights_sha256": str(first.weights_sha256), "dtype": "float32",
                    "head_stored": False}
        return {"family": "imagenet", **common, "input_size": int(first.input_size),
                "head_stored": self.mode != "frozen"}

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path) -> "Model":
        """Load and verify a model folder (or its ``model.json``); ModelError on any problem."""
        root = Path(path)
        if root.name == MODEL_JSON and root.is_file():
            root = root.parent
        if root.is_file():
            raise ModelError(f"{root}: a file, not a model folder (the first argument is the "
                             "folder written by 'binser train'; the audio files follow it)")
        if not root.is_dir():
            raise ModelError(f"{root}: not a model folder (no such directory)")
        document = read_document(root)
        verify_files(root, document)
        try:
            model = _build(root, document)
        except BinserError as exc:
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"{root / MODEL_JSON}: invalid model ({exc})") from exc
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ModelError(f"{root / MODEL_JSON}: malformed model description "
                             f"({type(exc).__name__}: {exc})") from exc
        model.path, model.fingerprint = root, document["content_sha256"]
        return model


# --------------------------------------------------------------------------------------
# writing helpers
# --------------------------------------------------------------------------------------

def _check_fusion_views(fusion: str | None, views: tuple[str, ...]) -> None:
    from ..fusion import FUSIONS

    if fusion is None:
        if len(views) != 1:
            raise ConfigError(f"a model without fusion has exactly one view, got {list(views)}")
        return
    check_choice(fusion, FUSIONS, "fusion")
    if tuple(FUSIONS[fusion]) != views:
        raise ConfigError(f"fusion {fusion} uses views {list(FUSIONS[fusion])}, got {list(views)}")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out}: folder exists and is not empty (pass --overwrite "
                              "to replace a saved model)")
        if not (out / MODEL_JSON).is_file():
            raise ConfigError(f"{out}: not replacing a non-empty folder that holds no "
                              f"{MODEL_JSON}")


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=True, ensure_ascii=True)
        handle.write("\n")


def _save_backbone(backbone, path: Path, keep_head: bool) -> None:
    """Network weights as safetensors; without ``keep_head`` the classification layer is a
    zero 1-class placeholder (frozen features never use it)."""
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").clone().contiguous()
             for k, v in backbone.model.state_dict().items()}
    if not keep_head:
        head = backbone.head_name
        state[head + ".weight"] = torch.zeros((1, backbone.feature_dim), dtype=torch.float32)
        state[head + ".bias"] = torch.zeros((1,), dtype=torch.float32)
    save_file(state, str(path), metadata={"format": "pt", "binser": "backbone",
                                          "name": backbone.name,
                                          "head": "trained" if keep_head else "placeholder"})


def _save_encoder(backbone, path: Path) -> None:
    """A Whisper encoder's state dict as float32 safetensors under Hugging Face's encoder
    names without prefix (readable by :func:`~binser.backbones.whisper.load_whisper`)."""
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().to(device="cpu", dtype=torch.float32).clone().contiguous()
             for k, v in backbone.model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "binser": "whisper-encoder",
                                          "name": backbone.name})


def _save_classifier(clf, labels: list[str], view: str, path: Path) -> None:
    """A fitted ViewClassifier's arrays as safetensors (classes as indices into labels)."""
    from safetensors.numpy import save_file

    state = clf.get_state()
    arrays = {k: np.ascontiguousarray(state[k], dtype=np.float64) for k in _CLASSIFIER_ARRAYS
              if k != "class_index"}
    arrays["class_index"] = np.array([labels.index(str(c)) for c in state["classes"]],
                                     dtype=np.int64)
    save_file(arrays, str(path), metadata={"binser": "view-classifier", "view": view})


def _save_normaliser(normaliser, view: str, path: Path) -> None:
    """A fitted SpeakerNormaliser's fallback statistics as float64 safetensors."""
    from safetensors.numpy import save_file

    state = normaliser.get_state()
    arrays = {k: np.ascontiguousarray(state[k], dtype=np.float64) for k in _NORMALISER_ARRAYS}
    save_file(arrays, str(path), metadata={"binser": "speaker-normaliser", "view": view})


def _classifier_scalars(clf) -> dict[str, Any]:
    state = clf.get_state()
    return {"C": float(state["C"]), "best_score": float(state["best_score"]),
            "Cs": [float(c) for c in state["Cs"]], "n_features": int(state["mean"].shape[0]),
            "calibration": str(state["calibration"])}


# --------------------------------------------------------------------------------------
# reading helpers
# --------------------------------------------------------------------------------------

def read_document(root: Path) -> dict[str, Any]:
    """Read model.json: format name, version and content checksum checked."""
    path = root / MODEL_JSON
    if path.is_symlink() or not path.is_file():
        raise ModelError(f"{path}: missing (or a symlink); not a binser model folder")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ModelError(f"{path}: {path.stat().st_size} bytes, larger than any model.json")
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ModelError(f"{path}: not a binser model (format {found!r}, expected {FORMAT!r})")
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(f"{path}: model format version {version!r}, but this binser "
                         f"{__version__} reads version {FORMAT_VERSION}")
    if document.get("content_sha256") != content_sha256(document):
        raise ModelError(f"{path}: checksum mismatch (content_sha256): the file was edited or "
                         "corrupted after saving")
    return document


def verify_files(root: Path, document: Mapping[str, Any]) -> None:
    """Every file of the ``sha256`` map is a safe member of ``root`` with that digest, and
    every file model.json refers to is in the map."""
    digests = document.get("sha256")
    if not isinstance(digests, dict) or not digests:
        raise ModelError(f"{root / MODEL_JSON}: no sha256 map of the model's files")
    for name, expected in digests.items():
        path = safe_member(root, name)
        if not isinstance(expected, str) or file_sha256(path) != expected.lower():
            raise ModelError(f"{path}: sha256 mismatch: the file was modified, truncated or "
                             "replaced after the model was saved")
    for key in _FILE_MAPS:
        if key == "normaliser_files" and key not in document:
            continue   # models without speaker normalisation
        names = document.get(key)
        if not isinstance(names, dict):
            raise ModelError(f"{root / MODEL_JSON}: {key} must map views to file names")
        for view, name in names.items():
            safe_member(root, name, f"{key} entry for {view}")
            if name not in digests:
                raise ModelError(f"{root / name}: not covered by the sha256 map of {MODEL_JSON}")
            if not name.endswith(".safetensors"):
                raise ModelError(f"{root / name}: model weights must be .safetensors files")


def _build(root: Path, document: Mapping[str, Any]) -> Model:
    """Model from a verified model.json (KeyError/TypeError/ValueError on malformed data)."""
    labels = [str(x) for x in document["labels"]]
    views = tuple(str(v) for v in document["views"])
    if len(labels) < 2 or len(set(labels)) != len(labels) or not views:
        raise ValueError("labels must be >= 2 distinct names and views non-empty")
    mode = document["mode"]
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    spec = document["backbone"]
    family = spec.get("family", "imagenet")   # models saved before families: ImageNet CNNs
    if family not in FAMILIES:
        raise ModelError(f"{root / MODEL_JSON}: unknown backbone family {family!r} "
                         f"(known: {', '.join(FAMILIES)})")
    pooling = PoolingSpec(**document["pooling"])
    _check_pooling(pooling)
    layer = config = None
    if family == "imagenet":
        _check_input_size(int(spec["input_size"]))
    else:
        config, layer = _whisper_spec(root, spec, mode)
    frontend = FrontEndConfig.from_dict(document["frontend"])
    _check_frontend(frontend)
    fusion = document["fusion"]["name"]
    weights = {str(k): float(w) for k, w in document["fusion"]["weights"].items()}
    if any(not 0.0 <= w <= 1.0 for w in weights.values()):
        raise ValueError(f"fusion weights must lie in [0, 1], got {weights}")
    d = pooling.output_dim(int(spec["feature_dim"]))
    classifiers = {v: _load_classifier(root / document["classifier_files"][v], labels, d,
                                       document["classifiers"][v]) for v in views}
    normalisers = _load_normalisers(root, document, views, d)
    if family == "imagenet":   # the slow part, done last
        backbones = _load_backbones(root, document, views)
    else:
        backbones = _load_whisper_backbones(root, document, views, config)
    return Model(labels, views, backbones, classifiers, pooling, fusion, weights, frontend,
                 mode, document.get("training") or {}, layer=layer, normalisers=normalisers)


def _check_pooling(pooling: PoolingSpec) -> None:
    """Refuse pooling sizes no trained model has (they would only exhaust memory or time)."""
    if not (isinstance(pooling.blocks, int) and 1 <= pooling.blocks <= MAX_BLOCKS):
        raise ValueError(f"pooling blocks must be an integer in 1..{MAX_BLOCKS}")
    if pooling.levels is not None and not (isinstance(pooling.levels, int)
                                           and 1 <= pooling.levels <= MAX_BLOCKS):
        raise ValueError(f"pooling levels must be None or an integer in 1..{MAX_BLOCKS}")


# Front-end values a model may carry (wider than any sensible setting, narrow enough that no
# value can ask for a runaway allocation): name -> (low, high), inclusive.
FRONTEND_BOUNDS: dict[str, tuple[float, float]] = {
    "sample_rate": (4000, 96000), "n_mels": (1, 512), "fmin": (0.0, 48000.0),
    "fmax": (1.0, 48000.0), "win_ms": (1.0, 200.0), "hop_ms": (1.0, 200.0),
    "n_fft": (16, 16384), "power_floor": (1e-30, 1e-2), "segment_frames": (1, 2048),
    "segment_hop": (1, 2048), "delta_width": (3, 99), "side_scale": (1e-3, 1e3),
    "max_duration_s": (0.01, 86400.0),
}
_FRONTEND_INTS = ("sample_rate", "n_mels", "n_fft", "segment_frames", "segment_hop",
                  "delta_width")


def _check_frontend(frontend: FrontEndConfig) -> None:
    """Refuse front-end values outside :data:`FRONTEND_BOUNDS` (like pooling and input
    size): a tampered ``segment_frames = 1e7`` would otherwise ask for tens of GiB."""
    for name, (low, high) in FRONTEND_BOUNDS.items():
        value = getattr(frontend, name)
        whole = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if name in _FRONTEND_INTS and not whole:
            raise ValueError(f"frontend {name} must be an integer, got {value!r}")
        if (not isinstance(value, (int, float, np.integer, np.floating))
                or isinstance(value, bool) or not low <= value <= high):
            raise ValueError(f"frontend {name} must lie in {low}..{high}, got {value!r}")
    if not frontend.fmin < frontend.fmax <= frontend.sample_rate / 2:
        raise ValueError(f"frontend needs fmin < fmax <= sample_rate/2, got fmin "
                         f"{frontend.fmin}, fmax {frontend.fmax}, sample_rate "
                         f"{frontend.sample_rate}")
    if frontend.n_fft < round(frontend.win_ms * frontend.sample_rate / 1000):
        raise ValueError("frontend n_fft must be at least the window length in samples")
    if frontend.delta_width % 2 == 0:
        raise ValueError(f"frontend delta_width must be odd, got {frontend.delta_width}")
    if frontend.window not in ("hamming", "hann", "hanning", "blackman", "boxcar", "bartlett"):
        raise ValueError(f"frontend window {frontend.window!r} is not supported")


def _check_input_size(input_size: int) -> None:
    if not 1 <= input_size <= MAX_INPUT_SIZE:
        raise ValueError(f"backbone input_size must be in 1..{MAX_INPUT_SIZE}")


def _whisper_spec(root: Path, spec: Mapping[str, Any], mode: str) -> tuple[Any, int]:
    """The encoder config and layer of a Whisper model.json, bound-checked (ModelError)."""
    from ..backbones.whisper import WHISPER_BACKBONES, WhisperConfig

    where = root / MODEL_JSON
    if spec["name"] not in WHISPER_BACKBONES:
        raise ModelError(f"{where}: unknown Whisper backbone {spec['name']!r} (known: "
                         f"{', '.join(WHISPER_BACKBONES)})")
    if mode != "frozen":
        raise ModelError(f"{where}: Whisper models are frozen, model.json says mode {mode!r}")
    try:
        config = WhisperConfig.from_hf(spec["config"])
    except ConfigError as exc:
        raise ModelError(f"{where}: backbone config: {exc}") from exc
    layer = spec["layer"]
    if isinstance(layer, bool) or not isinstance(layer, int) \
            or not 0 <= layer <= config.encoder_layers:
        raise ModelError(f"{where}: backbone layer {layer!r} is not a layer of this encoder "
                         f"(an integer in 0..{config.encoder_layers})")
    if spec["feature_dim"] != config.d_model:
        raise ModelError(f"{where}: backbone feature_dim {spec['feature_dim']!r} differs from "
                         f"the encoder's d_model {config.d_model}")
    sha = spec["weights_sha256"]
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise ModelError(f"{where}: backbone weights_sha256 must be 64 lowercase hex digits")
    return config, layer


def _load_backbones(root: Path, document: Mapping[str, Any], views: tuple[str, ...]
                    ) -> dict[str, Any]:
    """One ImageNet Backbone per distinct weights file (shared by the views that name it)."""
    from ..backbones import get_backbone

    spec = document["backbone"]
    loaded: dict[str, Any] = {}
    out = {}
    for view in views:
        name = document["backbone_files"][view]
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


def _load_whisper_backbones(root: Path, document: Mapping[str, Any], views: tuple[str, ...],
                            config: Any) -> dict[str, Any]:
    """The one Whisper encoder every view shares, its identity checked."""
    spec = document["backbone"]
    names = {document["backbone_files"][v] for v in views}
    if len(names) != 1:
        raise ModelError(f"{root / MODEL_JSON}: a Whisper model has one encoder file for all "
                         f"views, got {sorted(names)}")
    path = root / names.pop()
    backbone = _read_encoder(path, spec["name"], config)
    for view in views:
        if str(spec["weights_id"][view]) != backbone.weights_id:
            raise ModelError(f"{path}: encoder weights have identity {backbone.weights_id}, "
                             f"model.json records {spec['weights_id'][view]!r} for {view}")
    backbone.weights_sha256 = spec["weights_sha256"]   # the source weights' digest
    backbone.pretrained = bool(spec["pretrained"])
    return {v: backbone for v in views}


def _read_encoder(path: Path, name: str, config: Any):
    """A WhisperBackbone from a model folder's encoder file: exactly the float32 tensors of
    ``config``'s encoder (ModelError otherwise)."""
    import torch
    from safetensors.torch import load_file

    from ..backbones.imagenet import weights_digest
    from ..backbones.whisper import WhisperBackbone, WhisperEncoder

    try:
        state = load_file(str(path))
    except Exception as exc:   # truncated or not safetensors: never a raw exception
        raise ModelError(f"{path}: unreadable safetensors file ({type(exc).__name__}: "
                         f"{exc})") from exc
    with torch.device("meta"):   # no time spent on an initialisation overwritten anyway
        model = WhisperEncoder(config)
    problem = _state_problem(state, model.state_dict())
    if problem:
        raise ModelError(f"{path}: weights do not fit the Whisper encoder of {MODEL_JSON} "
                         f"({problem})")
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    return WhisperBackbone(name=name, size=name[len("whisper-"):], config=config, model=model,
                           weights_id=weights_digest(model.state_dict()), weights_sha256="",
                           source=str(path))


def _state_problem(state: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
    """What is wrong with a state dict against the expected one (names, shapes, float32)."""
    import torch

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} {state[k].dtype}" for k in expected
             if k in state and (tuple(state[k].shape) != tuple(expected[k].shape)
                                or state[k].dtype != torch.float32)]
    parts = [f"{what} {len(keys)}: {', '.join(keys[:6])}" for what, keys in
             (("missing", missing), ("unexpected", unexpected),
              ("wrong shape or dtype", wrong)) if keys]
    return " | ".join(parts) or None


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:   # truncated or not safetensors: never a raw exception
        raise ModelError(f"{path}: unreadable safetensors file ({type(exc).__name__}: "
                         f"{exc})") from exc


def _load_classifier(path: Path, labels: list[str], d: int, scalars: Mapping[str, Any]):
    """A predict-only ViewClassifier from its safetensors arrays, every shape checked."""
    from ..classifier import CALIBRATIONS, ViewClassifier

    arrays = _read_arrays(path)
    _check_classifier_arrays(path, arrays, len(labels), d)
    state = {k: arrays[k] for k in _CLASSIFIER_ARRAYS if k != "class_index"}
    state["classes"] = np.asarray(labels)[arrays["class_index"]]
    state["C"] = np.array(float(scalars["C"]))
    state["best_score"] = np.array(float(scalars["best_score"]))
    state["Cs"] = np.asarray([float(c) for c in scalars["Cs"]])
    calibration = scalars.get("calibration", "sigmoid")   # models before temperature scaling
    if calibration not in CALIBRATIONS:
        raise ModelError(f"{path}: unknown calibration {calibration!r}")
    state["calibration"] = np.array(calibration)
    return ViewClassifier.from_state(state)


def _check_classifier_arrays(path: Path, arrays: Mapping[str, np.ndarray], n_labels: int,
                             d: int) -> None:
    """ModelError unless the arrays form a classifier over ``d`` features."""
    missing = [k for k in _CLASSIFIER_ARRAYS if k not in arrays]
    if missing:
        raise ModelError(f"{path}: missing array(s) {', '.join(missing)}")
    index = arrays["class_index"]
    k = len(index)
    rows = 1 if k == 2 else k
    expected = {"class_index": (k,), "mean": (d,), "scale": (d,), "coef": (rows, d),
                "intercept": (rows,), "calib_a": (rows,), "calib_b": (rows,)}
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise ModelError(f"{path}: array {name} has shape {arrays[name].shape}, expected "
                             f"{shape}")
    if (index.dtype.kind not in "iu" or k < 2 or len(set(index.tolist())) != k
            or index.min() < 0 or index.max() >= n_labels):
        raise ModelError(f"{path}: class_index must be distinct label indices, got {index}")
    for name in _CLASSIFIER_ARRAYS[1:]:
        if arrays[name].dtype != np.float64 or not np.isfinite(arrays[name]).all():
            raise ModelError(f"{path}: array {name} must be finite float64")
    if not (arrays["scale"] > 0).all():
        raise ModelError(f"{path}: array scale must be positive")


def _load_normalisers(root: Path, document: Mapping[str, Any], views: tuple[str, ...],
                      d: int) -> dict[str, Any]:
    """Per-view SpeakerNormalisers of a speaker-normalised model ({} otherwise)."""
    flag = document.get("speaker_norm", False)
    if flag is False:
        return {}
    where = root / MODEL_JSON
    if flag is not True:
        raise ModelError(f"{where}: speaker_norm must be true or false, got {flag!r}")
    least = document["speaker_norm_min_utterances"]
    if isinstance(least, bool) or not isinstance(least, int) \
            or not 1 <= least <= MAX_MIN_UTTERANCES:
        raise ModelError(f"{where}: speaker_norm_min_utterances must be an integer in "
                         f"1..{MAX_MIN_UTTERANCES}, got {least!r}")
    return {v: _load_normaliser(root / document["normaliser_files"][v], d, least)
            for v in views}


def _load_normaliser(path: Path, d: int, min_utterances: int):
    """A SpeakerNormaliser from its fallback arrays, shapes and values checked."""
    from ..normalisation import SpeakerNormaliser

    arrays = _read_arrays(path)
    for name in _NORMALISER_ARRAYS:
        if name not in arrays:
            raise ModelError(f"{path}: missing array {name}")
        array = arrays[name]
        if array.shape != (d,) or array.dtype != np.float64 or not np.isfinite(array).all():
            raise ModelError(f"{path}: array {name} must be finite float64 of shape ({d},), "
                             f"got {array.dtype} {array.shape}")
    if not (arrays["fallback_std"] > 0).all():
        raise ModelError(f"{path}: array fallback_std must be positive")
    return SpeakerNormaliser.from_state({**{k: arrays[k] for k in _NORMALISER_ARRAYS},
                                         "min_utterances": np.array(min_utterances)})


def _duration_or_none(path: Path) -> float | None:
    from ..audio import audio_info

    try:
        return float(audio_info(path).duration_s)
    except BinserError:
        return None


# --------------------------------------------------------------------------------------
# batched extraction that records bad files
# --------------------------------------------------------------------------------------

def _check_input(path: Path) -> None:
    """AudioError for a missing path or one that is not a regular file."""
    if not path.exists():
        raise AudioError(path, "file not found")
    if not path.is_file():
        raise AudioError(path, "not a regular file")


def _file_error(path: Path, exc: Exception) -> BinserError:
    """A BinserError as it is; any other exception of a decoder as an AudioError."""
    if isinstance(exc, BinserError):
        return exc
    return AudioError(path, f"cannot process ({type(exc).__name__}: {exc})")


@functools.lru_cache(maxsize=1)
def _tolerant_extractor_class():
    """The extractor class, built on first use (keeps ``import binser.model`` torch-free)."""
    from ..features import SegmentFeatureExtractor

    class TolerantExtractor(SegmentFeatureExtractor):
        """SegmentFeatureExtractor that records a file it cannot read (``skip=True``) in
        ``failures`` ({path index: message}) instead of stopping the whole run."""

        def __init__(self, *args: Any, skip: bool = True, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.skip = skip
            self.failures: dict[int, str] = {}

        def extract(self, paths):
            self.failures = {}
            return super().extract(paths)

        def _enqueue_file(self, index, path, state, batcher):
            try:
                _check_input(path)
                super()._enqueue_file(index, path, state, batcher)
            except Exception as exc:   # a decoder's own exception: still one file's problem
                error = _file_error(path, exc)
                if not self.skip:
                    if error is exc:
                        raise
                    raise error from exc
                self.failures[index] = str(error)

    return TolerantExtractor


def _TolerantExtractor(*args: Any, **kwargs: Any):
    """A SegmentFeatureExtractor with per-file failure records (see the class above)."""
    return _tolerant_extractor_class()(*args, **kwargs)


@functools.lru_cache(maxsize=1)
def _tolerant_frame_extractor_class():
    """The frame extractor class with per-file failure records, built on first use."""
    from ..features import FrameFeatureExtractor, file_views

    class TolerantFrameExtractor(FrameFeatureExtractor):
        """FrameFeatureExtractor that records a file it cannot read, decode or encode
        (``skip=True``) in ``failures`` ({path index: message}) and goes on with the others;
        ``skip=False`` raises that file's error. Files still share encoder batches; when a
        batch fails, its files are encoded one by one so only the one at fault fails."""

        def __init__(self, *args: Any, skip: bool = True, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.skip = skip
            self.failures: dict[int, str] = {}
            self._unreadable: dict[Path, str] = {}

        def extract(self, paths, keep=None):
            self.failures, self._unreadable = {}, {}
            return super().extract(paths, keep)

        def _fail(self, index: int, path: Path, exc: Exception) -> None:
            error = _file_error(path, exc)
            if not self.skip:
                if error is exc:
                    raise exc
                raise error from exc
            self.failures[index] = str(error)

        def keys(self, path, digest=None):
            try:
                _check_input(Path(path))
                return super().keys(path, digest)
            except BinserError as exc:
                if not self.skip:
                    raise
                self._unreadable[Path(path)] = str(exc)
                return {}      # no keys: nothing read from or written to the cache

        def _from_cache(self, index, view, keys, keep, results):
            return bool(keys) and super()._from_cache(index, view, keys, keep, results)

        def _file_views(self, index, path, keys):
            if not keys:
                self.failures[index] = self._unreadable[Path(path)]
                return None
            try:
                return file_views(path, self.config)
            except Exception as exc:
                self._fail(index, path, exc)
                return None

        def _encoded(self, owners: list, signals: list) -> Iterator[tuple[tuple, dict]]:
            """(owner, frames) of every signal encoded; a failing batch is retried file by
            file and the failing files recorded."""
            if not signals:
                return
            try:
                encoded = self._encode_signals(signals)
            except AudioError:
                encoded = None
            if encoded is not None:
                self.n_computed += len(signals)
                yield from zip(owners, encoded)
                return
            by_file: dict[int, list[int]] = {}
            for k, (index, *_rest) in enumerate(owners):
                by_file.setdefault(index, []).append(k)
            for index, ks in by_file.items():
                try:
                    frames = self._encode_signals([signals[k] for k in ks])
                except AudioError as exc:
                    path = owners[ks[0]][1]
                    self._fail(index, path, AudioError(path, _view_cause(exc.cause, [
                        owners[k][2] for k in ks])))
                    continue
                self.n_computed += len(ks)
                yield from zip([owners[k] for k in ks], frames)

    return TolerantFrameExtractor


def _view_cause(cause: str, views: Sequence[str]) -> str:
    """An encoder's ``"signal i: why"`` about one file's signals as ``"view V: why"``."""
    match = re.fullmatch(r"signal (\d+): (.*)", cause, flags=re.DOTALL)
    if match and int(match.group(1)) < len(views):
        return f"view {views[int(match.group(1))]}: {match.group(2)}"
    return cause


def _TolerantFrameExtractor(*args: Any, **kwargs: Any):
    """A FrameFeatureExtractor with per-file failure records (see the class above)."""
    return _tolerant_frame_extractor_class()(*args, **kwargs)


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------

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
    from ..experiment import iter_layer_features, load_backbone
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
    from ..corpora import corpus as load_corpus
    from ..experiment import is_encoder
    from ..preflight import screen_corpus

    settings.validate()
    views = model_views(fusion, settings.views)
    spec = PoolingSpec(pooling or settings.resolved_fusion_pooling(), settings.blocks,
                       settings.levels, settings.pool_abs)
    target = None
    if out_dir is not None:   # checked (and locked) before any work; Model.save swaps it in
        from ..outputs import OutputFolder

        _check_target(Path(out_dir), overwrite)
        target = OutputFolder(out_dir, option="--out", overwrite=True)
    if is_encoder(settings.backbone) and finetuned_backbones is not None:
        raise ConfigError(f"{settings.backbone}: speech encoders are used frozen; fine-tuned "
                          "backbones apply to image CNNs only")
    corpus = (corpus_loader or load_corpus)(settings.dataset, settings.root,
                                            manifest=settings.manifest)
    if len(corpus.labels) < 2:
        raise ConfigError(f"{settings.dataset} at {settings.root}: {len(corpus.labels)} "
                          f"emotion class(es) ({', '.join(corpus.labels) or 'none'}); a model "
                          "needs at least 2")
    # Bad files: stop before any expensive work, or leave them out (settings.on_error).
    corpus, _skipped = screen_corpus(corpus, settings.on_error, settings.frontend,
                                     progress=progress)
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
        cv_results = run_experiment(settings, out=None, progress=progress, report=False)
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
    from ..experiment import is_encoder

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
    if is_encoder(settings.backbone):
        info["layer"] = fit.layer
        info["layer_selection"] = _layer_selection(settings, fit, layer_scores or {})
    return info


def _layer_selection(settings, fit: LayerFit, scores: Mapping[Any, Mapping[str, Any]]
                     ) -> dict[str, Any]:
    """How the encoder layer was chosen, with every candidate layer's scores."""
    how = ("auto: the layer with the best mean inner-CV UA (speaker-grouped, training data) "
           "over the model's views; ties to the lower layer"
           if settings.resolved_layer() == "auto" else "given")
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


# --------------------------------------------------------------------------------------
# speakers of a predict call
# --------------------------------------------------------------------------------------

def read_speakers_csv(csv_path: str | Path, files: Sequence[str | Path]) -> list[str]:
    """The speaker of each of ``files`` from a CSV with the header ``path,speaker``.

    A row matches a file when the paths are equal as written or name the same file (a
    relative path in the CSV is taken relative to the CSV's folder or to the current
    folder). ConfigError for an unreadable CSV, missing columns, an empty speaker, a path
    given two speakers, or a file without a row.
    """
    import csv

    csv_path = Path(csv_path)
    table: dict[str, str] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"path", "speaker"} <= set(reader.fieldnames or ()):
                raise ConfigError(f"{csv_path}: needs a header row with the columns "
                                  f"path,speaker (got {','.join(reader.fieldnames or [])})")
            for line, row in enumerate(reader, start=2):
                _add_speaker_row(table, csv_path, line, row)
    except OSError as exc:
        raise ConfigError(f"{csv_path}: cannot read speakers file "
                          f"({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{csv_path}: not a readable CSV file ({exc})") from exc
    out = []
    for f in files:
        found = [table[k] for k in _path_keys(f, Path.cwd()) if k in table]
        if not found:
            raise ConfigError(f"{csv_path}: no speaker for {f} (add a row '{f},SPEAKER')")
        out.append(found[0])
    return out


def _add_speaker_row(table: dict[str, str], csv_path: Path, line: int,
                     row: Mapping[str, str | None]) -> None:
    path, speaker = (row.get("path") or "").strip(), (row.get("speaker") or "").strip()
    if not path or not speaker:
        raise ConfigError(f"{csv_path}, line {line}: path and speaker must both be given")
    for key in _path_keys(path, csv_path.parent) | _path_keys(path, Path.cwd()):
        if table.setdefault(key, speaker) != speaker:
            raise ConfigError(f"{csv_path}, line {line}: {path} is given two speakers "
                              f"({table[key]} and {speaker})")


def _path_keys(path: str | Path, base: Path) -> set[str]:
    """The path as written and its resolved form (relative to ``base``)."""
    p = Path(path)
    return {str(path), str((p if p.is_absolute() else base / p).resolve())}


# --------------------------------------------------------------------------------------
# model card
# --------------------------------------------------------------------------------------

def model_card(model: Model) -> str:
    """MODEL_CARD.md text: data, system, protocol, scores, intended use and limits."""
    info = model.info
    lines = [f"# binser model: {info.get('dataset', 'unknown corpus')}", ""]
    if info.get("synthetic"):
        lines += ["**Trained on synthetic data** (binser's demo corpus): it is not a model "
                  "of human emotion and must not be used on real recordings.", ""]
    lines += _card_data(info) + _card_system(model) + _card_protocol(info)
    lines += _card_scores(info.get("cross_validation")) + _CARD_LIMITS
    return "\n".join(lines)


def _card_data(info: Mapping[str, Any]) -> list[str]:
    counts = ", ".join(f"{k} ({v})" for k, v in (info.get("label_counts") or {}).items())
    return ["## Data", "",
            f"- corpus: {info.get('dataset')} (folder `{info.get('corpus_folder')}`; "
            f"{info.get('n_utterances')} utterances, {info.get('n_speakers')} speakers, "
            f"{info.get('n_skipped', 0)} files skipped)",
            f"- labels: {counts}", ""]


def _card_backbone(model: Model) -> str:
    backbone = model.backbones[model.views[0]]
    if model.family == "whisper":
        return (f"- backbone: speech encoder {backbone.name}, layer {model.layer}, weights "
                f"sha256 {str(backbone.weights_sha256)[:16]}, frozen (hidden states of that "
                "layer, one row per 20 ms)")
    weights = "ImageNet-pretrained" if backbone.pretrained else "RANDOM weights"
    how = ("fine-tuned per view" if model.mode == "finetuned"
           else "features of the pretrained network")
    return (f"- backbone: {backbone.name}, input {backbone.input_size} px, {weights}, "
            f"{model.mode} ({how})")


def _card_system(model: Model) -> list[str]:
    from ..fusion import describe_weights

    weights = describe_weights(model.weights or {})
    lines = ["## System", "", _card_backbone(model),
             f"- views: {', '.join(model.views)}; pooling: {_card_pooling(model.pooling)}",
             "- per view: standardisation + linear SVM (class-balanced) + calibrated scores",
             f"- fusion: {model.fusion or 'none (single view)'} with weights {weights} "
             "(docs/METHOD.md eqs. M14-M16)",
             "- a view without signal in a file (e.g. the side of a mono file) scores 1/K "
             "per label there, so the other views decide; predictions list it"]
    if model.speaker_norm:
        lines.append(
            "- speaker normalisation (TRANSDUCTIVE, label-free): each view's features are "
            "standardised per speaker; at prediction the statistics come from that speaker's "
            "files in the same predict call (all files of a call are one speaker unless "
            f"speakers are given); a speaker with fewer than {model.min_utterances} files "
            "uses the average training speaker instead (the fallback), and each prediction "
            "says which statistics it used")
    return lines + [""]


def _card_pooling(pooling: PoolingSpec) -> str:
    if pooling.name.startswith("block-"):
        return f"{pooling.name} (blocks {pooling.blocks}, levels {pooling.levels})"
    return pooling.name


def _card_protocol(info: Mapping[str, Any]) -> list[str]:
    # The fusion's own out-of-fold UA is measured on the probabilities its weights were
    # chosen on (in-sample for the weights, optimistic): the card shows only the nested
    # cross-validated figures (--cross-validate).
    oof_text = ""
    lines = ["## Protocol", "",
             "- trained on ALL utterances of the corpus (the final model);",
             f"- {info.get('classifier_selection', '')};",
             f"- fusion weights: {info.get('fusion_selection') or 'not applicable'}{oof_text}"]
    selection = info.get("layer_selection")
    if selection:
        scores = ", ".join(f"{k}: {100 * v:.1f} %" for k, v in selection["scores"].items())
        lines[-1] += ";"
        lines.append(f"- encoder layer {selection['chosen']} ({selection['method']}; mean "
                     f"inner-CV UA per layer {scores})")
    return lines + [""]


_CARD_LIMITS = [
    "## Intended use and limits", "",
    "- Research on speech emotion recognition from stereo (binaural) recordings: predicts "
    "one of the training labels per file, with scores per label.",
    "- Scores are calibrated on the training corpus; on other recording set-ups, languages, "
    "speakers or label sets they are not reliable. Mono inputs make the side view silent.",
    "- Not for decisions about people (hiring, health, policing, surveillance).",
    "- Files are stored as JSON and safetensors only; loading runs no stored code.", ""]


def _card_scores(cv: Mapping[str, Any] | None) -> list[str]:
    from ..runnames import is_oracle

    if not cv:
        return ["## Cross-validated scores", "",
                "Not computed for this model (train with cross-validation to add them).", ""]
    lines = ["## Cross-validated scores", "",
             f"Protocol {cv.get('protocol')} ({cv.get('n_folds')} folds, "
             f"{cv.get('n_utterances')} utterances), speaker-independent:", "",
             "| run | UA % | WA % | macro-F1 % | UA 95% CI |", "|---|---|---|---|---|"]
    for r in cv.get("runs", []):
        lo, hi = r.get("ua_ci95", [float("nan")] * 2)
        ci = ("n/a (chosen on the test data)" if is_oracle(r["name"])
              else f"{100 * lo:.1f}-{100 * hi:.1f}")
        lines.append(f"| {r['name']} | {100 * r['ua']:.1f} | {100 * r['wa']:.1f} | "
                     f"{100 * r['macro_f1']:.1f} | {ci} |")
    return lines + ["", "Score fusions without a suffix choose their weights inside each "
                    "training fold (nested), as this model does; `@oracle` rows choose them "
                    "on the test data (the paper's practice, optimistic).", ""]


# --------------------------------------------------------------------------------------
# text output
# --------------------------------------------------------------------------------------

def _top(scores: Mapping[str, float], n: int) -> str:
    best = sorted(scores.items(), key=lambda item: -item[1])[:n]
    return ", ".join(f"{label} {score:.2f}" for label, score in best)


def format_prediction(prediction: Prediction, top: int = 3) -> str:
    """One line per file (``path: label (top scores)`` or ``path: ERROR cause``, with the
    silent views when there are any), plus one indented line per timeline entry."""
    if prediction.error is not None:
        cause = prediction.error.removeprefix(f"{prediction.path}: ")
        return f"{prediction.path}: ERROR {cause}"
    line = f"{prediction.path}: {prediction.label}  ({_top(prediction.scores, top)})"
    if prediction.silent_views:
        line += f"  [silent: {', '.join(prediction.silent_views)}]"
    lines = [line]
    for entry in prediction.timeline or []:
        scores = "(silent)" if entry.get("silent") else _top(entry["scores"], top)
        lines.append(f"    {entry['start_s']:7.2f}-{entry['end_s']:7.2f} s  {scores}")
    return "\n".join(lines)
