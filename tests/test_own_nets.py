"""Your own network through the real CLI: a residual net from a factory in a file the test
writes, discretized and trained by DST, evaluated, swept; each refusal in one line."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from conftest import runs_in_store
from gxnor_cli import checkpoint
from gxnor_cli.discrete.layers import Biased, DiscreteConv2d, DiscreteLinear
from gxnor_cli.discrete.activation import MultiStep
from gxnor_cli.errors import UserError
from gxnor_cli.models.nets import load_trained
from gxnor_cli.models.own import OwnNetError, discretize

NETS = textwrap.dedent('''
    import torch
    from torch import nn
    import torch.nn.functional as F


    class Block(nn.Module):
        """Two 3x3 convolutions and a residual; stride 2 and a 1x1 shortcut when the shape changes."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1, self.act1 = nn.BatchNorm2d(cout), nn.ReLU()
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2, self.act2 = nn.BatchNorm2d(cout), nn.ReLU()
            self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.act1(self.bn1(self.conv1(x)))
            return self.act2(self.bn2(self.conv2(y)) + self.short(x))


    def resnet(width=16, classes=10):
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                             Block(width, width, 1), Block(width, 2 * width, 2), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(2 * width, classes), nn.BatchNorm1d(classes))


    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)

        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x.flatten(1))))


    def functional():
        return Functional()


    def grouped():
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(64, 10))


    def recurrent():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Unflatten(1, (4, 4)), nn.LSTM(4, 4))


    def raises():
        raise RuntimeError("no such depth")


    def not_a_module():
        return 42


    class MeanPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Hardtanh()
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.act(self.bn(self.conv(x))).mean((2, 3)))


    def meanpool():
        return MeanPool()


    def seven_classes():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 7))
''')


@pytest.fixture
def nets(runs_dir):
    (runs_dir.parent / "mynets.py").write_text(NETS)
    return runs_dir


def test_a_residual_net_of_your_own_trains_ternary_and_evaluates(cli, nets):
    code, out, err = cli("train", "model._target_=mynets.resnet", "model.width=12", "trainer.epochs=10", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["test_acc"] > 0.65  # 0.76 measured; the same net in float: 0.95, gxnor's own digits net: 0.97
    payload = checkpoint.load(result["checkpoint"])
    assert payload["config"]["model"] == {**payload["config"]["model"], "target": "mynets.resnet",
                                          "args": {"width": 12}}
    _, model = load_trained(payload)  # every state checked to lie in its space
    convs = [m for m in model.modules() if isinstance(m, DiscreteConv2d)]
    assert len(convs) == 6 and {m.stride for m in convs} == {1, 2} and {m.kernel_size for m in convs} == {1, 3}
    assert all(set(m.state.unique().tolist()) <= {-1, 0, 1} for m in convs)
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear, nn.ReLU)) for m in model.modules())
    code, out, err = cli("eval", result["run_id"], "--json")
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["acc"] == pytest.approx(result["test_acc"])
    assert {"4.conv1", "4.short.0", "3.act2"} <= {row["layer"] for row in evaluated["layers"]}
    assert_packed_agrees(cli, result, model, nets.parent / "own.gxnor")
    assert_onnx_agrees(cli, result["run_id"], model, nets.parent / "own.onnx")
    code, out, err = cli("summary", result["run_id"], "--json")
    assert code == 0, err
    rows = json.loads(out)["layers"]
    assert [r["layer"] for r in rows] == WEIGHTED and all(r["states"] == 3 for r in rows)
    assert all(0 < r["resting_prob"] < 1 for r in rows[1:])
    assert_qonnx_agrees(cli, result["run_id"], nets.parent)


#: The weighted nodes of mynets.resnet in the packed graph, in order (named by their module).
WEIGHTED = ["0", "3.conv1", "3.conv2", "4.conv1", "4.conv2", "4.short.0", "7"]


def assert_packed_agrees(cli, result: dict, model: nn.Module, path) -> None:
    """`gxnor export` of an own net: a packed graph (format version 3) whose weights are the
    run's states at their true bit width, and the engine's predictions on every test image are
    the torch model's, so its accuracy is exactly the run's."""
    from gxnor_cli.data.sources import read_arrays
    from gxnor_cli.data.splits import scale
    from gxnor_cli.deploy import packed
    from gxnor_cli.deploy.graph_engine import GraphModel, load_packed

    code, out, err = cli("export", result["run_id"], "--out", str(path))
    assert code == 0, err
    manifest, _ = packed.read(path)
    assert manifest["version"] == 3 and {n["op"] for n in manifest["nodes"]} == {
        "conv", "affine", "phi", "add", "avgpool", "flatten", "dense"}
    weights = sum(m.num_weights for m in model.modules() if isinstance(m, (DiscreteConv2d, DiscreteLinear)))
    assert f"{weights:,} weights: {packed.packed_weight_bytes(manifest):,} bytes packed (1.6" in out
    assert packed.packed_weight_bytes(manifest) <= weights * 1.61 / 8 + 8 * len(WEIGHTED)  # whole words per node
    engine = load_packed(path)
    assert isinstance(engine, GraphModel)
    images = read_arrays("digits").test.images
    with torch.no_grad():
        want = model.eval()(scale(torch.from_numpy(images), 16.0)).numpy()
    got = engine.scores(images)
    assert abs(got - want).max() < 1e-3 * max(1.0, abs(want).max())
    assert (got.argmax(1) == want.argmax(1)).all()
    code, out, err = cli("eval", "--engine", "packed", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["acc"] == pytest.approx(result["test_acc"], abs=1e-12)


def assert_qonnx_agrees(cli, run_id: str, where) -> None:
    """`gxnor export --format qonnx` of an own net: qonnx cleans it up and executes it, and its
    scores on every digits test image are the packed engine's."""
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    from gxnor_cli.data.sources import read_arrays
    from gxnor_cli.deploy.graph_engine import load_packed

    code, _, err = cli("export", run_id, "--format", "qonnx", "--out", str(where / "own.qonnx.onnx"))
    assert code == 0, err
    images = read_arrays("digits").test.images
    model = cleanup_model(ModelWrapper(str(where / "own.qonnx.onnx")), override_inpsize=len(images))
    got = execute_onnx(model, {model.graph.input[0].name: images.astype("float32")})[model.graph.output[0].name]
    assert np.array_equal(got, load_packed(where / "own.gxnor").scores(images))


def assert_onnx_agrees(cli, run_id: str, model: nn.Module, path) -> None:
    """`gxnor export --format onnx` of an own net: onnxruntime's scores on the digits test
    images equal the torch model's (float32 rounding apart) and so do the classes."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from gxnor_cli.data.sources import read_arrays
    from gxnor_cli.data.splits import scale

    code, _, err = cli("export", run_id, "--format", "onnx", "--out", str(path))
    assert code == 0, err
    images = read_arrays("digits").test.images
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": images.astype("float32")})[0]
    with torch.no_grad():
        want = model.eval()(scale(torch.from_numpy(images), 16.0)).numpy()
    assert got.shape == want.shape and abs(got - want).max() < 1e-3 * max(1.0, abs(want).max())
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.99  # (a near tie may round the other way)


def test_own_nets_sweep_over_their_factory_arguments(cli, nets):
    code, out, err = cli("sweep", "model._target_=mynets.resnet", "model.width=4,6", "trainer.epochs=1",
                         "data.limit=200")
    assert code == 0, err
    kids = {r.data.params["model.args.width"]: r.info.status for r in runs_in_store(nets)
            if "mlflow.parentRunId" in r.data.tags}
    assert kids == {"4": "FINISHED", "6": "FINISHED"}


@pytest.mark.parametrize("target, message", [
    ("mynets.functional", "forward calls relu (node relu) as a function"),
    ("mynets.grouped", "is not supported (gxnor discretizes square kernels"),
    ("mynets.recurrent", "LSTM has weights gxnor cannot discretize"),
    ("mynets.raises", "raised RuntimeError: no such depth"),
    ("mynets.not_a_module", "returned a int, not a torch.nn.Module"),
    ("mynets.seven_classes", "gives outputs of shape [7] per sample; the data has 10 classes"),
    ("nowhere.build", "cannot import nowhere"),
    ("mynets.missing", "mynets has no function missing"),
])
def test_what_cannot_be_discretized_is_refused_before_anything_is_written(cli, nets, target, message):
    code, out, err = cli("train", f"model._target_={target}", "trainer.epochs=1")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert runs_in_store(nets) == [] and not (nets / "checkpoints").exists()


def test_an_own_net_the_onnx_exporter_cannot_express_is_refused_naming_the_node(cli, nets):
    code, out, err = cli("train", "model._target_=mynets.meanpool", "trainer.epochs=1", "--json")
    assert code == 0, err
    path = nets.parent / "mean.onnx"
    code, _, err = cli("export", json.loads(out)["run_id"], "--format", "onnx", "--out", str(path))
    assert code == 2 and "node mean (call_method mean)" in err and len(err.strip().splitlines()) == 1, err
    assert not path.exists()


def test_discretize_from_python_swaps_layers_in_place():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.Hardtanh(),
                          nn.Flatten(), nn.Linear(64, 10))
    x = torch.randn(5, 1, 8, 8)
    same = discretize(model, weight_states=5, act_states=3, float_last=True)
    assert same is model and isinstance(model[0], Biased) and isinstance(model[0].layer, DiscreteConv2d)
    assert model[0].layer.space.states == 5 and model[0].layer.stride == 2 and isinstance(model[2], MultiStep)
    assert isinstance(model[4], nn.Linear) and not isinstance(model[4], DiscreteLinear)  # float_last
    assert model(x).shape == (5, 10)
    with pytest.raises(OwnNetError, match="not a torch.nn.Module"):
        discretize("a string")


def test_a_strided_discrete_convolution_has_the_gradients_of_a_float_one():
    torch.manual_seed(0)
    layer = DiscreteConv2d(3, 4, 3, 3, padding=1, stride=2)
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    w = layer.weight().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.conv2d(x2, w, padding=1, stride=2)
    ref.backward(g)
    assert torch.allclose(y, ref, atol=1e-5) and torch.allclose(x.grad, x2.grad, atol=1e-5)
    assert torch.allclose(layer.weight_grad, w.grad, atol=1e-4)


def test_the_resnet_presets_build_for_their_data_and_train(cli, runs_dir):
    from gxnor_cli.config import load_config
    from gxnor_cli.models.nets import model_from_config

    cfg = load_config(["model=resnet20", "data=cifar10"])
    model = model_from_config(cfg, (3, 32, 32), 10)  # in_channels and num_classes come from the data
    convs = [m for m in model.modules() if isinstance(m, DiscreteConv2d)]
    assert len(convs) == 19 + 2 and sum(m.stride == 2 for m in convs) == 4  # two stages start strided
    # 3*16*9 + 6*16*16*9 + (16*32*9 + 5*32*32*9 + 16*32) + (32*64*9 + 5*64*64*9 + 32*64) + 64*10
    assert sum(m.num_weights for m in convs) + model[-2].num_weights == 270_896
    code, out, err = cli("train", "model=resnet8", "model.width=8", "trainer.epochs=3", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["test_acc"] > 0.5
    assert_onnx_agrees(cli, result["run_id"], load_trained(checkpoint.load(result["checkpoint"]))[1],
                       runs_dir.parent / "resnet8.onnx")
    code, _, err = cli("train", "model=resnet8", "model.depth=9")
    assert code == 2 and "depth must be 6 n + 2" in err


def test_onnx_export_of_an_own_net_with_a_float_first_layer_a_view_and_a_concat(tmp_path):
    """Straight from Python, no training: float first conv (non-square kernel, bias), avg pool,
    two branches concatenated, x.view(N, -1), a Linear with a bias; random BatchNorm statistics."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from gxnor_cli.deploy.onnx_graph import export_own_onnx

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 6, (3, 5), padding=(1, 2))
            self.bn, self.act = nn.BatchNorm2d(6), nn.Hardtanh()
            self.a, self.b = nn.Conv2d(6, 4, 3, padding=1, bias=False), nn.Conv2d(6, 4, 1, bias=False)
            self.bn2, self.act2, self.pool = nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2)
            self.fc = nn.Linear(8 * 4 * 4, 10)

        def forward(self, x):
            y = self.act(self.bn(self.stem(x)))
            y = self.pool(self.act2(self.bn2(torch.cat([self.a(y), self.b(y)], 1))))
            return self.fc(y.view(y.size(0), -1))

    torch.manual_seed(0)
    model = discretize(Net(), weight_states=5, act_states=3, float_first=True).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    images = torch.randint(0, 17, (32, 1, 8, 8), dtype=torch.uint8)
    export_own_onnx(model, (1, 8, 8), 10, 16.0, tmp_path / "m.onnx", "test")
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": images.numpy().astype("float32")})[0]
    with torch.no_grad():
        want = model(images.float() * (2 / 16) - 1).numpy()
    assert abs(got - want).max() < 1e-4 * max(1.0, abs(want).max())


class Tiny(nn.Module):
    """Every op of the packed graph: a strided conv with a bias, a 1x1 shortcut, a residual,
    max pooling with padding, global average pooling, flatten and a dense layer."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.Hardtanh()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.short = nn.Sequential(nn.Conv2d(6, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
        self.pool, self.avg, self.gap = nn.MaxPool2d(2, padding=1), nn.AvgPool2d(2, stride=1), nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        z = self.act2(self.bn2(self.conv2(y)) + self.short(y))
        return self.fc(self.gap(self.avg(self.pool(z))).flatten(1))


def tiny_graph_net(weight_states: int, act_states: int, seed: int = 0) -> nn.Module:
    """Tiny, discretized, with random states and BatchNorm statistics (eval mode)."""
    torch.manual_seed(seed)
    model = discretize(Tiny(), weight_states=weight_states, act_states=act_states)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-2, 2)
            m.running_var.uniform_(0.5, 4)
            m.weight.data.uniform_(-1.5, 1.5)  # negative scales too
    for m in model.modules():
        if isinstance(m, (DiscreteConv2d, DiscreteLinear)):
            m.state.copy_(m.space.from_index(torch.randint(0, m.space.states, m.state.shape)))
    return model.eval()


@pytest.mark.parametrize("weight_states, act_states", [(3, 3), (5, 9), (2, 2), (17, 3)])
def test_the_packed_graph_computes_what_the_torch_model_computes(tmp_path, weight_states, act_states):
    """Every op of the version-3 graph against torch, for several spaces: the same scores
    (float32 rounding apart) and the same class on every one of 500 random images."""
    from gxnor_cli.data.splits import scale
    from gxnor_cli.deploy.fold_graph import export_graph
    from gxnor_cli.deploy.graph_engine import load_packed

    model = tiny_graph_net(weight_states, act_states)
    manifest = export_graph(model, (1, 8, 8), 10, 16.0, {"data": "digits"}, tmp_path / "tiny.gxnor")
    assert {n["op"] for n in manifest["nodes"]} == {"conv", "dense", "affine", "phi", "add", "maxpool", "avgpool",
                                                   "flatten"}
    images = np.random.default_rng(1).integers(0, 17, (500, 1, 8, 8), dtype=np.uint8)
    with torch.no_grad():
        want = model(scale(torch.from_numpy(images), 16.0)).double().numpy()
    engine = load_packed(tmp_path / "tiny.gxnor")
    got = engine.scores(images)
    assert abs(got - want).max() < 1e-4 * max(1.0, abs(want).max())
    assert (got.argmax(1) == want.argmax(1)).all()
    opened = [row["gates_opened"] for row in engine.event_table()]
    assert len(opened) == 4 and all(0 < o for o in opened)


def test_what_the_packed_graph_cannot_express_is_refused_naming_the_node(tmp_path):
    from gxnor_cli.deploy.fold_graph import export_graph

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3), nn.Hardtanh()
            self.fc = nn.Linear(4 * 36, 10)

        def forward(self, x):
            return self.fc(self.act(torch.cat([self.a(x), self.b(x)], 1)).flatten(1))

    cases = [(discretize(Tiny(), float_first=True), "node conv (Conv2d) keeps float weights"),
             (discretize(Tiny(), act_states=None), "node act (Hardtanh) has no form in the packed format"),
             (discretize(Concat()), "node cat (call_function cat) has no form in the packed format")]
    for model, message in cases:
        with pytest.raises(UserError) as refused:
            export_graph(model.eval(), (1, 8, 8), 10, 16.0, {}, tmp_path / "x.gxnor")
        assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "x.gxnor").exists()


@pytest.mark.parametrize("weight_states, act_states", [(3, 3), (5, 9), (2, 2), (17, 3)])
def test_the_qonnx_export_of_a_packed_graph_runs_through_finns_flow_exactly(tmp_path, weight_states, act_states):
    """The QONNX form of the packed graph: after qonnx's clean-up with batch 1 and 4, and after
    LowerConvsToMatMul and InferDataTypes, it gives the engine's scores exactly; inference_cost
    counts its MACs by data type (integer codes times integer weights)."""
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul
    from qonnx.util.cleanup import cleanup_model
    from qonnx.util.inference_cost import inference_cost

    from gxnor_cli.deploy import packed
    from gxnor_cli.deploy.fold_graph import export_graph
    from gxnor_cli.deploy.graph_engine import load_packed
    from gxnor_cli.deploy.qonnx_graph import export_graph_qonnx

    source = {"data": "digits", "arch": "", "weight_states": weight_states, "act_states": act_states}
    export_graph(tiny_graph_net(weight_states, act_states), (1, 8, 8), 10, 16.0, source, tmp_path / "t.gxnor")
    export_graph_qonnx(*packed.read(tmp_path / "t.gxnor"), tmp_path / "t.qonnx.onnx")
    images = np.random.default_rng(1).integers(0, 17, (8, 1, 8, 8), dtype=np.uint8)
    want = load_packed(tmp_path / "t.gxnor").scores(images)

    def run(model, batch):
        name_in, name_out = model.graph.input[0].name, model.graph.output[0].name
        return np.concatenate([execute_onnx(model, {name_in: images[i:i + batch].astype(np.float32)})[name_out]
                               for i in range(0, len(images), batch)])

    for batch in (1, 4):
        assert np.array_equal(run(cleanup_model(ModelWrapper(str(tmp_path / "t.qonnx.onnx")), override_inpsize=batch),
                                  batch), want)
    lowered = cleanup_model(ModelWrapper(str(tmp_path / "t.qonnx.onnx")), override_inpsize=1)
    lowered = lowered.transform(LowerConvsToMatMul()).transform(InferDataTypes())
    assert "Conv" not in {n.op_type for n in lowered.graph.node} and np.array_equal(run(lowered, 1), want)
    lowered.save(str(tmp_path / "lowered.onnx"))
    cost = inference_cost(str(tmp_path / "lowered.onnx"), output_json=None, output_onnx=None,
                          discount_sparsity=False)["total_cost"]
    weights = "BIPOLAR" if weight_states == 2 else f"INT{int(np.ceil(np.log2(weight_states // 2 + 1))) + 1}"
    codes = "INT2" if act_states in (2, 3) else f"INT{int(np.ceil(np.log2(act_states)))}"
    assert cost.get(f"op_mac_{codes}_{weights}", 0) > 0, cost  # the hidden convolutions: codes times weights


@pytest.mark.slow  # 40 s: CI runs it with -m slow
def test_an_own_net_trains_on_two_processes_and_resumes_in_its_run(nets):
    """Data-parallel training of an own residual net (two gloo ranks, the states checked
    identical after every epoch), then a resume from its last.pt that carries on in the same
    run to epoch 3."""
    import os
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    args = ["model._target_=mynets.resnet", "model.width=4", "data.limit=200", "trainer.batch_size=40",
            "trainer.threads=1"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MLFLOW_TRACKING_URI")}

    def gxnor(*more: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gxnor_cli", "train", *args, *more], cwd=nets.parent, env=env,
                              capture_output=True, text=True, timeout=300)

    done = gxnor("trainer.epochs=2", "trainer.devices=2", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("ranks agree: the states of all 2 ranks are identical after epoch") == 2
    run_id = json.loads(done.stdout)["run_id"]
    last = nets / "checkpoints" / run_id / "last.pt"
    done = subprocess.run([sys.executable, "-m", "gxnor_cli", "train", f"trainer.resume={last}", "trainer.epochs=3",
                           "--json"], cwd=nets.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "epoch 3/3" in done.stderr, done.stderr
    assert json.loads(done.stdout)["run_id"] == run_id
    (run,) = runs_in_store(nets)
    assert run.info.status == "FINISHED" and run.data.params["trainer.devices"] == "2"
    assert [e["epoch"] for e in checkpoint.load(last)["history"]] == [1, 2, 3]
    assert [m.step for m in MlflowClient(f"sqlite:///{nets / 'mlflow.db'}").get_metric_history(run_id, "val_acc")] == \
        [1, 2, 3]
