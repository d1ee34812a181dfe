"""Screenshots of the MLflow UI as `gxnor ui` opens it, for the README: made from the real UI.

    python docs/screenshots.py            # writes docs/ui-runs.png and docs/ui-sweep.png

Runs a small sweep over the weight and activation state counts on the embedded digits (a
temporary directory, ~1 minute on 2 cores), starts `gxnor ui` on it, and photographs the
two links it prints with headless Chromium (Debian's `chromium`).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
SWEEP = ["quant.weight_states=2,3,5", "quant.act_states=3,5", "trainer.epochs=5", "trainer.threads=1"]
WIDTH, HEIGHT = 1800, 900


def gxnor(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gxnor_cli", *args], cwd=cwd, text=True, **kw)


def links_of(ui: subprocess.Popen) -> dict[str, str]:
    links = {}
    for line in ui.stderr:
        if line.startswith("  "):
            name, link = line.split(None, 1)
            links[name] = link.strip()
        if "sweep" in links:
            return links
    raise SystemExit("gxnor ui printed no sweep link")


def shoot(url: str, out: Path, profile: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=20000", f"--user-data-dir={profile}",
                    f"--screenshot={out}", url], check=True, capture_output=True, timeout=120)
    print(f"wrote {out}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if gxnor("sweep", *SWEEP, "--jobs", "2", cwd=work).wait() != 0:
            raise SystemExit("the sweep failed")
        ui = gxnor("ui", "--port", "5099", cwd=work, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            links = links_of(ui)
            for _ in range(300):
                try:
                    urllib.request.urlopen("http://127.0.0.1:5099/health", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.3)
            shoot(links["runs"], DOCS / "ui-runs.png", work / "profile-runs")
            shoot(links["sweep"], DOCS / "ui-sweep.png", work / "profile-sweep")
        finally:
            ui.send_signal(signal.SIGINT)
            ui.wait(timeout=30)


if __name__ == "__main__":
    main()
