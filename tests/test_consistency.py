"""One rule for the overall label (binser.overall) in predict and the stream engine; texts
that must stay true (help texts, project docs)."""
from __future__ import annotations

import numpy as np
import pytest

from binser.overall import RULE, overall, timeline_overall

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = ("anger", "joy", "neutral")


def test_overall_rule_by_hand():
    """Mean over the windows with signal, silent ones counted apart, argmax label."""
    entries = [{"scores": {"anger": 0.6, "joy": 0.3, "neutral": 0.1}, "silent": False},
               {"scores": {}, "silent": True},
               {"scores": {"anger": 0.0, "joy": 0.2, "neutral": 0.8}, "silent": False}]
    got = timeline_overall(LABELS, entries)
    # by hand: anger (0.6 + 0.0) / 2 = 0.30, joy 0.25, neutral 0.45
    assert got["label"] == "neutral"
    assert got["scores"] == pytest.approx({"anger": 0.30, "joy": 0.25, "neutral": 0.45})
    assert (got["windows"], got["silent_windows"]) == (2, 1)


def test_overall_ties_and_silence():
    """A tie goes to the first label in the model's order; all silent: no label."""
    tie = [{"scores": {"anger": 0.2, "joy": 0.4, "neutral": 0.4}}]
    assert timeline_overall(LABELS, tie)["label"] == "joy"
    none = timeline_overall(LABELS, [{"silent": True, "scores": {}}] * 3)
    assert none == {"label": None, "scores": {}, "windows": 0, "silent_windows": 3}
    assert overall(LABELS, None, 0) == {"label": None, "scores": {}, "windows": 0,
                                        "silent_windows": 0}


def test_predict_and_stream_give_the_same_overall(model, wav):
    """The same file through Model.predict(timeline=True) and through the stream engine (in
    odd-sized chunks): the same overall label and scores, equal to the mean of predict's
    own timeline computed here with numpy."""
    from binser.serve.stream import analyse_file

    pred = model.predict([wav], timeline=True, progress=False)[0]
    streamed = analyse_file(model, wav, chunk_s=0.37)["summary"]
    rows = np.array([[e["scores"][k] for k in model.labels] for e in pred.timeline
                     if not e["silent"]])
    by_hand = model.labels[int(np.argmax(rows.mean(axis=0)))]
    assert pred.overall["label"] == streamed["label"] == by_hand
    assert pred.overall["windows"] == len(rows) == streamed["windows"]
    for k in model.labels:
        assert pred.overall["scores"][k] == pytest.approx(streamed["scores"][k], abs=1e-5)
    assert streamed["rule"] == RULE
    assert model.predict([wav], progress=False)[0].overall is None   # no timeline, no overall


def test_the_rule_is_printed(model, wav):
    """predict --timeline and binser stream print the same overall line, naming the rule."""
    from binser.cli_format import format_prediction, overall_text
    from binser.serve.commands import _summary_text
    from binser.serve.stream import analyse_file

    pred = model.predict([wav], timeline=True, progress=False)[0]
    text = format_prediction(pred)
    assert text.splitlines()[-1].strip() == overall_text(pred.overall)
    assert RULE in text and pred.overall["label"] in text.splitlines()[-1]
    summary = analyse_file(model, wav)["summary"]
    assert RULE in _summary_text(summary)


# ------------------------------------------------------------------------------ texts

import re  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ISSUE = re.compile(r"\bissues?[ -]?#?\d|\b(the|this|that) issue\b|\bissues? asks?", re.I)
# files whose owner is still editing them; each entry goes once its issue numbers are gone
PENDING: set[str] = set()


def _project_texts() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "RESULTS.md", *sorted((ROOT / "docs").rglob("*.md"))]
    code = [p for folder in ("src", "tests", "bench", "scripts")
            for p in (ROOT / folder).rglob("*")
            if p.suffix in (".py", ".js", ".html", ".css", ".sh", ".md")]
    return files + sorted(p for p in code if p != Path(__file__).resolve())


def test_project_docs_speak_of_the_project_not_its_issues():
    """README, RESULTS, docs/, the source, tests, bench and scripts (comments too) never
    cite a tracker issue."""
    cited = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:80]}"
             for p in _project_texts() if str(p.relative_to(ROOT)) not in PENDING
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
             if ISSUE.search(line)]
    assert cited == []
    assert ISSUE.search("as issue 10 asks") and ISSUE.search("the issue-21 code")
    assert not ISSUE.search("then issues each repeated warning once")


def _parsers() -> dict:
    from binser.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(sub.choices)


def _option_help(parser, option: str) -> str:
    return " ".join(next(a for a in parser._actions if option in a.option_strings).help.split())


def test_help_texts_say_what_the_commands_do():
    """--layer names its real default; predict's --executor has no folds; weights are
    lambda, never gamma, in any help."""
    from binser.experiment import ExperimentSettings

    parsers = _parsers()
    default = ExperimentSettings(dataset="", root="", backbone="whisper-base").resolved_layer()
    for command in ("experiment", "train", "demo"):
        text = _option_help(parsers[command], "--layer")
        assert "the backbone's" not in text and f"default: {default}" in text
        assert "fold classifiers" in _option_help(parsers[command], "--executor")
    assert "fold" not in _option_help(parsers["predict"], "--executor")
    assert not [k for k, v in parsers.items() if re.search(r"\bgamma\b", v.format_help())]


def test_readme_timings_are_results_figures():
    """The README's bench and warm-run durations are the figures RESULTS.md measured."""
    readme, results = (ROOT / "README.md").read_text(), (ROOT / "RESULTS.md").read_text()
    assert "~15 min" not in readme and "about 11 s" not in readme
    warm = re.search(r"EMOVO warm in ([\d.]+) s in RESULTS", readme).group(1)
    assert f"**{warm} s**" in results
    bench = re.search(r"everything \(about (\d+) min on 2 cores, RESULTS.md\)", readme).group(1)
    assert f"the whole command took about {bench} minutes" in results
