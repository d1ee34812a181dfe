"""Saved views of the MLflow UI: the runs table gxnor opens on, and each sweep's comparison.

MLflow's UI (3.16 and later) keeps a shared view of an experiment's runs page as the
experiment tag ``mlflow.sharedViewState.<key>``, whose value is the page's state as JSON,
and opens it when the page's URL carries ``viewStateShareKey=<key>``.  The state holds the
search facets (filter, sort) and the UI state (visible columns, charts, sections); a column
or sort key is ``<type>.`<name>``` with type ``attributes``, ``params`` or ``metrics``.  Keys
and chart fields below are the ones MLflow's frontend reads (mlflow 3.16-3.17); the view's
JSON is written plain, which the frontend reads as it is.

This module builds the views; :mod:`.client` writes them when it creates an experiment and
when a sweep opens its parent run.
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import quote

TAG = "mlflow.sharedViewState."
RUNS_VIEW = "gxnor-runs"

#: What the runs table shows, left to right (MLflow shows a run's status beside its start time).
COLUMNS = [("metrics", "test_acc"), ("metrics", "best_val_acc"), ("params", "quant.weight_states"),
           ("params", "quant.act_states"), ("params", "quant.window"), ("params", "dst.rule"),
           ("params", "dst.transition"), ("metrics", "bits_per_weight"), ("metrics", "export_bytes"),
           ("metrics", "test_resting_prob"), ("params", "trainer.epochs"), ("attributes", "Created"),
           ("attributes", "Duration")]
#: Keys a sweep's charts plot test accuracy against, when the sweep does not vary others.
STATE_KEYS = ["quant.weight_states", "quant.act_states", "quant.window"]


def column(kind: str, name: str) -> str:
    """MLflow's canonical key of a column: ``metrics.`test_acc```."""
    return f"{kind}.`{name}`"


def _uuid(*parts: str) -> str:
    """A stable id for a chart or section (the frontend only needs ids to be unique)."""
    return hashlib.sha1("/".join(parts).encode()).hexdigest()[:12]


def _state(search_filter: str, charts: list[dict], sections: list[dict]) -> dict:
    return {"searchFilter": search_filter, "orderByKey": column("metrics", "test_acc"), "orderByAsc": False,
            "startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
            "selectedColumns": [column(kind, name) for kind, name in COLUMNS], "runsHiddenMode": "SHOW_ALL",
            "compareRunCharts": charts, "compareRunSections": sections, "isAccordionReordered": False,
            "viewMaximized": False, "runListHidden": False, "hideEmptyCharts": True}


def runs_view() -> dict:
    """Every run, best test accuracy first; a chart of test accuracy against the state counts."""
    section = {"uuid": _uuid("runs", "section"), "name": "Accuracy against states", "display": True,
               "isReordered": False, "deleted": False, "isGenerated": False}
    return _state("", [parallel_chart(STATE_KEYS, section["uuid"], "runs")], [section])


def sweep_view(parent_id: str, axes: list[str]) -> dict:
    """The children of the sweep ``parent_id``: first a chart of test accuracy against the swept
    keys ``axes`` (a scatter for one key, parallel coordinates for several), then one scatter
    per swept key.  A swept group (``quant=gxnor,bnn``) is no param: then the state keys."""
    keys = [a for a in axes if "." in a] or STATE_KEYS
    section = {"uuid": _uuid(parent_id, "section"), "name": "Test accuracy against the swept keys",
               "display": True, "isReordered": False, "deleted": False, "isGenerated": False}
    scatters = [scatter_chart(key, section["uuid"], parent_id) for key in keys]
    charts = scatters if len(keys) == 1 else [parallel_chart(keys, section["uuid"], parent_id), *scatters]
    return _state(f"tags.mlflow.parentRunId = '{parent_id}'", charts, [section])


def scatter_chart(param: str, section: str, scope: str) -> dict:
    return {"uuid": _uuid(scope, "scatter", param), "type": "SCATTER", "runsCountToCompare": 100,
            "metricSectionId": section, "deleted": False, "isGenerated": False,
            "displayName": f"test_acc against {param}", "xaxis": {"key": param, "type": "PARAM"},
            "yaxis": {"key": "test_acc", "type": "METRIC"}}


def parallel_chart(params: list[str], section: str, scope: str) -> dict:
    return {"uuid": _uuid(scope, "parallel", *params), "type": "PARALLEL", "runsCountToCompare": 100,
            "metricSectionId": section, "deleted": False, "isGenerated": False, "showAllRuns": True,
            "displayName": "test_acc against " + ", ".join(params), "selectedParams": list(params),
            "selectedMetrics": ["test_acc"]}


def sweep_key(parent_id: str) -> str:
    return f"sweep-{parent_id[:12]}"


def encode(state: dict) -> str:
    return json.dumps(state, separators=(",", ":"))


def link(base: str, experiment_id: str, key: str, charts: bool = False) -> str:
    """The URL that opens the saved view ``key`` (on its charts with ``charts``) in MLflow's
    Model training pages."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return (f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={quote(key)}{mode}"
            f"&workflowType=machine_learning")
