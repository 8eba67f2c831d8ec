"""`binser scan`: what a corpus holds before any experiment is run.

``scan_corpus(corpus)`` reads every file's metadata (``audio_info``) and checks its channels:
mono files (one channel) and stereo files whose two channels are bit-identical (their Side
view is all zeros) are listed, as are files that cannot be read. Counts per label, speaker
and split, the total duration and the corpus's own problems are carried into a
:class:`ScanReport`; ``format_scan(report)`` renders it as plain text.

Files an experiment cannot use (the preflight's problems, :mod:`binser.preflight`, and the
corpus's naming problems) are counted by cause with :func:`causes_by_kind`;
:func:`unusable_summary` is the one line ``binser scan`` ends with, and the command exits
with status 1 when there is any (0 when every file is usable, 2 on an error).

The identical-channel check reads the file's native samples with soundfile, block by block
(no resampling, no float conversion of integer PCM, stops at the first differing sample);
formats soundfile cannot open (video containers) are decoded with ``load_audio`` at their own
sample rate.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import audio_info, channels_identical, load_audio, quiet_decoders
from .corpora import Corpus
from .errors import AudioError
from .normalisation import coverage_warning
from .preflight import check_on_error

_BLOCK_FRAMES = 1 << 18  # frames per block when comparing channels (~5.5 s at 48 kHz)


@dataclass
class FileScan:
    """One file's scan: metadata, or the reason it could not be read.

    ``duration_s`` in seconds, ``sample_rate`` in Hz; ``identical`` is True for a stereo file
    with bit-identical channels (always False for mono files).
    """

    path: Path
    sample_rate: int = 0
    channels: int = 0
    duration_s: float = 0.0
    codec: str = ""
    identical: bool = False
    error: str | None = None


@dataclass
class ScanReport:
    """What ``scan_corpus`` found. Durations in seconds, rates in Hz.

    ``mono``: files with one channel; ``identical_channels``: stereo files whose channels are
    bit-identical; ``unreadable``: ``(path, reason)``; ``problems`` and ``skipped``: carried
    from the corpus (files that break its naming rule / left out by its rule).
    """

    name: str
    root: Path
    n_utterances: int
    label_counts: dict[str, int]
    speaker_counts: dict[str, int]
    split_counts: dict[str, int]
    total_duration_s: float = 0.0
    min_duration_s: float = 0.0
    max_duration_s: float = 0.0
    sample_rates: dict[int, int] = field(default_factory=dict)
    channel_counts: dict[int, int] = field(default_factory=dict)
    codecs: dict[str, int] = field(default_factory=dict)
    mono: list[Path] = field(default_factory=list)
    identical_channels: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def n_readable(self) -> int:
        """Files whose metadata and samples could be read."""
        return self.n_utterances - len(self.unreadable)
    speaker_norm_warning: str | None = None   # speakers cover few labels (see normalisation)


# --------------------------------------------------------------------------- channel check

def _soundfile_dtype(subtype: str) -> str:
    """Exact comparison dtype: int32 for integer PCM (lossless), float64 otherwise."""
    return "int32" if subtype.upper().startswith("PCM") else "float64"


def _identical_native(path: Path, picks: tuple[int, int]) -> bool | None:
    """Bit-identical channels ``picks`` by soundfile, block-wise; None if soundfile cannot
    open the file."""
    import soundfile as sf

    try:
        handle = sf.SoundFile(str(path))
    except Exception:  # not a libsndfile format: caller falls back to load_audio
        return None
    left, right = picks
    with handle:
        dtype = _soundfile_dtype(handle.subtype)
        for block in handle.blocks(blocksize=_BLOCK_FRAMES, dtype=dtype, always_2d=True):
            if not np.array_equal(block[:, left], block[:, right]):
                return False
    return True


def _identical(path: Path, sample_rate: int, channels: tuple[int, int] | None = None) -> bool:
    """Whether the two channels used (``channels``, else 0 and 1) are bit-identical (native
    read, else decoded)."""
    try:
        with quiet_decoders():
            native = _identical_native(path, channels or (0, 1))
    except Exception as exc:  # a corrupt block mid-file
        raise AudioError(path, f"corrupt audio data ({type(exc).__name__}: {exc})") from exc
    if native is not None:
        return native
    return channels_identical(load_audio(path, sr=sample_rate, channels=channels))


def _uses_two(n_channels: int, channels: tuple[int, int] | None) -> bool:
    """Whether a file of ``n_channels`` gives two channels to compare: a stereo file, or
    one that holds both of the ``channels`` picked (--channels I,J)."""
    if channels is None:
        return n_channels == 2
    return max(channels) < n_channels


def scan_file(path: Path, channels: tuple[int, int] | None = None) -> FileScan:
    """Metadata and channel check of one file; raises :class:`AudioError` if unreadable.
    ``channels``: the two 0-based channels used as left and right (None: 0 and 1 of a
    stereo file); ``identical`` compares them."""
    info = audio_info(path)
    identical = _uses_two(info.channels, channels) and _identical(path, info.sample_rate,
                                                                  channels)
    return FileScan(path=path, sample_rate=info.sample_rate, channels=info.channels,
                    duration_s=float(info.duration_s), codec=info.codec, identical=identical)


def _scan_or_record(path: Path, on_error: str,
                    channels: tuple[int, int] | None = None) -> FileScan:
    """``scan_file``; with ``on_error="skip"`` an unreadable file gives ``error`` instead."""
    try:
        return scan_file(path, channels)
    except AudioError as exc:
        if on_error == "fail":
            raise
        return FileScan(path=path, error=exc.cause)


# --------------------------------------------------------------------------- corpus scan

def _scan_all(paths: list[Path], on_error: str, progress: bool, workers: int,
              channels: tuple[int, int] | None = None) -> list[FileScan]:
    """Scan ``paths`` with a small thread pool; results in input order."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(paths), desc="scan", unit="file", disable=not progress)
    with bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = []
        for result in pool.map(lambda p: _scan_or_record(p, on_error, channels), paths):
            results.append(result)
            bar.update(1)
    return results


def _counts(values: Iterable) -> dict:
    counts = Counter(values)
    return {key: counts[key] for key in sorted(counts)}


def _summarise(corpus: Corpus, scans: list[FileScan], elapsed_s: float) -> ScanReport:
    """Fold per-file scans and the corpus's counts into a :class:`ScanReport`."""
    ok = [s for s in scans if s.error is None]
    durations = [s.duration_s for s in ok]
    return ScanReport(
        name=corpus.name, root=corpus.root, n_utterances=len(corpus),
        label_counts=corpus.label_counts(), speaker_counts=corpus.speaker_counts(),
        speaker_norm_warning=coverage_warning([u.label for u in corpus],
                                              [u.speaker for u in corpus]) if len(corpus) else None,
        split_counts=corpus.split_counts(),
        total_duration_s=float(sum(durations)),
        min_duration_s=float(min(durations, default=0.0)),
        max_duration_s=float(max(durations, default=0.0)),
        sample_rates=_counts(s.sample_rate for s in ok),
        channel_counts=_counts(s.channels for s in ok),
        codecs=_counts(s.codec for s in ok),
        mono=[s.path for s in ok if s.channels == 1],
        identical_channels=[s.path for s in ok if s.identical],
        unreadable=[(s.path, s.error) for s in scans if s.error is not None],
        problems=list(corpus.problems), skipped=list(getattr(corpus, "skipped", [])),
        elapsed_s=elapsed_s,
    )


def scan_corpus(corpus: Corpus, progress: bool = True, on_error: str = "skip",
                workers: int = 2, channels: tuple[int, int] | None = None) -> ScanReport:
    """Scan every file of ``corpus``: counts, durations, mono and identical-channel files.

    ``on_error="skip"`` records unreadable files in ``ScanReport.unreadable`` with the
    reason; ``"fail"`` raises the first :class:`AudioError`. ``workers`` threads read files
    in parallel; ``progress`` shows a tqdm bar. ``channels``: the two 0-based channels used
    as left and right (``--channels I,J``), compared for the identical-channel list.
    """
    check_on_error(on_error)
    start = time.perf_counter()
    scans = _scan_all([u.path for u in corpus], on_error, progress, workers, channels)
    return _summarise(corpus, scans, time.perf_counter() - start)


# --------------------------------------------------------------------------- causes

NAMING_CAUSE = "breaks the corpus's naming rule"


def cause_kind(cause: str) -> str:
    """The kind of a preflight cause: its words before the first ``:`` or `` (`` (``"silent:
    peak level -95 dBFS"`` -> ``"silent"``, ``"empty file (0 bytes)"`` -> ``"empty file"``)."""
    return cause.split(":", 1)[0].split(" (", 1)[0].strip() or cause


_MANIFEST_ROW = re.compile(r"^\S+ line \d+: (?P<cause>.+)$")


def _naming_kind(reason: str) -> str:
    """A corpus problem's kind: ``manifest row: <kind>`` for a manifest row (``"m.csv line
    4: file not found (x.wav)"`` -> ``"manifest row: file not found"``), else
    :data:`NAMING_CAUSE`."""
    row = _MANIFEST_ROW.match(reason)
    return f"manifest row: {cause_kind(row['cause'])}" if row else NAMING_CAUSE


def causes_by_kind(naming: Sequence[tuple[Path, str]], files: Sequence[tuple[Path, str]]
                   ) -> dict[str, int]:
    """Unusable files counted by cause: ``naming`` (the corpus's problems) by
    :func:`_naming_kind`, ``files`` (preflight problems) by :func:`cause_kind`; most
    frequent first, ties by name."""
    counts = Counter(cause_kind(cause) for _, cause in files)
    counts.update(_naming_kind(reason) for _, reason in naming)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def unusable_summary(counts: dict[str, int], total: int) -> str | None:
    """``"N of TOTAL files cannot be used: 3 silent, 1 too short"``; None when none."""
    n = sum(counts.values())
    if not n:
        return None
    return (f"{n} of {total} file(s) cannot be used: "
            + ", ".join(f"{count} {kind}" for kind, count in counts.items()))


# --------------------------------------------------------------------------- text report

def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _table(title: str, counts: dict, total: int) -> list[str]:
    """A two-column count table with percentages of ``total``."""
    if not counts:
        return []
    width = max(len(str(k)) for k in counts)
    lines = [title]
    for key, count in counts.items():
        share = 100.0 * count / total if total else 0.0
        lines.append(f"  {str(key):<{width}}  {count:>6}  {share:5.1f} %")
    return lines + [""]


def _path_list(title: str, paths: list[Path], root: Path, limit: int = 50) -> list[str]:
    lines = [f"{title}: {len(paths)}"]
    lines += [f"  {_relative(p, root)}" for p in paths[:limit]]
    if len(paths) > limit:
        lines.append(f"  ... and {len(paths) - limit} more")
    return lines + [""]


def _reason_list(title: str, items: list[tuple[Path, str]], root: Path,
                 limit: int = 50) -> list[str]:
    lines = [f"{title}: {len(items)}"]
    lines += [f"  {_relative(p, root)}: {why}" for p, why in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return lines + [""]


def _minutes(seconds: float) -> str:
    return f"{seconds:.1f} s ({seconds / 60:.1f} min)"


def _header(report: ScanReport) -> list[str]:
    mean = report.total_duration_s / report.n_readable if report.n_readable else 0.0
    rates = ", ".join(f"{r} Hz x{n}" for r, n in report.sample_rates.items()) or "-"
    channels = ", ".join(f"{c} ch x{n}" for c, n in report.channel_counts.items()) or "-"
    codecs = ", ".join(f"{c} x{n}" for c, n in report.codecs.items()) or "-"
    return [
        f"corpus {report.name} at {report.root}",
        f"  utterances      {report.n_utterances} ({report.n_readable} readable)",
        f"  labels          {len(report.label_counts)}",
        f"  speakers        {len(report.speaker_counts)}",
        f"  total duration  {_minutes(report.total_duration_s)}",
        f"  per file        min {report.min_duration_s:.2f} s, mean {mean:.2f} s, "
        f"max {report.max_duration_s:.2f} s",
        f"  sample rates    {rates}",
        f"  channels        {channels}",
        f"  codecs          {codecs}",
        f"  scan time       {report.elapsed_s:.1f} s",
        "",
    ]


def format_scan(report: ScanReport) -> str:
    """The report as readable plain text: totals, count tables, flagged files, problems."""
    n = report.n_utterances
    lines = _header(report)
    lines += _table("per label", report.label_counts, n)
    lines += _table("per speaker", report.speaker_counts, n)
    lines += _table("per split", report.split_counts, n)
    if report.speaker_norm_warning:
        lines += [f"warning: {report.speaker_norm_warning}", ""]
    lines += _path_list("mono files (Side view all zeros, L = R)", report.mono, report.root)
    lines += _path_list("stereo files with bit-identical channels (Side view all zeros)",
                        report.identical_channels, report.root)
    lines += _reason_list("unreadable files", report.unreadable, report.root)
    lines += _reason_list("files breaking the naming rule", report.problems, report.root)
    if report.skipped:
        lines += _reason_list("left out by the corpus's rule", report.skipped, report.root)
    return "\n".join(lines).rstrip() + "\n"
