"""Is a call's cost, said before it runs, right? rrsr_lib.cost's estimate against the memory a call really takes.

For the shipped small RRSR, the cost law is measured once on the four small probes (rrsr_lib.cost.measure_cost);
then each call below runs in a fresh process, which reports the peak of its resident memory above what it held
before the call (``ru_maxrss``, the operating system's count) and the seconds it took. Printed: estimated /
measured for memory and time. The estimate is the one `python -m rrsr_lib.sr` uses to choose LR tiles within
``--memory-mb``, so a ratio below 1 means the budget can be overrun by that factor.

    .venv/bin/python benchmarks/cost.py [--quick] [--out results/cost_benchmark.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rrsr_lib.checkpoints import load_checkpoint  # noqa: E402
from rrsr_lib.cost import measure_cost  # noqa: E402
from rrsr_lib.evaluate import write_json  # noqa: E402
from scripts.performance_table import update_performance  # noqa: E402

# (LR height, width, reference height, width): output-dominated, reference-dominated, both large
CALLS = [(60, 80, 240, 320), (120, 160, 240, 320), (60, 80, 480, 640), (120, 160, 480, 640)]

_ONE_CALL = """
import json, resource, sys, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from rrsr_lib.checkpoints import load_checkpoint
model = load_checkpoint("rrsr_rec_seed0")
gen = torch.Generator().manual_seed(0)
with torch.no_grad():
    model(torch.rand(1, 3, 12, 12, generator=gen), torch.rand(1, 3, 48, 48, generator=gen))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lr = torch.rand(1, 3, {h}, {w}, generator=gen)
    ref = torch.rand(1, 3, {rh}, {rw}, generator=gen)
    t0 = time.perf_counter()
    model(lr, ref)
    seconds = time.perf_counter() - t0
print(json.dumps({{"mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, "s": seconds}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the first call only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "cost_benchmark.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cost = measure_cost(load_checkpoint("rrsr_rec_seed0"))
    rows = []
    for h, w, rh, rw in CALLS[:1] if args.quick else CALLS:
        code = _ONE_CALL.format(root=str(ROOT), threads=args.threads, h=h, w=w, rh=rh, rw=rw)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        measured = json.loads(out.strip().splitlines()[-1])
        est_mb, est_s = cost.peak_mb(16 * h * w, rh * rw), cost.time_s(16 * h * w, rh * rw)
        rows.append({"lr": [h, w], "ref": [rh, rw], "estimated_mb": round(est_mb), "measured_mb": round(measured["mb"]),
                     "estimated_s": round(est_s, 2), "measured_s": round(measured["s"], 2),
                     "memory_ratio": round(est_mb / measured["mb"], 3), "time_ratio": round(est_s / measured["s"], 3)})
        r = rows[-1]
        print(f"LR {w}x{h}, ref {rw}x{rh}: memory estimated {r['estimated_mb']} MB / measured {r['measured_mb']} MB "
              f"= {r['memory_ratio']:.2f}; time {r['estimated_s']} s / {r['measured_s']} s = {r['time_ratio']:.2f}")
    write_json({"what": "rrsr_lib.cost estimate against one call in a fresh process (shipped small RRSR)",
                "threads": args.threads, "machine": platform.processor() or platform.machine(),
                "law": {"mb": cost.mb, "seconds": cost.seconds}, "calls": rows}, args.out)
    update_performance()   # PERFORMANCE.md's table of the latest numbers
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
