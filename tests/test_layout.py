"""The library's layering, read from the source: which subpackage may import which, no import circle (lazy
imports inside functions count), and no torch or absl FLAGS on the training path.

Each subpackage's `__init__` docstring states its rule; this test holds the code to it.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "bert_jax"

# Which groups each group may import. A group is a subpackage, or "core" for the top-level modules.
ALLOWED = {
    "core": {"core"},
    "models": {"core", "models"},
    "data": {"core", "data"},
    "training": {"core", "models", "data", "training"},
    "finetune": {"core", "models", "data", "training", "finetune"},
    "compile": {"core", "models", "data", "training", "finetune", "compile"},
    "jobs": {"core", "models", "data", "training", "finetune", "compile", "jobs"},
    "launcher": {"core", "launcher"},
    "harness": {"core", "models", "data", "training", "finetune", "compile", "jobs", "launcher", "harness"},
}
TRAINING_PATH = ("core", "models", "data", "training", "finetune", "compile", "jobs")
# The one module that runs PyTorch (as its own process, for the GLUE table's side-by-side rows).
TORCH_ALLOWED = {"bert_jax.harness.torch_reference"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def group_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return "core"


def imports_of(path: pathlib.Path) -> set[str]:
    """Every module this file imports, at top level or inside a function, resolved to full dotted names."""
    module = module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            found.add(parent)
            found.update(f"{parent}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {m for m in imports_of(path) if m in modules and m != name and m != "bert_jax"}
    return edges


def all_imports() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_is_placed_in_a_known_group():
    groups = {group_of(m) for m in graph()}
    assert groups <= set(ALLOWED), groups - set(ALLOWED)


def test_few_top_level_modules():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists())
    assert len(top) <= 13, top


def test_each_subpackage_states_what_it_may_import():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "import" in doc, f"{init.parent.name}/__init__.py: the docstring says nothing of what it may import"


def test_groups_import_only_what_they_may():
    wrong = []
    for module, deps in graph().items():
        for dep in deps:
            if group_of(dep) not in ALLOWED[group_of(module)]:
                wrong.append(f"{module} -> {dep}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("forbidden", ["torch", "transformers", "absl.flags"])
def test_training_path_never_imports(forbidden):
    offenders = []
    for module, deps in all_imports().items():
        if group_of(module) not in TRAINING_PATH or module in TORCH_ALLOWED:
            continue
        if any(dep == forbidden or dep.startswith(forbidden + ".") for dep in deps):
            offenders.append(module)
    assert not offenders, f"{forbidden} imported by {sorted(set(offenders))}"


def test_no_private_names_of_other_modules():
    """`from bert_jax.x import _name` reaches into another module's internals."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bert_jax"):
                offenders += [f"{module_name(path)}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert not offenders, offenders
