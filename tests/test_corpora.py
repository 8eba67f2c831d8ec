"""Corpus adapters on synthetic trees of correctly and wrongly named tiny files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from binser.corpora import (DATASETS, LABELS, Corpus, Utterance, canonical_label, corpus,
                            parse_label_map)
from binser.errors import CorpusError

SR = 16000


def write_wav(path: Path, channels: int = 2, seconds: float = 0.1, seed: int = 0) -> Path:
    """A real tiny WAV of noise (written as WAV bytes whatever the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).uniform(-0.3, 0.3, (int(SR * seconds), channels))
    with open(path, "wb") as handle:
        sf.write(handle, noise, SR, format="WAV", subtype="PCM_16")
    return path


def make_tree(root: Path, names: list[str]) -> None:
    for name in names:
        write_wav(root / name)


def by_name(c: Corpus) -> dict[str, Utterance]:
    return {u.path.relative_to(c.root).as_posix(): u for u in c}


def problem_reasons(c: Corpus) -> dict[str, str]:
    return {p.relative_to(c.root).as_posix(): why for p, why in c.problems}


def write_noise_files(root: Path) -> None:
    """Files every adapter must ignore silently: hidden, README, checksums, CSV-free."""
    (root / "README.md").write_text("about\n")
    (root / "SHA256SUMS").write_text("00  x\n")
    write_wav(root / ".hidden.wav")
    write_wav(root / ".cache" / "rab-f1-b1.wav")


# --------------------------------------------------------------------------- labels

@pytest.mark.parametrize("word, label", [
    ("happy", "joy"), ("Happiness", "joy"), ("ANGRY", "anger"), ("sad", "sadness"),
    ("Fearful", "fear"), ("surprised", "surprise"), ("disgusted", "disgust"),
    ("bored", "boredom"), (" Neutral ", "neutral"), ("calm", "calm"),
])
def test_canonical_label_synonyms(word, label):
    assert canonical_label(word) == label


def test_canonical_label_is_identity_on_labels():
    assert [canonical_label(w) for w in LABELS] == list(LABELS)
    assert list(LABELS) == sorted(LABELS) and len(set(LABELS)) == 9


def test_canonical_label_unknown_names_the_word():
    with pytest.raises(CorpusError, match="contempt"):
        canonical_label("contempt")


def test_datasets_names():
    assert set(DATASETS) == {"emovo", "ravdess", "cremad", "emodb", "urdu", "afew", "baum1s",
                             "folder", "csv", "scenes"}
    assert all(isinstance(d, str) and d and "\n" not in d for d in DATASETS.values())


# --------------------------------------------------------------------------- EMOVO

def test_emovo_names_labels_speakers_and_problems(tmp_path):
    make_tree(tmp_path, ["f1/rab-f1-b1.wav", "m2/gio-m2-n3.flac", "f1/sor-f1-b2.WAV",
                         "f1/xyz-f1-b1.wav", "f2/rab-f1-b3.wav", "f1/notes.wav",
                         "rab-f1-l1.wav"])
    write_noise_files(tmp_path)
    c = corpus("emovo", tmp_path)
    got = by_name(c)
    assert set(got) == {"f1/rab-f1-b1.wav", "m2/gio-m2-n3.flac", "f1/sor-f1-b2.WAV"}
    assert got["f1/rab-f1-b1.wav"] == Utterance(tmp_path / "f1/rab-f1-b1.wav", "anger", "f1")
    assert got["m2/gio-m2-n3.flac"].label == "joy"
    assert got["f1/sor-f1-b2.WAV"].label == "surprise"
    assert c.speakers == ["f1", "m2"] and c.labels == ["anger", "joy", "surprise"]
    reasons = problem_reasons(c)
    assert set(reasons) == {"f1/xyz-f1-b1.wav", "f2/rab-f1-b3.wav", "f1/notes.wav",
                            "rab-f1-l1.wav"}
    assert "xyz" in reasons["f1/xyz-f1-b1.wav"]
    assert "folder" in reasons["f2/rab-f1-b3.wav"]
    assert "<emo>-<actor>-<sentence>" in reasons["f1/notes.wav"]


def test_emovo_all_codes(tmp_path):
    codes = {"dis": "disgust", "gio": "joy", "neu": "neutral", "pau": "fear", "rab": "anger",
             "sor": "surprise", "tri": "sadness"}
    make_tree(tmp_path, [f"m3/{code}-m3-l4.wav" for code in codes])
    c = corpus("emovo", tmp_path, strict=True)
    assert {u.path.name[:3]: u.label for u in c} == codes


def test_strict_raises_listing_problems(tmp_path):
    make_tree(tmp_path, ["f1/rab-f1-b1.wav", "f1/bad-name.wav"])
    with pytest.raises(CorpusError, match="bad-name.wav"):
        corpus("emovo", tmp_path, strict=True)
    assert len(corpus("emovo", tmp_path).problems) == 1


def test_order_is_sorted_whatever_the_creation_order(tmp_path):
    names = ["m1/tri-m1-n1.wav", "f1/rab-f1-b1.wav", "f1/dis-f1-b1.wav", "f2/neu-f2-l1.wav"]
    make_tree(tmp_path, names)
    assert [p.relative_to(tmp_path).as_posix() for p in corpus("emovo", tmp_path).paths] == \
        sorted(names)


# --------------------------------------------------------------------------- RAVDESS

def test_ravdess(tmp_path):
    make_tree(tmp_path, [
        "Actor_01/03-01-01-01-01-01-01.wav",   # neutral
        "Actor_12/03-01-03-02-01-02-12.wav",   # happy -> joy
        "Actor_12/03-01-06-01-02-01-12.wav",   # fearful -> fear
        "Actor_12/01-01-05-01-01-01-12.mp4",   # audio-video, angry
        "Actor_12/03-02-03-01-01-01-12.wav",   # song -> skipped
        "Actor_12/02-01-05-01-01-01-12.mp4",   # video-only -> skipped
        "Actor_12/03-01-09-01-01-01-12.wav",   # emotion 09 -> problem
        "Actor_12/03-01-05-01-01-01-13.wav",   # actor 13 in Actor_12 -> problem
        "Actor_12/03-01-05.wav",               # too few fields -> problem
        "Actor_12/03-01-05-01-01-01-12.avi",   # audio-only modality with video ext -> problem
    ])
    c = corpus("ravdess", tmp_path)
    got = by_name(c)
    assert {k: (u.label, u.speaker) for k, u in got.items()} == {
        "Actor_01/03-01-01-01-01-01-01.wav": ("neutral", "Actor_01"),
        "Actor_12/03-01-03-02-01-02-12.wav": ("joy", "Actor_12"),
        "Actor_12/03-01-06-01-02-01-12.wav": ("fear", "Actor_12"),
        "Actor_12/01-01-05-01-01-01-12.mp4": ("anger", "Actor_12"),
    }
    skipped = {p.name: why for p, why in c.skipped}
    assert "song" in skipped["03-02-03-01-01-01-12.wav"]
    assert "no audio" in skipped["02-01-05-01-01-01-12.mp4"]
    reasons = problem_reasons(c)
    assert set(reasons) == {"Actor_12/03-01-09-01-01-01-12.wav",
                            "Actor_12/03-01-05-01-01-01-13.wav", "Actor_12/03-01-05.wav",
                            "Actor_12/03-01-05-01-01-01-12.avi"}
    assert "09" in reasons["Actor_12/03-01-09-01-01-01-12.wav"]
    assert "Actor_12" in reasons["Actor_12/03-01-05-01-01-01-13.wav"]


def test_ravdess_all_emotions_and_strict_ignores_deliberate_skips(tmp_path):
    make_tree(tmp_path, [f"Actor_05/03-01-{e:02d}-01-01-01-05.wav" for e in range(1, 9)]
              + ["Actor_05/03-02-01-01-01-01-05.wav"])
    c = corpus("ravdess", tmp_path, strict=True)
    assert [u.label for u in c] == ["neutral", "calm", "joy", "sadness", "anger", "fear",
                                    "disgust", "surprise"]
    assert len(c.skipped) == 1 and not c.problems


# --------------------------------------------------------------------------- CREMA-D

def test_cremad(tmp_path):
    make_tree(tmp_path, ["AudioWAV/1001_DFA_ANG_XX.wav", "AudioWAV/1091_TSI_HAP_HI.wav",
                         "AudioWAV/1002_IEO_NEU_XX.wav", "AudioWAV/1003_ITS_DIS_LO.wav",
                         "AudioWAV/1004_IWL_FEA_MD.wav", "AudioWAV/1005_WSI_SAD_XX.wav",
                         "AudioWAV/1001_DFA_XYZ_XX.wav", "AudioWAV/1001-DFA-ANG-XX.wav"])
    c = corpus("cremad", tmp_path)
    assert {u.path.stem: (u.label, u.speaker) for u in c} == {
        "1001_DFA_ANG_XX": ("anger", "1001"), "1091_TSI_HAP_HI": ("joy", "1091"),
        "1002_IEO_NEU_XX": ("neutral", "1002"), "1003_ITS_DIS_LO": ("disgust", "1003"),
        "1004_IWL_FEA_MD": ("fear", "1004"), "1005_WSI_SAD_XX": ("sadness", "1005"),
    }
    reasons = problem_reasons(c)
    assert set(reasons) == {"AudioWAV/1001_DFA_XYZ_XX.wav", "AudioWAV/1001-DFA-ANG-XX.wav"}
    assert "XYZ" in reasons["AudioWAV/1001_DFA_XYZ_XX.wav"]


# --------------------------------------------------------------------------- EmoDB

def test_emodb(tmp_path):
    letters = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "joy",
               "T": "sadness", "N": "neutral"}
    good = [f"wav/{10 + i:02d}a0{i}{letter}a.wav" for i, letter in enumerate(letters)]
    make_tree(tmp_path, good + ["wav/03a01Xa.wav", "wav/3a01Fa.wav", "wav/03a01Fa_copy.wav"])
    c = corpus("emodb", tmp_path)
    assert {u.path.stem[5]: u.label for u in c} == letters
    assert by_name(c)["wav/10a00Wa.wav"].speaker == "10"
    reasons = problem_reasons(c)
    assert set(reasons) == {"wav/03a01Xa.wav", "wav/3a01Fa.wav", "wav/03a01Fa_copy.wav"}
    assert "'X'" in reasons["wav/03a01Xa.wav"]


# --------------------------------------------------------------------------- URDU

def test_urdu(tmp_path):
    make_tree(tmp_path, ["Angry/SM1_F10_A01.wav", "Happy/SF2_F3_B12.wav",
                         "neutral/SM27_F1_C02.wav", "Sad/SF5_F22_D09.wav",
                         "Calm/SM1_F1_A01.wav", "Sad/XM1_F1_A01.wav", "SM1_F1_A02.wav"])
    c = corpus("urdu", tmp_path)
    assert {u.path.name: (u.label, u.speaker) for u in c} == {
        "SM1_F10_A01.wav": ("anger", "SM1"), "SF2_F3_B12.wav": ("joy", "SF2"),
        "SM27_F1_C02.wav": ("neutral", "SM27"), "SF5_F22_D09.wav": ("sadness", "SF5"),
    }
    reasons = problem_reasons(c)
    assert set(reasons) == {"Calm/SM1_F1_A01.wav", "Sad/XM1_F1_A01.wav", "SM1_F1_A02.wav"}
    assert "Calm" in reasons["Calm/SM1_F1_A01.wav"]


# --------------------------------------------------------------------------- AFEW

def test_afew_splits_and_labels(tmp_path):
    make_tree(tmp_path, ["Train_AFEW/Angry/000046280.avi", "Train_AFEW/Happy/000149120.avi",
                         "Val_AFEW/Disgust/001.avi", "Train/Sad/002.avi", "Val/Surprise/003.avi",
                         "Val_AFEW/Fear/004.mp4", "Train_AFEW/Neutral/005.avi",
                         "Test_AFEW/Angry/006.avi", "Train_AFEW/Contempt/007.avi", "008.avi"])
    c = corpus("afew", tmp_path)
    assert {u.path.stem: (u.label, u.split, u.speaker) for u in c} == {
        "000046280": ("anger", "train", "000046280"),
        "000149120": ("joy", "train", "000149120"),
        "001": ("disgust", "test", "001"), "002": ("sadness", "train", "002"),
        "003": ("surprise", "test", "003"), "004": ("fear", "test", "004"),
        "005": ("neutral", "train", "005"),
    }
    assert c.split_counts() == {"test": 3, "train": 4}
    reasons = problem_reasons(c)
    assert set(reasons) == {"Test_AFEW/Angry/006.avi", "Train_AFEW/Contempt/007.avi", "008.avi"}
    assert "Contempt" in reasons["Train_AFEW/Contempt/007.avi"]


# --------------------------------------------------------------------------- BAUM-1s

def write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_baum1s(tmp_path):
    make_tree(tmp_path, ["S001/S001_001.mp4", "S001/S001_002.mp4", "S002/S002_001.mp4",
                         "S002/S002_002.mp4", "S002/S002_003.mp4", "S003/S003_004.mp4"])
    write_csv(tmp_path / "annotations.csv", [
        ["Clip", "SUBJECT", "emotion"],
        ["S001_001", "S001", "Anger"],
        ["S001/S001_002.mp4", "S001", "sadness"],
        ["S002_001.mp4", "S002", "Happiness"],
        ["S002_002", "S002", "Thinking"],
        ["S002_003", "S002", "Unsure"],
        ["S003_004", "S003", "neutral"],
        ["S009_001", "S009", "Fear"],
    ])
    c = corpus("baum1s", tmp_path)
    assert {u.path.stem: (u.label, u.speaker) for u in c} == {
        "S001_001": ("anger", "S001"), "S001_002": ("sadness", "S001"),
        "S002_001": ("joy", "S002"),
    }
    assert all(u.path.is_file() for u in c)
    assert len(c.problems) == 1 and "S009_001" in c.problems[0][1]
    assert len(c.skipped) == 1
    path, why = c.skipped[0]
    assert path.name == "annotations.csv"
    assert "3 rows" in why and "thinking 1" in why and "unsure 1" in why


def test_baum1s_explicit_manifest_elsewhere(tmp_path):
    root = tmp_path / "clips"
    make_tree(root, ["S001_001.mp4", "S002_001.mp4"])
    manifest = write_csv(tmp_path / "labels.csv", [["clip", "subject", "emotion"],
                                                  ["S001_001", "S001", "disgust"],
                                                  ["S002_001", "S002", "Surprise"]])
    c = corpus("baum1s", root, manifest=manifest)
    assert [(u.label, u.speaker) for u in c] == [("disgust", "S001"), ("surprise", "S002")]


def test_manifest_must_be_unique_or_given(tmp_path):
    make_tree(tmp_path, ["S001_001.mp4"])
    with pytest.raises(CorpusError, match="no .*csv"):
        corpus("baum1s", tmp_path)
    write_csv(tmp_path / "a.csv", [["clip", "subject", "emotion"]])
    write_csv(tmp_path / "b.csv", [["clip", "subject", "emotion"]])
    with pytest.raises(CorpusError, match="2 .*csv"):
        corpus("baum1s", tmp_path)


def test_manifest_missing_column_names_it(tmp_path):
    make_tree(tmp_path, ["S001_001.mp4"])
    write_csv(tmp_path / "a.csv", [["clip", "emotion"], ["S001_001", "anger"]])
    with pytest.raises(CorpusError, match="subject"):
        corpus("baum1s", tmp_path)


# --------------------------------------------------------------------------- folder

FOLDER_TREE = ["anger/spk1_001.wav", "Happy/spk2-take3.flac", "sad/lonely.wav",
               "calm/deep/spk3_x.ogg", "Frustrated/spk1_002.wav", "loose.wav"]


def test_folder_keeps_any_label_as_written(tmp_path):
    make_tree(tmp_path, FOLDER_TREE)
    c = corpus("folder", tmp_path)
    assert {u.path.name: (u.label, u.speaker) for u in c} == {
        "spk1_001.wav": ("anger", "spk1"), "spk2-take3.flac": ("happy", "spk2"),
        "lonely.wav": ("sad", "lonely"), "spk3_x.ogg": ("calm", "spk3"),
        "spk1_002.wav": ("frustrated", "spk1"),
    }
    assert c.labels == ["anger", "calm", "frustrated", "happy", "sad"]
    reasons = problem_reasons(c)
    assert set(reasons) == {"loose.wav"} and "label folder" in reasons["loose.wav"]


def test_folder_canonical_label_map_on_request(tmp_path):
    make_tree(tmp_path, FOLDER_TREE)
    c = corpus("folder", tmp_path, label_map="canonical")
    assert {u.path.name: u.label for u in c} == {
        "spk1_001.wav": "anger", "spk2-take3.flac": "joy", "lonely.wav": "sadness",
        "spk3_x.ogg": "calm"}
    reasons = problem_reasons(c)
    assert set(reasons) == {"loose.wav", "Frustrated/spk1_002.wav"}
    assert "'frustrated' has no canonical form" in reasons["Frustrated/spk1_002.wav"]


def test_label_map_pairs_rename_only_what_they_name(tmp_path):
    make_tree(tmp_path, FOLDER_TREE)
    c = corpus("folder", tmp_path, label_map=parse_label_map("Frustrated=anger, happy=joy"))
    assert c.labels == ["anger", "calm", "joy", "sad"]
    assert c.label_counts()["anger"] == 2
    assert parse_label_map("canonical") == "canonical" and parse_label_map(" ") is None
    for bad, words in (("happy", "not WORD=LABEL"), ("a=b,A=c", "mapped twice"),
                       ("=joy", "not WORD=LABEL")):
        with pytest.raises(CorpusError, match=words):
            parse_label_map(bad)


def test_label_map_applies_to_named_corpora_too(tmp_path):
    make_tree(tmp_path, ["f1/rab-f1-b1.wav", "f1/gio-f1-b1.wav"])
    c = corpus("emovo", tmp_path, label_map={"joy": "positive", "anger": "negative"})
    assert c.labels == ["negative", "positive"]


@pytest.mark.parametrize("rule, speakers", [
    (None, {"a/s1_x.wav": "s1", "a/s2/take-1.wav": "take", "b/s2/take_2.wav": "take"}),
    ("folder", {"a/s2/take-1.wav": "s2", "b/s2/take_2.wav": "s2"}),
    (r"regex:(?P<speaker>take)[-_](\d)", {"a/s2/take-1.wav": "take",
                                          "b/s2/take_2.wav": "take"}),
    (r"regex:^b/(s\d)/", {"b/s2/take_2.wav": "s2"}),
])
def test_folder_speakers_from(tmp_path, rule, speakers):
    make_tree(tmp_path, ["a/s1_x.wav", "a/s2/take-1.wav", "b/s2/take_2.wav"])
    c = corpus("folder", tmp_path, speakers_from=rule)
    assert {rel: u.speaker for rel, u in by_name(c).items()} == speakers
    # every file the rule finds no speaker in is a problem naming the rule
    assert set(problem_reasons(c)) == {"a/s1_x.wav", "a/s2/take-1.wav",
                                       "b/s2/take_2.wav"} - set(speakers)
    assert all("--speakers-from" in why for why in problem_reasons(c).values())


def test_speakers_from_errors(tmp_path):
    make_tree(tmp_path, ["a/s1_x.wav", "f1/rab-f1-b1.wav"])
    with pytest.raises(CorpusError, match="expected prefix, folder or regex"):
        corpus("folder", tmp_path, speakers_from="suffix")
    with pytest.raises(CorpusError, match="not a regular expression"):
        corpus("folder", tmp_path, speakers_from="regex:(")
    with pytest.raises(CorpusError, match="is for the folder corpus"):
        corpus("emovo", tmp_path, speakers_from="folder")


# --------------------------------------------------------------------------- links

def test_symlinked_subset_of_actor_folders_loads(tmp_path):
    full = tmp_path / "full"
    make_tree(full, ["f1/rab-f1-b1.wav", "f1/gio-f1-b1.wav", "m1/rab-m1-b1.wav",
                     "m2/tri-m2-b1.wav"])
    subset = tmp_path / "subset"
    subset.mkdir()
    for actor in ("f1", "m2"):
        (subset / actor).symlink_to(full / actor, target_is_directory=True)
    c = corpus("emovo", subset)
    assert sorted(by_name(c)) == ["f1/gio-f1-b1.wav", "f1/rab-f1-b1.wav", "m2/tri-m2-b1.wav"]
    assert c.speakers == ["f1", "m2"] and not c.problems
    assert all(u.path.parent.parent == subset for u in c)   # paths keep the links' names


def test_link_loops_and_double_links_are_read_once(tmp_path):
    make_tree(tmp_path, ["anger/s1_a.wav", "joy/s2_b.wav"])
    (tmp_path / "anger" / "again").symlink_to(tmp_path, target_is_directory=True)  # a loop
    (tmp_path / "joy2").symlink_to(tmp_path / "joy", target_is_directory=True)
    (tmp_path / "joy" / "s3_c.wav").symlink_to(tmp_path / "anger" / "s1_a.wav")   # a file link
    c = corpus("folder", tmp_path)
    # joy2 is the same folder as joy: read once (under the name met first, "joy")
    assert sorted(by_name(c)) == ["anger/s1_a.wav", "joy/s2_b.wav", "joy/s3_c.wav"]
    assert by_name(c)["joy/s3_c.wav"].label == "joy"


# --------------------------------------------------------------------------- csv

def test_csv_manifest(tmp_path):
    root = tmp_path / "corpus"
    make_tree(root, ["a/one.wav", "a/two.wav", "b/three.wav", "b/four.wav"])
    write_wav(tmp_path / "outside.wav")
    write_csv(root / "manifest.csv", [
        ["Path", "Label", "Speaker", "Split"],
        ["a/one.wav", "Happy", "s1", "train"],
        ["a/two.wav", "anger", "s1", "TEST"],
        ["b/three.wav", "sad", "s2", ""],
        ["../outside.wav", "anger", "s3", "train"],
        [str(root / "b/four.wav"), "anger", "s2", "train"],
        ["a/../../outside.wav", "anger", "s3", "train"],
        ["b/missing.wav", "anger", "s2", "train"],
        ["b/four.wav", "", "s2", "train"],
        ["b/four.wav", "fear", "", "train"],
        ["b/four.wav", "fear", "s2", "dev"],
        ["a/one.wav", "joy", "s1", "train"],
    ])
    c = corpus("csv", root)
    assert [(u.path.relative_to(root).as_posix(), u.label, u.speaker, u.split) for u in c] == [
        ("a/one.wav", "happy", "s1", "train"), ("a/two.wav", "anger", "s1", "test"),
        ("b/three.wav", "sad", "s2", None)]
    reasons = [why for _, why in c.problems]
    assert len(reasons) == 8
    assert sum("escapes the corpus folder" in r for r in reasons) == 3
    assert any("not found" in r and "missing.wav" in r for r in reasons)
    assert any("empty label" in r for r in reasons)
    assert any("speaker" in r for r in reasons)
    assert any("dev" in r for r in reasons)
    assert any("listed twice" in r for r in reasons)
    assert all("manifest.csv line" in r for r in reasons)


def test_csv_accepts_its_own_labels(tmp_path):
    make_tree(tmp_path, ["a.wav", "b.wav", "c.wav"])
    write_csv(tmp_path / "m.csv", [["path", "label", "speaker"], ["a.wav", "Frustrated", "s1"],
                                   ["b.wav", "angry", "s2"], ["c.wav", "calm", "s3"]])
    c = corpus("csv", tmp_path)
    assert [u.label for u in c] == ["frustrated", "angry", "calm"] and not c.problems
    assert [u.label for u in corpus("csv", tmp_path, label_map="canonical")] == ["anger",
                                                                                 "calm"]


def test_csv_strict_refuses_escape(tmp_path):
    root = tmp_path / "corpus"
    make_tree(root, ["x.wav"])
    write_wav(tmp_path / "secret.wav")
    write_csv(root / "m.csv", [["path", "label", "speaker"], ["x.wav", "joy", "a"],
                               ["../secret.wav", "joy", "b"]])
    with pytest.raises(CorpusError, match="escapes the corpus folder"):
        corpus("csv", root, strict=True)


# --------------------------------------------------------------------------- general

def test_missing_root_and_unknown_name(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        corpus("emovo", tmp_path / "nope")
    with pytest.raises(CorpusError, match="unknown corpus 'timit'.*emovo"):
        corpus("timit", tmp_path)


def test_empty_corpus_says_what_was_expected(tmp_path):
    write_noise_files(tmp_path)
    with pytest.raises(CorpusError, match=r"no utterances were found.*<emo>-<actor>-<sentence>"):
        corpus("emovo", tmp_path)


def test_all_wrong_names_raise_listing_them(tmp_path):
    make_tree(tmp_path, ["f1/oops.wav"])
    with pytest.raises(CorpusError, match="(?s)no utterances.*oops.wav"):
        corpus("emovo", tmp_path)


def test_manifest_refused_for_name_based_corpus(tmp_path):
    make_tree(tmp_path, ["f1/rab-f1-b1.wav"])
    with pytest.raises(CorpusError, match="no manifest"):
        corpus("emovo", tmp_path, manifest=tmp_path / "m.csv")


def test_corpus_sequence_helpers(tmp_path):
    make_tree(tmp_path, ["f1/rab-f1-b1.wav", "f1/tri-f1-b1.wav", "m1/rab-m1-b1.wav",
                         "m2/neu-m2-b1.wav"])
    c = corpus("emovo", tmp_path)
    assert len(c) == 4 and isinstance(c[0], Utterance) and list(c) == c.utterances
    assert c.label_counts() == {"anger": 2, "neutral": 1, "sadness": 1}
    assert c.speaker_counts() == {"f1": 2, "m1": 1, "m2": 1}
    assert c.split_counts() == {}
    sub = c.subset([3, 0])
    assert isinstance(sub, Corpus) and [u.speaker for u in sub] == ["m2", "f1"]
    assert sub.name == "emovo" and sub.root == c.root
    masked = c.subset(np.array([True, False, False, True]))
    assert [u.path for u in masked] == [c[0].path, c[3].path]
    assert [u.path for u in c[1:3]] == [c[1].path, c[2].path]
    with pytest.raises(CorpusError):
        c.subset(np.array([True, False]))


def test_emovo_real_corpus(emovo_root):
    c = corpus("emovo", emovo_root, strict=True)
    assert len(c) == 588 and not c.problems
    assert c.label_counts() == {label: 84 for label in
                                ("anger", "disgust", "fear", "joy", "neutral", "sadness",
                                 "surprise")}
    assert c.speakers == ["f1", "f2", "f3", "m1", "m2", "m3"]
    assert all(c.speaker_counts()[s] == 98 for s in c.speakers)


# --------------------------------------------------------------------------- command line

@pytest.mark.parametrize("command", ["experiment", "train", "scenes"])
def test_cli_label_options_bind_the_corpus_loader(tmp_path, command):
    from binser.cli import build_parser, corpus_loader_from_args

    make_tree(tmp_path, ["Frustrated/s1/a.wav", "happy/s2/b.wav"])
    args = build_parser().parse_args([command, "--dataset", "folder", "--root", str(tmp_path),
                                      "--out", str(tmp_path / "out"), "--label-map",
                                      "frustrated=anger", "--speakers-from", "folder"])
    c = corpus_loader_from_args(args)(args.dataset, args.root, manifest=None)
    assert [(u.label, u.speaker) for u in c] == [("anger", "s1"), ("happy", "s2")]
    plain = build_parser().parse_args([command, "--dataset", "folder", "--root", "x", "--out",
                                       "y"])
    assert corpus_loader_from_args(plain) is None     # the default loader, untouched


@pytest.mark.parametrize("bad, words", [(["--label-map", "happy"], "not WORD=LABEL"),
                                        (["--speakers-from", "regex:("], "not a regular")])
def test_cli_bad_label_options_fail_before_any_work(tmp_path, capsys, bad, words):
    from binser.cli import main

    make_tree(tmp_path / "c", ["anger/s1_a.wav", "joy/s2_b.wav"])
    code = main(["experiment", "--dataset", "folder", "--root", str(tmp_path / "c"), "--out",
                 str(tmp_path / "out"), "--quiet", *bad])
    assert code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_symlinked_emovo_subset_loads(emovo_root, tmp_path):
    """The natural way to try a subset: a folder of links to some actor folders."""
    for actor in ("f1", "m2", "m3"):
        (tmp_path / actor).symlink_to(emovo_root / actor, target_is_directory=True)
    c = corpus("emovo", tmp_path)
    full = corpus("emovo", emovo_root)
    assert c.speakers == ["f1", "m2", "m3"] and not c.problems
    assert len(c) == sum(n for s, n in full.speaker_counts().items() if s in c.speakers)
    assert c.labels == full.labels
