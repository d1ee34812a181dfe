"""Shared fixtures: compose-based configs, a migrated MLflow store, the real entry point."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

# A tiny net and few samples: a full train+eval in a second or two.
TINY = ["model.arch=8C3-MP2-32FC-10", "trainer.epochs=2", "data.limit=300", "trainer.batch_size=50",
        "trainer.threads=1"]


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An MLflow sqlite store migrated once per session (migrations take seconds)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def runs_dir(tmp_path, mlflow_template, monkeypatch) -> Path:
    """A fresh runs/ directory holding a copy of the migrated store; cwd is tmp_path."""
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copy(mlflow_template, runs / "mlflow.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return runs


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``gxnor ARGS...`` through the console-script entry point; returns (code, stdout, stderr)."""
    from gxnor_cli.entry import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["gxnor", *args])
        try:
            main()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def runs_in_store(runs: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    exps = client.search_experiments()
    return client.search_runs([e.experiment_id for e in exps]) if exps else []
