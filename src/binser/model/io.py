"""Saving, loading and verifying a model folder.

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
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import __version__
from ..backbones import families, family
from ..config import FrontEndConfig
from ..errors import BinserError, ConfigError, ModelError
from ..features import file_sha256
from .card import model_card
from .predict import MODES, Model, PoolingSpec

FORMAT = "binser-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
MODEL_CARD = "MODEL_CARD.md"
MAX_JSON_BYTES = 16 << 20     # a model.json larger than this is refused unread
MAX_BLOCKS = 64               # pooling blocks / levels a model may ask for
MAX_MIN_UTTERANCES = 1_000_000
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
# saving
# --------------------------------------------------------------------------------------

def save_model(model: Model, out_dir: str | Path, overwrite: bool = False) -> Path:
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
        document = _write_files(model, tmp)
        _write_json(tmp / MODEL_JSON, document)
        if out.exists():
            shutil.rmtree(out)   # empty, or a model folder and overwrite=True
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    model.path, model.fingerprint = out, document["content_sha256"]
    return out


def _write_files(model: Model, folder: Path) -> dict[str, Any]:
    """Write weights, classifiers, normalisers and card into ``folder``; return
    model.json's content."""
    backbone_files = _write_backbones(model, folder)
    classifier_files, normaliser_files = {}, {}
    for view in model.views:
        name = f"classifier_{view}.safetensors"
        _save_classifier(model.classifiers[view], model.labels, view, folder / name)
        classifier_files[view] = name
        if model.speaker_norm:
            name = f"normaliser_{view}.safetensors"
            _save_normaliser(model.normalisers[view], view, folder / name)
            normaliser_files[view] = name
    (folder / MODEL_CARD).write_text(model_card(model), encoding="utf-8")
    files = sorted(set(backbone_files.values()) | set(classifier_files.values())
                   | set(normaliser_files.values()) | {MODEL_CARD})
    mode = 0o666 & ~_umask()   # safetensors writes 0600: share like any other file
    for name in files:
        os.chmod(folder / name, mode)
    document = _document(model, backbone_files, classifier_files, normaliser_files)
    document["sha256"] = {name: file_sha256(folder / name) for name in files}
    document["content_sha256"] = content_sha256(document)
    return document


def _write_backbones(model: Model, folder: Path) -> dict[str, str]:
    """One weights file per distinct network -> {view: file name}."""
    names: dict[str, str] = {}
    groups = model.backbone_groups()
    for backbone, views in groups:
        name = ("backbone.safetensors" if len(groups) == 1 and model.mode == "frozen"
                else f"backbone_{views[0]}.safetensors")
        backbone.save(folder / name, keep_head=model.mode != "frozen")
        names.update({v: name for v in views})
    return names


def _document(model: Model, backbone_files: dict[str, str], classifier_files: dict[str, str],
              normaliser_files: dict[str, str]) -> dict[str, Any]:
    """model.json without the checksums."""
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "binser_version": __version__,
        "labels": model.labels,
        "views": list(model.views),
        "mode": model.mode,
        "pooling": dataclasses.asdict(model.pooling),
        "fusion": {"name": model.fusion, "weights": model.weights},
        "frontend": model.frontend.to_dict(),
        "backbone": _backbone_document(model),
        "backbone_files": backbone_files,
        "classifier_files": classifier_files,
        "classifiers": {v: _classifier_scalars(model.classifiers[v]) for v in model.views},
        "speaker_norm": model.speaker_norm,
        "training": model.info,
    }
    if model.speaker_norm:
        document.update(speaker_norm_definition=SPEAKER_NORM_DEFINITION,
                        speaker_norm_min_utterances=model.min_utterances,
                        normaliser_files=normaliser_files)
    return document


def _backbone_document(model: Model) -> dict[str, Any]:
    """model.json's ``backbone``: family, identity, and the family's own fields
    (``describe``: CNN input size; encoder layer and config)."""
    first = model.backbones[model.views[0]]
    return {"family": first.family, "name": first.name,
            "feature_dim": int(first.feature_dim),
            "weights_id": {v: model.backbones[v].weights_id for v in model.views},
            "pretrained": bool(first.pretrained), "source": str(first.source),
            **first.describe(model.mode, model.layer)}

# --------------------------------------------------------------------------------------
# writing helpers
# --------------------------------------------------------------------------------------

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
# loading
# --------------------------------------------------------------------------------------

def load_model(path: str | Path) -> Model:
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
    name = spec.get("family", "imagenet")   # models saved before families: ImageNet CNNs
    if name not in families():
        raise ModelError(f"{root / MODEL_JSON}: unknown backbone family {name!r} "
                         f"(known: {', '.join(families())})")
    pooling = PoolingSpec(**document["pooling"])
    _check_pooling(pooling)
    backbone_family = family(name).implementation()
    layer = backbone_family.model_spec(root / MODEL_JSON, spec, mode)
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
    backbones = backbone_family.model_backbones(   # the slow part, done last
        root, spec, {v: document["backbone_files"][v] for v in views}, views)
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


