"""Seconds per training step with and without reciprocal learning, measured in the same run.

A reciprocal step runs the network twice (pass 1 on (LR, Ref), pass 2 on (LR(Ref_w), SR)) and back-propagates
through both, including through the frozen VGG texture features of SR, so it should cost about twice a
plain step. Target (issue 5): at most 2.1x. Plain and reciprocal steps are interleaved (A B A B ...) on
the same fixed batches so that the machine's noise hits both alike; the median of each is reported.
Making Ref_w and LR(Ref_w) happens in the data pipeline (workers), not in the step; its cost per sample is
measured and reported separately.

    .venv/bin/python benchmarks/train.py [--model rrsr] [--config small] [--batch 9] [--hr 160] [--repeats 3]

Writes (updates) results/train_benchmark.json, one entry per "<model>_<config>_b<batch>_hr<hr>", and prints the ratio.
With --scatter both, a third kind of step (reciprocal with ATen's kernel for the reference gradient) is interleaved
too, so that the saving of rrsr_lib.fast.sampling_adjoint is measured against its baseline in the same run.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rrsr_lib.data import EmbeddedTrainPairs  # noqa: E402
from rrsr_lib.device import pick_device, seed_everything  # noqa: E402
from rrsr_lib.evaluate import write_json  # noqa: E402
from rrsr_lib.fast import sampling_adjoint  # noqa: E402
from rrsr_lib.reciprocal import add_warped_reference  # noqa: E402
from rrsr_lib.train import Trainer, check_params  # noqa: E402
from scripts.performance_table import update_performance  # noqa: E402


def _batch(samples: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="rrsr", choices=["rrsr", "sisr", "c2", "ttsr"])
    ap.add_argument("--config", default="small", choices=["small", "paper"])
    ap.add_argument("--batch", type=int, default=9, help="samples per step (authors: 9)")
    ap.add_argument("--hr", type=int, default=160, help="HR patch size (authors: 160; LR = HR/4)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps of each kind")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on a shared machine two threads mostly wait for each other)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--scatter", default="numba", choices=["numba", "aten", "both"],
                    help="CPU kernel for the reference gradient of pass 2 (rrsr_lib.fast.sampling_adjoint): the "
                         "numba one (default), ATen's grid_sampler_2d_backward, or both: a third interleaved "
                         "kind of step, reciprocal with ATen's kernel, measures what the numba kernel saves")
    ap.add_argument("--cpu-amp", default="off", choices=["off", "both"],
                    help="both: two more interleaved kinds of step on the CPU, plain and reciprocal under bfloat16 "
                         "autocast (the trainer's cpu_amp trial), so their saving is measured in the same run")
    ap.add_argument("--out", default=str(ROOT / "results" / "train_benchmark.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sampling_adjoint.use_numba(args.scatter != "aten")
    scatter = "numba" if sampling_adjoint.available() else "aten"
    seed_everything(0)
    device = pick_device(args.device)
    compare = args.scatter == "both" and scatter == "numba" and device.type == "cpu"
    amp_compare = args.cpu_amp == "both" and device.type == "cpu"
    p = check_params(model=args.model, model_config=args.config, batch_size=args.batch, hr_patch=args.hr,
                     lr_patch=args.hr // 4, ref_size=args.hr, device=args.device, output_dir="/tmp/unused")
    trainer = Trainer(p, device=device)
    data = EmbeddedTrainPairs(patch_size=args.hr, length=args.batch, seed=0)
    rng = np.random.default_rng(0)
    items = [{k: data[i][k] for k in ("lr", "hr", "ref")} for i in range(args.batch)]
    t = time.perf_counter()
    items = [add_warped_reference(s, rng) for s in items]
    warp_seconds = (time.perf_counter() - t) / args.batch
    batch = _batch(items)

    def timed(kind: str) -> tuple[float, float, float, int]:
        """(wall s, CPU s, of which system s, page faults) of one step."""
        trainer.p = dict(p, reciprocal=not kind.startswith("plain"))
        sampling_adjoint.use_numba(kind != "reciprocal_aten" and scatter == "numba")
        # the cpu_amp kinds: what Trainer(cpu_amp=True) sets (bfloat16 autocast on the CPU)
        if amp_compare:
            trainer.amp_dtype = torch.bfloat16 if kind.endswith("_bf16") else None
        if device.type == "cuda":
            torch.cuda.synchronize()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1, c1 = time.perf_counter(), time.process_time()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        return t1 - t0, c1 - c0, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt

    kinds = (("plain", "reciprocal") + (("reciprocal_aten",) if compare else ())
             + (("plain_bf16", "reciprocal_bf16") if amp_compare else ()))
    for kind in kinds:   # warm-up (first calls allocate and pick kernels)
        timed(kind)
    runs = {kind: [] for kind in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            runs[kind].append(timed(kind))
    # On a CPU the machine is shared with other work: the CPU time of this process (all its threads) is
    # far less disturbed by other processes than the wall time, so the CPU ratio is the measure there; on
    # CUDA the wall time (after synchronising) is.
    col = 0 if device.type == "cuda" else 1
    plain = [r[col] for r in runs["plain"]]
    recip = [r[col] for r in runs["reciprocal"]]
    # the machine's speed drifts over minutes: the ratio within each repeat (steps seconds apart) is a second,
    # drift-robust estimate next to the ratio of the medians
    pairwise = [r / q for r, q in zip(recip, plain)]
    result = {
        "what": "seconds per training step (forward + backward + Adam), same batches, interleaved, median; "
                + ("wall time" if col == 0 else "CPU time of this process (wall times listed too)"),
        "plain_wall_seconds": [r[0] for r in runs["plain"]],
        "reciprocal_wall_seconds": [r[0] for r in runs["reciprocal"]],
        # the kernel's share of the CPU time and the page faults: with rrsr_lib.fast.memory.keep_freed_cpu_memory
        # (the Trainer turns it on) both should be ~0 after the warm-up, so the ratio is the steps' own work
        "plain_system_seconds": [r[2] for r in runs["plain"]],
        "reciprocal_system_seconds": [r[2] for r in runs["reciprocal"]],
        "plain_page_faults": [r[3] for r in runs["plain"]],
        "reciprocal_page_faults": [r[3] for r in runs["reciprocal"]],
        "model": args.model, "config": args.config, "batch": args.batch, "hr_patch": args.hr, "lr_patch": args.hr // 4,
        "device": str(device), "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "repeats": args.repeats,
        "reference_gradient_kernel": scatter if device.type == "cpu" else "torchvision (CUDA path)",
        "plain_seconds": plain, "reciprocal_seconds": recip,
        "plain_median_s": statistics.median(plain), "reciprocal_median_s": statistics.median(recip),
        "ratio": statistics.median(recip) / statistics.median(plain),
        "ratio_per_repeat": pairwise, "median_ratio_per_repeat": statistics.median(pairwise),
        "target_ratio": 2.1,
        "warp_seconds_per_sample_in_data_pipeline": warp_seconds,
    }
    result["meets_target"] = result["ratio"] <= 2.1
    if compare:
        aten = [r[col] for r in runs["reciprocal_aten"]]
        result.update(reciprocal_aten_seconds=aten, reciprocal_aten_median_s=statistics.median(aten),
                      ratio_aten=statistics.median(aten) / statistics.median(plain),
                      median_ratio_per_repeat_aten=statistics.median(a / q for a, q in zip(aten, plain)))
    if amp_compare:
        for kind in ("plain", "reciprocal"):
            amp = [r[col] for r in runs[f"{kind}_bf16"]]
            base = plain if kind == "plain" else recip
            result[f"{kind}_bf16_seconds"] = amp
            result[f"{kind}_bf16_median_s"] = statistics.median(amp)
            result[f"{kind}_speedup_bf16"] = statistics.median(base) / statistics.median(amp)
    out = Path(args.out)
    runs = json.loads(out.read_text()) if out.exists() else {}
    if "ratio" in runs:   # an older file with a single run
        runs = {}
    key = f"{args.model}_{args.config}_b{args.batch}_hr{args.hr}"
    if scatter == "aten" and device.type == "cpu":   # the before-and-after run of the reference gradient's kernel
        key += "_aten"
    if amp_compare:   # the run that measures bfloat16 autocast beside float32
        key += "_cpu_amp"
    runs[key] = result
    write_json(runs, out)
    update_performance()   # PERFORMANCE.md's table of the latest numbers
    print(f"{args.model} ({args.config}), batch {args.batch}, LR {args.hr // 4}x{args.hr // 4}, {device}: "
          f"plain {result['plain_median_s']:.2f} s/step, reciprocal {result['reciprocal_median_s']:.2f} s/step, "
          f"ratio {result['ratio']:.2f} (target <= 2.1); Ref_w + LR(Ref_w) in the data pipeline: "
          f"{1000 * warp_seconds:.0f} ms/sample")
    within = ", ".join(f"{r:.2f}" for r in pairwise)
    print(f"  ratio within each repeat: {within} (median {result['median_ratio_per_repeat']:.2f})")
    faults = sum(result["plain_page_faults"]) + sum(result["reciprocal_page_faults"])
    system = sum(result["plain_system_seconds"]) + sum(result["reciprocal_system_seconds"])
    print(f"  timed steps: {faults} page faults, {system:.2f} s in the kernel (system time)")
    if compare:
        print(f"  reciprocal with ATen's reference-gradient kernel: {result['reciprocal_aten_median_s']:.2f} s/step, "
              f"ratio {result['ratio_aten']:.2f} "
              f"(within each repeat: median {result['median_ratio_per_repeat_aten']:.2f})")
    if amp_compare:
        print(f"  bfloat16 autocast (cpu_amp): plain {result['plain_bf16_median_s']:.2f} s/step "
              f"({result['plain_speedup_bf16']:.2f}x faster), reciprocal "
              f"{result['reciprocal_bf16_median_s']:.2f} s/step ({result['reciprocal_speedup_bf16']:.2f}x faster)")
    return result


if __name__ == "__main__":
    main()
