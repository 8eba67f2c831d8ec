"""`binser bench`: binser side by side with its peers and with the machine's limit.

Every figure is measured on the machine it runs on, over EMOVO (or a subset with
``quick=True``):

* **front end** (:func:`frontend_speed`): seconds of audio per wall second ("x real time") of
  binser's path, decode -> four views -> log-Mel -> segments -> 3-channel images, with one
  thread per core over files; and the same work done by :func:`librosa_reference_images`, a
  straightforward per-file librosa implementation (the reference), as a ratio. Both outputs
  are compared value by value on a few files.
* **extraction** (:func:`extraction_speed`): images per second of binser's batch path
  (resize + normalise + network + copy out) against a bare PyTorch loop over the same model,
  batch and threads on pre-made tensors (the ceiling), for each backbone and input size; on
  the CPU, and also on the GPU where torch sees one.
* **study** (:func:`study_run`): wall time and peak memory (RSS summed over the process tree,
  sampled every 0.1 s) of ``binser experiment`` LOSO in a fresh cache folder (cold), then
  the same command again (warm); with whisper-base where its weights are available, else
  the ImageNet CNN.
* **encoder** (:func:`encoder_speed`): Whisper-base frames per second of binser's batched,
  masked path against a bare PyTorch loop over the same encoder on pre-made log-Mels (the
  ceiling), where the weights are available (``../shared/models/whisper-base``).
* **Ray** (:func:`ray_speed`): feature extraction (whisper-base where its weights are
  available, else efficientnet_lite0) with the local executor and with the Ray executor at 1
  and 2 workers on a local Ray cluster of this machine's cores, as ratios to local (actor
  start and backbone shipping included), features checked identical; the GPU's files/s
  where torch sees one.
* **openSMILE** (:func:`opensmile_speed`): decode + ComParE 2016 functionals of the left
  channel, x real time, with as many worker threads as binser's front end; the ratio is
  binser's front end (four views) over openSMILE (one view).
* **serve** (:func:`serve_load`; with ``--serve-model FOLDER`` only, else skipped with a
  message): ``binser serve`` on a free 127.0.0.1 port as a subprocess; 16 concurrent
  clients x 25 uploads to POST /predict (requests/s, p50/p99 latency, errors, server RSS
  before/after) of every 4th EMOVO file, then N = 1, 2, 4, 8, 12, 16 concurrent real-time
  WebSocket streams, each playing its own ~30 s of joined EMOVO utterances
  (:func:`long_stream_files`; per-window latency p50/p99, whether each N keeps up with real
  time; stops at the first that does not). The server is always terminated. Whisper
  models also get the encoder's floor (:func:`serve_ceiling`): the GFLOP one upload
  encodes and the uploads per second one core could serve at its float32 matrix-product
  rate with every other cost at zero.
* **scenes** (:func:`scenes_speed`): ``binser scenes`` with its default settings over every
  4th EMOVO file (the quick subset with ``quick=True``), on one thread: decode, room and
  HRIR rendering, noise, competing talkers and FLAC writing, x real time.
* **startup** (:func:`binser.startup_time.bench_part`): wall time of ``binser --help``,
  ``binser datasets`` and ``binser inspect`` without its file (an argument error), median of
  3 fresh processes each, and the heavy modules (SciPy, scikit-learn, PyTorch ...) each one
  imported.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .audio import audio_info
from .config import FrontEndConfig
from .errors import BinserError, ConfigError, CorpusError
from .progress import StageTracker, above_bars, bar
from .spectrogram import views_images
from .startup_time import bench_part as startup_part
from .validation import check_choices, check_float_range, check_int_range
from .views import VIEWS, MonoInputWarning

BACKBONE_CASES = (("efficientnet_lite0", 112), ("efficientnet_lite0", 160),
                  ("efficientnet_lite0", 224), ("alexnet", 227))
QUICK_SENTENCES = ("b1", "b2")          # --quick: 2 sentences x 7 emotions x 6 actors = 84 files


def default_emovo_root() -> Path:
    """$BINSER_EMOVO, else ``../shared/data/emovo`` from the current folder."""
    return Path(os.environ.get("BINSER_EMOVO", Path("..") / "shared" / "data" / "emovo"))


def emovo_files(root: str | Path, quick: bool = False) -> list[Path]:
    """EMOVO's ``<actor>/<emotion>-<actor>-<sentence>.flac`` files, sorted (``quick``: the
    sentences in :data:`QUICK_SENTENCES` only). CorpusError if there are none."""
    root = Path(root)
    files = sorted(root.glob("*/*.flac")) if root.is_dir() else []
    if quick:
        files = [f for f in files if f.stem.rsplit("-", 1)[-1] in QUICK_SENTENCES]
    if not files:
        raise CorpusError(f"{root}: no EMOVO corpus here (expected <actor>/*.flac); pass "
                          "--root or set BINSER_EMOVO")
    return files


def total_duration_s(paths: Sequence[Path]) -> float:
    """Summed duration of ``paths`` in seconds (from the file headers)."""
    return float(sum(audio_info(p).duration_s for p in paths))


def _rate(audio_s: float, wall_s: float) -> float:
    return audio_s / wall_s if wall_s > 0 else float("inf")


# ------------------------------------------------------------------------------ front end

def librosa_reference_images(path: Path, config: FrontEndConfig) -> dict[str, np.ndarray]:
    """The benchmark's reference: the same front end written plainly with librosa, per file,
    per view and per segment. ``{view: (n, 3, F, L) float32}``."""
    import librosa

    audio, sr = librosa.load(path, sr=config.sample_rate, mono=False)
    left, right = (audio, audio) if audio.ndim == 1 else (audio[0], audio[1])
    s = config.side_scale
    signals = {"left": left, "right": right, "mid": s * (left + right), "side": s * (left - right)}
    out = {}
    for view, x in signals.items():
        mel = librosa.feature.melspectrogram(
            y=x, sr=sr, n_fft=config.n_fft, hop_length=config.hop_length,
            win_length=config.win_length, window=config.window, center=config.center,
            pad_mode="constant", power=2.0, n_mels=config.n_mels, fmin=config.fmin,
            fmax=config.fmax)
        logmel = 10.0 * np.log10(np.maximum(mel, config.power_floor))
        frames, hop = config.segment_frames, config.segment_hop
        n = 1 + max(0, -(-(logmel.shape[1] - frames) // hop))   # cover every frame
        pad = (n - 1) * hop + frames - logmel.shape[1]
        if pad > 0:   # the last segment runs past the end: padded with the minimum
            logmel = np.pad(logmel, ((0, 0), (0, pad)), constant_values=logmel.min())
        images = []
        for start in range(0, logmel.shape[1] - frames + 1, hop):
            seg = logmel[:, start:start + frames]
            planes = [seg, librosa.feature.delta(seg, width=config.delta_width, order=1),
                      librosa.feature.delta(seg, width=config.delta_width, order=2)]
            scaled = []
            for plane in planes:
                span = plane.max() - plane.min()
                scaled.append((plane - plane.min()) / span if span > 0 else plane * 0.0)
            images.append(np.stack(scaled))
        out[view] = np.stack(images).astype(np.float32)
    return out


def run_over_files(func: Callable[[Path], Any], paths: Sequence[Path], jobs: int,
                   desc: str = "files") -> float:
    """Wall seconds to apply ``func`` to every path with ``jobs`` threads (results dropped;
    a progress bar ``desc`` counts the files)."""
    start = time.perf_counter()
    with warnings.catch_warnings(), bar(total=len(paths), desc=desc, unit="file") as done:
        warnings.simplefilter("ignore", MonoInputWarning)
        if jobs <= 1:
            for p in paths:
                func(p)
                done.update()
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                for _ in pool.map(func, paths):
                    done.update()
    return time.perf_counter() - start


IMAGE_TOLERANCE = 1e-3   # largest |binser - librosa| image value accepted (images in [0, 1])


def frontend_speed(paths: Sequence[Path], config: FrontEndConfig = FrontEndConfig(),
                   jobs: int | None = None, reference: bool = True,
                   compare_files: int = 3, reference_every: int = 1) -> dict[str, Any]:
    """binser's front end (and the librosa reference) over ``paths``, x real time.

    Returns ``audio_s``, ``jobs``, ``binser_s``/``binser_xrt``, and with ``reference``:
    ``librosa_s``/``librosa_xrt`` and ``vs_librosa`` (speed ratio, both timed on every
    ``reference_every``-th file: the reference is slow) and the image comparison of
    :func:`compare_to_reference` over the first ``compare_files`` files (``max_abs_diff``,
    ``compared_views``, ``silent_views_skipped``); BinserError if the images disagree.
    """
    from .features import file_images

    jobs = jobs or os.cpu_count() or 1
    audio_s = total_duration_s(paths)
    views_images({v: np.zeros(config.sample_rate, np.float32) for v in VIEWS}, config)  # warm
    out: dict[str, Any] = {"audio_s": audio_s, "files": len(paths), "jobs": jobs}
    out["binser_s"] = run_over_files(lambda p: file_images(p, VIEWS, config), paths, jobs,
                                     "binser")
    out["binser_xrt"] = _rate(audio_s, out["binser_s"])
    if reference:
        sample = list(paths[::reference_every])
        sample_s = total_duration_s(sample)
        ours_s = run_over_files(lambda p: file_images(p, VIEWS, config), sample, jobs,
                                "binser (reference sample)")
        out["librosa_files"] = len(sample)
        out["librosa_s"] = run_over_files(lambda p: librosa_reference_images(p, config),
                                          sample, jobs, "librosa reference")
        out["librosa_xrt"] = _rate(sample_s, out["librosa_s"])
        out["vs_librosa"] = _rate(sample_s, ours_s) / out["librosa_xrt"]
        out.update(compare_to_reference(paths[:compare_files], config))
    return out


def compare_to_reference(paths: Sequence[Path], config: FrontEndConfig = FrontEndConfig(),
                         tolerance: float = IMAGE_TOLERANCE) -> dict[str, Any]:
    """binser's segment images against :func:`librosa_reference_images`, value by value.

    Only views that carry signal are compared: a *silent* view
    (:func:`binser.views.silent_views`, e.g. the Side of a mono file, all zeros) gets no
    images from binser by design, and the reference's min-max scaled images of it are
    amplified rounding noise. Returns ``max_abs_diff`` (largest difference over the views
    compared; None if there were none), ``compared_views`` and ``silent_views_skipped``
    (counts over files x views). BinserError naming the file and view when a view's images
    differ in number or by more than ``tolerance``.
    """
    from .features import file_images

    worst, compared, skipped = None, 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MonoInputWarning)
        for p in paths:
            ours, ref = file_images(p, VIEWS, config), librosa_reference_images(p, config)
            for v in VIEWS:
                if not len(ours[v]):   # a silent view: no images by design
                    skipped += 1
                    continue
                diff = _image_difference(p, v, ours[v], ref[v], tolerance)
                worst = diff if worst is None else max(worst, diff)
                compared += 1
    return {"max_abs_diff": worst, "compared_views": compared,
            "silent_views_skipped": skipped}


def _image_difference(path: Path, view: str, ours: np.ndarray, ref: np.ndarray,
                      tolerance: float) -> float:
    """Largest |ours - ref| of one view's images; BinserError beyond ``tolerance``."""
    if ours.shape != ref.shape:
        raise BinserError(f"front end check failed: {path}: {view} view gives images of "
                          f"shape {ours.shape} in binser but {ref.shape} in the librosa "
                          "reference")
    diff = float(np.abs(ours - ref).max()) if ours.size else 0.0
    if not diff <= tolerance:
        raise BinserError(f"front end check failed: {path}: {view} view images differ from "
                          f"the librosa reference by up to {diff:.3g} (tolerance "
                          f"{tolerance:g}; images are in [0, 1])")
    return diff


def agreement_text(fe: dict[str, Any]) -> str:
    """How binser's images compare to the reference, for the report line."""
    if fe.get("max_abs_diff") is None:
        return "images not compared (no view with signal among the files compared)"
    skipped = fe.get("silent_views_skipped", 0)
    note = f", {skipped} silent view(s) skipped" if skipped else ""
    return (f"images agree to {fe['max_abs_diff']:.1e} over {fe['compared_views']} "
            f"view(s){note}")


# ----------------------------------------------------------------------------- extraction

def best_rates(steps: dict[str, Callable[[], Any]], batch: int, seconds: float
               ) -> dict[str, float]:
    """Images per second of each ``steps[name]()`` (one batch each), measured by turns.

    After one warm-up call each, the steps run in alternation for ``seconds`` (at least 3
    rounds); each gets the time of its fastest call. Alternating and taking the best call
    keeps the comparison fair on a machine shared with other processes.
    """
    for step in steps.values():
        step()
    best = {name: float("inf") for name in steps}
    rounds, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or rounds < 3:
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            best[name] = min(best[name], time.perf_counter() - t0)
        rounds += 1
    return {name: batch / t for name, t in best.items()}


def extraction_steps(backbone, batch: int, device: str = "cpu") -> dict[str, Callable[[], Any]]:
    """binser's batch step (default extractor settings, 64 x 64 images in [0, 1] from host
    memory, features copied back) and the bare-PyTorch steps in both memory layouts on
    pre-made normalised tensors already on ``device`` (a copy of the network for the layout
    binser does not use, so no step converts weights). On CUDA each bare step synchronises."""
    import copy

    import torch

    from .features import SegmentFeatureExtractor

    extractor = SegmentFeatureExtractor(backbone, batch_size=batch, progress=False)
    ours_cl = extractor.channels_last
    backbone.model.to(device=device,
                      memory_format=torch.channels_last if ours_cl else torch.contiguous_format)
    other = copy.deepcopy(backbone.model).to(
        memory_format=torch.contiguous_format if ours_cl else torch.channels_last)
    size = backbone.input_size
    images = np.random.default_rng(0).random((batch, 3, 64, 64), dtype=np.float32)
    ready = torch.randn(batch, 3, size, size, device=device)
    ready_cl = ready.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def bare(model, x: "torch.Tensor") -> Callable[[], Any]:
        def step():
            with torch.inference_mode():
                model(x)
            sync()
        return step

    cl_model, nchw_model = (backbone.model, other) if ours_cl else (other, backbone.model)
    return {"binser": lambda: extractor._features(images),
            "bare_nchw": bare(nchw_model, ready),
            "bare_channels_last": bare(cl_model, ready_cl)}


def extraction_speed(cases: Sequence[tuple[str, int]] = BACKBONE_CASES, batch: int = 64,
                     threads: int | None = None, seconds: float = 3.0, device: str = "cpu"
                     ) -> list[dict[str, Any]]:
    """Per (backbone, input size): ``binser_img_s``, ``ceiling_img_s`` (the faster bare
    layout), both bare rates and ``ratio`` = binser / ceiling, on ``device`` ("cpu" or a
    CUDA device). AlexNet runs with random weights (speed does not depend on the values)."""
    import torch

    from .backbones import get_backbone, set_threads

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    used = set_threads(threads)
    rows = []
    for name, size in bar(cases, desc=f"backbones on {device}", unit="backbone"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backbone = get_backbone(name, weights="random" if name == "alexnet" else None,
                                    input_size=size, allow_random=True)
        backbone.model.eval()
        rates = best_rates(extraction_steps(backbone, batch, device), batch, seconds)
        ceiling = max(rates["bare_nchw"], rates["bare_channels_last"])
        rows.append({"backbone": name, "input_size": size, "batch": batch, "threads": used,
                     "device": str(device),
                     "binser_img_s": rates["binser"], "ceiling_img_s": ceiling,
                     "bare_nchw_img_s": rates["bare_nchw"],
                     "bare_channels_last_img_s": rates["bare_channels_last"],
                     "ratio": rates["binser"] / ceiling, "torch": torch.__version__})
    return rows


# ------------------------------------------------------------------------------- encoders

def default_whisper_weights() -> Path | None:
    """$BINSER_WHISPER_BASE, else ``../shared/models/whisper-base`` if it exists."""
    path = Path(os.environ.get("BINSER_WHISPER_BASE",
                               Path("..") / "shared" / "models" / "whisper-base"))
    return path if (path / "model.safetensors").is_file() else None


def encoder_speed(paths: Sequence[Path], weights: Path, name: str = "whisper-base",
                  layer: int | None = None, threads: int | None = None, rounds: int = 2,
                  device: str = "cpu") -> dict[str, Any]:
    """Encoder frames per second (20 ms frames, one layer) over the four views of ``paths``.

    ``binser``: :class:`~binser.features.FrameFeatureExtractor`'s encoding of the decoded
    view signals (log-Mel, each signal alone on one torch thread, ``threads`` side by side,
    output copied out). ``ceiling``: the faster of two bare PyTorch loops over the same
    encoder on pre-made log-Mel tensors at their real length (nothing copied out): one
    utterance after another with ``threads`` intra-op threads, and the same single-threaded
    side-by-side scheme as binser. Each is timed ``rounds`` times, by turns; the best round
    counts.
    """
    import torch

    from .backbones import set_threads
    from .backbones.whisper import load_whisper
    from .features import FrameFeatureExtractor, file_views
    from .parallel import single_thread_map

    used = set_threads(threads)
    backbone = load_whisper(name, weights=weights)
    if str(device).startswith("cuda"):
        backbone.to(device)
    layer = backbone.n_layers if layer is None else layer   # the default (auto) runs all
    signals = []
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MonoInputWarning)
            views, silent = file_views(path)
        signals += [views[v] for v in VIEWS if v not in silent]
    mels = [torch.from_numpy(backbone.log_mel(x)[None]).to(backbone.device) for x in signals]
    frames = sum((m.shape[-1] + 1) // 2 for m in mels)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    extractor = FrameFeatureExtractor(backbone, layers=[layer], num_threads=used,
                                      progress=False)

    def ours():
        extractor._encode_signals(signals)
        sync()

    def forward(mel):
        with torch.inference_mode():
            return backbone.model(mel, None, [layer])

    def bare():
        for mel in mels:
            forward(mel)
        sync()

    def bare_parallel():
        single_thread_map(forward, sorted(mels, key=lambda m: -m.shape[-1]), used)

    best = {"binser": float("inf"), "bare": float("inf"), "bare_parallel": float("inf")}
    with bar(total=3 * rounds, desc=f"{name} on {device} (binser, bare, bare parallel)",
             unit="pass") as done:
        for _ in range(rounds):
            for key, step in (("binser", ours), ("bare", bare),
                              ("bare_parallel", bare_parallel)):
                t0 = time.perf_counter()
                step()
                best[key] = min(best[key], time.perf_counter() - t0)
                done.update()
    best["bare"] = min(best["bare"], best.pop("bare_parallel"))
    audio_s = sum(len(x) for x in signals) / 16000.0
    return {"backbone": name, "layer": layer, "device": str(device), "threads": used,
            "signals": len(signals), "frames": frames,
            "binser_frames_s": frames / best["binser"], "ceiling_frames_s": frames / best["bare"],
            "ratio": best["bare"] / best["binser"], "binser_xrt": audio_s / best["binser"],
            "torch": torch.__version__}


# ---------------------------------------------------------------------------------- study

def _tree_rss(process) -> int:
    """Resident bytes of ``process`` and all its descendants (0 for vanished ones)."""
    import psutil

    total = 0
    try:
        members = [process] + process.children(recursive=True)
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(command: Sequence[str], interval_s: float = 0.1,
                 log: Path | None = None) -> dict[str, Any]:
    """Run ``command``; return ``wall_s``, ``peak_rss_mb`` (process tree) and ``returncode``."""
    import psutil

    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
    sink = open(log, "w") if log is not None else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        child = subprocess.Popen(list(command), stdout=sink, stderr=subprocess.STDOUT)
        watched = psutil.Process(child.pid)
        peak = 0
        while child.poll() is None:
            peak = max(peak, _tree_rss(watched))
            time.sleep(interval_s)
        wall = time.perf_counter() - start
    finally:
        if log is not None:
            sink.close()
    return {"wall_s": wall, "peak_rss_mb": peak / 2**20, "returncode": child.returncode}


def quick_root(files: Sequence[Path], work: Path) -> Path:
    """A corpus folder of symbolic links to ``files`` (``<actor>/<name>``) under ``work``."""
    root = work / "corpus"
    for f in files:
        link = root / f.parent.name / f.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(f.resolve())
    return root


def study_run(root: Path, work: Path, extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """``binser experiment`` on EMOVO LOSO twice in ``work``: cold (fresh cache), then warm.

    Returns ``cold`` and ``warm`` (each ``wall_s``, ``peak_rss_mb``, the experiment's own
    stage ``timing``) and whether the two runs' results are identical.
    """
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    args = ["experiment", "--dataset", "emovo", "--root", str(root), *extra_args]
    out: dict[str, Any] = {"command": " ".join(["binser", *args, "--out", "OUT",
                                                "--cache-dir", "CACHE"])}
    for phase in bar(("cold", "warm"), desc="experiment runs (cold, warm)", unit="run"):
        target = work / f"out_{phase}"
        command = [sys.executable, "-m", "binser", *args, "--out", str(target),
                   "--cache-dir", str(cache)]
        measured = run_measured(command, log=work / f"{phase}.log")
        if measured["returncode"] != 0:
            tail = (work / f"{phase}.log").read_text(errors="replace")[-2000:]
            raise ConfigError(f"binser experiment failed ({phase}, exit "
                              f"{measured['returncode']}):\n{tail}")
        results = json.loads((target / "results.json").read_text())
        measured["timing"] = results.get("timing", {})
        measured["runs"] = {r["name"]: r["ua"] for r in results["runs"]}
        out[phase] = measured
        out[f"{phase}_runs"] = results["runs"]     # every metric, for the comparison below
    out["identical"] = out.pop("cold_runs") == out.pop("warm_runs")
    return out


# ------------------------------------------------------------------------------- openSMILE

def opensmile_speed(paths: Sequence[Path], jobs: int | None = None,
                    feature_set: str = "compare2016") -> dict[str, Any]:
    """Decode + openSMILE ``feature_set`` functionals of the left channel, x real time."""
    from .baselines import opensmile_speed as xrt

    jobs = jobs or os.cpu_count() or 1
    with warnings.catch_warnings(), bar(total=1, desc=f"{feature_set} functionals of "
                                                      f"{len(paths)} files", unit="pass") as done:
        warnings.simplefilter("ignore")
        rate = xrt(paths, feature_set=feature_set, workers=jobs)
        done.update()
    return {"feature_set": feature_set, "view": "left", "jobs": jobs, "xrt": rate}


# ------------------------------------------------------------------------------------- Ray

def ray_speed(paths: Sequence[Path], whisper: Path | None = None,
              workers: Sequence[int] = (1, 2), threads: int | None = None) -> dict[str, Any]:
    """Feature extraction of ``paths`` (no cache: everything computed) with the local executor
    and with :class:`binser.executors.RayExecutor` at each count of ``workers`` on a local Ray
    cluster of ``threads`` CPUs (default: every core); files/s, each Ray figure as a ratio to
    local (wall time includes starting the actors and shipping the backbone), and whether
    the features are identical. Backbone: whisper-base when ``whisper`` weights are given,
    else efficientnet_lite0 (224 px). Where torch sees a GPU, also the local GPU's files/s."""
    import ray
    import torch

    from .executors import RayExecutor
    from .features import FrameFeatureExtractor, SegmentFeatureExtractor
    from .parallel import check_workers

    cores = check_workers(threads)
    if whisper is not None:
        from .backbones.whisper import load_whisper

        backbone = load_whisper("whisper-base", weights=whisper)
        make = lambda b: FrameFeatureExtractor(b, layers=(b.n_layers,),  # noqa: E731
                                               num_threads=cores, progress=False)
    else:
        from .backbones import get_backbone

        backbone = get_backbone("efficientnet_lite0", input_size=224)
        make = lambda b: SegmentFeatureExtractor(b, num_threads=cores,  # noqa: E731
                                                 progress=False)

    def flat(result: dict) -> list[np.ndarray]:
        if whisper is not None:
            result = next(iter(result.values()))
        return [a for v in sorted(result) for a in result[v]]

    def timed(run: Callable[[], dict]) -> tuple[float, list[np.ndarray]]:
        t0 = time.perf_counter()
        out = run()
        return time.perf_counter() - t0, flat(out)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MonoInputWarning)
        local_s, reference = timed(lambda: make(backbone).extract(paths))
        started = not ray.is_initialized()
        if started:
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        rows = []
        try:
            for n in bar(workers, desc="Ray worker counts", unit="setting"):
                def on_ray(n: int = n) -> dict:
                    extractor = make(backbone)
                    RayExecutor(workers=n).prepare_features(extractor, paths, progress=False)
                    return extractor.extract(paths)

                wall, got = timed(on_ray)
                rows.append({"workers": n, "wall_s": wall, "files_s": len(paths) / wall,
                             "vs_local": local_s / wall,
                             "identical": len(got) == len(reference) and all(
                                 np.array_equal(a, b) for a, b in zip(got, reference))})
        finally:
            if started:
                ray.shutdown()
        out: dict[str, Any] = {"backbone": backbone.name, "files": len(paths), "cores": cores,
                               "local_wall_s": local_s, "local_files_s": len(paths) / local_s,
                               "ray": rows}
        if torch.cuda.is_available():
            backbone.to("cuda")
            make(backbone).extract(paths[:4])                      # warm-up
            gpu_s, _ = timed(lambda: make(backbone).extract(paths))
            out.update(gpu_name=torch.cuda.get_device_name(0), gpu_wall_s=gpu_s,
                       gpu_files_s=len(paths) / gpu_s)
    return out


# --------------------------------------------------------------------------------- serve

SERVE_STREAMS = (1, 2, 4, 8, 12, 16)
STREAM_SECONDS = 30.0      # each real-time stream plays about this much audio


def long_stream_files(files: Sequence[Path], folder: Path, count: int,
                      seconds: float = STREAM_SECONDS) -> list[Path]:
    """``count`` WAV files (16-bit, 16 kHz, stereo) of about ``seconds`` each, made by
    joining consecutive stereo ``files`` end to end (cycling), so each real-time stream
    gives dozens of windows rather than a handful (EMOVO utterances last 1-9 s)."""
    import itertools

    import soundfile as sf

    from .audio import load_audio

    stereo = [p for p in files if audio_info(p).channels == 2]
    if not stereo:
        raise ConfigError("no stereo file to build the real-time streams from")
    folder.mkdir(parents=True, exist_ok=True)
    pool = itertools.cycle(stereo)
    out = []
    for k in range(count):
        parts, total = [], 0
        while total < seconds * 16000:
            audio = load_audio(next(pool), sr=16000)
            parts.append(audio)
            total += audio.shape[1]
        path = folder / f"stream{k:02d}.wav"
        sf.write(path, np.concatenate(parts, axis=1).T, 16000, subtype="PCM_16")
        out.append(path)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not len(values):
        return {"p50": None, "p99": None}
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def _upload_load(url: str, files: Sequence[Path], clients: int, uploads: int,
                 deadline: float, request_timeout_s: float) -> dict[str, Any]:
    """``clients`` threads, each POSTing ``uploads`` files (cycling) to ``url``/predict."""
    import threading

    import httpx

    data = {p: p.read_bytes() for p in files}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=request_timeout_s, trust_env=False) as http:
            for j in range(uploads):
                if time.monotonic() > deadline:
                    with lock:
                        errors.append("time limit reached before this upload")
                    continue
                path = files[(i * uploads + j) % len(files)]
                t0 = time.perf_counter()
                try:
                    r = http.post("/predict", files={"file": (path.name, data[path],
                                                              "application/octet-stream")})
                    problem = None if r.status_code == 200 else f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - t0
                with lock:
                    if problem:
                        errors.append(problem)
                    else:
                        latencies.append(elapsed)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + request_timeout_s)
    wall = time.perf_counter() - start
    ms = [1000.0 * x for x in latencies]
    q = _percentiles(ms)
    return {"clients": clients, "uploads_per_client": uploads, "requests": clients * uploads,
            "ok": len(latencies), "errors": len(errors) + sum(t.is_alive() for t in threads),
            "error_kinds": sorted(set(errors))[:5], "wall_s": wall,
            "requests_s": len(latencies) / wall if wall > 0 else None,
            "p50_ms": q["p50"], "p99_ms": q["p99"],
            "mean_ms": float(np.mean(ms)) if ms else None}


def _one_stream(port: int, path: Path, chunk_s: float, keep_up_s: float,
                timeout_s: float) -> dict[str, Any]:
    """One real-time stream of ``path`` (s16le at its own rate, ``chunk_s`` chunks paced at
    real time) over WS /stream; the windows' reported and measured latencies."""
    import threading

    import soundfile as sf
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    pcm, sr = sf.read(path, dtype="int16", always_2d=True)
    audio_s = len(pcm) / sr
    step = max(1, int(round(chunk_s * sr)))
    out: dict[str, Any] = {"file": path.name, "audio_s": audio_s, "windows": 0,
                           "error": None, "kept_up": False}
    sent: list[tuple[float, float]] = []        # (audio sent up to, s; wall time)
    got: list[tuple[float, float, float]] = []  # (window end, s; latency_ms; wall time)
    state: dict[str, Any] = {"end": None, "error": None}
    import inspect

    direct = {"proxy": None} if "proxy" in inspect.signature(connect).parameters else {}
    try:
        with connect(f"ws://127.0.0.1:{port}/stream", open_timeout=10, close_timeout=5,
                     max_size=1 << 22, **direct) as ws:   # loopback: never via a proxy
            ws.send(json.dumps({"type": "start", "sample_rate": sr,
                                "channels": int(pcm.shape[1]), "format": "s16le"}))
            ready = json.loads(ws.recv(timeout=10))
            if ready.get("type") != "ready":
                raise RuntimeError(f"no ready message: {ready}")

            def receive() -> None:
                limit = time.monotonic() + timeout_s
                try:
                    while time.monotonic() < limit:
                        m = json.loads(ws.recv(timeout=max(0.1, limit - time.monotonic())))
                        now = time.perf_counter()
                        if m.get("type") == "window":
                            got.append((float(m["end_s"]), float(m["latency_ms"]), now))
                        elif m.get("type") == "end":
                            state["end"] = now
                            return
                        else:
                            state["error"] = f"{m.get('code')}: {m.get('message')}"
                            return
                    state["error"] = "no end message within the time limit"
                except (ConnectionClosed, TimeoutError) as exc:
                    state["error"] = f"{type(exc).__name__}: {exc}"

            receiver = threading.Thread(target=receive, daemon=True)
            receiver.start()
            began = time.perf_counter()
            for s in range(0, len(pcm), step):
                piece = pcm[s:s + step]
                due = began + (s + len(piece)) / sr   # this chunk is "recorded" at its end
                time.sleep(max(0.0, due - time.perf_counter()))
                ws.send(piece.tobytes())
                sent.append(((s + len(piece)) / sr, time.perf_counter()))
                if state["error"]:
                    break
            ws.send(json.dumps({"type": "stop"}))
            receiver.join(timeout_s)
    except Exception as exc:   # a refused connection, a timeout: this stream failed
        state["error"] = state["error"] or f"{type(exc).__name__}: {exc}"
    wall_ms = []
    for end_s, _, t in got:   # the chunk holding the window's last sample, when it was sent
        sent_t = next((st for upto, st in sent if upto >= end_s - 1e-6),
                      sent[-1][1] if sent else t)
        wall_ms.append(1000.0 * (t - sent_t))
    out["windows"] = len(got)
    out["latency_ms"] = [g[1] for g in got]
    out["wall_ms"] = wall_ms
    out["error"] = state["error"]
    if state["end"] is not None and sent:
        out["end_after_audio_s"] = state["end"] - (began + audio_s)
        out["kept_up"] = state["error"] is None and out["end_after_audio_s"] <= keep_up_s
    return out


def _stream_load(port: int, files: Sequence[Path], n: int, chunk_s: float, keep_up_s: float,
                 timeout_s: float) -> dict[str, Any]:
    """``n`` concurrent real-time streams (stream k plays ``files[k % len(files)]``)."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        rows = list(pool.map(lambda k: _one_stream(port, files[k % len(files)], chunk_s,
                                                   keep_up_s, timeout_s), range(n)))
    reported = [x for r in rows for x in r.pop("latency_ms")]
    measured = [x for r in rows for x in r.pop("wall_ms")]
    q, w = _percentiles(reported), _percentiles(measured)
    return {"streams": n, "windows": len(reported),
            "latency_p50_ms": q["p50"], "latency_p99_ms": q["p99"],
            "wall_p50_ms": w["p50"], "wall_p99_ms": w["p99"],
            "kept_up": all(r["kept_up"] for r in rows),
            "errors": [r["error"] for r in rows if r["error"]], "per_stream": rows}


def whisper_encoder_flops(frames: int, n_mels: int, d: int, ffn: int, blocks: int) -> int:
    """Floating-point operations of Whisper's encoder on one Mel chunk of ``frames`` frames,
    through ``blocks`` Transformer blocks (a multiply-add counts 2): the conv stem
    ``2*n_mels*3*d*T + 2*d*3*d*S`` (conv1 k=3 on ``T`` frames, conv2 k=3 stride 2 to
    ``S = ceil(T/2)`` tokens) plus per block ``8*S*d^2`` (q, k, v, out projections) +
    ``4*S^2*d`` (scores and weighted sum) + ``4*S*d*ffn`` (the two FFN layers). Biases,
    norms, GELU and softmax are left out (a lower bound)."""
    t = int(frames)
    tokens = (t + 1) // 2
    stem = 2 * n_mels * 3 * d * t + 2 * d * 3 * d * tokens
    block = 8 * tokens * d * d + 4 * tokens * tokens * d + 4 * tokens * d * ffn
    return stem + blocks * block


def serve_encoder_work(model, files: Sequence[Path]) -> dict[str, float]:
    """Encoder work one ``POST /predict`` with its timeline does for each of ``files``
    (a Whisper model): the file's views and every timeline window's views, identical
    views once and silent views skipped, as the server encodes them. Returns the mean per
    upload of ``view_seconds`` (seconds of view audio encoded) and ``gflop``
    (:func:`whisper_encoder_flops` of each Mel chunk, 100 frames a second)."""
    from .audio import load_audio
    from .backbones.whisper import CHUNK_FRAMES, HOP
    from .features import unique_signals
    from .views import binaural_views, file_silent_views

    cfg, backbone = model.frontend, model.backbone
    dims = backbone.config
    seconds = flops = 0.0
    for path in files:
        audio = load_audio(path, sr=cfg.sample_rate, channels=cfg.channels,
                           max_duration_s=cfg.max_duration_s)
        clips = [audio] + [audio[:, a:b] for a, b in model.window_spans(audio.shape[1])]
        for clip in clips:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MonoInputWarning)
                views = binaural_views(clip, cfg.side_scale, views=model.views,
                                       sample_rate=cfg.sample_rate)
            quiet = file_silent_views(views)
            signals = unique_signals([views[v] for v in model.views if v not in quiet])[0]
            for signal in signals:
                total = len(signal) // HOP                         # the log-Mel's frames
                for start in range(0, total, CHUNK_FRAMES):        # its 30 s chunks
                    frames = min(CHUNK_FRAMES, total - start)
                    seconds += frames * HOP / cfg.sample_rate
                    flops += whisper_encoder_flops(frames, dims.num_mel_bins, dims.d_model,
                                                   dims.encoder_ffn_dim, model.layer)
    n = max(1, len(files))
    return {"view_seconds": seconds / n, "gflop": flops / n / 1e9}


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    """float32 GFLOP/s of an ``n x n`` matrix product on one torch thread (the best of three
    timings of ``repeats`` products): about the most one core does for the encoder."""
    import torch

    from .parallel import torch_threads

    with torch_threads(1):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(repeats):
                a @ b
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 * repeats / best / 1e9


def serve_ceiling(model_dir: str | Path, files: Sequence[Path]) -> dict[str, Any] | None:
    """The most uploads per second one core could serve a Whisper model, if every other
    cost were zero and the encoder ran at this core's matrix-product rate: ``gflop`` per
    upload (:func:`serve_encoder_work`), ``matmul_gflops`` (:func:`matmul_gflops`) and
    ``requests_s_per_core`` (their ratio). None for other models."""
    from .model import Model

    model = Model.load(model_dir)
    if not model.windowed or model.family != "whisper":
        return None
    work = serve_encoder_work(model, files)
    rate = matmul_gflops()
    return {**work, "matmul_gflops": rate, "requests_s_per_core": rate / work["gflop"]}


def serve_prerequisites() -> str | None:
    """Why the serve part cannot run here (a missing package), or None."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart", "websockets", "httpx", "psutil")
               if importlib.util.find_spec(m) is None]
    return (f"missing package(s) {', '.join(missing)} (pip install 'binser[serve]' httpx "
            "psutil)") if missing else None


def serve_load(model: str | Path, files: Sequence[Path], clients: int = 16, uploads: int = 25,
               streams: Sequence[int] = SERVE_STREAMS, stream_files: Sequence[Path] | None = None,
               chunk_s: float = 0.1, keep_up_s: float = 1.0, upload_limit_s: float = 900.0,
               startup_s: float = 180.0, report: Callable[[str], None] = print,
               server_args: Sequence[str] = ()) -> dict[str, Any]:
    """Load and latency of ``binser serve MODEL`` on loopback.

    Starts ``binser serve MODEL --port P`` (127.0.0.1, a free port, ``--max-streams
    max(streams)``, then ``server_args``, e.g. ``["--window-batch", "1"]`` or
    ``["--quantize", "int8"]``) as a subprocess, waits for ``GET /health`` (at most
    ``startup_s``), then:

    * **uploads**: ``clients`` threads x ``uploads`` POST /predict each of ``files`` (cycling),
      after one warm-up request: ``requests_s``, ``p50_ms``/``p99_ms`` (per request, client
      side), ``errors`` (anything but 200, timeouts; target 0); no upload starts after
      ``upload_limit_s``;
    * **streams**: for each N in ``streams``, N concurrent WS /stream sessions, each playing a
      file of ``stream_files`` (default ``files``) as s16le in ``chunk_s`` chunks paced at
      real time: per-window ``latency_p50_ms``/``latency_p99_ms`` (the server's
      ``latency_ms``) and ``wall_p50_ms``/``wall_p99_ms`` (from sending the chunk holding
      the window's last sample to receiving its result), ``kept_up`` (every stream's end
      message arrived within ``keep_up_s`` of the end of its audio, no error); stops after
      the first N that does not keep up. ``max_streams_kept_up``: the largest N that did;
    * ``rss_mb``: the server's RSS (process tree) after start, after the uploads, after the
      streams.

    The server is always terminated (then killed) before returning.
    """
    import httpx
    import psutil

    model = Path(model)
    if not model.is_dir():
        raise ConfigError(f"--serve-model {model}: no model folder here (binser train --out)")
    streams = sorted(set(int(n) for n in streams))
    stream_files = list(stream_files or files)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="binser-serve-", suffix=".log", delete=False)
    most = str(max(streams, default=1))   # one client (this process) opens every stream
    command = [sys.executable, "-m", "binser", "serve", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--max-streams", most, "--max-streams-per-client", most,
               "--max-queue", str(clients),   # every client's upload is queued, none 503'd
               *map(str, server_args)]
    out: dict[str, Any] = {"model": str(model), "port": port, "files": len(files),
                           "server_args": [str(a) for a in server_args]}
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        watched = psutil.Process(server.pid)
        deadline = time.monotonic() + startup_s
        while True:
            if server.poll() is not None:
                raise ConfigError(f"binser serve exited with {server.returncode}:\n"
                                  + Path(log.name).read_text(errors="replace")[-2000:])
            try:
                if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"binser serve did not answer /health within {startup_s} s")
            time.sleep(0.2)
        out["startup_s"] = startup_s - (deadline - time.monotonic())
        out["rss_mb"] = {"start": _tree_rss(watched) / 2**20}
        with httpx.Client(base_url=url, timeout=120, trust_env=False) as http:   # warm-up
            http.post("/predict", files={"file": (files[0].name, files[0].read_bytes(),
                                                  "application/octet-stream")})
        report(f"serve: {clients} clients x {uploads} uploads to POST /predict ...")
        up = _upload_load(url, files, clients, uploads, time.monotonic() + upload_limit_s,
                          request_timeout_s=120.0)
        out["uploads"] = up
        out["rss_mb"]["after_uploads"] = _tree_rss(watched) / 2**20
        rows = []
        longest = max(audio_info(p).duration_s for p in stream_files)
        for n in bar(streams, desc="concurrent stream counts", unit="setting"):
            report(f"serve: {n} concurrent real-time stream(s) over WS /stream ...")
            row = _stream_load(port, stream_files, n, chunk_s, keep_up_s,
                               timeout_s=longest + 60.0)
            rows.append(row)
            if not row["kept_up"]:
                break
        out["streams"] = rows
        kept = [r["streams"] for r in rows if r["kept_up"]]
        out["max_streams_kept_up"] = max(kept) if kept else 0
        out["rss_mb"]["after_streams"] = _tree_rss(watched) / 2**20
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()
        os.unlink(log.name)
    return out


# ------------------------------------------------------------------------------ the suite

PARTS = ("frontend", "extraction", "encoder", "study", "classifier", "opensmile", "ray", "serve",
         "scenes", "startup")


@dataclass
class BenchOptions:
    """What :func:`run_bench` measures."""

    root: Path
    quick: bool = False
    parts: tuple[str, ...] = PARTS
    threads: int | None = None
    batch: int = 64
    seconds: float = 3.0
    work: Path | None = None
    whisper_weights: Path | None = None     # whisper-base folder; None: default_whisper_weights()
    serve_model: Path | None = None         # model folder for the serve part; None: skipped
    cache_dir: str | None = None            # the classifier part's pooled-feature cache


def check_bench_options(options: BenchOptions) -> None:
    """Every option of :class:`BenchOptions`, up front and in the CLI's words: ConfigError
    for an unknown or empty ``--parts``, a ``--threads``/``--batch-size`` that is not a whole
    number in range, a ``--seconds`` that is not a finite number > 0, and paths that
    cannot be what they are given for."""
    check_choices(options.parts, PARTS, "bench part", option="--parts", sep=",")
    check_int_range(options.threads, "--threads", 1, 1024, optional=True)
    check_int_range(options.batch, "--batch-size", 1, 65536)
    check_float_range(options.seconds, "--seconds", 0.0, low_inclusive=False,
                      what="a number of seconds")
    for path, option in ((options.whisper_weights, "--whisper-weights"),
                         (options.serve_model, "--serve-model")):
        if path is not None and not Path(path).is_dir():
            what = "not a folder" if Path(path).exists() else "no such folder"
            raise ConfigError(f"{option} {path}: {what}")
    if options.work is not None:
        from .outputs import check_folder

        check_folder(options.work, "--work")


def run_bench(options: BenchOptions, report: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the chosen parts; return every figure plus the summary keys of ``--json``.
    Options are checked first (:func:`check_bench_options`). Progress: one stage per part
    (:data:`BENCH_ORDER`) on the overall line of :class:`binser.progress.StageTracker`, each
    part's own bars below it (files, backbones, passes, runs, settings)."""
    check_bench_options(options)
    report = above_bars(report)          # result lines never glued to a progress bar
    files = emovo_files(options.root, options.quick)
    audio_s = total_duration_s(files)
    figures: dict[str, Any] = {"files": len(files), "audio_s": audio_s, "quick": options.quick,
                               "cpu_count": os.cpu_count(), "machine": _machine()}
    report(f"EMOVO{' (quick subset)' if options.quick else ''}: {len(files)} files, "
           f"{audio_s:.0f} s of audio; {os.cpu_count()} cores")
    whisper = options.whisper_weights or default_whisper_weights()
    with StageTracker([p for p in BENCH_ORDER if p in options.parts]) as stages:
        for part in stages.names:
            with stages.stage(part):
                BENCH_PARTS[part](options, files, whisper, figures, report)
    figures["summary"] = summary(figures)
    return figures


def _part_frontend(options: BenchOptions, files: list[Path], whisper: Path | None,
                   figures: dict[str, Any], report: Callable[[str], None]) -> None:
    """binser's front end against the librosa reference (x real time, image agreement)."""
    fe = frontend_speed(files, jobs=options.threads,
                        reference_every=1 if options.quick else 4)
    figures["frontend"] = fe
    report(f"front end: binser {fe['binser_xrt']:.0f}x real time, librosa reference "
           f"{fe['librosa_xrt']:.0f}x -> {fe['vs_librosa']:.1f}x faster "
           f"({fe['jobs']} threads; {agreement_text(fe)})")


def _part_extraction(options: BenchOptions, files: list[Path], whisper: Path | None,
                     figures: dict[str, Any], report: Callable[[str], None]) -> None:
    """CNN feature extraction against bare PyTorch (images/s), CPU and a CUDA GPU if any."""
    cases = BACKBONE_CASES[:1] if options.quick else BACKBONE_CASES
    rows = extraction_speed(cases, options.batch, options.threads, options.seconds)
    figures["extraction"] = rows
    import torch

    if torch.cuda.is_available():
        figures["extraction_gpu"] = extraction_speed(cases, options.batch, options.threads,
                                                     options.seconds, device="cuda")
        rows = rows + figures["extraction_gpu"]
    for r in rows:
        report(f"extraction {r['backbone']} {r['input_size']} px on {r['device']}: binser "
               f"{r['binser_img_s']:.1f} img/s, bare PyTorch {r['ceiling_img_s']:.1f} "
               f"-> ratio {r['ratio']:.2f} ({r['threads']} threads, batch {r['batch']})")


def _part_encoder(options: BenchOptions, files: list[Path], whisper: Path | None,
                  figures: dict[str, Any], report: Callable[[str], None]) -> None:
    """Whisper encoder frames/s against a bare loop (CPU, and a CUDA GPU if any)."""
    if whisper is None:
        report("encoder: not measured (no whisper-base weights: pass --whisper-weights or "
               "set BINSER_WHISPER_BASE)")
    else:
        subset = files[::4] if not options.quick else files
        import torch

        rows = [encoder_speed(subset, whisper, threads=options.threads)]
        if torch.cuda.is_available():
            rows.append(encoder_speed(subset, whisper, device="cuda"))
        figures["encoder"] = rows
        for r in rows:
            report(f"encoder {r['backbone']} layer {r['layer']} on {r['device']}: binser "
                   f"{r['binser_frames_s']:.0f} frames/s ({r['binser_xrt']:.0f}x real "
                   f"time per view), bare PyTorch {r['ceiling_frames_s']:.0f} -> ratio "
                   f"{r['ratio']:.2f} ({r['threads']} threads, {r['signals']} signals)")


def _part_opensmile(options: BenchOptions, files: list[Path], whisper: Path | None,
                    figures: dict[str, Any], report: Callable[[str], None]) -> None:
    """openSMILE ComParE 2016 functionals, x real time (optional extra)."""
    try:
        sm = opensmile_speed(files, options.threads)
    except Exception as exc:   # opensmile is an optional extra
        sm = {"error": f"{type(exc).__name__}: {exc}"}
        report(f"openSMILE: not measured ({sm['error']})")
    else:
        report(f"openSMILE ComParE 2016 (left channel): {sm['xrt']:.0f}x real time")
    figures["opensmile"] = sm


def _part_ray(options: BenchOptions, files: list[Path], whisper: Path | None,
              figures: dict[str, Any], report: Callable[[str], None]) -> None:
    """feature extraction, local executor against Ray at 1 and 2 workers."""
    from .executors import ray_available

    if not ray_available():
        figures["ray"] = {"error": "ray is not installed (pip install 'binser[ray]')"}
        report(f"ray: not measured ({figures['ray']['error']})")
    else:
        subset = files if options.quick else files[::4]
        rs = ray_speed(subset, whisper, threads=options.threads)
        figures["ray"] = rs
        report(f"ray ({rs['backbone']}, {rs['files']} files, {rs['cores']} cores): local "
               f"{rs['local_files_s']:.2f} files/s; " + "; ".join(
                   f"Ray {r['workers']} worker(s) {r['files_s']:.2f} files/s = "
                   f"{r['vs_local']:.2f}x local, identical {r['identical']}"
                   for r in rs["ray"]))
        if "gpu_files_s" in rs:
            report(f"ray: one {rs['gpu_name']}: {rs['gpu_files_s']:.1f} files/s "
                   f"({rs['backbone']}, local executor)")


def _part_study(options: BenchOptions, files: list[Path], whisper: Path | None,
                figures: dict[str, Any], report: Callable[[str], None]) -> None:
    """``binser experiment`` cold and warm: wall time, peak memory, identical results."""
    work = options.work or Path(tempfile.mkdtemp(prefix="binser-bench-"))
    root = quick_root(files, work) if options.quick else Path(options.root)
    extra = ["--backbone", "whisper-base", "--weights", str(whisper)] if whisper else \
        ["--backbone", "efficientnet_lite0"]
    st = study_run(root, work, extra)
    figures["study"] = st
    for phase in ("cold", "warm"):
        report(f"study {phase}: {st[phase]['wall_s']:.1f} s, peak memory "
               f"{st[phase]['peak_rss_mb']:.0f} MiB (stages: " + ", ".join(
                   f"{k} {v:.1f}" for k, v in st[phase]["timing"].items()) + ")")
    report(f"cold and warm results identical: {st['identical']}")
    if options.work is None:
        shutil.rmtree(work, ignore_errors=True)


def _part_classifier(options: BenchOptions, files: list[Path], whisper: Path | None,
                     figures: dict[str, Any], report: Callable[[str], None]) -> None:
    """The classifier stage, exact solver against liblinear (:func:`classifier_part`)."""
    figures["classifier"] = classifier_part(options, whisper, report)


def _part_serve(options: BenchOptions, files: list[Path], whisper: Path | None,
                figures: dict[str, Any], report: Callable[[str], None]) -> None:
    """``binser serve`` under load: uploads and real-time streams."""
    why = ("no trained model: pass --serve-model FOLDER (binser train --out FOLDER)"
           if options.serve_model is None else serve_prerequisites())
    if why:
        figures["serve"] = {"skipped": why}
        report(f"serve: not measured ({why})")
    else:
        streams_dir = Path(tempfile.mkdtemp(prefix="binser-bench-streams-"))
        try:
            sv = serve_load(options.serve_model, files[::4], report=report,
                            stream_files=long_stream_files(files[1::4], streams_dir,
                                                           max(SERVE_STREAMS)))
        finally:
            shutil.rmtree(streams_dir, ignore_errors=True)
        sv["ceiling"] = serve_ceiling(options.serve_model, files[::4])
        figures["serve"] = sv
        up, rss = sv["uploads"], sv["rss_mb"]
        report(f"serve uploads: {up['clients']} clients x {up['uploads_per_client']}: "
               f"{up['requests_s']:.2f} requests/s, p50 {up['p50_ms']:.0f} ms, p99 "
               f"{up['p99_ms']:.0f} ms, {up['errors']} errors; server RSS "
               f"{rss['start']:.0f} MiB -> {rss['after_uploads']:.0f} MiB")
        if sv["ceiling"]:
            c = sv["ceiling"]
            report(f"serve uploads, the encoder's floor: {c['gflop']:.1f} GFLOP per upload "
                   f"({c['view_seconds']:.1f} s of view audio); float32 matmul on one core "
                   f"{c['matmul_gflops']:.0f} GFLOP/s -> at most "
                   f"{c['requests_s_per_core']:.2f} requests/s per core")
        for r in sv["streams"]:
            report(f"serve streams x{r['streams']}: window latency (server) p50 "
                   f"{_ms(r['latency_p50_ms'])}, p99 {_ms(r['latency_p99_ms'])}; "
                   f"chunk sent -> result p50 {_ms(r['wall_p50_ms'])}, p99 "
                   f"{_ms(r['wall_p99_ms'])}; kept up: {r['kept_up']}"
                   + (f" ({'; '.join(r['errors'])})" if r["errors"] else ""))
        report(f"serve: largest number of real-time streams kept up: "
               f"{sv['max_streams_kept_up']}; server RSS after the streams "
               f"{rss['after_streams']:.0f} MiB")


def _part_scenes(options: BenchOptions, files: list[Path], whisper: Path | None,
                 figures: dict[str, Any], report: Callable[[str], None]) -> None:
    """binaural scene rendering, x real time (:func:`scenes_speed`)."""
    sc = scenes_speed(options.root, files if options.quick else files[::4])
    figures["scenes"] = sc
    report(f"scenes: {sc['files']} EMOVO files, {sc['audio_s']:.0f} s of audio rendered "
           f"in {sc['wall_s']:.1f} s on one thread -> {sc['xrt']:.0f}x real time "
           f"({sc['with_interferer']} with a competing talker)")


# the parts in the order they run (the stages of the overall progress line)
BENCH_PARTS: dict[str, Callable[..., None]] = {
    "startup": startup_part,   # binser.startup_time: --help, datasets, an argument error
    "frontend": _part_frontend,
    "extraction": _part_extraction,
    "encoder": _part_encoder,
    "opensmile": _part_opensmile,
    "ray": _part_ray,
    "study": _part_study,
    "classifier": _part_classifier,
    "serve": _part_serve,
    "scenes": _part_scenes,
}
BENCH_ORDER = tuple(BENCH_PARTS)


def classifier_part(options: BenchOptions, whisper: Path | None,
                    report: Callable[[str], None]) -> dict[str, Any]:
    """The classifier stage, exact solver vs liblinear (:mod:`binser.classifier_bench`): the
    default EMOVO study's stage (two folds with ``--quick``) and the growth table."""
    from .classifier_bench import GROWTH_SIZES, GROWTH_SIZES_QUICK, growth, study_stage_speed

    out: dict[str, Any] = {}
    steps = bar(total=2, desc="EMOVO study stage, then growth", unit="step")
    if whisper is None:
        report("classifier (EMOVO study): not measured (no whisper-base weights)")
    else:
        st = study_stage_speed(options.root, str(whisper), cache_dir=options.cache_dir,
                               folds=2 if options.quick else None)
        out["study"] = st
        report(f"classifier stage, EMOVO default study ({st['folds']} folds, {st['runs']} "
               f"runs): exact {st['exact_s']:.1f} s, liblinear {st['liblinear_s']:.1f} s -> "
               f"{st['speedup']:.1f}x; runs with identical predictions and choices: "
               f"{st['identical_runs']} of {st['runs']}")
    steps.update()
    gr = growth(GROWTH_SIZES_QUICK if options.quick else GROWTH_SIZES, progress=report)
    steps.update()
    steps.close()
    out["growth"] = gr
    report("classifier growth (one matrix, one fold: search, final fit, nested scores):")
    report("  utterances   exact s   liblinear s   exact floor s")
    for row in gr["rows"]:
        lib = f"{row['liblinear']:.2f}" if row.get("liblinear") else "-"
        report(f"  {row['utterances']:>10}   {row['exact']:>7.2f}   {lib:>11}   "
               f"{row['floor']:>13.3f}")
    report("  log-log slope: " + ", ".join(f"{k} {v:.2f}" for k, v in gr["slope"].items()
                                            if v is not None))
    report("  (floor: one Gram matrix per fit and one factorisation per C, nothing per class:"
           " the least an exact solve of these fits costs)")
    return out


def scenes_speed(root: Path, files: Sequence[Path]) -> dict[str, Any]:
    """``binser scenes`` (default settings, seed 0) over ``files`` of the EMOVO corpus at
    ``root`` into a temporary folder, on one thread (BLAS limited to one): decoding,
    rendering and FLAC writing, x real time."""
    from threadpoolctl import threadpool_limits

    from .corpora import corpus
    from .scenes import SceneSettings, make_scenes

    found = corpus("emovo", root)
    wanted = {os.path.abspath(f) for f in files}
    subset = found.subset([i for i, u in enumerate(found) if os.path.abspath(u.path) in wanted])
    work = Path(tempfile.mkdtemp(prefix="binser-bench-scenes-"))
    try:
        with threadpool_limits(1):
            done = make_scenes(subset, work / "scenes", SceneSettings(), progress=True)
        with open(work / "scenes" / "scenes.csv", newline="") as handle:
            interferers = sum(1 for row in csv.DictReader(handle) if row["interferer"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"files": done["made"], "audio_s": done["audio_s"], "wall_s": done["wall_s"],
            "xrt": done["xrt"], "threads": 1, "with_interferer": interferers}


def summary(figures: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` keys: ``frontend_xrt``, ``extraction_ratio``, ``extraction_img_s``
    (default backbone, CPU), ``study_cold_s``, ``study_warm_s``, ``peak_rss_mb``,
    ``frontend_vs_opensmile``, and ``gpu_extraction_ratio``/``gpu_extraction_img_s`` where
    torch sees a CUDA GPU; ``serve_requests_s``, ``serve_p99_ms``, ``serve_errors`` (uploads)
    and ``serve_max_streams`` (real-time streams kept up); None where a part was not run."""
    fe, ex = figures.get("frontend"), figures.get("extraction")
    st, sm = figures.get("study"), figures.get("opensmile")
    gpu = figures.get("extraction_gpu")
    smile_xrt = sm.get("xrt") if sm else None
    return {
        "frontend_xrt": fe["binser_xrt"] if fe else None,
        "frontend_vs_librosa": fe["vs_librosa"] if fe else None,
        "extraction_ratio": ex[0]["ratio"] if ex else None,
        "extraction_img_s": ex[0]["binser_img_s"] if ex else None,
        "study_cold_s": st["cold"]["wall_s"] if st else None,
        "study_warm_s": st["warm"]["wall_s"] if st else None,
        "peak_rss_mb": max(st["cold"]["peak_rss_mb"], st["warm"]["peak_rss_mb"]) if st else None,
        "frontend_vs_opensmile": (fe["binser_xrt"] / smile_xrt) if fe and smile_xrt else None,
        "encoder_ratio": figures["encoder"][0]["ratio"] if figures.get("encoder") else None,
        "encoder_frames_s": (figures["encoder"][0]["binser_frames_s"]
                             if figures.get("encoder") else None),
        "study_backbone": st["command"].split("--backbone ")[1].split()[0] if st else None,
        "gpu_extraction_ratio": gpu[0]["ratio"] if gpu else None,
        "gpu_extraction_img_s": gpu[0]["binser_img_s"] if gpu else None,
        "ray_vs_local": ({str(r["workers"]): r["vs_local"] for r in figures["ray"]["ray"]}
                         if figures.get("ray", {}).get("ray") else None),
        "serve_requests_s": _serve(figures, "uploads", "requests_s"),
        "serve_p99_ms": _serve(figures, "uploads", "p99_ms"),
        "serve_errors": _serve(figures, "uploads", "errors"),
        "serve_max_streams": figures.get("serve", {}).get("max_streams_kept_up"),
        "scenes_xrt": figures.get("scenes", {}).get("xrt"),
        "classifier_speedup": figures.get("classifier", {}).get("study", {}).get("speedup"),
        "classifier_exact_s": figures.get("classifier", {}).get("study", {}).get("exact_s"),
        "classifier_slope": figures.get("classifier", {}).get("growth", {}).get("slope", {})
                                   .get("exact"),
        "quick": figures["quick"],
    }


def _serve(figures: dict[str, Any], part: str, key: str) -> Any:
    return figures.get("serve", {}).get(part, {}).get(key)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _machine() -> str:
    import platform

    return f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}"
