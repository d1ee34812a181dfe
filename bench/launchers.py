"""Overhead per trial of each launcher on a tiny grid, as ratios to in-process trials.

The same 4-point grid of tiny trials (digits, a small net, EPOCHS epochs, one thread each)
runs as a real `gxnor sweep` under each launcher, each in its own directory with a migrated
MLflow store.  Reported per launcher: wall time of the sweep, the trials' own training time
(the sum of the children's train_time_s), and the overhead per trial,

    overhead = (wall - wall of the in-process sweep) / points

plus the wall-time ratio to the in-process sweep.  Launchers whose extra is not installed
are skipped with one line.

    python bench/launchers.py
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCHS = 3
GRID = ["quant.window=0.2,0.4,0.6,0.8", "model.arch=8C3-MP2-32FC-10", "data.limit=300", "trainer.threads=1",
        f"trainer.epochs={EPOCHS}"]
LAUNCHERS = {"in-process": ["--jobs", "1"], "local-jobs2": ["--jobs", "2"],
             "submitit_local": ["--launcher", "submitit_local", "launcher.poll_s=0.2"],
             "ray": ["--launcher", "ray", "launcher.local_cpus=2", "launcher.poll_s=0.2"]}
NEEDS = {"submitit_local": "submitit", "ray": "ray"}


def main() -> None:
    from mlflow.tracking import MlflowClient

    points = 4
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template.db"
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
        for name, args in LAUNCHERS.items():
            if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
                print(f"{name}: skipped (pip install 'gxnor[{'slurm' if name == 'submitit_local' else 'ray'}]')")
                continue
            work = Path(tmp) / name
            (work / "runs").mkdir(parents=True)
            shutil.copy(template, work / "runs" / "mlflow.db")
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "gxnor_cli", "sweep", *GRID, *args], cwd=work, check=True,
                           capture_output=True, text=True)
            wall = time.perf_counter() - start
            client = MlflowClient(tracking_uri=f"sqlite:///{work / 'runs' / 'mlflow.db'}")
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            train = sum(r.data.metrics.get("train_time_s", 0.0) for r in runs if "mlflow.parentRunId" in r.data.tags)
            results[name] = (wall, train)
    base = results["in-process"][0]
    print(f"{points}-point sweep of tiny trials ({EPOCHS} epochs, 1 thread each), {os.cpu_count()} cores")
    print(f"{'launcher':<16}{'wall s':>8}{'train s':>9}{'overhead/trial s':>18}{'wall ratio':>12}")
    for name, (wall, train) in results.items():
        print(f"{name:<16}{wall:8.1f}{train:9.1f}{(wall - base) / points:18.2f}{wall / base:12.2f}")
    fields = " ".join(f"{name.replace('-', '_')}_overhead_s={(wall - base) / points:.2f}"
                      f" {name.replace('-', '_')}_ratio={wall / base:.2f}" for name, (wall, _) in results.items()
                      if name != "in-process")
    print(f"RESULT in_process_s={base:.1f} {fields}")


if __name__ == "__main__":
    main()
