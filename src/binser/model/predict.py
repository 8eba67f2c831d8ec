"""A trained system and its predictions: :class:`Model` (scoring, :meth:`Model.predict`,
timelines), :class:`Prediction`, the timeline windows and the speakers of a predict call.

Families (model.json ``backbone.family``): every backbone offers the interface of
:mod:`binser.backbones.registry`; a model asks its backbone, never its family's name. Its
``frame_rate`` decides the timeline: None (image CNNs): the front end's segments; a rate
(speech encoders, Whisper 50 rows per second): windows scored as clips.

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
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..config import FrontEndConfig
from ..errors import AudioError, BinserError, ConfigError
from ..overall import timeline_overall
from ..features import file_sha256  # noqa: F401  (one streaming file hash for caches and models)
from ..preflight import check_on_error
from ..validation import check_choice

DEFAULT_FUSION = "left+right+mid+side"
MODES = ("frozen", "finetuned")
FRAMES_PER_S = 50             # Whisper encoder rows per second (one per 20 ms)
WINDOW_FRAMES = 50            # timeline window at 50 rows per second: 1.0 s
WINDOW_HOP = 25               # timeline hop at 50 rows per second: 0.5 s
CLIP_BATCH = 32               # timeline windows scored per step (memory, progress)
MIN_UTTERANCES = 5            # files of a speaker needed for own normalisation statistics
CALL_SPEAKER = "(all files of the call)"
STREAM_KEY = "(stream)"       # the key of a stream's running speaker statistics


# --------------------------------------------------------------------------------------
# small value types and timeline windows
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
    training speaker (only N files)"``; with ``online=True`` ``"own statistics over N files
    (online: ...)"`` or ``"fallback: average training speaker (online warm-up: ...)"``); None
    otherwise. ``overall``: with ``timeline=True``,
    the timeline's overall result by the rule the stream engine's summary uses
    (:func:`binser.overall.timeline_overall`: mean fused scores of the windows with signal,
    ``{"label", "scores", "windows", "silent_windows"}``); ``label`` stays the whole file
    scored as one utterance, and the two can differ (see :mod:`binser.overall`).
    """

    path: str
    label: str | None
    scores: dict[str, float] = field(default_factory=dict)
    view_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    timeline: list[dict[str, Any]] | None = None
    error: str | None = None
    silent_views: list[str] = field(default_factory=list)
    speaker_norm: str | None = None
    overall: dict[str, Any] | None = None

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


def encoder_windows(n_frames: int, frame_rate: float = FRAMES_PER_S) -> list[tuple[int, int]]:
    """Timeline windows ``[start, stop)`` over ``n_frames`` encoder rows at ``frame_rate``
    rows per second (see the module docstring; Whisper: :data:`WINDOW_FRAMES` = 50 rows
    every :data:`WINDOW_HOP` = 25): one window of everything up to one window's rows, else
    ``1 + ceil((n - size) / hop)`` windows starting every hop."""
    size = round(WINDOW_FRAMES * frame_rate / FRAMES_PER_S)
    hop = round(WINDOW_HOP * frame_rate / FRAMES_PER_S)
    n = int(n_frames)
    if n <= size:
        return [(0, n)]
    count = 1 + -(-(n - size) // hop)
    return [(k * hop, min(k * hop + size, n)) for k in range(count)]


def window_sample_spans(n_samples: int, sample_rate: int = 16000,
                        n_frames: Callable[[int], int] | None = None,
                        frame_rate: float = FRAMES_PER_S) -> list[tuple[int, int]]:
    """Sample spans ``[a, b)`` of the timeline windows of a signal of ``n_samples`` at
    ``sample_rate`` (see the module docstring; one span per :func:`encoder_windows` of its
    ``n_frames(n_samples)`` rows; default: Whisper's
    :func:`~binser.backbones.whisper.n_output_frames` at 50 rows per second)."""
    if n_frames is None:
        from ..backbones.whisper import n_output_frames as n_frames

    hop, length = window_hop_length(sample_rate)
    count = len(encoder_windows(n_frames(n_samples), frame_rate)) if n_samples > 0 else 0
    return [(k * hop, min(k * hop + length, n_samples)) for k in range(count)]


def window_hop_length(sample_rate: int = 16000) -> tuple[int, int]:
    """``(hop, length)`` in samples of the timeline windows (0.5 s, 1.0 s)."""
    per_frame = sample_rate // FRAMES_PER_S
    return WINDOW_HOP * per_frame, WINDOW_FRAMES * per_frame


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
        if self.layer is None and None not in self.backbone.layers:
            raise ConfigError(f"a {self.backbone.name} model needs the encoder layer its "
                              "classifiers use")
        if self.normalisers and set(self.normalisers) != set(self.views):
            raise ConfigError(f"speaker normalisers for views {sorted(self.normalisers)}, "
                              f"expected one per view {list(self.views)}")

    def __repr__(self) -> str:
        return (f"Model(labels={self.labels}, views={list(self.views)}, mode={self.mode!r}, "
                f"backbone={self.backbones[self.views[0]].name!r}, layer={self.layer}, "
                f"fusion={self.fusion!r}, weights={self.weights}, "
                f"speaker_norm={self.speaker_norm}, path={self.path})")

    @property
    def backbone(self):
        """The backbone of the first view (frozen models: the one every view shares)."""
        return self.backbones[self.views[0]]

    @property
    def family(self) -> str:
        """The backbone's family (``"imagenet"``, ``"whisper"``, ...)."""
        return self.backbone.family

    @property
    def windowed(self) -> bool:
        """True when the timeline is windows scored as clips (encoders with a frame rate),
        False when it is the front end's segments (see the module docstring)."""
        return self.backbone.frame_rate is not None

    def window_spans(self, n_samples: int) -> list[tuple[int, int]]:
        """Sample spans of the timeline windows of a signal of ``n_samples`` at the model's
        rate (:func:`window_sample_spans` with the backbone's frame count and rate)."""
        return window_sample_spans(n_samples, self.frontend.sample_rate,
                                   self.backbone.n_frames, self.backbone.frame_rate)

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

    def online_normalisers(self, warm_up: int | None = None) -> dict[str, Any]:
        """One fresh :class:`~binser.normalisation.OnlineSpeakerNormaliser` per view with
        the model's average-training-speaker fallback (``warm_up``: rows a key needs for its
        own statistics, default :attr:`min_utterances`); ConfigError for a model trained
        without speaker normalisation."""
        if not self.speaker_norm:
            raise ConfigError("online speaker normalisation needs a model trained with "
                              "speaker normalisation (train --speaker-norm); this one was not")
        from ..normalisation import OnlineSpeakerNormaliser

        return {v: OnlineSpeakerNormaliser.from_offline(self.normalisers[v], warm_up)
                for v in self.views}

    def online_statistics(self, pooled: Mapping[str, tuple[np.ndarray, np.ndarray]],
                          keys: Sequence[str], online: Mapping[str, Any], unit: str = "file"
                          ) -> tuple[np.ndarray, dict[str, dict], list[str | None]]:
        """Rows of ``pooled`` in order through the running statistics ``online`` (view ->
        :class:`~binser.normalisation.OnlineSpeakerNormaliser`, from
        :meth:`online_normalisers`; row ``j`` belongs to ``keys[j]``, a speaker or a stream).

        Returns ``(ids, stats, notes)``: ``ids`` (N,) one id per row; per view ``{id: (mean,
        std, n)}``, the statistics row ``j`` is standardised with (its key's rows with
        signal up to and including ``j``, never a later one; the fallback while fewer than
        ``warm_up``); per row its ``speaker_norm`` note (``unit``: what a row is, "file" or
        "window"; None for a row silent in every view). ``_score_pooled(pooled, ids,
        stats)`` then scores the rows.
        """
        ids = np.array([f"#{j}" for j in range(len(keys))], dtype=str)
        stats: dict[str, dict] = {v: {} for v in self.views}
        notes: list[str | None] = []
        warm_up = online[self.views[0]].warm_up
        for j, key in enumerate(keys):
            counts, fell_back = [], []
            for v in self.views:
                X, silent = pooled[v]
                mean, sd, n = online[v].update_statistics(X[j], key, not silent[j])
                stats[v][ids[j]] = (mean, sd, n)
                if not silent[j]:
                    counts.append(n)
                    if n < online[v].warm_up:
                        fell_back.append(v)
            notes.append(_online_note(counts, fell_back, warm_up, unit) if counts else None)
        return ids, stats, notes

    def score_online(self, pooled: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     keys: Sequence[str], online: Mapping[str, Any], unit: str = "window"
                     ) -> tuple[np.ndarray, dict[str, np.ndarray], list[str | None]]:
        """Pooled rows scored in order with running statistics (:meth:`online_statistics`)
        -> fused ``(N, K)``, per-view ``{view: (N, K)}`` and each row's note."""
        ids, stats, notes = self.online_statistics(pooled, keys, online, unit)
        fused, per_view = self._score_pooled(pooled, ids, stats)
        return fused, per_view, notes

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
                    stats: Mapping[str, dict] | None = None, progress: bool = False,
                    online: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Whisper models: score each clip ``(C, N_i)`` (float32 at the model's rate, C = 1
        or 2) as a file holding exactly that audio (:func:`binser.features.clip_frames`,
        then pooling, classifiers and fusion).

        Speaker-normalised models: ``stats`` (from :meth:`speaker_statistics`) with one
        ``speakers`` id per clip; without them each clip is its own speaker (so one clip
        uses the average-training-speaker fallback). Returns per clip ``{"silent",
        "silent_views", "label", "scores", "views"}``; a clip whose views are all silent
        has ``silent`` True, label None and empty scores. ``progress``: a bar over clips.
        ``online`` (from :meth:`online_normalisers`): the clips, in order, join and are
        standardised with the running statistics of their ``speakers`` key (a stream; one
        key when None) instead (:meth:`online_statistics`), and each item gets its
        ``speaker_norm`` note."""
        from ..features import clip_frames, progress_bar

        if not self.windowed:
            raise ConfigError("score_clips is for Whisper models; image-CNN models score "
                              "segments of the whole file (predict(timeline=True))")
        clips = list(clips)
        if online is not None:
            speakers = [STREAM_KEY] * len(clips) if speakers is None else list(speakers)
            stats = None
        elif speakers is None or stats is None:
            speakers, stats = [str(i) for i in range(len(clips))], None
        backbone = self.backbone
        out: list[dict[str, Any]] = []
        bar = progress_bar(len(clips), progress, unit="window", desc="timeline")
        try:
            for s in range(0, len(clips), CLIP_BATCH):
                part = clips[s:s + CLIP_BATCH]
                rows = clip_frames(backbone, part, self.views, self.layer, self.frontend)
                pooled = {v: self.pool(v, [r[v] for r in rows]) for v in self.views}
                who = np.array([str(x) for x in speakers[s:s + len(part)]], dtype=str)
                notes: list[str | None] = [None] * len(part)
                if online is not None:
                    fused, per_view, notes = self.score_online(pooled, who, online)
                else:
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
                        if online is not None:
                            out[-1]["speaker_norm"] = None
                        continue
                    out.append({"silent": False, "silent_views": quiet,
                                "label": self.labels[int(np.argmax(fused[j]))],
                                "scores": self._label_dict(fused[j]),
                                "views": {v: self._label_dict(per_view[v][j])
                                          for v in self.views}})
                    if online is not None:
                        out[-1]["speaker_norm"] = notes[j]
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
                speakers: Sequence[str] | None = None, executor=None, online: bool = False,
                warm_up: int | None = None) -> list[Prediction]:
        """Predict the emotion of each audio or video file (one batched feature run).

        ``on_error``: ``"skip"`` reports a file that cannot be read (or in which every view
        of the model is silent) in its Prediction's ``error`` and goes on; ``"fail"`` raises
        the :class:`AudioError`. ``cache_dir``: an optional feature cache. ``batch_size``:
        segments per network call (CNN) or files decoded and encoded together (Whisper).
        ``speakers`` (speaker-normalised models only): one speaker id per path, or None: all
        files of this call are one speaker (see the module docstring; with several files a
        :class:`~binser.normalisation.SpeakerAssumptionWarning` says so). ``executor``: where
        the features are computed (:mod:`binser.executors`; default: here). ``online``
        (speaker-normalised models): each speaker's files, in the order given, are
        standardised with running statistics of that speaker's files so far (the file
        itself and the earlier ones, never a later one; the average training speaker until
        ``warm_up`` files, default :attr:`min_utterances`; files that cannot be read are
        left out) instead of all of the speaker's files of the call; a file's timeline uses
        the statistics its file used. Returns one :class:`Prediction` per path, in order.
        """
        check_on_error(on_error)
        online_norms = self.online_normalisers(warm_up) if online else None
        if warm_up is not None and not online:
            raise ConfigError("warm_up is the warm-up of online speaker normalisation; "
                              "give it with online=True (--online)")
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

                needed = (self.min_utterances if online_norms is None
                          else online_norms[self.views[0]].warm_up)
                warnings.warn(one_speaker_assumption(len(good), needed, online=online),
                              SpeakerAssumptionWarning, stacklevel=2)
            if online_norms is not None:   # each row its own id and statistics so far
                who, stats, notes = self.online_statistics(pooled, who, online_norms)
            else:
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
                if timeline:   # the stream's overall rule, over the same windows
                    out[i].overall = timeline_overall(self.labels, out[i].timeline)
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
        for backbone, views in self.backbone_groups():
            extractor = _tolerant(backbone.extractor_class).build(
                backbone, self.frontend, views, (self.layer,), cache_dir=cache_dir,
                batch=batch_size, progress=progress, skip=skip)
            if executor is not None:   # where the missing features are computed
                executor.prepare_features(extractor, paths, progress)
            features.update(extractor.extract_layer(paths, self.layer))
            for index, message in extractor.failures.items():
                failures.setdefault(index, message)
        return features, failures

    def backbone_groups(self) -> list[tuple[Any, tuple[str, ...]]]:
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
        if self.windowed:
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
        spans = self.window_spans(audio.shape[1])
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

    # ------------------------------------------------------------------ saving and loading

    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write the model folder ``out_dir`` (:func:`binser.model.io.save_model`)."""
        from .io import save_model

        return save_model(self, out_dir, overwrite)

    @classmethod
    def load(cls, path: str | Path) -> "Model":
        """Load and verify a model folder (:func:`binser.model.io.load_model`)."""
        from .io import load_model

        return load_model(path)


def _check_fusion_views(fusion: str | None, views: tuple[str, ...]) -> None:
    from ..fusion import FUSIONS

    if fusion is None:
        if len(views) != 1:
            raise ConfigError(f"a model without fusion has exactly one view, got {list(views)}")
        return
    check_choice(fusion, FUSIONS, "fusion")
    if tuple(FUSIONS[fusion]) != views:
        raise ConfigError(f"fusion {fusion} uses views {list(FUSIONS[fusion])}, got {list(views)}")


def _online_note(counts: Sequence[int], fell_back: Sequence[str], warm_up: int,
                 unit: str) -> str:
    """A row's ``speaker_norm`` note under online normalisation: ``counts``, per view with
    signal, its key's rows with signal so far (this one included); ``fell_back``: the views
    still in their warm-up."""
    def units(k: int) -> str:
        return f"{k} {unit}{'' if k == 1 else 's'}"

    if not fell_back:
        n = min(counts)
        return (f"own statistics over {units(n)} (online: this {unit} and the {n - 1} "
                "before it)")
    if len(fell_back) == len(counts):
        return (f"fallback: average training speaker (online warm-up: {units(max(counts))} "
                f"of {warm_up} so far)")
    return (f"fallback: average training speaker for view(s) {', '.join(fell_back)} (online: "
            f"fewer than {units(warm_up)} with signal there so far); own statistics over "
            f"{units(max(counts))} for the others")


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


def _tolerant(extractor_class: type):
    """The extractor class with per-file failure records for a backbone's
    ``extractor_class`` (a segment or a frame extractor, or a subclass of one)."""
    from ..features import FrameFeatureExtractor

    if issubclass(extractor_class, FrameFeatureExtractor):
        return _tolerant_frame_extractor_class()
    return _tolerant_extractor_class()


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


