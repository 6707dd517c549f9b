"""Regenerate the shipped checkpoints from their parameter files.

    python scripts/train_checkpoints.py                    # every checkpoint, one after the other
    python scripts/train_checkpoints.py rrsr_rec_seed0     # one (or several) by name
    python scripts/train_checkpoints.py --list             # what exists, sizes and training times
    python scripts/train_checkpoints.py --write-params     # rewrite checkpoints/*/params.yaml from the recipe
    python scripts/train_checkpoints.py --readme           # rewrite the table of checkpoints/README.md
    python scripts/train_checkpoints.py --early 50 rrsr_rec_seed0   # the same run stopped after 50 steps,
                                                                    # packed into checkpoints/rrsr_rec_seed0/step50/

Each checkpoint is trained from checkpoints/<name>/params.yaml (rrsr_lib.train) with the architecture in
rrsr_lib.checkpoints.CHECKPOINTS, and packed into checkpoints/<name>/ (model.pt, info.json, train_log.csv).
On a shared 2-core CPU, one torch thread per process is fastest (--threads 1, the default); two processes
with different names can run side by side.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rrsr_lib.checkpoint_training import train_checkpoint, write_params, write_readme_table  # noqa: E402
from rrsr_lib.checkpoints import checkpoint_names, checkpoints_dir, list_checkpoints  # noqa: E402
from rrsr_lib.errors import run_command  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help=f"checkpoints to train (default: all of {checkpoint_names()})")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads while training (default 1)")
    ap.add_argument("--list", action="store_true", help="list the checkpoints and exit")
    ap.add_argument("--write-params", action="store_true", help="write params.yaml from the recipe and exit")
    ap.add_argument("--readme", action="store_true", help="rewrite the table of checkpoints/README.md and exit")
    ap.add_argument("--early", type=int, default=0, metavar="STEPS",
                    help="train only the first STEPS steps of each named run and pack them into "
                         "checkpoints/<name>/stepSTEPS/ (notebook 07 fine-tunes rrsr_rec_seed0's step50)")
    args = ap.parse_args(argv)
    if args.early < 0 or (args.early and not args.names):
        ap.error("--early needs a number of steps > 0 and the names of the checkpoints to stop early")
    return run_command(lambda: _run(args, args.names or checkpoint_names()))


def _run(args, names: list[str]) -> int:
    if args.list:
        for r in list_checkpoints():
            size = f"{r['bytes'] / 1e6:.2f} MB" if r["present"] else "missing"
            secs = f"{r['train_seconds']:.0f} s" if r["present"] else ""
            print(f"{r['name']:<32} {size:>10} {secs:>8}")
        return 0
    if args.readme:
        print(write_readme_table())
        return 0
    if args.write_params:
        for n in names:
            print(write_params(n))
        return 0
    if args.early:
        for n in names:
            folder = checkpoints_dir() / n / f"step{args.early}"
            info = train_checkpoint(n, threads=args.threads, folder=folder, iterations=args.early,
                                    output_dir=f"runs/early_runs/{n}_step{args.early}", resume=False)
            print(f"{n} after {args.early} steps: {info['bytes'] / 1e6:.2f} MB, trained in "
                  f"{info['train_seconds']:.0f} s -> {folder}", flush=True)
        return 0
    for n in names:
        t0 = time.perf_counter()
        info = train_checkpoint(n, threads=args.threads)
        print(f"{n}: {info['bytes'] / 1e6:.2f} MB, trained in {info['train_seconds']:.0f} s "
              f"({time.perf_counter() - t0:.0f} s in all) -> {checkpoints_dir() / n}", flush=True)
        write_readme_table()


if __name__ == "__main__":
    sys.exit(main())
