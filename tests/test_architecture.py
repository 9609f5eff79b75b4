"""The package's shape, held by a test so it stays held.

- The import graph among ``vlmfast`` modules, counting imports inside functions and
  ``TYPE_CHECKING`` blocks, has no cycle.
- The library never imports a front door (``cli``, ``pipeline``, ``demo``, ``report``).
- No module imports another package's private (``_``) names.
- No Python module over 400 lines, no function body over 60 lines (docstring excluded);
  no Rust file over 500 lines, no Rust function over 80.

Run ``python tests/test_architecture.py`` for the full list of offenders.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "vlmfast"
RUST_SRC = ROOT / "rust_core" / "src"

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_RUST_FILE_LINES = 500
MAX_RUST_FUNCTION_LINES = 80

FRONT_DOORS = ("vlmfast.cli", "vlmfast.pipeline", "vlmfast.demo", "vlmfast.report")
# The kernels' copy inside the package is generated (kernels/ is the source).
SKIPPED_DIRS = ("_kernels",)


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]


def iter_modules() -> Iterator[Module]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        if any(part in SKIPPED_DIRS for part in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        yield Module(".".join(parts), path, is_package)


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.package.split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: Module, known: set[str]) -> set[str]:
    """Every vlmfast module that ``module`` imports, anywhere in its body."""
    tree = ast.parse(module.path.read_text(), str(module.path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vlmfast"):
                    found.add(_nearest_known(alias.name, known))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if not target.startswith("vlmfast"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else _nearest_known(target, known))
    found.discard(module.name)
    return {name for name in found if name}


def _nearest_known(name: str, known: set[str]) -> str:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def import_graph() -> dict[str, set[str]]:
    modules = list(iter_modules())
    known = {m.name for m in modules}
    return {m.name: imports_of(m, known) for m in modules}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _is_front_door(name: str) -> bool:
    return any(name == door or name.startswith(door + ".") for door in FRONT_DOORS)


def library_to_front_door_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        if _is_front_door(module) or module == "vlmfast" or module == "vlmfast.__main__":
            continue
        bad += [f"{module} -> {t}" for t in sorted(targets) if _is_front_door(t)]
    return bad


def private_imports_across_packages() -> list[str]:
    """``from a.b import _x`` or ``import a._b`` where a.b is not the importer's own package."""
    modules = list(iter_modules())
    known = {m.name for m in modules}
    bad = []
    for module in modules:
        tree = ast.parse(module.path.read_text(), str(module.path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _resolve(module, node)
            if not target.startswith("vlmfast"):
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                owner = full.rpartition(".")[0] if full in known else target
                if not owner.startswith(module.package) and _private_part(full, known):
                    bad.append(f"{module.name}: from {target} import {alias.name}")
    return sorted(set(bad))


# The compiled Rust extension and the shipped copy of kernels/ are the package's own
# base layers (like ``tokenizers.tokenizers``): private by name, imported by design.
COMPILED_LAYERS = ("vlmfast._native", "vlmfast._kernels")


def _private_part(full: str, known: set[str]) -> bool:
    """True when the last name, or a module on the way, is private (``_x``, not dunder)."""
    if any(full == layer or full.startswith(layer + ".") for layer in COMPILED_LAYERS):
        return False
    parts = full.split(".")
    return any(part.startswith("_") and not part.startswith("__") for part in parts[1:])


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    if not body:
        return 0
    start = body[0].lineno
    end = max(getattr(n, "end_lineno", n.lineno) or n.lineno for n in body)
    return end - start + 1


def long_python_modules() -> list[str]:
    out = []
    for module in iter_modules():
        n = len(module.path.read_text().splitlines())
        if n > MAX_MODULE_LINES:
            out.append(f"{module.path.relative_to(ROOT)}: {n} lines")
    return out


def long_python_functions() -> list[str]:
    out = []
    for module in iter_modules():
        tree = ast.parse(module.path.read_text(), str(module.path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = _body_lines(node)
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{module.path.relative_to(ROOT)}:{node.lineno} {node.name}: {n}")
    return out


_RUST_FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+|unsafe\s+|async\s+)*fn\s+(\w+)")


def rust_files() -> list[Path]:
    return sorted(RUST_SRC.rglob("*.rs")) if RUST_SRC.exists() else []


def long_rust_files() -> list[str]:
    out = []
    for path in rust_files():
        n = len(path.read_text().splitlines())
        if n > MAX_RUST_FILE_LINES:
            out.append(f"{path.relative_to(ROOT)}: {n} lines")
    return out


def long_rust_functions() -> list[str]:
    """Function bodies by brace matching (strings and comments are rare enough in bodies)."""
    out = []
    for path in rust_files():
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            match = _RUST_FN.match(lines[i])
            if not match:
                i += 1
                continue
            depth, started, j = 0, False, i
            while j < len(lines):
                code = lines[j].split("//", 1)[0]
                if not started and ";" in code and "{" not in code:
                    break  # a declaration (trait method without a body)
                depth += code.count("{") - code.count("}")
                started = started or "{" in code
                if started and depth <= 0:
                    break
                j += 1
            n = j - i - 1
            if started and n > MAX_RUST_FUNCTION_LINES:
                out.append(f"{path.relative_to(ROOT)}:{i + 1} {match.group(4)}: {n}")
            i = j + 1 if started else i + 1
    return out


def test_import_graph_has_no_cycle() -> None:
    assert find_cycles(import_graph()) == []


def test_library_imports_no_front_door() -> None:
    assert library_to_front_door_imports(import_graph()) == []


def test_no_private_import_across_packages() -> None:
    assert private_imports_across_packages() == []


def test_python_size_limits() -> None:
    assert long_python_modules() == []
    assert long_python_functions() == []


def test_rust_size_limits() -> None:
    assert long_rust_files() == []
    assert long_rust_functions() == []


def test_the_checker_sees_a_cycle_and_a_long_function(tmp_path: Path) -> None:
    """The checks can fail: a planted cycle and a planted long body are found."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    src = "def f():\n    '''doc'''\n" + "    x = 1\n" * (MAX_FUNCTION_LINES + 1)
    node = ast.parse(src).body[0]
    assert isinstance(node, ast.FunctionDef)
    assert _body_lines(node) == MAX_FUNCTION_LINES + 1


def main() -> int:
    graph = import_graph()
    sections = {
        "cycles": [" -> ".join(c) for c in find_cycles(graph)],
        "library -> front door": library_to_front_door_imports(graph),
        "private imports across packages": private_imports_across_packages(),
        "python modules > 400": long_python_modules(),
        "python functions > 60": long_python_functions(),
        "rust files > 500": long_rust_files(),
        "rust functions > 80": long_rust_functions(),
    }
    for title, items in sections.items():
        print(f"## {title}: {len(items)}")
        for item in items:
            print("  ", item)
    return 1 if any(sections.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
