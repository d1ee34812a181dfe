"""Wall time of a 4-point `gxnor sweep` with --jobs 1 vs --jobs 2, side by side.

The grid is weight states {2, 3} x activation states {2, 3} of the default digits net
(--epochs each, default 30: trials of ~7 s, where fixed costs weigh; 150: ~30 s).  Each
sweep runs as a real `gxnor` command in its own empty directory whose MLflow store was
migrated beforehand (migrations are not what we time).  --jobs 2 gives each of two workers
cores/2 torch threads; --jobs 1 gives the one trial all cores.  Two ratios: of the whole
command's wall time, and of the trials' span (first child run's start to last one's end, as
MLflow recorded them: what the sweep's own start-up and results leave out).

    python bench/sweep_jobs.py [--epochs E]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["quant.weight_states=2,3", "quant.act_states=2,3"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    epochs = parser.parse_args().epochs
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template.db"
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
        wall, span = {}, {}
        for jobs in (1, 2):
            work = Path(tmp) / f"jobs{jobs}"
            (work / "runs").mkdir(parents=True)
            shutil.copy(template, work / "runs" / "mlflow.db")
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "gxnor_cli", "sweep", *GRID, f"trainer.epochs={epochs}",
                            "--jobs", str(jobs)], cwd=work, check=True, capture_output=True, text=True)
            wall[jobs] = time.perf_counter() - start
            client = MlflowClient(tracking_uri=f"sqlite:///{work / 'runs' / 'mlflow.db'}")
            runs = [r for r in client.search_runs(["1"]) if "mlflow.parentRunId" in r.data.tags]
            span[jobs] = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
    print(f"4-point sweep on digits ({epochs} epochs per point), {os.cpu_count()} cores")
    for jobs in (1, 2):
        print(f"--jobs {jobs}: {wall[jobs]:6.1f} s, trials {span[jobs]:6.1f} s")
    print(f"RESULT epochs={epochs} jobs1_s={wall[1]:.1f} jobs2_s={wall[2]:.1f} speedup_jobs2={wall[1] / wall[2]:.2f} "
          f"trials_speedup_jobs2={span[1] / span[2]:.2f}")


if __name__ == "__main__":
    main()
