"""Packed export and the gated-XNOR engine: exact folding, identical predictions, bad files."""

import json

import numpy as np
import pytest
import torch

from gxnor_cli import checkpoint
from gxnor_cli.deploy import packed
from gxnor_cli.discrete.activation import MultiStep
from gxnor_cli.discrete.space import Space
from gxnor_cli.deploy.engine import PackedModel, popcount
from gxnor_cli.deploy.fold import fold_thresholds, predict_torch
from gxnor_cli.deploy.fold_graph import export_run

from conftest import TINY


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_bit_packing_round_trip(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**bits, 1001)
    data = packed.pack_bits(values, bits)
    assert data.nbytes == -(-1001 * bits // 8)
    assert np.array_equal(packed.unpack_bits(data, bits, 1001), values)


@pytest.mark.parametrize("states", [2, 3, 5, 9, 17, 33, 65, 129])
def test_radix_packing_round_trip_at_close_to_log2_states_bits(states):
    rng = np.random.default_rng(states)
    for count in (1, 39, 40, 41, 1000):
        index = rng.integers(0, states, count)
        words = packed.pack_radix(index, states)
        assert words.dtype == np.uint64 and np.array_equal(packed.unpack_radix(words, states, count), index)
    g = packed.per_word(states)
    assert states**g <= 2**64 < states ** (g + 1)
    assert np.log2(states) <= packed.weight_bits(states) < np.log2(states) * 1.13  # 1.6 bits for ternary
    assert packed.weight_bits(3) == 1.6 and packed.weight_bits(3, version=1) == 2


def test_popcount():
    words = np.array([0, 1, 2**63, 2**64 - 1, 0b1011], dtype=np.uint64)
    assert popcount(words).tolist() == [0, 1, 1, 64, 3]


@pytest.mark.parametrize("states, window", [(2, 0.0), (3, 0.5), (3, 0.0), (5, 0.25), (9, 0.3)])
def test_folded_thresholds_equal_bn_then_phi(states, window):
    """Integer thresholds reproduce phi(alpha A + b) exactly, negative and zero BN scales included."""
    rng = np.random.default_rng(states)
    act = MultiStep(Space(states), window=window)
    alpha = rng.normal(size=40) * 0.05
    alpha[:3] = [0.0, -0.02, 0.03]
    b = rng.normal(size=40)
    folded = fold_thresholds(alpha, b, act.steps)
    acc = rng.integers(-300, 300, size=(64, 40))
    z = torch.tensor(alpha * acc + b, dtype=torch.float64)
    expected = (act.levels(z) / act.space.unit).round().numpy().astype(int)
    a = acc * folded["flip"].astype(np.int64)
    if states == 2:
        got = np.where(a >= folded["hi"][:, 0], 1, -1)
    else:
        got = sum((a >= folded["hi"][:, k]).astype(int) - (a <= folded["lo"][:, k]).astype(int)
                  for k in range(folded["hi"].shape[1]))
    assert np.array_equal(got, expected)


def trained(cli, runs_dir, *extra):
    code, out, err = cli("train", *TINY, *extra, "--json")
    assert code == 0, err
    result = json.loads(out)
    return result, checkpoint.load(result["checkpoint"])


@pytest.mark.parametrize("quant", ["quant=gxnor", "quant=bnn", "quant=multilevel"])
def test_engine_predicts_exactly_like_torch(cli, runs_dir, tmp_path, quant):
    from gxnor_cli.config import DataConfig
    from gxnor_cli.data.sources import load_data

    result, payload = trained(cli, runs_dir, quant, "trainer.epochs=3")
    manifest, model = export_run(payload, tmp_path / "m.gxnor")
    engine = PackedModel.load(tmp_path / "m.gxnor")
    data = load_data(DataConfig("digits"), val_fraction=0.1, seed=0)
    want = predict_torch(model, data.test.images, data.max_value)
    got = engine.predict(data.test.images.numpy())
    assert np.array_equal(got, want)  # every test sample, not just the accuracy
    engine.measure, engine.threads = False, 2  # two shares of the test images in the model's thread pool
    assert np.array_equal(engine.predict(data.test.images.numpy()), want)
    reference = PackedModel.load(tmp_path / "m.gxnor", kernel="xnor")  # gated XNOR on bit planes
    assert np.array_equal(reference.scores(data.test.images.numpy()), engine.scores(data.test.images.numpy()))
    states = payload["config"]["quant"]["weight_states"]
    per_word = packed.per_word(states)
    weights = sum(int(np.prod(l["weight"]["shape"])) for l in manifest["layers"])
    blob_bytes = sum(b["length"] for k, b in manifest["blobs"].items() if k.endswith(".weight"))
    assert blob_bytes == sum(8 * -(-int(np.prod(l["weight"]["shape"])) // per_word) for l in manifest["layers"])
    assert blob_bytes * 8 / weights < np.log2(states) * 1.05 + 64 * len(manifest["layers"]) / weights
    assert manifest["bytes"] < blob_bytes + 12_000  # packed weights plus a small manifest
    # version 1 (bit-packed) files are still read, and predict the same
    export_run(payload, tmp_path / "v1.gxnor", version=1)
    assert np.array_equal(PackedModel.load(tmp_path / "v1.gxnor").predict(data.test.images.numpy()), want)


def test_engine_resting_probability_matches_torch_measurement(cli, runs_dir, tmp_path):
    result, payload = trained(cli, runs_dir)
    export_run(payload, tmp_path / "m.gxnor")
    code, out, err = cli("eval", "--engine", "packed", str(tmp_path / "m.gxnor"), "--json")
    assert code == 0, err
    fast = json.loads(out)  # the default kernel: onnxruntime where installed, which counts no events
    assert fast["kernel"] in ("onnxruntime", "gemm") and fast["acc"] == pytest.approx(result["test_acc"])
    code, out, err = cli("eval", "--engine", "packed", "--kernel", "gemm", str(tmp_path / "m.gxnor"), "--json")
    assert code == 0, err
    engine = json.loads(out)
    assert engine["acc"] == pytest.approx(result["test_acc"])
    assert engine["resting_prob"] == pytest.approx(result["test_resting_prob"], abs=1e-9)
    assert engine["layers"][1]["mode"] == "gemm"
    code, out, err = cli("eval", "--engine", "packed", "--kernel", "xnor", str(tmp_path / "m.gxnor"), "--json")
    assert code == 0, err
    xnor = json.loads(out)
    assert xnor["layers"][1]["mode"] == "gated-xnor" and xnor["layers"][1]["popcount_words"] > 0
    assert xnor["acc"] == engine["acc"] and xnor["resting_prob"] == engine["resting_prob"]
    assert [l["gates_opened"] for l in xnor["layers"]] == [l["gates_opened"] for l in engine["layers"]]


def test_export_and_summary_commands(cli, runs_dir):
    result, _ = trained(cli, runs_dir)
    code, out, err = cli("export", result["run_id"])
    assert code == 0, err
    assert "(1.61 bits/weight)" in out  # 4,488 ternary weights in whole 40-weight words: 1.6 bits each
    target = runs_dir / "exports" / f"{result['run_id']}.gxnor"
    assert target.is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    assert [a.path for a in client.list_artifacts(result["run_id"], "export")] == [f"export/{target.name}"]
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
    code, out, err = cli("summary", str(target), "--json", "--samples", "20")
    assert code == 0, err
    summary = json.loads(out)
    totals = summary["totals"]
    assert totals["compression_vs_fp32"] == pytest.approx(4 * totals["weights"] / target.stat().st_size)
    assert totals["bytes"] == sum(8 * -(-row["weights"] // 40) for row in summary["layers"])
    assert all(row["bits"] == 1.6 and row["limit"] == pytest.approx(1.585, abs=1e-3) for row in summary["layers"])
    assert totals["samples"] == 20
    code, out, err = cli("summary", result["run_id"], "--samples", "10")  # from the run, as a table
    assert code == 0, err
    assert "x smaller" in out and "of all MACs gated off" in out
    code, out, err = cli("eval", "--engine", "packed", str(target))
    assert code == 0, err
    assert "onnxruntime" in out and "counted by --kernel gemm or xnor" in out and "popcount_words" not in out
    code, out, err = cli("eval", "--engine", "packed", "--kernel", "gemm", str(target))
    assert code == 0, err
    assert "gemm" in out and "popcount_words" in out
    assert all(0 <= row["resting_prob"] <= 1 for row in summary["layers"])


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated"), ("checksum", "checksum mismatch"), ("version", "format version 99"),
    ("magic", "not a gxnor packed model"), ("manifest", "corrupt manifest"),
])
def test_damaged_packed_files_are_refused(cli, runs_dir, tmp_path, damage, message):
    result, payload = trained(cli, runs_dir)
    path = tmp_path / "m.gxnor"
    export_run(payload, path)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[:-50]
    elif damage == "checksum":
        raw[-3] ^= 0xFF
    elif damage == "version":
        raw[8:12] = (99).to_bytes(4, "little")
    elif damage == "magic":
        raw[:4] = b"NOPE"
    else:
        raw[20] = 0xFF
    path.write_bytes(bytes(raw))
    code, _, err = cli("eval", "--engine", "packed", str(path))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_float_model_cannot_be_packed(cli, runs_dir):
    result, _ = trained(cli, runs_dir, "quant=twn")
    code, _, err = cli("export", result["run_id"])
    assert code == 2 and "discrete weights and discrete activations" in err


def test_onnx_export_predicts_like_torch(cli, runs_dir, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from gxnor_cli.config import DataConfig
    from gxnor_cli.data.sources import load_data
    from gxnor_cli.models.nets import load_trained

    result, payload = trained(cli, runs_dir, "trainer.epochs=3")
    code, out, err = cli("export", result["run_id"], "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert code == 0, err
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    data = load_data(DataConfig("digits"))
    scores = session.run(["scores"], {"input": data.test.images.numpy().astype(np.float32)})[0]
    _, model = load_trained(payload)
    want = predict_torch(model, data.test.images, data.max_value)
    # a float graph: summation order may differ from torch's, so allow a rare flip at a threshold
    assert (scores.argmax(1) == want).mean() >= 0.99


def _edit(manifest, blobs, change):
    layer = manifest["layers"][0]
    if change == "bits":
        layer["weight"]["bits"] = 3
    elif change == "dtype":
        blobs["layer0.hi"] = blobs["layer0.hi"].astype(np.float32)
    elif change == "padding":
        layer["padding"] = 0
    elif change == "pool":
        layer["pool"] = 3
    elif change == "states":
        layer["weight"]["states"] = 5
    elif change == "kind":
        layer["kind"] = "attention"
    elif change == "missing":
        del layer["input"]
    elif change == "flip":
        blobs["layer0.flip"] = np.full_like(blobs["layer0.flip"], 2)


@pytest.mark.parametrize("change, message", [
    ("bits", "bits 3 for 3 states"), ("dtype", "is float32, expected int32"), ("padding", "does not fit"),
    ("pool", "does not fit"), ("states", "codes do not match 5 states"), ("kind", "unknown kind 'attention'"),
    ("missing", "missing or malformed"), ("flip", "flip must be"), ("trailing", "trailing bytes"),
])
def test_malformed_manifests_are_refused_in_one_line(cli, runs_dir, tmp_path, change, message):
    result, payload = trained(cli, runs_dir)
    path = tmp_path / "m.gxnor"
    export_run(payload, path)
    if change == "trailing":
        path.write_bytes(path.read_bytes() + b"\0" * 8)
    else:
        manifest, blobs = packed.read(path)
        blobs = {k: np.array(v) for k, v in blobs.items()}
        manifest.pop("blobs")
        _edit(manifest, blobs, change)
        packed.write(path, manifest, blobs)
    for args in (("eval", "--engine", "packed", str(path)), ("summary", str(path))):
        code, _, err = cli(*args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (change, err)


@pytest.mark.parametrize("quant", ["quant=gxnor", "quant=bnn", "quant=multilevel"])
def test_qonnx_export_loads_checks_and_predicts_exactly_like_torch(cli, runs_dir, tmp_path, quant):
    pytest.importorskip("qonnx", reason="needs qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    from gxnor_cli.config import DataConfig
    from gxnor_cli.data.sources import load_data
    from gxnor_cli.models.nets import load_trained

    result, payload = trained(cli, runs_dir, quant, "trainer.epochs=3")
    target = tmp_path / "m.qonnx.onnx"
    code, out, err = cli("export", result["run_id"], "--format", "qonnx", "--out", str(target))
    assert code == 0, err
    data = load_data(DataConfig("digits"))
    images = data.test.images.numpy().astype(np.float32)
    from qonnx.util.cleanup import cleanup_model

    model = cleanup_model(ModelWrapper(str(target)))  # qonnx's own clean-up and checks pass over it
    name_in, name_out = model.graph.input[0].name, model.graph.output[0].name
    model.set_tensor_shape(name_in, list(images.shape))  # qonnx executes fixed shapes
    model = model.transform(InferShapes())
    ops = {n.op_type for n in model.graph.node}
    assert {"Quant", "MultiThreshold"} <= ops or quant == "quant=bnn" and "MultiThreshold" in ops
    scores = execute_onnx(model, {name_in: images})[name_out]
    _, torch_model = load_trained(payload)
    want = predict_torch(torch_model, data.test.images, data.max_value)
    assert np.array_equal(scores.argmax(1), want)  # every sample: integer arithmetic, as the packed engine
    # FINN's flow, after the documented clean-up with a batch size: batch 1 and 4 agree, convolutions
    # lower to matrix products, data types infer, inference_cost counts the integer MACs
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul
    from qonnx.util.inference_cost import inference_cost

    outputs = {}
    for batch in (1, 4):
        fixed = cleanup_model(ModelWrapper(str(target)), override_inpsize=batch)
        name_in, name_out = fixed.graph.input[0].name, fixed.graph.output[0].name
        assert fixed.get_tensor_shape(name_in) == [batch, 1, 8, 8] and str(fixed.get_tensor_datatype(name_in)) == "UINT5"
        outputs[batch] = np.concatenate([execute_onnx(fixed, {name_in: images[i:i + batch]})[name_out]
                                         for i in range(0, 8, batch)])
    lowered = cleanup_model(ModelWrapper(str(target)), override_inpsize=1)
    lowered = lowered.transform(LowerConvsToMatMul()).transform(InferDataTypes())
    assert "Conv" not in {n.op_type for n in lowered.graph.node}
    name_in, name_out = lowered.graph.input[0].name, lowered.graph.output[0].name
    low = np.concatenate([execute_onnx(lowered, {name_in: images[i:i + 1]})[name_out] for i in range(8)])
    assert np.array_equal(outputs[1], outputs[4]) and np.array_equal(outputs[1], low)
    assert np.array_equal(outputs[1].argmax(1), want[:8])
    weight_types = {str(lowered.get_tensor_datatype(n.input[1])) for n in lowered.graph.node if n.op_type == "MatMul"}
    states = payload["config"]["quant"]["weight_states"]
    assert weight_types == ({"BIPOLAR"} if states == 2 else {f"INT{int(np.ceil(np.log2(states // 2 + 1))) + 1}"})
    lowered.save(str(tmp_path / "lowered.onnx"))
    cost = inference_cost(str(tmp_path / "lowered.onnx"), output_json=None, output_onnx=None,
                          discount_sparsity=False)["total_cost"]
    assert cost["total_macs"] > 0 and cost["total_mem_w_elems"] == sum(
        b.numel() for n, b in torch_model.named_buffers() if n.endswith("weight.state"))
