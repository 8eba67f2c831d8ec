"""binser.validation: the one set of value checks used by the CLI, the settings and the bench."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from binser.errors import ConfigError
from binser.validation import (check_choice, check_choices, check_float_range, check_int_range,
                               float_type, int_type)


@pytest.mark.parametrize("value, expected", [(1, 1), (64, 64), (np.int64(7), 7), (None, None)])
def test_int_range_accepts_and_returns_int(value, expected):
    out = check_int_range(value, "--blocks", 1, 64, optional=True)
    assert out == expected and (out is None or type(out) is int)


@pytest.mark.parametrize("value, words", [
    (0, "--blocks must be an integer in 1..64, got 0"), (65, "got 65"), (True, "got True"),
    (2.0, "got 2.0"), ("3", "got '3'"), (None, "got None")])
def test_int_range_refusals_name_option_range_and_value(value, words):
    with pytest.raises(ConfigError) as caught:
        check_int_range(value, "--blocks", 1, 64)
    assert words in str(caught.value)


def test_int_range_phrases_and_integral_floats():
    with pytest.raises(ConfigError, match="^--threads must be a positive integer, got 0$"):
        check_int_range(0, "--threads", 1)
    with pytest.raises(ConfigError, match="^--seed must be an integer >= 0, got -1$"):
        check_int_range(-1, "--seed", 0)
    assert check_int_range(3.0, "workers", 1, integral_floats=True) == 3
    for bad in (2.5, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="workers"):
            check_int_range(bad, "workers", 1, integral_floats=True)


def test_float_range():
    assert check_float_range(0.5, "--seconds", 0.0, low_inclusive=False) == 0.5
    assert check_float_range(0.0, "x", 0.0, 1.0) == 0.0            # inclusive by default
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ConfigError, match=r"^--seconds must be a number of seconds > 0, got"):
            check_float_range(bad, "--seconds", 0.0, low_inclusive=False,
                              what="a number of seconds")
    with pytest.raises(ConfigError, match=r"must be a number >= 0 and < 1, got 1"):
        check_float_range(1, "momentum", 0.0, 1.0, high_inclusive=False)


def test_choice_messages():
    assert check_choice("joint", ("staged", "joint"), "weight search") == "joint"
    with pytest.raises(ConfigError, match=r"^unknown weight search 'greedy'; choose from "
                                          r"staged, joint$"):
        check_choice("greedy", ("staged", "joint"), "weight search")
    with pytest.raises(ConfigError, match=r"^--parts: unknown bench part\(s\) x,y; choose from "
                                          r"a,b$"):
        check_choices(["a", "x", "y"], ("a", "b"), "bench part", option="--parts", sep=",")
    with pytest.raises(ConfigError, match=r"^--poolings: no pooling given; choose from a, b$"):
        check_choices([], ("a", "b"), "pooling", option="--poolings")
    assert check_choices([], ("a",), "baseline", allow_empty=True) == ()


def test_argparse_types_through_a_parser(capsys):
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--n", type=int_type(1))
    parser.add_argument("--k", type=int_type(1, 8))
    parser.add_argument("--s", type=float_type())
    assert parser.parse_args(["--n", "3", "--k", "8", "--s", "0.25"]) == argparse.Namespace(
        n=3, k=8, s=0.25)
    for argv, words in ((["--n", "0"], "argument --n: must be >= 1, got 0"),
                        (["--n", "x"], "argument --n: expected a whole number, got 'x'"),
                        (["--k", "9"], "argument --k: must be in 1..8, got 9"),
                        (["--s", "inf"], "argument --s: must be a positive number, got inf"),
                        (["--s", "-1"], "argument --s: must be a positive number, got -1")):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert words in capsys.readouterr().err


def test_settings_and_bench_use_the_helpers():
    from binser.benchmark import BenchOptions, check_bench_options
    from binser.experiment import ExperimentSettings

    with pytest.raises(ConfigError, match=r"^--levels must be an integer in 1..64, got 0$"):
        ExperimentSettings(dataset="folder", root=".", levels=0).validate()
    with pytest.raises(ConfigError, match=r"^unknown pooling\(s\) median; choose from global"):
        ExperimentSettings(dataset="folder", root=".", poolings=("median",)).validate()
    with pytest.raises(ConfigError, match=r"^--batch-size must be an integer in 1..65536"):
        check_bench_options(BenchOptions(root=".", batch=0))
