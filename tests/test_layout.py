"""The module map in docs/CONTRACTS.md and the layout section of docs/development.md match the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "onfh_seg"


def _modules() -> dict[str, Path]:
    """Dotted names (relative to onfh_seg) of every module; packages' __init__ files left out."""
    return {".".join(p.relative_to(PKG).with_suffix("").parts): p
            for p in PKG.rglob("*.py") if p.name != "__init__.py"}


def _module_rows() -> dict[str, int]:
    text = (ROOT / "docs" / "CONTRACTS.md").read_text(encoding="utf-8")
    rows: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"\| (\d) [^|]*\| ([^|]*) \|", line)
        if not m:
            continue
        for name in re.findall(r"`([a-z_][a-z_.]*)`", m.group(2)):
            assert name not in rows, f"{name} is in two rows of the module map"
            rows[name] = int(m.group(1))
    return rows


def _imports(path: Path) -> set[str]:
    """onfh_seg modules a file imports (``from onfh_seg import x`` counts as ``x`` when x is a module)."""
    mods = _modules()
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("onfh_seg"):
            base = node.module[len("onfh_seg"):].lstrip(".")
            for alias in node.names:
                name = f"{base}.{alias.name}".lstrip(".")
                if name in mods:
                    out.add(name)
                elif base in mods:
                    out.add(base)
                elif base:  # a package: its members are the modules imported below
                    out.update(m for m in mods if m.startswith(base + "."))
        elif isinstance(node, ast.Import):
            out.update(a.name[len("onfh_seg."):] for a in node.names if a.name.startswith("onfh_seg.")
                       and a.name[len("onfh_seg."):] in mods)
    return out


def test_every_module_is_in_the_module_map_once() -> None:
    rows = _module_rows()
    assert sorted(set(_modules()) - set(rows)) == []
    assert sorted(set(rows) - set(_modules())) == []


def test_imports_go_downwards_only() -> None:
    rows = _module_rows()
    upward = [f"{m} (row {rows[m]}) imports {t} (row {rows[t]})"
              for m, p in sorted(_modules().items()) for t in sorted(_imports(p)) if rows[t] > rows[m]]
    assert upward == []


def test_layout_names_every_module_and_script() -> None:
    text = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    layout = text[text.index("## Layout"):]
    missing = [m for m in _modules() if m.split(".")[-1] not in layout]
    missing += [p.name for p in sorted((ROOT / "scripts").iterdir()) if p.name not in layout]
    missing += [p.name for p in sorted((ROOT / "configs").iterdir()) if p.stem not in layout]
    assert missing == []


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def test_no_import_circles() -> None:
    """The real import graph (function-level imports included) has no circle between onfh_seg modules."""
    graph = {m: _imports(p) - {m} for m, p in _modules().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                circles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert circles == []


def test_modules_and_functions_are_small() -> None:
    """No module over 400 lines, no function over 80 (docs/development.md, house rules)."""
    big_modules = [f"{m}: {n}" for m, p in sorted(_modules().items())
                   if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    long_functions = []
    for m, p in sorted(_modules().items()):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{m}.{node.name}: {n}")
    assert big_modules == [] and long_functions == []


def _function_imports(tree: ast.AST) -> list[ast.stmt]:
    """Import statements inside functions."""
    return [node for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_function_level_imports_say_why() -> None:
    """An import inside a function (or its group of imports) has a ``function-level import: why`` comment."""
    silent = []
    for m, p in sorted(_modules().items()):
        text = p.read_text(encoding="utf-8")
        lines = text.splitlines()
        found = _function_imports(ast.parse(text))
        import_lines = {i for node in found for i in range(node.lineno - 1, node.end_lineno)}
        for node in found:
            i = node.lineno - 1
            while i >= 0 and "function-level import" not in lines[i] and (
                    i in import_lines or not lines[i].strip() or lines[i].strip().startswith("#")):
                i -= 1
            if i < 0 or "function-level import" not in lines[i]:
                silent.append(f"{m}:{node.lineno}")
    assert silent == []


def _judged_cohorts(script: str) -> set[str]:
    """The cache/ cohorts a judging script reads: literal cache/<name> paths and the names its loops run over."""
    names = set(re.findall(r"cache/([a-z][a-z0-9_]*)/manifest", script))
    for loop in re.findall(r"for c in ([a-z0-9_ ]+);", script) + re.findall(r"SLABS=\(([a-z0-9_ ]+)\)", script):
        names.update(loop.split())
    return names


def test_dev_cohort_script_makes_every_cohort_the_milestone_judge_reads() -> None:
    """A fresh machine gets every development cohort scripts/judge_milestone.sh reads from one script."""
    judged = _judged_cohorts((ROOT / "scripts" / "judge_milestone.sh").read_text(encoding="utf-8"))
    made = set()
    for name in ("make_dev_cohorts.sh", "make_accept_like.sh"):
        made.update(re.findall(r"^make_one ([a-z0-9_]+)", (ROOT / "scripts" / name).read_text(encoding="utf-8"), re.M))
    assert {"accept_fs", "rt40", "f3", "dev_c8", "dev_c9", "slab_edge2"} <= judged
    assert sorted(judged - made) == []
    assert "make_accept_like.sh" in (ROOT / "scripts" / "make_dev_cohorts.sh").read_text(encoding="utf-8")
