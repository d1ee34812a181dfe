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

from conftest import TINY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,900", "--virtual-time-budget=20000"]


def browse(url: str, profile: Path, *what: str) -> str:
    done = subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", *what, url], capture_output=True,
                          text=True, timeout=120)
    return done.stdout


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
        assert "workflowType=machine_learning" in links["runs"]
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                time.sleep(0.3)
        dom = browse(links["runs"], tmp_path / "profile1", "--dump-dom")
        # the Model training view with the runs table, named after their points, with their dataset
        assert ">Runs<" in dom and "window=0.3" in dom and "window=0.6" in dom and "digits (" in dom
        assert "Detect Issues" not in dom
        compare = browse(links["sweep"], tmp_path / "profile2", "--dump-dom")
        assert "Comparing 2 Runs" in compare and "quant.window" in compare
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
