"""Packed files from an attacker or a bad disk: every mutation of a real export either runs or
is refused in one line, within a memory cap far below what the file could claim."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import runs_in_store  # noqa: F401  (the conftest fixtures)

HEADER = struct.Struct("<8sII")
MEMORY_CAP = 1 << 30  # 1 GiB of address space for the process that loads the mutants

# Loads every mutant in the directory it is given under the memory cap: one line per file,
# "ok" (it ran on a few images), "refused <message>" (a PackedError: gxnor says that one line and
# exits 2), or "CRASH <type> <message>" (anything else: the bug this test exists to find).
RUNNER = r"""
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
import numpy as np
from gxnor_cli.deploy.graph_engine import load_packed
from gxnor_cli.deploy.packed import PackedError
images = np.random.default_rng(0).integers(0, 17, (8, 1, 8, 8), dtype=np.uint8)
for path in sorted(Path(sys.argv[1]).glob("*.gxnor")):
    try:
        load_packed(path).predict(images)
        print(path.name, "ok")
    except PackedError as err:
        assert "\n" not in str(err)
        print(path.name, "refused", str(err)[:120])
    except BaseException as err:
        print(path.name, "CRASH", type(err).__name__, str(err)[:200])
"""


def make_export(kind: str, path: Path) -> bytes:
    """A real packed export of a small random ternary net for 8x8 digits: a layer-notation net
    (``layers``: version 2) or an own residual net (``graph``: version 3)."""
    from gxnor_cli.config import load_config
    from gxnor_cli.deploy.fold import export_packed
    from gxnor_cli.deploy.fold_graph import export_graph
    from gxnor_cli.models.nets import build_model
    from test_own_nets import tiny_graph_net

    if kind == "graph":
        export_graph(tiny_graph_net(3, 3), (1, 8, 8), 10, 16.0, {"data": "digits"}, path)
    else:
        cfg = load_config(["model.arch=8C3-MP2-16C3-32FC-10"])
        model = build_model(cfg.model, cfg.quant, (1, 8, 8), 10).eval()
        export_packed(model, (1, 8, 8), 10, 16.0, {"data": "digits"}, path)
    return path.read_bytes()


@pytest.fixture(scope="module", params=["layers", "graph"])
def export(tmp_path_factory, request) -> bytes:
    return make_export(request.param, tmp_path_factory.mktemp("export") / "model.gxnor")


def split(raw: bytes) -> tuple[int, dict, bytes]:
    _, version, length = HEADER.unpack_from(raw)
    return version, json.loads(raw[HEADER.size:HEADER.size + length].rstrip(b"\0")), raw[HEADER.size + length:]


def join(version: int, manifest, body: bytes) -> bytes:
    text = json.dumps(manifest, separators=(",", ":")).encode()
    text += b"\0" * ((-(HEADER.size + len(text))) % 8)
    return HEADER.pack(b"GXNORPK\0", version, len(text)) + text + body


def leaves(tree, path=()):
    """Every (path, value) of a JSON tree, containers included."""
    yield path, tree
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield from leaves(value, path + (key,))


WILD = [2**40, 2**63, -1, 0, 10_000, 1e308, float("nan"), "x", None, [], {}, True, [10**6] * 3, [[[[[]]]]]]


def json_mutant(raw: bytes, rng) -> bytes:
    version, manifest, body = split(raw)
    paths = [p for p, _ in leaves(manifest) if p]
    path = paths[rng.integers(len(paths))]
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        value = WILD[rng.integers(len(WILD))]
        old = parent[path[-1]]
        if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.5:
            value = old * int(rng.choice([2, 10, 1000, -1])) + int(rng.integers(-2, 3))
        parent[path[-1]] = value
    return join(version, manifest, body)


def byte_mutant(raw: bytes, rng) -> bytes:
    data = bytearray(raw)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(len(data)))
        data[i] ^= 1 << int(rng.integers(8))
    if rng.random() < 0.1:
        data = data[:int(rng.integers(len(data)))]  # truncated
    return bytes(data)


def run_mutants(export: bytes, tmp_path: Path, cases: int, seed: int) -> dict[str, int]:
    import numpy as np

    rng = np.random.default_rng(seed)
    for i in range(cases):
        mutate = json_mutant if i % 2 else byte_mutant
        (tmp_path / f"{i:05d}.gxnor").write_bytes(mutate(export, rng))
    done = subprocess.run([sys.executable, "-c", RUNNER, str(tmp_path), str(MEMORY_CAP)], capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == cases, done.stderr[-2000:]
    crashes = [line for line in lines if " CRASH " in line]
    assert not crashes, "\n".join(crashes[:10])
    return {kind: sum(f" {kind}" in line for line in lines) for kind in ("ok", "refused")}


def test_a_few_hundred_mutants_run_or_are_refused_in_one_line(export, tmp_path):
    counts = run_mutants(export, tmp_path, 600, seed=0)
    assert counts["refused"] > 300  # most damage is caught (checksums, shapes, claims)


@pytest.mark.slow
def test_thousands_of_mutants_run_or_are_refused_in_one_line(export, tmp_path):
    counts = run_mutants(export, tmp_path, 20000, seed=1)
    assert counts["refused"] > 10000


@pytest.mark.parametrize("kind, claim, message", [
    ("layers", lambda m: m["layers"][0].update(padding=10_000), "padding"),
    ("layers", lambda m: m["layers"][0].update(pool=10_000), "shrink to nothing"),
    ("layers", lambda m: m["input"].update(shape=[1, 100_000, 100_000]), "larger than a packed model may claim"),
    ("layers", lambda m: m["layers"][1].update(kernel=3000), "does not fit"),
    ("graph", lambda m: m["nodes"][0].update(padding=10_000), "padding 10000"),
    ("graph", lambda m: m["input"].update(shape=[1, 100_000, 100_000]), "larger than a packed model may claim"),
    ("graph", lambda m: next(n for n in m["nodes"] if n["op"] == "maxpool").update(kernel=[3000, 3000]),
     "shrink to nothing"),
    ("graph", lambda m: m["nodes"][-1].update(inputs=["nowhere"]), "must name earlier nodes"),
    ("graph", lambda m: next(n for n in m["nodes"] if n["op"] == "add")["inputs"].reverse() or
     m["nodes"].reverse(), "must name earlier nodes"),
])
def test_claims_of_sizes_are_refused_before_anything_is_allocated(tmp_path, cli, kind, claim, message):
    """Through the real entry point, under the suite's own memory: one line, exit 2."""
    version, manifest, body = split(make_export(kind, tmp_path / "model.gxnor"))
    claim(manifest)
    path = tmp_path / "bomb.gxnor"
    path.write_bytes(join(version, manifest, body))
    code, out, err = cli("eval", "--engine", "packed", str(path))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
