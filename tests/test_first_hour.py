"""What a new user meets in the first hour, through the real entry point: run ids, messages
for the wrong kind of file, predictions to diff, file modes, help that lists everything."""

from __future__ import annotations

import csv
import json
import os
import stat

from conftest import TINY, runs_in_store


def train(cli) -> str:
    code, out, err = cli("train", *TINY, "--json")
    assert code == 0, err
    return json.loads(out)["run_id"]


def test_a_unique_prefix_names_a_run_and_eval_json_is_pure(cli, runs_dir):
    run_id = train(cli)
    code, out, err = cli("eval", run_id[:8], "--json")
    assert code == 0, err
    assert json.loads(out)["samples"] > 0  # stdout holds the JSON alone


def test_eval_of_a_sweep_lists_its_children(cli, runs_dir):
    code, _, err = cli("sweep", "quant.window=0.3,0.6", *TINY)
    assert code == 0, err
    parent = next(r for r in runs_in_store(runs_dir) if "mlflow.parentRunId" not in r.data.tags)
    kids = [r.info.run_id[:8] for r in runs_in_store(runs_dir) if "mlflow.parentRunId" in r.data.tags]
    code, _, err = cli("eval", parent.info.run_id)
    assert code == 2 and "is a sweep" in err and all(k in err for k in kids)


def test_predictions_of_both_engines_agree_and_the_wrong_engine_says_what_to_type(cli, runs_dir, tmp_path):
    run_id = train(cli)
    packed = tmp_path / "m.gxnor"
    code, out, err = cli("export", run_id, "--out", str(packed))
    assert code == 0, err
    code, _, err = cli("eval", str(packed))
    assert code == 2 and f"gxnor eval --engine packed {packed}" in err
    rows = {}
    for engine, ref in (("torch", run_id), ("packed", str(packed))):
        target = tmp_path / f"{engine}.csv"
        code, out, err = cli("eval", ref, "--engine", engine, "--predictions", str(target), "--json")
        assert code == 0, err
        with open(target) as handle:
            rows[engine] = list(csv.DictReader(handle))
        accuracy = sum(r["label"] == r["prediction"] for r in rows[engine]) / len(rows[engine])
        assert accuracy == json.loads(out)["acc"]
    assert rows["torch"] == rows["packed"] and len(rows["torch"]) == json.loads(out)["samples"]


def test_exports_name_their_run_not_a_local_path_and_files_follow_the_umask(cli, runs_dir, tmp_path):
    old = os.umask(0o022)
    try:
        run_id = train(cli)
        target = tmp_path / "m.gxnor"
        code, _, err = cli("export", run_id, "--out", str(target))
        assert code == 0, err
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE((runs_dir / "checkpoints" / run_id / "best.pt").stat().st_mode) == 0o644
    data = target.read_bytes()
    assert run_id.encode() in data and str(runs_dir).encode() not in data


def test_export_refuses_a_directory_or_a_missing_parent(cli, runs_dir, tmp_path):
    run_id = train(cli)
    code, _, err = cli("export", run_id, "--out", str(tmp_path))
    assert code == 2 and "is a directory" in err
    code, _, err = cli("export", run_id, "--out", str(tmp_path / "no" / "such" / "m.gxnor"))
    assert code == 2 and "does not exist" in err and not (tmp_path / "no").exists()


def test_help_lists_every_key_of_the_schema(cli):
    from gxnor_cli.config import describe

    code, out, _ = cli("train", "--help")
    assert code == 0
    flat = " ".join(out.split())
    for name, _, _, _ in describe():
        assert name in flat, name
    code, out, _ = cli("export", "--help")
    assert "gxnor[onnx]" in " ".join(out.split())


def test_non_finite_numbers_are_refused_before_any_run(cli, runs_dir):
    for override in ("quant.window=nan", "optim.lr=inf", "dst.m=-inf"):
        code, _, err = cli("train", *TINY, override)
        assert code == 2 and len(err.strip().splitlines()) == 1, (override, err)
    assert runs_in_store(runs_dir) == []


def test_no_command_prints_the_usage_and_no_empty_error(cli):
    code, out, err = cli()
    assert code == 2 and "Usage:" in out and "train" in out and "gxnor: error" not in err


def test_words_that_are_no_overrides_say_what_to_write(cli, runs_dir):
    code, _, err = cli("train", "epochs", "3")
    assert code == 2 and "e.g. trainer.epochs=3" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("train", "--epochs", "3")
    assert code == 2 and "No such option: --epochs" in err and "trainer.epochs=3" in err
    code, _, err = cli("sweep", "--window", "0.3")
    assert code == 2 and "quant.window=0.3" in err
    assert runs_in_store(runs_dir) == []


def test_eval_and_summary_agree_on_bits_and_bytes(cli, runs_dir):
    """One definition of a layer's size at rest (the packed format's), named alike in both."""
    code, out, err = cli("train", *TINY, "quant=multilevel", "--json")
    assert code == 0, err
    result = json.loads(out)
    code, out, _ = cli("eval", result["run_id"], "--json")
    evaluated = [(row["bits"], row["bytes"]) for row in json.loads(out)["layers"]]
    code, out, _ = cli("summary", result["run_id"], "--json")
    summarised = [(row["bits"], row["bytes"]) for row in json.loads(out)["layers"]]
    assert evaluated == summarised and evaluated[0][0] < 3  # 5 states: 2.29 bits, not 3
    assert result["bits_per_weight"] < 3 and result["export_bytes"] > sum(b for _, b in evaluated)


def test_data_root_is_refused_for_the_embedded_digits(cli, runs_dir, tmp_path):
    code, _, err = cli("train", *TINY, f"data.root={tmp_path}")
    assert code == 2 and "mean nothing for digits" in err and runs_in_store(runs_dir) == []
    run_id = train(cli)
    code, _, err = cli("eval", run_id, "--data-root", str(tmp_path))
    assert code == 2 and "--data-root means nothing for digits" in err


def test_eval_of_an_onnx_export_says_what_it_reads(cli, runs_dir, tmp_path):
    run_id = train(cli)
    onnx = tmp_path / "m.onnx"
    code, _, err = cli("export", run_id, "--format", "onnx", "--out", str(onnx))
    assert code == 0, err
    code, _, err = cli("eval", str(onnx))
    assert code == 2 and "is an ONNX export" in err and len(err.strip().splitlines()) == 1


def test_every_command_that_opens_the_store_ends_dead_runs(cli, runs_dir):
    """A run whose process died (kill -9) is left RUNNING; eval, summary and export mark it."""
    import socket
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    run_id = train(cli)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gxnor").experiment_id
    for command in (["eval", run_id[:8]], ["summary", run_id[:8]], ["export", run_id[:8]]):
        orphan = client.create_run(experiment, tags={"gxnor.host": socket.gethostname(), "gxnor.pid": str(dead.pid)})
        code, _, err = cli(*command)
        assert code == 0, err
        run = client.get_run(orphan.info.run_id)
        assert run.info.status == "KILLED" and f"process {dead.pid}" in run.data.tags["gxnor.error"], command


def test_numbers_print_as_their_kind(cli, runs_dir):
    code, out, err = cli("train", *TINY)
    assert code == 0, err
    rows = dict(line.strip("│ ").split("│")[:2] for line in out.splitlines() if line.count("│") == 3)
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert rows["test_acc"].endswith("%") and rows["test_resting_prob"].endswith("%")
    assert "," in rows["export_bytes"] and rows["bits_per_weight"] == "1.60"
    assert any(line.startswith("epoch ") and "val " in line and "%" in line for line in err.splitlines())


def test_a_mistyped_run_id_is_said_before_torch_or_mlflow_load(runs_dir):
    import subprocess
    import sys

    script = """
import contextlib, io, sys
from gxnor_cli.cli import main
for command in ("eval", "export", "summary"):
    sys.argv = ["gxnor", command, "nope"]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            main()
        except SystemExit as done:
            assert done.code == 2 and "no run 'nope'" in err.getvalue(), (command, err.getvalue())
print(sorted(m for m in ("torch", "mlflow") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=runs_dir.parent)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
