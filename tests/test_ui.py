"""`gxnor ui` as a user meets it: a real MLflow server and a real headless Chromium.

The screenshot of what the user sees is written to the test's temp directory (its path is
printed; `pytest -s` shows it) and, with GXNOR_UI_SCREENSHOT=FILE, copied there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY, runs_in_store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browse(url: str, profile: Path, *what: str, width: int = 1400, budget_ms: int = 20_000) -> str:
    """What headless Chromium shows of ``url`` after ``budget_ms`` of the page's (virtual) time
    (the grid draws only the columns in view: a wide window shows them all)."""
    done = subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--virtual-time-budget={budget_ms}", f"--window-size={width},900",
                           f"--user-data-dir={profile}", *what, url], capture_output=True, text=True, timeout=180)
    return done.stdout


def visible_text(dom: str) -> list[str]:
    """The text of a page, one piece per element, in document order."""
    import re

    return [piece.strip() for piece in re.sub(r"<[^>]+>", "\n", dom).split("\n") if piece.strip()]


def server_processes(port: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in cmdline and str(port).encode() in cmdline and any(b"mlflow" in c for c in cmdline):
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_ui_opens_on_the_runs_of_a_training_experiment_and_stops_cleanly(cli, runs_dir, tmp_path):
    from test_server import free_port

    code, _, err = cli("sweep", "quant.window=0.3,0.6", *TINY)
    assert code == 0, err
    children = {r.info.run_name: r.data.metrics["test_acc"] for r in runs_in_store(runs_dir)
                if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == ["w3a3-r0.3-adam-s0", "w3a3-r0.6-adam-s0"]
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "gxnor_cli", "ui", "--port", str(port)], cwd=tmp_path,
                          stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        links = {}
        for line in ui.stderr:
            if line.startswith("  "):
                name, link = line.split(None, 1)
                links[name] = link.strip()
            if "sweep" in links:
                break
        assert "workflowType=machine_learning" in links["runs"] and "viewStateShareKey=gxnor-runs" in links["runs"]
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                time.sleep(0.3)
        dom = browse(links["runs"], tmp_path / "profile1", "--dump-dom", width=2400)
        # the Model training view opens on gxnor's saved view: the columns that matter, best first
        text = visible_text(dom)
        assert ">Runs<" in dom and "Detect Issues" not in dom and "Sort: test_acc" in dom
        for header in ("test_acc", "best_val_acc", "bits_per_weight", "export_bytes", "test_resting_prob",
                       "quant.weight_states", "quant.act_states", "quant.window", "dst.rule", "trainer.epochs"):
            assert header in text, header
        best, worst = sorted(children, key=children.get, reverse=True)
        assert text.index(best) < text.index(worst)  # sorted by test accuracy
        for name, acc in children.items():  # each child's accuracy, as MLflow prints it (cut to 10 characters)
            assert any(piece.startswith(f"{acc:.12f}"[:6]) for piece in text[text.index(name):]), (name, acc)
        # the sweep's link: its children only, the first chart plots test_acc against the swept key
        section = "Test accuracy against the swept keys"
        for attempt in range(5):  # the charts draw once the runs have loaded: a slow machine may need longer
            charts = visible_text(browse(links["sweep"], tmp_path / f"profile2-{attempt}", "--dump-dom", width=2400,
                                         budget_ms=20_000 * (attempt + 1)))
            if "quant.window vs. test_acc" in charts:
                break
            time.sleep(2)
        assert section in charts, charts[-40:]
        after = charts[charts.index(section):charts.index(section) + 8]
        assert after[3] == "quant.window vs. test_acc", after
        assert set(children) <= set(charts) and not any(p.startswith("sweep-") for p in charts)
        shot = tmp_path / "ui-runs.png"
        browse(links["runs"], tmp_path / "profile3", f"--screenshot={shot}")
        assert shot.stat().st_size > 20_000
        print(f"\nscreenshot of the runs page: {shot}")
        if os.environ.get("GXNOR_UI_SCREENSHOT"):
            shutil.copy(shot, os.environ["GXNOR_UI_SCREENSHOT"])
    finally:
        ui.send_signal(signal.SIGINT)
        rest = ui.communicate(timeout=30)[1]
    assert ui.returncode == 0 and "Traceback" not in rest and "0.0.0.0" not in rest
    deadline = time.time() + 15
    while server_processes(port) and time.time() < deadline:
        time.sleep(0.2)
    assert server_processes(port) == []


def test_ui_refuses_a_bad_or_taken_port(cli, runs_dir):
    import socket

    code, _, err = cli("ui", "--port", "70000")
    assert code == 2 and "--port must be in 1..65535" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, _, err = cli("ui", "--port", str(taken.getsockname()[1]))
    assert code == 2 and "is in use" in err
