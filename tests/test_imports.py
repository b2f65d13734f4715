"""Imports go down: the layer order of emo_jax, and a check of every import in every module
(function-local ones included) against it."""

import ast
from pathlib import Path

import pytest

import emo_jax

ROOT = Path(emo_jax.__file__).parent

# Bottom first. A package (or top-level module) imports only those in its own layer or below;
# several names in one layer may import each other (the front ends).
LAYERS = (
    ("errors", "interrupt"),
    ("files",),
    ("config",),
    ("nn",),
    ("weights",),
    ("models",),
    ("audio",),
    ("diffusion",),
    ("parallel",),
    ("faces",),
    ("data",),
    ("checkpoint",),
    ("interop",),
    ("train",),
    ("pipeline",),
    ("eval",),
    ("cli", "commands", "app", "__init__"),
)
# Function-local imports of emo_jax modules only in commands/ (they keep CLI start-up fast)
# and in emo_jax/__init__.py (lazy top-level names).
LAZY = ("commands", "__init__")
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def room(module: str) -> str:
    """The package or top-level module of `emo_jax.<room>...`; "__init__" for emo_jax itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def emo_imports(source: str, package: str) -> list[tuple[str, int, bool]]:
    """(emo_jax module, line, inside a function or class) of every import in `source`, a
    module of `package` (which relative imports start from)."""
    out = []
    stack = [(ast.parse(source), False)]
    while stack:
        node, local = stack.pop()
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # `from emo_jax import pipeline` imports the sub-package `pipeline`
            names = [f"{base}.{a.name}" for a in node.names] if base == "emo_jax" else [base]
        else:
            inner = local or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            stack += [(child, inner) for child in ast.iter_child_nodes(node)]
            continue
        out += [(n, node.lineno, local) for n in names if n.split(".")[0] == "emo_jax"]
    return sorted(out, key=lambda x: x[1])


def file_imports(path: Path) -> list[tuple[str, int, bool]]:
    """`emo_imports` of a file of emo_jax."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return emo_imports(path.read_text(), package)


def modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_every_room_has_a_layer():
    rooms = {room(module_name(p)) for p in modules()}
    assert rooms == set(LEVEL), f"not in LAYERS: {sorted(rooms - set(LEVEL))}"


def test_imports_go_down():
    upward = []
    for path in modules():
        src = room(module_name(path))
        for target, line, _ in file_imports(path):
            if LEVEL[room(target)] > LEVEL[src]:
                upward.append(f"{path.relative_to(ROOT.parent)}:{line}: {src} imports {target}")
    assert not upward, "imports that go up:\n" + "\n".join(upward)


def test_no_function_local_imports():
    local = [
        f"{path.relative_to(ROOT.parent)}:{line}: {target}"
        for path in modules()
        if room(module_name(path)) not in LAZY
        for target, line, inside in file_imports(path)
        if inside
    ]
    assert not local, "function-local imports of emo_jax modules:\n" + "\n".join(local)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from emo_jax.pipeline import EMOPipeline", [("emo_jax.pipeline", 1, False)]),
        ("def f():\n    import emo_jax.train.loop", [("emo_jax.train.loop", 2, True)]),
        (
            "from emo_jax import models, errors",
            [("emo_jax.models", 1, False), ("emo_jax.errors", 1, False)],
        ),
        ("from ..models import emo", [("emo_jax.models", 1, False)]),
        ("class A:\n    from .io import x", [("emo_jax.weights.io", 2, True)]),
        ("import numpy\nfrom jax import numpy", []),
    ],
)
def test_emo_imports_reads_every_form(source, expected):
    assert emo_imports(source, "emo_jax.weights") == expected
