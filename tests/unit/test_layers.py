"""Imports point one way: infra -> jobs -> pipeline -> sinks -> schemas (docs/ARCHITECTURE.md, Layers).

A module may import its own layer and lower ones, never a higher one, and no two modules import
each other, directly or around a longer loop. Read from the source with ast, so an import inside a
function counts the same as one at the top: both tie the layers together.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("infra", "jobs", "pipeline", "sinks", "schemas")

# Longest prefix wins. The `callpipe` dispatcher and the benchmarks are tools over the whole
# project, on the top layer beside infra: they import jobs and the worker to measure them.
LAYERS = {
    "infra": 4,
    "pipeline.cli": 4,
    "pipeline.bench": 4,
    "jobs": 3,
    "pipeline": 2,
    "sinks": 1,
    "schemas": 0,
}


def layer(module: str) -> int:
    best = ""
    for prefix in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return LAYERS[best]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The project modules `module` imports (a package import counts as its __init__)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod when there is one.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {m: imports(p, m, known) for m, p in modules.items()}


def test_imports_point_down_the_layers() -> None:
    upward = sorted(
        f"{m} (layer {layer(m)}) imports {dep} (layer {layer(dep)})"
        for m, deps in graph().items()
        for dep in deps
        if layer(dep) > layer(m)
    )
    assert upward == []


def test_no_import_cycles() -> None:
    edges = graph()
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            # A package's __init__ and its own modules are one unit of import, not a cycle.
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    """The two rules above are only worth something if the reader finds what they forbid."""
    known = {"sinks.lake", "pipeline.settings", "pipeline.policy", "pipeline.policy_check"}
    lake = tmp_path / "lake.py"
    lake.write_text("def f():\n    from pipeline.settings import Settings\n")
    assert imports(lake, "sinks.lake", known) == {"pipeline.settings"}
    assert layer("pipeline.settings") > layer("sinks.lake")
    policy = tmp_path / "policy.py"
    policy.write_text("from . import policy_check\nfrom .policy_check import x\n")
    assert imports(policy, "pipeline.policy", known) == {"pipeline.policy_check"}
    assert layer("pipeline.bench.stream") > layer("jobs.erase") > layer("pipeline.validate")
