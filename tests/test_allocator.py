"""keep_freed_memory: freed blocks below 32 MiB stay in the process (glibc, Linux only)."""

import platform
import subprocess
import sys

import pytest

PROBE = """
import sys
import torch
from gxnor_cli.training.allocator import keep_freed_memory

def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

if sys.argv[1] == "tuned":
    assert keep_freed_memory()
block = torch.ones(4 << 20)  # 16 MiB, written: resident
held = resident_mib()
del block
print(held - resident_mib())
"""


def freed_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(out.stdout)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_blocks_stay_in_the_process_only_once_tuned():
    assert freed_mib("raw") > 12  # glibc's default: a 16 MiB block is mmapped and handed back on free
    assert freed_mib("tuned") < 2  # kept for the next step
