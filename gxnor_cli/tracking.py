"""MLflow tracking: the only module that imports mlflow.

Store: ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///<abs out_dir>/mlflow.db`` with artifacts under ``<out_dir>/artifacts``.
A run gets the flattened config as params, tags (overrides, git sha, version),
per-epoch metrics (step = epoch) and artifacts.  Sweeps nest child runs under a parent
through the ``mlflow.parentRunId`` tag.  Logging goes through :class:`MlflowClient`
(no global active run), so several runs can be open in one process.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from . import __version__
from .errors import UserError

STATUSES = ("FINISHED", "FAILED", "KILLED")


def tracking_uri(uri: Optional[str], out_dir: str) -> str:
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def _client(uri: str):
    import logging

    # alembic's migration chatter on a fresh store is not the user's business
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Run:
    """One MLflow run (new, or an existing one to continue)."""

    def __init__(self, uri: str, experiment: str, out_dir: str, run_id: Optional[str] = None,
                 run_name: Optional[str] = None, tags: Optional[dict[str, str]] = None,
                 parent_id: Optional[str] = None, keep_status: bool = False):
        self.uri = uri
        self.client = _client(uri)
        if run_id is not None:
            self.run_id = run_id
            if not keep_status:
                self.client.update_run(run_id, status="RUNNING")
            return
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_ARTIFACT_ROOT"):
                location = (Path(out_dir).resolve() / "artifacts").as_uri()
            exp_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        all_tags = {"gxnor.version": __version__, "gxnor.git_sha": git_sha(), **(tags or {})}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        self.experiment_id = exp_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        assert status in STATUSES
        self.client.set_terminated(self.run_id, status=status)


def find_run(uri: str, run_id: str) -> dict:
    """Info and data of an existing run; UserError when the store has no such run."""
    from mlflow.exceptions import MlflowException

    try:
        run = _client(uri).get_run(run_id)
    except MlflowException:
        raise UserError(f"no run {run_id!r} in the tracking store {uri}") from None
    return {"run_id": run.info.run_id, "status": run.info.status, "params": dict(run.data.params),
            "metrics": dict(run.data.metrics), "tags": dict(run.data.tags)}


def download_artifact(uri: str, run_id: str, artifact_path: str, dest: Path) -> Path:
    from mlflow.exceptions import MlflowException

    try:
        return Path(_client(uri).download_artifacts(run_id, artifact_path, str(dest)))
    except (MlflowException, OSError) as err:
        raise UserError(f"run {run_id!r} has no artifact {artifact_path!r}: {str(err).splitlines()[0]}") from None


def child_runs(uri: str, experiment: str, parent_id: str) -> list[dict]:
    """Children of a sweep's parent run: run id, status, params and metrics."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                              max_results=5000)
    return [{"run_id": r.info.run_id, "status": r.info.status, "params": dict(r.data.params),
             "metrics": dict(r.data.metrics), "tags": dict(r.data.tags)} for r in runs]


def find_runs_by_tag(uri: str, experiment: str, key: str, value: str) -> list[dict]:
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{key}` = '{value}'", max_results=100)
    return [{"run_id": r.info.run_id, "status": r.info.status, "tags": dict(r.data.tags)} for r in runs]


def serve_ui(uri: str, out_dir: str, port: int) -> int:
    """Run the MLflow UI on 127.0.0.1 with job execution off; returns its exit code."""
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    if uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", (Path(out_dir).resolve() / "artifacts").as_uri()]
    return subprocess.call(cmd, env=env)
