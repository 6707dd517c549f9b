"""Keep PERFORMANCE.md's table of benchmark results equal to what the benchmarks last wrote into results/.

    python scripts/performance_table.py          # rewrite the block between PERFORMANCE.md's benchmark markers
    python scripts/performance_table.py --check  # exit 1 (and say so) when the block differs

Each benchmark under benchmarks/ writes its numbers to results/<name>.json and then calls
:func:`update_performance`, so a benchmark run updates the document; tests/test_repository.py runs the check.
One row per results file: the script that writes it and its headline numbers (the prose around the table
explains them). A results file that is missing gets no row.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from rrsr_lib.files import atomic_write_text  # noqa: E402

START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def _contention(d: dict) -> str:
    parts = []
    for name, rows in d["workloads"].items():
        r = rows["beside a CPU-bound process"]
        parts.append(f"{name}, beside a CPU-bound process: default threads {r['default_threads_fair_s']:.2f} s, "
                     f"one thread {r['one_thread_s']:.2f} s (**{r['ratio_fair_to_one']:.2f}x**; without fair_threads "
                     f"{r['ratio_default_to_one']:.2f}x)")
    return "; ".join(parts)


def _cost(d: dict) -> str:
    mem = [c["memory_ratio"] for c in d["calls"]]
    sec = [c["time_ratio"] for c in d["calls"]]
    return (f"{len(d['calls'])} calls of the shipped small RRSR: estimated / measured peak memory "
            f"**{min(mem):.2f}-{max(mem):.2f}x**, time {min(sec):.2f}-{max(sec):.2f}x ({d['threads']} thread)")


def _inference(d: dict) -> str:
    parts = []
    for name, r in d["configs"].items():
        parts.append(f"{name} (LR {r['lr_hw'][1]}x{r['lr_hw'][0]}): {r['sampling']['seconds']:.2f} s = "
                     f"**{r['sampling']['ratio_to_limit']:.2f}x** the limit of {r['limit_s']:.2f} s (target "
                     f"{r['target_ratio']}x: {'met' if r['meets_target'] else 'not met'}; torchvision's path "
                     f"{r['torchvision']['ratio_to_limit']:.2f}x)")
    return f"{'; '.join(parts)}; {d['threads']} threads"


def _loader(d: dict) -> str:
    rates = " / ".join(f"{v:.0f}" for v in d["samples_per_second"].values())
    return (f"**{rates}** samples/s with {' / '.join(d['samples_per_second'])} workers; one GPU needs "
            f"{d['needed_per_gpu']:.0f}")


def _matching(d: dict) -> str:
    c = d["cases"]["cufed5"]
    return (f"CUFED5 size (C={c['C']}, {c['W']}x{c['H']} vs {c['Wr']}x{c['Hr']}): blocked {c['fast']['time_s']:.2f} s "
            f"against naive {c['naive']['time_s']:.2f} s (**{c['naive']['time_s'] / c['fast']['time_s']:.1f}x**), "
            f"{d['threads']} thread")


def _matching_cuda(d: dict) -> str:
    c = d["cufed5"]
    return (f"{d['device']}, CUFED5 size: default {c['default']['median_s'] * 1e3:.1f} ms, naive "
            f"{c['naive']['median_s'] * 1e3:.1f} ms, peak {c['default']['peak_extra_mib']:.0f} against "
            f"{c['naive']['peak_extra_mib']:.0f} MiB")


def _model(d: dict) -> str:
    r = d["ratios_torchvision_over_sampling"]
    return (f"{d['config']} configuration, torchvision / sampling path: training step **{r['train']['total']:.2f}x**, "
            f"inference {r['infer']['total']:.2f}x ({d['threads']} threads)")


def _sampling_adjoint(d: dict) -> str:
    speedups = [c["speedup"] for c in d["cases"].values()]
    return (f"reference gradient of bilinear sampling, ATen / numba: **{min(speedups):.1f}-{max(speedups):.1f}x** "
            f"over {len(speedups)} cases ({d['threads']} thread)")


def _train(d: dict) -> str:
    parts = []
    for name, r in d.items():
        plain, rec = statistics.median(r["plain_seconds"]), statistics.median(r["reciprocal_seconds"])
        unit = f"{plain * 1e3:.0f} / {rec * 1e3:.0f} ms" if plain < 1 else f"{plain:.1f} / {rec:.1f} s"
        parts.append(f"{r['config']} b{r['batch']} HR {r['hr_patch']} on {r['device']}: plain / reciprocal step "
                     f"{unit} (**{rec / plain:.2f}x**)"
                     + (f", bfloat16 autocast {r['plain_speedup_bf16']:.2f}x / {r['reciprocal_speedup_bf16']:.2f}x "
                        f"faster" if "reciprocal_speedup_bf16" in r else ""))
    return "; ".join(parts)


# results file -> (the script that writes it, its headline)
HEADLINES: dict[str, tuple[str, Callable[[dict], str]]] = {
    "inference_benchmark.json": ("benchmarks/inference.py", _inference),
    "model_benchmark.json": ("benchmarks/model.py", _model),
    "train_benchmark.json": ("benchmarks/train.py", _train),
    "train_benchmark_cuda.json": ("benchmarks/train.py --device cuda", _train),
    "matching_benchmark.json": ("benchmarks/matching.py", _matching),
    "matching_benchmark_cuda.json": ("benchmarks/matching_cuda.py", _matching_cuda),
    "sampling_adjoint_benchmark.json": ("benchmarks/sampling_adjoint.py", _sampling_adjoint),
    "contention_benchmark.json": ("benchmarks/contention.py", _contention),
    "cost_benchmark.json": ("benchmarks/cost.py", _cost),
    "loader_benchmark.json": ("benchmarks/loader.py", _loader),
}


def table_text(root: Path = ROOT) -> str:
    """The generated markdown table, one row per results file present."""
    rows = ["| script | results file | latest numbers |", "|---|---|---|"]
    for name, (script, headline) in HEADLINES.items():
        path = root / "results" / name
        if path.exists():
            text = headline(json.loads(path.read_text(encoding="utf-8"))).replace("|", "/")
            rows.append(f"| `{script}` | `results/{name}` | {text} |")
    return "\n".join(rows)


def document_block(doc: str) -> str:
    """What PERFORMANCE.md holds between its benchmark markers (stripped)."""
    if doc.count(START) != 1 or doc.count(END) != 1 or doc.index(START) > doc.index(END):
        raise ValueError(f"PERFORMANCE.md must hold one {START} ... {END} block")
    return doc.split(START, 1)[1].split(END, 1)[0].strip()


def update_performance(root: Path = ROOT) -> bool:
    """Rewrite PERFORMANCE.md's benchmark block from results/ (atomically); True when it changed."""
    path = root / "PERFORMANCE.md"
    doc = path.read_text(encoding="utf-8")
    document_block(doc)   # checks the markers
    head, rest = doc.split(START, 1)
    new = f"{head}{START}\n{table_text(root)}\n{END}{rest.split(END, 1)[1]}"
    if new == doc:
        return False
    atomic_write_text(path, new)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when they differ")
    args = ap.parse_args(argv)
    if args.check:
        same = document_block((ROOT / "PERFORMANCE.md").read_text(encoding="utf-8")) == table_text()
        print("PERFORMANCE.md benchmark table: " + ("up to date" if same else
              "differs from results/; run python scripts/performance_table.py"))
        return 0 if same else 1
    changed = update_performance()
    print("PERFORMANCE.md benchmark table " + ("rewritten from results/" if changed else "already up to date"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
