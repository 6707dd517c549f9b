"""Does the CUFED loader keep a GPU busy? Samples per second with 0, 1 and 2 workers, and the cost of each stage.

A paper-configuration step takes 0.112 s plain and 0.215 s reciprocal on one H200 with batch 9 (README), so one
GPU needs at least 9 / 0.112 = 80 samples per second. This script builds a folder in CUFED's training layout
(``input/NNN.png``, ``ref/NNN.png``, 160 x 160) from the embedded photos (CUFED-like pairs, rrsr_lib.data), then
runs the training loader exactly as rrsr_lib.train builds it (CUFEDTrain with the authors' augmentation, the
reciprocal Ref_w and its LR made per sample, batch 9, persistent workers) and measures samples per second with
0, 1 and 2 workers; and, one sample at a time in this process, the cost of each stage: PNG decode, the
reference resize (none at 160 px), augmentation, the LR by PIL bicubic, and Ref_w (warp + its PIL LR).

    .venv/bin/python benchmarks/loader.py [--pairs 120] [--batches 12] [--out results/loader_benchmark.json]
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rrsr_lib.data import CUFEDTrain, make_pair  # noqa: E402
from rrsr_lib.data.embedded import manifest, read_embedded, uint8_to_tensor  # noqa: E402
from rrsr_lib.degradation import bicubic_downsample  # noqa: E402
from rrsr_lib.data.embedded import joint_augment  # noqa: E402
from rrsr_lib.evaluate import write_json  # noqa: E402
from rrsr_lib.images import load_hr, save_png  # noqa: E402
from rrsr_lib.reciprocal import add_warped_reference  # noqa: E402
from rrsr_lib.train_data import StepBatches, TrainSamples  # noqa: E402
from scripts.performance_table import update_performance  # noqa: E402

GPU_STEP_S = 0.112        # paper configuration, plain, batch 9, one H200 (results/train_benchmark_cuda.json)
BATCH = 9
NEEDED = BATCH / GPU_STEP_S


def build_folder(root: Path, pairs: int) -> Path:
    photos = [read_embedded(r) for r in manifest() if r["split"] == "train"]
    rng = np.random.default_rng(0)
    for i in range(pairs):
        photo, other = photos[i % len(photos)], photos[(i + 1) % len(photos)]
        pair = make_pair(photo, 1 + i % 5, 160, rng, other=other)
        save_png(root / "input" / f"{i:03d}.png", pair["hr"])
        save_png(root / "ref" / f"{i:03d}.png", pair["ref"])
    return root


def loader_rate(root: Path, workers: int, batches: int) -> float:
    samples = TrainSamples(CUFEDTrain(root, ref_size=160, augment=True, seed=0), 0, True, (5.0, 19.0))
    sampler = StepBatches(len(samples), BATCH, 0, 0, batches + 2, 0, 1)
    loader = DataLoader(samples, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it), next(it)   # start-up (worker processes, first files) is not what a long run pays per step
    t = time.perf_counter()
    n = sum(next(it)["hr"].shape[0] for _ in range(batches))
    return n / (time.perf_counter() - t)


def stage_costs(root: Path, n: int) -> dict[str, float]:
    ds = CUFEDTrain(root, ref_size=160, augment=True, seed=0)
    costs = {k: [] for k in ("decode (2 PNGs)", "reference resize", "augment", "LR (PIL bicubic /4)",
                             "Ref_w (warp + PIL LR)", "to tensors")}
    rng = np.random.default_rng(0)
    for i in range(n):
        _, hr_path, ref_path = ds.pairs[i % len(ds.pairs)]
        t0 = time.perf_counter()
        hr, ref = load_hr(hr_path), load_hr(ref_path)
        t1 = time.perf_counter()
        if ref.shape[:2] != (160, 160):
            from PIL import Image
            ref = np.asarray(Image.fromarray(ref).resize((160, 160), Image.BICUBIC))
        t2 = time.perf_counter()
        hr, ref = joint_augment([hr, ref], *(rng.random(3) < 0.5))
        t3 = time.perf_counter()
        lr = bicubic_downsample(np.ascontiguousarray(hr))
        t4 = time.perf_counter()
        sample = {"hr": uint8_to_tensor(hr), "lr": uint8_to_tensor(lr), "ref": uint8_to_tensor(ref)}
        t5 = time.perf_counter()
        add_warped_reference(sample, rng, (5.0, 19.0))
        t6 = time.perf_counter()
        for key, dt in zip(costs, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t6 - t5, t5 - t4)):
            costs[key].append(dt)
    return {k: statistics.median(v) * 1000 for k, v in costs.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=120)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--out", default=str(ROOT / "results" / "loader_benchmark.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = build_folder(Path(tmp) / "CUFED", args.pairs)
        stages = stage_costs(root, 40)
        rates = {w: loader_rate(root, w, args.batches) for w in (0, 1, 2)}
    per_sample_ms = sum(stages.values())
    result = {"what": "training loader of rrsr_lib.train on a CUFED-layout folder (160 px pairs from the embedded "
                      "photos), batch 9, reciprocal Ref_w, augmentation on; samples per second after start-up",
              "samples_per_second": {str(w): r for w, r in rates.items()},
              "stage_ms_per_sample": stages, "sum_of_stages_ms": per_sample_ms,
              "needed_per_gpu": NEEDED, "gpu_step_s": GPU_STEP_S, "cpu_cores": os.cpu_count(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_before": os.getloadavg(),
              "workers_per_gpu_at_the_one_worker_rate": math.ceil(NEEDED / rates[1])}
    for w, r in rates.items():
        print(f"{w} worker(s): {r:6.1f} samples/s ({r / NEEDED:.2f}x the {NEEDED:.0f}/s one GPU needs)")
    for k, v in stages.items():
        print(f"  {k:<24} {v:6.2f} ms per sample")
    print(f"  sum {per_sample_ms:.2f} ms -> one process makes {1000 / per_sample_ms:.0f} samples/s; "
          f"one GPU needs about {result['workers_per_gpu_at_the_one_worker_rate']} workers at the 1-worker rate")
    write_json(result, args.out)
    update_performance()   # PERFORMANCE.md's table of the latest numbers
    return result


if __name__ == "__main__":
    main()
