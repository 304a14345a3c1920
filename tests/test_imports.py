"""The packages' import structure: every import at the top of its module, and no import cycle.

Read from the source with ast (nothing is imported), so a cycle kept alive by an import inside a
function cannot hide: such imports are themselves reported.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dmm", "dmm_kernels")
# Imports allowed inside a function: optional dependencies whose absence must not break import
# (minari is imported through dmm.optional.import_optional, which says what to install).
OPTIONAL = {("dmm_kernels.backend", "dmm_kernels.triton.ops"),  # Triton: only when chosen
            # `dmm datasets make` alone needs the "datasets" extra (stable-baselines3, minari[create]).
            ("dmm.data.generate", "stable_baselines3"),
            ("dmm.data.generate", "stable_baselines3.common.callbacks"),
            ("dmm.data.generate", "minari"),
            # `dmm datasets install` needs minari only to make the Minari datasets (--no-minari).
            ("dmm.data.to_minari", "minari"), ("dmm.data.to_minari", "minari.data_collector")}


def module_files() -> dict[str, Path]:
    files = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


MODULES = module_files()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> list[tuple[str, int, bool]]:
    """(imported name, line, at top level) for every import statement of `module`."""
    tree = ast.parse(MODULES[module].read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.append((sub if sub in MODULES else target, node.lineno, id(node) in top))
    return found


def first_party(name: str) -> str | None:
    """The project module `name` refers to (its longest prefix that is one), else None."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in MODULES:
            return ".".join(parts[:n])
    return None


def graph() -> dict[str, set[str]]:
    return {m: {t for name, _, _ in imports_of(m) if (t := first_party(name)) and t != m}
            for m in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_at_top(module):
    inner = [(name, line) for name, line, at_top in imports_of(module)
             if not at_top and (module, name) not in OPTIONAL]
    assert not inner, f"{module}: imports inside functions or blocks: {inner}"


def test_no_import_cycle():
    assert find_cycle(graph()) is None, f"import cycle: {' -> '.join(find_cycle(graph()))}"


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_benchmarks_and_tools_import_as_packages():
    """benchmarks/ and tools/gpu/ are packages run as `python -m benchmarks.NAME`: each module
    imports by its package name (a bare sibling import such as `from csv_out import ...` fails)."""
    import importlib
    root = Path(__file__).resolve().parents[1]
    names = [f"benchmarks.{p.stem}" for p in sorted((root / "benchmarks").glob("*.py"))
             if p.stem != "__init__"]
    names += [f"tools.gpu.{p.stem}" for p in sorted((root / "tools" / "gpu").glob("*.py"))
              if p.stem != "__init__"]
    assert "benchmarks.policy_latency" in names
    for name in names:
        importlib.import_module(name)
