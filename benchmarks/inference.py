"""Benchmark: RRSR inference against the machine's arithmetic limit (issue 20), in one run.

The limit of a call is its counted arithmetic at the machine's matrix-multiply rate:

    limit = 2 x (multiply-adds of the restoration network, rrsr_lib.model_counts.count_macs
                 + those of the frozen front end: matching trunks, VGG texture layers, matching correlation)
            / (float32 matrix-multiply FLOP/s, torch.mm 2048x2048 measured in this run, the same threads)

The restoration network is counted from its layer shapes; the frozen front end by
``torch.utils.flop_counter.FlopCounterMode`` over the call (its convolutions and matrix products). The
deformable convolutions' bilinear sampling, activations and copies count as free, so a ratio of 1.0 cannot
be reached; the targets are 1.8x (small configuration, LR 80x60, Ref 320x240: the shipped network) and 1.4x
(paper configuration, LR 125x83, Ref 500x332: CUFED5 size, untrained weights, which cost the same).

Each call is timed with both deformable-convolution paths (rrsr_lib.alignment.deform_path): "sampling", the
path inference uses, and "torchvision" (torchvision.ops.deform_conv2d) as the baseline measured beside it,
alternately, median of --repeats after one warm-up, with glibc keeping freed memory
(rrsr_lib.fast.memory.keep_freed_cpu_memory, as ``python -m rrsr_lib.sr`` does for whole images).
Writes results/inference_benchmark.json (atomically).
A busy machine (default threads against one thread beside a CPU-bound process) is benchmarks/contention.py.

    .venv/bin/python benchmarks/inference.py                      # both configurations, 3 repeats
    .venv/bin/python benchmarks/inference.py --configs small --repeats 1 --out /tmp/i.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rrsr_lib.alignment import deform_path  # noqa: E402
from rrsr_lib.checkpoints import frozen_prefixes, load_checkpoint  # noqa: E402
from rrsr_lib.evaluate import write_json  # noqa: E402
from rrsr_lib.fast.memory import keep_freed_cpu_memory  # noqa: E402
from rrsr_lib.model_counts import count_macs  # noqa: E402
from rrsr_lib.models import build_model  # noqa: E402
from scripts.performance_table import update_performance  # noqa: E402

# configuration -> (network, LR (h, w), Ref (h, w), target ratio to the limit)
CONFIGS = {"small": ("shipped rrsr_rec_seed0", (60, 80), (240, 320), 1.8),
           "paper": ("build_model('rrsr', 'paper')", (83, 125), (332, 500), 1.4)}
PATHS = ("sampling", "torchvision")


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 torch.mm rate (FLOP/s) of an n x n product with the current threads."""
    g = torch.Generator().manual_seed(0)
    a, b, out = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g), torch.empty(n, n)
    torch.mm(a, b, out=out)   # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def counted_flops(model, lr: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """2 x multiply-adds of one call: the restoration network (count_macs) and the frozen front end
    (convolutions and matrix products under the frozen submodules, counted on the call)."""
    restoration = 2 * count_macs(model, tuple(lr.shape[2:]))["total"]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(lr, ref)
    per_module = counter.get_flop_counts()
    frozen = {p.rstrip("."): sum(per_module.get(f"{type(model).__name__}.{p.rstrip('.')}", {}).values())
              for p in frozen_prefixes(model)}
    return {"restoration": float(restoration), **{k: float(v) for k, v in frozen.items()},
            "total": float(restoration + sum(frozen.values()))}


def _time_call(model, lr, ref, path: str) -> float:
    with torch.no_grad(), deform_path(path):
        t = time.perf_counter()
        model(lr, ref)
        return time.perf_counter() - t


def bench_config(name: str, repeats: int) -> dict:
    what, lr_hw, ref_hw, target = CONFIGS[name]
    model = load_checkpoint("rrsr_rec_seed0") if name == "small" else build_model("rrsr", "paper").eval()
    g = torch.Generator().manual_seed(0)
    lr, ref = torch.rand(1, 3, *lr_hw, generator=g), torch.rand(1, 3, *ref_hw, generator=g)
    flops = counted_flops(model, lr, ref)
    for path in PATHS:
        _time_call(model, lr, ref, path)   # warm-up
    times = {p: [] for p in PATHS}
    rates = []
    for _ in range(repeats):   # alternately, so that a change of load hits both paths and the rate
        rates.append(matmul_flops_per_s())
        for path in PATHS:
            times[path].append(_time_call(model, lr, ref, path))
    rate = max(rates)
    limit = flops["total"] / rate
    row = {"network": what, "lr_hw": lr_hw, "ref_hw": ref_hw, "counted_gflop": {k: v / 1e9 for k, v in flops.items()},
           "matmul_gflop_per_s": rate / 1e9, "matmul_gflop_per_s_all": [r / 1e9 for r in rates],
           "limit_s": limit, "target_ratio": target}
    for path in PATHS:
        med = statistics.median(times[path])
        row[path] = {"seconds": med, "all": times[path], "ratio_to_limit": med / limit}
    row["meets_target"] = row["sampling"]["ratio_to_limit"] <= target
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["small", "paper"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results" / "inference_benchmark.json"))
    args = ap.parse_args(argv)
    # as python -m rrsr_lib.sr does for whole-image CPU calls: freed blocks reused, no page faults per call
    kept = keep_freed_cpu_memory()
    result = {"keep_freed_cpu_memory": kept, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "load_before": os.getloadavg(), "configs": {}}
    for name in args.configs:
        row = bench_config(name, args.repeats)
        result["configs"][name] = row
        gf = row["counted_gflop"]
        print(f"{name}: LR {row['lr_hw'][1]}x{row['lr_hw'][0]}, Ref {row['ref_hw'][1]}x{row['ref_hw'][0]}: "
              f"{gf['total']:.1f} GFLOP counted ({', '.join(f'{k} {v:.1f}' for k, v in gf.items() if k != 'total')}); "
              f"matmul {row['matmul_gflop_per_s']:.0f} GFLOP/s -> limit {row['limit_s']:.2f} s", flush=True)
        for path in PATHS:
            r = row[path]
            print(f"  {path:<12} {r['seconds']:7.2f} s = {r['ratio_to_limit']:.2f}x the limit", flush=True)
        print(f"  target <= {row['target_ratio']}x: {'met' if row['meets_target'] else 'NOT met'}", flush=True)
    result["load_after"] = os.getloadavg()
    write_json(result, args.out)
    update_performance()   # PERFORMANCE.md's table of the latest numbers
    print(f"wrote {args.out} (load average {result['load_before'][0]:.1f} before, {result['load_after'][0]:.1f} after: "
          f"ratios hold for an idle machine only)")
    return result


if __name__ == "__main__":
    main()
