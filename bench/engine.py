"""The packed engine against the runtimes a deployer would use otherwise, side by side.

Two nets, both ternary weights and activations:

    digits   gxnor's default net trained 5 epochs on the 8x8 digits (its test split)
    mnist    the paper's MNIST net (32C5-MP2-64C5-MP2-512FC-10, 28x28) with random weights
             and random BatchNorm statistics, on random 28x28 images (no data needed)

Each is exported (packed, and gxnor's ONNX float graph) and run by

    engine        gxnor's packed engine, default kernel (onnxruntime when installed)
    engine-numpy  the packed engine's numpy gemm kernel
    ort-fp32      onnxruntime on gxnor's ONNX export (float32)
    ort-int8      onnxruntime on that export after its static int8 quantization
                  (QDQ, per-channel weights, calibrated on 200 inputs; not exact)
    torch-fp32    the trained model in torch eval mode

at batch 1 and batch 1000, with 1 and 2 threads, interleaved: 11 rounds, each timing every
runtime over about 50 ms of calls after a 0.3 s pause (numpy's BLAS and torch's OpenMP
threads spin for a while after a call and would slow whichever runtime came next).  Every
onnxruntime session here, the engine's included, lets idle threads sleep instead of spin: a
spinning pool would take the cores from the runtime timed next.

Printed: samples/s per case (medians of the rounds) and engine / ort-fp32, the median of the
rounds' ratios (each from two timings a second apart, so a slow spell of the VM moves both of
its sides); whether engine, engine-numpy, ort-fp32 and torch-fp32 predict the same class for
every sample, and how often ort-int8 does; then whole processes on the digits test split:
`gxnor eval --engine packed`, `gxnor-run` and a plain onnxruntime script (wall time, the
imports included, medians of 5).  RESULT: the smallest ratio of each kind over the 8 cases.

    python bench/engine.py            # about 4 minutes on 2 cores
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from gxnor_cli import checkpoint
from gxnor_cli.config import load_config
from gxnor_cli.data.sources import load_data
from gxnor_cli.deploy.engine import PackedModel
from gxnor_cli.deploy.fold import predict_torch
from gxnor_cli.deploy.fold_graph import export_run
from gxnor_cli.deploy.onnx_graph import export_onnx
from gxnor_cli.deploy.packed import packed_weight_bytes
from gxnor_cli.models.nets import build_model
from gxnor_cli.training.group import Solo
from gxnor_cli.training.loop import Trainer
from gxnor_cli.training.run import prepare

ROUNDS, CALL_S = 11, 0.05  # rounds, interleaved; each times one runtime over >= 50 ms of calls
REST_S = 0.3  # pause before each timing: thread pools that spin after a call must not steal the cores
BATCHES, THREADS = (1, 1000), (1, 2)


def digits_net(tmp: Path) -> tuple[dict, np.ndarray]:
    cfg = load_config(["trainer.epochs=5"])
    data, model = prepare(cfg)
    Trainer(cfg, model, data, Solo(torch.device("cpu")), run_dir=tmp).fit()
    return checkpoint.load(tmp / "best.pt"), load_data(cfg.data).test.images.numpy()


def mnist_net(tmp: Path) -> tuple[dict, np.ndarray]:
    cfg = load_config(["model=mnist_net", "data=mnist"])
    model = build_model(cfg.model, cfg.quant, (1, 28, 28), 10).eval()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.tensor(rng.normal(0, 2, m.num_features)))
                m.running_var.copy_(torch.tensor(rng.uniform(1, 30, m.num_features)))
    payload = {"config": cfg.to_dict(), "model": model.state_dict(), "num_classes": 10, "in_shape": [1, 28, 28],
               "max_value": 255.0}
    return payload, rng.integers(0, 256, (1000, 1, 28, 28), dtype=np.uint8)


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the engine's session
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize_int8(fp32: Path, out: Path, images: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": images[i:i + 20].astype(np.float32)} for i in range(0, 200, 20)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def measure(name: str, payload: dict, images: np.ndarray, tmp: Path) -> tuple[list[dict], bool, float, float]:
    manifest, model = export_run(payload, tmp / f"{name}.gxnor")
    export_onnx(payload, tmp / f"{name}.onnx")
    quantize_int8(tmp / f"{name}.onnx", tmp / f"{name}.int8.onnx", images)
    engine, numpy_engine = PackedModel.load(tmp / f"{name}.gxnor"), PackedModel.load(tmp / f"{name}.gxnor", "gemm")
    numpy_engine.measure = False
    floats = images.astype(np.float32)
    tensor = torch.from_numpy(images)
    rows = []
    for threads in THREADS:
        torch.set_num_threads(threads)
        engine.threads = numpy_engine.threads = threads
        fp32, int8 = session(tmp / f"{name}.onnx", threads), session(tmp / f"{name}.int8.onnx", threads)
        for batch in BATCHES:
            n = min(batch, len(images))
            runs = {"engine": lambda: engine.predict(images[:n], batch),
                    "engine-numpy": lambda: numpy_engine.predict(images[:n], batch),
                    "ort-fp32": lambda: fp32.run(None, {"input": floats[:n]})[0].argmax(1),
                    "ort-int8": lambda: int8.run(None, {"input": floats[:n]})[0].argmax(1),
                    "torch-fp32": lambda: predict_torch(model, tensor[:n], payload["max_value"], batch)}
            start = time.perf_counter()
            for fn in runs.values():
                fn()
            inner = max(1, int(CALL_S * len(runs) / (time.perf_counter() - start)))  # calls per timing
            times = {key: [] for key in runs}
            for _ in range(ROUNDS):
                for key, fn in runs.items():
                    time.sleep(REST_S)  # the last runtime's spinning threads (BLAS, OpenMP) go idle
                    start = time.perf_counter()
                    for _ in range(inner):
                        fn()
                    times[key].append((time.perf_counter() - start) / inner)
            rate = {key: n / statistics.median(t) for key, t in times.items()}
            # each round's ratio from timings seconds apart, then their median: a slow spell of
            # the VM moves both sides of a ratio, where it would move one median only
            ratio = {other: statistics.median(o / e for o, e in zip(times[other], times["engine"]))
                     for other in ("ort-fp32", "ort-int8", "torch-fp32")}
            rows.append({"net": name, "threads": threads, "batch": batch, **rate, "vs": ratio})
            print(f"{name:<7} threads {threads} batch {batch:>5}: " +
                  "  ".join(f"{key} {r:>9,.0f}/s" for key, r in rate.items()) +
                  f"  engine/ort-fp32 {ratio['ort-fp32']:.2f}", flush=True)
    engine.threads = numpy_engine.threads = 1
    want = predict_torch(model, tensor, payload["max_value"])
    same = all(np.array_equal(p, want) for p in (
        engine.predict(images), numpy_engine.predict(images),
        session(tmp / f"{name}.onnx", 1).run(None, {"input": floats})[0].argmax(1)))
    int8_agree = float((session(tmp / f"{name}.int8.onnx", 1).run(None, {"input": floats})[0].argmax(1) == want).mean())
    weights = sum(int(np.prod(layer["weight"]["shape"])) for layer in manifest["layers"])
    return rows, same, int8_agree, 8 * packed_weight_bytes(manifest) / weights


PLAIN_ORT = """
import sys, numpy as np, onnxruntime as ort
x = np.load(sys.argv[2]).astype(np.float32)
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
print(session.run(None, {"input": x})[0].argmax(1).tolist())
"""


def end_to_end(tmp: Path, images: np.ndarray) -> dict[str, float]:
    """Wall time of whole processes on the digits test split, median of 5, interleaved:
    `gxnor eval --engine packed` (reads the dataset itself), `gxnor-run` on the split saved as
    .npy, and a plain onnxruntime script on gxnor's ONNX export and that .npy."""
    import subprocess
    import sys

    np.save(tmp / "test.npy", images)
    (tmp / "plain.py").write_text(PLAIN_ORT)
    commands = {"gxnor-eval": [sys.executable, "-m", "gxnor_cli", "eval", "--engine", "packed", str(tmp / "digits.gxnor")],
                "gxnor-run": [sys.executable, "-m", "gxnor_cli.deploy.run", str(tmp / "digits.gxnor"), str(tmp / "test.npy")],
                "plain-ort": [sys.executable, str(tmp / "plain.py"), str(tmp / "digits.onnx"), str(tmp / "test.npy")]}
    times = {key: [] for key in commands}
    for _ in range(5):
        for key, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, cwd=tmp)
            times[key].append(time.perf_counter() - start)
    seconds = {key: statistics.median(t) for key, t in times.items()}
    print("whole processes on the digits test split: " + "  ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))
    return seconds


def main() -> None:
    rows, identical, bits = [], True, []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in (("digits", digits_net), ("mnist", mnist_net)):
            payload, images = make(Path(tmp))
            got, same, int8_agree, b = measure(name, payload, images, Path(tmp))
            rows += got
            identical &= same
            bits.append(b)
            if name == "digits":
                wall = end_to_end(Path(tmp), images)
            print(f"{name}: engine, engine-numpy, ort-fp32 and torch-fp32 predict the same class for every sample: "
                  f"{same}; ort-int8 agrees with them on {100 * int8_agree:.1f}%; {b:.3f} bits per weight")
    vs_ort = min(r["vs"]["ort-fp32"] for r in rows)
    vs_torch = min(r["vs"]["torch-fp32"] for r in rows)
    vs_int8 = min(r["vs"]["ort-int8"] for r in rows)
    print(f"RESULT engine_vs_ort={vs_ort:.3f} engine_vs_torch={vs_torch:.3f} engine_vs_ort_int8={vs_int8:.3f} "
          f"identical={int(identical)} bits_per_weight={max(bits):.3f} "
          f"eval_vs_plain_ort_wall={wall['gxnor-eval'] / wall['plain-ort']:.2f} "
          f"run_vs_plain_ort_wall={wall['gxnor-run'] / wall['plain-ort']:.2f}")


if __name__ == "__main__":
    main()
