import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Two small convolution layers, forward and backward, three times; print the page faults of the last step.
_PROBE = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from rrsr_lib.device import keep_freed_cpu_memory
kept = keep_freed_cpu_memory() if {keep} else False
torch.set_num_threads(1)
conv = torch.nn.Conv2d(64, 64, 3, padding=1)
x = torch.randn(4, 64, 128, 128, requires_grad=True)
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    conv(torch.relu(conv(x))).sum().backward()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(keep: bool) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(root=str(ROOT), keep=keep)], capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_cpu_memory_reuses_freed_blocks_without_page_faults():
    kept, faults_kept = _faults(True)
    _, faults_default = _faults(False)
    assert kept == "True"
    # by default every step maps its activations afresh (tens of thousands of 4 KiB pages here)
    assert faults_default > 5000, f"expected fresh pages every step by default, got {faults_default} faults"
    # (a few MB may still be mapped afresh, depending on what the allocator held before)
    assert faults_kept < faults_default / 5, f"{faults_kept} page faults with freed memory kept, {faults_default} without"
