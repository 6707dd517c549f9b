"""Patch matching on a CUDA GPU: the fast matcher (its CUDA blocking and a sweep of others) beside the naive full matrix.

Usage (on a machine with a CUDA GPU):  .venv/bin/python benchmarks/matching_cuda.py [--repeats 7] [--out FILE]

Same cases as benchmarks/matching.py: CUFED5 size (LR 125x83, C=256, same-size reference) and LR and
reference 200x200 with C=64, random features. For each: the median time of ``repeats`` calls after one
warm-up (torch.cuda.synchronize() around each), and the peak extra memory that the CUDA caching allocator
handed out during a call (max_memory_allocated minus what was allocated before it). Candidates: the default
(``match_patches`` choosing its CUDA blocking), ``match_patches_naive``, the CPU blocking, and blockings with
8/16/32 input rows per matmul grown to the 512 MiB budget with a one-group and an eight-group ring.
Every candidate's indices are compared with the default's.

Writes results/matching_benchmark_cuda.json. Where no CUDA GPU is present it says so and does nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rrsr_lib.fast.matching_blocked import plan_blocks  # noqa: E402
from rrsr_lib.files import atomic_write_text  # noqa: E402
from rrsr_lib.matching import match_patches, match_patches_naive  # noqa: E402
from scripts.performance_table import update_performance  # noqa: E402

CASES = {"cufed5": (256, 83, 125), "large_c64": (64, 200, 200)}   # (C, H, W) of input and reference


def _time(fn, repeats: int) -> tuple[float, float, torch.Tensor]:
    fn()   # warm-up: cuBLAS handles and workspaces
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        idx, _ = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (torch.cuda.max_memory_allocated() - base) / 2 ** 20, idx


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "results" / "matching_benchmark_cuda.json"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        # `make bench` runs every benchmark: on a machine without a GPU this one is skipped, not failed
        print("benchmarks/matching_cuda.py: skipped, no CUDA GPU here (benchmarks/matching.py measures the CPU)")
        return {}
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "repeats": args.repeats,
              "what": "median seconds per call and peak extra CUDA memory (MiB) of one call, random features"}
    for name, (c, h, w) in CASES.items():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, c, h, w, generator=g).cuda()
        r = torch.randn(1, c, h, w, generator=g).cuda()
        plans = {"default": None, "naive": None, "cpu_blocking": plan_blocks(1, c, h, w, h, w)}
        for rows in (8, 16, 32):
            for ring in (1, 8):
                plans[f"rows{rows}_ring{ring}"] = plan_blocks(1, c, h, w, h, w, rows=rows, work_mb=512, ring_groups=ring)
        rows_out, default_idx = {}, None
        for label, plan in plans.items():
            if label == "naive":
                fn = lambda: match_patches_naive(x, r)
            else:
                fn = lambda plan=plan: match_patches(x, r, plan=plan)
            seconds, mib, idx = _time(fn, args.repeats)
            default_idx = idx if default_idx is None else default_idx
            rows_out[label] = {"median_s": seconds, "peak_extra_mib": round(mib, 1),
                               "same_index_as_default": (idx == default_idx).float().mean().item(),
                               **({"plan": str(plan)} if plan is not None else {})}
            print(f"{name:>10} {label:>13}: {1000 * seconds:7.2f} ms, +{mib:7.1f} MiB", flush=True)
        rows_out["naive_over_default"] = rows_out["naive"]["median_s"] / rows_out["default"]["median_s"]
        result[name] = rows_out
    atomic_write_text(Path(args.out), json.dumps(result, indent=1))
    update_performance()   # PERFORMANCE.md's table of the latest numbers
    return result


if __name__ == "__main__":
    main()
