"""A claim on a grid point: at most one live process trains it.

Two copies of one sweep (a command run twice, a job submitted again while the first still
runs) could otherwise train the same point side by side.  Every trial first takes its point's
claim and holds it while it trains:

    <out_dir>/sweeps/claims/<namespace>/<point digest>/<g>      g = 0, 1, 2, ...

The claim is the file with the highest generation ``g``.  It is *free* when there is none or
when its holder wrote ``released`` into it; it is *live* while its holder's heartbeat (the
file's mtime, touched every BEAT_S) moves; it is *stale* when

- its holder's pid is gone on this host,
- its holder is this very scheduler job started again (a SLURM requeue, a Ray retry), or
- its mtime has not moved for STALE_S seconds of the waiter's own clock (no other host's
  clock is trusted, so clock skew between nodes cannot fake a live or a dead holder).

A free or stale claim of generation g is taken by creating generation g+1 with O_EXCL: of
several waiters exactly one wins, the others see a live claim again and go on waiting.  Old
generations stay (a few bytes each), so a slow waiter can never recreate one.  Creating with
O_EXCL is atomic on local file systems and on NFS v3 and later, which is what a shared out_dir
of a cluster is.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from ..tracking.client import process_alive

BEAT_S = 5.0  #: how often a holder touches its claim
STALE_S = 60.0  #: how long a claim's heartbeat may stand still before a waiter takes it over
RELEASED = "released"


def claim_dir(out_dir: Path, namespace: str, key: str) -> Path:
    """Where the claim of ``key`` (any string, e.g. a point's JSON key) lives."""
    return Path(out_dir) / "sweeps" / "claims" / namespace / hashlib.sha1(key.encode()).hexdigest()[:16]


class Claim:
    """The claim in ``folder``; ``job`` names this process's scheduler job (see trial.job_id)."""

    def __init__(self, folder: Path, job: Optional[str] = None):
        self.folder, self.job = Path(folder), job
        self.held: Optional[Path] = None
        self._seen: tuple = ()  # (generation, mtime) as last seen, and when (monotonic) it changed
        self._since = 0.0
        self._stop = threading.Event()  # ends the heartbeat of the claim held now

    # -- looking at the current claim ------------------------------------------------------------
    def _current(self) -> tuple[int, Optional[Path]]:
        gens = [int(p.name) for p in self.folder.glob("[0-9]*") if p.name.isdigit()]
        if not gens:
            return -1, None
        g = max(gens)
        return g, self.folder / str(g)

    @staticmethod
    def _holder(path: Path) -> dict:
        try:
            text = path.read_text()
        except OSError:
            return {}
        if text.strip() == RELEASED:
            return {"released": True}
        try:
            return json.loads(text)
        except ValueError:  # being written at this moment: live
            return {}

    def holder(self) -> Optional[dict]:
        """Who holds the claim now ({host, pid, job, since}), or None when it is free or stale."""
        return self._live(*self._current())

    def _live(self, g: int, path: Optional[Path]) -> Optional[dict]:
        if path is None:
            return None
        info = self._holder(path)
        if info.get("released"):
            return None
        host, pid = info.get("host"), int(info.get("pid") or 0)
        if host == socket.gethostname() and pid and pid != os.getpid() and not process_alive(pid):
            return None
        if self.job and info.get("job") == self.job:
            return None
        try:
            seen = (g, path.stat().st_mtime_ns)
        except FileNotFoundError:  # released and cleaned up right now
            return None
        now = time.monotonic()
        if seen != self._seen:
            self._seen, self._since = seen, now
        if now - self._since > STALE_S:
            return None
        return info or {"host": "?", "pid": "?"}

    # -- taking, holding, releasing --------------------------------------------------------------
    def try_take(self) -> bool:
        """Take the claim if it is free or stale; True when this process holds it now."""
        self.folder.mkdir(parents=True, exist_ok=True)
        g, current = self._current()
        if self._live(g, current) is not None:
            return False
        path = self.folder / str(g + 1)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another waiter won this generation
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "job": self.job,
                       "since": time.time()}, f)
        self.held = path
        self._beat()
        return True

    def wait(self, on_wait: Callable[[dict], None] = lambda _: None, poll_s: float = 2.0,
             check: Callable[[], None] = lambda: None) -> "Claim":
        """Take the claim, waiting while another live process holds it; ``on_wait`` gets the
        holder at each poll, ``check`` may raise to stop waiting (e.g. an interrupt)."""
        while not self.try_take():
            holder = self.holder()
            if holder is not None:
                on_wait(holder)
            check()
            time.sleep(poll_s)
        return self

    def _beat(self) -> None:
        path, stop = self.held, threading.Event()
        self._stop = stop

        def beat() -> None:
            while not stop.wait(BEAT_S):
                try:
                    os.utime(path)
                except OSError:  # the folder is gone
                    return
        threading.Thread(target=beat, daemon=True, name="gxnor-claim").start()

    def release(self) -> None:
        """Mark the claim free (only this process's own generation; a newer one is left alone)."""
        self._stop.set()
        if self.held is None:
            return
        tmp = self.held.with_name(f".{self.held.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(RELEASED)
            os.replace(tmp, self.held)
        except OSError:
            tmp.unlink(missing_ok=True)
        self.held = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
