import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Two small convolution layers, forward and backward, six times; print the page faults of the last three steps
# (the allocator may still map a few MB afresh in one of the first steps, depending on what it held before).
_PROBE = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from rrsr_lib.fast.memory import keep_freed_cpu_memory
kept = keep_freed_cpu_memory() if {keep} else False
torch.set_num_threads(1)
conv = torch.nn.Conv2d(64, 64, 3, padding=1)
x = torch.randn(4, 64, 128, 128, requires_grad=True)
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    conv(torch.relu(conv(x))).sum().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, sum(faults[3:]))
"""


def _faults(keep: bool) -> tuple[str, int]:
    # glibc raises its mmap threshold each time a mapped block is freed (the dynamic threshold), so how many
    # pages the default maps afresh varies from machine to machine: 36 thousand per step here, 0 in one CI run.
    # Pinning the threshold at glibc's starting value (128 KiB) makes the baseline map every large block afresh
    # every step, in both probes; keep_freed_cpu_memory's mallopt calls must then override it.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", _PROBE.format(root=str(ROOT), keep=keep)], capture_output=True,
                         text=True, check=True, env=env).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
@pytest.mark.slow
def test_keep_freed_cpu_memory_reuses_freed_blocks_without_page_faults():
    kept, faults_kept = _faults(True)
    _, faults_default = _faults(False)
    assert kept == "True"
    # With the threshold pinned, steps map activations afresh: ~78 thousand 4 KiB pages per step here (234
    # thousand over the three). The probe must at least see one activation map's worth (4 x 64 x 128 x 128
    # floats = 4096 pages).
    assert faults_default > 4096, f"expected fresh pages every step by default, got {faults_default} faults"
    assert faults_kept < faults_default / 5, f"{faults_kept} page faults with freed memory kept, {faults_default} without"


# 2.2 GiB malloc'ed, written, freed, twice: the second round's page faults. With trimming merely set high
# (2^31 - 1 bytes) glibc gives a free block of more than 2 GiB at the top of the heap back, and the second
# round maps all of it again (as a reciprocal training step's end did).
_BIG_FREE = """
import ctypes, resource, sys
sys.path.insert(0, {root!r})
from rrsr_lib.fast.memory import keep_freed_cpu_memory
assert keep_freed_cpu_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
n = 2_200_000_000
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(n)
    libc.memset(p, 1, n)
    libc.free(p)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, n // 4096)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
@pytest.mark.slow
def test_keep_freed_cpu_memory_keeps_a_free_block_larger_than_2_gib():
    out = subprocess.run([sys.executable, "-c", _BIG_FREE.format(root=str(ROOT))], capture_output=True, text=True,
                         check=True).stdout.split()
    faults, pages = int(out[0]), int(out[1])
    assert faults < pages / 100, f"{faults} page faults mapping {pages} pages a second time: the heap was trimmed"


def test_free_cores_counts_the_cores_no_other_task_runs_on():
    from rrsr_lib.device import free_cores
    n = free_cores()
    assert 1 <= n <= (os.cpu_count() or 1)


def test_fair_threads_limits_torch_threads_to_the_free_cores_and_restores_them(monkeypatch):
    import rrsr_lib.device as dev
    monkeypatch.delenv("RRSR_FAIR_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(dev, "free_cores", lambda: 1)
        with dev.fair_threads():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(dev, "free_cores", lambda: 8)
        with dev.fair_threads():
            assert torch.get_num_threads() == 2   # never more than asked for
    finally:
        torch.set_num_threads(before)


def test_fair_threads_is_switched_off_by_the_environment_for_reproducible_files(monkeypatch):
    # make reproduce sets RRSR_FAIR_THREADS=0: the notebooks' thread counts, whatever the load
    import rrsr_lib.device as dev
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(dev, "free_cores", lambda: 1)
        monkeypatch.setenv("RRSR_FAIR_THREADS", "0")
        with dev.fair_threads():
            assert torch.get_num_threads() == 2
        monkeypatch.setenv("RRSR_FAIR_THREADS", "1")
        with dev.fair_threads():
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
