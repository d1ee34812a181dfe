"""The reproduction table: the paper's MNIST net on Fashion-MNIST, one row per quantisation.

Each row trains the net with gxnor's own loop (the code `gxnor train` runs, with the same
config; the row's overrides are printed so any row can be rerun as a tracked
`gxnor train`), selects the checkpoint on the validation split and reports its test
accuracy:

    float        full precision, same net and loop (the fair baseline)
    float-b64    the same at batch 64 (full precision does a little better with more steps)
    gxnor-adam   ternary W + ternary A, Adam-driven DST (the authors' code; 8 B/weight state)
    gxnor-mom8   ternary W + ternary A, int8 momentum of the RMS-normalised gradient (1 B/weight)
    gxnor-rms    ternary W + ternary A, per-tensor RMS-normalised dW (no per-weight state)
    gxnor-sgd    ternary W + ternary A, dW = -lr g (the paper; no per-weight state)
    bnn          binary W + binary A
    multilevel   5-state W + 5-state A
    twn          ternary W + full-precision activations
    gxnor-init   gxnor-adam started from the float row's trained weights (model.init_from)
    gxnor-kd     gxnor-adam matching the float row's scores (trainer.teacher: distillation)
    gxnor-init-kd  both
    gxnor-w1.5   gxnor-adam with every hidden layer 1.5x wider (model.width=1.5)
    gxnor-w2     the same, 2x wider
    gxnor-rms-init  gxnor-rms (no per-weight state) started from the float row's weights
    gxnor-hyst   gxnor-adam with dst.transition=hysteresis (an int8 position per weight: the
                 state changes once the steps add up to half a state) at lr 0.3
    gxnor-mom8-hyst  the same with mom8 (3 B/weight of training state)
    gxnor-rms-hyst   the same with rms (its only per-weight state is the position)
    gxnor-mom8-hyst-init  gxnor-mom8-hyst started from the float row's trained weights

The init and kd rows read the float row's checkpoint from the same --out (train it first);
their cost is that row's training time on top of their own.

    python bench/accuracy.py                          # every row, one after another
    python bench/accuracy.py --jobs 9 trainer.device=cuda    # rows in parallel on one GPU
    python bench/accuracy.py --rows float,gxnor-adam --jobs 2
    python bench/accuracy.py data=digits model=digits_net    # minutes on a CPU

Every row starts from `experiment=fashion_gxnor` (conf/experiment/: the paper's MNIST net
on Fashion-MNIST, 20 epochs, batch 256, DST beta1 0.99); extra overrides (`key=value`)
apply to every row after it.  Each row's history is written to
--out/<row>.json after every epoch, so a stopped run keeps what it measured.
Needs Fashion-MNIST (apt-get install dataset-fashion-mnist, or data.root=DIR).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROWS = {
    "float": ["quant=float"],
    "float-b64": ["quant=float", "trainer.batch_size=64"],
    "gxnor-adam": ["quant=gxnor", "dst=adam"],
    "gxnor-mom8": ["quant=gxnor", "dst=mom8"],
    "gxnor-rms": ["quant=gxnor", "dst=rms"],
    "gxnor-sgd": ["quant=gxnor", "dst=sgd"],
    "bnn": ["quant=bnn"],
    "multilevel": ["quant=multilevel"],
    "twn": ["quant=twn"],
    "gxnor-init": ["quant=gxnor", "dst=adam", "model.init_from={float}"],
    "gxnor-kd": ["quant=gxnor", "dst=adam", "trainer.teacher={float}"],
    "gxnor-init-kd": ["quant=gxnor", "dst=adam", "model.init_from={float}", "trainer.teacher={float}"],
    "gxnor-w1.5": ["quant=gxnor", "dst=adam", "model.width=1.5"],
    "gxnor-w2": ["quant=gxnor", "dst=adam", "model.width=2"],
    "gxnor-rms-init": ["quant=gxnor", "dst=rms", "model.init_from={float}"],
    "gxnor-hyst": ["quant=gxnor", "dst=adam", "dst.transition=hysteresis", "optim.lr=0.3"],
    "gxnor-mom8-hyst": ["quant=gxnor", "dst=mom8", "dst.transition=hysteresis", "optim.lr=0.3"],
    "gxnor-rms-hyst": ["quant=gxnor", "dst=rms", "dst.transition=hysteresis", "optim.lr=0.03"],
    "gxnor-mom8-hyst-init": ["quant=gxnor", "dst=mom8", "dst.transition=hysteresis", "optim.lr=0.3",
                             "model.init_from={float}"],
}


def with_float_checkpoint(overrides: list[str], out: str) -> list[str]:
    """``{float}`` in an override -> the float row's selected checkpoint in ``out``."""
    float_checkpoint = Path(out) / "checkpoints" / "float" / "best.pt"
    if any("{float}" in o for o in overrides) and not float_checkpoint.is_file():
        sys.exit(f"accuracy: no {float_checkpoint}; run the float row with the same --out first")
    return [o.replace("{float}", str(float_checkpoint)) for o in overrides]


def write(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def latent_state_bytes(weights, moments) -> int:
    """Bytes kept between steps for float weights: each weight, its gradient and the
    optimizer's per-weight ``moments`` (Adam: m and v)."""
    return sum(2 * w.numel() * w.element_size() for w in weights) + sum(t.numel() * t.element_size() for t in moments)


def state_bytes_per_weight(trainer) -> float:
    """Training state kept between steps per weight: int8 states + the DST rule's state, or
    (float weights) what :func:`latent_state_bytes` counts."""
    from gxnor_cli.discrete.layers import discrete_layers

    layers = discrete_layers(trainer.model)
    if layers:
        n = sum(layer.num_weights for _, layer in layers)
        return (sum(layer.state.numel() * layer.state.element_size() for _, layer in layers)
                + trainer.dst.state_bytes()) / n
    from torch import nn

    weights = {id(m.weight): m.weight for m in trainer.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    adam = trainer.optimizer
    moments = [t for group, ms, vs in zip(adam.param_groups, adam.m, adam.v)
               for p, m, v in zip(group["params"], ms, vs) if id(p) in weights for t in (m, v)]
    return latent_state_bytes(weights.values(), moments) / sum(w.numel() for w in weights.values())


def run_row(name: str, overrides: list[str], out: str, threads: int) -> dict:
    """Train one row in this process; returns its final metrics (also written to out/name.json)."""
    import torch

    from gxnor_cli.config import load_config
    from gxnor_cli.training.run import prepare, teacher_of
    from gxnor_cli.training.loop import Trainer
    from gxnor_cli.training.group import Solo, resolve_device

    torch.set_num_threads(threads)
    cfg = load_config(overrides)
    device = resolve_device(cfg.trainer.device)
    data, model = prepare(cfg)
    trainer = Trainer(cfg, model, data, Solo(device), teacher=teacher_of(cfg, data), run_dir=Path(out) / "checkpoints" / name)
    record = {"row": name, "overrides": overrides, "resolved": cfg.to_dict(), "device": str(device), "epochs": cfg.trainer.epochs,
              "rule": cfg.dst.rule if cfg.quant.weight_states else "(float weights: Adam)", "history": trainer.history}
    start = time.perf_counter()
    result = trainer.fit(lambda metrics: write(Path(out) / f"{name}.json", record))
    record.update(result, wall_s=time.perf_counter() - start, done=True,
                  state_bytes_per_weight=state_bytes_per_weight(trainer))
    write(Path(out) / f"{name}.json", record)
    return record


def _run_row_safely(args: tuple, run=run_row) -> dict:
    name = args[0]
    try:
        return run(*args)
    except Exception as err:  # one failed row must not stop the table
        return {"row": name, "error": f"{type(err).__name__}: {err}"}


def finished(out: str, name: str, overrides: list[str]) -> dict | None:
    """The record of row ``name`` in ``out`` if it finished with the config these ``overrides``
    give now (the same defaults too), else None.  Records written before rows kept their
    ``resolved`` config are matched on the overrides alone."""
    from gxnor_cli.config import load_config

    path = Path(out) / f"{name}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not record.get("done"):
        return None
    if "resolved" in record:
        return record if record["resolved"] == json.loads(json.dumps(load_config(overrides).to_dict())) else None
    return record if record.get("overrides") == overrides else None


def run_rows(rows: dict[str, list[str]], out: str, jobs: int = 1, runner=_run_row_safely, keep: bool = False) -> list[dict]:
    """Train ``rows`` ({name: overrides}), ``jobs`` at a time, each in its own process, by
    ``runner((name, overrides, out, threads))``.  ``keep``: a row that already finished in
    ``out`` with the same overrides is read back, not trained again (a stopped table picks up
    where it was)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    results, work = [], []
    for name, overrides in rows.items():
        record = finished(out, name, overrides) if keep else None
        if record:
            print(f"{name}: finished before, read from {Path(out) / f'{name}.json'}", flush=True)
            results.append(record)
        else:
            work.append((name, overrides, out, threads))
    with multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
        for r in pool.imap_unordered(runner, work):
            results.append(r)
            if "error" in r:
                print(f"{r['row']}: failed: {r['error']}", flush=True)
            else:
                print(f"{r['row']}: test {r['test_acc']:.4f} val {r['best_val_acc']:.4f} "
                      f"({r.get('wall_s', r.get('train_time_s', 0)):.0f} s)", flush=True)
    order = list(rows)
    return sorted((r for r in results if "error" not in r), key=lambda r: order.index(r["row"]))


def pick(parser: argparse.ArgumentParser, text: str, known: dict, what: str) -> list[str]:
    """Comma-separated names from ``known``; an unknown one is a usage error."""
    names = text.split(",")
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown {what} {unknown}; choose from {', '.join(known)}")
    return names


def table(results: list[dict]) -> str:
    lines = ["| row | config | DST rule | epochs | wall s | val acc | test acc | resting prob | act zero | "
             "weight zero | transition rate (last epoch) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        config = " ".join(o for o in r["overrides"] if not o.startswith(("data.root=", "trainer.device=", "trainer.threads=")))
        config = re.sub(r"=\S*/checkpoints/float/best\.pt", "=<float row>", config)
        lines.append(f"| {r['row']} | `{config}` | {r['rule']} | {r['epochs']} | {r['wall_s']:.0f} | {r['best_val_acc']:.4f} | "
                     f"{r['test_acc']:.4f} | {r.get('test_resting_prob', 0):.3f} | "
                     f"{r.get('test_act_zero_frac', 0):.3f} | {r.get('test_weight_zero_frac', 0):.3f} | "
                     f"{r.get('last_transition_rate', 0):.5f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--experiment", default="fashion_gxnor", help="conf/experiment/ preset every row starts from")
    parser.add_argument("--jobs", type=int, default=1, help="rows trained at the same time")
    parser.add_argument("--out", default="runs/accuracy", help="per-row histories and checkpoints")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every row")
    args = parser.parse_args()
    names = pick(parser, args.rows, ROWS, "rows")
    results = run_rows({n: with_float_checkpoint([f"experiment={args.experiment}", *ROWS[n], *args.overrides], args.out)
                        for n in names},
                       args.out, args.jobs)
    print()
    print(table(results))
    by_row = {r["row"]: r for r in results}
    fields = " ".join(f"{n.replace('-', '_')}_test_acc={r['test_acc']:.4f}" for n, r in by_row.items())
    gap = ""
    floats = [by_row[n]["test_acc"] for n in ("float", "float-b64") if n in by_row]
    if floats and "gxnor-adam" in by_row:
        gap = f" ternary_gap_points={100 * (max(floats) - by_row['gxnor-adam']['test_acc']):.2f}"
    print(f"RESULT rows={len(results)} {fields}{gap}")


if __name__ == "__main__":
    main()
