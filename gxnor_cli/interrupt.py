"""Ctrl-C handling: the first press stops at a safe point, the second at once.

A KeyboardInterrupt raised inside torch.save's file callbacks can surface as a
RuntimeError, so interrupting a run mid-checkpoint would look like a failure.  Instead
the first SIGINT only sets a flag; the training loop (after each batch) and the sweep
(between waits) call :func:`check_stop`, which raises KeyboardInterrupt there.
"""

from __future__ import annotations

import signal
import sys
import threading

_STOP = threading.Event()


def install_interrupt_handler() -> None:
    def handler(signum, frame):
        if _STOP.is_set():
            raise KeyboardInterrupt
        _STOP.set()
        print("gxnor: stopping after the current batch (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handler)


def check_stop() -> None:
    """Raise KeyboardInterrupt once a stop was requested."""
    if _STOP.is_set():
        raise KeyboardInterrupt
