"""No collapse on a busy machine: the matcher and an inference call beside a CPU-bound process.

Many small parallel regions (the blocked matcher, a forward pass of the small network) collapse when another
process holds a core: the threads wait for each other at every region. rrsr_lib.device.fair_threads limits
torch's threads to the cores that are free at the start of the call. This script measures, in one run, each
workload with one thread and with the default threads, with fair_threads switched off (the baseline) and on,
alone and beside a CPU-bound process (a busy loop in another process), and prints the ratios against one
thread in the same situation. Target (issue 18): default threads beside a CPU-bound process <= 1.2x one thread.

    .venv/bin/python benchmarks/contention.py [--repeats 3] [--out results/contention_benchmark.json]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rrsr_lib import device as device_mod  # noqa: E402
from rrsr_lib.evaluate import write_json  # noqa: E402
from rrsr_lib.matching import match_patches  # noqa: E402
from rrsr_lib.models import build_model  # noqa: E402
from scripts.performance_table import update_performance  # noqa: E402


def _workloads():
    g = torch.Generator().manual_seed(0)
    # CUFED5 size: relu3_1-like features of a 500x332 input against a 500x332 reference
    a, b = torch.randn(1, 256, 83, 125, generator=g), torch.randn(1, 256, 83, 125, generator=g)
    model = build_model("rrsr", "small", matching="vgg").eval()
    lr, ref = torch.rand(1, 3, 60, 80, generator=g), torch.rand(1, 3, 240, 320, generator=g)

    def infer():
        with torch.no_grad():
            model(lr, ref)
    return {"matcher (C=256, 125x83 vs 125x83)": lambda: match_patches(a, b, 3),
            "small RRSR inference (LR 80x60, Ref 320x240)": infer}


def _time(fn, threads: int, fair: bool, repeats: int) -> float:
    torch.set_num_threads(threads)
    original = device_mod.free_cores
    if not fair:
        device_mod.free_cores = lambda: os.cpu_count() or 1   # the baseline: no limit
    try:
        fn()   # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    finally:
        device_mod.free_cores = original
    return statistics.median(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results" / "contention_benchmark.json"))
    args = ap.parse_args(argv)
    default_threads = torch.get_num_threads()
    result = {"cores": os.cpu_count(), "default_threads": default_threads, "torch": torch.__version__,
              "load_before": os.getloadavg(), "workloads": {}}
    for name, fn in _workloads().items():
        rows = {}
        for situation in ("alone", "beside a CPU-bound process"):
            hog = None
            if situation != "alone":
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(1.0)
            try:
                one = _time(fn, 1, True, args.repeats)
                base = _time(fn, default_threads, False, args.repeats)
                fair = _time(fn, default_threads, True, args.repeats)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
            rows[situation] = {"one_thread_s": one, "default_threads_s": base, "default_threads_fair_s": fair,
                               "ratio_default_to_one": base / one, "ratio_fair_to_one": fair / one}
            print(f"{name:<46} {situation:<27} 1 thread {one:6.2f} s | {default_threads} threads {base:6.2f} s "
                  f"({base / one:4.2f}x) | {default_threads} threads with fair_threads {fair:6.2f} s ({fair / one:4.2f}x)",
                  flush=True)
        result["workloads"][name] = rows
    busy = [w["beside a CPU-bound process"]["ratio_fair_to_one"] for w in result["workloads"].values()]
    result["meets_target"] = all(r <= 1.2 for r in busy)
    torch.set_num_threads(default_threads)
    write_json(result, args.out)
    update_performance()   # PERFORMANCE.md's table of the latest numbers
    print(f"target <= 1.2x beside a CPU-bound process: {'met' if result['meets_target'] else 'NOT met'} "
          f"({', '.join(f'{r:.2f}x' for r in busy)}); wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
