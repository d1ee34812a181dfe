"""Stopping on a signal: the first SIGINT (Ctrl-C) or SIGTERM stops at a safe point, a
second one at once.

SIGTERM is what ``timeout``, docker, systemd and SLURM send before they kill; it ends a
run exactly like Ctrl-C (run KILLED, checkpoint usable) with exit code 143 instead of 130.

A KeyboardInterrupt raised inside torch.save's file callbacks can surface as a
RuntimeError, so interrupting a run mid-checkpoint would look like a failure.  Instead the
first signal only sets a flag; the training loop (after each batch) and the sweep (between
waits) call :func:`check_stop`, which raises KeyboardInterrupt there.

The handler only assigns to a dict: a signal may arrive while the handler itself runs (it
interrupts whatever the main thread is doing, its own handler included), so it must take
no lock.
"""

from __future__ import annotations

import signal
import sys

_state = {"stop": False, "signal": 0}


def install_interrupt_handler(quiet: bool = False, escalate: bool = True) -> None:
    """Handle SIGINT and SIGTERM as above.  Sweep workers take ``quiet`` (no message) and
    not ``escalate``: however many signals reach them they stop at the next batch, and it is
    their sweep that kills them when it wants them gone at once."""
    def handler(signum, frame):
        if _state["stop"]:
            if escalate:
                raise KeyboardInterrupt
            return
        _state["stop"], _state["signal"] = True, signum
        if not quiet:
            again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
            print(f"gxnor: stopping after the current batch ({again} again to stop at once)", file=sys.stderr,
                  flush=True)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def record(signum: int) -> None:
    """Note a stop signal that another handler caught (torch's elastic launcher catches its own)."""
    if not _state["signal"]:
        _state["signal"] = int(signum)
    _state["stop"] = True


def stop_requested() -> bool:
    return _state["stop"]


def check_stop() -> None:
    """Raise KeyboardInterrupt once a stop was requested."""
    if _state["stop"]:
        raise KeyboardInterrupt


def exit_code() -> int:
    """130 after Ctrl-C, 143 (128 + SIGTERM) after SIGTERM."""
    return 128 + (_state["signal"] or signal.SIGINT)


def quiet_broken_pipe() -> int:
    """`gxnor ... | head`: the reader left, which is no error to report.  Returns 141
    (128 + SIGPIPE), with stdout pointed at /dev/null so that exiting raises nothing more."""
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141
