"""The `gxnor` command line (the only module that imports typer).

Exit codes: 0 ok; 1 the run failed; 2 usage, config or input error (one line on
stderr); 130 interrupted.  Heavy imports (torch, hydra, mlflow) happen inside commands.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from . import __version__
from .errors import RunFailed, UserError
from .interrupt import exit_code, install_interrupt_handler, quiet_broken_pipe
from .tracking.locate import locate_model
from .tracking.report import epoch_line, fmt, show_eval, table
from .tracking.store import Store

def config_help() -> str:
    """Every group option and key, generated from the config schema (gxnor_cli/config.py)."""
    from .config import SELECTABLE, default_config_dir, describe, group_options

    conf = default_config_dir()
    lines = ["Configuration is composed by Hydra from conf/ and overridden with key=value words.", "",
             "Groups (pick one option):"]
    lines += [f"  {g}={'|'.join(group_options(conf, g)) or '(none)'}" for g in SELECTABLE]
    lines += ["", "Keys (key=value; type, default, meaning):"]
    lines += [f"  {name} ({kind}, {default}): {meaning}" for name, kind, default, meaning in describe()]
    lines += ["", "State counts are 2 (binary) or 2^N+1 (3, 5, 9, ...); null means full precision."]
    return "\n\n".join(lines).replace("\n\n\n\n", "\n\n")


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help=f"gxnor {__version__}: train, evaluate, export and sweep networks whose weights and "
                       "activations live in small discrete spaces (GXNOR-Net).")
RUNS_DIR = typer.Option("runs", "--runs-dir", metavar="DIR", help="Where gxnor keeps runs (checkpoints, the default store).")
TRACKING_URI = typer.Option(None, "--tracking-uri", metavar="URI", help="MLflow store to find runs in (default: "
                            "$MLFLOW_TRACKING_URI, else sqlite:///<runs-dir>/mlflow.db).")
err = Console(stderr=True)
out = Console() if sys.stdout.isatty() else Console(width=160)  # pipes and logs get whole tables


def fail(message: str) -> None:
    """A user error: main() prints it as one line on stderr and exits 2."""
    raise UserError(message)


class EpochProgress:
    """Progress on stderr: on a terminal, a bar over the epochs and one over the current epoch's
    samples (samples/s, time left); else one plain line per epoch."""

    def __init__(self):
        self.bar, self.total, self.epoch_start = None, 0, 0.0

    def start(self, run_id: str, cfg) -> None:
        q = cfg.quant
        print(f"run {run_id}  {cfg.data.name}  {cfg.model.arch}  W{q.weight_states}/A{q.act_states}  "
              f"dst={cfg.dst.rule}", file=sys.stderr, flush=True)
        self.total, self.epoch_start = cfg.trainer.epochs, time.perf_counter()
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description:>6}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=err)
            self.run_task = self.bar.add_task("epochs", total=self.total, status="")
            self.epoch_task = self.bar.add_task("epoch", total=1, status="")
            self.bar.start()

    def batch(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        rate = done / max(time.perf_counter() - self.epoch_start, 1e-9)
        self.bar.update(self.epoch_task, completed=done, total=total, status=f"{rate:,.0f} samples/s")

    def update(self, m: dict) -> None:
        self.epoch_start = time.perf_counter()
        if self.bar is None:
            print(epoch_line(m, self.total), file=sys.stderr, flush=True)
        else:
            self.bar.update(self.run_task, completed=m["epoch"],
                            status=f"loss {m['train_loss']:.4f}  val {fmt(m['val_acc'], 'acc')}")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@app.command(epilog=config_help())
def train(
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides, e.g. quant.window=0.7 data=mnist"),
    config_dir: Optional[Path] = typer.Option(None, "--config-dir", metavar="DIR", help="Use your own conf/ instead of gxnor's."),
    json_out: bool = typer.Option(False, "--json", metavar="", help="Print the final metrics as JSON."),
):
    """Train a network; every run is logged to MLflow (gxnor ui to browse).

    Examples:

      gxnor train

      gxnor train experiment=fashion_gxnor

      gxnor train quant=multilevel quant.window=0.25 dst=rms
    """
    from .config import load_config

    overrides = list(overrides or [])
    cfg = load_config(overrides, config_dir)  # bad input ends here, before torch is loaded
    from .training.launch import train as train_run
    from .training.run import Hooks

    progress = EpochProgress()
    try:
        result = train_run(cfg, overrides, Hooks(progress.start, progress.update, progress.batch),
                           tags={"gxnor.command": "train"})
    finally:
        progress.stop()
    if result.get("rank", 0) != 0:  # torchrun: rank 0 reports
        return
    if json_out:
        print(json.dumps(result, indent=1))
        return
    keys = ["test_acc", "best_val_acc", "best_epoch", "test_resting_prob", "test_act_zero_frac",
            "test_weight_zero_frac", "bits_per_weight", "export_bytes"]
    table("result", ["metric", "value"], [(k, result[k]) for k in keys if k in result], out)
    out.print(f"run id     {result['run_id']}\ncheckpoint {result['checkpoint']}\n"
              f"tracking   {result['tracking_uri']}", highlight=False)


@app.command("eval")
def evaluate_cmd(
    run: str = typer.Argument(..., help="MLflow run id, run directory or checkpoint file."),
    split: str = typer.Option("test", metavar="train|val|test", help="The data split."),
    json_out: bool = typer.Option(False, "--json", metavar="", help="Print the results as JSON."),
    out_dir: str = RUNS_DIR,
    uri: Optional[str] = TRACKING_URI,
    data_root: Optional[str] = typer.Option(None, "--data-root", metavar="DIR", help="Read the dataset from here instead."),
    batch_size: int = typer.Option(1000, min=1, metavar="N", help="Samples per evaluation batch."),
    engine: str = typer.Option("torch", metavar="torch|packed", help="torch (a run or checkpoint) or packed (an exported .gxnor file)."),
    kernel: str = typer.Option("auto", "--kernel", metavar="auto|onnxruntime|gemm|xnor", help="Packed engine: "
                               "onnxruntime (fast, needs 'gxnor\\[runtime]'), gemm (exact integer sums through BLAS) "
                               "or xnor (gated XNOR on bit planes, the reference); auto: onnxruntime when installed. "
                               "gemm and xnor count the events per layer."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", metavar="FILE", help="Also write each sample's prediction "
                                               "to this CSV file (index,label,prediction), to diff models."),
):
    """Accuracy, per-layer sparsity and resting probability of a trained run on a data split.

    With --engine packed, RUN is an exported file and the numpy gated-XNOR engine runs it,
    reporting its measured events per layer."""
    if split not in ("train", "val", "test"):
        fail(f"--split must be train, val or test; got {split!r}")
    if engine not in ("torch", "packed"):
        fail(f"--engine must be torch or packed; got {engine!r}")
    if kernel not in ("auto", "onnxruntime", "gemm", "xnor"):
        fail(f"--kernel must be auto, onnxruntime, gemm or xnor; got {kernel!r}")
    if predictions is not None and (predictions.is_dir() or not predictions.parent.is_dir()):
        fail(f"--predictions {predictions}: give a file in an existing directory")
    source = locate_model(run, Store.of(uri, out_dir), exported=engine == "packed")
    if engine == "packed":  # numpy (and onnxruntime) only: no torch to import
        from .deploy.evaluate import evaluate_file

        result = evaluate_file(source, split, kernel, data_root, batch_size, predictions)
    else:
        from .runs import evaluate

        result = evaluate(source, split, data_root, batch_size, predictions)
    if json_out:
        print(json.dumps(result, indent=1))
    else:
        show_eval(result, split, out)


@app.command()
def export(
    run: str = typer.Argument(..., help="MLflow run id, run directory or checkpoint file."),
    out_path: Optional[Path] = typer.Option(None, "--out", metavar="FILE", help="Output file (default runs/exports/<run>.gxnor)."),
    fmt: str = typer.Option("packed", "--format", metavar="packed|onnx|qonnx",
                       help="packed (true bit width, integer thresholds) | onnx (float graph) | qonnx (Quant and "
                            "MultiThreshold nodes, for FINN-style flows); onnx and qonnx need pip install "
                            "'gxnor\\[onnx]'."),
    out_dir: str = RUNS_DIR,
    uri: Optional[str] = TRACKING_URI,
):
    """Write a trained model as it really is, at its bit width; logged to the run in MLflow.

    The packed format stores the states radix-packed and folds BatchNorm and the activations
    into integer thresholds; onnx and qonnx write graphs for other runtimes."""
    if out_path is not None and out_path.is_dir():
        fail(f"--out {out_path} is a directory; give a file name")
    if out_path is not None and not out_path.parent.is_dir():
        fail(f"--out {out_path}: directory {out_path.parent} does not exist")
    store = Store.of(uri, out_dir)
    source = locate_model(run, store)
    from .runs import export as export_run

    done = export_run(source, fmt, store, out_path, explicit_store=uri is not None)
    logged = f"  logged to run {done['logged_to']}" if done["logged_to"] else ""
    print(f"wrote {done['path']} ({done['bytes']:,} bytes){logged}")
    if "weights" in done:
        weights, size, fp32 = done["weights"], done["bytes"], done["fp32_bytes"]
        print(f"{weights:,} weights: {done['packed_bytes']:,} bytes packed "
              f"({8 * done['packed_bytes'] / weights:.2f} bits/weight), file {size:,} bytes, "
              f"fp32 weights {fp32:,} bytes: {fp32 / size:.1f}x smaller")


@app.command()
def summary(
    target: str = typer.Argument(..., help="A run id, checkpoint or exported .gxnor file."),
    samples: int = typer.Option(256, min=1, metavar="N", help="Test samples the gated operations are measured on."),
    out_dir: str = RUNS_DIR,
    uri: Optional[str] = TRACKING_URI,
    data_root: Optional[str] = typer.Option(None, "--data-root", metavar="DIR", help="Read the dataset from here instead."),
    json_out: bool = typer.Option(False, "--json", metavar="", help="Print the table as JSON."),
):
    """Per-layer states, bits, bytes at rest, MACs and gated operations measured on data."""
    source = locate_model(target, Store.of(uri, out_dir), exported=Path(target).is_file())
    from .runs import summary as summarise

    rows, totals = summarise(source, samples, data_root)
    n = totals["samples"]
    if json_out:
        print(json.dumps({"layers": rows, "totals": totals}, indent=1))
        return
    cols = ["layer", "kind", "states", "weights", "bits", "limit", "bytes", "macs", "gated_ops", "resting_prob",
            "mode"]
    table(f"per layer (MACs and gated ops per sample, measured on {n} test samples)", cols,
          [[r[c] for c in cols] for r in rows] + [["total", "", "", totals["weights"], "", "", totals["bytes"],
                                                  totals["macs"], totals["gated_ops"], "", ""]], out)
    out.print(f"file {totals['file_bytes']:,} bytes; fp32 weights {totals['fp32_bytes']:,} bytes; "
              f"{totals['compression_vs_fp32']:.1f}x smaller; "
              f"{fmt(1 - totals['gated_ops'] / totals['macs'], 'gated_off')} of all MACs gated off", highlight=False)


@app.command(epilog=config_help())
def sweep(
    overrides: Optional[List[str]] = typer.Argument(None, help="Overrides; sweep ones take a,b,c / range() / choice()."),
    grid: Optional[str] = typer.Option(None, "--grid", metavar="NAME", help="A named grid from conf/sweep/NAME.yaml."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, metavar="N", help="Trials in parallel (each gets cores/jobs threads)."),
    launcher: str = typer.Option("local", "--launcher", metavar="NAME", help="How trials run: local | submitit_local | slurm | "
                                 "ray; settings as launcher.key=value (conf/launcher/NAME.yaml)."),
    config_dir: Optional[Path] = typer.Option(None, "--config-dir", metavar="DIR", help="Use your own conf/ instead of gxnor's."),
):
    """Train every point of a grid as nested MLflow runs; re-running resumes.

    Examples:

      gxnor sweep quant.weight_states=2,3,5 quant.act_states=2,3 trainer.epochs=10

      gxnor sweep quant=gxnor,bnn quant.window=0.3,0.5,0.7 --jobs 2

      gxnor sweep --grid states
    """
    from .config import default_config_dir
    from .sweeps.grid import expand, load_grid, merge_overrides

    overrides = list(overrides or [])
    # how trials run and how big a grid may be: no part of the sweep's identity
    settings = [o for o in overrides if o.startswith("launcher.")]
    limits = [o for o in overrides if o.startswith("sweep.")]
    overrides = [o for o in overrides if not o.startswith(("launcher.", "sweep."))]
    if grid:
        overrides = merge_overrides(load_grid(grid, (config_dir or default_config_dir()).resolve()), overrides)
    if not overrides:
        fail("nothing to sweep: give overrides such as quant.window=0.3,0.5 or --grid NAME")
    def count(n: int) -> None:  # composing a point takes a fraction of a second: say so when it adds up
        if n >= 20:
            print(f"sweep: {n:,} points (each composed and checked before the first trains)", file=sys.stderr,
                  flush=True)

    points = expand(overrides, config_dir, max_points(limits), count)  # all checked before torch loads
    from .sweeps.launchers import make_launcher
    from .sweeps.report import results_rows
    from .sweeps.sweep import execute

    runner = make_launcher(launcher, jobs, settings, config_dir)
    show, stop = _sweep_progress()
    try:
        points, parent_id, status = execute(points, overrides, runner, show)
    finally:
        stop()
    columns, rows = results_rows(points, short=True)
    table(f"sweep {parent_id} ({status}); * = Pareto front of accuracy vs resting probability", columns, rows, out)
    failed = [p for p in points if p.status in ("FAILED", "KILLED")]
    for p in failed:
        print(f"gxnor: trial {p.key} {'failed' if p.status == 'FAILED' else 'was stopped'}: {p.error}",
              file=sys.stderr)
    if failed:
        raise typer.Exit(1)


def max_points(words: list[str]) -> int:
    """``sweep.max_points=N`` (the only sweep.* setting), else the default."""
    from .sweeps.grid import MAX_POINTS

    limit = MAX_POINTS
    for word in words:
        key, _, value = word.partition("=")
        if key != "sweep.max_points" or not value.isdigit() or int(value) < 1:
            fail(f"{word!r}: the one sweep setting is sweep.max_points=N (N >= 1)")
        limit = int(value)
    return limit


def _sweep_progress():
    """A live table of the trials on a terminal, else a line per trial-epoch and per ended trial."""
    if sys.stderr.isatty():
        from rich.live import Live
        from rich.table import Table

        live = Live(console=err, refresh_per_second=4, transient=True)
        live.start()

        def show(points):
            grid = Table(title="sweep", title_justify="left")
            for name in ["#", *points[0].axes, "status", "progress", "test_acc"]:
                grid.add_column(name)
            for i, p in enumerate(points, 1):
                acc = p.metrics.get("test_acc")
                grid.add_row(str(i), *p.axes.values(), p.status, p.progress if p.status == "RUNNING" else "",
                             fmt(acc, "test_acc"))
            live.update(grid)

        return show, live.stop
    reported: dict[str, str] = {}

    def plain(points):
        for i, p in enumerate(points, 1):
            if p.status in ("FINISHED", "FAILED", "SKIPPED", "KILLED"):
                line = f"{p.status:<8} " + (f"test_acc {fmt(p.metrics['test_acc'], 'acc')}" if "test_acc" in p.metrics
                                             else p.error)
            elif p.status == "RUNNING" and p.progress:
                line = f"RUNNING  {p.progress}"
            else:
                continue
            if reported.get(p.key) != line:
                reported[p.key] = line
                where = " ".join(f"{k}={v}" for k, v in p.axes.items())
                print(f"[{i}/{len(points)}] {where}  {line}", file=sys.stderr, flush=True)

    return plain, lambda: None


@app.command("sync")
def sync_cmd(
    target: Optional[str] = typer.Argument(None, help="A run id (or prefix), run directory or pending.json; "
                                                      "default: every run under --runs-dir that kept calls."),
    out_dir: str = RUNS_DIR,
):
    """Send what runs kept on disk while their tracking store was away.

    Each run then shows its true status.  Exit 0 only when everything landed; running it
    again sends nothing twice."""
    from .tracking.client import sync
    from .tracking.locate import pending_files
    from .tracking.store import StoreError

    files = pending_files(target, Path(out_dir))
    if not files:
        print(f"nothing to send: no run under {Path(out_dir) / 'checkpoints'} kept logging calls")
        return
    left = 0
    for path in files:
        try:
            sent, kept = sync(path, Path(out_dir))
        except StoreError as err:
            sent, kept = 0, -1
            print(f"gxnor: run {path.parent.name}: {err}", file=sys.stderr)
        left += kept != 0
        state = "all sent" if kept == 0 else "the store is still away, the rest is kept"
        print(f"run {path.parent.name}: {sent} calls sent; {state}")
    if left:
        raise typer.Exit(1)


@app.command()
def ui(
    port: int = typer.Option(5000, metavar="N", help="Port on 127.0.0.1."),
    out_dir: str = RUNS_DIR,
    uri: Optional[str] = TRACKING_URI,
    experiment: str = typer.Option("gxnor", "--experiment", metavar="NAME", help="MLflow experiment whose runs to link to."),
):
    """Open the MLflow UI for gxnor's runs on http://127.0.0.1:PORT (job execution off).

    Prints a link to the runs table and, after a sweep, one to a compare view of its trials."""
    import signal
    import socket

    from .tracking.client import serve_ui, ui_links

    if not 1 <= port <= 65535:
        fail(f"--port must be in 1..65535; got {port}")
    store = Store.of(uri, out_dir)
    if not store.exists():
        fail(f"no runs yet: {store.describe()} does not exist (run gxnor train first)")
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            fail(f"port {port} on 127.0.0.1 is in use; choose another with --port")
    def stop(signum, frame):  # Ctrl-C or SIGTERM stops the UI at once: its normal end
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    links = ui_links(store, port, experiment)
    err.print(f"MLflow UI for {store.describe()} (Ctrl-C to stop)", highlight=False)
    for name, link in links.items():
        err.print(f"  {name:<6} {link}", highlight=False, soft_wrap=True)
    try:
        code = serve_ui(store, port)
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code if code in (0, None) else 1)


@app.callback(invoke_without_command=True)
def main_options(version: bool = typer.Option(False, "--version", metavar="", help="Print the version and exit.")):
    if version:
        print(f"gxnor {__version__}")
        raise typer.Exit(0)


def option_hint(usage: Exception) -> str:
    """For ``--epochs 3``: how to set a config key instead (``trainer.epochs=3``)."""
    name = getattr(usage, "option_name", None)
    if not name:
        return ""
    from .config import key_named

    key = key_named(name)
    if key is None:
        return ""
    after = sys.argv[sys.argv.index(name) + 1:] if name in sys.argv else []
    value = after[0] if after and not after[0].startswith("-") else "..."
    return f"; config keys are set as key=value: {key}={value}"


def main() -> None:
    """Console-script entry: maps errors to exit codes and one-line messages."""
    install_interrupt_handler()
    try:
        code = app(standalone_mode=False)  # click returns typer.Exit codes instead of raising
        if code == 130:  # typer turns Ctrl-C into Exit(130); the runs were already ended KILLED
            print("gxnor: interrupted", file=sys.stderr)
            code = exit_code()
        sys.exit(code if isinstance(code, int) else 0)
    except UserError as error:
        print(f"gxnor: error: {error}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as error:
        print(f"gxnor: error: {error}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        print("gxnor: interrupted", file=sys.stderr)
        sys.exit(exit_code())
    except typer.TyperException as usage:  # click usage errors: unknown option, missing argument
        message = usage.format_message() if hasattr(usage, "format_message") else str(usage)
        if message:  # (no command at all: the usage is already printed)
            print(f"gxnor: error: {message}{option_hint(usage)}", file=sys.stderr)
        sys.exit(getattr(usage, "exit_code", 2))
    except BrokenPipeError:
        sys.exit(quiet_broken_pipe())
    except Exception:
        traceback.print_exc()
        print("gxnor: error: the run failed (traceback above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
