"""The source tree's shape: imports run one way and no module imports itself in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"fit3d_hub": 0, "scenes": 1, "training": 2, "eval": 2}
DEMO = "training.demo"
"""The demo sits above training and eval: it runs both."""
# `fit3d-hub demo` is the package's one door into the source checkout (fit3d_hub.checkout
# finds it first); nothing else in the package reaches up.
ALLOWED_UPWARD = {("fit3d_hub.cli", "training.demo")}


def _modules() -> dict[str, Path]:
    out = {}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in ``path`` (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_imports_run_one_way_package_scenes_training_eval():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        if name == DEMO:
            continue
        layer = LAYERS[name.split(".")[0]]
        for target in _imports(path, modules):
            top = target.split(".")[0]
            upward = target == DEMO or LAYERS[top] > layer \
                or (LAYERS[top] == layer and top != name.split(".")[0])
            if upward and (name, target) not in ALLOWED_UPWARD:
                wrong.append(f"{name} -> {target}")
    assert not wrong, wrong


def test_no_import_cycles():
    modules = _modules()
    graph = {name: {t for t in _imports(path, modules) if t != name}
             for name, path in modules.items()}
    # a package's __init__ is not an edge back into its own modules
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles
