"""Super-resolve your own images: ``python -m rrsr_lib.sr --input LR --ref REF --out SR.png``.

The command for the most common request in RefSR issue trackers: run a trained network on my own images,
without a ground truth. ``--input`` and ``--ref`` are image files, or folders whose images pair by file name
(``lr/001.png`` with ``ref/001.jpg``); ``--out`` is a PNG file or a folder. ``--hr`` takes a high-resolution
image instead of ``--input``: it is degraded the literature's way first (crop to a multiple of 4, PIL bicubic
/4) and the result is scored against it (PSNR/SSIM on Y, crop 4: the RRSR protocol). The reference may have
any size. A large call says what it will cost (memory, time) before it starts and shows its progress; beyond
``--memory-mb`` it runs in LR tiles, or is refused naming the budget (:mod:`rrsr_lib.cost`). Every output is
written whole or not at all (temporary name, then rename); every bad input is one
message and exit status 2, before anything is written.

    python -m rrsr_lib.sr --input lr.png --ref ref.png --out sr.png [--bicubic] [--checkpoint rrsr_rec_seed0]
    python -m rrsr_lib.sr --input big_lr.png --ref ref.png --out sr.png --memory-mb 2000
    python -m rrsr_lib.sr --hr photos/ --ref refs/ --out results/ --authors-weights network_mse.pth
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .authors_weights import add_authors_arguments, authors_label
from .data.public import image_files
from .errors import InputError, run_command

__all__ = ["pair_files", "load_job", "super_resolve", "main", "DEFAULT_CHECKPOINT"]

# the shipped network the command uses unless told otherwise: RRSR with reciprocal learning, seed 0
DEFAULT_CHECKPOINT = "rrsr_rec_seed0"


def _images(folder: Path, what: str) -> dict[str, Path]:
    # the project's listing (hidden files ignored, two files with one stem refused), keyed by stem
    return {p.stem: p for p in image_files(folder, f"the {what} folder", "images paired by file name")}


def pair_files(inputs: Path, refs: Path, out: Path) -> list[tuple[str, Path, Path, Path]]:
    """[(name, input file, reference file, output PNG)]: files, or folders paired by file name."""
    for path, what in ((inputs, "input"), (refs, "reference")):
        if not path.exists():
            raise InputError(f"{what} {path} not found; check the path")
    if inputs.is_dir() != refs.is_dir():
        raise InputError(f"give two files or two folders: the input {inputs} is a {'folder' if inputs.is_dir() else 'file'}, "
                         f"the reference {refs} a {'folder' if refs.is_dir() else 'file'}")
    if not inputs.is_dir():
        if out.is_dir() or out.suffix.lower() != ".png":
            raise InputError(f"--out {out} must be a .png file for one input image (or give folders)")
        return [(inputs.stem, inputs, refs, out)]
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; for folders of images give an output folder")
    ins, rfs = _images(inputs, "input"), _images(refs, "reference")
    missing = sorted(set(ins) - set(rfs))
    if missing:
        raise InputError(f"{ins[missing[0]]} has no reference: no {missing[0]}.* in {refs} "
                         f"({len(missing)} input(s) without one); the folders pair images by file name")
    return [(name, ins[name], rfs[name], out / f"{name}.png") for name in ins]


def _load_model(args, device):
    from .checkpoints import load_authors_checkpoint, load_checkpoint

    label = authors_label(args)
    if label:
        return load_authors_checkpoint(args.authors_weights, args.authors_features, device), label
    return load_checkpoint(args.checkpoint, device), args.checkpoint


def load_job(src_path: Path, ref_path: Path, hr_mode: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Read and check one input and its reference: (lr uint8 hxwx3, hr uint8 4hx4wx3 or None, ref uint8).

    hr_mode: the input is an HR photo, cropped to a multiple of 4 and degraded (PIL bicubic /4); otherwise it
    is the LR image. Raises InputError naming the file for anything unreadable, of the wrong kind or too small.
    """
    from .degradation import bicubic_downsample
    from .images import MIN_LR_PATCH, load_hr, load_rgb

    if hr_mode:
        hr = load_hr(src_path)
        lr = bicubic_downsample(hr)
    else:
        hr, lr = None, load_rgb(src_path)
        if min(lr.shape[:2]) < MIN_LR_PATCH:
            raise InputError(f"{src_path}: is {lr.shape[1]}x{lr.shape[0]} pixels, smaller than one "
                             f"{MIN_LR_PATCH}x{MIN_LR_PATCH} patch; give an LR image of at least that size")
    return lr, hr, load_rgb(ref_path)


@torch.no_grad()
def super_resolve(model, lr: np.ndarray, ref: np.ndarray, device, tile: int | None = None,
                  progress: bool = False) -> np.ndarray:
    """SR of one uint8 LR image (h x w x 3) with a uint8 reference (any size): uint8 (4h x 4w x 3)."""
    from .degradation import to_tensor
    from .evaluate import tiled_forward
    from .models import RRSR
    from .reference_grid import reference_grid_forward

    lr_t, ref_t = to_tensor(lr).to(device), to_tensor(ref).to(device)
    if tile is not None and isinstance(model, RRSR):
        # RRSR in tiles: the reference's features once, every tile sampling them (memory of one tile + the
        # reference's texture, not of the reference's canvas per tile; rrsr_lib.reference_grid)
        return reference_grid_forward(model, lr_t, ref_t, tile=tile, progress=progress, as_uint8=True)
    return tiled_forward(model, lr_t, ref_t, tile=tile, progress=progress, as_uint8=True)


# a call this small runs whole without measuring its cost first (output and reference pixels, 256x256)
_SMALL_CALL_PX = 256 * 256


def _plan_tiles(args, model, device, loaded) -> list[int | None]:
    """The LR tile of each image (None: whole), within --memory-mb; a large call's cost said before it starts."""
    from .cost import default_budget_mb, measure_cost, measure_grid_cost, plan_call
    from .models import RRSR

    small = all(16 * lr.shape[0] * lr.shape[1] <= _SMALL_CALL_PX and ref.shape[0] * ref.shape[1] <= _SMALL_CALL_PX
                for _, lr, _, ref, _ in loaded)
    if small and args.memory_mb is None:
        return [args.tile] * len(loaded)
    budget = args.memory_mb if args.memory_mb is not None else default_budget_mb(device)
    cost = measure_cost(model, device)
    tiled = measure_grid_cost(model, device) if isinstance(model, RRSR) else None
    tiles = []
    for name, lr, _, ref, _ in loaded:
        try:
            plan = plan_call(cost, lr.shape[:2], ref.shape[:2], budget, args.tile, tiled=tiled)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from None
        if plan.tile is not None or plan.seconds > 10:
            print(f"{name}: LR {lr.shape[1]}x{lr.shape[0]}, reference {ref.shape[1]}x{ref.shape[0]}, "
                  f"{plan.describe(budget)}")
        tiles.append(plan.tile)
    return tiles


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rrsr_lib.sr", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=Path, help="LR image, or a folder of them")
    src.add_argument("--hr", type=Path, help="HR image (or folder): degraded first, the result scored against it")
    ap.add_argument("--ref", type=Path, required=True, help="reference image, or a folder (pairs by file name)")
    ap.add_argument("--out", type=Path, required=True, help="output PNG, or a folder")
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help=f"shipped network (default {DEFAULT_CHECKPOINT})")
    add_authors_arguments(ap)
    ap.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    ap.add_argument("--tile", type=int, default=None,
                    help="LR tile side (default: the whole image, or the largest tile within --memory-mb)")
    ap.add_argument("--memory-mb", type=float, default=None,
                    help="memory budget of one call in MB (default: half of what is free now)")
    ap.add_argument("--bicubic", action="store_true", help="also write <name>_bicubic.png beside each result")
    args = ap.parse_args(argv)
    return run_command(lambda: _run(args))


def _run(args) -> None:
    """The command's work, on parsed arguments; raises InputError for anything bad."""
    from .checkpoints import checkpoint_names
    from .degradation import upsample_lr
    from .device import keep_freed_cpu_memory, pick_device
    from .images import MIN_LR_PATCH, save_png
    from .metrics import psnr, ssim

    if not authors_label(args) and args.checkpoint not in checkpoint_names():
        raise InputError(f"unknown --checkpoint {args.checkpoint!r}; the shipped ones are {checkpoint_names()}")
    if args.tile is not None and args.tile < 3 * MIN_LR_PATCH:
        raise InputError(f"--tile must be at least {3 * MIN_LR_PATCH} LR pixels, got {args.tile}")
    jobs = pair_files(args.input or args.hr, args.ref, args.out)
    # read and check every input before anything is computed or written
    loaded = []
    for name, src_path, ref_path, out_path in jobs:
        lr, hr, ref = load_job(src_path, ref_path, hr_mode=args.hr is not None)
        loaded.append((name, lr, hr, ref, out_path))
    if args.memory_mb is not None and not args.memory_mb > 0:
        raise InputError(f"--memory-mb must be a positive number of MB, got {args.memory_mb}")
    device = pick_device(args.device)
    model, label = _load_model(args, device)
    tiles = _plan_tiles(args, model, device, loaded)
    if device.type == "cpu" and all(t is None for t in tiles):
        # whole-image calls: glibc keeps freed blocks for the next ones instead of mapping and zeroing them again
        # (a fifth of a small call went to page faults; benchmarks/inference.py). Tiled calls keep glibc's
        # default, under which their memory budget was measured.
        keep_freed_cpu_memory()
    t0, scores = time.perf_counter(), []
    for (name, lr, hr, ref, out_path), tile in tqdm(list(zip(loaded, tiles)), desc=f"{label}", unit="image",
                                                    disable=len(loaded) < 2):
        sr = super_resolve(model, lr, ref, device, tile, progress=tile is not None and len(loaded) < 2)
        save_png(out_path, sr)
        if args.bicubic:
            save_png(out_path.with_name(f"{out_path.stem}_bicubic.png"), upsample_lr(lr))
        if hr is not None:
            scores.append((psnr(sr, hr, 4, True), ssim(sr, hr, 4, True)))
    summary = f"{len(loaded)} image(s) super-resolved x4 with {label} in {time.perf_counter() - t0:.1f} s on {device}"
    if scores:
        summary += (f"; PSNR_Y {np.mean([s[0] for s in scores]):.2f} dB, SSIM_Y {np.mean([s[1] for s in scores]):.4f} "
                    "(Y channel, 4-pixel border removed: the RRSR protocol)")
    print(summary + f"; written to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
