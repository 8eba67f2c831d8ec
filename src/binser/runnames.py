"""Run names of ``results.json``, typed: :class:`RunName` with one :meth:`RunName.parse` and
one :meth:`RunName.format`, used by the experiment, the report and the results validator.

The grammar (``<view>`` from :mod:`binser.views`, ``<pooling>`` from
:data:`binser.pooling.POOLINGS`, ``<rule>`` from :data:`binser.fusion.FUSION_RULES`)::

    [speaker-norm:] <view>/<pooling>              kind "view"            e.g. left/block-max
    [speaker-norm:] best-view                     kind "best-view"
    [speaker-norm:] score-fusion/<rule>[@oracle]  kind "score-fusion"    nested or oracle weights
    [speaker-norm:] feature-fusion/<rule>         kind "feature-fusion"
    [speaker-norm:] opensmile/<set>[-<view>]      kind "baseline"        (binser.baselines)

The ``speaker-norm:`` prefix marks a run on speaker-normalised features; the ``head:`` prefix
(kinds ``view`` and ``score-fusion`` only) a run of the trained head (``experiment
--classifier head``, :mod:`binser.head`: attentive statistics over the frames) instead of
the SVM. :meth:`order_key`
is the contract order of the runs in ``results.json``: single views (view table order, then
pooling order), the best view, score fusions (nested then oracle, rule table order), feature
fusions, baselines; the head's runs after the SVM's; the speaker-normalised runs after all
plain ones, in the same order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import ConfigError

NORM_PREFIX = "speaker-norm:"
HEAD_PREFIX = "head:"
KINDS = ("view", "best-view", "score-fusion", "feature-fusion", "baseline")
BASELINE_PREFIX = "opensmile/"
_BASELINE_TAIL = re.compile(r"^[A-Za-z0-9_.-]+$")
_ORACLE = "@oracle"


@dataclass(frozen=True)
class RunName:
    """One run name; ``str(run_name)`` is :meth:`format`.

    ``kind``: one of :data:`KINDS`; ``view``/``pooling`` (kind ``view``), ``fusion`` (the
    rule of a score or feature fusion), ``oracle`` (score fusion with the weights chosen on
    the test data), ``baseline`` (the text after ``opensmile/``), ``speaker_norm``.
    """
    kind: str
    view: str | None = None
    pooling: str | None = None
    fusion: str | None = None
    oracle: bool = False
    baseline: str | None = None
    speaker_norm: bool = False
    head: bool = False

    # ------------------------------------------------------------------ constructors
    @classmethod
    def single(cls, view: str, pooling: str) -> "RunName":
        return cls("view", view=view, pooling=pooling)

    @classmethod
    def best_view(cls) -> "RunName":
        return cls("best-view")

    @classmethod
    def score_fusion(cls, rule: str, oracle: bool = False) -> "RunName":
        return cls("score-fusion", fusion=rule, oracle=oracle)

    @classmethod
    def feature_fusion(cls, rule: str) -> "RunName":
        return cls("feature-fusion", fusion=rule)

    def normalised(self, speaker_norm: bool = True) -> "RunName":
        """The same run on speaker-normalised features (or, with False, on plain ones)."""
        return replace(self, speaker_norm=speaker_norm)

    # ------------------------------------------------------------------ text
    def format(self) -> str:
        """The name as written in ``results.json``."""
        prefix = (NORM_PREFIX if self.speaker_norm else "") + (HEAD_PREFIX if self.head else "")
        if self.kind == "view":
            return f"{prefix}{self.view}/{self.pooling}"
        if self.kind == "best-view":
            return f"{prefix}best-view"
        if self.kind == "score-fusion":
            return f"{prefix}score-fusion/{self.fusion}{_ORACLE if self.oracle else ''}"
        if self.kind == "feature-fusion":
            return f"{prefix}feature-fusion/{self.fusion}"
        return f"{prefix}{BASELINE_PREFIX}{self.baseline}"

    __str__ = format

    @classmethod
    def parse(cls, text: str) -> "RunName":
        """The :class:`RunName` of ``text``; ConfigError naming ``text`` if it is not a run
        name of the grammar (unknown view, pooling or fusion rule included)."""
        from .fusion import FUSION_RULES
        from .pooling import POOLINGS
        from .views import VIEW_DEFINITIONS

        speaker_norm = text.startswith(NORM_PREFIX)
        body = text[len(NORM_PREFIX):] if speaker_norm else text
        head = body.startswith(HEAD_PREFIX)
        body = body[len(HEAD_PREFIX):] if head else body
        first, slash, tail = body.partition("/")
        name: RunName | None = None
        if body == "best-view" and not head:
            name = cls.best_view()
        elif first == "score-fusion" and tail.removesuffix(_ORACLE) in FUSION_RULES:
            name = cls.score_fusion(tail.removesuffix(_ORACLE), tail.endswith(_ORACLE))
        elif first == "feature-fusion" and tail in FUSION_RULES and not head:
            name = cls.feature_fusion(tail)
        elif (slash and first + "/" == BASELINE_PREFIX and _BASELINE_TAIL.match(tail)
              and not head):
            name = cls("baseline", baseline=tail)
        elif first in VIEW_DEFINITIONS and tail in POOLINGS:
            name = cls.single(first, tail)
        if name is None:
            raise ConfigError(f"not a run name: {text!r}")
        return replace(name.normalised(speaker_norm), head=head)

    @classmethod
    def is_valid(cls, text: str) -> bool:
        """``text`` parses (:meth:`parse`)."""
        try:
            cls.parse(text)
        except ConfigError:
            return False
        return True

    # ------------------------------------------------------------------ order
    def order_key(self) -> tuple:
        """Sort key of the contract order (module docstring); ties by the formatted name."""
        from .fusion import FUSION_RULES
        from .pooling import POOLINGS
        from .views import VIEW_DEFINITIONS

        views, rules = list(VIEW_DEFINITIONS), list(FUSION_RULES)
        if self.kind == "view":
            rank = (0, views.index(self.view), POOLINGS.index(self.pooling))
        elif self.kind == "best-view":
            rank = (1, 0, 0)
        elif self.kind == "score-fusion":
            rank = (2, int(self.oracle), rules.index(self.fusion))
        elif self.kind == "feature-fusion":
            rank = (3, 0, rules.index(self.fusion))
        else:
            rank = (4, 0, 0)
        return (self.speaker_norm, self.head, *rank, self.format())


def is_oracle(name: str) -> bool:
    """``name`` is a score fusion with oracle weights (``...@oracle``); False for names
    outside the grammar."""
    return RunName.is_valid(name) and RunName.parse(name).oracle


def plain_name(name: str) -> str:
    """``name`` without the ``speaker-norm:`` prefix (names outside the grammar unchanged
    but for that prefix)."""
    if RunName.is_valid(name):
        return RunName.parse(name).normalised(False).format()
    return name.removeprefix(NORM_PREFIX)


def run_order(name: str) -> tuple:
    """:meth:`RunName.order_key` of a run name string; names outside the grammar sort after
    the baselines of their family (plain or speaker-normalised), by name."""
    try:
        return RunName.parse(name).order_key()
    except ConfigError:
        return (name.startswith(NORM_PREFIX), 4, 0, 0, name)
