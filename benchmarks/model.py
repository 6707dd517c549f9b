"""Benchmark: the RRSR network on the CPU, torchvision's deformable convolution vs the sampling path.

What it measures, for one configuration (default: the authors' "paper" sizes), in ONE run, each
measurement in a fresh child process (so that its peak memory is its own and nothing is cached):

* train: one training step = forward + backward of ``model(lr, ref)`` with an L1 loss, batch 9,
  LR 40x40, Ref 160x160 (the authors' training patch); the frozen VGG and matching front end run
  inside the call (their share is reported separately);
* infer: ``model(lr, ref)`` in eval mode without gradients at CUFED5 size: LR 125x83 (HR 500x332),
  Ref 500x332; its peak resident memory is checked against 8 GB;

each with ``deform_path("torchvision")`` and ``deform_path("sampling")``. Prints the times and the
ratios torchvision / sampling and writes results/model_benchmark.json (atomically).

    .venv/bin/python benchmarks/model.py                 # paper config, 1 repeat per measurement
    .venv/bin/python benchmarks/model.py --repeats 2     # best of 2 alternating runs per path
    .venv/bin/python benchmarks/model.py --config small --batch 2 --out /tmp/b.json   # a quick look

The machine is shared: the two paths are measured alternately so that load changes hit both.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("torchvision", "sampling")


def _child(task: str, path: str, config: str, batch: int, repeats: int, threads: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from rrsr_lib.alignment import deform_path
    from rrsr_lib.device import seed_everything
    from rrsr_lib.fast.memory import keep_freed_cpu_memory
    from rrsr_lib.model_counts import count_parameters
    from rrsr_lib.models import build_model

    torch.set_num_threads(threads)
    # as rrsr_lib.train does on the CPU: freed memory is reused, not mapped and zeroed again every step
    keep_freed_cpu_memory()
    seed_everything(0)
    model = build_model("rrsr", config)
    rss_model_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # time spent in the frozen front end (VGG texture + matching), measured with hooks during the same calls
    front = {"t": 0.0}

    def pre(mod, inp):
        front["t0"] = time.perf_counter()

    def post(mod, inp, out):
        front["t"] += time.perf_counter() - front["t0"]

    for mod in (model.matcher, model.texture):
        mod.register_forward_pre_hook(pre)
        mod.register_forward_hook(post)
    g = torch.Generator().manual_seed(1)
    if task == "train":
        lr, ref = torch.rand(batch, 3, 40, 40, generator=g), torch.rand(batch, 3, 160, 160, generator=g)
        hr = torch.rand(batch, 3, 160, 160, generator=g)
        model.train()
    else:
        lr, ref = torch.rand(1, 3, 83, 125, generator=g), torch.rand(1, 3, 332, 500, generator=g)
        model.eval()
    times, fronts = [], []
    with deform_path(path):
        for _ in range(repeats):
            front["t"] = 0.0
            t0 = time.perf_counter()
            if task == "train":
                model.zero_grad(set_to_none=True)
                loss = (model(lr, ref) - hr).abs().mean()
                loss.backward()
            else:
                with torch.no_grad():
                    model(lr, ref)
            times.append(time.perf_counter() - t0)
            fronts.append(front["t"])
    return {"task": task, "path": path, "config": config, "batch": batch if task == "train" else 1,
            "lr_size": [40, 40] if task == "train" else [83, 125], "seconds": times, "best_s": min(times),
            "front_end_s": fronts, "restoration_best_s": min(t - f for t, f in zip(times, fronts)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_build_mb": rss_model_mb, "parameters": count_parameters(model), "threads": threads}


def _run_child(task, path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", task, "--path", path, "--config", args.config, "--batch", str(args.batch),
           "--repeats", "1", "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {task}/{path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="paper", help="RRSR configuration name (default: paper)")
    ap.add_argument("--batch", type=int, default=9, help="training batch size (authors: 9)")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs per path and task (best is reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (this machine: 2 cores)")
    ap.add_argument("--tasks", default="train,infer", help="comma-separated: train, infer")
    ap.add_argument("--out", default=str(ROOT / "results" / "model_benchmark.json"), help="JSON to write")
    ap.add_argument("--child", choices=("train", "infer"), help=argparse.SUPPRESS)
    ap.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.path, args.config, args.batch, args.repeats, args.threads)))
        return 0

    import torch

    runs: dict = {}
    tasks = [t for t in args.tasks.split(",") if t]
    started = time.time()
    for task in tasks:
        runs[task] = {}
        # alternate the two paths, one fresh process per timed call, so that load changes on the shared
        # machine hit both; the best of the repeats is reported
        for rep in range(args.repeats):
            for path in PATHS:
                r = _run_child(task, path, args)
                print(f"{task:5s} {path:11s} run {rep + 1}: {r['seconds'][0]:7.2f} s (front end {r['front_end_s'][0]:.2f} s), "
                      f"peak RSS {r['peak_rss_mb'] / 1024:.2f} GB, load {os.getloadavg()[0]:.1f}", flush=True)
                if path not in runs[task]:
                    runs[task][path] = r
                else:
                    m = runs[task][path]
                    m["seconds"] += r["seconds"]
                    m["front_end_s"] += r["front_end_s"]
                    m["peak_rss_mb"] = max(m["peak_rss_mb"], r["peak_rss_mb"])
                m = runs[task][path]
                m["best_s"] = min(m["seconds"])
                m["restoration_best_s"] = min(t - f for t, f in zip(m["seconds"], m["front_end_s"]))
    ratios = {}
    for task in tasks:
        tv, sp = runs[task]["torchvision"], runs[task]["sampling"]
        ratios[task] = {"total": tv["best_s"] / sp["best_s"], "restoration_only": tv["restoration_best_s"] / sp["restoration_best_s"]}
        print(f"{task}: torchvision / sampling = {ratios[task]['total']:.2f}x "
              f"(restoration network only, without the frozen VGG + matching: {ratios[task]['restoration_only']:.2f}x)")
    checks = {}
    if "train" in runs:
        checks["train_speedup_at_least_2x"] = ratios["train"]["total"] >= 2.0
    if "infer" in runs:
        peak = max(r["peak_rss_mb"] for r in runs["infer"].values())
        checks["infer_500x332_peak_rss_gb"] = peak / 1024
        checks["infer_within_8_gb"] = peak / 1024 <= 8.0
    for k, v in checks.items():
        print(f"{k}: {v}")
    result = {"what": "RRSR network on the CPU: torchvision.ops.deform_conv2d vs the sampling path (rrsr_lib.alignment)",
              "command": "python benchmarks/model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "config": args.config, "batch": args.batch, "repeats": args.repeats, "threads": args.threads,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "load_average_at_end": list(os.getloadavg())},
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": time.time() - started,
              "runs": runs, "ratios_torchvision_over_sampling": ratios, "checks": checks}
    out = Path(args.out)
    sys.path.insert(0, str(ROOT))
    from rrsr_lib.files import atomic_write_text
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    from scripts.performance_table import update_performance
    update_performance()   # PERFORMANCE.md's table of the latest numbers
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
