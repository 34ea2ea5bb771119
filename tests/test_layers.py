"""The package's layers import only downward, without cycles, and its files stay small (read from the source, so
that an import inside a function counts as much as one at the top)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "latentdiff"
# Each top-level package and its rank; a module may import its own package and packages of lower rank. Equal ranks
# are siblings that must not import each other (training and edit both build on pipelines).
LAYERS = {"core": 0, "models": 1, "pipelines": 2, "training": 3, "edit": 3, "shapes": 4, "build": 5, "serve": 5,
          "cli": 6}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_imports(path: Path) -> set[str]:
    """The latentdiff modules that ``path`` imports, relative imports resolved (``from . import x`` gives ``pkg.x``
    when x is a module of the package)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "latentdiff"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "latentdiff":
                target = node.module
            else:
                continue
            found.add(target)
            for alias in node.names:  # `from . import edit` imports the module latentdiff.cli.edit
                candidate = f"{target}.{alias.name}"
                if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").is_file() or \
                        (PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py").is_file():
                    found.add(candidate)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: our_imports(path) for name, path in MODULES.items()}


def layer(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the top-level latentdiff/__init__.py


def test_every_package_has_a_layer():
    packages = {layer(m) for m in MODULES} - {None}
    assert packages <= set(LAYERS), packages - set(LAYERS)


def downward_violations(graph: dict) -> list[str]:
    violations = []
    for module, imports in graph.items():
        here = layer(module)
        for target in imports:
            there = layer(target)
            if there is None or there == here:
                continue
            if here is None:  # the package's front door exports the core only
                if there != "core":
                    violations.append(f"{module} -> {target}")
            elif LAYERS[there] >= LAYERS[here]:
                violations.append(f"{module} (layer {here}) -> {target} (layer {there})")
    return violations


def find_cycles(graph: dict) -> list[str]:
    """Depth-first search over module → imported module; a package import is an import of its __init__."""
    state, stack, cycles = {}, [], []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module] & graph.keys() - {module}):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module)
    return cycles


def test_imports_go_only_downward():
    assert not downward_violations(GRAPH), "\n".join(downward_violations(GRAPH))


def test_nothing_imports_the_cli():
    assert [m for m, imports in GRAPH.items() if layer(m) != "cli" and any(layer(t) == "cli" for t in imports)] == []


def test_no_import_cycles():
    assert not find_cycles(GRAPH), "\n".join(find_cycles(GRAPH))


def test_the_checks_catch_what_they_are_for():
    """Relative imports are resolved, those inside functions included; an upward import, an import between
    siblings and a cycle are each reported."""
    assert "latentdiff.core.schedule" in our_imports(PACKAGE / "models" / "folder.py")
    assert "latentdiff.pipelines" in our_imports(PACKAGE / "cli" / "loading.py")  # inside load_pipeline
    assert downward_violations({"latentdiff.core.x": {"latentdiff.models.y"}})
    assert downward_violations({"latentdiff.training.x": {"latentdiff.edit.y"}})
    assert not downward_violations({"latentdiff.edit.x": {"latentdiff.pipelines.y", "latentdiff.edit.z"}})
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")) + sorted((PACKAGE.parent / "tests").glob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_files_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines; split it by concept"
