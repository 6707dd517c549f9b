"""Training parameters: their schema (:data:`PARAMETERS`), the one validator, and YAML files.

Every knob of a training run is one entry of :data:`PARAMETERS`: its default (the authors' released
configuration, RRSR.md "Training setup"), its type, its rule and what each means. :func:`check_params`
is the validator used by the command line, the notebooks' parameters cells and :func:`rrsr_lib.train.train`;
:func:`load_params` reads a YAML file (YAML 1.2 numbers, :mod:`rrsr_lib.yaml_params`) and validates it;
:func:`parse_overrides` turns ``--set name=value`` items into values the same way.
"""
from __future__ import annotations

import copy
import math
import reprlib
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import InputError
from .yaml_params import parse_yaml, read_yaml_file

__all__ = ["PARAMETERS", "RESUMABLE_CHANGES", "check_params", "load_params", "parse_overrides", "resolve_path"]

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
    "init_weights": ("", str, lambda v: True, "",
                     "start from a trained network: a checkpoint folder (info.json + model.pt), e.g. "
                     "checkpoints/rrsr_rec_seed0; '' starts from a fresh network"),
    "seed": (10, int, lambda v: v >= 0, "is >= 0", "random seed"),
    "device": ("auto", str, lambda v: v in ("auto", "cuda", "mps", "cpu"), "is auto, cuda, mps or cpu",
               "where to train"),
    "amp": (True, bool, lambda v: True, "", "mixed precision on CUDA (ignored elsewhere)"),
    "cpu_amp": (False, bool, lambda v: True, "",
                "bfloat16 autocast on the CPU (a trial; the shipped networks train in float32)"),
    "checkpoint_every": (5000, int, lambda v: v >= 0, "is >= 0", "write a checkpoint every N iterations"),
    "log_every": (100, int, lambda v: v >= 1, "is >= 1", "write mean losses every N iterations"),
    "output_dir": ("runs/train", str, lambda v: bool(v), "is a non-empty path",
                   "folder for logs and checkpoints (relative: from the project root)"),
    "resume": (True, bool, lambda v: True, "", "continue from output_dir/checkpoint.pt when it exists"),
    "progress": (True, bool, lambda v: True, "", "show a tqdm progress bar"),
}

# Parameters that may change between an interrupted run and its continuation (they do not change
# what the network sees or how it is updated).
RESUMABLE_CHANGES = {"iterations", "val_every", "val_limit", "checkpoint_every", "log_every", "output_dir",
                     "resume", "progress", "num_workers", "device", "data_root", "val_root", "val_dataset"}

# learning rates above this are announced: Adam on these networks diverges well before it
_LR_WARN = 0.01
_LEARNING_RATES = ("lr", "d_lr", "offset_lr_x1", "offset_lr_x2", "offset_lr_x4")


def _short(value, limit: int = 80) -> str:
    """repr of a value, cut to ``limit`` characters (a parameter can be huge)."""
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


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



def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["name=value", ...]`` (the command line's ``--set``) -> {name: value}, each value read as YAML 1.2."""
    out = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--set expects name=value, got {item[:80]!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_yaml(v, f"--set {k.strip()[:40]}")
    return out


def resolve_path(path: str) -> Path:
    """A path parameter as a Path: absolute paths as given, relative ones from the project root (the folder
    that holds rrsr_lib/), so that a parameter file means the same from the notebooks' folder and from the
    command line."""
    from .figures import project_root

    q = Path(path).expanduser()
    return q if q.is_absolute() else project_root() / q
