"""Stopping on a signal: the first SIGINT (Ctrl-C) or SIGTERM stops at a safe point, a
second one at once.

SIGTERM is what ``timeout``, docker, systemd and SLURM send before they kill; it ends a
run exactly like Ctrl-C (run KILLED, checkpoint usable) with exit code 143 instead of 130.

A KeyboardInterrupt raised inside torch.save's file callbacks can surface as a
RuntimeError, so interrupting a run mid-checkpoint would look like a failure.  Instead the
first signal only sets a flag; the training loop (after each batch) and the sweep (between
waits) call :func:`check_stop`, which raises KeyboardInterrupt there.
"""

from __future__ import annotations

import signal
import sys
import threading

_STOP = threading.Event()
_received: list[int] = []


def install_interrupt_handler(quiet: bool = False, escalate: bool = True) -> None:
    """Handle SIGINT and SIGTERM as above.  Sweep workers take ``quiet`` (no message) and
    not ``escalate``: however many signals reach them they stop at the next batch, and it is
    their sweep that kills them when it wants them gone at once."""
    def handler(signum, frame):
        if _STOP.is_set():
            if escalate:
                raise KeyboardInterrupt
            return
        _received.append(signum)
        _STOP.set()
        if not quiet:
            again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
            print(f"gxnor: stopping after the current batch ({again} again to stop at once)", file=sys.stderr,
                  flush=True)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def record(signum: int) -> None:
    """Note a stop signal that another handler caught (torch's elastic launcher catches its own)."""
    if not _received:
        _received.append(int(signum))
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def check_stop() -> None:
    """Raise KeyboardInterrupt once a stop was requested."""
    if _STOP.is_set():
        raise KeyboardInterrupt


def exit_code() -> int:
    """130 after Ctrl-C, 143 (128 + SIGTERM) after SIGTERM."""
    return 128 + (_received[0] if _received else signal.SIGINT)
