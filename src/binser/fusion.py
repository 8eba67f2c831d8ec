"""Score-level fusion of the binaural views: the paper's two-stage fusion (docs/METHOD.md
section 8, eqs. M14-M16 = the paper's eqs. 8-10) and its weight search, with every fusion
rule one entry of a table.

Scores are ``(N, K)`` arrays per view whose columns follow one shared ``classes`` order and
which are comparable across views (calibrated probabilities from
:class:`binser.classifier.ViewClassifier`).

A fusion rule (:class:`FusionRule`, table :data:`FUSION_RULES`) is a sequence of stages
(:class:`Stage`); each stage combines two operands (views, or the outputs of earlier stages)
with one weight ``w`` through the rule's ``combine`` function, by default the convex
combination ``w*x + (1-w)*y``; the last stage's output is the fused score. The member views,
the weight names (in stage order), the report's title and the weight symbols all come from
the table, and :func:`fuse`, :func:`select_weights`, :data:`FUSIONS` and
:func:`fusion_titles` derive from it, so a new rule is one :func:`register_fusion` call. The
built-in rules:

* ``left+right``:           ``s1 = a*s_left + (1-a)*s_right``      (eq. 8, weight ``alpha``)
* ``mid+side``:             ``s2 = b*s_mid + (1-b)*s_side``        (eq. 9, weight ``beta``)
* ``left+right+mid+side``:  eqs. 8 and 9, then ``s = g*s1 + (1-g)*s2`` (eq. 10, weight
  ``gamma``; the paper's and the report's lambda, kept as ``gamma`` in ``results.json`` and
  model files so that existing readers keep working)
* ``left+right+mid+side+<a1>+...+<am>`` (:func:`extended_rule`; built in for ``spatial``,
  ``steered``, ``spatial+steered`` and ``prosody``, the openSMILE functionals of
  ``experiment --prosody``): eqs. 8-10, then the mean of the added views' scores
  ``s_A = (s_a1 + ... + s_am) / m`` (M19; fixed-weight stages, nothing searched) and
  ``s_+ = e*s + (1-e)*s_A`` (M20, weight ``eta``): how the fusion grows beyond the four views,
  one definition for any added views (docs/METHOD.md section 8).

A stage with a ``fixed`` weight (the mean of M19) is never searched and has no entry in the
weights; every rule's last stage has a searched weight.

Weights take values on :data:`GRID` (0.0, 0.1, ..., 1.0). The criterion is UA (unweighted
average recall of the arg-max class over the classes present in ``y``). Ties (UA within 1e-12
of the best among the candidates searched) are broken deterministically: first prefer the
weights closest to equal weighting, measured as the sum over the searched weights of
``|w - 0.5|`` in grid steps; then the lexicographically smallest tuple of the searched weights,
in the rule's weight order (``(alpha, beta, gamma)``). The arg-max over classes breaks its own
ties towards the first class in ``classes``.

A rule with one stage (``left+right``: ``alpha``; ``mid+side``: ``beta``) searches its one
weight over the 11 grid values. A rule with several stages (``left+right+mid+side``) has two
searches (:data:`SEARCHES`):

* ``staged`` (default; the paper's two stages): each stage's weight is chosen in stage order
  on the UA of that stage's output alone, the earlier weights fixed: ``alpha`` is the
  ``left+right`` choice on its own (UA of eq. 8 alone), ``beta`` is the ``mid+side`` choice on
  its own (eq. 9 alone), then ``gamma`` is searched over the 11 grid values with ``alpha`` and
  ``beta`` fixed (UA of eq. 10; ties by the rule above applied to ``gamma`` alone). 3 x 11
  candidates.
* ``joint``: all 11^3 ``(alpha, beta, gamma)`` searched together on the UA of eq. 10; ties by
  the rule above over all three weights.

Either way the reported UA is the UA of the last stage at the chosen weights. ``joint``
reaches at least the staged UA on the data it searches, but may pick a different
``(alpha, beta)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from .errors import ConfigError
from .validation import check_choice

GRID = tuple(round(0.1 * i, 1) for i in range(11))
SEARCHES = ("staged", "joint")

# combine(w, first, second) -> the stage's output; arrays broadcast (grid axes lead)
Combine = Callable[[float, np.ndarray, np.ndarray], np.ndarray]


def convex(w: float, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``w*first + (1-w)*second``: eqs. 8, 9 and 10."""
    return w * first + (1 - w) * second


@dataclass(frozen=True)
class Stage:
    """One stage of a fusion rule: ``output = combine(weight, first, second)``.

    ``first``/``second``: a view name or the ``output`` of an earlier stage. ``weight``: the
    weight's key in ``weights`` dicts, ``results.json`` and model files; ``symbol``: how the
    report shows it; ``label``: its name in plain-text output (default: ``weight``).
    ``fixed``: a weight in [0, 1] that is not searched (the stage's ``weight`` name is then
    only a label and never appears in weights dicts).
    """
    output: str
    weight: str
    first: str
    second: str
    symbol: str = ""
    label: str = ""
    fixed: float | None = None


@dataclass(frozen=True)
class FusionRule:
    """A score-level fusion rule: ``name`` (as in run names ``score-fusion/<name>``),
    ``title`` (the report's row title), ``stages`` (in evaluation order; the last one's output
    is the fused score) and ``combine`` (see :class:`Stage`)."""
    name: str
    title: str
    stages: tuple[Stage, ...]
    combine: Combine = convex

    @property
    def views(self) -> tuple[str, ...]:
        """The member views, in the order the stages first use them."""
        outputs = {st.output for st in self.stages}
        seen: list[str] = []
        for st in self.stages:
            seen += [op for op in (st.first, st.second) if op not in outputs and op not in seen]
        return tuple(seen)

    @property
    def weights(self) -> tuple[str, ...]:
        """The searched weight names, in stage order (the tie-break order); fixed-weight
        stages have none."""
        return tuple(st.weight for st in self.stages if st.fixed is None)

    def check(self) -> None:
        """ConfigError unless every operand is a view or an earlier output, output and
        searched weight names are unique, fixed weights lie in [0, 1], the last stage's weight
        is searched and every stage but the last feeds exactly one later stage."""
        outputs: list[str] = []
        searched: list[str] = []
        for st in self.stages:
            if st.output in outputs or (st.fixed is None and st.weight in searched):
                raise ConfigError(f"fusion rule {self.name}: stage {st.output} reuses a name")
            if st.fixed is not None and not 0.0 <= st.fixed <= 1.0:
                raise ConfigError(f"fusion rule {self.name}: fixed weight {st.fixed} of "
                                  f"{st.output} is not in [0, 1]")
            outputs.append(st.output)
            if st.fixed is None:
                searched.append(st.weight)
        if self.stages and self.stages[-1].fixed is not None:
            raise ConfigError(f"fusion rule {self.name}: the last stage needs a searched weight")
        used = [op for st in self.stages for op in (st.first, st.second)]
        if not self.stages or any(used.count(o) != 1 for o in outputs[:-1]):
            raise ConfigError(f"fusion rule {self.name}: every stage but the last must feed "
                              "exactly one later stage")
        for i, st in enumerate(self.stages):
            late = [op for op in (st.first, st.second) if op in outputs[i:]]
            if late:
                raise ConfigError(f"fusion rule {self.name}: {st.output} uses {late[0]} before "
                                  "it is computed")


FUSION_RULES: dict[str, FusionRule] = {}
FUSIONS: dict[str, tuple[str, ...]] = {}   # rule name -> member views (derived, kept in step)


def register_fusion(rule: FusionRule) -> FusionRule:
    """Add ``rule`` to :data:`FUSION_RULES` (and :data:`FUSIONS`); ConfigError if the name
    is taken or the rule is malformed (:meth:`FusionRule.check`)."""
    if rule.name in FUSION_RULES:
        raise ConfigError(f"fusion rule {rule.name!r} already exists")
    rule.check()
    FUSION_RULES[rule.name] = rule
    FUSIONS[rule.name] = rule.views
    return rule


def unregister_fusion(name: str) -> None:
    """Remove a rule added by :func:`register_fusion` (tests, plug-ins)."""
    FUSION_RULES.pop(name, None)
    FUSIONS.pop(name, None)


def fusion_titles() -> dict[str, str]:
    """Rule name -> the report's row title, in table order."""
    return {name: rule.title for name, rule in FUSION_RULES.items()}


def weight_symbols() -> dict[str, str]:
    """Weight name -> the symbol the report shows (``gamma`` -> ``λ``)."""
    return {st.weight: st.symbol or st.weight for rule in FUSION_RULES.values()
            for st in rule.stages if st.fixed is None}


def describe_weights(weights: Mapping[str, float]) -> str:
    """Plain-text weights with the docs' names: ``alpha=0.3, beta=0.5, lambda=0.4``."""
    labels = {st.weight: st.label or st.weight for rule in FUSION_RULES.values()
              for st in rule.stages if st.fixed is None}
    return ", ".join(f"{labels.get(k, k)}={v:g}" for k, v in weights.items()) or "none"


_ALPHA = Stage("s1", "alpha", "left", "right", "α")    # eq. 8
_BETA = Stage("s2", "beta", "mid", "side", "β")        # eq. 9
_GAMMA = Stage("s", "gamma", "s1", "s2", "λ", "lambda")   # eq. 10
FOUR_VIEWS = "left+right+mid+side"
register_fusion(FusionRule("left+right", "Left, Right", (_ALPHA,)))
register_fusion(FusionRule("mid+side", "Mid, Side", (_BETA,)))
register_fusion(FusionRule(FOUR_VIEWS, "Left, Right, Mid, Side", (_ALPHA, _BETA, _GAMMA)))


def extended_rule(added: Sequence[str]) -> FusionRule:
    """The four-view fusion grown by the views ``added`` (docs/METHOD.md eqs. M19-M20): the
    paper's stages (M14-M16, output ``s``), the running mean of the added views' scores in
    fixed-weight stages (``a_1 = s_{v1}``, ``a_j = ((j-1)/j) a_{j-1} + (1/j) s_{vj}``, so
    ``a_m`` is their mean), then ``s_+ = eta*s + (1-eta)*a_m`` (weight ``eta``, searched like
    the others). Name ``left+right+mid+side+<v1>+...+<vm>``; not registered (pass it to
    :func:`register_fusion`)."""
    added = tuple(added)
    if not added or len(set(added)) != len(added) or set(added) & set(FOUR_VIEWS.split("+")):
        raise ConfigError(f"extended fusion: the added views must be distinct and not among "
                          f"the four, got {list(added)}")
    stages = [_ALPHA, _BETA, _GAMMA]
    mean = added[0]
    for j, view in enumerate(added[1:], start=2):
        stages.append(Stage(f"a{j}", f"mean{j}", mean, view, fixed=(j - 1) / j))
        mean = f"a{j}"
    stages.append(Stage("s+", "eta", "s", mean, "η", "eta"))
    title = ", ".join(["Left, Right, Mid, Side"] + [v.capitalize() for v in added])
    return FusionRule("+".join((FOUR_VIEWS,) + added), title, tuple(stages))


for _added in (("spatial",), ("steered",), ("spatial", "steered")):
    register_fusion(extended_rule(_added))
PROSODY = "prosody"   # the prosody view (openSMILE functionals) as the fusion's last stage
PROSODY_FUSION = register_fusion(extended_rule((PROSODY,))).name
_UA_TIE_TOL = 1e-12
_CHUNK_VALUES = 4_000_000  # fused score values held at once during the grid search


def two_stage_fusion(s_left: np.ndarray, s_right: np.ndarray, s_mid: np.ndarray,
                     s_side: np.ndarray, a: float, b: float, g: float) -> np.ndarray:
    """Eqs. 8-10 on ``(N, K)`` score arrays; returns ``g*s1 + (1-g)*s2`` as ``(N, K)``
    (``fuse(scores, "left+right+mid+side", {"alpha": a, "beta": b, "gamma": g})``)."""
    s1 = a * np.asarray(s_left) + (1 - a) * np.asarray(s_right)
    s2 = b * np.asarray(s_mid) + (1 - b) * np.asarray(s_side)
    return g * s1 + (1 - g) * s2


def _rule(fusion_name: str) -> FusionRule:
    return FUSION_RULES[check_choice(fusion_name, FUSION_RULES, "fusion")]


def _check_fusion(fusion_name: str, scores: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """The views of ``fusion_name``; raise ConfigError if unknown or if scores lack a view."""
    views = _rule(fusion_name).views
    missing = [v for v in views if v not in scores]
    if missing:
        raise ConfigError(f"fusion {fusion_name} needs scores for view(s) {', '.join(missing)}")
    shapes = {np.shape(scores[v]) for v in views}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ConfigError(f"fusion {fusion_name}: view scores must be (N, K) arrays of one shape, "
                          f"got {sorted(shapes)}")
    return views


def _as_float64(scores: Mapping[str, np.ndarray], views: Sequence[str]) -> dict[str, np.ndarray]:
    return {v: np.asarray(scores[v], dtype=np.float64) for v in views}


def fuse(scores: Mapping[str, np.ndarray], fusion_name: str,
         weights: Mapping[str, float]) -> np.ndarray:
    """Fuse per-view ``(N, K)`` scores with ``weights`` (keys as in :func:`select_weights`):
    the rule's stages in order, in float64 -> ``(N, K)``."""
    views = _check_fusion(fusion_name, scores)
    rule = FUSION_RULES[fusion_name]
    missing = [w for w in rule.weights if w not in weights]
    if missing:
        raise ConfigError(f"fusion {fusion_name} needs weight(s) {', '.join(missing)}")
    s = _as_float64(scores, views)
    for st in rule.stages:
        w = st.fixed if st.fixed is not None else weights[st.weight]
        s[st.output] = rule.combine(w, s[st.first], s[st.second])
    return s[rule.stages[-1].output]


def _label_codes(y: Sequence, classes: Sequence) -> np.ndarray:
    """Column index of each label in ``classes``; ConfigError for unknown labels."""
    index = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([index[v] for v in y], dtype=np.int64)
    except KeyError as err:
        raise ConfigError(f"label {err.args[0]!r} is not one of the classes {list(classes)}") from None


def _ua_of_predictions(pred: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """UA of each row of ``pred`` ``(M, N)`` class indices against true ``codes`` ``(N,)``."""
    recalls = [(pred[:, codes == c] == c).mean(axis=1) for c in np.unique(codes)]
    return np.mean(recalls, axis=0)


def _pair_candidates(rule: FusionRule, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``combine(w, first, second)`` for every ``w`` in GRID -> ``(11, N, K)``."""
    return np.stack([rule.combine(w, first, second) for w in GRID])


def _operand_grid(rule: FusionRule, s: Mapping[str, np.ndarray], name: str
                  ) -> tuple[np.ndarray, tuple[str, ...]]:
    """A view's scores ``((N, K), ())``, or an earlier stage's output at every grid point
    of the weights it depends on: ``((11,)*len(deps) + (N, K), deps)``."""
    for index, st in enumerate(rule.stages):
        if st.output == name:
            (x, dx), (y, dy) = (_operand_grid(rule, s, st.first),
                                _operand_grid(rule, s, st.second))
            x = x.reshape(x.shape[:-2] + (1,) * len(dy) + x.shape[-2:])
            y = y.reshape((1,) * len(dx) + y.shape)
            if st.fixed is not None:            # not searched: no grid axis of its own
                return rule.combine(st.fixed, x, y), dx + dy
            out = np.stack([rule.combine(w, x, y) for w in GRID], axis=len(dx) + len(dy))
            return out, dx + dy + (st.weight,)
    return s[name], ()


def _grid_ua(scores: Mapping[str, np.ndarray], fusion_name: str, codes: np.ndarray) -> np.ndarray:
    """UA at every grid point of the rule's weights: one axis of 11 per weight, in the rule's
    weight order (``(11,)`` for pairs, ``(11, 11, 11)`` as [alpha, beta, gamma]).

    The last stage's operands are computed at every grid point of their own weights; the
    last stage itself is evaluated in chunks of at most ``_CHUNK_VALUES`` fused values."""
    rule = FUSION_RULES[fusion_name]
    s = _as_float64(scores, rule.views)
    last = rule.stages[-1]
    (x, dx), (y, dy) = _operand_grid(rule, s, last.first), _operand_grid(rule, s, last.second)
    n, k = x.shape[-2:]
    x, y = x.reshape(-1, n, k), y.reshape(-1, n, k)
    rows = max(1, _CHUNK_VALUES // (len(y) * n * k))   # first-operand grid points per chunk
    ua = np.empty((len(x), len(y), len(GRID)))
    for gi, g in enumerate(GRID):
        for start in range(0, len(x), rows):
            fused = rule.combine(g, x[start:start + rows, None], y[None])   # (r, ny, N, K)
            pred = fused.argmax(-1).reshape(-1, n)
            ua[start:start + rows, :, gi] = _ua_of_predictions(pred, codes).reshape(-1, len(y))
    names = dx + dy + (last.weight,)
    ua = ua.reshape((len(GRID),) * len(names))
    return ua.transpose([names.index(w) for w in rule.weights])


def _tie_break(ua: np.ndarray) -> tuple[int, ...]:
    """Grid indices of the best entry of ``ua`` (one axis per searched weight), with the
    module's tie-breaking rule."""
    ties = np.argwhere(ua >= ua.max() - _UA_TIE_TOL)              # grid indices, (m, n_w)
    key = [(int(np.abs(t - 5).sum()), tuple(int(i) for i in t)) for t in ties]
    return tuple(int(i) for i in ties[min(range(len(ties)), key=key.__getitem__)])


def _staged_search(scores: Mapping[str, np.ndarray], fusion_name: str, codes: np.ndarray
                   ) -> tuple[tuple[int, ...], float]:
    """Grid indices of the staged search (one per weight, in the rule's order) and the UA
    the last stage reaches: each stage's weight chosen on the UA of its output alone, the
    earlier stages fixed at their choices."""
    rule = FUSION_RULES[fusion_name]
    s = _as_float64(scores, rule.views)
    chosen: dict[str, int] = {}
    ua = np.empty(0)
    for st in rule.stages:
        if st.fixed is not None:
            s[st.output] = rule.combine(st.fixed, s[st.first], s[st.second])
            continue
        ua = _ua_of_predictions(_pair_candidates(rule, s[st.first], s[st.second]).argmax(-1),
                                codes)
        (chosen[st.weight],) = _tie_break(ua)
        s[st.output] = rule.combine(GRID[chosen[st.weight]], s[st.first], s[st.second])
    return tuple(chosen[w] for w in rule.weights), float(ua[chosen[rule.stages[-1].weight]])


def select_weights(scores: Mapping[str, np.ndarray], y: Sequence, fusion_name: str,
                   classes: Sequence, search: str = "staged") -> tuple[dict[str, float], float]:
    """Grid search of the fusion weights maximising UA on ``(scores, y)``.

    ``scores``: view -> ``(N, K)`` with columns in ``classes`` order; ``y``: ``N`` labels.
    ``search``: ``"staged"`` or ``"joint"`` (:data:`SEARCHES`; they differ only for the four
    views). Returns ``(weights, ua)``; ``weights`` has the rule's weight names
    (:attr:`FusionRule.weights`: ``alpha`` for left+right, ``beta`` for mid+side, all of
    ``alpha, beta, gamma`` for the four views); ``ua`` is the UA at those weights. Searches
    and ties: see the module docstring.
    """
    check_choice(search, SEARCHES, "weight search")
    _check_fusion(fusion_name, scores)
    codes = _label_codes(y, classes)
    if len(codes) == 0:
        raise ConfigError("select_weights: no utterances to choose the weights on")
    if np.shape(scores[FUSIONS[fusion_name][0]]) != (len(codes), len(classes)):
        raise ConfigError(f"scores of shape {np.shape(scores[FUSIONS[fusion_name][0]])} do not "
                          f"match {len(codes)} labels and {len(classes)} classes")
    names = FUSION_RULES[fusion_name].weights
    if search == "staged" and len(names) > 1:
        chosen, best = _staged_search(scores, fusion_name, codes)
    else:
        ua = _grid_ua(scores, fusion_name, codes)
        chosen = _tie_break(ua)
        best = float(ua[chosen])
    return {name: GRID[i] for name, i in zip(names, chosen)}, best
