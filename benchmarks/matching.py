"""Benchmark of patch matching: the fast streamed matcher against the full-matrix baseline, same run.

Usage:  .venv/bin/python -u benchmarks/matching.py [--threads 1] [--quick] [--no-figure] [--out FILE]

What it measures (every number in its own subprocess, so that peak memory is that of one call):
* this machine's single-precision matrix-multiply rate (2048 and 4096 square), the ceiling;
* time (best of 3 at CUFED5 size, one run elsewhere) and peak extra memory of ``match_patches`` (fast, exact) and ``match_patches_naive``
  (unfold + one batched matmul: the full similarity matrix, as TTSR does) at CUFED5 size
  (LR 125x83, C=256, same-size reference) and for LR and reference 200x200, C=64, plus a sweep of
  square sizes for the figure;
* the coarse-to-fine matcher (MASA-SR's idea) against exact matching on real features (ImageNet
  VGG relu3_1 of scikit-image's stereo_motorcycle pair at full size, 185x125 features): speed and
  agreement.

Peak extra memory = the process's peak resident set during the call (VmHWM, reset before the call
through /proc/self/clear_refs) minus its resident set just before (inputs already allocated).
GFLOP/s are "patch-equivalent": 2 * 9C * (input patches) * (reference patches) / time, the work of
the definition; the fast matcher does about 9x fewer multiplications, so its patch-equivalent rate
can exceed the matmul ceiling. Its own matmul rate (the multiplications it really does) is given too.

Writes results/matching_benchmark.json and figures/02_matching_benchmark.png/.pdf.
The machine is shared: the load average before and after is recorded; compare ratios, not seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 2 ** 20


def _status() -> dict:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(spec: dict) -> dict:
    """Run one measurement in this (fresh) process; return a dict of results."""
    import torch
    torch.set_num_threads(spec["threads"])
    from rrsr_lib.fast.matching_blocked import plan_blocks
    from rrsr_lib.matching import match_coarse_to_fine, match_patches, match_patches_naive

    if spec["method"] == "gemm":
        out = {}
        for n in (2048, 4096):
            a, b = torch.randn(n, n), torch.randn(n, n)
            a @ b
            best = min(_timed(lambda: a @ b) for _ in range(3))
            out[f"sgemm_{n}_gflops"] = 2 * n ** 3 / best / 1e9
        return out

    torch.manual_seed(spec.get("seed", 0))
    if "features" in spec:
        feats = torch.load(spec["features"], weights_only=True)
        x, r = feats["input"], feats["ref"]
    else:
        x = torch.randn(spec["B"], spec["C"], spec["H"], spec["W"])
        r = torch.randn(spec["B"], spec["C"], spec["Hr"], spec["Wr"])
    method = spec["method"]
    budget = spec.get("budget", 512)
    if method == "fast":
        fn = lambda: match_patches(x, r, memory_budget_mb=budget)
    elif method == "naive":
        fn = lambda: match_patches_naive(x, r)
    elif method == "c2f":
        fn = lambda: match_coarse_to_fine(x, r, block=spec["block"], radius=spec["radius"], ref_scale=spec["ref_scale"],
                                          memory_budget_mb=budget)
    else:
        raise SystemExit(f"unknown method {method}")
    # warm-up on a small crop (library loading, thread pools), then the measured calls
    small = (x[..., :12, :12], r[..., :12, :12])
    if method == "c2f":
        match_patches(*small)
    else:
        (match_patches if method == "fast" else match_patches_naive)(*small)
    before = _status()["VmRSS"]
    can_reset = _reset_peak()
    t0 = time.perf_counter()
    idx, score = fn()
    first = time.perf_counter() - t0
    peak = _status()["VmHWM"]
    times = [first] + [_timed(fn) for _ in range(spec.get("repeats", 1) - 1)]
    out = {"time_s": min(times), "times_s": times, "peak_extra_mib": (peak - before) / MIB if can_reset else None}
    if method == "fast":
        k = 3
        plan = plan_blocks(x.shape[0], x.shape[1], x.shape[2], x.shape[3], r.shape[2], r.shape[3], k, budget)
        hr, wr = r.shape[2] - k + 1, r.shape[3] - k + 1
        nv = -(-hr // plan.bv)
        # multiplications really done: every input pixel row against every reference block (with its k-1 overlap rows)
        gemm_flop = 2 * x.shape[1] * x.shape[0] * x.shape[2] * x.shape[3] * (hr + nv * (k - 1)) * r.shape[3]
        out["plan"] = {"rows": plan.rows, "bv": plan.bv, "bu": plan.bu, "bx": plan.bx, "planned_mib": plan.total_bytes / MIB}
        out["gemm_gflop"] = gemm_flop / 1e9
    if spec.get("save"):
        torch.save({"index": idx, "score": score}, spec["save"])
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(spec: dict) -> dict:
    """Run ``worker(spec)`` in a fresh Python process and return its result."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {spec}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def patch_gflop(c, h, w, hr, wr, b=1, k=3):
    """Work of the definition: 2 * k*k*C multiply-adds per (input patch, reference patch) pair, in GFLOP."""
    return 2 * k * k * c * b * (h - k + 1) * (w - k + 1) * (hr - k + 1) * (wr - k + 1) / 1e9


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def mem_available_mib() -> float:
    text = Path("/proc/meminfo").read_text()
    return int(re.search(r"MemAvailable:\s+(\d+)", text).group(1)) / 1024


def real_features(tmp: Path) -> tuple[Path, dict]:
    """ImageNet VGG relu3_1 features of scikit-image's stereo_motorcycle pair (741x500 -> 185x125), saved for the workers."""
    import torch
    from skimage import data as skdata
    from rrsr_lib.vgg import VGGFeatures
    left, right, _ = skdata.stereo_motorcycle()
    vgg = VGGFeatures(layers=("relu3_1",))
    to_t = lambda a: torch.from_numpy(a[: a.shape[0] // 4 * 4, : a.shape[1] // 4 * 4].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        fi, fr = vgg(to_t(left))["relu3_1"], vgg(to_t(right))["relu3_1"]
    path = tmp / "motorcycle_relu3_1.pt"
    torch.save({"input": fi.contiguous(), "ref": fr.contiguous()}, path)
    return path, {"pair": "skimage stereo_motorcycle (left = input, right = reference)", "features": "ImageNet VGG relu3_1",
                  "shape": list(fi.shape), "weights": vgg.source}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in every measurement (this machine: 2 cores shared by several developers; "
                         "with 2 threads every multi-threaded op can stall on a descheduled thread, see the report)")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a smoke run)")
    ap.add_argument("--no-figure", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "results" / "matching_benchmark.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    th = args.threads
    reps = 1 if args.quick else 3
    report = {"threads": th, "loadavg_before": loadavg(), "cpu_count": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"threads={th}, load average {report['loadavg_before']} on {os.cpu_count()} cores (shared machine: expect noise)")
    gemm = run({"method": "gemm", "threads": th})
    report["ceiling"] = gemm
    ceiling = max(gemm.values())
    print(f"sgemm ceiling: {gemm['sgemm_2048_gflops']:.1f} GFLOP/s (2048), {gemm['sgemm_4096_gflops']:.1f} GFLOP/s (4096)")

    cases = {}

    def case(name, c, h, w, hr, wr, methods, repeats):
        row = {"C": c, "H": h, "W": w, "Hr": hr, "Wr": wr, "patch_gflop": patch_gflop(c, h, w, hr, wr)}
        for m in methods:
            spec = {"method": m, "threads": th, "B": 1, "C": c, "H": h, "W": w, "Hr": hr, "Wr": wr, "repeats": repeats}
            res = run(spec)
            res["patch_equiv_gflops"] = row["patch_gflop"] / res["time_s"]
            if "gemm_gflop" in res:
                res["gemm_gflops"] = res["gemm_gflop"] / res["time_s"]
            row[m] = res
            print(f"  {name:>16} {m:>5}: {res['time_s']:.3f} s, +{res['peak_extra_mib']:.0f} MiB, "
                  f"{res['patch_equiv_gflops']:.0f} patch-equivalent GFLOP/s")
        if "fast" in row and "naive" in row:
            row["speedup_fast_vs_naive"] = row["naive"]["time_s"] / row["fast"]["time_s"]
            print(f"  {name:>16} speed-up fast vs full matrix: {row['speedup_fast_vs_naive']:.2f}x")
        cases[name] = row
        return row

    print("CUFED5 size (LR 125x83, C=256, same-size reference):")
    cufed = case("cufed5", 256, 83, 125, 83, 125, ["naive", "fast"], reps)
    print("LR and reference 200x200, C=64:")
    # the full matrix there: (198*198)^2 float32 = 5.7 GiB plus its unfolded inputs; run it only if memory allows
    full_need = (198 * 198) ** 2 * 4 / MIB
    large_methods = ["fast"] + (["naive"] if mem_available_mib() > 1.6 * full_need and not args.quick else [])
    large = case("200x200_c64", 64, 200, 200, 200, 200, large_methods, 1)
    large["full_matrix_mib"] = full_need
    if "naive" not in large:
        print(f"  full matrix not run (needs {full_need:.0f} MiB for the matrix alone, {mem_available_mib():.0f} MiB available)")

    print("size sweep, C=256, square input and reference:")
    sweep_sides = [32, 64, 96] if args.quick else [32, 48, 64, 96, 125, 160, 200]
    sweep = []
    for s in sweep_sides:
        methods = ["fast"] + (["naive"] if s <= 125 else [])
        sweep.append(case(f"sweep_{s}", 256, s, s, s, s, methods, 1))
    report["sweep"] = [{"side": s, **{m: {"time_s": row[m]["time_s"], "peak_extra_mib": row[m]["peak_extra_mib"]}
                                      for m in ("fast", "naive") if m in row}} for s, row in zip(sweep_sides, sweep)]

    print("coarse-to-fine vs exact on real features (motorcycle stereo pair, VGG relu3_1):")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fpath, finfo = real_features(tmp)
        exact_path, approx_path = tmp / "exact.pt", tmp / "approx.pt"
        ex = run({"method": "fast", "threads": th, "features": str(fpath), "repeats": 1, "save": str(exact_path)})
        c2f_cfg = {"block": 8, "radius": 4, "ref_scale": 2}
        ap_ = run({"method": "c2f", "threads": th, "features": str(fpath), "repeats": 1, "save": str(approx_path), **c2f_cfg})
        import torch
        e, a = torch.load(exact_path, weights_only=True), torch.load(approx_path, weights_only=True)
        shape = finfo["shape"]
        wr = shape[3] - 2
        same = (e["index"] == a["index"]).float().mean().item()
        ey, ex_ = torch.div(e["index"], wr, rounding_mode="floor"), e["index"] % wr
        ay, ax = torch.div(a["index"], wr, rounding_mode="floor"), a["index"] % wr
        near = (((ey - ay).abs() <= 1) & ((ex_ - ax).abs() <= 1)).float().mean().item()
        score_ratio = (a["score"] / e["score"].clamp_min(1e-6)).mean().item()
        report["coarse_to_fine"] = {**finfo, "config": c2f_cfg, "exact": ex, "coarse_to_fine": ap_,
                                    "speedup_vs_exact": ex["time_s"] / ap_["time_s"], "same_index": same,
                                    "within_1px_of_exact": near, "mean_score_ratio": score_ratio}
        print(f"  exact {ex['time_s']:.2f} s, coarse-to-fine {ap_['time_s']:.2f} s ({ex['time_s'] / ap_['time_s']:.2f}x); "
              f"same index {same:.3f}, within 1 px {near:.3f}, mean score ratio {score_ratio:.4f}")

    report["cases"] = cases
    report["loadavg_after"] = loadavg()
    report["targets"] = {
        "cufed5_speedup_ge_5": cufed["speedup_fast_vs_naive"] >= 5,
        "cufed5_fast_extra_le_256mib": cufed["fast"]["peak_extra_mib"] <= 256,
        "large_fast_extra_le_512mib": large["fast"]["peak_extra_mib"] <= 512,
    }
    report["matmul_ceiling_gflops"] = ceiling
    print(f"targets: {report['targets']}; load average after {report['loadavg_after']}")

    out = Path(args.out)
    sys.path.insert(0, str(ROOT))
    from rrsr_lib.files import atomic_write_text
    atomic_write_text(out, json.dumps(report, indent=1))
    from scripts.performance_table import update_performance
    update_performance()   # PERFORMANCE.md's table of the latest numbers
    print(f"wrote {out}")
    if not args.no_figure:
        plot(report)


def plot(report: dict) -> None:
    """Time and peak extra memory against image size (from the saved report)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rrsr_lib.figures import save_figure
    sweep = report["sweep"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for m, label, style in (("naive", "full matrix (unfold + one matmul)", "o--"), ("fast", "match_patches (streamed shift sums)", "s-")):
        pts = [(r["side"], r[m]) for r in sweep if m in r]
        xs = [s * s for s, _ in pts]
        axes[0].plot(xs, [v["time_s"] for _, v in pts], style, label=label)
        axes[1].plot(xs, [v["peak_extra_mib"] for _, v in pts], style, label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="input (= reference) positions H*W, C=256", ylabel="time (s)",
                title=f"time, {report['threads']} thread(s), shared CPU")
    axes[1].set(xscale="log", yscale="log", xlabel="input (= reference) positions H*W, C=256", ylabel="peak extra memory (MiB)",
                title="peak extra memory (default budget 512 MiB)")
    axes[1].axhline(512, color="grey", lw=0.8, ls=":")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, "02_matching_benchmark")
    plt.close(fig)


if __name__ == "__main__":
    main()
