"""Preflight: check every input file before any expensive work, and say what is wrong.

``check_inputs(paths)`` opens each file the way the pipeline will (metadata with
:func:`~binser.audio.audio_info`, then a full decode with :func:`~binser.audio.load_audio`,
resampled to the front end's rate) and records, per file, the first reason it cannot be used:

=====================  =================================================================
missing / empty        file not found, a directory, 0 bytes, not readable
not audio              a file with an audio extension that neither libsndfile nor FFmpeg
                       can read (text, an image, random bytes)
corrupt                the decoder fails part-way (e.g. a FLAC that loses sync)
truncated              fewer bytes of sample data than the RIFF (WAV) or FORM (AIFF)
                       header declares, or decoded length well short of the length the
                       header announces (more than 5 % and 0.1 s missing)
no audio stream        a video container without an audio track
zero length            a stream of 0 samples
too short              fewer samples than one analysis window (``config.win_length``,
                       25 ms = 400 samples at 16 kHz): not one full frame of signal
too long               longer than ``max_duration_s`` (default ``config.max_duration_s``),
                       refused from the metadata before decoding where the format states
                       a length
silent                 peak level below :data:`SILENCE_DBFS` (-90 dBFS; all-zero files
                       included)
non-finite             NaN or infinite samples (float formats)
implausible values     samples beyond +-1e15 full scale (garbage in a float file; the
                       front end's float32 arithmetic would overflow)
no label               an empty or missing label (``labels`` given; any other label is
                       accepted: corpora may use their own label sets), and the corpus
                       adapter's naming problems (:func:`check_corpus`)
=====================  =================================================================

Silent files are **skipped** (a problem like the others), not kept: every silent input
gives the same floor-valued log-Mel (-100 dB everywhere), hence the same features whatever
its label, so including it only adds a meaningless prediction to the metrics. Under
``--on-error fail`` a silent file therefore stops the run, like any other problem.

``apply_on_error(report, "fail")`` raises one :class:`~binser.errors.BinserError` listing
every bad file and its cause (one line each); ``"skip"`` returns the good indices and leaves
the problems in the report, for ``results.json``'s ``skipped`` list.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .audio import AudioInfo, audio_info, load_audio
from .config import FrontEndConfig
from .errors import AudioError, BinserError, ConfigError
from .validation import check_choice
from .views import MAX_AMPLITUDE

if TYPE_CHECKING:  # corpora imports nothing heavy, but keep the dependency one-way
    from .corpora import Corpus

SILENCE_DBFS = -90.0           # peak level (dB re full scale 1.0) below which a file is silent
TRUNCATION_FRACTION = 0.05     # decoded length may fall short of the header's by this share
TRUNCATION_MIN_S = 0.1         # ... and by this many seconds before it counts as truncated
ON_ERROR = ("skip", "fail")

_DEFAULT = FrontEndConfig()


@dataclass
class PreflightReport:
    """Outcome of :func:`check_inputs`.

    ``paths``: the files checked, in input order; ``ok``: indices into ``paths`` of the
    usable ones (ascending); ``problems``: ``(path, cause)`` for every file that cannot be
    used, including corpus naming problems (files that never got an index);
    ``elapsed_s``: wall time of the checks in seconds.
    """

    paths: list[Path]
    ok: list[int]
    problems: list[tuple[Path, str]] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def n_bad(self) -> int:
        """Number of problems (bad files plus corpus naming problems)."""
        return len(self.problems)


# --------------------------------------------------------------------------- one file


def check_file(path: str | Path, config: FrontEndConfig = _DEFAULT,
               max_duration_s: float | None = None) -> None:
    """Raise :class:`AudioError` (path, cause) if ``path`` cannot be used; return None if OK.

    ``max_duration_s`` (seconds, default ``config.max_duration_s``) is checked from the
    metadata first, so an over-long file is refused without decoding it.
    """
    checked_audio(path, config, max_duration_s)


def checked_audio(path: str | Path, config: FrontEndConfig = _DEFAULT,
                  max_duration_s: float | None = None) -> np.ndarray:
    """:func:`check_file`, returning the decoded audio ``(C, N)`` at ``config.sample_rate``
    (the channels ``config.channels`` picks) for callers that go on with it."""
    limit = config.max_duration_s if max_duration_s is None else max_duration_s
    if not limit > 0:
        raise ConfigError(f"max_duration_s must be > 0 seconds, got {limit!r}")
    path = Path(path)
    info = audio_info(path)
    _check_stated_duration(info, limit)
    _check_container_size(path)
    audio = load_audio(path, sr=config.sample_rate, channels=config.channels,
                       max_duration_s=limit)
    _check_decoded_length(info, audio.shape[1], config.sample_rate)
    _check_frame(path, audio.shape[1], config)
    _check_level(path, audio)
    return audio


def _check_stated_duration(info: AudioInfo, limit: float) -> None:
    if info.duration_s > limit:
        raise AudioError(info.path, f"too long: {info.duration_s:.2f} s exceeds the limit of "
                                    f"max_duration_s={limit:g} s")


def _check_frame(path: Path, n_samples: int, config: FrontEndConfig) -> None:
    """At least one full analysis window (``config.win_length`` samples) of signal."""
    if n_samples < config.win_length:
        ms = 1000 * n_samples / config.sample_rate
        raise AudioError(path, f"too short: {n_samples} samples ({ms:.1f} ms) "
                               f"at {config.sample_rate} Hz is less than one "
                               f"{config.win_ms:g} ms analysis frame "
                               f"({config.win_length} samples)")


def peak_dbfs(audio: np.ndarray) -> float:
    """Peak level of ``audio`` (any shape, full scale 1.0) in dBFS; -inf when all zero."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def _check_level(path: Path, audio: np.ndarray) -> None:
    """Silence (peak below SILENCE_DBFS) and sample values no audio has (above
    :data:`binser.views.MAX_AMPLITUDE`, e.g. garbage in a float WAV)."""
    peak = float(np.max(np.abs(audio)))
    if peak > MAX_AMPLITUDE:
        raise AudioError(path, f"implausible sample values: peak {peak:.3g} exceeds "
                               f"{MAX_AMPLITUDE:g} (full scale is 1.0)")
    level = peak_dbfs(audio)
    if level == -math.inf:
        raise AudioError(path, "silent: every sample is zero")
    if level < SILENCE_DBFS:
        raise AudioError(path, f"silent: peak level {level:.1f} dBFS is below "
                               f"{SILENCE_DBFS:g} dBFS")


def _check_decoded_length(info: AudioInfo, n_samples: int, sr: int) -> None:
    """Truncation seen by the decoder: far fewer samples than the header announced."""
    decoded_s = n_samples / sr
    missing_s = info.duration_s - decoded_s
    if missing_s > max(TRUNCATION_MIN_S, TRUNCATION_FRACTION * info.duration_s):
        raise AudioError(info.path, f"truncated: the header announces {info.duration_s:.2f} s "
                                    f"but only {decoded_s:.2f} s could be decoded")


# RIFF (WAV) and FORM (AIFF) files: magic, form types, data chunk id, byte order.
_CHUNKED = (
    (b"RIFF", (b"WAVE",), b"data", "little"),
    (b"FORM", (b"AIFF", b"AIFC"), b"SSND", "big"),
)
_UNSET_SIZES = (0, 0xFFFFFFFF)  # streaming writers leave the data size unset


def _check_container_size(path: Path) -> None:
    """Truncation seen in the file layout: a WAV/AIFF data chunk with fewer bytes present
    than its header declares (libsndfile would silently decode the shorter remainder)."""
    shortfall = _data_chunk_shortfall(path)
    if shortfall is not None:
        declared, present = shortfall
        raise AudioError(path, f"truncated: the header declares {declared} bytes of sample "
                               f"data but only {present} are present")


def _data_chunk_shortfall(path: Path) -> tuple[int, int] | None:
    """(declared, present) bytes of the sample-data chunk when it is cut short, else None."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(12)
        for magic, forms, data_id, order in _CHUNKED:
            if len(head) == 12 and head[:4] == magic and head[8:12] in forms:
                return _walk_chunks(handle, size, data_id, order)
    return None


def _walk_chunks(handle, size: int, data_id: bytes, order: str) -> tuple[int, int] | None:
    position = 12
    while position + 8 <= size:
        handle.seek(position)
        header = handle.read(8)
        declared = int.from_bytes(header[4:8], order)
        if header[:4] == data_id:
            present = size - position - 8
            if declared in _UNSET_SIZES or present >= declared:
                return None
            return declared, present
        position += 8 + declared + (declared & 1)
    return None


# --------------------------------------------------------------------------- many files


def _problem_of(path: Path, config: FrontEndConfig, limit: float | None) -> str | None:
    """The cause why ``path`` cannot be used, or None. Never raises for a bad file."""
    try:
        check_file(path, config, limit)
    except AudioError as error:
        return error.cause
    except ConfigError:
        raise
    except BinserError as error:
        return str(error)
    except Exception as error:  # a decoder bug must not end a long run: report it instead
        return f"unexpected decoder failure ({type(error).__name__}: {error})"
    return None


def _label_problem(label: str | None) -> str | None:
    return "no label" if label is None or not str(label).strip() else None


def check_inputs(paths: Sequence[str | Path], labels: Sequence[str | None] | None = None,
                 config: FrontEndConfig = _DEFAULT, max_duration_s: float | None = None,
                 progress: bool = True, workers: int = 2) -> PreflightReport:
    """Check every file of ``paths`` (and its label, if ``labels`` is given).

    ``labels``: one label per path (any non-empty word: corpora may have their own label
    sets), or None for no label check. ``max_duration_s``: limit in seconds (default
    ``config.max_duration_s``).
    ``workers`` threads decode files at once. Returns a :class:`PreflightReport`; never
    raises for a bad file (only :class:`ConfigError` for bad options).
    """
    start = time.perf_counter()
    paths = [Path(p) for p in paths]
    if labels is not None and len(labels) != len(paths):
        raise ConfigError(f"{len(labels)} labels for {len(paths)} files")
    if max_duration_s is not None and not max_duration_s > 0:
        raise ConfigError(f"max_duration_s must be > 0 seconds, got {max_duration_s!r}")
    causes = _file_causes(paths, config, max_duration_s, progress, workers)
    if labels is not None:
        causes = [cause or _label_problem(label) for cause, label in zip(causes, labels)]
    return PreflightReport(
        paths=paths, ok=[i for i, cause in enumerate(causes) if cause is None],
        problems=[(p, cause) for p, cause in zip(paths, causes) if cause is not None],
        elapsed_s=time.perf_counter() - start)


def _file_causes(paths: list[Path], config: FrontEndConfig, limit: float | None,
                 progress: bool, workers: int) -> list[str | None]:
    """Per file: its problem or None, in input order, ``workers`` threads at once."""
    from .progress import bar as progress_bar

    bar = progress_bar(total=len(paths), desc="preflight", unit="file", enabled=progress)
    causes: list[str | None] = []
    with bar, ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for cause in pool.map(lambda p: _problem_of(p, config, limit), paths):
            causes.append(cause)
            bar.update(1)
    return causes


def check_corpus(corpus: "Corpus", config: FrontEndConfig = _DEFAULT,
                 max_duration_s: float | None = None, progress: bool = True,
                 workers: int = 2) -> PreflightReport:
    """:func:`check_inputs` on a corpus's files and labels, with the corpus's own naming
    problems (files or manifest rows that break its rule) listed first in ``problems``.
    ``ok`` indexes the corpus."""
    report = check_inputs(corpus.paths, [u.label for u in corpus], config, max_duration_s,
                          progress, workers)
    report.problems = list(corpus.problems) + report.problems
    return report


# --------------------------------------------------------------------------- policy


def format_problems(problems: Sequence[tuple[Path, str]]) -> str:
    """One line per problem, ``  <path>: <cause>``."""
    return "\n".join(f"  {path}: {cause}" for path, cause in problems)


def check_on_error(on_error: str) -> str:
    """``on_error`` if it is a known policy (``"skip"`` or ``"fail"``), else ConfigError."""
    return check_choice(on_error, ON_ERROR, "--on-error policy")


def apply_on_error(report: PreflightReport, on_error: str) -> list[int]:
    """Indices of the usable files under policy ``on_error``.

    ``"fail"``: raise :class:`BinserError` listing every problem (one line each) if there
    is any. ``"skip"``: return ``report.ok`` (problems stay in ``report.problems``); raise
    only if no file is usable. :class:`ConfigError` for another policy.
    """
    check_on_error(on_error)
    if on_error == "fail" and report.problems:
        raise BinserError(
            f"{report.n_bad} input file(s) cannot be used; nothing was computed (rerun with "
            f"--on-error skip to leave them out):\n{format_problems(report.problems)}")
    if not report.ok:
        detail = f":\n{format_problems(report.problems)}" if report.problems else ""
        raise BinserError(f"no usable input file among {len(report.paths)}{detail}")
    return list(report.ok)


def screen_corpus(corpus: "Corpus", on_error: str = "fail", config: FrontEndConfig = _DEFAULT,
                  max_duration_s: float | None = None, progress: bool = True
                  ) -> tuple["Corpus", list[tuple[Path, str]]]:
    """Check a corpus and apply ``on_error``: the corpus of usable utterances, and the
    ``(path, cause)`` list of everything left out (for ``results.json``'s ``skipped``)."""
    check_on_error(on_error)
    report = check_corpus(corpus, config, max_duration_s, progress)
    keep = apply_on_error(report, on_error)
    if progress and report.problems:
        print(f"[binser] preflight: {report.n_bad} file(s) left out:\n"
              f"{format_problems(report.problems)}", flush=True)
    return corpus.subset(keep), report.problems
