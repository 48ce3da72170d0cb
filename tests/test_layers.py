"""The layers, top to bottom: harness (the tools) -> the sides -> common -> datamodules.

A side imports only the layers below it, never another side or a tool (the NNX side alone may use
the linen side's framework-neutral JAX pieces, so none is written twice); the common layer imports
no side and no tool; the data layer imports none of the project's packages, and no JAX. Every
import counts, those inside functions included.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("datamodules", "common", "lightning_side", "flax_side", "nnx_side", "harness", "tests")
# package -> the project's packages it may import besides itself
ALLOWED = {
    "datamodules": set(),
    "common": {"datamodules"},
    "lightning_side": {"common", "datamodules"},
    "flax_side": {"common", "datamodules"},
    # NNX reuses the linen side's framework-neutral JAX pieces (schedules, devices, convert...).
    "nnx_side": {"common", "datamodules", "flax_side"},
    "harness": {"common", "datamodules", "lightning_side", "flax_side", "nnx_side"},
}
# third-party packages a layer must never import
FORBIDDEN = {
    "datamodules": {"jax", "flax", "optax", "orbax"},
    "common": {"jax", "flax", "optax", "orbax", "torch", "lightning"},
    "lightning_side": {"jax", "flax", "optax", "orbax"},
    "nnx_side": {"lightning"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level names of every module `path` imports, anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(package):
    wrong = {}
    for path in modules(package):
        found = imported_packages(path)
        bad = (found & set(PROJECT)) - ALLOWED[package] - {package}
        bad |= found & FORBIDDEN.get(package, set())
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"imports across the layers: {wrong}"


def test_the_nnx_side_runs_the_flax_sides_driver_with_its_own_api(monkeypatch):
    """What lets tests/helpers/sides.py test a driver-only behaviour once for both Flax sides."""
    from flax_side import loop
    from nnx_side import loop as nnx_loop
    from nnx_side.api import NNX

    called = []
    monkeypatch.setattr(loop, "train_and_evaluate", lambda config, api: called.append((config, api)))
    nnx_loop.train_and_evaluate("the config")
    assert called == [("the config", NNX)] and NNX.side == "nnx"


def test_the_rule_sees_a_function_level_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from harness import sweep\n    import jax.numpy as jnp\n")
    assert imported_packages(module) == {"harness", "jax"}


def test_every_package_is_under_a_rule():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(ALLOWED)


PRODUCT = ("datamodules", "common", "lightning_side", "flax_side", "nnx_side", "harness")
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 60


def long_functions(path: Path, limit: int) -> dict[str, int]:
    """name -> length in lines of each function in `path` longer than `limit`."""
    return {node.name: node.end_lineno - node.lineno + 1
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit}


@pytest.mark.parametrize("package", PRODUCT)
def test_files_and_functions_stay_small(package):
    too_long = {str(p.relative_to(ROOT)): n for p in modules(package)
                if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    long = {f"{p.relative_to(ROOT)}::{name}": n for p in modules(package)
            for name, n in long_functions(p, MAX_FUNCTION_LINES).items()}
    assert not too_long and not long, f"files over {MAX_FILE_LINES} lines: {too_long}; " \
                                      f"functions over {MAX_FUNCTION_LINES}: {long}"


def test_the_size_rule_measures_a_function_from_def_to_last_line(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n" + "    x = 1\n" * 60 + "\n\ndef g():\n    pass\n")
    assert long_functions(module, 60) == {"f": 61}
