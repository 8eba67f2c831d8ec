"""The human report of an experiment: a headline box (the default system's UA and interval,
chance, corpus, protocol, what is transductive), a chart of UA with intervals of the main
systems, the paper's Tables 1-7 (and a Table 8 of baselines when present) for the corpus at
hand, per-fold UA as a heatmap (numbers in a table below it), the paired comparisons as a
forest plot beside their table, confusion-matrix figures (Figs. 4-6) and the four-view
spectrogram figure (Fig. 1), as Markdown (figures linked under ``figures/``) and as one HTML
page that stands alone (every figure embedded as a base64 ``data:`` URI, so the page can be
moved or mailed without its folder).

The *default system* (:func:`default_system`) is the paper's system, the nested four-view
score fusion ``score-fusion/left+right+mid+side``; without it (fewer views), the nested score
fusion of the most views, else ``best-view``, else the first run."""
from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path
from typing import Any, Sequence

from .config import FrontEndConfig
from .fusion import fusion_titles, weight_symbols
from .normalisation import TRANSDUCTIVE_CAVEAT
from .runnames import RunName, is_oracle, plain_name
from .views import all_views

POOLING_TITLES = {"global-max": "Global max-pooling", "global-avg": "Global average-pooling",
                  "block-max": "Block-based temporal max-pooling",
                  "block-avg": "Block-based temporal average-pooling",
                  "stats": "Mean and standard deviation (stats)",
                  "block-stats": "Block-based mean and standard deviation"}
CI_TEXT = {"speaker-bootstrap": "95% speaker (cluster) bootstrap interval of UA: speakers "
                                "resampled with replacement",
           "utterance-bootstrap": "95% bootstrap interval of UA over utterances"}
# Fusion row titles and weight symbols: binser.fusion.fusion_titles() / weight_symbols(), from
# the table of fusion rules (a rule added there appears in Tables 6-7 without an edit here).

Block = tuple  # ("h1"|"h2"|"p"|"warn", text) | ("table", headers, rows[, folded summary])
#                | ("img", file, caption) | ("box", title, [(key, value), ...])
TIMING_TITLES = {"features_s": "features (decoding, encoders, pooling; cached or computed)",
                 "baselines_s": "hand-crafted baselines (openSMILE)",
                 "classifiers_s": "classifiers and fusion (all folds)",
                 "total_s": "total"}


def _md_cell(value: Any) -> str:
    """A Markdown table cell: '|' escaped and line breaks flattened (file names may hold them)."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _count(n: Any, noun: str) -> str:
    """'1 fold', '6 folds', '? folds'."""
    return f"{n} {noun}" if n == 1 else f"{'?' if n is None else n} {noun}s"


def pct(value: float | None) -> str:
    """A fraction in 0..1 as a percentage with two decimals ('-' when missing)."""
    return "-" if value is None else f"{100.0 * value:.2f}"


ORACLE_CI = "n/a (chosen on the test data)"


def _ci(run: dict[str, Any], n_speakers: Any = None) -> str:
    """The UA interval cell: none on ``@oracle`` rows (picked on the test data, an interval
    would describe the pick's luck, not a system); a degenerate interval (lo == hi) said so."""
    if is_oracle(str(run.get("name", ""))):
        return ORACLE_CI
    lo, hi = run.get("ua_ci95", (None, None))
    if lo is None:
        return "-"
    if lo == hi:
        who = f"{n_speakers} speakers" if n_speakers is not None else "too few speakers"
        return (f"{pct(lo)} only: degenerate interval (every resample gave the same UA; "
                f"{who})")
    return f"{pct(lo)}–{pct(hi)}"


def _weights_text(weights: Any) -> str:
    """'α=0.4' for one dict; the per-fold range ('α=0.3–0.6') for a list of dicts."""
    if isinstance(weights, dict):
        symbols = weight_symbols()
        return ", ".join(f"{symbols.get(k, k)}={v:.1f}" for k, v in weights.items())
    if isinstance(weights, list) and weights:
        parts = []
        for key in weights[0]:
            values = [w[key] for w in weights]
            lo, hi = min(values), max(values)
            span = f"{lo:.1f}" if lo == hi else f"{lo:.1f}–{hi:.1f}"
            parts.append(f"{weight_symbols().get(key, key)}={span}")
        return ", ".join(parts) + " (per fold)"
    return "-"


def _fusion_pooling(results: dict[str, Any]) -> str:
    return (results.get("fusion_pooling") or results.get("settings", {}).get("fusion_pooling")
            or "block-max")


def _metric_cells(run: dict[str, Any] | None, n_speakers: Any = None) -> list[str]:
    """UA, WA, F1 and the UA interval of a run, or n/a (a view without signal)."""
    if run is None:
        return ["n/a"] * 4
    return [pct(run["ua"]), pct(run["wa"]), pct(run["macro_f1"]), _ci(run, n_speakers)]


def _approximate_text(n_speakers: Any) -> str:
    """' Intervals are approximate: ...' below 10 speakers, else ''."""
    from .evaluation import interval_note

    note = interval_note(n_speakers) if isinstance(n_speakers, int) and n_speakers > 1 else None
    return f" Intervals are {note}." if note else ""


def _approximate_short(n_speakers: Any) -> str:
    """'; approximate with 6 speakers (< 10)' below 10 speakers, else ''."""
    from .evaluation import APPROXIMATE_BELOW

    if isinstance(n_speakers, int) and 1 < n_speakers < APPROXIMATE_BELOW:
        return f"; approximate with {n_speakers} speakers (< {APPROXIMATE_BELOW})"
    return ""


def _claim_rows(comparisons: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per claim: the difference, its interval, the speakers' signs, raw and Holm p,
    the verdict (on the Holm p); claims on speaker-normalised runs carry the caveat."""
    rows = []
    for c in comparisons:
        claim = c["claim"] + (f" ({c['caveat']})" if c.get("caveat") else "")
        signs = (f"{c['n_better']}+ / {c['n_worse']}- / {c['n_tied']}="
                 if "n_better" in c else "-")
        holm = f"{c['p_holm']:.3f}" if "p_holm" in c else "-"
        rows.append([claim, c["a"], c["b"], f"{100 * c['diff']:+.2f}",
                     f"{100 * c['ci95'][0]:+.2f} to {100 * c['ci95'][1]:+.2f}", signs,
                     f"{c['p_value']:.3f}", holm, c["verdict"]])
    return rows


def _claims_text(results: dict[str, Any]) -> str:
    """Speakers, the smallest attainable p and what the verdicts mean, for the claims table."""
    from .evaluation import APPROXIMATE_BELOW, interval_note, swap_test_floor

    comparisons = results["comparisons"]
    s = max(c["n_speakers"] for c in comparisons)
    floor = comparisons[0].get("p_floor", swap_test_floor(s))
    m = len(comparisons)
    text = (f"{s} speakers; {m} claims. UA difference a - b on the same utterances; 95% paired "
            "speaker bootstrap interval; signs: speakers where a is better / worse / equal; "
            "two-sided speaker-swap permutation p-value and Holm's adjusted p across the "
            f"{m} claims. Smallest attainable p with {s} speakers: {floor:.3g}; smallest "
            f"attainable Holm p: {min(1.0, m * floor):.3g}. Verdict on the Holm p: supported: "
            "interval above 0 and Holm p <= 0.05; refuted: below 0 and Holm p <= 0.05; "
            f"'cannot be decided with {s} speakers' when even the smallest attainable Holm p "
            "exceeds 0.05; otherwise undecided.")
    if s < APPROXIMATE_BELOW:
        text += f" Intervals are {interval_note(s)}."
    return text


def _backbone_text(results: dict[str, Any]) -> str:
    if results.get("layer") is not None:
        sha = results.get("backbone_weights_sha256") or results.get("backbone_weights_id", "?")
        return (f"{results['backbone']} (speech encoder), layer {results['layer']}, "
                f"weights sha256 {str(sha)[:16]}")
    return (f"{results['backbone']} at {results.get('backbone_input_size', '?')} px, "
            f"{'ImageNet-pretrained' if results.get('pretrained', True) else 'random init'}"
            f", weights {results.get('backbone_weights_id', '?')}")


def _mono_text(results: dict[str, Any]) -> str:
    files = results.get("mono_files", [])
    shown = ", ".join(Path(f).name for f in files[:5]) + (" ..." if len(files) > 5 else "")
    return f"{len(files)}" + (f" ({shown})" if files else "")


def _silent_text(results: dict[str, Any]) -> str:
    silent = {v: n for v, n in results.get("silent_views", {}).items() if n}
    parts = [f"{v}: {n} file(s)" for v, n in silent.items()]
    parts += [f"{v}: every file (n/a)" for v in results.get("absent_views", [])]
    return "; ".join(parts) or "none"


def timing_title(key: str) -> str:
    """A run-time key of results.json in words: ``features_s`` -> 'features (...)'; an
    unknown ``some_stage_s`` -> 'some stage'."""
    if key in TIMING_TITLES:
        return TIMING_TITLES[key]
    return key[:-2].replace("_", " ") if key.endswith("_s") else key.replace("_", " ")


def default_system(runs: dict[str, dict[str, Any]]) -> str | None:
    """The run the headline reports (module docstring): the nested four-view score fusion,
    else the nested score fusion of the most views, else ``best-view``, else the first run."""
    paper = str(RunName.score_fusion("left+right+mid+side"))
    if paper in runs:
        return paper
    fusions = [n for n in runs if n.startswith("score-fusion/") and not is_oracle(n)]
    if fusions:
        return max(fusions, key=lambda n: (n.count("+"), -list(runs).index(n)))
    return "best-view" if "best-view" in runs else next(iter(runs), None)


def _transductive_text(results: dict[str, Any]) -> str:
    normalised = [r["name"] for r in results["runs"] if plain_name(r["name"]) != r["name"]]
    if not normalised:
        return ("nothing: every figure is speaker-independent and inductive (test speakers' "
                "recordings are never used for training or normalisation)")
    return (f"the {len(normalised)} speaker-normalised ('speaker-norm:') runs only "
            f"({TRANSDUCTIVE_CAVEAT}); every other figure is inductive")


def headline_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline box: default system, its UA with interval, chance, corpus, protocol and
    what is transductive."""
    runs = {r["name"]: r for r in results["runs"]}
    name = default_system(runs)
    n_spk = results.get("n_speakers")
    rows = []
    if name is not None:
        run = runs[name]
        rows += [("default system", name),
                 ("UA (95% interval)", f"{pct(run['ua'])} % ({_ci(run, n_spk)})"
                                       + _approximate_short(n_spk))]
    synthetic = " (SYNTHETIC demo data)" if results.get("synthetic") else ""
    rows += [("chance level (UA)", f"{pct(1.0 / len(results['classes']))} % "
                                   f"({len(results['classes'])} classes)"),
             ("corpus", f"{results['dataset']}{synthetic}: {results['n_utterances']} "
                        f"utterances, {_count(n_spk, 'speaker')}, classes "
                        f"{', '.join(results['classes'])}"),
             ("protocol", f"{results['protocol']} ({_count(results.get('n_folds'), 'fold')}, "
                          + ("speaker-independent" if results.get("speaker_independent", True)
                             else "SPEAKER-DEPENDENT") + ")"),
             ("transductive", _transductive_text(results))]
    return rows


def main_systems(results: dict[str, Any]) -> list[str]:
    """The runs of the UA chart, in reading order: each view at the fusion pooling, the best
    view, the nested score fusions, the four-view feature fusion, the baselines and the
    speaker-normalised default system (oracle runs never: they have no interval)."""
    runs = {r["name"]: r for r in results["runs"]}
    fusion_pooling = _fusion_pooling(results)
    names = [str(RunName.single(v, fusion_pooling)) for v in all_views()]
    names += ["best-view"]
    names += [str(RunName.score_fusion(f)) for f in fusion_titles()]
    names += [str(RunName.feature_fusion("left+right+mid+side"))]
    names += [n for n in runs if n.startswith("opensmile/")]
    system = default_system(runs)
    if system is not None and system == plain_name(system):
        names.append(str(RunName.parse(system).normalised()))   # present with --speaker-norm
    seen, out = set(), []
    for n in names:
        if n in runs and n not in seen and not is_oracle(n):
            seen.add(n)
            out.append(n)
    return out


def fold_matrix(results: dict[str, Any]) -> tuple[list[str], list[str], list[list[float]]]:
    """(run names, fold names, UA per run and fold) of the per-fold figure (no oracle runs;
    NaN where a fold has no figure)."""
    folds = [", ".join(s) for s in results.get("fold_test_speakers", [])]
    names, matrix = [], []
    for r in results["runs"]:
        if is_oracle(r["name"]) or "fold_ua" not in r:
            continue
        names.append(r["name"])
        matrix.append([math.nan if u is None else float(u) for u in r["fold_ua"]])
    return names, folds, matrix


def build_blocks(results: dict[str, Any], figures: dict[str, str]) -> list[Block]:
    """Lay out the report as neutral blocks that both renderers understand: the warnings and
    the headline, the study table, the paper's tables (views, poolings, fusions, baselines),
    the speaker-normalised runs and their deployment, the claims, scene conditions, layers,
    per-fold UA, confusion matrices, files not used and run time (one function a section)."""
    runs = {r["name"]: r for r in results["runs"]}
    views = [v for v in all_views() if any(name.startswith(v + "/") for name in runs)]
    views += [v for v in results.get("absent_views", []) if v not in views]
    blocks: list[Block] = [("h1", f"binser report: {results['dataset']}")]
    blocks += _warning_blocks(results)
    blocks += _study_blocks(results, figures)
    blocks += _view_tables(results, runs, views)
    blocks += _fusion_tables(results, runs, table=len(views) + 2)
    blocks += _normalised_blocks(results, runs, figures)
    blocks += _claims_blocks(results, figures)
    if results.get("conditions"):   # a scene corpus: UA per condition (binser.conditions)
        from .conditions import condition_blocks

        blocks += condition_blocks(results["conditions"], figures.get("conditions"))
    blocks += _layer_blocks(results)
    blocks += _fold_blocks(results, figures)
    blocks += _closing_blocks(results, figures)
    return blocks


def _warning_blocks(results: dict[str, Any]) -> list[Block]:
    """What the reader must know first: speaker dependence, synthetic data, random weights,
    small samples."""
    blocks: list[Block] = []
    if not results.get("speaker_independent", True):
        blocks.append(("warn", f"NOT SPEAKER-INDEPENDENT: {results.get('speaker_independence')}"))
    if results.get("synthetic"):
        blocks.append(("warn", "SYNTHETIC DATA: this corpus was generated by binser's demo; "
                               "the numbers say nothing about real emotional speech."))
    if not results.get("pretrained", True):
        blocks.append(("warn", "RANDOMLY INITIALISED BACKBONE: no ImageNet weights were used; "
                               "these are not the paper's pretrained features."))
    for line in results.get("small_sample_warnings", []):   # binser.evaluation
        blocks.append(("warn", f"SMALL SAMPLE: {line}"))
    return blocks


def _study_blocks(results: dict[str, Any], figures: dict[str, str]) -> list[Block]:
    """The headline box, the systems chart, the study table, the reading notes, Fig. 1."""
    blocks: list[Block] = [("box", "The answer", headline_rows(results))]
    if "systems" in figures:
        blocks.append(("img", figures["systems"], "UA (%) of the main systems with their 95% "
                              "intervals (dots: UA; bars: interval; dashed: chance; bold: "
                              "the default system)."))
    blocks.append(("table", ["", ""], [
        ["dataset", results["dataset"]],
        ["protocol", f"{results['protocol']} ({_count(results.get('n_folds'), 'fold')}, "
                     + ("speaker-independent" if results.get("speaker_independent", True)
                        else "SPEAKER-DEPENDENT") + ")"],
        ["utterances", str(results["n_utterances"])],
        ["classes", ", ".join(results["classes"])],
        ["backbone", _backbone_text(results)],
        ["mode", results["mode"]],
        ["segments per view" if results.get("layer") is None else "frames per view",
         str(results.get("segments_per_view", "-"))],
        ["chance level (UA)", pct(1.0 / len(results["classes"]))],
        ["views without signal", _silent_text(results)],
        ["mono files (L = R)", _mono_text(results)],
    ]))
    ci_text = CI_TEXT.get(results.get("ci_method", "utterance-bootstrap"), "95% interval of UA")
    blocks.append(("p", "All figures are percentages over the pooled predictions of all test "
                        "folds. UA = unweighted average recall (the main metric), WA = accuracy, "
                        f"F1 = macro-F1; CI = {ci_text}. n/a: a view without signal in every "
                        "file (no runs; left out of the fusions)."
                        + _approximate_text(results.get("n_speakers"))))
    if "fig1" in figures:
        blocks += [("h2", "Fig. 1: log-Mel spectrograms of the four binaural views"),
                   ("img", figures["fig1"], "Left, Right, Mid and Side log-Mel spectrograms of "
                                            "one utterance (shared colour scale).")]
    return blocks


def _view_tables(results: dict[str, Any], runs: dict[str, Any], views: list[str]
                 ) -> list[Block]:
    """Table 1 (the views at the fusion pooling, and the best view) and one pooling table
    per view (Tables 2-5 for the four views)."""
    fusion_pooling, n_spk = _fusion_pooling(results), results.get("n_speakers")
    absent = list(results.get("absent_views", []))
    poolings = [p for p in POOLING_TITLES if any(name.endswith("/" + p) for name in runs)]
    label = POOLING_TITLES.get(fusion_pooling, fusion_pooling).lower()
    rows = [[v.capitalize(), *_metric_cells(runs.get(f"{v}/{fusion_pooling}"), n_spk)]
            for v in views]
    if "best-view" in runs:
        choices = sorted(set(runs["best-view"].get("fold_choice", [])))
        rows.append([f"Best view, chosen per fold on the training speakers ({', '.join(choices)})",
                     *_metric_cells(runs["best-view"], n_spk)])
    blocks: list[Block] = [("h2", f"Table 1: monaural representations with {label}"),
                           ("table", ["Representation", "UA", "WA", "F1", "UA CI"], rows)]
    for number, view in enumerate(views, start=2):
        rows = [[POOLING_TITLES[p], *_metric_cells(runs.get(f"{view}/{p}"), n_spk)]
                for p in poolings if view in absent or f"{view}/{p}" in runs]
        what = "view (waveform)" if results.get("layer") is not None else "Mel-spectrogram"
        blocks += [("h2", f"Table {number}: feature pooling methods, {view} {what}"),
                   ("table", ["Pooling method", "UA", "WA", "F1", "UA CI"], rows)]
    return blocks


def _fusion_tables(results: dict[str, Any], runs: dict[str, Any], table: int) -> list[Block]:
    """The score-level fusion table (nested and oracle), the feature-level fusion table and
    the comparison with hand-crafted baselines, numbered from ``table``."""
    n_spk = results.get("n_speakers")
    rows = []
    for fusion, title in fusion_titles().items():
        nested = runs.get(str(RunName.score_fusion(fusion)))
        oracle = runs.get(str(RunName.score_fusion(fusion, oracle=True)))
        if nested or oracle:
            rows.append([title, pct(nested and nested["ua"]),
                         _ci(nested, n_spk) if nested else "-",
                         _weights_text(nested.get("weights")) if nested else "-",
                         pct(oracle and oracle["ua"]),
                         _weights_text(oracle.get("weights")) if oracle else "-"])
    blocks: list[Block] = [
        ("h2", f"Table {table}: two-stage score-level fusion (eqs. 8-10)"),
        ("p", "nested: weights chosen on out-of-fold scores of the training speakers "
              "only (honest). oracle: the paper's choice, the weights that score best "
              "on the test data (optimistic by construction)."),
        ("table", ["Score-level fusion", "UA nested", "CI nested", "weights nested",
                   "UA oracle", "weights oracle"], rows)]
    caveat = next((r["caveat"] for r in results["runs"] if r.get("caveat")), None)
    if caveat:
        blocks.append(("warn", f"Nested fusion in {caveat}"))
    rows = [[title, pct(r["ua"]), pct(r["wa"]), pct(r["macro_f1"]), _ci(r, n_spk)]
            for fusion, title in fusion_titles().items()
            if (r := runs.get(str(RunName.feature_fusion(fusion))))]
    blocks += [("h2", f"Table {table + 1}: feature-level fusion (concatenation, one SVM)"),
               ("table", ["Feature-level fusion", "UA", "WA", "F1", "UA CI"], rows)]
    baselines = [r for name, r in runs.items() if name.startswith("opensmile/")]
    if baselines:
        system = runs.get("score-fusion/left+right+mid+side")   # the paper's system, not a pick
        rows = [[r["name"], pct(r["ua"]), pct(r["wa"]), pct(r["macro_f1"]), _ci(r, n_spk)]
                for r in baselines]
        if system:
            rows.append([f"binser {system['name']} (nested)", *_metric_cells(system, n_spk)])
        blocks += [("h2", f"Table {table + 2}: comparison with hand-crafted baselines"),
                   ("table", ["Method", "UA", "WA", "F1", "UA CI"], rows)]
    return blocks


def _normalised_blocks(results: dict[str, Any], runs: dict[str, Any],
                       figures: dict[str, str]) -> list[Block]:
    """The speaker-normalised runs beside the plain ones, as deployed, and online."""
    normalised = [r for r in results["runs"] if plain_name(r["name"]) != r["name"]]
    blocks: list[Block] = []
    if normalised:
        n_spk = results.get("n_speakers")
        rows = [[plain_name(r["name"]), *_metric_cells(r, n_spk),
                 pct(runs[plain_name(r["name"])]["ua"])
                 if plain_name(r["name"]) in runs else "-"] for r in normalised]
        blocks += [("h2", f"Speaker-normalised features (TRANSDUCTIVE, label-free; "
                          f"{TRANSDUCTIVE_CAVEAT})"),
                   ("p", "Each speaker's utterance-level features standardised over that "
                         "speaker's own utterances, test speakers included (no labels used). "
                         "This needs a batch of recordings of every test speaker; it is not "
                         "the plain speaker-independent setting."),
                   ("table", ["Run", "UA", "WA", "F1", "UA CI", "UA without"], rows)]
    if results.get("speaker_norm_deployment"):
        blocks += _deployment_blocks(results["speaker_norm_deployment"])
    if results.get("speaker_norm_online"):
        blocks += _online_blocks(results["speaker_norm_online"], figures.get("online"))
    return blocks


def _claims_blocks(results: dict[str, Any], figures: dict[str, str]) -> list[Block]:
    """The paper's claims as paired comparisons: the text, the forest plot, the table."""
    if not results.get("comparisons"):
        return []
    blocks: list[Block] = [("h2", "The paper's claims on this corpus (paired, speaker level)"),
                           ("p", _claims_text(results))]
    if "forest" in figures:
        blocks.append(("img", figures["forest"], "Forest plot: UA difference a - b of each "
                                                 "claim (points) with its 95% paired "
                                                 "interval (bars); the verdict at the "
                                                 "right."))
    blocks.append(("table", ["Claim (a beats b)", "a", "b", "UA diff", "95% CI",
                             "speakers +/-/=", "p", "p (Holm)", "verdict"],
                   _claim_rows(results["comparisons"])))
    return blocks


def _layer_blocks(results: dict[str, Any]) -> list[Block]:
    """The encoder layer (or set) chosen per fold, at the fusion pooling."""
    fusion_pooling = _fusion_pooling(results)
    layered = [r for r in results["runs"] if "fold_layer" in r]
    if not layered:
        return []
    rows = [[r["name"], ", ".join(str(x) for x in r["fold_layer"])] for r in layered
            if r["name"].endswith("/" + fusion_pooling)]
    return [("h2", "Encoder layer chosen per fold (inner CV on the training speakers)"),
            ("table", ["Run", "layer per fold"], rows)]


def _fold_blocks(results: dict[str, Any], figures: dict[str, str]) -> list[Block]:
    """Per-fold UA of every run but the oracle ones: heatmap and (folded) table."""
    fold_names = [", ".join(s) for s in results.get("fold_test_speakers", [])]
    if not fold_names:
        return []
    mean = results.get("protocol") != "loso"
    rows = [[r["name"], *[pct(u) for u in r["fold_ua"]],
             *([pct(r.get("fold_mean", {}).get("ua"))] if mean else [])]
            for r in results["runs"] if not is_oracle(r["name"])]
    blocks: list[Block] = [
        ("h2", "Per-fold UA (test speakers)"),
        ("p", "@oracle runs are left out: their weights were chosen on the pooled "
              "test data of all folds, so they have no per-fold figure.")]
    if "folds" in figures:
        blocks.append(("img", figures["folds"], "Per-fold UA (%): one row per run, one "
                                                "column per fold (its test speakers)."))
    blocks.append(("table", ["Run", *fold_names, *(["mean of folds"] if mean else [])],
                   rows, "the per-fold numbers"))
    return blocks


def _closing_blocks(results: dict[str, Any], figures: dict[str, str]) -> list[Block]:
    """Confusion matrices, files not used, run time."""
    blocks: list[Block] = []
    confusion = [key for key in figures if key.startswith("confusion:")]
    if confusion:
        blocks.append(("h2", "Figs. 4-6: confusion matrices (rows true, columns predicted)"))
        for key in confusion:
            blocks.append(("img", figures[key], key.split(":", 1)[1]))
    if results.get("skipped"):
        rows = [[s["path"], s["reason"]] for s in results["skipped"]]
        blocks += [("h2", "Files not used"), ("table", ["file", "reason"], rows)]
    timing = results.get("timing", {})
    if timing:
        blocks += [("h2", "Run time"),
                   ("table", ["stage", "seconds"],
                    [[timing_title(k), f"{v:.1f}"] for k, v in timing.items()])]
    return blocks


def _deployment_blocks(deployment: dict[str, Any]) -> list[Block]:
    """Speaker normalisation as deployed (:mod:`binser.deployment`) beside the transductive
    figure."""
    rows = []
    for v in deployment["variants"]:
        spread = (f"{pct(v['ua_range'][0])}–{pct(v['ua_range'][1])} over "
                  f"{len(v['ua_draws'])} draws" if v.get("ua_draws") else "-")
        note = v.get("note") or (TRANSDUCTIVE_CAVEAT if v["kind"] == "all" else "")
        rows.append([v["variant"], pct(v["ua"]), spread, note])
    return [("h2", f"Speaker normalisation as deployed ({deployment['fusion']})"),
            ("p", "Everything chosen on the training speakers as in the run (layers, "
                  "classifiers, nested fusion weights); only the test speaker's statistics "
                  "change: from all of its recordings (the transductive figure above), from "
                  "k random recordings (seed "
                  f"{deployment['seed']}), from a batch of one kind of emotion, or from none "
                  f"(the average training speaker; also used below {deployment['min_utterances']}"
                  " recordings, as predict does)."),
            ("table", ["Test speaker's statistics from", "UA", "range", "note"], rows)]


def _online_blocks(curve: dict[str, Any], figure: str | None) -> list[Block]:
    """Online speaker normalisation (:mod:`binser.online`): UA against how many of the test
    speaker's utterances came before."""
    rows = [[str(k), pct(u)] for k, u in zip(curve["ks"], curve["ua"])]
    rows.append(["all (offline, transductive)", pct(curve["offline_ua"])])
    blocks: list[Block] = [
        ("h2", f"Speaker normalisation online ({curve['fusion']})"),
        ("p", f"Each test utterance standardised with the statistics of itself and the k "
              f"utterances of its speaker before it, in {curve['n_orders']} random orders "
              f"(seed {curve['seed']}); below {curve['warm_up']} utterances the average "
              "training speaker. Layers, classifiers and nested fusion weights as in the run. "
              "How much of a new speaker's audio the gain needs."),
        ("table", ["utterances of the speaker before", "UA"], rows)]
    if figure:
        blocks.append(("img", figure, "UA against how many of the speaker's utterances came "
                                      "before; dashed: all of them (transductive)"))
    return blocks


def render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "warn":
            out.append(f"> **{block[1]}**\n")
        elif kind == "table":
            headers, rows = block[1], block[2]
            out.append("| " + " | ".join(headers) + " |")
            out.append("|" + "|".join("---" for _ in headers) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})\n")
        elif kind == "box":
            out.append(f"> **{block[1]}**\n>")
            out += [f"> - **{key}**: {value}" for key, value in block[2]]
            out.append("")
    return "\n".join(out)


def data_uri(path: str | Path) -> str:
    """A figure file as a ``data:`` URI (base64), so the page needs no other file."""
    path = Path(path)
    kind = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg",
            ".jpeg": "image/jpeg"}.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(blocks: Sequence[Block], title: str, base: str | Path | None = None) -> str:
    """The page; with ``base`` (the folder figure paths are relative to) every figure is
    embedded (:func:`data_uri`), else linked by its relative path."""
    esc = html.escape
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{esc(block[1])}</{kind}>")
        elif kind == "warn":
            body.append(f'<p class="warn">{esc(block[1])}</p>')
        elif kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>"
                           for row in block[2])
            table = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            if len(block) > 3:   # folded: the numbers behind a figure
                table = f"<details><summary>{esc(block[3])}</summary>{table}</details>"
            body.append(table)
        elif kind == "img":
            src = data_uri(Path(base) / block[1]) if base is not None else block[1]
            body.append(f'<figure><img src="{esc(src)}" alt="{esc(block[2])}">'
                        f"<figcaption>{esc(block[2])}</figcaption></figure>")
        elif kind == "box":
            items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in block[2])
            body.append(f'<section class="headline"><h2>{esc(block[1])}</h2>'
                        f"<dl>{items}</dl></section>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;"
             "padding:.25em .6em;text-align:left}th{background:#f3f3f3}img{max-width:100%}"
             ".warn{background:#fff3cd;border:1px solid #e0b000;padding:.6em;font-weight:bold}"
             "figure{margin:1em 0}.headline{border:2px solid #114477;border-radius:6px;"
             "padding:.4em 1em;margin:1em 0;background:#f4f8fc}.headline h2{margin:.3em 0}"
             ".headline dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em;"
             "margin:.4em 0}.headline dt{font-weight:bold}.headline dd{margin:0}"
             "summary{cursor:pointer;margin:.3em 0}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def make_figures(results: dict[str, Any], out_dir: Path, example_path: str | Path | None,
                 config: FrontEndConfig, progress: bool = False) -> dict[str, str]:
    """Draw Fig. 1 (if an example file is given), the summary figures and the confusion
    matrices (a progress bar with ``progress``); return figure key -> file name relative to
    ``out_dir``."""
    from .plots import plot_confusion
    from .progress import bar

    figures: dict[str, str] = {}
    fig_dir = out_dir / "figures"
    if example_path is not None:
        from .inspection import inspect_file

        inspect_file(example_path, config, figure=fig_dir / "fig1_views.png")
        figures["fig1"] = "figures/fig1_views.png"
    if results.get("conditions"):
        from .conditions import condition_figure

        if condition_figure(results["conditions"], fig_dir / "conditions_snr.png"):
            figures["conditions"] = "figures/conditions_snr.png"
    figures.update(summary_figures(results, out_dir))
    if results.get("speaker_norm_online"):
        from .online import plot_online_curve

        plot_online_curve(results["speaker_norm_online"], fig_dir / "online_norm.png")
        figures["online"] = "figures/online_norm.png"
    fusion_pooling = _fusion_pooling(results)
    runs = {r["name"]: r for r in results["runs"]}
    wanted = [str(RunName.single(v, fusion_pooling)) for v in all_views()]
    wanted += [str(RunName.score_fusion(f)) for f in fusion_titles()]
    wanted += ["feature-fusion/left+right+mid+side"]
    for name in bar([n for n in wanted if n in runs], desc="confusion figures", unit="figure",
                    enabled=progress):
        r = runs[name]
        file = "figures/confusion_" + name.replace("/", "_").replace("+", "-") + ".png"
        plot_confusion(r["confusion"], results["classes"], out_dir / file,
                       title=f"{name}: UA {pct(r['ua'])}%")
        figures[f"confusion:{name}"] = file
    return figures


def summary_figures(results: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """The UA chart of the main systems, the per-fold heatmap and the forest plot of the
    claims (each where there is something to draw); figure key -> relative file name."""
    from .plots import plot_fold_heatmap, plot_forest, plot_systems

    runs = {r["name"]: r for r in results["runs"]}
    figures: dict[str, str] = {}
    systems = main_systems(results)
    if systems:
        rows = [(n, runs[n]["ua"], _interval(runs[n])) for n in systems]
        plot_systems(rows, out_dir / "figures/systems_ua.png",
                     chance=1.0 / len(results["classes"]), highlight=default_system(runs))
        figures["systems"] = "figures/systems_ua.png"
    names, folds, matrix = fold_matrix(results)
    if names and folds:
        plot_fold_heatmap(matrix, names, folds, out_dir / "figures/fold_ua.png")
        figures["folds"] = "figures/fold_ua.png"
    claims = results.get("comparisons") or []
    if claims:
        rows = [(f"{c['a']} vs {c['b']}", c["diff"], c["ci95"], c["verdict"]) for c in claims]
        plot_forest(rows, out_dir / "figures/claims_forest.png")
        figures["forest"] = "figures/claims_forest.png"
    return figures


def _interval(run: dict[str, Any]) -> tuple[float, float] | None:
    lo, hi = run.get("ua_ci95", (None, None))
    return None if lo is None else (lo, hi)


def write_report(results: dict[str, Any], out_dir: str | Path,
                 example_path: str | Path | None = None,
                 config: FrontEndConfig = FrontEndConfig(), progress: bool = False
                 ) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and ``figures/`` into ``out_dir`` (each file
    written atomically; ``progress``: a bar while the figures are drawn)."""
    out_dir = Path(out_dir)
    figures = make_figures(results, out_dir, example_path, config, progress)
    blocks = build_blocks(results, figures)
    md, page = out_dir / "report.md", out_dir / "report.html"
    _write_atomic(md, render_markdown(blocks))
    _write_atomic(page, render_html(blocks, f"binser report: {results['dataset']}", out_dir))
    return md, page


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
