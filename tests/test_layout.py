"""The code layout the project holds itself to (docs/ARCHITECTURE.md, house style).

- every module under ``pgseg_core/`` is under 500 lines and every function in it under 80;
- no import cycle between the packages of ``pgseg_core`` (``models``, ``inference``, ``segment``, ...);
- no module imports another package's private (``_name``) symbol;
- ``pgseg_core`` never imports typer or rich (the CLI owns them);
- docs/ARCHITECTURE.md names every package and module of ``pgseg_core`` and nothing that does not exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "pgseg_core"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts)


def _dotted(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package_of(dotted: str) -> str:
    """``pgseg_core.inference.rules`` -> ``inference``; top-level modules are their own package."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module imported, names imported from it) for every import in ``path``, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _dotted(path).split(".")
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def test_modules_and_functions_are_small():
    too_long = []
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: module of {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in _modules():
        src = _package_of(_dotted(path))
        for module, _ in _imports(path):
            if module.startswith("pgseg_core.") or module == "pgseg_core":
                dst = _package_of(module)
                if dst and src and dst != src:
                    graph.setdefault(src, set()).add(dst)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_packages():
    cycle = _find_cycle(_package_graph())
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_private_names_imported_across_packages():
    bad = []
    for path in sorted(_modules()) + sorted((ROOT / "pgseg_cli").rglob("*.py")):
        src = _dotted(path)
        for module, names in _imports(path):
            if not module.startswith(("pgseg_core", "pgseg_cli")):
                continue
            same_package = src.split(".")[:2] == module.split(".")[:2]
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and not same_package:
                bad.append(f"{path.relative_to(ROOT)} imports {', '.join(private)} from {module}")
    assert not bad, "\n".join(bad)


def test_core_never_imports_the_cli_libraries():
    bad = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in _modules()
        for module, _ in _imports(path)
        if module.split(".")[0] in ("typer", "rich", "pgseg_cli")
    ]
    assert not bad, "\n".join(bad)


def _architecture_names() -> set[str]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = re.search(r"```\npgseg_core/\n(.*?)```", text, re.S)
    assert block, "docs/ARCHITECTURE.md has no ```pgseg_core/ ...``` tree block"
    names: set[str] = set()
    stack: list[tuple[int, str]] = []  # (indent, package path)
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:  # the next top-level tree (pgseg_cli/)
            break
        first = line.split()[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prefix = stack[-1][1] if stack else ""
        if first.endswith("/"):
            pkg = prefix + first
            names.add(pkg.rstrip("/"))
            stack.append((indent, pkg))
        else:
            for token in re.findall(r"\b[a-z_0-9]+\.py\b", line.strip().split("  ")[0]):
                if token != "__init__.py":  # a package's own module: the package line names it
                    names.add(prefix + token[:-3])
    return names


def test_architecture_doc_names_every_module_and_package():
    actual: set[str] = set()
    for path in _modules():
        rel = path.relative_to(CORE).with_suffix("")
        if rel.name != "__init__":
            actual.add(rel.as_posix())
        actual.update(p.as_posix() for p in rel.parents if p.as_posix() != ".")
    named = _architecture_names()
    missing = sorted(actual - named)
    stale = sorted(named - actual)
    assert not missing, f"docs/ARCHITECTURE.md does not name: {missing}"
    assert not stale, f"docs/ARCHITECTURE.md names what does not exist: {stale}"


@pytest.mark.parametrize("name", ["models", "inference", "segment", "eval", "data", "checkpoint"])
def test_the_layout_packages_exist(name):
    assert (CORE / name / "__init__.py").is_file()
