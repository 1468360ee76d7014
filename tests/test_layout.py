"""The layout's rules, read from the source: imports run one way (no cycle, nothing upward), no
private name is imported from another file, and only the encoders and ``utils.io`` write files."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "vis_methods", "utils")

# Which of our packages each layer may import (its own package always). Listed top-down:
# main.py -> utils.pipeline -> (vis_methods, models, utils.render, utils.io); utils.render -> utils.io;
# vis_methods -> models.adapter; models -> nothing of ours.
ALLOWED: Dict[str, Tuple[str, ...]] = {
    "utils": (),
    "models": (),
    "vis_methods": ("models.adapter",),
    "utils.io": ("models",),
    "utils.render": ("utils.io",),
    "utils.demo": ("utils.io", "models"),
    "utils.pipeline": ("vis_methods", "models", "utils.render", "utils.io"),
    # the motion study writes its per-clip plots as the temporal_sensitivity view does
    "utils.evaluation": ("utils.pipeline.setup", "utils.pipeline.views", "utils.demo", "utils.io",
                         "vis_methods", "models"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def source_files() -> List[Path]:
    files = [ROOT / "main.py"]
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def known_modules() -> Set[str]:
    return {module_name(p) for p in source_files()}


def resolve(name: str, modules: Set[str]) -> str:
    """The longest of our modules that ``name`` (``a.b.c``, maybe a function in ``a.b``) lies in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def imports_of(path: Path, modules: Set[str]) -> List[Tuple[str, List[str], int]]:
    """``(module, imported names, line)`` for every import of one of our modules in ``path``,
    at any depth of the file (function-level imports count too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name, modules)
                if target:
                    found.append((target, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if not resolve(name, modules):
                continue
            for alias in node.names:
                target = resolve(f"{name}.{alias.name}", modules)
                if target == resolve(name, modules):
                    found.append((target, [alias.name], node.lineno))
                elif target:
                    found.append((target, [], node.lineno))
    return found


def layer_of(module: str) -> str:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return module


def graph() -> Dict[str, Set[str]]:
    modules = known_modules()
    edges: Dict[str, Set[str]] = {}
    for path in source_files():
        here = module_name(path)
        edges[here] = {target for target, _, _ in imports_of(path, modules) if target != here}
    return edges


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def upward_imports() -> List[str]:
    modules = known_modules()
    problems = []
    for path in source_files():
        here = module_name(path)
        if here == "main":
            continue
        layer = layer_of(here)
        allowed = ALLOWED.get(layer)
        if allowed is None:
            problems.append(f"{here}: in no layer of the rules")
            continue
        for target, _, line in imports_of(path, modules):
            if layer_of(target) == layer:
                continue
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                problems.append(f"{path.relative_to(ROOT)}:{line}: {here} imports {target}")
    return problems


def private_imports() -> List[str]:
    modules = known_modules()
    problems = []
    for path in source_files():
        for target, names, line in imports_of(path, modules):
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    problems.append(f"{path.relative_to(ROOT)}:{line}: {name} from {target}")
    return problems


def test_the_rules_see_imports_at_every_depth(tmp_path):
    # A check that finds nothing must be able to find something: a file of ours read as it is.
    edges = graph()
    assert "utils.render.encoders" in edges["utils.render.outputs"]
    assert "models.adapter" in edges["vis_methods._context"]
    # Tarjan on a hand-made graph.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_imports_run_down_the_layers():
    assert upward_imports() == []


def test_no_private_name_is_imported_from_another_file():
    assert private_imports() == []


WRITERS = ("utils/io/", "utils/render/encoders.py")
# Checkpoints of the demo models are written by their training scripts through the atomic writer.
TRAINING = ("utils/demo/train.py", "utils/demo/train_transformer.py")
WRITING_CALLS = ("atomic_path(", ".write_text(", ".write_bytes(", ".savefig(", ".to_csv(",
                 "Image.fromarray(", "np.save(")


def writing_calls() -> List[str]:
    offenders = []
    for path in source_files():
        relative = str(path.relative_to(ROOT))
        if relative == "main.py" or relative.startswith(WRITERS) or relative.startswith("models/"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("#", "from ", "import ")):
                continue
            for call in WRITING_CALLS:
                if call in stripped and not (relative in TRAINING and call == "atomic_path("):
                    if call == "Image.fromarray(" and ".save(" not in stripped:
                        continue
                    offenders.append(f"{relative}:{number}: {stripped}")
    return offenders


def test_only_io_and_the_encoders_write_files():
    assert writing_calls() == []
