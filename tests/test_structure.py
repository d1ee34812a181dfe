"""The package's shape, read from its own source: no import cycle, imports at the top, short
functions, layers that depend one way, and one straight path from the CLI to the loop."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from conftest import TINY

PACKAGE = Path(__file__).resolve().parent.parent / "gxnor_cli"
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (packages by their __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module of the package, line, inside a function) for every import in ``path``,
    those under ``if TYPE_CHECKING`` and inside functions included.  ``from . import sub``
    imports the module ``sub``; ``from .pkg import thing`` imports ``pkg``."""
    tree = ast.parse(path.read_text())
    in_function = {id(node) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(f)}
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                root = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in known else root for a in node.names]
        else:
            continue
        found += [(t, node.lineno, id(node) in in_function) for t in targets if t in known and t != name]
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {t for t, _, _ in imports(name, path, known)} for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle_among_the_package_modules():
    cycle = find_cycle(graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_own_modules_are_imported_at_the_top_except_by_the_cli():
    """The command line (cli, and entry, which runs a packed eval without it) defers heavy
    imports to start fast; nothing else hides an import in a function."""
    known = modules()
    hidden = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
              for name, path in known.items() if name not in ("gxnor_cli.cli", "gxnor_cli.entry")
              for target, line, inside in imports(name, path, known) if inside]
    assert not hidden, "\n".join(hidden)


def test_functions_fit_on_a_screen():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)


# Lower layers never import higher ones: each folder (or module) and what else it may import
# ("gxnor_cli" alone: the package's __init__, for its version).
BASE = {"gxnor_cli.registry", "gxnor_cli.errors", "gxnor_cli.interrupt"}
LAYERS = {
    "gxnor_cli.interrupt": set(),
    "gxnor_cli.discrete": {"gxnor_cli.registry"},
    "gxnor_cli.data": BASE,
    "gxnor_cli.checkpoint": BASE,
    "gxnor_cli.config": BASE | {"gxnor_cli.discrete", "gxnor_cli.data"},
    "gxnor_cli.models": BASE | {"gxnor_cli.discrete", "gxnor_cli.data", "gxnor_cli.config", "gxnor_cli.checkpoint"},
    "gxnor_cli.tracking": BASE | {"gxnor_cli", "gxnor_cli.checkpoint"},
    "gxnor_cli.deploy": BASE | {"gxnor_cli", "gxnor_cli.discrete", "gxnor_cli.data", "gxnor_cli.models",
                                "gxnor_cli.checkpoint"},
    "gxnor_cli.training": BASE | {"gxnor_cli.discrete", "gxnor_cli.data", "gxnor_cli.config", "gxnor_cli.models",
                                  "gxnor_cli.checkpoint", "gxnor_cli.tracking", "gxnor_cli.deploy"},
    "gxnor_cli.sweeps": BASE | {"gxnor_cli.discrete", "gxnor_cli.data", "gxnor_cli.config", "gxnor_cli.models",
                                "gxnor_cli.checkpoint", "gxnor_cli.tracking", "gxnor_cli.training", "gxnor_cli.deploy"},
}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("layer", list(LAYERS))
def test_layers_depend_one_way(layer):
    def allowed(target: str) -> bool:
        return within(target, layer) or any(target == a if a == "gxnor_cli" else within(target, a)
                                            for a in LAYERS[layer])

    wrong = sorted(f"{name} imports {target}" for name, targets in graph().items() if within(name, layer)
                   for target in targets if not allowed(target))
    assert not wrong, "\n".join(wrong)


def test_typer_and_mlflow_each_have_one_importer():
    def importers(library: str) -> set[str]:
        found = set()
        for name, path in modules().items():
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                if any(n == library or n.startswith(library + ".") for n in names):
                    found.add(name)
        return found

    assert importers("typer") == {"gxnor_cli.cli"}
    assert importers("mlflow") == {"gxnor_cli.tracking.client"}


def test_trainer_epochs_reaches_the_loop_straight_down(runs_dir, cli, monkeypatch):
    """`gxnor train trainer.epochs=N`: when the loop starts, the package's frames on the stack
    run from the entry through at most 7 modules, each entered once (no module calls back into one above it),
    and the loop holds the very value the command line gave."""
    from gxnor_cli.training.loop import Trainer

    seen = {}
    fit = Trainer.fit

    def spy(self, *args, **kwargs):
        frames = [inspect.getmodule(f.frame) for f in reversed(inspect.stack()[1:])]
        seen["modules"] = [m.__name__ for m in frames if m is not None and m.__name__.startswith("gxnor_cli")]
        seen["epochs"] = self.cfg.trainer.epochs
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", spy)
    code, _, err = cli("train", *TINY, "trainer.epochs=1")
    assert code == 0, err
    assert seen["epochs"] == 1
    chain = [m for i, m in enumerate(seen["modules"]) if i == 0 or seen["modules"][i - 1] != m]
    assert chain[0] == "gxnor_cli.entry"  # the console script, which hands everything but a packed eval on
    chain = chain[1:]
    assert chain[0] == "gxnor_cli.cli" and chain[-1] == "gxnor_cli.training.run"
    assert len(chain) == len(set(chain)) <= 7 - 1, chain  # 7 with the loop's own module


def test_every_subpackage_is_installed():
    """pyproject.toml lists packages by name: a folder missing there works from a checkout
    and breaks after `pip install .`."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert folders <= listed, sorted(folders - listed)


def test_launcher_presets_set_only_what_differs_from_the_defaults():
    """A launcher's defaults live in its Settings dataclass; its preset (one per launcher)
    changes keys, never repeats a default."""
    import dataclasses

    import yaml

    from gxnor_cli.config import default_config_dir
    from gxnor_cli.sweeps.launchers import LAUNCHERS

    for name, cls in LAUNCHERS.items():
        preset = yaml.safe_load((default_config_dir() / "launcher" / f"{name}.yaml").read_text()) or {}
        defaults = {f.name: f.default for f in dataclasses.fields(cls.Settings)}
        assert set(preset) <= set(defaults), (name, set(preset) - set(defaults))
        assert all(preset[k] != defaults[k] for k in preset), (name, preset)


def test_help_and_bad_config_never_load_torch_or_mlflow():
    """`gxnor --help`, `gxnor train --help` and a refused config answer without importing
    torch or mlflow (seconds each), which load only where a command computes or logs."""
    import subprocess
    import sys

    script = """
import contextlib, io, sys
from gxnor_cli.cli import main
for argv in (["gxnor", "--help"], ["gxnor", "train", "--help"], ["gxnor", "train", "quant.weight_states=4"],
             ["gxnor", "sweep", "quant.window=-1,2"]):
    sys.argv = argv
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            main()
        except SystemExit as done:
            assert done.code == (2 if "=" in argv[-1] else 0), (argv, done.code, err.getvalue())
print(sorted(m for m in ("torch", "mlflow", "hydra") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['hydra']"  # hydra composes the config; torch and mlflow stay out
