"""The report (headline box, figures embedded, readable run-time names) and the timeline
figure of ``predict --plot``; the page checked in a real browser where Chromium exists."""
from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from binser.report import (build_blocks, default_system, headline_rows, main_systems, pct,
                           render_markdown, timing_title, write_report)


def _results(n_speakers=4, speaker_norm=False, comparisons=True):
    """A small results.json-shaped dict (numbers chosen by hand)."""
    rng = np.random.default_rng(0)

    def run(name, ua, **kw):
        return {"name": name, "ua": ua, "wa": ua, "macro_f1": ua, "ua_ci95": [ua - .1, ua + .05],
                "fold_ua": list(np.round(rng.uniform(0.3, 0.9, n_speakers), 4)),
                "confusion": [[3, 1], [1, 3]], **kw}

    runs = [run(f"{v}/stats", 0.50 + i / 100) for i, v in enumerate(("left", "right", "mid",
                                                                      "side"))]
    runs += [run("best-view", 0.53, fold_choice=["mid"] * n_speakers),
             run("score-fusion/left+right+mid+side", 0.6125, selection="nested",
                 weights=[{"alpha": 0.2, "beta": 0.7, "gamma": 1.0}] * n_speakers),
             run("feature-fusion/left+right+mid+side", 0.57)]
    if speaker_norm:
        runs.append(run("speaker-norm:score-fusion/left+right+mid+side", 0.66,
                        speaker_norm=True, caveat="transductive"))
    claims = [{"claim": "fusion beats the best view", "a": "score-fusion/left+right+mid+side",
               "b": "best-view", "diff": 0.0825, "ci95": [0.01, 0.15], "p_value": 0.125,
               "n_speakers": n_speakers, "p_floor": 0.125, "p_holm": 0.125,
               "verdict": f"cannot be decided with {n_speakers} speakers"}]
    spk = [[f"s{i}"] for i in range(n_speakers)]
    return {"dataset": "folder", "protocol": "loso", "n_utterances": 40, "classes": ["a", "b"],
            "backbone": "whisper-base", "layer": 3, "mode": "frozen", "runs": runs,
            "fusion_pooling": "stats", "n_folds": n_speakers, "n_speakers": n_speakers,
            "fold_test_speakers": spk, "comparisons": claims if comparisons else [],
            "timing": {"features_s": 12.0, "classifiers_s": 3.5, "total_s": 15.5}}


def test_headline_box_states_system_ua_interval_chance_corpus_protocol():
    rows = dict(headline_rows(_results()))
    assert rows["default system"] == "score-fusion/left+right+mid+side"
    assert rows["UA (95% interval)"] == ("61.25 % (51.25–66.25); approximate with 4 speakers "
                                         "(< 10)")
    assert rows["chance level (UA)"] == "50.00 % (2 classes)"
    assert rows["corpus"] == "folder: 40 utterances, 4 speakers, classes a, b"
    assert rows["protocol"] == "loso (4 folds, speaker-independent)"
    assert rows["transductive"].startswith("nothing")
    rows = dict(headline_rows(_results(speaker_norm=True)))
    assert rows["transductive"].startswith("the 1 speaker-normalised")


def test_default_system_fallbacks():
    assert default_system({"left/stats": {}, "best-view": {}}) == "best-view"
    assert default_system({"score-fusion/left+right@oracle": {}, "score-fusion/left+right": {},
                           "left/stats": {}}) == "score-fusion/left+right"
    assert default_system({"left/stats": {}}) == "left/stats"


def test_main_systems_and_readable_run_time_names():
    names = main_systems(_results(speaker_norm=True))
    assert names == ["left/stats", "right/stats", "mid/stats", "side/stats", "best-view",
                     "score-fusion/left+right+mid+side", "feature-fusion/left+right+mid+side",
                     "speaker-norm:score-fusion/left+right+mid+side"]
    assert timing_title("classifiers_s") == "classifiers and fusion (all folds)"
    assert timing_title("new_stage_s") == "new stage"
    md = render_markdown(build_blocks(_results(), {}))
    assert "features_s" not in md and "| total | 15.5 |" in md


def test_report_keeps_every_table_number_and_adds_figures(tmp_path):
    results = _results()
    before = [b for b in build_blocks(results, {}) if b[0] == "table"]
    md_path, html_path = write_report(results, tmp_path)
    after = [b for b in build_blocks(results, {"systems": "x", "folds": "y", "forest": "z"})
             if b[0] == "table"]
    assert [(b[1], b[2]) for b in after] == [(b[1], b[2]) for b in before]
    md = md_path.read_text()
    for r in results["runs"]:
        assert pct(r["ua"]) in md
        for u in r["fold_ua"]:
            assert pct(u) in md
    for name in ("systems_ua", "fold_ua", "claims_forest"):
        assert f"figures/{name}.png" in md and (tmp_path / "figures" / f"{name}.png").is_file()


def test_html_embeds_every_figure(tmp_path):
    _, page = write_report(_results(), tmp_path)
    text = page.read_text()
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert len(sources) >= 4                      # systems, folds, forest, confusions
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    png = base64.b64decode(sources[0].split(",", 1)[1])
    assert png == (tmp_path / "figures" / "systems_ua.png").read_bytes()
    assert 'src="figures/' not in text


def _pixels(path):
    import matplotlib.image as mpimg

    return mpimg.imread(path)


def _timeline(scores):
    return [{"start_s": 0.5 * k, "end_s": 0.5 * k + 1.0, "scores": dict(zip("ab", s)),
             "silent": False} for k, s in enumerate(scores)]


def test_plot_timeline_pixels_follow_the_scores(tmp_path):
    from binser.plots import plot_timeline

    flat = [(0.5, 0.5)] * 6
    rising = [(k / 5, 1 - k / 5) for k in range(6)]
    a = plot_timeline({"x.wav": _timeline(flat)}, ["a", "b"], tmp_path / "a.png")
    b = plot_timeline({"x.wav": _timeline(flat)}, ["a", "b"], tmp_path / "b.png")
    c = plot_timeline({"x.wav": _timeline(rising)}, ["a", "b"], tmp_path / "c.png")
    pa, pb, pc = _pixels(a), _pixels(b), _pixels(c)
    assert pa.shape == pc.shape and pa.shape[0] > 100
    np.testing.assert_array_equal(pa, pb)          # same scores, same picture
    assert np.abs(pa - pc).max() > 0.2 and (np.abs(pa - pc).sum(-1) > 0.2).mean() > 0.001


def test_predict_plot_writes_a_png(trained, tmp_path, capsys):
    from binser.cli import main

    _, folder, root = trained
    files = sorted(Path(root).glob("*/*.wav"))[:2]
    out = tmp_path / "timeline.png"
    assert main(["predict", str(folder), *map(str, files), "--plot", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and _pixels(out).shape[0] > 200        # two panels
    # per file its label and the timeline's overall line (what the plot shows), no windows
    assert printed.count("\n") == 4 and printed.count("overall of") == 2
    bad = tmp_path / "timeline.txt"
    assert main(["predict", str(folder), str(files[0]), "--plot", str(bad)]) == 2
    assert "--plot" in capsys.readouterr().err and not bad.exists()


def test_predict_per_channel_plot_draws_one_panel_per_channel(trained, tmp_path, capsys):
    from binser.cli import main

    _, folder, root = trained
    one = sorted(Path(root).glob("*/*.wav"))[0]
    both, single = tmp_path / "channels.png", tmp_path / "binaural.png"
    assert main(["predict", str(folder), str(one), "--per-channel", "--plot", str(both),
                 "--quiet"]) == 0
    assert main(["predict", str(folder), str(one), "--plot", str(single), "--quiet"]) == 0
    capsys.readouterr()
    assert _pixels(both).shape[0] > 1.5 * _pixels(single).shape[0]   # left and right panels


# ------------------------------------------------------------------------------ browser

def test_report_renders_with_its_figures_from_another_folder(browser, tmp_path):
    """report.html moved alone (no figures/ beside it): every figure still draws."""
    _, page_path = write_report(_results(), tmp_path / "run")
    moved = tmp_path / "elsewhere" / "report.html"
    moved.parent.mkdir()
    shutil.move(page_path, moved)
    shutil.rmtree(tmp_path / "run")
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    try:
        page.goto(moved.as_uri(), timeout=20_000)
        page.wait_for_load_state("load")
        sizes = page.evaluate("Array.from(document.images).map(i => [i.complete, "
                              "i.naturalWidth, i.naturalHeight])")
        assert len(sizes) >= 4
        assert all(done and w > 100 and h > 100 for done, w, h in sizes)
        headline = page.inner_text(".headline")
        assert "default system" in headline and "61.25 %" in headline
    finally:
        page.close()


def test_small_sample_warnings_are_shown_above_the_headline():
    from binser.evaluation import small_sample_warnings

    results = _results(n_speakers=3)
    folds = [(np.array([1, 2]), np.array([0])), (np.array([0, 2]), np.array([1])),
             (np.array([0, 1]), np.array([2]))]
    results["small_sample_warnings"] = small_sample_warnings(folds, ["a", "b", "a"],
                                                             ["s0", "s1", "s2"])
    blocks = build_blocks(results, {})
    kinds = [b[0] for b in blocks]
    warns = [b[1] for b in blocks if b[0] == "warn"]
    assert warns[0].startswith("SMALL SAMPLE: only 3 speakers (fewer than 5)")
    assert "p below 0.25" in warns[0]
    assert kinds.index("warn") < kinds.index("box")


def test_channel_panels_by_hand():
    from binser.plots import channel_panels

    window = {"start_s": 0.0, "end_s": 1.0,
              "channels": {"left": {"scores": {"a": 0.9, "b": 0.1}, "silent": False},
                           "right": {"scores": {}, "silent": True}}}
    panels = channel_panels([{"path": "/x/call.wav", "windows": [window, {**window,
                                                                          "start_s": 0.5}]},
                             {"path": "/x/bad.wav", "error": "unreadable"}])
    assert list(panels) == ["call.wav: left", "call.wav: right"]
    assert panels["call.wav: left"][1] == {"start_s": 0.5, "end_s": 1.0,
                                           "scores": {"a": 0.9, "b": 0.1}, "silent": False}
    assert panels["call.wav: right"][0]["silent"] is True
