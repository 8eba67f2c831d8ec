"""A scene run over a corpus: checks, output folder, resumable writing, manifest.

``DIR/scenes.json`` holds the run's identity (format, settings, HRIR file hash, corpus name and
digest) and is written first; a folder holding another run's ``scenes.json`` is refused, the
same one resumes. Each scene goes to ``DIR/<source path relative to the corpus root>.flac``
(16 kHz, 16-bit stereo FLAC) through a temporary ``.<name>.*.part`` file and ``os.replace``,
so a file that exists is complete. ``DIR/scenes.csv`` (one row per scene, :data:`COLUMNS`) is
rewritten atomically every :data:`FLUSH_EVERY` files, at the end and on interruption; a
rerun skips files that exist and have a row, removes leftover ``.part`` files, and renders
the rest (identically: each file's draws depend only on the seed and its own path).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..corpora import Corpus, Utterance
from ..errors import ConfigError, CorpusError
from .generate import SceneSettings, load_mono, render_scene
from .hrir import SAMPLE_RATE, HRIRSet, load_hrir

FORMAT = "binser-scenes-1"
MANIFEST = "scenes.csv"
SETTINGS_FILE = "scenes.json"
FLUSH_EVERY = 25
COLUMNS = ("path", "label", "speaker", "split", "source", "azimuth_deg", "hrir_azimuth_deg",
           "distance_m", "room_m", "rt60_s", "absorption", "drr_db", "snr_db", "noise",
           "interferer", "interferer_speaker", "interferer_azimuth_deg", "sir_db", "seed")


@dataclass(frozen=True)
class Job:
    """One scene to make: the source utterance, its path relative to the corpus root and
    the output file's path relative to the scene folder (both POSIX)."""

    utterance: Utterance
    source: str
    output: str


# ------------------------------------------------------------------------------ checks

def check_requirements() -> None:
    """ConfigError when the image-source model's package is missing."""
    import importlib.util

    if importlib.util.find_spec("pyroomacoustics") is None:
        raise ConfigError("binser scenes needs pyroomacoustics: pip install 'binser[scenes]'")


def check_speakers(corpus: Corpus, settings: SceneSettings) -> None:
    """CorpusError when the corpus has no speaker ids (every utterance its own speaker, as in
    AFEW) or, with competing talkers asked for, fewer than two speakers."""
    if len(corpus) > 1 and len(corpus.speakers) == len(corpus):
        raise CorpusError(f"corpus {corpus.name!r} has no speaker ids (every utterance is its "
                          "own speaker): scenes need speakers, to keep speaker-independent "
                          "folds and to pick competing talkers of other speakers")
    if settings.interferer_prob > 0 and len(corpus.speakers) < 2:
        raise CorpusError(f"corpus {corpus.name!r} has {len(corpus.speakers)} speaker(s): a "
                          "competing talker must be another speaker (or pass "
                          "--interferer-prob 0)")


def plan(corpus: Corpus) -> list[Job]:
    """One :class:`Job` per utterance; CorpusError if two sources map to one output."""
    jobs, seen = [], {}
    for u in corpus:
        rel = Path(u.path).relative_to(corpus.root).as_posix()
        out = Path(rel).with_suffix(".flac").as_posix()
        if out in seen:
            raise CorpusError(f"{u.path} and {seen[out]} would both become the scene {out}; "
                              "rename one of them")
        seen[out] = u.path
        jobs.append(Job(u, rel, out))
    return jobs


def corpus_digest(jobs: list[Job]) -> str:
    """SHA-256 over every source's relative path, label, speaker and split (in order)."""
    text = "\n".join(f"{j.source}\t{j.utterance.label}\t{j.utterance.speaker}\t"
                     f"{j.utterance.split or ''}" for j in jobs)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_identity(corpus: Corpus, jobs: list[Job], settings: SceneSettings,
                 hrirs: HRIRSet) -> dict[str, Any]:
    """What ``scenes.json`` stores; two runs with equal identities make equal files."""
    return {"format": FORMAT, "sample_rate": SAMPLE_RATE, "settings": settings.to_json(),
            "hrir_sha256": hrirs.sha256, "corpus": corpus.name, "corpus_digest":
            corpus_digest(jobs), "utterances": len(jobs), "hrir": str(hrirs.path),
            "corpus_root": str(corpus.root)}


_COMPARED = ("format", "sample_rate", "settings", "hrir_sha256", "corpus", "corpus_digest")


def check_out_folder(out: Path, identity: dict[str, Any], corpus_root: Path) -> bool:
    """ConfigError for a folder that holds something else or another run's scenes; True
    when it holds this run's (resume)."""
    from ..outputs import check_folder

    out = check_folder(out, "--out")
    root = Path(os.path.abspath(corpus_root))
    if out == root or root in out.parents:
        raise ConfigError(f"--out {out}: inside the source corpus folder {root}; choose a "
                          "folder outside it")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    stored = out / SETTINGS_FILE
    if not stored.is_file():
        raise ConfigError(f"--out {out}: folder exists and holds no {SETTINGS_FILE} (not a "
                          "binser scenes folder); choose a new or empty folder")
    try:
        old = json.loads(stored.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--out {out}: cannot read {SETTINGS_FILE} ({exc})") from None
    old_settings = old.get("settings") if isinstance(old.get("settings"), dict) else {}
    differ = [f"settings.{k}" for k, v in identity["settings"].items()
              if old_settings.get(k) != v]
    differ += [k for k in _COMPARED if k != "settings" and old.get(k) != identity[k]]
    if differ:
        raise ConfigError(f"--out {out}: holds scenes made with other settings or another "
                          f"corpus (differs in {', '.join(differ)}); choose another folder, "
                          "or the same settings to resume")
    return True


# ------------------------------------------------------------------------------ files

def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_flac(path: Path, audio: np.ndarray) -> None:
    """(2, N) float -> a 16 kHz 16-bit FLAC, atomically."""
    import soundfile as sf

    _atomic_write(path, lambda h: sf.write(h, np.asarray(audio).T, SAMPLE_RATE,
                                           format="FLAC", subtype="PCM_16"))


def write_manifest(out: Path, jobs: list[Job], rows: dict[str, dict[str, Any]]) -> None:
    """``scenes.csv`` with the rows made so far, in corpus order, atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for job in jobs:
        if job.output in rows:
            writer.writerow(rows[job.output])
    _atomic_write(out / MANIFEST, lambda h: h.write(text.getvalue()), mode="w")


def read_manifest(out: Path) -> dict[str, dict[str, str]]:
    """Rows of an existing ``scenes.csv`` whose file exists, by path (empty if none)."""
    path = out / MANIFEST
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            return {}
        return {row["path"]: row for row in reader if (out / row["path"]).is_file()}


def _lock(out: Path):
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    handle = open(out.parent / f".{out.name}.lock", "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(f"--out {out}: another binser run is writing to this folder; wait "
                          "for it to finish or choose another folder") from None
    return handle


# ------------------------------------------------------------------------------ the run

def make_scenes(corpus: Corpus, out: str | Path, settings: SceneSettings = SceneSettings(),
                progress: bool = True) -> dict[str, Any]:
    """Render one scene per utterance of ``corpus`` into ``out`` (see the module docstring).

    Everything is checked before any file is written (settings, speakers, HRIR file, output
    folder). Returns ``out``, ``files`` (corpus size), ``made`` (rendered now), ``kept``
    (found complete), ``audio_s`` (seconds of audio rendered now), ``wall_s`` and ``xrt``
    (audio seconds per wall second of this call).
    """
    out = Path(os.path.abspath(out))
    check_requirements()
    check_speakers(corpus, settings)
    jobs = plan(corpus)
    hrirs = load_hrir(settings.hrir)
    identity = run_identity(corpus, jobs, settings, hrirs)
    check_out_folder(out, identity, corpus.root)
    lock = _lock(out)
    try:
        return _run(out, jobs, settings, hrirs, identity, progress)
    finally:
        lock.close()


def _others(jobs: list[Job]) -> dict[str, tuple[tuple[str, str, Path], ...]]:
    """For each speaker, the ``(relative path, speaker, path)`` of every other speaker's
    utterance, in corpus order."""
    everyone = [(j.source, j.utterance.speaker, Path(j.utterance.path)) for j in jobs]
    return {s: tuple(e for e in everyone if e[1] != s) for s in {e[1] for e in everyone}}


def _run(out, jobs, settings, hrirs, identity, progress) -> dict[str, Any]:
    from tqdm.auto import tqdm   # (binser.features.progress_bar's kind; that module loads torch)

    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.rglob(".*.part"):
        leftover.unlink(missing_ok=True)
    _atomic_write(out / SETTINGS_FILE,
                  lambda h: h.write(json.dumps(identity, indent=2) + "\n"), mode="w")
    rows = read_manifest(out)
    others = _others(jobs)
    todo = [j for j in jobs if j.output not in rows]
    load = lambda path: load_mono(path, settings.downmix)  # noqa: E731
    start, audio_s, made = time.perf_counter(), 0.0, 0
    bar = tqdm(total=len(todo), unit="file", desc="scenes", disable=not progress, leave=False)
    try:
        for job in todo:
            source = load(Path(job.utterance.path))
            scene = render_scene(source, job.source, settings, hrirs,
                                 others[job.utterance.speaker], load)
            write_flac(out / job.output, scene.mixture)
            u = job.utterance
            rows[job.output] = {"path": job.output, "label": u.label, "speaker": u.speaker,
                                "split": u.split or "", **scene.params}
            made += 1
            audio_s += source.size / SAMPLE_RATE
            bar.update(1)
            if made % FLUSH_EVERY == 0:
                write_manifest(out, jobs, rows)
    finally:
        bar.close()
        write_manifest(out, jobs, rows)
    wall = time.perf_counter() - start
    return {"out": str(out), "files": len(jobs), "made": made, "kept": len(jobs) - len(todo),
            "audio_s": audio_s, "wall_s": wall, "xrt": audio_s / wall if wall > 0 else None}
