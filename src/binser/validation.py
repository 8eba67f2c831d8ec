"""Checks of user-given values, in scikit-learn's style (compare
``sklearn.utils.validation.check_scalar``): each returns the checked value or raises
:class:`binser.errors.ConfigError` with one line that names the option, what it must be and
what it got; plus argparse ``type=`` factories that say the same in argparse's words.

Used by the command line (:mod:`binser.cli`), :class:`binser.experiment.ExperimentSettings`,
the fine-tuning settings, the benchmark options and the thread-count checks, and importable
by :mod:`binser.serve`.

* :func:`check_int_range` - a whole number (``bool`` refused) in ``low..high`` (either end
  optional), or None when ``optional``.
* :func:`check_float_range` - a finite real number with a lower/upper bound, each inclusive
  or not.
* :func:`check_choice` / :func:`check_choices` - one value / every value of a list among
  ``choices``: ``unknown <what> 'x'; choose from a, b, c``.
* :func:`int_type`, :func:`float_type` - argparse types (``argparse.ArgumentTypeError``).
"""
from __future__ import annotations

import argparse
import math
import numbers
from typing import Any, Callable, Iterable

from .errors import ConfigError


def _int_phrase(low: int | None, high: int | None) -> str:
    """'a positive integer', 'an integer in 1..64', 'an integer >= 0', 'an integer'."""
    if low == 1 and high is None:
        return "a positive integer"
    if low is not None and high is not None:
        return f"an integer in {low}..{high}"
    if low is not None:
        return f"an integer >= {low}"
    return "an integer" if high is None else f"an integer <= {high}"


def _is_whole(value: Any, integral_floats: bool) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return (integral_floats and isinstance(value, numbers.Real) and math.isfinite(value)
            and float(value).is_integer())


def check_int_range(value: Any, name: str, low: int | None = None, high: int | None = None,
                    *, optional: bool = False, integral_floats: bool = False) -> int | None:
    """``value`` as an ``int`` if it is a whole number in ``low..high`` (inclusive; None: no
    bound), None if it is None and ``optional``; else ConfigError
    ``"<name> must be an integer in <low>..<high>, got <value!r>"``.

    ``bool`` is never a number here. ``integral_floats``: also accept reals with an integral
    value (``2.0``), for Python callers that passed them before.
    """
    if value is None and optional:
        return None
    if (not _is_whole(value, integral_floats) or (low is not None and value < low)
            or (high is not None and value > high)):
        raise ConfigError(f"{name} must be {_int_phrase(low, high)}, got {value!r}")
    return int(value)


def check_float_range(value: Any, name: str, low: float | None = None,
                      high: float | None = None, *, low_inclusive: bool = True,
                      high_inclusive: bool = True, optional: bool = False,
                      what: str = "a number") -> float | None:
    """``value`` as a ``float`` if it is a finite real number within the bounds (None: no
    bound), None if it is None and ``optional``; else ConfigError
    ``"<name> must be <what> > 0, got <value!r>"`` (the bounds as given)."""
    if value is None and optional:
        return None
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value)
          and (low is None or (value >= low if low_inclusive else value > low))
          and (high is None or (value <= high if high_inclusive else value < high)))
    if not ok:
        bounds = [f"{'>=' if low_inclusive else '>'} {low:g}" if low is not None else "",
                  f"{'<=' if high_inclusive else '<'} {high:g}" if high is not None else ""]
        limit = " and ".join(b for b in bounds if b)
        raise ConfigError(f"{name} must be {what}{' ' + limit if limit else ''}, got {value!r}")
    return float(value)


def _choice_list(choices: Iterable[Any], sep: str) -> str:
    return sep.join(str(c) for c in choices)


def check_choice(value: Any, choices: Iterable[Any], what: str, *, option: str | None = None,
                 sep: str = ", ") -> Any:
    """``value`` if it is one of ``choices``; else ConfigError
    ``"[<option>: ]unknown <what> 'x'; choose from a, b, c"``."""
    choices = tuple(choices)
    if value not in choices:
        where = f"{option}: " if option else ""
        raise ConfigError(f"{where}unknown {what} {value!r}; choose from "
                          f"{_choice_list(choices, sep)}")
    return value


def check_choices(values: Iterable[Any], choices: Iterable[Any], what: str, *,
                  option: str | None = None, sep: str = ", ",
                  allow_empty: bool = False) -> tuple[Any, ...]:
    """``values`` as a tuple if every one is among ``choices`` (and, unless ``allow_empty``,
    there is at least one); else ConfigError ``"[<option>: ]unknown <what>(s) x, y; choose
    from a, b, c"`` or ``"[<option>: ]no <what> given; choose from ..."``."""
    values, choices = tuple(values), tuple(choices)
    where = f"{option}: " if option else ""
    unknown = [v for v in values if v not in choices]
    if unknown:
        raise ConfigError(f"{where}unknown {what}(s) {_choice_list(unknown, sep)}; choose from "
                          f"{_choice_list(choices, sep)}")
    if not values and not allow_empty:
        raise ConfigError(f"{where}no {what} given; choose from {_choice_list(choices, sep)}")
    return values


# --------------------------------------------------------------------------- argparse types


def int_type(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=``: a whole number in ``low..high`` (None: no bound). Messages:
    ``expected a whole number, got 'x'`` / ``must be >= 1, got 0`` / ``must be in 1..64, got
    99``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            limit = (f"in {low}..{high}" if low is not None and high is not None
                     else f">= {low}" if low is not None else f"<= {high}")
            raise argparse.ArgumentTypeError(f"must be {limit}, got {value}")
        return value
    return parse


def float_type(low: float = 0.0, low_inclusive: bool = False) -> Callable[[str], float]:
    """An argparse ``type=``: a finite number above ``low`` (default: a positive number).
    Messages: ``expected a number, got 'x'`` / ``must be a positive number, got -1``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        above = value >= low if low_inclusive else value > low
        if not above or not math.isfinite(value):
            what = ("a positive number" if (low, low_inclusive) == (0.0, False)
                    else f"a finite number {'>=' if low_inclusive else '>'} {low:g}")
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse

