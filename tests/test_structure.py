"""The source tree's shape: imports run one way, no method imports another, no module imports
itself in a circle, and the package reaches the checkout only through the methods registry."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

from fit3d_hub.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"fit3d_hub": 0, "scenes": 1, "training": 2, "eval": 2, "demo": 3}
SHARED = "training.common"
"""The parts every method's training uses; a method folder imports it and nothing of another
method."""


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


def _method_of(module: str) -> str | None:
    """``training.<method>`` for a module of a method's folder (None for shared parts)."""
    parts = module.split(".")
    if parts[0] != "training" or len(parts) < 2 or f"training.{parts[1]}" == SHARED:
        return None
    return parts[1] if parts[1] != "__main__" else None


def test_imports_run_one_way_package_scenes_training_eval_demo():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        layer = LAYERS[name.split(".")[0]]
        for target in _imports(path, modules):
            top = target.split(".")[0]
            upward = LAYERS[top] > layer or (LAYERS[top] == layer
                                              and top != name.split(".")[0])
            if upward:
                wrong.append(f"{name} -> {target}")
    assert not wrong, wrong


def test_no_method_imports_another():
    modules = _modules()
    wrong = [f"{name} -> {target}" for name, path in modules.items()
             for target in _imports(path, modules)
             if _method_of(name) and _method_of(target)
             and _method_of(name) != _method_of(target)]
    assert not wrong, wrong


def test_the_registry_names_existing_code_in_the_right_places():
    """fit3d_hub reaches training/ and demo/ only by the dotted paths in the methods
    registry (after finding the checkout); each names a module that exists where it should."""
    for spec in METHODS.values():
        if spec.demo is None:  # released weights load; nothing to train or demo yet
            assert not spec.train and not spec.configs
            continue
        assert spec.demo.startswith("demo."), spec.demo
        demo = importlib.import_module(spec.demo)
        assert callable(demo.run) and callable(demo.quick)
        fields = demo.Settings.__dataclass_fields__
        assert {"backbone", "seed"} <= set(fields)
        for module in spec.train:
            assert module.startswith(spec.training_folder), module
            assert (ROOT / module.replace(".", "/") / "__main__.py").is_file(), module
        for target in spec.configs:
            module, _, cls = target.partition(":")
            assert module.startswith(f"{spec.training_folder}.")
            assert hasattr(importlib.import_module(module), cls), target
        if spec.converter:
            module, _, func = spec.converter.partition(":")
            assert module.startswith("fit3d_hub.")
            assert callable(getattr(importlib.import_module(module), func))


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


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\n"
                          "print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return set(out.split())


def test_import_fit3d_hub_is_light():
    """``import fit3d_hub`` brings neither transformers nor accelerate (nor torch: names load
    on first use), and the preprocessing path needs no hub code."""
    loaded = _loaded_after("import fit3d_hub")
    assert not {"transformers", "accelerate", "torch", "timm"} & loaded
    loaded = _loaded_after("from fit3d_hub.transforms import preprocess_images")
    assert not {"huggingface_hub", "timm", "transformers", "accelerate"} & loaded
    assert "torch" in loaded
    # resolving a name to files (`fit3d-hub download`) needs the hub, not torch or timm
    loaded = _loaded_after("from fit3d_hub.loading import resolve")
    assert "huggingface_hub" in loaded and not {"torch", "timm"} & loaded


def test_the_wheel_lists_every_package_of_fit3d_hub():
    """pyproject names the wheel's packages one by one: a new subpackage must be added."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "fit3d_hub").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
