"""The input gradient of bilinear sampling: rrsr_lib.fast.sampling_adjoint's numba kernel against ATen's, same run.

This gradient (a scatter) is what reciprocal learning's pass 2 adds to the alignment units' backward pass,
because its reference, SR, is not detached (rrsr_lib.reciprocal). For one sample of the batch at each scale
of RRSR's training set-up (HR patch 160: x4 features 8 groups x 8 channels sampled at 9 x 160 x 160 tap
positions on the 257 x 257 padded map, x2 8 x 16 on 129 x 129, x1 8 x 32 on 65 x 65), and for two kinds of
positions, it times:

* ``aten``: ``torch.ops.aten.grid_sampler_2d_backward(..., output_mask=[True, False])``, the baseline: the
  gradient of the padded map, cropped to the feature's size x size;
* ``numba``: ``bilinear_input_grad(..., accumulate=False, grid_size=padded)``: the feature's gradient only,
  as rrsr_lib.alignment asks for it.

Positions: "smooth" (offsets that vary slowly over the image) and "matched" (a flow that jumps from one
LR pixel's 4x4 block to the next, as patch matching gives, plus small per-tap residuals). The kinds are
interleaved call by call on one CPU thread and the median CPU time of each is reported, with the ratio.
Both results are compared (they differ by the order of float additions only).

    .venv/bin/python benchmarks/sampling_adjoint.py [--repeats 15] [--out results/sampling_adjoint_benchmark.json]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rrsr_lib.alignment import TAPS, _exact_size  # noqa: E402
from rrsr_lib.evaluate import write_json  # noqa: E402
from rrsr_lib.fast import sampling_adjoint  # noqa: E402
from scripts.performance_table import update_performance  # noqa: E402

# scale -> (channels per group, feature size) for HR patch 160 and 8 deformable groups (RRSR's training set-up)
SCALES = {"x4": (8, 160), "x2": (16, 80), "x1": (32, 40)}
GROUPS = 8


def _grid(kind: str, size: int, gen: torch.Generator) -> torch.Tensor:
    """grid_sample coordinates [G, 9*size, size, 2] of the 9 taps around every position, on the padded map."""
    padded = _exact_size(size)
    ys = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1)
    xs = torch.arange(size, dtype=torch.float32).view(1, 1, 1, size)
    tap_y = (torch.arange(3).repeat_interleave(3) - 1).view(1, TAPS, 1, 1).float()
    tap_x = (torch.arange(3).repeat(3) - 1).view(1, TAPS, 1, 1).float()
    if kind == "smooth":
        coarse = torch.randn(1, GROUPS * TAPS * 2, 10, 10, generator=gen) * 4
        off = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]
        off = off.view(GROUPS, TAPS, 2, size, size)
        dy, dx = off[:, :, 0], off[:, :, 1]
    else:
        block = max(1, size // 40)   # one LR pixel covers block x block positions at this scale
        cells = -(-size // block)
        target = torch.rand(2, cells, cells, generator=gen) * size
        target = target.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :size, :size]
        jitter = torch.randn(2, GROUPS, TAPS, size, size, generator=gen) * 0.3
        dy = target[0] - ys[0, 0] + jitter[0]
        dx = target[1] - xs[0, 0] + jitter[1]
    py, px = ys + tap_y + dy, xs + tap_x + dx
    grid = torch.stack((px * (2.0 / (padded - 1)) - 1.0, py * (2.0 / (padded - 1)) - 1.0), dim=-1)
    return grid.reshape(GROUPS, TAPS * size, size, 2).contiguous()


def _cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15, help="timed calls of each kind per case (interleaved)")
    ap.add_argument("--out", default=str(ROOT / "results" / "sampling_adjoint_benchmark.json"))
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    if not sampling_adjoint.available():
        print("benchmarks/sampling_adjoint.py: skipped, numba is not installed (pip install numba)")
        return {}
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    cases = {}
    for scale, (cg, size) in SCALES.items():
        padded = _exact_size(size)
        # the feature map (size x size) zero-padded to 2^k + 1, as rrsr_lib.alignment samples it
        x = torch.zeros(GROUPS, cg, padded, padded)
        x[..., :size, :size] = torch.randn(GROUPS, cg, size, size, generator=gen)
        grad_samples = torch.randn(GROUPS, cg, TAPS * size, size, generator=gen)
        for kind in ("smooth", "matched"):
            grid = _grid(kind, size, gen)
            out = torch.empty(GROUPS, cg, size, size)

            def aten():
                # ATen's kernel gives the padded map's gradient; the feature's is its top-left size x size part
                gx = torch.ops.aten.grid_sampler_2d_backward(grad_samples, x, grid, 0, 0, True, [True, False])[0]
                return gx[..., :size, :size]

            def numba():
                # what rrsr_lib.alignment asks for: the feature's gradient only, coordinates on the padded map
                return sampling_adjoint.bilinear_input_grad(grad_samples, grid, out, accumulate=False,
                                                            grid_size=(padded, padded))

            reference = aten().clone()
            err = (numba() - reference).abs().max().item() / reference.abs().max().item()
            times = {"aten": [], "numba": []}
            for _ in range(args.repeats):
                times["aten"].append(_cpu_seconds(aten))
                times["numba"].append(_cpu_seconds(numba))
            med = {k: statistics.median(v) for k, v in times.items()}
            cases[f"{scale}_{kind}"] = {
                "groups": GROUPS, "channels_per_group": cg, "map": [size, size], "padded_map": [padded, padded],
                "positions": TAPS * size * size,
                "aten_seconds": times["aten"], "numba_seconds": times["numba"],
                "aten_median_s": med["aten"], "numba_median_s": med["numba"],
                "speedup": med["aten"] / med["numba"], "max_relative_difference": err,
            }
            print(f"{scale} ({GROUPS}x{cg} channels, {size}x{size} map padded to {padded}), {kind} positions: ATen "
                  f"{1000 * med['aten']:.1f} ms, numba {1000 * med['numba']:.1f} ms, "
                  f"{med['aten'] / med['numba']:.2f}x faster (max relative difference {err:.1e})")
    result = {
        "what": "CPU seconds for the input gradient of grid_sample (bilinear, zeros, align_corners=True) for one "
                "sample of the batch, one thread, kinds interleaved, median",
        "threads": 1, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "repeats": args.repeats, "cases": cases,
    }
    write_json(result, args.out)
    update_performance()   # PERFORMANCE.md's table of the latest numbers
    return result


if __name__ == "__main__":
    main()
