"""MLflow tracking: the only module that imports mlflow.

Where the store is comes from :class:`.store.Store`.  A run gets the flattened
config as params, tags (overrides, git sha, version, host and pid of the process that
trains it), per-epoch metrics (step = epoch) and artifacts.  Sweeps nest child runs under
a parent through the ``mlflow.parentRunId`` tag.  Logging goes through
:class:`MlflowClient` (no global active run), so several runs can be open in one process.

Faults:
- :func:`check` opens the store before any training (under the store's first-use lock,
  so concurrent first use cannot break a fresh sqlite store) and turns every way it can
  fail (unreachable server, garbage file, unwritable directory) into one StoreError line.
- A run whose logging fails mid-way (a tracking server that went away) keeps training:
  what could not be logged is buffered, one line says so, and it is sent once the store
  answers again (at the next epoch, or at the end).
- A training process beats a heartbeat (the ``gxnor.heartbeat`` tag, every HEARTBEAT_S).
  A RUNNING run whose process died is *stale*: on the same host its pid is gone, on any
  host its heartbeat is older than STALE_S.  :func:`reap_stale` marks stale runs KILLED
  when gxnor next looks at that experiment.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .. import __version__
from ..checkpoint import atomic_write
from ..errors import UserError
from . import views
from .store import SQLITE, Store, StoreError

#: gxnor runs where nothing may phone home (compute nodes without internet, where MLflow's
#: telemetry thread races the run): telemetry is off in every process that loads this module
#: (trials, workers and ranks too) unless the user set it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

STATUSES = ("FINISHED", "FAILED", "KILLED")
#: MLflow's HTTP client retries 7 times with exponential backoff (minutes of silence) by
#: default; gxnor asks for a short wait unless the user set these.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3's UI: a training experiment
HEARTBEAT_S = 30.0
RETRY_S = 10.0  # while the store is away, how often a run asks it again
#: How long a run that has ended waits for a store that went away (a server restarting) before
#: it keeps the rest on disk for gxnor sync; GXNOR_STORE_WAIT_S sets it.
END_WAIT_S = float(os.environ.get("GXNOR_STORE_WAIT_S", "60"))
STALE_S = 300.0
_checked: set[str] = set()


def _client(store: Store):
    import logging

    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # alembic's migration chatter and MLflow's registry notices are not the user's business
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking._tracking_service.client"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store.uri)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def check(store: Store) -> None:
    """Open (create or migrate) the store once per process; StoreError in one line if it cannot be used."""
    if store.uri in _checked:
        return
    if store.sqlite_path is not None and store.out_dir.exists() and not store.out_dir.is_dir():
        raise StoreError(f"the runs directory {store.out_dir} is a file; remove it or set trainer.out_dir")
    if store.is_remote:
        _probe(store)
    with store.first_use():
        try:
            if store.sqlite_path is not None and not store.sqlite_path.exists():
                _create(store)
            _client(store).search_experiments(max_results=1)
        except Exception as err:  # mlflow, sqlalchemy, requests and OS errors all land here
            raise StoreError(f"cannot use the tracking store {store.describe()}: {_first_line(err)}") from None
    _checked.add(store.uri)


def _create(store: Store) -> None:
    """Make a fresh sqlite store atomically: MLflow creates and migrates its tables in a file
    beside it (seconds), which is renamed into place only once complete, so a process killed
    meanwhile (kill -9) leaves no half-made store; its leftover is removed by the next one."""
    path = store.sqlite_path
    for leftover in path.parent.glob(f".{path.name}.new-*"):
        leftover.unlink(missing_ok=True)
    fresh = path.parent / f".{path.name}.new-{os.getpid()}"
    try:
        _client(Store(f"{SQLITE}{fresh}", store.out_dir)).search_experiments(max_results=1)
        os.replace(fresh, path)  # (a connection MLflow keeps to the new file follows it: same inode)
    finally:
        fresh.unlink(missing_ok=True)


def _probe(store: Store, timeout: float = 5.0) -> None:
    """One quick request to a tracking server's /health: seconds, not MLflow's minutes of retries."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{store.uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # it answers; whether it is an MLflow server the next request tells
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise StoreError(f"no tracking server answers at {store.uri} ({reason}); start it or set "
                         f"tracking.uri") from None


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def owner_tags() -> dict[str, str]:
    """Which process trains a run (to recognise stale RUNNING runs later)."""
    return {"gxnor.host": socket.gethostname(), "gxnor.pid": str(os.getpid())}


def experiment_id(store: Store, name: str, create: bool = True) -> Optional[str]:
    """The id of experiment ``name`` (created, as a model-training experiment with gxnor's
    saved runs view, when missing; an older experiment gets what it lacks)."""
    from mlflow.exceptions import MlflowException

    client = _client(store)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        for key, value in experiment_tags().items():
            if key not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    if not create:
        return None
    try:
        return client.create_experiment(name, artifact_location=store.artifact_location, tags=experiment_tags())
    except MlflowException:  # another process created it meanwhile
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def experiment_tags() -> dict[str, str]:
    """What every gxnor experiment carries: MLflow 3's training kind and the saved runs view."""
    return {**EXPERIMENT_KIND, views.TAG + views.RUNS_VIEW: views.encode(views.runs_view())}


def save_view(store: Store, experiment: str, key: str, state: dict) -> None:
    """Store the saved view ``key`` of the UI (see :mod:`.views`) on ``experiment``."""
    _client(store).set_experiment_tag(experiment_id(store, experiment), views.TAG + key, views.encode(state))


class Run:
    """One MLflow run (new, or an existing one to continue) whose logging survives outages."""

    def __init__(self, store: Store, experiment: str, run_id: Optional[str] = None,
                 run_name: Optional[str] = None, tags: Optional[dict[str, str]] = None,
                 parent_id: Optional[str] = None, keep_status: bool = False,
                 warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)):
        check(store)
        self.store = store
        self.client = _client(store)
        self.pending: list[dict] = []  # logging operations the store did not take yet
        self.warn, self.warned, self.failed_at = warn, False, 0.0
        if run_id is not None:
            self.run_id = run_id
            if not keep_status:  # it trains again: what an earlier try kept first, then RUNNING, here, no error
                self.pending = [op for op in kept_ops(pending_file(store, run_id)) if op["op"] != "end"]
                self.warned = bool(self.pending)
                self.flush(force=True)
                self.client.update_run(run_id, status="RUNNING")
                self.set_tags(owner_tags())
                self.clear_tag("gxnor.error")
                self.clear_tag("gxnor.waiting")
            return
        all_tags = {"gxnor.version": __version__, "gxnor.git_sha": git_sha(), **owner_tags(), **(tags or {})}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(experiment_id(store, experiment), run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id

    def start_heartbeat(self, every: float = HEARTBEAT_S) -> Callable[[], None]:
        """Tag the run with the time every ``every`` seconds (its own client, in a daemon
        thread; a store that is away is skipped); returns the function that stops it."""
        import threading

        stop = threading.Event()
        client = _client(self.store)

        def beat() -> None:
            while True:
                try:
                    client.set_tag(self.run_id, "gxnor.heartbeat", str(int(time.time())))
                except Exception:  # the store is away: the next beat tries again
                    pass
                if stop.wait(every):
                    return

        thread = threading.Thread(target=beat, daemon=True, name="gxnor-heartbeat")
        thread.start()

        def halt() -> None:
            stop.set()
            thread.join(timeout=5)

        return halt

    # -- logging: operations kept (in memory and in the run's pending.json) until the store takes them
    def _call(self, op: dict) -> None:
        """Send ``op`` after whatever is still pending; on failure keep it for later."""
        self.pending.append(op)
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send what is pending, in order; True once nothing is left.  While the store is away
        the rest is kept on disk too (:meth:`keep`), so that no kill loses it, and the store is
        asked again at most every RETRY_S seconds (``force``: now)."""
        if self.pending and not force and time.time() - self.failed_at < RETRY_S:
            self.keep()
            return False
        while self.pending:
            try:
                apply(self.client, self.run_id, self.pending[0])
            except Exception as err:  # the store went away: training goes on
                if not self.warned:
                    self.warn(f"gxnor: tracking store {self.store.describe()} not answering ({_first_line(err)}); "
                              f"training goes on, logging calls are kept for later")
                    self.warned = True
                self.failed_at = time.time()
                self.keep()
                return False
            self.pending.pop(0)
        if self.warned:
            self.warn(f"gxnor: tracking store {self.store.describe()} answers again; everything kept was logged")
            self.warned = False
            pending_file(self.store, self.run_id).unlink(missing_ok=True)
        return True

    def keep(self) -> Path:
        """Write what is pending to the run's pending.json (atomically), for ``gxnor sync``."""
        path = pending_file(self.store, self.run_id)
        record = {"format": PENDING_FORMAT, "tracking_uri": self.store.uri, "run_id": self.run_id, "ops": self.pending}
        text = json.dumps(record).encode()
        atomic_write(path, lambda handle: handle.write(text))
        return path

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)  # kept with each value: a resent value is the same value, not a new one
        items = [[k, float(v), now, step] for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), 500):
            self._call({"op": "metrics", "metrics": items[i:i + 500]})

    def resend_epochs(self, history: list[dict]) -> None:
        """Log the epochs of ``history`` (a resumed last.pt's) that the run lacks: a process
        killed between writing last.pt and logging that epoch (a lost node, kill -9) would
        otherwise leave a gap in the run's curves.  Steps still pending count as logged; while
        the store does not answer, nothing is sent (it could double an epoch)."""
        steps = {int(item[3]) for op in self.pending if op["op"] == "metrics" for item in op["metrics"]
                 if item[0] == "val_acc"}
        try:
            steps |= {m.step for m in self.client.get_metric_history(self.run_id, "val_acc")}
        except Exception:  # the store is away: the kept operations are all there is to send
            return
        for metrics in history:
            if metrics["epoch"] not in steps:
                self.log_metrics(metrics, step=metrics["epoch"])

    def log_input(self, name: str, digest: str, source: str, context: str) -> None:
        """Record a dataset this run used (MLflow's Dataset column)."""
        self._call({"op": "input", "name": name, "digest": digest, "source": source, "context": context})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def clear_tag(self, key: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_tag(self.run_id, key)
        except MlflowException:  # it had no such tag
            pass

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        self._call({"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call({"op": "text", "text": text, "file": artifact_file})

    def end(self, status: str = "FINISHED") -> bool:
        """Mark the run ended (after what is pending); False, with one line, if the store is away:
        then all that is left waits in the run's pending.json for ``gxnor sync``."""
        assert status in STATUSES
        self.pending.append({"op": "end", "status": status})
        deadline = time.time() + (END_WAIT_S if self.warned else 0)
        while not self.flush(force=True) and time.time() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.time())))
        if self.pending:
            self.warn(f"gxnor: could not mark run {self.run_id} {status}: the tracking store is not answering; "
                      f"what it did not take is kept in {pending_file(self.store, self.run_id)}")
            return False
        return True

    def end_if_running(self, status: str, message: str) -> None:
        """End the run as ``status`` unless something already ended it (the launcher's last word)."""
        try:
            if self.client.get_run(self.run_id).info.status != "RUNNING":
                return
        except Exception:
            pass
        self.set_tags({"gxnor.error": message})
        self.end(status)


PENDING_FORMAT = "gxnor-pending/1"


def pending_file(store: Store, run_id: str) -> Path:
    """Where a run keeps the logging calls its store did not take: beside its checkpoints."""
    return store.checkpoint_dir(run_id) / "pending.json"


def apply(client, run_id: str, op: dict) -> None:
    """Send one kept logging operation (each is idempotent: a metric keeps its timestamp)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, RunTag

    kind = op["op"]
    if kind == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, float(v), int(t), int(step)) for k, v, t, step in op["metrics"]])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in op["tags"].items()])
    elif kind == "input":
        dataset = Dataset(name=op["name"], digest=op["digest"], source_type="local", source=op["source"])
        client.log_inputs(run_id, [DatasetInput(dataset, [InputTag(key="mlflow.data.context", value=op["context"])])])
    elif kind == "artifact":
        client.log_artifact(run_id, op["path"], op["artifact_path"])
    elif kind == "text":
        client.log_text(run_id, op["text"], op["file"])
    elif kind == "end":
        with contextlib.redirect_stdout(sys.stderr):  # MLflow prints "View run ... at" links
            client.set_terminated(run_id, status=op["status"])
    else:
        raise ValueError(f"unknown operation {kind!r}")


def read_pending(path: Path) -> dict:
    """A pending.json as written by :meth:`Run.keep`; UserError for a file that is not one."""
    try:
        record = json.loads(Path(path).read_text())
        assert record["format"] == PENDING_FORMAT and isinstance(record["ops"], list)
        assert isinstance(record["tracking_uri"], str) and isinstance(record["run_id"], str)
        return record
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise UserError(f"{path} is not a pending-calls file of gxnor") from None


def kept_ops(path: Path) -> list[dict]:
    """The operations a run kept in its pending.json (none when there is no such file)."""
    return read_pending(path)["ops"] if path.is_file() else []


def sync(path: Path, out_dir: Path) -> tuple[int, int]:
    """Send the operations a run kept in ``path`` (its pending.json) to the store it was meant
    for; returns (sent, left).  Each one sent leaves the file at once, so that a second sync
    sends nothing twice; the file goes once it is empty.  UserError for a file that is not one."""
    record = read_pending(path)
    ops = record["ops"]
    run = Run(Store(record["tracking_uri"], Path(out_dir)), "", run_id=record["run_id"], keep_status=True,
              warn=lambda line: None)
    run.pending = list(ops)
    run.flush(force=True)
    sent = len(ops) - len(run.pending)
    if run.pending:
        atomic_write(Path(path), lambda h: h.write(json.dumps({**record, "ops": run.pending}).encode()))
    else:
        Path(path).unlink(missing_ok=True)
    return sent, len(run.pending)


class NoRun:
    """What ranks other than 0 log to: nothing (rank 0 logs the run)."""

    pending: list = []

    def __init__(self, run_id: Optional[str] = None):
        self.run_id = run_id

    def start_heartbeat(self, every: float = HEARTBEAT_S) -> Callable[[], None]:
        return lambda: None

    def log_metrics(self, *args, **kwargs) -> None:
        pass

    log_artifact = log_text = set_tags = resend_epochs = log_metrics

    def end(self, status: str = "FINISHED") -> bool:
        return True


def _record(r) -> dict:
    return {"run_id": r.info.run_id, "status": r.info.status, "params": dict(r.data.params),
            "metrics": dict(r.data.metrics), "tags": dict(r.data.tags)}


def find_run(store: Store, ref: str) -> dict:
    """An existing run by id or unique id prefix; UserError when there is none or several."""
    if not _may_exist(store, ref):
        raise UserError(f"no run {ref!r} in the tracking store {store.describe()}")
    from mlflow.exceptions import MlflowException

    check(store)
    reap_stale(store)
    client = _client(store)
    if len(ref) == 32:
        try:
            return _record(client.get_run(ref))
        except MlflowException:
            raise UserError(f"no run {ref!r} in the tracking store {store.describe()}") from None
    ids = [e.experiment_id for e in client.search_experiments()]
    matches = [r for r in client.search_runs(ids, max_results=50000) if r.info.run_id.startswith(ref)] if ids else []
    if not matches:
        raise UserError(f"no run {ref!r} in the tracking store {store.describe()}")
    if len(matches) > 1:
        raise UserError(f"run id prefix {ref!r} is ambiguous: "
                        f"{', '.join(r.info.run_id[:12] for r in matches[:5])}; give more characters")
    return _record(matches[0])


def _may_exist(store: Store, ref: str) -> bool:
    """False when a local sqlite store surely holds no run whose id starts with ``ref``: a
    read-only look at its runs table, so that a mistyped id is said at once, before MLflow
    (seconds to import) is loaded.  Anything unexpected answers True (MLflow decides)."""
    import sqlite3

    path = store.sqlite_path
    if path is None or not path.is_file() or not ref.isalnum():
        return True
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            return db.execute("SELECT 1 FROM runs WHERE run_uuid LIKE ? LIMIT 1", (ref + "%",)).fetchone() is not None
    except sqlite3.Error:
        return True


def download_artifact(store: Store, run_id: str, artifact_path: str, dest: Path) -> Path:
    from mlflow.exceptions import MlflowException

    try:
        return Path(_client(store).download_artifacts(run_id, artifact_path, str(dest)))
    except (MlflowException, OSError) as err:
        raise UserError(f"run {run_id!r} has no artifact {artifact_path!r}: {_first_line(err)}") from None


def _search(store: Store, filter_string: str, experiment: Optional[str] = None) -> list[dict]:
    client = _client(store)
    if experiment is not None:
        exp = experiment_id(store, experiment, create=False)
        ids = [exp] if exp else []
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    return [_record(r) for r in client.search_runs(ids, filter_string=filter_string, max_results=5000)] if ids else []


def child_runs(store: Store, parent_id: str, experiment: Optional[str] = None) -> list[dict]:
    """Children of a sweep's parent run: run id, status, params, metrics and tags."""
    return _search(store, f"tags.mlflow.parentRunId = '{parent_id}'", experiment)


def find_runs_by_tag(store: Store, experiment: str, key: str, value: str) -> list[dict]:
    return _search(store, f"tags.`{key}` = '{value}'", experiment)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(tags: dict[str, str], now: Optional[float] = None) -> Optional[str]:
    """Why a RUNNING run with these tags has no live process behind it, or None if it may have."""
    host, now = socket.gethostname(), now or time.time()
    pid = int(tags.get("gxnor.pid", "0") or 0)
    if tags.get("gxnor.host") == host and pid and pid != os.getpid() and not process_alive(pid):
        return f"process {pid} on {host} ended without closing the run"
    beat = float(tags.get("gxnor.heartbeat", "0") or 0)
    if beat and now - beat > STALE_S:
        return f"no heartbeat from {tags.get('gxnor.host', '?')} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(beat))}"
    return None


def reap_stale(store: Store, experiment: Optional[str] = None) -> list[str]:
    """Mark KILLED every RUNNING run of ``experiment`` (of every experiment: None) whose
    training process is gone.  Every command that opens the store calls it first."""
    reaped = []
    client = _client(store)
    for run in _search(store, "attributes.status = 'RUNNING'", experiment):
        reason = stale_reason(run["tags"])
        if reason is None:
            continue
        client.set_tag(run["run_id"], "gxnor.error", reason)
        client.set_terminated(run["run_id"], status="KILLED")
        reaped.append(run["run_id"])
    return reaped


def run_status(store: Store, run_id: str) -> dict:
    return _record(_client(store).get_run(run_id))


#: Of MLflow's server output, only what looks like a problem reaches the user; its access
#: log, migration chatter and advice about --host 0.0.0.0 (gxnor serves on 127.0.0.1 only)
#: do not.
UI_PROBLEMS = ("ERROR", "Error", "Traceback", "Exception", "address already in use")


def ui_links(store: Store, port: int, experiment: str) -> dict[str, str]:
    """Links into the MLflow UI: the runs table of ``experiment`` and a compare view of its
    newest sweep's children (when there is one)."""
    base = f"http://127.0.0.1:{port}"
    if store.exists():
        reap_stale(store)
    exp = experiment_id(store, experiment, create=False) if store.exists() else None
    if exp is None:
        return {"ui": base}
    # gxnor's saved views, in the Model training view (MLflow 3 opens on GenAI pages otherwise)
    links = {"runs": views.link(base, exp, views.RUNS_VIEW)}
    sweeps = _search(store, "tags.`gxnor.command` = 'sweep'", experiment)
    parents = [r for r in sweeps if "mlflow.parentRunId" not in r["tags"]]
    if parents:
        links["sweep"] = views.link(base, exp, views.sweep_key(parents[0]["run_id"]), charts=True)
    return links


def serve_ui(store: Store, port: int) -> int:
    """Run the MLflow UI on 127.0.0.1 (job execution off) until Ctrl-C; returns its exit code.

    The server runs in a process group of its own, stopped whole on the way out (MLflow's
    workers included), and only the lines of its output that matter reach stderr."""
    import signal

    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store.uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    if store.artifact_location:
        cmd += ["--default-artifact-root", store.artifact_location]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if any(problem in line for problem in UI_PROBLEMS):
                print(line.rstrip(), file=sys.stderr, flush=True)
        return proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
