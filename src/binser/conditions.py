"""Evaluation by condition on a scene corpus (``--dataset scenes``): every run's UA per bin of
each scene parameter, paired comparisons in the low-SNR bins, and the interferer-leak counts
(``results.json``'s ``conditions`` section; the report's figure and table).

Each file's condition values come from the scene folder's ``scenes.csv``, read through
:func:`binser.scenes.run.read_manifest` and matched to the corpus's utterances by path relative
to the corpus root (:func:`scene_conditions`). Factors and bins (:data:`FACTORS`; a bin with
no test utterance is left out):

* ``snr_db``: one bin per drawn SNR value (dB), labelled ``f"{snr:g}"``, in numeric order;
* ``rt60_s``: ``<0.4`` (RT60 < 0.4 s), ``0.4-0.65`` (0.4 <= RT60 < 0.65), ``>=0.65``;
* ``interferer``: ``no`` (empty ``interferer`` column: no competing talker), ``yes``;
* ``azimuth_abs_deg``: ``|azimuth|`` in degrees: ``0-30`` [0, 30), ``30-60`` [30, 60),
  ``60-90`` [60, 90], ``>90`` (90, 180].

Per run, factor and bin (``conditions["runs"][run][factor][bin]``): ``n`` (test utterances
in the bin), ``n_speakers``, ``ua`` (:func:`binser.evaluation.metrics`: over the classes
present in the bin), ``ci95`` (the speaker bootstrap within the bin:
:func:`~binser.evaluation.ua_ci_with_method` on the bin's utterances and speakers, the run's
``n_boot`` and ``seed``; the utterance bootstrap for a bin of one speaker; ``ci95_method``
says which) and, below :data:`~binser.evaluation.APPROXIMATE_BELOW` speakers in the bin,
``ci95_note`` (the interval is approximate; the section's ``ci_note`` says so for the
corpus's speaker count, as ``results.json``'s own ``ci_note`` does). ``@oracle`` runs
(weights chosen on the pooled test data) get ``ci95 = None``.

Comparisons (``conditions["comparisons"]``): in every SNR bin with SNR <= :data:`LOW_SNR_DB`,
the four-view nested score fusion (and a larger nested fusion holding the four views, when
run) against ``best-view`` and against ``mid/<fusion pooling>``:
:func:`~binser.evaluation.paired_comparison` on that bin's utterances, Holm-corrected across
these claims only (:func:`~binser.evaluation.adjust_claims`; the run's main ``comparisons``
are untouched).

Interferer leak (``conditions["interferer_leak"]``): a scene's competing talker is another
speaker's utterance of the same corpus, so under speaker-independent folds a training scene
can hold a test speaker's voice and a test scene a training speaker's. Per fold:
``test_files_interferer_from_training`` (test files whose ``interferer_speaker`` is a training
speaker of the fold) and ``training_files_interferer_from_test`` (training files whose
``interferer_speaker`` is a test speaker of the fold). Speaker audio leaks, labels do not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import CorpusError

FACTORS = ("snr_db", "rt60_s", "interferer", "azimuth_abs_deg")
FACTOR_TITLES = {"snr_db": "SNR (dB)", "rt60_s": "RT60 (s)", "interferer": "competing talker",
                 "azimuth_abs_deg": "|azimuth| (deg)"}
RT60_EDGES = (0.4, 0.65)
RT60_BINS = ("<0.4", "0.4-0.65", ">=0.65")
AZIMUTH_BINS = ("0-30", "30-60", "60-90", ">90")
INTERFERER_BINS = ("no", "yes")
LOW_SNR_DB = 5.0
FOUR_VIEW = "left+right+mid+side"
LEAK_NOTE = ("a scene's competing talker is another speaker's utterance of the same corpus: a "
             "training scene can hold a test speaker's voice (and a test scene a training "
             "speaker's). This is a mild leak of speaker audio, not of labels (the interferer's "
             "emotion is not the target's label and is never used).")


# ------------------------------------------------------------------------------ values

def _number(text: str, column: str, path: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise CorpusError(f"scenes.csv row {path}: {column} {text!r} is not a number") from None
    if not np.isfinite(value):
        raise CorpusError(f"scenes.csv row {path}: {column} {text!r} is not finite")
    return value


def scene_conditions(corpus) -> dict[str, np.ndarray]:
    """Per-utterance scene parameters of a scene corpus, in corpus order: ``snr_db``,
    ``rt60_s``, ``azimuth_deg`` (float arrays), ``interferer`` (bool),
    ``interferer_speaker`` (str; ``""`` without a competing talker).

    CorpusError when ``scenes.csv`` is absent or not a ``binser scenes`` manifest, an
    utterance has no row, or a value does not parse.
    """
    from .scenes.run import MANIFEST, read_manifest

    root = Path(corpus.root)
    rows = read_manifest(root)
    if not rows:
        raise CorpusError(f"{root / MANIFEST}: no scene rows (not a 'binser scenes' manifest, "
                          "or none of its files exist)")
    out: dict[str, list] = {k: [] for k in ("snr_db", "rt60_s", "azimuth_deg", "interferer",
                                            "interferer_speaker")}
    for u in corpus:
        rel = Path(u.path).relative_to(root).as_posix()
        row = rows.get(rel)
        if row is None:
            raise CorpusError(f"{root / MANIFEST}: no row for {rel}")
        out["snr_db"].append(_number(row["snr_db"], "snr_db", rel))
        out["rt60_s"].append(_number(row["rt60_s"], "rt60_s", rel))
        out["azimuth_deg"].append(_number(row["azimuth_deg"], "azimuth_deg", rel))
        out["interferer"].append(bool(row["interferer"].strip()))
        out["interferer_speaker"].append(row["interferer_speaker"].strip())
    return {"snr_db": np.array(out["snr_db"]), "rt60_s": np.array(out["rt60_s"]),
            "azimuth_deg": np.array(out["azimuth_deg"]),
            "interferer": np.array(out["interferer"], dtype=bool),
            "interferer_speaker": np.array(out["interferer_speaker"], dtype=object)}


def condition_bins(values: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, list[str]]]:
    """``{factor: (bin label of each utterance (N,) object, bin labels in order)}`` for the
    factors of :data:`FACTORS` (definitions in the module docstring)."""
    snr = np.asarray(values["snr_db"], float)
    snr_labels = np.array([f"{v:g}" for v in snr], dtype=object)
    snr_order = [f"{v:g}" for v in sorted(set(snr.tolist()))]
    rt60 = np.asarray(values["rt60_s"], float)
    rt60_labels = np.array(RT60_BINS, dtype=object)[np.searchsorted(RT60_EDGES, rt60,
                                                                     side="right")]
    interferer = np.array(INTERFERER_BINS, dtype=object)[np.asarray(values["interferer"], int)]
    az = np.abs(np.asarray(values["azimuth_deg"], float))
    az_index = np.where(az > 90, 3, np.where(az >= 60, 2, np.where(az >= 30, 1, 0)))
    az_labels = np.array(AZIMUTH_BINS, dtype=object)[az_index]
    return {"snr_db": (snr_labels, snr_order), "rt60_s": (rt60_labels, list(RT60_BINS)),
            "interferer": (interferer, list(INTERFERER_BINS)),
            "azimuth_abs_deg": (az_labels, list(AZIMUTH_BINS))}


# ------------------------------------------------------------------------------ per bin

def bin_metrics(y: np.ndarray, predicted: np.ndarray, classes: Sequence[str],
                speakers: np.ndarray, rows: np.ndarray, n_boot: int, seed: int,
                interval: bool = True) -> dict[str, Any]:
    """``n``, ``n_speakers``, ``ua``, ``ci95``, ``ci95_method`` (and ``ci95_note``) of the
    utterances ``rows`` (indices or a mask) of one run."""
    from .evaluation import APPROXIMATE_BELOW, interval_note, metrics, ua_ci_with_method

    names = np.asarray(classes)
    truth, guess, who = names[y[rows]], names[predicted[rows]], np.asarray(speakers)[rows]
    n_speakers = len(set(who.tolist()))
    out: dict[str, Any] = {"n": int(len(truth)), "n_speakers": n_speakers,
                           "ua": metrics(truth, guess, classes)["ua"]}
    if not interval:
        out.update(ci95=None, ci95_method=None)
        return out
    lo, hi, used = ua_ci_with_method(truth, guess, classes, groups=who, n_boot=n_boot,
                                     seed=seed)
    out.update(ci95=[lo, hi], ci95_method=used)
    if n_speakers < APPROXIMATE_BELOW:
        out["ci95_note"] = (interval_note(n_speakers) if n_speakers > 1 else
                            "1 speaker: utterance bootstrap, speakers not resampled")
    return out


def run_conditions(predicted: np.ndarray, y: np.ndarray, classes: Sequence[str],
                   speakers: np.ndarray, bins: Mapping[str, tuple[np.ndarray, list[str]]],
                   n_boot: int, seed: int, interval: bool = True) -> dict[str, dict[str, Any]]:
    """``{factor: {bin: bin_metrics}}`` of one run over its tested utterances
    (``predicted >= 0``), bins in order, empty bins left out."""
    tested = np.asarray(predicted) >= 0
    out: dict[str, dict[str, Any]] = {}
    for factor, (labels, order) in bins.items():
        out[factor] = {}
        for label in order:
            rows = np.flatnonzero(tested & (labels == label))
            if len(rows):
                out[factor][label] = bin_metrics(y, predicted, classes, speakers, rows, n_boot,
                                                 seed, interval)
    return out


# ------------------------------------------------------------------------------ systems

def larger_fusion(run_names: Sequence[str]) -> str | None:
    """The largest nested score fusion run whose rule holds the four views and more (a
    fusion grown by added views), or None."""
    from .fusion import FUSION_RULES
    from .runnames import RunName

    four = set(FUSION_RULES[FOUR_VIEW].views) if FOUR_VIEW in FUSION_RULES else set()
    best = None
    for name in run_names:
        if not RunName.is_valid(name):
            continue
        parsed = RunName.parse(name)
        if parsed.kind != "score-fusion" or parsed.oracle or parsed.speaker_norm:
            continue
        views = set(FUSION_RULES[parsed.fusion].views)
        if four < views and (best is None or len(views) > best[0]):
            best = (len(views), name)
    return None if best is None else best[1]


def condition_systems(run_names: Sequence[str], fusion_pooling: str) -> list[tuple[str, str]]:
    """``(label, run name)`` of the systems the figure and table show, those run: left
    alone and mid (the mono mix) at the fusion pooling, the best single view, the four-view
    nested score fusion and a larger fusion (:func:`larger_fusion`)."""
    names = set(run_names)
    wanted = [("left alone", f"left/{fusion_pooling}"), ("mid (mono mix)", f"mid/{fusion_pooling}"),
              ("best single view", "best-view"),
              ("binaural fusion (four views)", f"score-fusion/{FOUR_VIEW}")]
    larger = larger_fusion(run_names)
    if larger is not None:
        wanted.append((f"fusion with added views ({larger.split('/', 1)[1]})", larger))
    return [(label, name) for label, name in wanted if name in names]


# ------------------------------------------------------------------------------ claims

def low_snr_comparisons(runs: Mapping[str, Any], y: np.ndarray, classes: Sequence[str],
                        speakers: np.ndarray, snr: np.ndarray, n_boot: int, seed: int,
                        fusion_pooling: str, low_snr_db: float = LOW_SNR_DB
                        ) -> list[dict[str, Any]]:
    """Paired comparisons of the fusion(s) against ``best-view`` and mid in every SNR bin at
    or below ``low_snr_db`` (module docstring); ``runs``: name -> predictions (N,) with -1
    where not tested. Holm across the returned claims."""
    from .evaluation import adjust_claims, paired_comparison

    names = np.asarray(classes)
    fusions = [n for n in (f"score-fusion/{FOUR_VIEW}", larger_fusion(list(runs)))
               if n is not None and n in runs]
    rivals = [n for n in ("best-view", f"mid/{fusion_pooling}") if n in runs]
    out = []
    for value in sorted(set(np.asarray(snr, float).tolist())):
        if value > low_snr_db:
            continue
        for a in fusions:
            for b in rivals:
                rows = (snr == value) & (runs[a] >= 0) & (runs[b] >= 0)
                if len(set(np.asarray(speakers)[rows].tolist())) < 2:
                    continue          # a speaker-level test needs >= 2 speakers
                result = paired_comparison(names[y[rows]], names[runs[a][rows]],
                                           names[runs[b][rows]], np.asarray(speakers)[rows],
                                           classes, n_boot=n_boot, seed=seed)
                out.append({"claim": f"{a} beats {b} at SNR {value:g} dB", "a": a, "b": b,
                            "factor": "snr_db", "bin": f"{value:g}", "n": int(rows.sum()),
                            **result})
    return adjust_claims(out) if out else []


def interferer_leak(values: Mapping[str, np.ndarray], speakers: np.ndarray,
                    fold_list: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Per fold, the counts of :data:`LEAK_NOTE` (module docstring), with the note."""
    who = np.asarray(speakers).astype(str)
    other = np.asarray(values["interferer_speaker"]).astype(str)
    folds = []
    for k, (train, test) in enumerate(fold_list):
        train_spk, test_spk = set(who[train].tolist()), set(who[test].tolist())
        folds.append({"fold": k, "test_speakers": sorted(test_spk),
                      "test_files_interferer_from_training":
                          int(sum(other[i] in train_spk for i in test)),
                      "training_files_interferer_from_test":
                          int(sum(other[i] in test_spk for i in train))})
    return {"note": LEAK_NOTE, "folds": folds,
            "test_files_interferer_from_training":
                sum(f["test_files_interferer_from_training"] for f in folds),
            "training_files_interferer_from_test":
                sum(f["training_files_interferer_from_test"] for f in folds)}


# ------------------------------------------------------------------------------ the section

def condition_results(values: Mapping[str, np.ndarray], runs: Mapping[str, np.ndarray],
                      y: np.ndarray, classes: Sequence[str], speakers: np.ndarray,
                      fold_list: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int,
                      seed: int, fusion_pooling: str) -> dict[str, Any]:
    """``results.json``'s ``conditions`` section (module docstring). ``values``:
    :func:`scene_conditions`; ``runs``: run name -> predicted class indices (N,), -1 where
    not tested, in the order the section should list them."""
    from .evaluation import APPROXIMATE_BELOW, interval_note
    from .runnames import is_oracle

    bins = condition_bins(values)
    section: dict[str, Any] = {
        "factors": {f: {"title": FACTOR_TITLES[f], "bins": order}
                    for f, (_, order) in bins.items()},
        "definition": ("UA within each bin over the test utterances of that bin; 95% speaker "
                       "bootstrap interval within the bin (utterance bootstrap for a bin of "
                       "one speaker); intervals approximate below "
                       f"{APPROXIMATE_BELOW} speakers in the bin; none on @oracle runs"),
        "ci_note": interval_note(len(set(np.asarray(speakers).tolist()))),   # None from 10 on
        "systems": [{"label": label, "run": name}
                    for label, name in condition_systems(list(runs), fusion_pooling)],
        "runs": {name: run_conditions(pred, y, classes, speakers, bins, n_boot, seed,
                                      interval=not is_oracle(name))
                 for name, pred in runs.items()},
        "comparisons": low_snr_comparisons(runs, y, classes, speakers, values["snr_db"], n_boot,
                                           seed, fusion_pooling),
        "interferer_leak": interferer_leak(values, speakers, fold_list),
    }
    return section


# ------------------------------------------------------------------------------ the report

def condition_figure(conditions: Mapping[str, Any], out_png: str | Path) -> Path | None:
    """UA against SNR with interval bars for the section's systems (None when there are none
    or the corpus has no SNR bins)."""
    from .plots import plot_condition_curves

    bins = conditions["factors"]["snr_db"]["bins"]
    series = {}
    for system in conditions["systems"]:
        per_bin = conditions["runs"][system["run"]]["snr_db"]
        points = [(b, per_bin[b]) for b in bins if b in per_bin]
        series[system["label"]] = ([float(b) for b, _ in points],
                                   [m["ua"] for _, m in points],
                                   [m["ci95"] for _, m in points])
    if not series or not bins:
        return None
    return plot_condition_curves(series, out_png, xlabel="SNR (dB)",
                                 title="UA by SNR (95% speaker-bootstrap intervals within bins)")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}"


def _cell(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "-"
    ci = entry.get("ci95")
    interval = f" [{_pct(ci[0])}–{_pct(ci[1])}]" if ci else ""
    return f"{_pct(entry['ua'])}{interval}"


def condition_blocks(conditions: Mapping[str, Any], figure: str | None) -> list[tuple]:
    """The report's blocks (:mod:`binser.report`): figure, per-condition table, low-SNR
    claims, interferer leak."""
    systems = conditions["systems"]
    blocks: list[tuple] = [("h2", "Evaluation by condition (binaural scenes)"),
                           ("p", "UA (%) within each condition bin of the scene corpus, with "
                                 "the 95% speaker-bootstrap interval computed within the bin "
                                 "in brackets (approximate with few speakers per bin). n: test "
                                 "utterances in the bin (with its speakers).")]
    if figure:
        blocks.append(("img", figure, "UA against SNR: left alone, mid (mono mix), the best "
                                      "single view and the binaural fusion, with interval bars"))
    rows = []
    for factor, info in conditions["factors"].items():
        for b in info["bins"]:
            entries = [conditions["runs"][s["run"]][factor].get(b) for s in systems]
            first = next((e for e in entries if e is not None), None)
            if first is None:
                continue
            rows.append([info["title"], b, f"{first['n']} ({first['n_speakers']} spk)",
                         *[_cell(e) for e in entries]])
    blocks.append(("table", ["factor", "bin", "n", *[f"{s['label']}: {s['run']}"
                                                     for s in systems]], rows))
    claims = conditions.get("comparisons") or []
    if claims:
        rows = [[c["claim"], c["n"], f"{100 * c['diff']:+.2f}",
                 f"{100 * c['ci95'][0]:+.2f} to {100 * c['ci95'][1]:+.2f}",
                 f"{c['n_better']}+ / {c['n_worse']}- / {c['n_tied']}=",
                 f"{c['p_value']:.3f}", f"{c['p_holm']:.3f}", c["verdict"]] for c in claims]
        blocks += [("p", f"Paired speaker-level comparisons within the SNR bins at or below "
                         f"{LOW_SNR_DB:g} dB (Holm across these {len(claims)} claims only; "
                         "same test as the main claims table)."),
                   ("table", ["Claim (a beats b)", "n", "UA diff", "95% CI", "speakers +/-/=",
                              "p", "p (Holm)", "verdict"], rows)]
    leak = conditions.get("interferer_leak")
    if leak:
        rows = [[f["fold"] + 1, ", ".join(f["test_speakers"]),
                 f["test_files_interferer_from_training"],
                 f["training_files_interferer_from_test"]] for f in leak["folds"]]
        blocks += [("p", "Competing talkers across folds: " + leak["note"]),
                   ("table", ["fold", "test speakers", "test files, interferer a training "
                              "speaker", "training files, interferer a test speaker"], rows)]
    return blocks
