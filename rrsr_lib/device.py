"""The device is chosen once, here (cuda, then mps, then cpu), and seeds are fixed in one place.

Nothing else in the project calls ``.cuda()``: modules and tensors are moved with ``.to(device)``
where ``device`` comes from :func:`pick_device`.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
# re-exported: the training code (rrsr_lib.trainer) imports the glibc malloc tuning of rrsr_lib.fast.memory from here
from .fast.memory import keep_freed_cpu_memory  # noqa: F401

_CHOICES = ("auto", "cuda", "mps", "cpu")


def pick_device(preference: str = "auto") -> torch.device:
    """Return the device to run on.

    preference: "auto" (cuda if available, then mps, then cpu) or one of "cuda", "mps", "cpu".
    Asking for an accelerator that is not there is an error, not a silent fall-back.
    """
    if preference not in _CHOICES:
        raise InputError(f"device must be one of {_CHOICES}, got {preference!r}")
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise InputError("device='cuda' was asked for but torch sees no CUDA GPU; use device='auto' or 'cpu'")
    if preference == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device='mps' was asked for but this machine has no Apple GPU; use device='auto' or 'cpu'")
    return torch.device(preference)


def seed_everything(seed: int) -> None:
    """Fix Python's, numpy's and torch's random generators (all devices) to ``seed``."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def free_cores() -> int:
    """CPU cores that no other task is running on right now, at least 1.

    Read from /proc/loadavg's count of runnable tasks (an instant count, not the 1-minute average), less this
    process's own running threads (/proc/self/task), against the cores this process may use. Elsewhere (no
    /proc): all of them.
    """
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return ncpu
    # this process's own running threads (the caller, and OpenMP workers still spinning after the last
    # parallel region) are not "other tasks"
    own = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            own += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return max(1, ncpu - max(0, running - max(own, 1)))


class fair_threads:
    """Context manager: torch's CPU threads limited to :func:`free_cores` for the work inside, then restored.

    Many small parallel regions (the matcher, an inference call) collapse when another process holds a core:
    the threads wait for each other at every region. Measured on the 2-core machine with two CPU-bound
    processes beside it: the matcher at CUFED5 size took 1.0 s with 1 thread and 1.3-8.8 s with 2
    (benchmarks/contention.py). On an idle machine nothing changes. Nested uses are harmless.

    The thread count changes float rounding (by about 1e-7), so results would depend on the machine's load;
    with ``RRSR_FAIR_THREADS=0`` in the environment (``make reproduce`` sets it) the threads are left as they
    are and a rerun on the same machine gives the same bits.
    """

    def __enter__(self):
        self._n = torch.get_num_threads()
        if os.environ.get("RRSR_FAIR_THREADS", "1") == "0":
            return self
        k = min(self._n, free_cores())
        if k != self._n:
            torch.set_num_threads(k)
        return self

    def __exit__(self, *exc):
        if torch.get_num_threads() != self._n:
            torch.set_num_threads(self._n)
        return False
