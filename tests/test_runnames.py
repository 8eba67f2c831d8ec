"""binser.runnames: one parse/format of results.json run names, and the contract order."""
from __future__ import annotations

import pytest

from binser.errors import ConfigError
from binser.runnames import RunName, run_order

NAMES = ["left/global-max", "mono/block-stats", "best-view", "score-fusion/left+right",
         "score-fusion/left+right+mid+side@oracle", "feature-fusion/mid+side",
         "opensmile/is10", "opensmile/egemaps-right", "speaker-norm:side/stats",
         "speaker-norm:score-fusion/mid+side@oracle", "speaker-norm:best-view"]


@pytest.mark.parametrize("name", NAMES)
def test_parse_then_format_is_the_identity(name):
    assert RunName.parse(name).format() == name == str(RunName.parse(name))


def test_fields_of_parsed_names():
    assert RunName.parse("speaker-norm:score-fusion/mid+side@oracle") == RunName(
        "score-fusion", fusion="mid+side", oracle=True, speaker_norm=True)
    assert RunName.parse("left/stats") == RunName("view", view="left", pooling="stats")
    assert RunName.parse("opensmile/egemaps-right").baseline == "egemaps-right"
    assert RunName.parse("speaker-norm:best-view").normalised(False) == RunName.best_view()


@pytest.mark.parametrize("bad", ["left/median", "centre/stats", "score-fusion/left+mono",
                                 "score-fusion/left+right@best", "feature-fusion/",
                                 "opensmile/", "speaker-norm:", "left", ""])
def test_names_outside_the_grammar_are_refused(bad):
    with pytest.raises(ConfigError, match="not a run name"):
        RunName.parse(bad)
    assert not RunName.is_valid(bad)


def test_contract_order():
    shuffled = list(reversed(NAMES)) + ["right/global-avg", "left/stats", "feature-fusion/left+right"]
    assert sorted(shuffled, key=run_order) == [
        "left/global-max", "left/stats", "right/global-avg", "mono/block-stats", "best-view",
        "score-fusion/left+right", "score-fusion/left+right+mid+side@oracle",
        "feature-fusion/left+right", "feature-fusion/mid+side", "opensmile/egemaps-right",
        "opensmile/is10", "speaker-norm:side/stats", "speaker-norm:best-view",
        "speaker-norm:score-fusion/mid+side@oracle"]


def test_oracle_and_plain_name_helpers():
    from binser.runnames import is_oracle, plain_name

    assert is_oracle("speaker-norm:score-fusion/mid+side@oracle")
    assert not is_oracle("score-fusion/mid+side") and not is_oracle("x@oracle")
    assert plain_name("speaker-norm:score-fusion/mid+side@oracle") == "score-fusion/mid+side@oracle"
    assert plain_name("left/stats") == "left/stats"
    assert plain_name("speaker-norm:custom") == "custom"      # outside the grammar: prefix only


def test_model_card_picks_its_configuration_runs_by_run_name():
    from binser.model import _cv_summary

    names = ["left/stats", "left/block-max", "best-view", "score-fusion/mid+side",
             "score-fusion/mid+side@oracle", "feature-fusion/mid+side", "feature-fusion/left+right",
             "opensmile/is10", "speaker-norm:left/stats", "speaker-norm:score-fusion/mid+side"]
    results = {"protocol": "loso", "n_folds": 2,
               "runs": [{"name": n, "ua": 0.5, "wa": 0.5, "macro_f1": 0.5} for n in names]}
    plain = [r["name"] for r in _cv_summary(results, "stats", "mid+side")["runs"]]
    assert plain == ["left/stats", "score-fusion/mid+side", "score-fusion/mid+side@oracle",
                     "feature-fusion/mid+side"]
    normalised = [r["name"] for r in _cv_summary(results, "stats", None, speaker_norm=True)["runs"]]
    assert normalised == ["speaker-norm:left/stats", "speaker-norm:score-fusion/mid+side"]
