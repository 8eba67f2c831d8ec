"""Small-sample warnings: few speakers (with the smallest attainable p) and folds that miss
a class (binser.evaluation.small_sample_warnings)."""
from __future__ import annotations

import numpy as np
import pytest

from binser.evaluation import (FEW_SPEAKERS, few_speakers_warning, folds, paired_comparison,
                               small_sample_warnings)

CLASSES = ["anger", "joy", "sadness"]


def study(n_speakers: int, per_class: int = 2, drop: dict[str, list[str]] | None = None):
    """Labels and speakers of ``n_speakers`` speakers with ``per_class`` utterances of each
    class, minus the classes ``drop`` names per speaker; LOSO folds."""
    labels, speakers = [], []
    for s in range(n_speakers):
        name = f"s{s}"
        for c in CLASSES:
            if c in (drop or {}).get(name, []):
                continue
            labels += [c] * per_class
            speakers += [name] * per_class
    return labels, speakers, folds(speakers, "loso")


def test_three_speakers_warn_and_state_the_smallest_p():
    labels, speakers, fold_list = study(3)
    (line,) = small_sample_warnings(fold_list, labels, speakers)
    assert "only 3 speakers (fewer than 5)" in line and "p below 0.25" in line
    assert "'undecided' means these data cannot decide" in line
    # the stated floor is what the test really gives for the most extreme data: system a
    # right on every utterance, b wrong on every one
    wrong = [CLASSES[(CLASSES.index(y) + 1) % 3] for y in labels]
    extreme = paired_comparison(labels, labels, wrong, speakers, CLASSES, n_boot=50)
    assert extreme["p_value"] == pytest.approx(0.25) == extreme["p_floor"]


def test_six_speakers_do_not_warn():
    labels, speakers, fold_list = study(6)
    assert small_sample_warnings(fold_list, labels, speakers) == []
    assert few_speakers_warning(FEW_SPEAKERS) is None
    assert few_speakers_warning(FEW_SPEAKERS - 1) is not None


def test_one_speaker():
    assert "no paired comparison is possible" in few_speakers_warning(1)


def test_folds_missing_a_class_are_named():
    # s5 never speaks sadness (its test fold misses it); only s0 speaks joy (the fold that
    # tests s0 has no joy to train on)
    drop = {f"s{i}": ["joy"] for i in range(1, 6)}
    drop["s5"].append("sadness")
    labels, speakers, fold_list = study(6, drop=drop)
    test_line, train_line = small_sample_warnings(fold_list, labels, speakers)
    assert test_line.startswith("5 of 6 folds miss a class in their test utterances")
    assert "fold 6 (s5) has no joy, sadness" in test_line and "fold 1 (s0)" not in test_line
    assert train_line == ("1 of 6 folds miss a class in their training utterances (fold 1 "
                          "(s0) has no joy): their classifiers can never predict those "
                          "classes")


def test_split_counts_the_test_speakers():
    labels, speakers, _ = study(8)
    test = np.flatnonzero(np.isin(speakers, ["s6", "s7"]))
    train = np.setdiff1d(np.arange(len(labels)), test)
    (line,) = small_sample_warnings([(train, test)], labels, speakers)
    assert "only 2 speakers" in line and "p below 0.5" in line


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_csv_corpus_with_its_own_label_and_three_speakers_runs(tmp_path):
    """A CSV corpus naming one class "frustrated" (not one of binser's labels) runs; with 3
    speakers the console and results.json carry the small-sample warning."""
    import contextlib
    import csv
    import io
    import json

    from binser.cli import main
    from binser.demo import DemoSpec, make_demo_corpus

    root = make_demo_corpus(tmp_path / "corpus", DemoSpec(n_speakers=3, per_emotion=2,
                                                           min_duration_s=0.7,
                                                           max_duration_s=0.8))
    with open(root / "manifest.csv", "w", newline="") as handle:
        rows = csv.writer(handle)
        rows.writerow(["path", "label", "speaker"])
        for path in sorted(root.glob("*/*.wav")):
            label = "Frustrated" if path.parent.name == "anger" else path.parent.name
            rows.writerow([path.relative_to(root).as_posix(), label, path.stem.split("_")[0]])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["experiment", "--dataset", "csv", "--root", str(root), "--out",
                     str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                     "--backbone", "efficientnet_lite0", "--input-size", "32", "--views",
                     "left,right", "--poolings", "block-max", "--n-boot", "50", "--quiet",
                     "--no-report"])
    assert code == 0, err.getvalue()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "frustrated" in results["classes"] and "anger" not in results["classes"]
    (line,) = results["small_sample_warnings"]
    assert line.startswith("only 3 speakers (fewer than 5)") and "p below 0.25" in line
    assert f"warning: {line}" in out.getvalue() + err.getvalue()


@pytest.mark.parametrize("n_speakers, n_claims, meaning", [
    (3, 1, "none can be decided"),        # 2 / 2^3 = 0.25 > 0.05
    (6, 2, "none can be decided"),        # Holm: 2 x 2 / 2^6 = 0.0625 > 0.05
    (6, 1, "'undecided': the test could have reached 0.05 but did not"),
])
def test_console_states_the_smallest_p_of_the_claims(capsys, n_speakers, n_claims, meaning):
    from binser.cli import print_claims
    from binser.evaluation import adjust_claims

    labels, speakers, _ = study(n_speakers)
    wrong = [CLASSES[(CLASSES.index(y) + 1) % 3] for y in labels]
    base = paired_comparison(labels, labels, wrong, speakers, CLASSES, n_boot=50)
    claims = adjust_claims([{**base, "claim": f"c{i}"} for i in range(n_claims)])
    print_claims(claims)
    head, *rows = capsys.readouterr().out.splitlines()
    floor = 2 / 2 ** n_speakers
    assert head.startswith(f"claims ({n_speakers} speakers, {n_claims} claim")
    assert f"smallest attainable p {floor:.3g}, after Holm {min(1, n_claims * floor):.3g}" in head
    assert meaning in head
    assert len(rows) == n_claims and rows[0].startswith("claim c0: +")
    assert rows[0].endswith(claims[0]["verdict"])
