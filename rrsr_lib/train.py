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
import copy
import csv
import json
import math
import os
import random
import reprlib
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .degradation import to_uint8
from .device import keep_freed_cpu_memory, pick_device, seed_everything
from .errors import DivergenceError, InputError, run_command
from .files import atomic_torch_save, atomic_write_text, load_tensors
from .yaml_params import parse_yaml, read_yaml_file
from .losses import (Discriminator, PerceptualLoss, TextureLoss, gradient_penalty, l1_loss, wgan_critic_loss,
                     wgan_generator_loss)
from .metrics import psnr, ssim
from .models import offset_scale
from .reciprocal import add_warped_reference, reciprocal_passes
from .registry import build_model

__all__ = ["PARAMETERS", "check_params", "load_params", "train", "Trainer", "offset_scale", "resolve_path", "main"]


def _is_list_of(kind, n=None):
    return lambda v: isinstance(v, list) and (n is None or len(v) == n) and all(
        isinstance(x, kind) and not isinstance(x, bool) for x in v)


def _ascending_ints(v):
    return _is_list_of(int)(v) and all(x > 0 for x in v) and v == sorted(set(v))


def _betas(v):
    return _is_list_of((int, float), 2)(v) and all(0 <= x < 1 for x in v)


# name: (default, type, rule, what the rule allows, meaning). The defaults are the authors' configuration,
# except the data: CUFED and CUFED5 cannot ship with the project, so the defaults are the embedded photos
# (notebooks/params/paper_rec.yaml names the CUFED folders).
PARAMETERS: dict[str, tuple[Any, type, Callable[[Any], bool], str, str]] = {
    "model": ("rrsr", str, lambda v: v in ("rrsr", "sisr", "c2", "ttsr"), "is one of rrsr, sisr, c2, ttsr",
              "network to train (rrsr_lib.models registry)"),
    "model_config": ("paper", str, lambda v: v in ("paper", "small"), "is 'paper' or 'small'",
                     "network size: the authors' ('paper') or a CPU-sized one ('small')"),
    "reciprocal": (True, bool, lambda v: True, "", "train with the reciprocal second pass"),
    "reciprocal_weight": (0.6, float, lambda v: v >= 0, "is >= 0", "weight of L1(Ref_w_hat, Ref_w)"),
    "warp_min_px": (5.0, float, lambda v: v >= 0, "is >= 0", "smallest corner move of Ref_w's homography, px"),
    "warp_max_px": (19.0, float, lambda v: v >= 0, "is >= 0", "largest corner move of Ref_w's homography, px"),
    "dataset": ("embedded", str, lambda v: v in ("embedded", "cufed"), "is 'embedded' or 'cufed'",
                "training data: the embedded photos or a CUFED folder"),
    "data_root": ("", str, lambda v: True, "", "CUFED folder with input/ and ref/ (dataset 'cufed'; relative: "
                                               "from the project root)"),
    "embedded_length": (1000, int, lambda v: v >= 1, "is >= 1", "embedded pairs per epoch"),
    "embedded_levels": ([1, 2, 3, 4, 5], list, lambda v: _is_list_of(int)(v) and v and set(v) <= {1, 2, 3, 4, 5},
                        "is a non-empty list of levels 1-5", "similarity levels of the embedded pairs"),
    "val_dataset": ("embedded", str, lambda v: v in ("embedded", "cufed5", "none"),
                    "is 'embedded', 'cufed5' or 'none'", "validation pairs"),
    "val_root": ("", str, lambda v: True, "", "CUFED5 folder (val_dataset 'cufed5'), level-1 references"),
    "val_limit": (0, int, lambda v: v >= 0, "is >= 0", "validate on the first N pairs only (0: all)"),
    "val_every": (5000, int, lambda v: v >= 0, "is >= 0", "validate every N iterations (0: at the end only)"),
    "hr_patch": (160, int, lambda v: v >= 12 and v % 4 == 0, "is a multiple of 4, at least 12", "HR patch size"),
    "lr_patch": (40, int, lambda v: v >= 3, "is >= 3", "LR patch size (= hr_patch / 4)"),
    "ref_size": (160, int, lambda v: v >= 12 and v % 4 == 0, "is a multiple of 4, at least 12",
                 "references are resized to ref_size x ref_size"),
    "augment": (True, bool, lambda v: True, "", "joint random flips and transpose"),
    "batch_size": (9, int, lambda v: v >= 1, "is >= 1", "samples per step (per process under torchrun)"),
    "num_workers": (0, int, lambda v: v >= 0, "is >= 0", "data-loading worker processes"),
    "iterations": (255000, int, lambda v: v >= 1, "is >= 1", "training iterations"),
    "lr": (1e-4, float, lambda v: v > 0, "is > 0", "Adam learning rate of the network"),
    "betas": ([0.9, 0.999], list, _betas, "is a list of two numbers in [0, 1)", "Adam betas"),
    "weight_decay": (0.0, float, lambda v: v >= 0, "is >= 0", "Adam weight decay"),
    "offset_lr_x1": (1e-6, float, lambda v: v >= 0, "is >= 0", "lr of the learned offsets at scale x1"),
    "offset_lr_x2": (1e-5, float, lambda v: v >= 0, "is >= 0", "lr of the learned offsets at scale x2"),
    "offset_lr_x4": (1e-4, float, lambda v: v >= 0, "is >= 0", "lr of the learned offsets at scale x4"),
    "lr_milestones": ([72545, 211040], list, _ascending_ints, "is an ascending list of positive integers",
                      "iterations after which every lr is multiplied by lr_gamma"),
    "lr_gamma": (0.1, float, lambda v: 0 < v <= 1, "is in (0, 1]", "lr decay factor at each milestone"),
    "pixel_weight": (1.0, float, lambda v: v >= 0, "is >= 0", "weight of L1(SR, HR)"),
    "gan": (False, bool, lambda v: True, "", "GAN variant: perceptual + WGAN-GP after the warm-up"),
    "pixel_warmup": (10000, int, lambda v: v >= 0, "is >= 0", "iterations with pixel losses only (GAN variant)"),
    "perceptual_weight": (1e-4, float, lambda v: v >= 0, "is >= 0", "weight of the relu5_1 Frobenius loss"),
    "gan_weight": (1e-6, float, lambda v: v >= 0, "is >= 0", "weight of the WGAN generator term"),
    "gp_weight": (10.0, float, lambda v: v >= 0, "is >= 0", "weight of the gradient penalty"),
    "texture_weight": (0.0, float, lambda v: v >= 0, "is >= 0", "weight of SRNTT's Gram texture loss (0: off)"),
    "d_lr": (1e-4, float, lambda v: v > 0, "is > 0", "discriminator Adam learning rate"),
    "d_betas": ([0.9, 0.999], list, _betas, "is a list of two numbers in [0, 1)", "discriminator Adam betas"),
    "d_channels": (32, int, lambda v: v >= 1, "is >= 1", "discriminator base channels"),
    "seed": (10, int, lambda v: v >= 0, "is >= 0", "random seed"),
    "device": ("auto", str, lambda v: v in ("auto", "cuda", "mps", "cpu"), "is auto, cuda, mps or cpu",
               "where to train"),
    "amp": (True, bool, lambda v: True, "", "mixed precision on CUDA (ignored elsewhere)"),
    "checkpoint_every": (5000, int, lambda v: v >= 0, "is >= 0", "write a checkpoint every N iterations"),
    "log_every": (100, int, lambda v: v >= 1, "is >= 1", "write mean losses every N iterations"),
    "output_dir": ("runs/train", str, lambda v: bool(v), "is a non-empty path",
                   "folder for logs and checkpoints (relative: from the project root)"),
    "resume": (True, bool, lambda v: True, "", "continue from output_dir/checkpoint.pt when it exists"),
    "progress": (True, bool, lambda v: True, "", "show a tqdm progress bar"),
}

# Parameters that may change between an interrupted run and its continuation (they do not change
# what the network sees or how it is updated).
_RESUMABLE_CHANGES = {"iterations", "val_every", "val_limit", "checkpoint_every", "log_every", "output_dir",
                      "resume", "progress", "num_workers", "device", "data_root", "val_root", "val_dataset"}

# learning rates above this are announced: Adam on these networks diverges well before it
_LR_WARN = 0.01
_LEARNING_RATES = ("lr", "d_lr", "offset_lr_x1", "offset_lr_x2", "offset_lr_x4")


def _short(value, limit: int = 80) -> str:
    """repr of a value, cut to ``limit`` characters (a parameter can be huge)."""
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


_LOG_KEYS = ("loss", "l1", "reciprocal", "perceptual", "texture", "gan_g", "critic", "gp")


def check_params(params: Mapping[str, Any] | None = None, **overrides) -> dict[str, Any]:
    """Validate training parameters and return a complete dict (defaults filled in).

    params: a mapping name -> value (from a YAML file, a notebook's parameters cell, or code); only
    names of :data:`PARAMETERS` are accepted. Raises :class:`InputError` naming the first unknown
    name, wrong type or invalid value, and the fix.
    """
    given = dict(params or {})
    given.update(overrides)
    unknown = sorted(set(given) - set(PARAMETERS))
    if unknown:
        raise InputError(f"unknown training parameter(s) {unknown}; the accepted names are "
                         f"{sorted(PARAMETERS)} (check the spelling in your YAML file or notebook)")
    out = {}
    for name, (default, typ, rule, allowed, _) in PARAMETERS.items():
        value = given.get(name, copy.deepcopy(default))
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, typ) and not (typ in (int, float) and isinstance(value, bool))
        if not ok:
            raise InputError(f"training parameter {name!r} must be of type {typ.__name__}, got {_short(value)} "
                             f"({type(value).__name__}); fix it in your parameter file")
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise InputError(f"training parameter {name!r} must be finite, got {_short(value)}; fix it in your parameter file")
        if not rule(value):
            raise InputError(f"training parameter {name!r} has an invalid value {_short(value)}: it must be so that "
                             f"it {allowed}")
        out[name] = value
    for name in _LEARNING_RATES:
        if out[name] > _LR_WARN:
            print(f"rrsr_lib.train: warning: {name} = {out[name]:g} is far above the authors' "
                  f"{PARAMETERS[name][0]:g}; Adam will likely diverge (training stops at the first non-finite loss)")
    if out["warp_min_px"] > out["warp_max_px"]:
        raise InputError(f"warp_min_px ({out['warp_min_px']}) is larger than warp_max_px ({out['warp_max_px']}); "
                         "the authors use 5 and 19")
    if out["lr_patch"] * 4 != out["hr_patch"]:
        raise InputError(f"lr_patch ({out['lr_patch']}) must be hr_patch / 4 = {out['hr_patch'] / 4} "
                         "(scale x4; the authors use 160 and 40)")
    if out["dataset"] == "cufed" and not out["data_root"]:
        raise InputError("dataset 'cufed' needs data_root: the CUFED training folder with input/ and ref/ "
                         "(or use dataset 'embedded')")
    if out["val_dataset"] == "cufed5" and not out["val_root"]:
        raise InputError("val_dataset 'cufed5' needs val_root: the CUFED5 folder (or use 'embedded' or 'none')")
    if out["dataset"] == "embedded" and out["ref_size"] != out["hr_patch"]:
        raise InputError(f"with dataset 'embedded' the reference is cut at hr_patch size: set ref_size = "
                         f"hr_patch = {out['hr_patch']}")
    return out


def load_params(path: str | Path, **overrides) -> dict[str, Any]:
    """Read a YAML parameter file (a flat mapping name -> value, YAML 1.2 numbers: rrsr_lib.yaml_params) and
    validate it with :func:`check_params`."""
    path = Path(path)
    data = read_yaml_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: must hold a mapping 'name: value' per line, got a {type(data).__name__}")
    return check_params(data, **overrides)


# ----------------------------------------------------------------------------------------------
# Data: a data order and augmentations that are pure functions of (seed, step)
# ----------------------------------------------------------------------------------------------
class _StepBatches:
    """Batch sampler: the samples of step s are a pure function of (seed, s), so resuming needs only s.

    The concatenation of per-epoch permutations (permutation e drawn from numpy's generator seeded
    with (seed, e)) is cut into consecutive blocks of batch x world samples; step s takes block s and
    process ``rank`` takes its ``batch`` samples. Yields lists of (epoch, index) pairs.
    """

    def __init__(self, n: int, batch: int, seed: int, start_step: int, total_steps: int, rank: int = 0,
                 world: int = 1):
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world
        self.start, self.total = start_step, total_steps
        self._perm: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perm[epoch]

    def samples(self, step: int) -> list[tuple[int, int]]:
        """(epoch, index) of this process's samples at step ``step`` (0-based)."""
        first = step * self.batch * self.world + self.rank * self.batch
        out = []
        for p in range(first, first + self.batch):
            epoch = p // self.n
            out.append((epoch, int(self._permutation(epoch)[p % self.n])))
        return out

    def __iter__(self):
        for step in range(self.start, self.total):
            yield self.samples(step)

    def __len__(self) -> int:
        return self.total - self.start


class _TrainSamples(Dataset):
    """Wrap a training dataset: item (epoch, index) -> dict of tensors "lr", "hr", "ref" (+ "ref_w", "lr_ref_w").

    Datasets whose random choices are seeded by their ``seed`` attribute and the index (the embedded
    pairs, CUFED's augmentation) get a different seed in every epoch, so that every epoch brings
    new crops and flips while each item stays a pure function of (seed, epoch, index). Ref_w is drawn
    from a numpy generator seeded the same way.
    """

    def __init__(self, base: Dataset, seed: int, reciprocal: bool, warp_px: tuple[float, float]):
        self.base, self.seed, self.reciprocal, self.warp_px = base, seed, reciprocal, warp_px
        self._epoch_copy: tuple[int, Dataset] | None = None

    def __len__(self) -> int:
        return len(self.base)

    def _dataset(self, epoch: int) -> Dataset:
        if not hasattr(self.base, "seed"):
            return self.base
        if self._epoch_copy is None or self._epoch_copy[0] != epoch:
            ds = copy.copy(self.base)  # shallow: the loaded photos are shared
            ds.seed = int(np.random.default_rng([self.seed, epoch, 7]).integers(2 ** 31))
            self._epoch_copy = (epoch, ds)
        return self._epoch_copy[1]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        item = self._dataset(epoch)[index]
        sample = {k: item[k] for k in ("lr", "hr", "ref")}
        if self.reciprocal:
            rng = np.random.default_rng([self.seed, epoch, index, 1])
            sample = add_warped_reference(sample, rng, self.warp_px)
        return sample


def resolve_path(path: str) -> Path:
    """A path parameter as a Path: absolute paths as given, relative ones from the project root (the folder
    that holds rrsr_lib/), so that a parameter file means the same from the notebooks' folder and from the
    command line."""
    from .figures import project_root

    q = Path(path).expanduser()
    return q if q.is_absolute() else project_root() / q


def _training_set(p: dict) -> Dataset:
    from . import data

    if p["dataset"] == "embedded":
        return data.EmbeddedTrainPairs(patch_size=p["hr_patch"], levels=tuple(p["embedded_levels"]),
                                       length=p["embedded_length"], seed=p["seed"], augment=p["augment"])
    return data.CUFEDTrain(resolve_path(p["data_root"]), ref_size=p["ref_size"], augment=p["augment"], seed=p["seed"])


def _validation_set(p: dict) -> Dataset | None:
    from . import data

    if p["val_dataset"] == "none":
        return None
    if p["val_dataset"] == "embedded":
        return data.EmbeddedTestPairs()
    return data.CUFED5(resolve_path(p["val_root"]), mode="level", level=1)


# ----------------------------------------------------------------------------------------------
# Model and optimiser
# ----------------------------------------------------------------------------------------------
def _offset_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    groups: dict[str, list[nn.Parameter]] = {"main": [], "x1": [], "x2": [], "x4": []}
    for name, prm in model.named_parameters():
        if not prm.requires_grad:
            continue
        # the alignment units' offset/mask convolutions have their own learning rate per scale (the authors')
        groups[offset_scale(name) or "main"].append(prm)
    return groups


def _build_model(p: dict) -> nn.Module:
    return build_model(p["model"], p["model_config"])


class _Passes(nn.Module):
    """Everything the generator computes in one step, as one module call (what DDP wraps).

    forward(lr, ref, lr_ref_w=None) -> (sr, ref_w_hat or None). With ``lr_ref_w`` both reciprocal
    passes run (:func:`rrsr_lib.reciprocal.reciprocal_passes`), else pass 1 only.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, lr, ref, lr_ref_w=None):
        if lr_ref_w is None:
            return self.model(lr, ref), None
        return reciprocal_passes(self.model, lr, ref, lr_ref_w)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].copy()),
                                                    "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                                                    "cached_gaussian": float(np_state[4])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def _batches(loader):
    """The loader's batches; an InputError raised in a worker process comes out with its own message (torch
    wraps it in "Caught InputError in DataLoader worker process 0. Original Traceback ...")."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except InputError as exc:
            text = str(exc)
            if "Original Traceback" in text:
                last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
                text = last.split("InputError: ", 1)[-1]
            raise InputError(text) from None
        yield batch


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


class Trainer:
    """The state of a training run and its step; :func:`train` drives it.

    Trainer(params, model=None, device=None): params as returned by :func:`check_params`; model: an
    ``nn.Module`` with the call model(lr, ref) -> sr to train instead of ``build_model(params["model"],
    params["model_config"])``; device: a torch.device (default: ``pick_device(params["device"])``).
    ``step(batch)`` does one iteration (a dict of tensors on any device) and returns its losses as
    floats; ``validate(dataset)`` returns mean PSNR/SSIM; ``state_dict``/``load_state_dict`` hold the
    whole resumable state.
    """

    def __init__(self, params: dict, model: nn.Module | None = None, device: torch.device | None = None,
                 rank: int = 0, world: int = 1):
        self.p = p = params
        self.rank, self.world = rank, world
        self.device = device if device is not None else pick_device(p["device"])
        if self.device.type == "cpu":
            # reuse freed memory instead of having the kernel map and zero it again every step (about 25% of a
            # CPU step went to page faults; numbers unchanged): rrsr_lib.device.keep_freed_cpu_memory
            keep_freed_cpu_memory()
        self.model = (model if model is not None else _build_model(p)).to(self.device)
        self.model.train()
        groups = _offset_groups(self.model)
        # Adam(0.9, 0.999), lr 1e-4; learned offsets at 1e-6 (x1), 1e-5 (x2), 1e-4 (x4), as the authors do
        param_groups = [{"params": groups["main"], "lr": p["lr"], "name": "main"}]
        for s in ("x1", "x2", "x4"):
            if groups[s]:
                param_groups.append({"params": groups[s], "lr": p[f"offset_lr_{s}"], "name": f"offset_{s}"})
        self.n_offset_params = sum(prm.numel() for s in ("x1", "x2", "x4") for prm in groups[s])
        self.optimizer = torch.optim.Adam(param_groups, lr=p["lr"], betas=tuple(p["betas"]),
                                          weight_decay=p["weight_decay"])
        # lr x0.1 after 72,545 and 211,040 iterations (MultiStepLR, stepped once per iteration)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, p["lr_milestones"], p["lr_gamma"])
        self.passes: nn.Module = _Passes(self.model)
        if world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.passes = nn.parallel.DistributedDataParallel(self.passes, device_ids=ids)
        # mixed precision on CUDA only: bfloat16 where supported (no loss scaling needed), else float16
        self.amp_dtype = None
        if p["amp"] and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.disc = self.d_optimizer = self.perceptual = self.texture = None
        if p["gan"]:
            self.disc = Discriminator(base_channels=p["d_channels"]).to(self.device).train()
            self.d_optimizer = torch.optim.Adam(self.disc.parameters(), lr=p["d_lr"], betas=tuple(p["d_betas"]))
            if p["perceptual_weight"] > 0:
                self.perceptual = PerceptualLoss().to(self.device)
        if p["texture_weight"] > 0:
            self.texture = TextureLoss().to(self.device)
        self.step_count = 0  # iterations done

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _all_reduce_mean_grads(self, module: nn.Module) -> None:
        # the discriminator is not wrapped in DDP (its gradient penalty needs autograd.grad, which DDP does
        # not support); its gradients are averaged over the processes by hand instead
        if self.world > 1:
            for prm in module.parameters():
                if prm.grad is not None:
                    dist.all_reduce(prm.grad)
                    prm.grad /= self.world

    def step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One training iteration on ``batch`` ("lr", "ref", "hr", and "ref_w", "lr_ref_w" when reciprocal)."""
        p, dev = self.p, self.device
        b = {k: v.to(dev, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
        reciprocal = p["reciprocal"] and p["reciprocal_weight"] > 0
        if reciprocal and "lr_ref_w" not in b:
            raise InputError("reciprocal learning needs 'ref_w' and 'lr_ref_w' in the batch; make them with "
                             "rrsr_lib.reciprocal.add_warped_reference")
        self.step_count += 1
        gan_stage = p["gan"] and self.step_count > p["pixel_warmup"]
        logs = {k: 0.0 for k in _LOG_KEYS}

        with self._autocast():
            sr, ref_w_hat = self.passes(b["lr"], b["ref"], b["lr_ref_w"] if reciprocal else None)
        sr = sr.float()

        if gan_stage:
            # discriminator step (one per generator step): E[D(SR)] - E[D(HR)] + 10 * gradient penalty
            self.disc.requires_grad_(True)
            self.d_optimizer.zero_grad(set_to_none=True)
            critic = wgan_critic_loss(self.disc(b["hr"]), self.disc(sr.detach()))
            # one mixing weight per sample of the *global* batch, drawn alike by every process (their generators
            # are in step), each process taking its share: N processes mix as one process would
            n = b["hr"].shape[0]
            alpha = torch.rand(n * self.world, 1, 1, 1, device=dev)[self.rank * n:(self.rank + 1) * n]
            gp = gradient_penalty(self.disc, b["hr"], sr, alpha=alpha)
            (critic + p["gp_weight"] * gp).backward()
            self._all_reduce_mean_grads(self.disc)
            self.d_optimizer.step()
            logs["critic"], logs["gp"] = critic.item(), gp.item()
            self.disc.requires_grad_(False)

        # generator: L1 x1 (+ reciprocal x0.6) (+ perceptual x1e-4 + WGAN x1e-6 in the GAN stage)
        l1 = l1_loss(sr, b["hr"])
        loss = p["pixel_weight"] * l1
        logs["l1"] = l1.item()
        if reciprocal:
            rec = l1_loss(ref_w_hat.float(), b["ref_w"])
            loss = loss + p["reciprocal_weight"] * rec
            logs["reciprocal"] = rec.item()
        if self.texture is not None:
            # SRNTT compares Gram matrices with the swapped reference features; a Gram matrix ignores
            # positions, so we compare with the reference's own features (same statistics, no swap needed)
            tex = self.texture(sr, self.texture.target_features(b["ref"]))
            loss = loss + p["texture_weight"] * tex
            logs["texture"] = tex.item()
        if gan_stage:
            if self.perceptual is not None:
                perc = self.perceptual(sr, b["hr"])
                loss = loss + p["perceptual_weight"] * perc
                logs["perceptual"] = perc.item()
            gen = wgan_generator_loss(self.disc(sr))
            loss = loss + p["gan_weight"] * gen
            logs["gan_g"] = gen.item()
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k} {v:.4g}" for k, v in logs.items() if v)
            raise DivergenceError(f"the loss is not finite ({parts}): training diverged; this step updated nothing")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.disc is not None:
            # the authors step every optimiser's schedule every iteration, the discriminator's too (it has no
            # steps during the warm-up, so its lr is set from the iteration count rather than by a scheduler)
            decays = sum(self.step_count >= m for m in p["lr_milestones"])
            self.d_optimizer.param_groups[0]["lr"] = p["d_lr"] * p["lr_gamma"] ** decays
        logs["loss"] = loss.item()
        if self.world > 1:  # log the mean over processes
            t = torch.tensor([logs[k] for k in _LOG_KEYS], device=dev, dtype=torch.float64)
            dist.all_reduce(t)
            logs = dict(zip(_LOG_KEYS, (t / self.world).tolist()))
        return logs

    @torch.no_grad()
    def validate(self, dataset: Dataset, limit: int = 0) -> dict[str, float]:
        """Mean PSNR and SSIM (Y channel, crop 4, SR rounded to uint8) of pass 1 over the first ``limit`` pairs."""
        self.model.eval()
        n = len(dataset) if limit == 0 else min(limit, len(dataset))
        ps, ss = [], []
        try:
            for i in range(n):
                item = dataset[i]
                with self._autocast():
                    sr = self.model(item["lr"][None].to(self.device), item["ref"][None].to(self.device))
                sr_u8, hr_u8 = to_uint8(sr.float()), to_uint8(item["hr"])
                if sr_u8.shape != hr_u8.shape:
                    raise InputError(f"validation pair {i}: the model returned {sr_u8.shape[1]}x{sr_u8.shape[0]} for an "
                                     f"HR image of {hr_u8.shape[1]}x{hr_u8.shape[0]}; the model must output 4x its input")
                ps.append(psnr(sr_u8, hr_u8, crop_border=4))
                ss.append(ssim(sr_u8, hr_u8, crop_border=4))
        finally:
            self.model.train()
        return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "pairs": n}

    def lr_now(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        s = {"step": self.step_count, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
             "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": _rng_state()}
        if self.disc is not None:
            s.update(disc=self.disc.state_dict(), d_optimizer=self.d_optimizer.state_dict())
        return s

    def load_state_dict(self, s: dict) -> None:
        self.step_count = int(s["step"])
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])
        if self.disc is not None:
            self.disc.load_state_dict(s["disc"])
            self.d_optimizer.load_state_dict(s["d_optimizer"])
        _set_rng_state(s["rng"])


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _check_resume(saved: dict, p: dict, ckpt: Path) -> None:
    diff = sorted(k for k in p if k not in _RESUMABLE_CHANGES and saved.get(k) != p[k])
    if diff:
        raise InputError(f"{ckpt} was written with other values of {diff} "
                         f"(e.g. {diff[0]}={saved.get(diff[0])!r}, now {p[diff[0]]!r}); use a new output_dir, "
                         "set resume: false to start over, or restore the old values")


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
    train_csv = _CsvLog(out / "train_log.csv", ["step", "lr", *_LOG_KEYS, "seconds"])
    val_csv = _CsvLog(out / "val_log.csv", ["step", "psnr", "ssim", "pairs"])
    acc = {k: 0.0 for k in _LOG_KEYS}
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
    elif rank == 0:
        _move_old_run_aside(out)
    start = trainer.step_count
    samples = _TrainSamples(_training_set(p), p["seed"], p["reciprocal"] and p["reciprocal_weight"] > 0,
                            (p["warp_min_px"], p["warp_max_px"]))
    sampler = _StepBatches(len(samples), p["batch_size"], p["seed"], start, p["iterations"], rank, world)
    # a private generator: creating the loader's iterator must not draw from torch's global generator,
    # whose state the checkpoint restores
    # workers stay alive for the whole run (persistent) and batches go to pinned memory for the GPU; each sample
    # is a function of (seed, epoch, index), so the number of workers changes nothing but the speed
    loader = DataLoader(samples, batch_sampler=sampler, num_workers=p["num_workers"],
                        persistent_workers=p["num_workers"] > 0, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(p["seed"]))
    val_set = _validation_set(p) if rank == 0 else None

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
    for batch in _batches(loader):
        try:
            logs = trainer.step(batch)
        except DivergenceError as exc:
            bar.close()
            kept = (f"the last good checkpoint is kept: {ckpt} (step {last_saved})" if last_saved is not None
                    else "no checkpoint had been written yet")
            raise DivergenceError(f"step {trainer.step_count}: {exc}; {kept}; lower lr (now {p['lr']:g}) and "
                                  "train again") from None
        s = trainer.step_count
        for k in _LOG_KEYS:
            acc[k] += logs[k]
        acc_n += 1
        if s % p["log_every"] == 0 or s == p["iterations"]:
            now = time.perf_counter()
            if rank == 0:
                train_csv.append({"step": s, "lr": trainer.lr_now(), **{k: acc[k] / acc_n for k in _LOG_KEYS},
                                  "seconds": round(now - t_window, 3)})
            acc, acc_n, t_window = {k: 0.0 for k in _LOG_KEYS}, 0, now
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


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--set expects name=value, got {item[:80]!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_yaml(v, f"--set {k.strip()[:40]}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m rrsr_lib.train --params FILE.yaml [--set name=value ...]``."""
    parser = argparse.ArgumentParser(prog="python -m rrsr_lib.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", required=True, help="YAML parameter file (e.g. notebooks/params/cpu_demo.yaml)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="override single parameters")
    args = parser.parse_args(argv)
    return run_command(lambda: _train_command(args))


def _train_command(args) -> None:
    result = train(load_params(args.params, **_parse_set(args.set)))
    if result["summary"] is not None:
        print(json.dumps({k: result["summary"][k] for k in ("iterations", "device", "final_validation")}))


if __name__ == "__main__":
    sys.exit(main())
