"""Keep the memory a training step frees for the next step (glibc's malloc, on Linux).

A CPU training step allocates its activations, gradients and DST temporaries afresh and frees
them again.  glibc serves blocks above its mmap threshold (128 KiB, raised as it sees larger
blocks freed) with mmap and returns them on free, and trims the heap's free top back to the
kernel; every step then faults the same pages in again.  On the paper's MNIST net that costs a
fifth to a third of a CPU epoch (``python bench/epoch_time.py --raw-malloc`` against
``python bench/epoch_time.py`` shows it).  Two settings keep the memory in the process:

    M_MMAP_THRESHOLD = 32 MiB     blocks below it come from the heap (glibc's largest value)
    M_TRIM_THRESHOLD = 1 GiB      free heap memory below it is kept for reuse

so the resident memory stays at the step's peak instead of going up and down each step.
Elsewhere (another C library, no libc found) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module says; True when it took both settings."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # no C library by that name, or not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
