"""Corpora the software knows by name: files -> labelled, speaker-tagged utterances.

``corpus(name, root)`` walks ``root`` for audio/video files (by extension, case-insensitive,
sorted for determinism), parses each file's name with the corpus's naming rule and returns
a :class:`Corpus`, a list-like of :class:`Utterance`.

Labels. The named corpora (emovo, ravdess, ...) give canonical English lower-case words
(:data:`LABELS`), so results compare across them. The ``folder`` and ``csv`` corpora (and
``scenes``) keep the user's own labels, stripped and lower-cased (``Frustrated`` ->
``frustrated``); any set of labels is accepted. ``label_map`` changes labels after reading,
for every corpus: ``"canonical"`` maps binser's synonyms to :data:`LABELS` (``happy`` ->
``joy``, ``angry`` -> ``anger``; a label with no canonical form becomes a problem), and a
mapping ``{word: label}`` renames the words it names (case-insensitive) and keeps the others
(:func:`parse_label_map` reads ``canonical`` or ``A=B,C=D`` as the CLI's ``--label-map``).

Links. Symbolic links to files and to folders are followed (a folder of links to actor
folders is the natural way to try a subset); a linked folder already visited on the way
down (a loop, or the same folder linked twice) is read once. Paths keep the link's name,
so naming rules that look at folder names see the names as linked.

Three kinds of files are told apart:

* ignored silently: hidden files and folders (name starts with ``.``) and files that are not
  audio or video by extension (``README.md``, ``SHA256SUMS``, ``*.csv`` ...);
* ``Corpus.problems``: media files (or manifest rows) that look like part of the corpus but
  break its naming rule, each with the reason. ``strict=True`` raises :class:`CorpusError`
  listing them;
* ``Corpus.skipped``: files or rows left out on purpose by the corpus's own rule, with the
  reason. They are not errors and ``strict=True`` does not raise for them:
  RAVDESS songs (vocal channel 02; binser reads RAVDESS speech only) and video-only clips
  (modality 02, which carry no audio track), and BAUM-1s rows outside the six basic emotions
  (one aggregated entry per manifest naming the count of each skipped state).

Speakers: ``Utterance.speaker`` is what speaker-independent protocols group by. AFEW has no
speaker ids, so its speaker is the clip stem and its protocol is its own ``split``
(``"train"`` for Train, ``"test"`` for Val). For the ``folder`` layout ``speakers_from``
(:data:`SPEAKER_RULES`, the CLI's ``--speakers-from``) picks the rule: ``prefix`` (default)
the part of the file stem before the first ``_`` or ``-`` (the whole stem when it has
neither); ``folder`` the folder below the label folder (``<root>/<label>/<speaker>/<file>``);
``regex:PATTERN`` the group ``speaker`` (else the first group, else the whole match) of
``PATTERN`` searched in the path relative to the root (POSIX form, e.g.
``regex:^[^/]+/(?P<speaker>[A-Z][0-9]+)``); a file the rule finds no speaker in is a problem.
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import overload

import numpy as np

from .audio import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, is_video
from .errors import CorpusError

LABELS: tuple[str, ...] = (
    "anger", "boredom", "calm", "disgust", "fear", "joy", "neutral", "sadness", "surprise",
)

_SYNONYMS: dict[str, str] = {
    **{label: label for label in LABELS},
    "happy": "joy",
    "happiness": "joy",
    "angry": "anger",
    "sad": "sadness",
    "fearful": "fear",
    "surprised": "surprise",
    "disgusted": "disgust",
    "bored": "boredom",
}

MEDIA_EXTENSIONS: frozenset[str] = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS

DATASETS: dict[str, str] = {
    "emovo": "EMOVO: Italian acted speech, 6 actors, 7 emotions, stereo (LOSO)",
    "ravdess": "RAVDESS speech: North-American acted speech, 24 actors, 8 emotions",
    "cremad": "CREMA-D: English acted speech, 91 actors, 6 emotions",
    "emodb": "EmoDB: Berlin German acted speech, 10 speakers, 7 emotions",
    "urdu": "URDU: Urdu talk-show speech, 4 emotions in one folder each",
    "afew": "AFEW 5.0 (EmotiW): film clips, 7 emotions, own Train/Val split (protocol split)",
    "baum1s": "BAUM-1s: Turkish spontaneous video, 6 basic emotions from a CSV (losgo:5)",
    "folder": "any corpus as <root>/<label>/<speaker>_<rest>.<ext>, any labels "
              "(--speakers-from for other speaker rules)",
    "csv": "any corpus listed in a CSV manifest: path, label, speaker[, split]; any labels",
    "scenes": "binaural scenes made by 'binser scenes' (its --out folder, read via scenes.csv)",
}


SPEAKER_RULES: tuple[str, ...] = ("prefix", "folder", "regex:PATTERN")


def canonical_label(word: str) -> str:
    """Map an emotion word (any case, synonyms such as ``happy``) to its :data:`LABELS` entry."""
    key = str(word).strip().lower()
    if key not in _SYNONYMS:
        raise CorpusError(
            f"unknown emotion label {word!r}; known labels: {', '.join(LABELS)} "
            f"(synonyms: {', '.join(k for k in _SYNONYMS if k not in LABELS)})"
        )
    return _SYNONYMS[key]


def own_label(word: str) -> str:
    """A user's label as binser keeps it: stripped and lower-cased; CorpusError if empty."""
    label = str(word).strip().lower()
    if not label:
        raise CorpusError("empty label")
    return label


def parse_label_map(text: str | None) -> str | dict[str, str] | None:
    """``--label-map``: None or ``""`` -> None (labels as read); ``canonical``; or
    ``A=B,C=D`` -> ``{"a": "b", "c": "d"}`` (words stripped and lower-cased). CorpusError
    naming the bad item otherwise."""
    if text is None or not str(text).strip():
        return None
    if str(text).strip().lower() == "canonical":
        return "canonical"
    mapping: dict[str, str] = {}
    for item in str(text).split(","):
        word, sep, label = item.partition("=")
        if not sep or not word.strip() or not label.strip():
            raise CorpusError(f"--label-map: {item.strip()!r} is not WORD=LABEL (give "
                              "'canonical' or pairs such as angry=anger,happy=joy)")
        if own_label(word) in mapping:
            raise CorpusError(f"--label-map: {word.strip()!r} is mapped twice")
        mapping[own_label(word)] = own_label(label)
    return mapping


def _check_label_map(label_map) -> str | dict[str, str] | None:
    if label_map is None or label_map == "canonical":
        return label_map
    if isinstance(label_map, str):
        return parse_label_map(label_map)
    if not isinstance(label_map, Mapping):
        raise CorpusError(f"label_map must be None, 'canonical' or a mapping, got "
                          f"{type(label_map).__name__}")
    return {own_label(k): own_label(v) for k, v in label_map.items()}


def _relabel(found: "_Found", label_map: str | dict[str, str] | None) -> "_Found":
    """Apply ``label_map`` to every utterance; a word with no canonical form is a problem."""
    if label_map is None:
        return found
    kept = []
    for u in found.utterances:
        if label_map == "canonical":
            try:
                label = canonical_label(u.label)
            except CorpusError:
                found.problems.append((u.path, f"label {u.label!r} has no canonical form "
                                               f"(--label-map canonical: {', '.join(LABELS)} "
                                               "or a synonym)"))
                continue
        else:
            label = label_map.get(u.label.lower(), u.label)
        kept.append(replace(u, label=label))
    found.utterances = kept
    return found


@dataclass(frozen=True)
class Utterance:
    """One labelled recording: its file, canonical label, speaker id and optional split."""

    path: Path
    label: str
    speaker: str
    split: str | None = None


class Corpus(Sequence[Utterance]):
    """A named, list-like collection of :class:`Utterance` read from ``root``.

    ``problems`` lists ``(path, reason)`` for files or manifest rows that break the corpus's
    naming rule; ``skipped`` lists ``(path, reason)`` for those left out on purpose.
    """

    def __init__(self, name: str, root: Path, utterances: Iterable[Utterance],
                 problems: Iterable[tuple[Path, str]] = (),
                 skipped: Iterable[tuple[Path, str]] = ()) -> None:
        self.name = name
        self.root = Path(root)
        self.utterances: list[Utterance] = list(utterances)
        self.problems: list[tuple[Path, str]] = list(problems)
        self.skipped: list[tuple[Path, str]] = list(skipped)

    @overload
    def __getitem__(self, index: int) -> Utterance: ...

    @overload
    def __getitem__(self, index: slice) -> Corpus: ...

    def __getitem__(self, index):
        """An utterance by position, or a sub-corpus for a slice."""
        if isinstance(index, slice):
            return self._with(self.utterances[index])
        return self.utterances[index]

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    def __repr__(self) -> str:
        return (f"Corpus(name={self.name!r}, root={str(self.root)!r}, utterances={len(self)}, "
                f"labels={len(self.labels)}, speakers={len(self.speakers)}, "
                f"problems={len(self.problems)})")

    @property
    def labels(self) -> list[str]:
        """Sorted unique labels present."""
        return sorted({u.label for u in self.utterances})

    @property
    def speakers(self) -> list[str]:
        """Sorted unique speaker ids present."""
        return sorted({u.speaker for u in self.utterances})

    @property
    def paths(self) -> list[Path]:
        """Every utterance's file, in corpus order."""
        return [u.path for u in self.utterances]

    def label_counts(self) -> dict[str, int]:
        """Utterances per label, keys sorted."""
        return _sorted_counts(u.label for u in self.utterances)

    def speaker_counts(self) -> dict[str, int]:
        """Utterances per speaker, keys sorted."""
        return _sorted_counts(u.speaker for u in self.utterances)

    def split_counts(self) -> dict[str, int]:
        """Utterances per split (utterances without a split are not counted), keys sorted."""
        return _sorted_counts(u.split for u in self.utterances if u.split is not None)

    def subset(self, indices: Iterable[int]) -> Corpus:
        """A corpus with the utterances at ``indices`` (ints, in the given order).

        A boolean mask of the corpus's length is accepted too.
        """
        picked = np.asarray(list(indices))
        if picked.dtype == bool:
            if picked.shape != (len(self),):
                raise CorpusError(f"boolean mask of length {picked.size} for a corpus of "
                                  f"{len(self)} utterances")
            picked = np.flatnonzero(picked)
        return self._with([self.utterances[int(i)] for i in picked])

    def _with(self, utterances: list[Utterance]) -> Corpus:
        return Corpus(self.name, self.root, utterances, self.problems, self.skipped)


def _sorted_counts(values: Iterable[str]) -> dict[str, int]:
    counts = Counter(values)
    return {key: counts[key] for key in sorted(counts)}


# --------------------------------------------------------------------------- parse outcomes

class _Problem(Exception):
    """A media file breaks the corpus's naming rule (reason in ``args[0]``)."""


class _Skip(Exception):
    """A media file is left out on purpose by the corpus's rule (reason in ``args[0]``)."""


@dataclass
class _Found:
    """What an adapter read from a root: utterances, problems, deliberate skips."""

    utterances: list[Utterance] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- file discovery

def media_files(root: Path) -> list[Path]:
    """Audio/video files under ``root`` by extension (any case), hidden entries excluded.

    Symbolic links to files and folders are followed; a folder reached a second time (a
    link loop, or one folder linked twice) is not read again. Paths keep the links' names.
    Sorted by their path relative to ``root`` (POSIX form), so the order is deterministic.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        here = os.stat(folder)
        if (here.st_dev, here.st_ino) in seen:   # a loop or a second link to it
            dirs[:] = []
            continue
        seen.add((here.st_dev, here.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in MEDIA_EXTENSIONS:
                found.append(Path(folder) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


Parser = Callable[[Path, Path], Utterance]


def _parse_files(root: Path, parse: Parser) -> _Found:
    """Run ``parse(path, relative_path)`` on every media file, sorting outcomes."""
    found = _Found()
    for path in media_files(root):
        try:
            found.utterances.append(parse(path, path.relative_to(root)))
        except _Problem as why:
            found.problems.append((path, str(why)))
        except _Skip as why:
            found.skipped.append((path, str(why)))
    return found


# --------------------------------------------------------------------------- EMOVO

_EMOVO_CODES = {"dis": "disgust", "gio": "joy", "neu": "neutral", "pau": "fear",
                "rab": "anger", "sor": "surprise", "tri": "sadness"}
_EMOVO_RE = re.compile(r"^(?P<emo>[a-z]{3})-(?P<actor>[a-z]+\d+)-(?P<sentence>[a-z]+\d+)$")


def _parse_emovo(path: Path, rel: Path) -> Utterance:
    m = _EMOVO_RE.match(path.stem)
    if m is None:
        raise _Problem("name is not <emo>-<actor>-<sentence> (e.g. rab-f1-b1)")
    if m["emo"] not in _EMOVO_CODES:
        raise _Problem(f"unknown EMOVO emotion code {m['emo']!r} "
                       f"(expected one of {' '.join(_EMOVO_CODES)})")
    if len(rel.parts) < 2 or rel.parts[-2] != m["actor"]:
        raise _Problem(f"file of actor {m['actor']!r} is not in folder {m['actor']}/")
    return Utterance(path, _EMOVO_CODES[m["emo"]], m["actor"])


# --------------------------------------------------------------------------- RAVDESS

_RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "joy", "04": "sadness",
                     "05": "anger", "06": "fear", "07": "disgust", "08": "surprise"}
_RAVDESS_RE = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
_RAVDESS_ACTOR_DIR = re.compile(r"^Actor_(\d{2})$", re.IGNORECASE)


def _parse_ravdess(path: Path, rel: Path) -> Utterance:
    m = _RAVDESS_RE.match(path.stem)
    if m is None:
        raise _Problem("name is not seven two-digit fields MM-VV-EE-II-SS-RR-AA "
                       "(e.g. 03-01-05-01-02-01-12)")
    modality, channel, emotion, _, _, _, actor = m.groups()
    _check_ravdess_modality(path, modality)
    if channel == "02":
        raise _Skip("song (vocal channel 02); binser reads RAVDESS speech only")
    if channel != "01":
        raise _Problem(f"unknown vocal channel {channel!r} (01 speech, 02 song)")
    if emotion not in _RAVDESS_EMOTIONS:
        raise _Problem(f"unknown emotion code {emotion!r} (expected 01..08)")
    folder = _RAVDESS_ACTOR_DIR.match(rel.parts[-2]) if len(rel.parts) >= 2 else None
    if folder is not None and folder.group(1) != actor:
        raise _Problem(f"actor field {actor} does not match folder {rel.parts[-2]}")
    return Utterance(path, _RAVDESS_EMOTIONS[emotion], f"Actor_{actor}")


def _check_ravdess_modality(path: Path, modality: str) -> None:
    """Modality 03 is audio-only, 01 full audio-video, 02 video-only (no sound)."""
    if modality == "02":
        raise _Skip("video-only clip (modality 02) has no audio track")
    if modality == "03" and is_video(path):
        raise _Problem("modality 03 (audio-only) but the file has a video extension")
    if modality == "01" and not is_video(path):
        raise _Problem("modality 01 (audio-video) but the file has an audio extension")
    if modality not in ("01", "03"):
        raise _Problem(f"unknown modality {modality!r} (01 audio-video, 02 video-only, "
                       "03 audio-only)")


# --------------------------------------------------------------------------- CREMA-D

_CREMAD_EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "joy",
                    "NEU": "neutral", "SAD": "sadness"}
_CREMAD_RE = re.compile(r"^(?P<actor>\d+)_(?P<sentence>[A-Za-z]+)_(?P<emo>[A-Za-z]+)_"
                        r"(?P<level>[A-Za-z]+)$")


def _parse_cremad(path: Path, rel: Path) -> Utterance:
    m = _CREMAD_RE.match(path.stem)
    if m is None:
        raise _Problem("name is not <actor>_<sentence>_<EMO>_<level> (e.g. 1001_DFA_ANG_XX)")
    if m["emo"] not in _CREMAD_EMOTIONS:
        raise _Problem(f"unknown CREMA-D emotion {m['emo']!r} "
                       f"(expected one of {' '.join(_CREMAD_EMOTIONS)})")
    return Utterance(path, _CREMAD_EMOTIONS[m["emo"]], m["actor"])


# --------------------------------------------------------------------------- EmoDB

_EMODB_EMOTIONS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "joy",
                   "T": "sadness", "N": "neutral"}
_EMODB_RE = re.compile(r"^(?P<speaker>\d{2})(?P<text>[a-z]\d{2})(?P<emo>[A-Z])(?P<version>[a-z])$")


def _parse_emodb(path: Path, rel: Path) -> Utterance:
    m = _EMODB_RE.match(path.stem)
    if m is None:
        raise _Problem("name is not <speaker 2 digits><text 3 chars><emotion letter><version> "
                       "(e.g. 03a01Fa)")
    if m["emo"] not in _EMODB_EMOTIONS:
        raise _Problem(f"unknown EmoDB emotion letter {m['emo']!r} "
                       f"(expected one of {' '.join(_EMODB_EMOTIONS)})")
    return Utterance(path, _EMODB_EMOTIONS[m["emo"]], m["speaker"])


# --------------------------------------------------------------------------- URDU

_URDU_FOLDERS = {"angry": "anger", "happy": "joy", "neutral": "neutral", "sad": "sadness"}
_URDU_RE = re.compile(r"^(?P<speaker>S[MF]\d+)_F\d+_[A-Za-z]\d+$")


def _parse_urdu(path: Path, rel: Path) -> Utterance:
    folder = rel.parts[-2] if len(rel.parts) >= 2 else ""
    if folder.lower() not in _URDU_FOLDERS:
        raise _Problem(f"not inside an emotion folder Angry|Happy|Neutral|Sad (folder {folder!r})")
    m = _URDU_RE.match(path.stem)
    if m is None:
        raise _Problem("name is not S<gender><id>_F<nn>_<letter><nn> (e.g. SM1_F10_A01)")
    return Utterance(path, _URDU_FOLDERS[folder.lower()], m["speaker"])


# --------------------------------------------------------------------------- AFEW

_AFEW_SPLITS = {"train_afew": "train", "train": "train", "val_afew": "test", "val": "test"}
_AFEW_EMOTIONS = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "joy",
                  "neutral": "neutral", "sad": "sadness", "surprise": "surprise"}


def _parse_afew(path: Path, rel: Path) -> Utterance:
    if len(rel.parts) < 3:
        raise _Problem("not inside <Train_AFEW|Val_AFEW>/<Emotion>/")
    split_dir, emotion_dir = rel.parts[-3], rel.parts[-2]
    if split_dir.lower() not in _AFEW_SPLITS:
        raise _Problem(f"folder {split_dir!r} is not Train_AFEW, Val_AFEW, Train or Val")
    if emotion_dir.lower() not in _AFEW_EMOTIONS:
        raise _Problem(f"unknown AFEW emotion folder {emotion_dir!r} (expected Angry Disgust "
                       "Fear Happy Neutral Sad Surprise)")
    return Utterance(path, _AFEW_EMOTIONS[emotion_dir.lower()], path.stem,
                     _AFEW_SPLITS[split_dir.lower()])


# --------------------------------------------------------------------------- folder

_SPEAKER_SEP = re.compile(r"[_-]")
SpeakerRule = Callable[[Path, Path], str]


def _speaker_by_prefix(path: Path, rel: Path) -> str:
    return _SPEAKER_SEP.split(path.stem, maxsplit=1)[0] or path.stem


def _speaker_by_folder(path: Path, rel: Path) -> str:
    if len(rel.parts) < 3:
        raise _Problem("--speakers-from folder: file is not in a speaker folder "
                       "(<root>/<label>/<speaker>/<file>)")
    return rel.parts[1]


def _speaker_by_regex(pattern: re.Pattern) -> SpeakerRule:
    def speaker(path: Path, rel: Path) -> str:
        m = pattern.search(rel.as_posix())
        if m is None:
            raise _Problem(f"--speakers-from: {pattern.pattern!r} does not match "
                           f"{rel.as_posix()!r}")
        found = (m.group("speaker") if "speaker" in pattern.groupindex
                 else m.group(1) if pattern.groups else m.group(0))
        if not found:
            raise _Problem(f"--speakers-from: {pattern.pattern!r} finds an empty speaker in "
                           f"{rel.as_posix()!r}")
        return found
    return speaker


def speaker_rule(text: str | None) -> SpeakerRule:
    """The folder corpus's speaker rule named by ``text`` (:data:`SPEAKER_RULES`; None:
    ``prefix``); CorpusError for an unknown rule or a bad pattern."""
    name = "prefix" if text is None else str(text).strip()
    if name == "prefix":
        return _speaker_by_prefix
    if name == "folder":
        return _speaker_by_folder
    if name.startswith("regex:"):
        try:
            pattern = re.compile(name[len("regex:"):])
        except re.error as exc:
            raise CorpusError(f"--speakers-from {name!r}: not a regular expression "
                              f"({exc})") from None
        return _speaker_by_regex(pattern)
    raise CorpusError(f"--speakers-from {name!r}: expected prefix, folder or regex:PATTERN")


def _parse_folder(path: Path, rel: Path, speaker: SpeakerRule = _speaker_by_prefix
                  ) -> Utterance:
    if len(rel.parts) < 2:
        raise _Problem("file is not inside a label folder (<root>/<label>/<file>)")
    return Utterance(path, own_label(rel.parts[0]), speaker(path, rel))


def _load_folder(root: Path, manifest: str | Path | None,
                 speakers_from: str | None = None) -> _Found:
    """``folder``: ``<root>/<label>/...``, the speaker by ``speakers_from``."""
    rule = speaker_rule(speakers_from)
    return _parse_files(root, lambda path, rel: _parse_folder(path, rel, rule))


# --------------------------------------------------------------------------- manifests

def _find_manifest(root: Path, manifest: str | Path | None) -> Path:
    """The manifest given, else the single ``*.csv`` directly in ``root``."""
    if manifest is not None:
        path = Path(manifest).expanduser()
        if not path.is_absolute() and not path.exists():
            path = root / path
        if not path.is_file():
            raise CorpusError(f"{path}: manifest not found")
        return path.absolute()
    candidates = sorted(p for p in root.glob("*.csv") if not p.name.startswith("."))
    if len(candidates) != 1:
        what = "no" if not candidates else f"{len(candidates)}"
        raise CorpusError(f"{root}: found {what} *.csv manifest files in the corpus folder; "
                          "pass the manifest explicitly")
    return candidates[0]


def _read_manifest(path: Path, required: Sequence[str],
                   optional: Sequence[str] = ()) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as ``(line number, {column: value})``; headers are case-insensitive."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise CorpusError(f"{path}: manifest is empty (expected a header row with "
                                  f"{', '.join(required)})")
            columns = [h.strip().lower() for h in header]
            missing = [c for c in required if c not in columns]
            if missing:
                raise CorpusError(f"{path}: manifest lacks column(s) {', '.join(missing)} "
                                  f"(found {', '.join(columns)})")
            wanted = [*required, *(c for c in optional if c in columns)]
            index = {c: columns.index(c) for c in wanted}
            return [(reader.line_num, {c: _cell(row, i) for c, i in index.items()})
                    for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CorpusError(f"{path}: cannot read manifest ({exc})") from exc


def _cell(row: list[str], index: int) -> str:
    return row[index].strip() if index < len(row) else ""


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` lies inside ``root`` lexically (``..`` resolved, symlinks not followed)."""
    normal = Path(os.path.normpath(path.absolute()))
    base = Path(os.path.normpath(root.absolute()))
    return normal == base or base in normal.parents


def _manifest_file(text: str, base: Path, root: Path) -> Path:
    """Resolve a manifest path cell against ``base``; refuse escapes, absences, non-media."""
    if not text:
        raise _Problem("empty path")
    rel = Path(text.replace("\\", "/"))
    if rel.is_absolute() or not _inside(base / rel, root):
        raise _Problem(f"path escapes the corpus folder ({text})")
    path = Path(os.path.normpath(base.absolute() / rel))
    if path.suffix.lower() not in MEDIA_EXTENSIONS:
        raise _Problem(f"not an audio or video file by extension ({text})")
    if not path.is_file():
        raise _Problem(f"file not found ({text})")
    return path


_CSV_SPLITS = ("train", "test")


def _csv_row(row: dict[str, str], base: Path, root: Path) -> Utterance:
    path = _manifest_file(row["path"], base, root)
    if not row["label"]:
        raise _Problem("empty label")
    label = own_label(row["label"])
    if not row["speaker"]:
        raise _Problem("empty speaker")
    split = row.get("split", "").lower() or None
    if split is not None and split not in _CSV_SPLITS:
        raise _Problem(f"split {row.get('split')!r} is not train or test")
    return Utterance(path, label, row["speaker"], split)


def _load_csv(root: Path, manifest: str | Path | None) -> _Found:
    """``csv``: rows path,label,speaker[,split]; paths relative to the manifest's folder."""
    manifest_path = _find_manifest(root, manifest)
    found, seen = _Found(), set()
    for line, row in _read_manifest(manifest_path, ("path", "label", "speaker"), ("split",)):
        where = manifest_path.parent / row["path"] if row["path"] else manifest_path
        try:
            utterance = _csv_row(row, manifest_path.parent, root)
        except _Problem as why:
            found.problems.append((where, f"{manifest_path.name} line {line}: {why}"))
            continue
        if utterance.path in seen:
            found.problems.append((where, f"{manifest_path.name} line {line}: listed twice"))
            continue
        seen.add(utterance.path)
        found.utterances.append(utterance)
    found.utterances.sort(key=lambda u: u.path.relative_to(root).as_posix())
    return found


def _load_scenes(root: Path, manifest: str | Path | None) -> _Found:
    """``scenes``: the ``scenes.csv`` that ``binser scenes`` wrote in ``root`` (the source
    corpus's labels, speakers and splits; binser.scenes)."""
    path = root / "scenes.csv"
    if not path.is_file():
        raise CorpusError(f"{root}: no scenes.csv here (give the folder written by "
                          "'binser scenes --out')")
    return _load_csv(root, path)


# --------------------------------------------------------------------------- BAUM-1s

_BAUM_BASIC = ("anger", "disgust", "fear", "joy", "sadness", "surprise")


def _stem_index(root: Path) -> dict[str, list[Path]]:
    """Media files under ``root`` keyed by lower-case stem."""
    index: dict[str, list[Path]] = {}
    for path in media_files(root):
        index.setdefault(path.stem.lower(), []).append(path)
    return index


def _baum_clip(text: str, root: Path, index: dict[str, list[Path]]) -> Path:
    """A clip cell (stem or path relative to ``root``) -> the one matching media file."""
    if not text:
        raise _Problem("empty clip")
    rel = Path(text.replace("\\", "/"))
    if not rel.is_absolute() and _inside(root / rel, root) and (root / rel).is_file() \
            and rel.suffix.lower() in MEDIA_EXTENSIONS:
        return Path(os.path.normpath(root / rel))
    matches = index.get(rel.stem.lower() if rel.suffix.lower() in MEDIA_EXTENSIONS
                        else rel.name.lower(), [])
    if not matches:
        raise _Problem(f"clip {text!r} not found under the corpus folder")
    if len(matches) > 1:
        raise _Problem(f"clip {text!r} is ambiguous: {len(matches)} files share its name")
    return matches[0]


def _baum_label(text: str) -> str | None:
    """Canonical label for a basic emotion, None for another (skipped) mental state."""
    try:
        label = canonical_label(text)
    except CorpusError:
        return None
    return label if label in _BAUM_BASIC else None


def _load_baum1s(root: Path, manifest: str | Path | None) -> _Found:
    """``baum1s``: a CSV (clip, subject, emotion) naming clips found under ``root`` by stem."""
    manifest_path = _find_manifest(root, manifest)
    index, found, others = _stem_index(root), _Found(), Counter()
    for line, row in _read_manifest(manifest_path, ("clip", "subject", "emotion")):
        label = _baum_label(row["emotion"])
        if label is None:
            others[row["emotion"].lower() or "(empty)"] += 1
            continue
        try:
            path = _baum_clip(row["clip"], root, index)
            if not row["subject"]:
                raise _Problem("empty subject")
        except _Problem as why:
            found.problems.append((root / row["clip"], f"{manifest_path.name} line {line}: {why}"))
            continue
        found.utterances.append(Utterance(path, label, row["subject"]))
    if others:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(others.items()))
        found.skipped.append((manifest_path, f"skipped {sum(others.values())} rows outside the "
                                             f"six basic emotions: {detail}"))
    found.utterances.sort(key=lambda u: u.path.relative_to(root).as_posix())
    return _dedupe(found, manifest_path)


def _dedupe(found: _Found, manifest_path: Path) -> _Found:
    """Keep the first row naming a clip; later rows become problems."""
    seen: set[Path] = set()
    kept: list[Utterance] = []
    for u in found.utterances:
        if u.path in seen:
            found.problems.append((u.path, f"{manifest_path.name}: clip listed twice"))
        else:
            seen.add(u.path)
            kept.append(u)
    found.utterances = kept
    return found


# --------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class _Adapter:
    """How to read one corpus: its naming rule (for messages) and its reader."""

    rule: str
    load: Callable[..., _Found]
    uses_manifest: bool = False
    uses_speaker_rule: bool = False


def _by_name(parse: Parser) -> Callable[[Path, str | Path | None], _Found]:
    return lambda root, manifest: _parse_files(root, parse)


_ADAPTERS: dict[str, _Adapter] = {
    "emovo": _Adapter("<actor>/<emo>-<actor>-<sentence>.wav|flac with emo in "
                      "dis gio neu pau rab sor tri", _by_name(_parse_emovo)),
    "ravdess": _Adapter("Actor_NN/03-01-EE-II-SS-RR-AA.wav (speech; EE 01..08)",
                        _by_name(_parse_ravdess)),
    "cremad": _Adapter("<actor>_<sentence>_<EMO>_<level>.wav with EMO in ANG DIS FEA HAP NEU SAD",
                       _by_name(_parse_cremad)),
    "emodb": _Adapter("<speaker 2 digits><text 3 chars><emotion letter W L E A F T N>"
                      "<version>.wav, e.g. 03a01Fa.wav", _by_name(_parse_emodb)),
    "urdu": _Adapter("<Angry|Happy|Neutral|Sad>/S<gender><id>_F<nn>_<letter><nn>.wav",
                     _by_name(_parse_urdu)),
    "afew": _Adapter("<Train_AFEW|Val_AFEW|Train|Val>/<Angry|Disgust|Fear|Happy|Neutral|Sad|"
                     "Surprise>/<clip>.avi", _by_name(_parse_afew)),
    "baum1s": _Adapter("video clips under the folder plus a CSV with columns clip, subject, "
                       "emotion (six basic emotions)", _load_baum1s, uses_manifest=True),
    "folder": _Adapter("<root>/<label>/<file>, the speaker from the file name's prefix "
                       "(<speaker>_<rest>.<ext>) or by --speakers-from", _load_folder,
                       uses_speaker_rule=True),
    "csv": _Adapter("a CSV manifest with columns path, label, speaker[, split], paths relative "
                    "to the manifest's folder", _load_csv, uses_manifest=True),
    "scenes": _Adapter("a folder written by 'binser scenes --out' (scenes.csv: path, label, "
                       "speaker, split and the scene parameters)", _load_scenes),
}

assert set(_ADAPTERS) == set(DATASETS)


def _adapter(name: str) -> _Adapter:
    key = str(name).strip().lower()
    if key not in _ADAPTERS:
        raise CorpusError(f"unknown corpus {name!r}; known: {', '.join(DATASETS)}")
    return _ADAPTERS[key]


def _problem_lines(problems: Sequence[tuple[Path, str]], limit: int = 20) -> str:
    lines = [f"  {path}: {reason}" for path, reason in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def corpus(name: str, root: str | Path, manifest: str | Path | None = None,
           strict: bool = False, label_map: str | Mapping[str, str] | None = None,
           speakers_from: str | None = None) -> Corpus:
    """Read corpus ``name`` (a key of :data:`DATASETS`) from folder ``root``.

    ``manifest``: the CSV for ``csv`` and ``baum1s`` (default: the single ``*.csv`` in
    ``root``). ``label_map``: None (labels as read), ``"canonical"`` or ``{word: label}``
    (module docstring). ``speakers_from``: the ``folder`` corpus's speaker rule
    (:data:`SPEAKER_RULES`; None: ``prefix``). ``strict=True`` raises :class:`CorpusError`
    if any file breaks the naming rule; otherwise such files are listed in
    ``Corpus.problems``. Raises :class:`CorpusError` when ``root`` is missing, an option
    does not apply, or no utterance is found.
    """
    adapter = _adapter(name)
    key = str(name).strip().lower()
    label_map = _check_label_map(label_map)
    folder = Path(os.path.normpath(Path(root).expanduser().absolute()))
    if folder.exists() and not folder.is_dir():
        raise CorpusError(f"{folder}: a file, not a corpus folder (give the folder that "
                          "holds the corpus)")
    if not folder.is_dir():
        raise CorpusError(f"{folder}: corpus folder not found")
    if manifest is not None and not adapter.uses_manifest:
        raise CorpusError(f"corpus {key!r} is read from file names and takes no manifest")
    if speakers_from is not None and not adapter.uses_speaker_rule:
        raise CorpusError(f"--speakers-from is for the folder corpus; corpus {key!r} has "
                          "its own speakers")
    found = (adapter.load(folder, manifest, speakers_from) if adapter.uses_speaker_rule
             else adapter.load(folder, manifest))
    found = _relabel(found, label_map)
    if strict and found.problems:
        raise CorpusError(f"{folder}: {len(found.problems)} file(s) break the {key} naming rule "
                          f"({adapter.rule}):\n{_problem_lines(found.problems)}")
    if not found.utterances:
        detail = f"\n{_problem_lines(found.problems)}" if found.problems else ""
        raise CorpusError(f"{folder}: no utterances were found for corpus {key!r}; expected "
                          f"{adapter.rule}{detail}")
    return Corpus(key, folder, found.utterances, found.problems, found.skipped)
