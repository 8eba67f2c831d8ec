"""docs/DESIGN.md stays true: every public name its module table lists in backticks exists;
docs/METHOD.md is what the source cites (no citation of a document users do not have)."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import binser

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "DESIGN.md"
CALL = re.compile(r"^([A-Za-z_][\w.]*)\(")                  # `name(...)`, `Class.method(...)`
CAPITAL = re.compile(r"^([A-Z][A-Za-z0-9_]*(?:\.[A-Za-z_]\w*)*)(?:\s*=.*|\s*:.*)?$")
FILE_SUFFIXES = (".py", ".md", ".json", ".csv", ".png", ".npy", ".html", ".safetensors", ".pt")
# Backticked names in the API column that are not binser's (references to other libraries).
ALLOW = {"power_to_db", "librosa.feature.delta", "SeedSequence", "warnings.warn"}
PARAM = re.compile(r"^\s*\*{0,2}([A-Za-z_]\w*)\s*(?:=|:|$)")


def _cells(line: str) -> list[str]:
    """A Markdown table row's cells; ``|`` inside backticks or escaped is not a border."""
    cells, current, code, prev = [], "", False, ""
    for ch in line.strip():
        if ch == "|" and not code and prev != "\\":
            cells.append(current.strip())
            current = ""
        else:
            code ^= ch == "`"
            current += ch
        prev = ch
    return cells[1:]


def _rows() -> list[tuple[str, list[str], str]]:
    """(step, module cells, API cell) of every row of the module table."""
    rows = []
    for line in DESIGN.read_text().splitlines():
        cells = _cells(line)
        if len(cells) == 3 and cells[1].startswith("`"):
            rows.append((cells[0], re.findall(r"`([^`]+)`", cells[1]), cells[2]))
    return rows


def _modules(cells: list[str]) -> list[object]:
    """The binser modules a row's module cell names (a package: with its submodules)."""
    out = []
    for cell in cells:
        name = cell.removesuffix(".py").rstrip("/").replace("/", ".")
        module = importlib.import_module(f"binser.{name}")
        out.append(module)
        if hasattr(module, "__path__"):
            out += [importlib.import_module(f"binser.{name}.{m.name}")
                    for m in pkgutil.iter_modules(module.__path__)]
    return out


def _all_modules() -> list[object]:
    """binser and its modules (so `features.name` in any row resolves)."""
    return [binser] + [importlib.import_module(f"binser.{m.name}")
            for m in pkgutil.iter_modules(binser.__path__) if m.name != "__main__"]


def _api_names(cell: str) -> list[str]:
    """The names a row's API cell claims: calls and capitalised names (classes, constants)
    in backticks; attribute-only spans (`.name`), options, values and files are prose."""
    names = []
    for span in re.findall(r"`([^`]+)`", cell):
        span = span.strip()
        if span.endswith(FILE_SUFFIXES):
            continue
        match = CALL.match(span) or CAPITAL.match(span)
        if match and match.group(1) not in ALLOW:
            names.append(match.group(1))
    return names


def _listed_parameters(span: str) -> list[str]:
    """Parameter names written in a call span ``f(a, b=1, c: int)``; pieces that are prose
    (``path or audio``, ``...``) are skipped."""
    depth, start, pieces = 0, span.index("(") + 1, []
    for i, ch in enumerate(span[start:], start):
        depth += ch in "([{"
        if ch in ")]}":
            if depth == 0:
                pieces.append(span[start:i])
                break
            depth -= 1
        if ch == "," and depth == 0:
            pieces.append(span[start:i])
            start = i + 1
    return [m.group(1) for p in pieces if (m := PARAM.match(p))]


def _call_spans(cell: str) -> list[tuple[str, str]]:
    return [(m.group(1), span) for span in re.findall(r"`([^`]+)`", cell)
            if (m := CALL.match(span.strip())) and m.group(1) not in ALLOW]


def _find(name: str, modules: list[object]) -> object | None:
    for module in modules:
        obj: object = module
        parts = name.split(".")
        if not hasattr(obj, parts[0]):
            try:   # a submodule named first: `stream.StreamEngine`
                obj = importlib.import_module(f"{module.__name__}.{parts[0]}")
                parts = parts[1:]
            except ImportError:
                continue
        try:
            for part in parts:
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    return _method(name, modules)


def _method(name: str, modules: list[object]) -> object | None:
    """A bare method name (``fit`` in the classifier's row): an attribute of a class
    defined in one of ``modules``."""
    if "." in name:
        return None
    for module in modules:
        for cls in vars(module).values():
            if (inspect.isclass(cls) and cls.__module__ == module.__name__
                    and hasattr(cls, name)):
                return getattr(cls, name)
    return None


def _resolve(name: str, modules: list[object]) -> bool:
    return _find(name, modules) is not None


ROWS = _rows()


def test_the_table_is_parsed():
    modules = {m for _, cells, _ in ROWS for m in cells}
    assert len(ROWS) >= 25 and {"views.py", "fusion.py", "results.py", "runnames.py",
                                "validation.py", "baselines.py", "scan.py",
                                "inspection.py"} <= modules


@pytest.mark.parametrize("step, cells, cell", ROWS, ids=[r[0] for r in ROWS])
def test_every_listed_name_exists(step, cells, cell):
    own = _modules(cells)
    missing = [n for n in _api_names(cell) if not _resolve(n, own + _all_modules())]
    assert not missing, f"DESIGN.md row {step!r} lists names that do not exist: {missing}"


@pytest.mark.parametrize("step, cells, cell", ROWS, ids=[r[0] for r in ROWS])
def test_listed_parameters_exist(step, cells, cell):
    """``f(a, b=...)`` in the table: ``a`` and ``b`` are parameters of ``f`` (of ``__init__``
    for a class), unless ``f`` takes ``*args``/``**kwargs``."""
    wrong = []
    for name, span in _call_spans(cell):
        obj = _find(name, _modules(cells) + _all_modules())
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()):
            continue
        wrong += [f"{name}: {p}" for p in _listed_parameters(span) if p not in params]
    assert not wrong, f"DESIGN.md row {step!r}: no such parameter(s) {wrong}"


def test_no_source_file_cites_the_private_spec():
    cited = [str(p.relative_to(ROOT)) for folder in ("src", "tests", "docs", "bench")
             for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md")
             and re.search(r"\bSPEC\b", p.read_text(errors="replace"))]
    assert cited == []
