"""The packed runtime as a deployer meets it: the fast kernel against the numpy kernels and
torch, sample by sample; `gxnor-run` through its entry point; no training stack imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gxnor_cli.config import load_config
from gxnor_cli.deploy.engine import PackedModel
from gxnor_cli.deploy.fold import export_packed, predict_torch
from gxnor_cli.models.nets import build_model

pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install 'gxnor[runtime]')")

ARCHS = ["8C3-MP2-16C3-32FC-10", "16FC-10", "4C3-8C3-MP2-10", "8C5-MP2-12FC-7"]
STATES = [2, 3, 5, 9, 17]


def random_net(path: Path, seed: int, max_value: float = 16.0) -> torch.nn.Module:
    """A random net with random BatchNorm statistics (negative scales included, so channels
    flip), exported packed to ``path``; returns the torch model."""
    rng = np.random.default_rng(seed)
    arch = ARCHS[seed % len(ARCHS)]
    cfg = load_config([f"model.arch={arch}", f"quant.weight_states={rng.choice(STATES)}",
                       f"quant.act_states={rng.choice(STATES)}", f"trainer.seed={seed}"])
    torch.manual_seed(seed)
    classes = int(arch.split("-")[-1])
    model = build_model(cfg.model, cfg.quant, (1, 8, 8), classes).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.tensor(rng.normal(0, 3, m.num_features)))
                m.running_var.copy_(torch.tensor(rng.uniform(0.1, 20, m.num_features)))
                if m.affine:
                    m.weight.copy_(torch.tensor(rng.normal(0, 1, m.num_features)))
                    m.bias.copy_(torch.tensor(rng.normal(0, 1, m.num_features)))
    export_packed(model, (1, 8, 8), classes, max_value, {"data": "digits"}, path)
    return model


@pytest.mark.parametrize("seed", range(16))
def test_fast_kernel_gives_the_numpy_kernels_scores_exactly(tmp_path, seed):
    model = random_net(tmp_path / "m.gxnor", seed)
    images = np.random.default_rng(seed).integers(0, 17, (300, 1, 8, 8), dtype=np.uint8)
    images[0], images[1] = 0, 16  # the extremes of the input range
    fast, numpy_kernel = PackedModel.load(tmp_path / "m.gxnor"), PackedModel.load(tmp_path / "m.gxnor", "gemm")
    assert fast.kernel == "onnxruntime" and not fast.measure
    assert np.array_equal(fast.scores(images), numpy_kernel.scores(images))  # float64 scores, bit for bit
    fast.threads = 2
    assert np.array_equal(fast.predict(images, 128), predict_torch(model, torch.from_numpy(images), 16.0))


def test_the_hand_written_graph_is_valid_onnx(tmp_path):
    onnx = pytest.importorskip("onnx")
    from gxnor_cli.deploy import compiled

    random_net(tmp_path / "m.gxnor", 2)
    proto = onnx.load_from_string(compiled.build(PackedModel.load(tmp_path / "m.gxnor", "gemm")))
    onnx.checker.check_model(proto, full_check=True)  # shapes inferred through every node
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 1, 8, 8] and proto.graph.output[0].name == "scores" and proto.opset_import[0].version == 17


def test_a_model_the_fast_kernel_cannot_hold_exactly_runs_on_numpy(tmp_path):
    random_net(tmp_path / "m.gxnor", 0, max_value=1000.0)  # inputs beyond uint8
    assert PackedModel.load(tmp_path / "m.gxnor").kernel == "gemm"
    from gxnor_cli.deploy.packed import PackedError

    with pytest.raises(PackedError, match="cannot run this model exactly"):
        PackedModel.load(tmp_path / "m.gxnor", "onnxruntime")


def gxnor_run(*args, block=(), cwd=None) -> subprocess.CompletedProcess:
    """``gxnor-run`` in a fresh interpreter in which the modules ``block`` cannot be imported."""
    code = (f"import sys\nfor name in {list(block)!r}: sys.modules[name] = None\n"
            "from gxnor_cli.deploy.run import main\n"
            "code = main(sys.argv[1:])\n"
            "heavy = sorted(m for m in ('torch', 'mlflow', 'hydra', 'typer', 'sklearn') if sys.modules.get(m))\n"
            "print('imported:', ' '.join(heavy), file=sys.stderr)\n"
            "sys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_gxnor_run_predicts_without_the_training_stack(tmp_path):
    model = random_net(tmp_path / "m.gxnor", 3)
    images = np.random.default_rng(1).integers(0, 17, (50, 1, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "flat.npy", images[:, 0])  # N x H x W for a one-channel model
    want = predict_torch(model, torch.from_numpy(images), 16.0)
    done = gxnor_run(tmp_path / "m.gxnor", tmp_path / "x.npy", block=("torch", "mlflow", "hydra", "typer", "onnx"))
    assert done.returncode == 0, done.stderr
    assert [int(line) for line in done.stdout.split()] == want.tolist()
    assert "50 samples in" in done.stderr and "imported: \n" in done.stderr + "\n"
    done = gxnor_run(tmp_path / "m.gxnor", tmp_path / "flat.npy", "--out", tmp_path / "p.npy", "--threads", "2")
    assert done.returncode == 0 and np.array_equal(np.load(tmp_path / "p.npy"), want) and done.stdout == ""
    done = gxnor_run(tmp_path / "m.gxnor", tmp_path / "x.npy", "--scores", "--out", tmp_path / "s.npy", "--kernel", "gemm")
    assert done.returncode == 0 and np.array_equal(np.load(tmp_path / "s.npy"),
                                                   PackedModel.load(tmp_path / "m.gxnor").scores(images))
    # without onnxruntime the numpy kernel answers, the same
    done = gxnor_run(tmp_path / "m.gxnor", tmp_path / "x.npy", block=("torch", "onnxruntime"))
    assert done.returncode == 0 and [int(v) for v in done.stdout.split()] == want.tolist()
    assert "gemm kernel" in done.stderr
    done = gxnor_run(tmp_path / "m.gxnor", tmp_path / "x.npy", "--kernel", "onnxruntime", block=("onnxruntime",))
    assert done.returncode == 2 and "pip install 'gxnor[runtime]'" in done.stderr


@pytest.mark.parametrize("inputs, message", [
    (np.full((3, 1, 8, 8), 17), "must lie in [0, 16]"),
    (np.zeros((3, 1, 7, 8)), "takes samples of shape [1, 8, 8]"),
    (np.full((3, 1, 8, 8), 0.5), "must be integers"),
    (None, "cannot read"),
])
def test_gxnor_run_refuses_bad_inputs_in_one_line(tmp_path, inputs, message):
    random_net(tmp_path / "m.gxnor", 1)
    path = tmp_path / "x.npy"
    if inputs is None:
        path.write_bytes(b"not an array")
    else:
        np.save(path, inputs)
    done = gxnor_run(tmp_path / "m.gxnor", path, "--out", tmp_path / "p.npy")
    lines = [l for l in done.stderr.splitlines() if not l.startswith("imported:")]
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "p.npy").exists()


def test_gxnor_run_refuses_a_file_that_is_not_a_model(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), dtype=np.uint8))
    (tmp_path / "m.gxnor").write_bytes(b"\x00" * 64)
    done = gxnor_run(tmp_path / "m.gxnor", tmp_path / "x.npy")
    assert done.returncode == 2 and "not a gxnor packed model" in done.stderr and "Traceback" not in done.stderr


def test_gxnor_eval_of_a_packed_file_imports_no_training_stack_and_says_what_the_full_cli_says(tmp_path, capsys,
                                                                                                monkeypatch):
    import json

    from gxnor_cli.data.sources import read_arrays

    random_net(tmp_path / "m.gxnor", 5)
    blocked = ("torch", "mlflow", "hydra", "omegaconf", "typer", "pydantic")
    code = (f"import runpy, sys\nfor name in {blocked}: sys.modules[name] = None\n"
            "sys.argv = ['gxnor', 'eval', '--engine', 'packed', sys.argv[1], '--json']\n"
            "runpy.run_module('gxnor_cli', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.gxnor")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result, test = json.loads(done.stdout), read_arrays("digits").test
    want = PackedModel.load(tmp_path / "m.gxnor").predict(test.images)
    assert result["samples"] == len(test) == 359 and result["acc"] == float((want == test.labels).mean())
    from gxnor_cli.cli import main  # the full command line, which the entry hands everything else

    monkeypatch.setattr(sys, "argv", ["gxnor", "eval", "--engine", "packed", str(tmp_path / "m.gxnor"), "--json"])
    with pytest.raises(SystemExit) as done:
        main()
    out, timing = capsys.readouterr().out, ("time_s", "samples_per_s")
    assert done.value.code == 0 and {k: v for k, v in json.loads(out).items() if k not in timing} == \
        {k: v for k, v in result.items() if k not in timing}
