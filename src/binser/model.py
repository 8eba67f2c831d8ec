"""A trained binser system: train on a whole corpus, save as a safe folder, load, predict.

:func:`train_model` fits the final system on ALL utterances of a corpus: per view a
:class:`~binser.classifier.ViewClassifier` on pooled segment features (C chosen by
speaker-grouped inner CV), and the fusion weights chosen by nested CV, i.e. by
:func:`~binser.fusion.select_weights` on out-of-fold probabilities over all speakers
(:meth:`ViewClassifier.oof_proba`: no utterance is scored by a model that saw its speaker).

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
* ``backbone.safetensors`` (frozen mode, saved once) or ``backbone_<view>.safetensors``
  (fine-tuned mode, one network per view): the network weights. In frozen mode the ImageNet
  classification layer is not needed and is stored as a zero 1-class placeholder; the loaded
  backbone keeps the ``weights_id`` recorded at training (its feature weights are the same),
  so a feature cache is shared between experiments, training and prediction.
* ``classifier_<view>.safetensors``: the standardiser, the SVM weights and the Platt
  parameters of each view as float64 arrays, and the class order as indices into ``labels``.
* ``MODEL_CARD.md``: data, protocol, cross-validated scores when known, intended use, limits.

Loading (:meth:`Model.load`) reads JSON and safetensors only (no pickle, no ``torch.load``),
checks the format name and version, the JSON checksum, every file's sha256, that every file
name is a plain name inside the folder (no absolute path, no ``..``, no separator, no symlink
leading out), and the shapes of every array; any failure is a :class:`ModelError` naming the
file and the cause.

Prediction (:meth:`Model.predict`) extracts segment features of all files in one batched run,
pools them per utterance, scores each view with its classifier and fuses the scores. With
``timeline=True`` each segment is also scored alone: its single-segment feature array
``(1, d)`` goes through the same pooling (for block pooling with n = 1 every block is that
segment and the delta part is zero), the same classifiers and the same fusion. Segment ``k``
covers ``[k*hop, k*hop + frames)`` analysis frames, reported as ``start_s = k*hop*hop_ms/1000``
and ``end_s = start_s + frames*hop_ms/1000`` (clipped to the file's duration when known).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import __version__
from .config import FrontEndConfig
from .errors import AudioError, BinserError, ConfigError, ModelError
from .features import file_sha256  # noqa: F401  (one streaming file hash for caches and models)
from .preflight import check_on_error

FORMAT = "binser-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
MODEL_CARD = "MODEL_CARD.md"
MAX_JSON_BYTES = 16 << 20     # a model.json larger than this is refused unread
MAX_BLOCKS = 64               # pooling blocks / levels a model may ask for
MAX_INPUT_SIZE = 1024         # backbone input side, pixels
DEFAULT_FUSION = "left+right+mid+side"
MODES = ("frozen", "finetuned")
_CLASSIFIER_ARRAYS = ("class_index", "mean", "scale", "coef", "intercept", "calib_a", "calib_b")


# --------------------------------------------------------------------------------------
# small value types
# --------------------------------------------------------------------------------------

@dataclass
class Prediction:
    """The result for one input file.

    ``scores``: fused score per label (calibrated probabilities combined by the fusion; they
    sum to 1). ``view_scores``: per view, that view's classifier probabilities per label.
    ``timeline``: with ``timeline=True``, one ``{"start_s", "end_s", "scores"}`` per segment
    in time order (seconds). ``error``: why the file could not be scored (then ``label`` is
    None and the score dicts are empty).
    """

    path: str
    label: str | None
    scores: dict[str, float] = field(default_factory=dict)
    view_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    timeline: list[dict[str, Any]] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PoolingSpec:
    """Which pooling turns segment features ``(n, d)`` into one utterance vector ``(D,)``."""

    name: str = "block-max"
    blocks: int = 2
    levels: int | None = None

    def make(self):
        """A fresh pooling transformer (stateless)."""
        from .pooling import make_pooling

        return make_pooling(self.name, blocks=self.blocks, levels=self.levels)

    def output_dim(self, d: int) -> int:
        """Pooled size ``D`` for segment features of size ``d``."""
        return int(self.make().fit_transform([np.zeros((1, d), np.float32)]).shape[1])


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

    ``backbones``: view -> :class:`~binser.backbones.Backbone` (frozen mode: one object shared
    by every view). ``classifiers``: view -> fitted :class:`ViewClassifier` (classes are label
    strings). ``fusion``: a name from :data:`binser.fusion.FUSIONS` whose views are ``views``,
    or None for a single view. ``info``: facts about training (goes into model.json and the
    model card).
    """

    def __init__(self, labels: Sequence[str], views: Sequence[str],
                 backbones: Mapping[str, Any], classifiers: Mapping[str, Any],
                 pooling: PoolingSpec, fusion: str | None, weights: Mapping[str, float],
                 frontend: FrontEndConfig = FrontEndConfig(), mode: str = "frozen",
                 info: Mapping[str, Any] | None = None):
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
        self.path: Path | None = None
        self.fingerprint: str | None = None   # content_sha256 once saved or loaded
        _check_fusion_views(fusion, self.views)

    def __repr__(self) -> str:
        return (f"Model(labels={self.labels}, views={list(self.views)}, mode={self.mode!r}, "
                f"fusion={self.fusion!r}, weights={self.weights}, path={self.path})")

    # ------------------------------------------------------------------ scoring

    def view_proba(self, view: str, X: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, K)`` of one view's classifier, columns in ``labels`` order."""
        clf = self.classifiers[view]
        proba = clf.predict_proba(X)
        out = np.zeros((len(X), len(self.labels)))
        out[:, [self.labels.index(str(c)) for c in clf.classes_]] = proba
        return out

    def fuse_scores(self, view_proba: Mapping[str, np.ndarray]) -> np.ndarray:
        """Fused ``(N, K)`` scores from per-view ``(N, K)`` probabilities."""
        from .fusion import fuse

        if self.fusion is None:
            return np.asarray(view_proba[self.views[0]], dtype=np.float64)
        return fuse(view_proba, self.fusion, self.weights)

    def score_segments(self, features: Mapping[str, Sequence[np.ndarray]]
                       ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Segment features ``{view: [(n_i, d), ...]}`` -> fused ``(N, K)`` and per-view
        ``{view: (N, K)}`` scores."""
        per_view = {v: self.view_proba(v, self.pooling.make().fit_transform(list(features[v])))
                    for v in self.views}
        return self.fuse_scores(per_view), per_view

    def _label_dict(self, row: np.ndarray) -> dict[str, float]:
        return {label: float(p) for label, p in zip(self.labels, row)}

    # ------------------------------------------------------------------ prediction

    def predict(self, paths: Sequence[str | Path], timeline: bool = False, batch_size: int = 64,
                progress: bool = True, on_error: str = "skip",
                cache_dir: str | Path | None = None) -> list[Prediction]:
        """Predict the emotion of each audio or video file (one batched feature run).

        ``on_error``: ``"skip"`` reports a file that cannot be read in its Prediction's
        ``error`` and goes on; ``"fail"`` raises the :class:`AudioError`. ``cache_dir``: an
        optional segment-feature cache. Returns one :class:`Prediction` per path, in order.
        """
        check_on_error(on_error)
        paths = [Path(p) for p in paths]
        features, failures = self._extract(paths, batch_size, progress, on_error, cache_dir)
        good = [i for i in range(len(paths)) if i not in failures]
        out = [Prediction(str(p), None, error=failures[i]) if i in failures else None
               for i, p in enumerate(paths)]
        if good:
            chosen = {v: [features[v][i] for i in good] for v in self.views}
            fused, per_view = self.score_segments(chosen)
            for row, i in enumerate(good):
                out[i] = Prediction(
                    str(paths[i]), self.labels[int(np.argmax(fused[row]))],
                    self._label_dict(fused[row]),
                    {v: self._label_dict(per_view[v][row]) for v in self.views},
                    self._timeline(paths[i], {v: chosen[v][row] for v in self.views})
                    if timeline else None)
        return out  # type: ignore[return-value]

    def _extract(self, paths: list[Path], batch_size: int, progress: bool, on_error: str,
                 cache_dir: str | Path | None
                 ) -> tuple[dict[str, list[np.ndarray | None]], dict[int, str]]:
        """Segment features per view for every path, and {path index: error message}.

        Views that share a backbone (frozen mode) are extracted together, decoding each
        file once; fine-tuned views each run their own network.
        """
        features: dict[str, list] = {}
        failures: dict[int, str] = {}
        for backbone, views in self._backbone_groups():
            extractor = _TolerantExtractor(backbone, config=self.frontend, views=views,
                                           cache_dir=cache_dir, batch_size=batch_size,
                                           progress=progress, skip=on_error == "skip")
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

    def _timeline(self, path: Path, segments: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
        """Per-segment fused scores of one file (see the module docstring for the times)."""
        n = len(segments[self.views[0]])
        singles = {v: [segments[v][k:k + 1] for k in range(n)] for v in self.views}
        fused, _ = self.score_segments(singles)
        hop_s = self.frontend.hop_ms / 1000.0
        duration = _duration_or_none(path)
        entries = []
        for k in range(n):
            start = k * self.frontend.segment_hop * hop_s
            end = start + self.frontend.segment_frames * hop_s
            if duration is not None:
                end = max(start, min(end, duration))
            entries.append({"start_s": round(start, 6), "end_s": round(end, 6),
                            "scores": self._label_dict(fused[k])})
        return entries

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
        """Write weights, classifiers and card into ``folder``; return model.json's content."""
        backbone_files = self._write_backbones(folder)
        classifier_files = {}
        for view in self.views:
            name = f"classifier_{view}.safetensors"
            _save_classifier(self.classifiers[view], self.labels, view, folder / name)
            classifier_files[view] = name
        (folder / MODEL_CARD).write_text(model_card(self), encoding="utf-8")
        files = sorted(set(backbone_files.values()) | set(classifier_files.values())
                       | {MODEL_CARD})
        mode = 0o666 & ~_umask()   # safetensors writes 0600: share like any other file
        for name in files:
            os.chmod(folder / name, mode)
        document = self._document(backbone_files, classifier_files)
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
            _save_backbone(backbone, folder / name, keep_head=self.mode != "frozen")
            names.update({v: name for v in views})
        return names

    def _document(self, backbone_files: dict[str, str], classifier_files: dict[str, str]
                  ) -> dict[str, Any]:
        """model.json without the checksums."""
        first = self.backbones[self.views[0]]
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "binser_version": __version__,
            "labels": self.labels,
            "views": list(self.views),
            "mode": self.mode,
            "pooling": dataclasses.asdict(self.pooling),
            "fusion": {"name": self.fusion, "weights": self.weights},
            "frontend": self.frontend.to_dict(),
            "backbone": {
                "name": first.name, "input_size": int(first.input_size),
                "feature_dim": int(first.feature_dim),
                "weights_id": {v: self.backbones[v].weights_id for v in self.views},
                "pretrained": bool(first.pretrained), "source": str(first.source),
                "head_stored": self.mode != "frozen",
            },
            "backbone_files": backbone_files,
            "classifier_files": classifier_files,
            "classifiers": {v: _classifier_scalars(self.classifiers[v]) for v in self.views},
            "training": self.info,
        }

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path) -> "Model":
        """Load and verify a model folder (or its ``model.json``); ModelError on any problem."""
        root = Path(path)
        if root.name == MODEL_JSON and root.is_file():
            root = root.parent
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
    from .fusion import FUSIONS

    if fusion is None:
        if len(views) != 1:
            raise ConfigError(f"a model without fusion has exactly one view, got {list(views)}")
        return
    if fusion not in FUSIONS:
        raise ConfigError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
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
            raise ConfigError(f"{out}: folder exists and is not empty (pass overwrite=True "
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


def _save_classifier(clf, labels: list[str], view: str, path: Path) -> None:
    """A fitted ViewClassifier's arrays as safetensors (classes as indices into labels)."""
    from safetensors.numpy import save_file

    state = clf.get_state()
    arrays = {k: np.ascontiguousarray(state[k], dtype=np.float64) for k in _CLASSIFIER_ARRAYS
              if k != "class_index"}
    arrays["class_index"] = np.array([labels.index(str(c)) for c in state["classes"]],
                                     dtype=np.int64)
    save_file(arrays, str(path), metadata={"binser": "view-classifier", "view": view})


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
    for key in ("backbone_files", "classifier_files"):
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
    pooling = PoolingSpec(**document["pooling"])
    _check_bounds(pooling, int(document["backbone"]["input_size"]))
    frontend = FrontEndConfig.from_dict(document["frontend"])
    fusion = document["fusion"]["name"]
    weights = {str(k): float(w) for k, w in document["fusion"]["weights"].items()}
    if any(not 0.0 <= w <= 1.0 for w in weights.values()):
        raise ValueError(f"fusion weights must lie in [0, 1], got {weights}")
    d = pooling.output_dim(int(document["backbone"]["feature_dim"]))
    classifiers = {v: _load_classifier(root / document["classifier_files"][v], labels, d,
                                       document["classifiers"][v]) for v in views}
    backbones = _load_backbones(root, document, views)   # the slow part, done last
    return Model(labels, views, backbones, classifiers, pooling, fusion, weights, frontend,
                 mode, document.get("training") or {})


def _check_bounds(pooling: PoolingSpec, input_size: int) -> None:
    """Refuse sizes no trained model has (they would only exhaust memory or time)."""
    if not (isinstance(pooling.blocks, int) and 1 <= pooling.blocks <= MAX_BLOCKS):
        raise ValueError(f"pooling blocks must be an integer in 1..{MAX_BLOCKS}")
    if pooling.levels is not None and not (isinstance(pooling.levels, int)
                                           and 1 <= pooling.levels <= MAX_BLOCKS):
        raise ValueError(f"pooling levels must be None or an integer in 1..{MAX_BLOCKS}")
    if not 1 <= input_size <= MAX_INPUT_SIZE:
        raise ValueError(f"backbone input_size must be in 1..{MAX_INPUT_SIZE}")


def _load_backbones(root: Path, document: Mapping[str, Any], views: tuple[str, ...]
                    ) -> dict[str, Any]:
    """One Backbone per distinct weights file (shared by the views that name it)."""
    from .backbones import get_backbone

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


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:   # truncated or not safetensors: never a raw exception
        raise ModelError(f"{path}: unreadable safetensors file ({type(exc).__name__}: "
                         f"{exc})") from exc


def _load_classifier(path: Path, labels: list[str], d: int, scalars: Mapping[str, Any]):
    """A predict-only ViewClassifier from its safetensors arrays, every shape checked."""
    from .classifier import CALIBRATIONS, ViewClassifier

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


def _duration_or_none(path: Path) -> float | None:
    from .audio import audio_info

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


@functools.lru_cache(maxsize=1)
def _tolerant_extractor_class():
    """The extractor class, built on first use (keeps ``import binser.model`` torch-free)."""
    from .features import SegmentFeatureExtractor

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
            except BinserError as exc:
                if not self.skip:
                    raise
                self.failures[index] = str(exc)
            except Exception as exc:   # a decoder's own exception: still one file's problem
                error = AudioError(path, f"cannot process ({type(exc).__name__}: {exc})")
                if not self.skip:
                    raise error from exc
                self.failures[index] = str(error)

    return TolerantExtractor


def _TolerantExtractor(*args: Any, **kwargs: Any):
    """A SegmentFeatureExtractor with per-file failure records (see the class above)."""
    return _tolerant_extractor_class()(*args, **kwargs)


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------

def _say(message: str, enabled: bool) -> None:
    if enabled:
        print(f"[binser] {message}", file=sys.stderr, flush=True)


def model_views(fusion: str | None, views: Sequence[str]) -> tuple[str, ...]:
    """Views a model needs: the fusion's, or the single view when ``fusion`` is None."""
    from .fusion import FUSIONS

    if fusion is None:
        if len(views) != 1:
            raise ConfigError(f"without a fusion, train exactly one view (got {list(views)})")
        return tuple(views)
    if fusion not in FUSIONS:
        raise ConfigError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    return tuple(FUSIONS[fusion])


def training_features(corpus, settings, views: tuple[str, ...],
                      finetuned_backbones: Mapping[str, Any] | None, progress: bool
                      ) -> tuple[dict[str, list[np.ndarray]], dict[str, Any]]:
    """Segment features ``{view: [(n_i, d)]}`` of every utterance and ``{view: Backbone}``.

    Frozen (``finetuned_backbones`` None): one backbone for all views, each file decoded
    once. Fine-tuned: each view's own network extracts that view.
    """
    from .experiment import extract_features
    from .features import SegmentFeatureExtractor

    if finetuned_backbones is None:
        features, backbone = extract_features(corpus, replace(settings, views=views), progress)
        return features, {v: backbone for v in views}
    missing = [v for v in views if v not in finetuned_backbones]
    if missing:
        raise ConfigError(f"no fine-tuned backbone for view(s) {', '.join(missing)}")
    features = {}
    for view in views:
        extractor = SegmentFeatureExtractor(finetuned_backbones[view], config=settings.frontend,
                                            views=(view,), cache_dir=settings.cache_dir,
                                            batch_size=settings.batch_size, progress=progress)
        features.update(extractor.extract([u.path for u in corpus]))
    return features, {v: finetuned_backbones[v] for v in views}


def nested_fusion_weights(pooled: Mapping[str, np.ndarray], y: np.ndarray, groups: np.ndarray,
                          labels: list[str], fusion: str | None, seed: int
                          ) -> tuple[dict[str, float], float | None]:
    """Fusion weights by grid search on out-of-fold probabilities over all speakers, and
    the out-of-fold UA they reach ({} and None without fusion)."""
    from .classifier import ViewClassifier
    from .fusion import FUSIONS, select_weights

    if fusion is None:
        return {}, None
    oof = {}
    for view in FUSIONS[fusion]:
        proba = ViewClassifier(random_state=seed).oof_proba(pooled[view], y, groups)
        oof[view] = proba   # columns follow np.unique(y) == labels (all classes present)
    return select_weights(oof, y, fusion, labels)


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
    ``settings.fusion_pooling``. ``finetuned_backbones``: {view: Backbone} fine-tuned per
    view (from :mod:`binser.finetune`); None: in mode ``finetune`` one network per view is
    fine-tuned here on all utterances (:func:`final_finetuned_backbones`), in mode
    ``frozen`` the frozen backbone of ``settings`` is used.
    ``cv_results``: a ``results.json`` dictionary of the same configuration for the model
    card; with ``cross_validate=True`` and none given, :func:`run_experiment` computes it.
    """
    from .classifier import ViewClassifier
    from .corpora import corpus as load_corpus
    from .preflight import screen_corpus

    settings.validate()
    views = model_views(fusion, settings.views)
    spec = PoolingSpec(pooling or settings.fusion_pooling, settings.blocks, settings.levels)
    corpus = (corpus_loader or load_corpus)(settings.dataset, settings.root,
                                            manifest=settings.manifest)
    # Bad files: stop before any expensive work, or leave them out (settings.on_error).
    corpus, _skipped = screen_corpus(corpus, settings.on_error, settings.frontend,
                                     progress=progress)
    labels = list(corpus.labels)
    y = np.array([u.label for u in corpus])
    groups = np.array([u.speaker for u in corpus])
    _say(f"training on all of {settings.dataset}: {len(corpus)} utterances, {len(labels)} "
         f"classes, {len(corpus.speakers)} speakers, views {', '.join(views)}", progress)
    if settings.mode == "finetune" and finetuned_backbones is None:
        finetuned_backbones = final_finetuned_backbones(corpus, settings, views, labels,
                                                        progress)
    features, backbones = training_features(corpus, settings, views, finetuned_backbones,
                                            progress)
    pooled = {v: spec.make().fit_transform(features[v]) for v in views}
    classifiers = {v: ViewClassifier(random_state=settings.seed).fit(pooled[v], y, groups)
                   for v in views}
    weights, oof_ua = nested_fusion_weights(pooled, y, groups, labels, fusion, settings.seed)
    if cross_validate and cv_results is None:
        from .experiment import run_experiment

        _say(f"cross-validating the configuration ({settings.protocol}) for the model card",
             progress)
        cv_results = run_experiment(settings, out=None, progress=progress, report=False)
    info = training_info(corpus, settings, features, classifiers, oof_ua, cv_results, fusion,
                         spec)
    model = Model(labels, views, backbones, classifiers, spec, fusion, weights,
                  settings.frontend, "frozen" if finetuned_backbones is None else "finetuned",
                  info)
    if out_dir is not None:
        model.save(out_dir, overwrite=overwrite)
        _say(f"model saved to {out_dir}", progress)
    return model


def final_finetuned_backbones(corpus, settings, views: Sequence[str], labels: list[str],
                              progress: bool = True) -> dict[str, Any]:
    """One network per view fine-tuned on every utterance of ``corpus`` with the settings of
    an experiment in mode ``finetune`` (preset, epochs, input size, seed)."""
    from .experiment import finetune_settings
    from .finetune import finetune_views

    _say(f"fine-tuning one network per view on all {len(corpus)} utterances", progress)
    backbones, _ = finetune_views(
        [u.path for u in corpus], np.array([labels.index(u.label) for u in corpus]),
        [u.speaker for u in corpus], settings.backbone, settings.weights, views,
        settings.frontend, finetune_settings(settings), cache_dir=settings.cache_dir,
        progress=progress, allow_random=settings.allow_random, n_classes=len(labels))
    return backbones


def training_info(corpus, settings, features, classifiers, oof_ua, cv_results, fusion, spec
                  ) -> dict[str, Any]:
    """Facts about the training data and protocol (model.json ``training``, model card)."""
    labels = list(corpus.labels)
    counts = {lab: sum(1 for u in corpus if u.label == lab) for lab in labels}
    view = next(iter(features))
    info: dict[str, Any] = {
        "dataset": settings.dataset,
        "corpus_folder": Path(settings.root).name,
        "synthetic": bool(settings.synthetic),
        "n_utterances": len(corpus),
        "n_speakers": len(corpus.speakers),
        "speakers": list(corpus.speakers),
        "label_counts": counts,
        "n_segments_per_view": int(sum(len(f) for f in features[view])),
        "n_skipped": len(corpus.problems),
        "seed": settings.seed,
        "classifier_selection": "C by speaker-grouped inner CV on all utterances",
        "fusion_selection": (None if fusion is None else
                             "grid search on out-of-fold probabilities over all speakers "
                             "(speaker-grouped, nested)"),
        "fusion_oof_ua": oof_ua,
        "inner_cv_ua": {v: float(c.best_score_) for v, c in classifiers.items()},
        "pooling": spec.name,
        "settings": _json_safe(settings.to_dict()),
        "cross_validation": _cv_summary(cv_results, spec.name, fusion),
    }
    return info


def _cv_summary(results: Mapping[str, Any] | None, pooling: str, fusion: str | None
                ) -> dict[str, Any] | None:
    """The runs of a results.json that describe this model's configuration."""
    if not results:
        return None
    wanted = {r["name"] for r in results.get("runs", [])
              if r["name"].endswith("/" + pooling) or r["name"].startswith("score-fusion/")
              or (fusion and r["name"] == f"feature-fusion/{fusion}")}
    runs = [{k: r[k] for k in ("name", "ua", "wa", "macro_f1", "ua_ci95") if k in r}
            for r in results.get("runs", []) if r["name"] in wanted]
    return {"protocol": results.get("protocol"), "n_folds": results.get("n_folds"),
            "n_utterances": results.get("n_utterances"), "runs": runs}


def _json_safe(value: Any) -> Any:
    """Round-trip through JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))


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


def _card_system(model: Model) -> list[str]:
    backbone = model.backbones[model.views[0]]
    weights = "ImageNet-pretrained" if backbone.pretrained else "RANDOM weights"
    how = ("fine-tuned per view" if model.mode == "finetuned"
           else "features of the pretrained network")
    return ["## System", "",
            f"- backbone: {backbone.name}, input {backbone.input_size} px, {weights}, "
            f"{model.mode} ({how})",
            f"- views: {', '.join(model.views)}; pooling: {model.pooling.name} "
            f"(blocks {model.pooling.blocks}, levels {model.pooling.levels})",
            "- per view: standardisation + linear SVM (class-balanced) + calibrated scores",
            f"- fusion: {model.fusion or 'none (single view)'} with weights {model.weights}",
            ""]


def _card_protocol(info: Mapping[str, Any]) -> list[str]:
    oof = info.get("fusion_oof_ua")
    oof_text = f" (out-of-fold UA {100 * oof:.1f} %)" if oof is not None else ""
    return ["## Protocol", "",
            "- trained on ALL utterances of the corpus (the final model);",
            f"- {info.get('classifier_selection', '')};",
            f"- fusion weights: {info.get('fusion_selection') or 'not applicable'}{oof_text}",
            ""]


_CARD_LIMITS = [
    "## Intended use and limits", "",
    "- Research on speech emotion recognition from stereo (binaural) recordings: predicts "
    "one of the training labels per file, with scores per label.",
    "- Scores are calibrated on the training corpus; on other recording set-ups, languages, "
    "speakers or label sets they are not reliable. Mono inputs make the side view silent.",
    "- Not for decisions about people (hiring, health, policing, surveillance).",
    "- Files are stored as JSON and safetensors only; loading runs no stored code.", ""]


def _card_scores(cv: Mapping[str, Any] | None) -> list[str]:
    if not cv:
        return ["## Cross-validated scores", "",
                "Not computed for this model (train with cross-validation to add them).", ""]
    lines = ["## Cross-validated scores", "",
             f"Protocol {cv.get('protocol')} ({cv.get('n_folds')} folds, "
             f"{cv.get('n_utterances')} utterances), speaker-independent:", "",
             "| run | UA % | WA % | macro-F1 % | UA 95% CI |", "|---|---|---|---|---|"]
    for r in cv.get("runs", []):
        lo, hi = r.get("ua_ci95", [float("nan")] * 2)
        lines.append(f"| {r['name']} | {100 * r['ua']:.1f} | {100 * r['wa']:.1f} | "
                     f"{100 * r['macro_f1']:.1f} | {100 * lo:.1f}-{100 * hi:.1f} |")
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
    """One line per file (``path: label (top scores)`` or ``path: ERROR cause``), plus one
    indented line per timeline segment when present."""
    if prediction.error is not None:
        cause = prediction.error.removeprefix(f"{prediction.path}: ")
        return f"{prediction.path}: ERROR {cause}"
    lines = [f"{prediction.path}: {prediction.label}  ({_top(prediction.scores, top)})"]
    for entry in prediction.timeline or []:
        lines.append(f"    {entry['start_s']:7.2f}-{entry['end_s']:7.2f} s  "
                     f"{_top(entry['scores'], top)}")
    return "\n".join(lines)
