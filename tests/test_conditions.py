"""Evaluation by condition on scene corpora (binser.conditions): bins, per-bin UA and
intervals, low-SNR claims, interferer-leak counts, the figure, and results.json's section."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from binser.conditions import (bin_metrics, condition_bins, condition_figure, condition_results,
                               condition_systems, interferer_leak, larger_fusion,
                               scene_conditions)
from binser.corpora import corpus
from binser.errors import CorpusError
from binser.scenes.run import COLUMNS

CLASSES = ["anger", "joy", "neutral", "sadness"]


def write_scene_folder(root: Path, rows: list[dict], audio=None) -> Path:
    """Tiny stereo FLACs and a hand-written scenes.csv (the columns binser scenes writes)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    for row in rows:
        path = root / row["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        signal = audio(row) if audio else 0.1 * rng.standard_normal((1600, 2))
        sf.write(path, signal, 16000, format="FLAC")
    with open(root / "scenes.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in COLUMNS})
    return root


def scene_rows(n_speakers: int = 4, per_speaker: int = 8) -> list[dict]:
    """Each speaker: every class twice, SNR alternating 0/20 dB within each class, RT60
    cycling over the three bins, an interferer (the next speaker) on every other file."""
    rows = []
    for s in range(n_speakers):
        speaker, other = f"s{s}", f"s{(s + 1) % n_speakers}"
        for i in range(per_speaker):
            interferer = i % 4 in (2, 3)
            rows.append({"path": f"{speaker}/{speaker}_{i}.flac", "label": CLASSES[i // 2],
                         "speaker": speaker, "snr_db": 20 if i % 2 == 0 else 0,
                         "rt60_s": (0.3, 0.5, 0.8)[i % 3], "azimuth_deg": -75 + 20 * i,
                         "interferer": f"{other}/{other}_0.flac" if interferer else "",
                         "interferer_speaker": other if interferer else ""})
    return rows


def test_bins_of_a_hand_made_case():
    bins = condition_bins({
        "snr_db": np.array([5, 0, 20, 5, 0, 20]),
        "rt60_s": np.array([0.39, 0.4, 0.649, 0.65, 0.9, 0.2]),
        "interferer": np.array([True, False, False, True, False, True]),
        "azimuth_deg": np.array([-29.9, 30, -60, 90, -90.5, 0])})
    assert bins["snr_db"][1] == ["0", "5", "20"]                       # numeric order
    assert list(bins["snr_db"][0]) == ["5", "0", "20", "5", "0", "20"]
    assert list(bins["rt60_s"][0]) == ["<0.4", "0.4-0.65", "0.4-0.65", ">=0.65", ">=0.65",
                                       "<0.4"]
    assert list(bins["interferer"][0]) == ["yes", "no", "no", "yes", "no", "yes"]
    assert list(bins["azimuth_abs_deg"][0]) == ["0-30", "30-60", "60-90", "60-90", ">90",
                                                "0-30"]


def test_bin_metrics_equal_sklearn_and_the_speaker_bootstrap_on_the_bin():
    from sklearn.metrics import balanced_accuracy_score

    from binser.evaluation import speaker_bootstrap_ua_ci

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 60)
    predicted = np.where(rng.random(60) < 0.6, y, rng.integers(0, 4, 60))
    speakers = np.repeat(["a", "b", "c", "d", "e"], 12)
    rows = np.flatnonzero(np.arange(60) % 3 != 0)
    names = np.asarray(CLASSES)
    m = bin_metrics(y, predicted, CLASSES, speakers, rows, n_boot=300, seed=7)
    assert m["n"] == 40 and m["n_speakers"] == 5
    assert m["ua"] == pytest.approx(balanced_accuracy_score(y[rows], predicted[rows]))
    expected = speaker_bootstrap_ua_ci(names[y[rows]], names[predicted[rows]], speakers[rows],
                                       CLASSES, n_boot=300, seed=7)
    assert m["ci95"] == pytest.approx(list(expected)) and m["ci95_method"] == "speaker-bootstrap"
    assert "approximate" in m["ci95_note"]                  # 5 speakers < 10
    one = bin_metrics(y, predicted, CLASSES, speakers, np.arange(12), n_boot=100, seed=0)
    assert one["ci95_method"] == "utterance-bootstrap" and one["n_speakers"] == 1


@pytest.fixture()
def planted(tmp_path):
    """A scene corpus where labels are recoverable only at 20 dB: predictions are the truth
    there and always 'anger' at 0 dB."""
    root = write_scene_folder(tmp_path / "scenes", scene_rows())
    found = corpus("scenes", root)
    values = scene_conditions(found)
    y = np.array([CLASSES.index(u.label) for u in found])
    speakers = np.array([u.speaker for u in found])
    good = np.where(values["snr_db"] == 20, y, 0)
    chance = np.where(values["snr_db"] == 20, (y + 1) % 4, 0)
    runs = {"left/stats": chance, "mid/stats": chance, "best-view": chance,
            "score-fusion/left+right+mid+side": good,
            "score-fusion/left+right+mid+side@oracle": good}
    from binser.evaluation import folds

    fold_list = folds(list(speakers), "loso")
    return found, values, y, speakers, runs, fold_list


def test_scene_values_come_from_the_manifest(planted):
    found, values, *_ = planted
    rows = {r["path"]: r for r in scene_rows()}
    for i, u in enumerate(found):
        row = rows[Path(u.path).relative_to(found.root).as_posix()]
        assert values["snr_db"][i] == row["snr_db"] and values["rt60_s"][i] == row["rt60_s"]
        assert values["interferer"][i] == bool(row["interferer"])
        assert values["interferer_speaker"][i] == row["interferer_speaker"]


def test_planted_snr_effect_shows_in_the_per_bin_ua(planted):
    found, values, y, speakers, runs, fold_list = planted
    section = condition_results(values, runs, y, CLASSES, speakers, fold_list, n_boot=200,
                                seed=0, fusion_pooling="stats")
    fusion = section["runs"]["score-fusion/left+right+mid+side"]
    assert fusion["snr_db"]["20"]["ua"] == 1.0 and fusion["snr_db"]["0"]["ua"] == 0.25
    assert fusion["snr_db"]["20"]["n"] == 16 and fusion["snr_db"]["20"]["n_speakers"] == 4
    assert fusion["snr_db"]["20"]["ci95"] == [1.0, 1.0]
    assert section["runs"]["best-view"]["snr_db"]["20"]["ua"] == 0.0
    # RT60 is balanced against SNR here, so the fusion sits between the two SNR figures
    assert all(0.25 < m["ua"] < 1.0 for m in fusion["rt60_s"].values())
    assert section["runs"]["score-fusion/left+right+mid+side@oracle"]["snr_db"]["0"]["ci95"] \
        is None
    assert set(section["factors"]) == {"snr_db", "rt60_s", "interferer", "azimuth_abs_deg"}
    assert section["ci_note"].startswith("4 speakers (< 10): approximate")
    assert [s["run"] for s in section["systems"]] == ["left/stats", "mid/stats", "best-view",
                                                      "score-fusion/left+right+mid+side"]
    claims = section["comparisons"]                       # only the 0 dB bin is <= 5 dB
    assert {(c["a"], c["b"], c["bin"]) for c in claims} == {
        ("score-fusion/left+right+mid+side", "best-view", "0"),
        ("score-fusion/left+right+mid+side", "mid/stats", "0")}
    assert all(c["diff"] == 0.0 and c["n"] == 16 and "p_holm" in c for c in claims)
    json.dumps(section)                                   # results.json-ready


def test_interferer_leak_counts_by_hand(planted):
    _, values, _, speakers, _, fold_list = planted
    leak = interferer_leak(values, speakers, fold_list)
    # every speaker has 4 files with an interferer: the next speaker (s3 -> s0)
    for fold in leak["folds"]:
        assert fold["test_files_interferer_from_training"] == 4   # never their own voice
        assert fold["training_files_interferer_from_test"] == 4   # the previous speaker's
    assert leak["test_files_interferer_from_training"] == 16
    assert "not of labels" in leak["note"]


def test_missing_row_or_bad_value_is_one_clear_error(tmp_path):
    rows = scene_rows(2, 2)
    root = write_scene_folder(tmp_path / "a", rows)
    extra = root / "s0" / "s0_9.flac"
    extra.write_bytes((root / "s0" / "s0_0.flac").read_bytes())
    found = corpus("scenes", root)                       # the csv lists 4 files
    with pytest.raises(CorpusError, match="snr_db 'loud' is not a number"):
        rows[0]["snr_db"] = "loud"
        scene_conditions(corpus("scenes", write_scene_folder(tmp_path / "b", rows)))
    from binser.corpora import Corpus, Utterance

    stray = Corpus("scenes", root, [*found, Utterance(extra, "joy", "s0")])
    with pytest.raises(CorpusError, match="no row for s0/s0_9.flac"):
        scene_conditions(stray)


def test_figure_exists_and_its_pixels_follow_the_numbers(planted, tmp_path):
    import matplotlib.image as mpimg

    found, values, y, speakers, runs, fold_list = planted
    section = condition_results(values, runs, y, CLASSES, speakers, fold_list, n_boot=100,
                                seed=0, fusion_pooling="stats")
    first = condition_figure(section, tmp_path / "a.png")
    section["runs"]["mid/stats"]["snr_db"]["20"]["ua"] = 0.9
    second = condition_figure(section, tmp_path / "b.png")
    same = condition_figure(section, tmp_path / "c.png")
    a, b, c = (mpimg.imread(p) for p in (first, second, same))
    assert a.shape == b.shape and a.size > 100_000
    assert np.abs(a - b).sum() > 0 and np.array_equal(b, c)


def test_a_larger_fusion_joins_the_systems():
    from binser.fusion import FUSION_RULES, FusionRule, Stage, register_fusion, unregister_fusion

    four = FUSION_RULES["left+right+mid+side"]
    rule = FusionRule("test-five", "five views", (*four.stages,
                      Stage("s5", "delta", four.stages[-1].output, "mono")))
    register_fusion(rule)
    try:
        names = ["left/stats", "score-fusion/left+right+mid+side", "score-fusion/test-five",
                 "score-fusion/test-five@oracle", "score-fusion/left+right"]
        assert larger_fusion(names) == "score-fusion/test-five"
        assert condition_systems(names, "stats")[-1][1] == "score-fusion/test-five"
    finally:
        unregister_fusion("test-five")
    assert larger_fusion(names[:2]) is None


@pytest.mark.slow
def test_experiment_on_a_scene_corpus_reports_conditions(tmp_path):
    """End to end (about 15 s): demo utterances as a scene corpus whose 0 dB files are
    replaced by noise; results.json's conditions show it, the report has the figure and
    table; the same files read as a plain csv corpus give no conditions section."""
    from binser.demo import DemoSpec, make_demo_corpus
    from binser.experiment import ExperimentSettings, run_experiment

    import soundfile as sf

    src = make_demo_corpus(tmp_path / "src", DemoSpec(n_speakers=4, per_emotion=4,
                                                      min_duration_s=0.8, max_duration_s=1.2))
    demo = corpus("folder", src)
    rows, audio = [], {}
    for i, u in enumerate(demo):
        rel = Path(u.path).relative_to(src).with_suffix(".flac").as_posix()
        signal, _ = sf.read(u.path, always_2d=True)
        snr = 20 if i % 2 == 0 else 0
        audio[rel] = signal if snr == 20 else \
            0.1 * np.random.default_rng(i).standard_normal(signal.shape)
        rows.append({"path": rel, "label": u.label, "speaker": u.speaker, "snr_db": snr,
                     "rt60_s": (0.3, 0.5, 0.8)[i % 3], "azimuth_deg": -80 + 10 * (i % 17)})
    root = write_scene_folder(tmp_path / "scenes", rows, audio=lambda r: audio[r["path"]])
    settings = ExperimentSettings(dataset="scenes", root=str(root), input_size=64,
                                  poolings=("global-avg",), n_boot=100, synthetic=True,
                                  cache_dir=str(tmp_path / "cache"))
    results = run_experiment(settings, out=tmp_path / "out", progress=False)
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    section = on_disk["conditions"]
    fusion = section["runs"]["score-fusion/left+right+mid+side"]["snr_db"]
    assert fusion["20"]["ua"] > fusion["0"]["ua"] + 0.3        # planted: labels only at 20 dB
    assert fusion["0"]["ua"] < 0.45 and fusion["20"]["n"] == 32
    assert set(section["runs"]) == {r["name"] for r in results["runs"]}
    assert len(section["interferer_leak"]["folds"]) == 4
    figure = tmp_path / "out" / "figures" / "conditions_snr.png"
    assert figure.stat().st_size > 10_000
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Evaluation by condition" in md and "conditions_snr.png" in md
    assert "not of labels" in md
    plain = ExperimentSettings(dataset="csv", root=str(root), manifest=str(root / "scenes.csv"),
                               input_size=64, poolings=("global-avg",), n_boot=100,
                               synthetic=True, cache_dir=str(tmp_path / "cache"))
    assert "conditions" not in run_experiment(plain, out=None, progress=False)
