"""Training: one function, :func:`train`, used by the notebooks and by the command line.

    python -m rrsr_lib.train --params notebooks/params/cpu_demo.yaml [--set iterations=50 ...]
    torchrun --nproc_per_node=4 -m rrsr_lib.train --params notebooks/params/paper_rec.yaml

What a run does, with the authors' released configuration as the defaults (RRSR.md, "Training
setup" and "Losses and variants"; every value is a parameter, see :data:`PARAMETERS`):

* data: CUFED-like pairs (HR 160, LR 40, Ref 160, joint flips and transpose), batch 9; with
  reciprocal learning each sample also carries Ref_w and LR(Ref_w) (:mod:`rrsr_lib.reciprocal`);
* optimiser: Adam(0.9, 0.999), lr 1e-4; the learned residual offsets of the alignment units get
  their own learning rates, 1e-6 at x1, 1e-5 at x2, 1e-4 at x4; the lr of every group is multiplied
  by 0.1 at iterations 72,545 and 211,040; 255,000 iterations; seed 10;
* loss: L1 + 0.6 reciprocal L1 ("-rec"); the GAN variant adds, after a 10k-iteration pixel-loss
  warm-up, the perceptual loss (VGG relu5_1, Frobenius, x1e-4) and WGAN-GP (generator x1e-6, gradient
  penalty 10, the authors' discriminator, lr 1e-4, one D step per G step);
* validation (PSNR/SSIM on Y, crop 4, SR rounded to uint8) every 5,000 iterations.

Engineering that the authors' code does not need to teach but a reproduction does:

* checkpoints are written atomically (temporary file, then ``os.replace``) and hold everything that
  decides the future of the run: model, optimisers, schedulers, AMP scaler, the random generators of
  Python, numpy and torch, and the position in the data order. The data order and every random
  augmentation are pure functions of (seed, step), so a run interrupted and resumed gives exactly
  the losses of an uninterrupted run (on the CPU; tested);
* logs: ``train_log.csv`` (mean losses per ``log_every`` steps), ``val_log.csv``, ``summary.json``,
  final weights ``model.pt``; a tqdm progress bar;
* the device is chosen once (:func:`rrsr_lib.device.pick_device`); mixed precision (bfloat16, or
  float16 with loss scaling) on CUDA only; under ``torchrun`` (WORLD_SIZE > 1) the same function runs
  DistributedDataParallel, each process taking its own share of every step's samples.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from .device import pick_device, seed_everything
from .errors import DivergenceError, InputError, run_command
from .files import atomic_torch_save, atomic_write_text, load_tensors
from .train_data import StepBatches, TrainSamples, training_set, validation_set, worker_errors
from .train_params import PARAMETERS, RESUMABLE_CHANGES, check_params, load_params, parse_overrides, resolve_path
from .trainer import LOG_KEYS, Trainer

# the front door of training: the loop here, the parameters (rrsr_lib.train_params), the step (rrsr_lib.trainer)
__all__ = ["PARAMETERS", "check_params", "load_params", "train", "Trainer", "resolve_path", "main"]


def _writable_folder(out: Path) -> None:
    """Create ``out`` (and its parents) and check that files can be written there; one InputError if not."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:   # a file in the way, no permission, a read-only disk
        raise InputError(f"output_dir {out} cannot be used ({exc.strerror or type(exc).__name__}: "
                         f"{exc.filename or out}); choose a folder you can write to") from None


# what a run writes into its output_dir (rrsr_lib.train.train)
_RUN_FILES = ("checkpoint.pt", "train_log.csv", "val_log.csv", "model.pt", "summary.json")


def _move_old_run_aside(out: Path) -> Path | None:
    """A run that starts over (resume false, or no checkpoint) first moves an earlier run's files into
    ``out/replaced_<n>/``, the checkpoint first: each move is one rename, so an interruption at any point can
    never leave an old checkpoint beside new logs. Returns the folder (None when there was nothing)."""
    present = [n for n in _RUN_FILES if (out / n).exists()]
    if not present:
        return None
    n = 1
    while (out / f"replaced_{n}").exists():
        n += 1
    aside = out / f"replaced_{n}"
    aside.mkdir()
    for name in present:
        os.replace(out / name, aside / name)
    print(f"rrsr_lib.train: starting over in {out}; the earlier run's {', '.join(present)} moved to {aside}")
    return aside


class _CsvLog:
    """Append-only CSV whose rows after a given step can be dropped (on resume), rewritten atomically."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns

    def truncate_after(self, step: int) -> None:
        rows = [r for r in self.read() if int(r["step"]) <= step]
        text = ",".join(self.columns) + "\n" + "".join(",".join(str(r[c]) for c in self.columns) + "\n" for r in rows)
        atomic_write_text(self.path, text)

    def append(self, row: dict) -> None:
        new = not self.path.exists()
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            if new:
                f.write(",".join(self.columns) + "\n")
            f.write(",".join(repr(row[c]) if isinstance(row[c], float) else str(row[c]) for c in self.columns) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _check_resume(saved: dict, p: dict, ckpt: Path) -> None:
    # a parameter that the saved run did not know yet had its default there
    diff = sorted(k for k in p if k not in RESUMABLE_CHANGES and saved.get(k, PARAMETERS[k][0]) != p[k])
    if diff:
        raise InputError(f"{ckpt} was written with other values of {diff} "
                         f"(e.g. {diff[0]}={saved.get(diff[0])!r}, now {p[diff[0]]!r}); use a new output_dir, "
                         "set resume: false to start over, or restore the old values")


def _start_from(model: nn.Module, value: str, p: dict) -> str:
    """Load the trained weights of the checkpoint folder ``value`` (parameter ``init_weights``) into ``model``;
    returns a one-line description. The folder's network must be the one being trained."""
    from .checkpoints import AUTHORS_VARIANT, checkpoint_info, load_checkpoint

    folder = resolve_path(value)
    fix = "name a checkpoint folder that holds info.json and model.pt, e.g. checkpoints/rrsr_rec_seed0"
    if not folder.is_dir():
        raise InputError(f"init_weights: {folder} is not a folder; {fix}")
    info = checkpoint_info(folder.name, folder.parent)
    arch = info["architecture"]
    if (arch.get("model"), arch.get("config")) != (p["model"], p["model_config"]):
        raise InputError(f"init_weights: {folder} holds {arch.get('model')} ({arch.get('config')}), this run trains "
                         f"{p['model']} ({p['model_config']}); set model and model_config to match, or name another "
                         "checkpoint")
    # the registry builds the authors' variant; an older checkpoint's would load silently into it
    if arch["model"] in ("rrsr", "c2") and arch.get("variant") != AUTHORS_VARIANT:
        raise InputError(f"init_weights: {folder} was trained as the variant {arch.get('variant', 'legacy')}, "
                         f"training builds the authors' {AUTHORS_VARIANT}; name a checkpoint trained after 2026-12-02")
    trained = load_checkpoint(folder.name, root=folder.parent)
    try:
        model.load_state_dict(trained.state_dict())
    except RuntimeError as exc:
        raise InputError(f"init_weights: {folder}'s tensors do not fit the network being trained "
                         f"({str(exc).splitlines()[0][:120]}); {fix} of the same architecture") from None
    steps = info.get("iterations")
    return f"started from {value} ({arch['model']} {arch['config']}{f', {steps} steps' if steps else ''})"


def train(params: Mapping[str, Any] | str | Path, *, model: nn.Module | None = None,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train a RefSR network; the one entry point of notebooks, the CLI and torchrun.

    params: a mapping of training parameters (see :data:`PARAMETERS`; missing ones take the
        authors' values) or the path of a YAML file of them.
    model: optional ``nn.Module`` with the call model(lr, ref) -> sr ((B,3,h,w), (B,3,Hr,Wr) ->
        (B,3,4h,4w) in [0,1]) to train instead of the registry's ``params["model"]``.
    stop_after: stop after this iteration as if the process were killed (no final checkpoint, no
        summary): for tests and demonstrations of resuming.
    Returns {"output_dir", "model" (the trained network, on its device), "train_log" (rows of
    train_log.csv as dicts of floats), "val_log", "summary" (None when stopped early)}.
    Writes into output_dir: checkpoint.pt (every checkpoint_every iterations and at the end),
    train_log.csv, val_log.csv, model.pt (final weights) and summary.json.
    """
    p = load_params(params) if isinstance(params, (str, Path)) else check_params(params)
    rank, world, local_rank = _distributed()
    device = pick_device(p["device"])
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    out = resolve_path(p["output_dir"])
    if rank == 0:
        _writable_folder(out)
    seed_everything(p["seed"])
    trainer = Trainer(p, model=model, device=device, rank=rank, world=world)
    ckpt = out / "checkpoint.pt"
    train_csv = _CsvLog(out / "train_log.csv", ["step", "lr", *LOG_KEYS, "seconds"])
    val_csv = _CsvLog(out / "val_log.csv", ["step", "psnr", "ssim", "pairs"])
    acc = {k: 0.0 for k in LOG_KEYS}
    acc_n = 0
    if p["resume"] and ckpt.exists():
        state = load_tensors(ckpt, "training checkpoint", "delete it (or set resume: false) to start this run over",
                             map_location=device)
        if not isinstance(state, dict) or not {"trainer", "params", "data_order", "log_accumulator"} <= set(state):
            raise InputError(f"training checkpoint {ckpt} is not one that rrsr_lib.train wrote; delete it (or set "
                             "resume: false) to start this run over")
        _check_resume(state["params"], p, ckpt)
        if state["data_order"]["world"] != world:
            raise InputError(f"{ckpt} was written by {state['data_order']['world']} process(es), this run has {world}: "
                             "the data order depends on it; resume with the same number of processes")
        trainer.load_state_dict(state["trainer"])
        acc, acc_n = dict(state["log_accumulator"]), int(state["log_count"])
        if rank == 0:
            train_csv.truncate_after(trainer.step_count)
            val_csv.truncate_after(trainer.step_count)
    else:
        if rank == 0:
            _move_old_run_aside(out)
        if p["init_weights"]:
            # every process loads the same file, so the replicas start equal
            said = _start_from(trainer.model, p["init_weights"], p)
            if rank == 0:
                print(f"rrsr_lib.train: {said}")
    start = trainer.step_count
    samples = TrainSamples(training_set(p), p["seed"], p["reciprocal"] and p["reciprocal_weight"] > 0,
                            (p["warp_min_px"], p["warp_max_px"]))
    sampler = StepBatches(len(samples), p["batch_size"], p["seed"], start, p["iterations"], rank, world)
    # a private generator: creating the loader's iterator must not draw from torch's global generator,
    # whose state the checkpoint restores
    # workers stay alive for the whole run (persistent) and batches go to pinned memory for the GPU; each sample
    # is a function of (seed, epoch, index), so the number of workers changes nothing but the speed
    loader = DataLoader(samples, batch_sampler=sampler, num_workers=p["num_workers"],
                        persistent_workers=p["num_workers"] > 0, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(p["seed"]))
    val_set = validation_set(p) if rank == 0 else None

    def save_checkpoint():
        if rank == 0:
            atomic_torch_save({"trainer": trainer.state_dict(), "params": p, "log_accumulator": acc,
                                "log_count": acc_n, "data_order": {"seed": p["seed"], "n": len(samples),
                                                                   "batch": p["batch_size"], "world": world}}, ckpt)

    def run_validation():
        if rank == 0 and val_set is not None:
            v = trainer.validate(val_set, p["val_limit"])
            val_csv.append({"step": trainer.step_count, **v})
            return v
        return None

    from tqdm.auto import tqdm

    bar = tqdm(total=p["iterations"], initial=start, disable=not p["progress"] or rank != 0,
               desc=f"{p['model']}{'-rec' if p['reciprocal'] else ''}", unit="it")
    t0 = time.perf_counter()
    t_window = time.perf_counter()
    last_val = None
    last_saved = start if ckpt.exists() else None
    for batch in worker_errors(loader):
        try:
            logs = trainer.step(batch)
        except DivergenceError as exc:
            bar.close()
            kept = (f"the last good checkpoint is kept: {ckpt} (step {last_saved})" if last_saved is not None
                    else "no checkpoint had been written yet")
            raise DivergenceError(f"step {trainer.step_count}: {exc}; {kept}; lower lr (now {p['lr']:g}) and "
                                  "train again") from None
        s = trainer.step_count
        for k in LOG_KEYS:
            acc[k] += logs[k]
        acc_n += 1
        if s % p["log_every"] == 0 or s == p["iterations"]:
            now = time.perf_counter()
            if rank == 0:
                train_csv.append({"step": s, "lr": trainer.lr_now(), **{k: acc[k] / acc_n for k in LOG_KEYS},
                                  "seconds": round(now - t_window, 3)})
            acc, acc_n, t_window = {k: 0.0 for k in LOG_KEYS}, 0, now
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        if p["val_every"] and s % p["val_every"] == 0:
            last_val = run_validation() or last_val
        if p["checkpoint_every"] and s % p["checkpoint_every"] == 0:
            save_checkpoint()
            last_saved = s
        if world > 1:
            dist.barrier()
        if stop_after is not None and s >= stop_after:
            bar.close()
            return {"output_dir": out, "model": trainer.model, "train_log": _float_rows(train_csv.read()),
                    "val_log": _float_rows(val_csv.read()), "summary": None}
    bar.close()
    if val_set is not None and not (p["val_every"] and trainer.step_count % p["val_every"] == 0 and last_val):
        last_val = run_validation()
    save_checkpoint()
    summary = None
    if rank == 0:
        atomic_torch_save(trainer.model.state_dict(), out / "model.pt")
        val_rows = _float_rows(val_csv.read())
        summary = {"params": p, "device": str(device), "world_size": world, "iterations": trainer.step_count,
                   "seconds_this_session": round(time.perf_counter() - t0, 2),
                   "trainable_parameters": sum(x.numel() for x in trainer.model.parameters() if x.requires_grad),
                   "offset_parameters": trainer.n_offset_params,
                   "amp": str(trainer.amp_dtype) if trainer.amp_dtype else "off",
                   "final_validation": last_val,
                   "best_psnr": max((r["psnr"] for r in val_rows), default=None)}
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    if world > 1:
        dist.barrier()
    return {"output_dir": out, "model": trainer.model, "train_log": _float_rows(train_csv.read()),
            "val_log": _float_rows(val_csv.read()), "summary": summary}


def _float_rows(rows: list[dict]) -> list[dict]:
    return [{k: (int(v) if k in ("step", "pairs") else float(v)) for k, v in r.items()} for r in rows]




def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m rrsr_lib.train --params FILE.yaml [--set name=value ...]``."""
    parser = argparse.ArgumentParser(prog="python -m rrsr_lib.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", required=True, help="YAML parameter file (e.g. notebooks/params/cpu_demo.yaml)")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="NAME=VALUE", help="override single parameters")
    args = parser.parse_args(argv)
    return run_command(lambda: _train_command(args))


def _train_command(args) -> None:
    result = train(load_params(args.params, **parse_overrides(args.set)))
    if result["summary"] is not None:
        print(json.dumps({k: result["summary"][k] for k in ("iterations", "device", "final_validation")}))


if __name__ == "__main__":
    sys.exit(main())
