"""Trained checkpoints that ship with the project: what each one is, how it was made, how to load it safely.

Idea: the paper's claims are comparisons between *trained* networks (RRSR against SISR, C2-Matching and
TTSR, each with and without reciprocal learning; the PFAS ablations). Training at the authors' scale
takes days on a GPU, so the project ships small networks trained on the embedded photos on a 2-core
CPU, all with one recipe (:data:`RECIPE`: the same data, patch size, batch, step count and schedule), so
that the comparisons between them are fair even though every one of them is far from converged.

Each checkpoint is a folder ``checkpoints/<name>/`` holding

* ``params.yaml``: the exact training parameter file (:mod:`rrsr_lib.train`) that made it;
* ``train_log.csv``: the training log written by :func:`rrsr_lib.train.train`;
* ``model.pt``: the trained weights, a plain dict of tensors readable with
  ``torch.load(path, weights_only=True)`` (nothing in it can run code);
* ``info.json``: the architecture (registry name, configuration, matching features and VGG weights),
  the sha256 and size of ``model.pt``, the training time and machine.

What ``model.pt`` stores, and what it does not:

* only the *trained* tensors. The frozen parts (ImageNet VGG texture features, the contrastive matching
  trunks) are rebuilt from their own shipped weights when the network is built; a fingerprint of them
  (sha256 over their tensors) is stored in info.json and checked at load time, so a checkpoint is never
  run with other frozen features than the ones it was trained with;
* large weight tensors as int8 with one float32 scale per output channel, everything else (biases, small
  tensors) as float32 (:mod:`rrsr_lib.fast.int8`: what is quantized, how, and why: a shipped checkpoint
  may take 5 MB). Every number the project reports is measured with the weights as shipped (dequantized),
  never with the float32 originals.

:func:`load_checkpoint` checks the file's sha256 against info.json and names the command that trains a
missing checkpoint. ``python scripts/train_checkpoints.py`` regenerates every checkpoint from its
params.yaml (:func:`rrsr_lib.checkpoint_training.train_checkpoint`, which also writes the params.yaml files).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputError
from .fast.int8 import pack_tensors, unpack_tensors
from .files import atomic_torch_save, atomic_write_text, load_tensors, sha256_file
from .figures import project_root

__all__ = ["FORMAT", "RECIPE", "RECIPE_VERSION", "recipe", "checkpoint_recipe", "CHECKPOINTS", "checkpoints_dir", "checkpoint_names",
           "checkpoint_spec", "spec_architecture", "build_architecture", "frozen_prefixes", "frozen_fingerprint", "pack_state_dict",
           "unpack_state_dict", "save_checkpoint", "checkpoint_info", "load_checkpoint", "list_checkpoints",
           "sha256_file", "load_authors_checkpoint"]

FORMAT = "rrsr-checkpoint/1"

# ----------------------------------------------------------------------------------------------
# the recipe: one set of training parameters for every shipped checkpoint
# ----------------------------------------------------------------------------------------------
# name: (value, comment). Every parameter of rrsr_lib.train.PARAMETERS that the recipe sets; the rest keep
# the authors' values. model, model_config, reciprocal, seed and output_dir come from each checkpoint.
# Recipe 2 (2026-12-03) was chosen by the recipe trials of checkpoints/README.md (results/recipe_trials.json):
# the best whole-image PSNR within one core-hour per network.
RECIPE_VERSION = 2
RECIPE: dict[str, tuple[Any, str]] = {
    "reciprocal_weight": (0.6, "the authors' weight: loss = L1(SR, HR) + 0.6 L1(Ref_w_hat, Ref_w)"),
    "warp_min_px": (2.0, "Ref_w corner moves 2-7.6 px: the authors' 5-19 px on a 160 px reference, scaled to 64 px"),
    "warp_max_px": (7.6, ""),
    "dataset": ("embedded", "the embedded training photos (CUFED cannot ship)"),
    "embedded_length": (1000, "pairs per epoch"),
    "embedded_levels": ([1, 2], "similarity levels 1-2 only (authors: CUFED pairs of all similarities): "
                                "levels 1-4 scored lower in the recipe trials"),
    "val_dataset": ("none", "no validation during training: the test pairs are only used to evaluate (notebook 08)"),
    "hr_patch": (64, "HR 64 / LR 16 / Ref 64 (authors: 160 / 40 / 160): HR 96 scored lower within the hour"),
    "lr_patch": (16, ""),
    "ref_size": (64, ""),
    "batch_size": (4, "authors: 9"),
    "num_workers": (0, ""),
    "iterations": (2000, "authors: 255,000; about an hour of one CPU core for rrsr"),
    "lr": (1.0e-3, "authors: 1e-4; 10x for a run 128x shorter (the same for every model)"),
    "offset_lr_x1": (1.0e-5, "the authors' offset learning rates 1e-6 / 1e-5 / 1e-4, also 10x"),
    "offset_lr_x2": (1.0e-4, ""),
    "offset_lr_x4": (1.0e-3, ""),
    "lr_milestones": ([1600], "lr x0.1 for the last 20% of the steps (authors: at 72,545 and 211,040 of 255,000)"),
    "lr_gamma": (0.1, ""),
    "device": ("auto", ""),
    "amp": (True, "mixed precision on CUDA only"),
    "cpu_amp": (False, "float32 on the CPU (bfloat16 autocast was a trial)"),
    "checkpoint_every": (100, "resumable checkpoint in output_dir every 100 steps"),
    "log_every": (50, ""),
    "resume": (True, "an interrupted run continues exactly; delete output_dir to start over"),
    "progress": (False, "log lines only (trainings run in the background)"),
}
# Recipe 1: what the checkpoints trained before 2026-12-03 saw (info.json without "recipe"); only the
# parameters that differ from RECIPE. Kept so that their params.yaml stays the exact file that made them.
LEGACY_RECIPES: dict[int, dict[str, tuple[Any, str]]] = {1: {
    "warp_min_px": (1.0, "Ref_w corner moves 1-3.8 px: the authors' 5-19 px on a 160 px reference, scaled to 32 px"),
    "warp_max_px": (3.8, ""),
    "embedded_levels": ([1, 2], "similarity levels 1-2 only (authors: CUFED pairs of all similarities): "
                                "reference use is learned faster from similar pairs, and the budget is short"),
    "hr_patch": (32, "HR 32 / LR 8 / Ref 32 (authors: 160 / 40 / 160): what a 2-core CPU trains in minutes"),
    "lr_patch": (8, ""),
    "ref_size": (32, ""),
    "iterations": (300, "authors: 255,000"),
    "lr": (1.0e-3, "authors: 1e-4; 10x for a run 850x shorter (the same for every model)"),
    "lr_milestones": ([240], "lr x0.1 for the last 20% of the steps (authors: at 72,545 and 211,040 of 255,000)"),
    "checkpoint_every": (0, "only the final resumable checkpoint"),
    "log_every": (10, ""),
    "resume": (False, "start over when retrained"),
    "progress": (True, ""),
}}


def recipe(version: int = RECIPE_VERSION) -> dict[str, tuple[Any, str]]:
    """The training recipe ``version`` (name -> (value, comment)): :data:`RECIPE` or a legacy one."""
    if version == RECIPE_VERSION:
        return dict(RECIPE)
    if version not in LEGACY_RECIPES:
        raise InputError(f"recipe {version!r} is unknown; the recipes are {sorted([RECIPE_VERSION, *LEGACY_RECIPES])}")
    return {**RECIPE, **LEGACY_RECIPES[version]}


def checkpoint_recipe(info: dict) -> int | str:
    """The recipe version a checkpoint's info.json records: 1 when it predates the field, a string naming
    the parameter file when it was trained from another file than a recipe's."""
    return info.get("recipe", 1)


# The shipped checkpoints: name -> architecture and run. "config" is the registry configuration
# (rrsr_lib.models / rrsr_lib.baselines); the RRSR ablations are RRSR's "small" with one part changed.
_ABLATION_NOTE = {"small_single_scale": "PFAS ablation: reference aligned and used at x1 only",
                  "small_no_selection": "PFAS ablation: plain conv head instead of the reference-aware selection",
                  "small_no_cascade": "PFAS ablation: one stage per scale (no cascade)"}


def _spec(model: str, reciprocal: bool, seed: int, config: str = "small", note: str = "") -> dict:
    return {"model": model, "config": config, "reciprocal": reciprocal, "seed": seed, "note": note}


def _all_specs() -> dict[str, dict]:
    specs = {}
    for model in ("sisr", "c2", "ttsr", "rrsr"):
        for rec in (False, True):
            specs[f"{model}_{'rec' if rec else 'plain'}_seed0"] = _spec(model, rec, 0)
    for seed in (1, 2):
        for rec in (False, True):
            specs[f"rrsr_{'rec' if rec else 'plain'}_seed{seed}"] = _spec("rrsr", rec, seed)
    for config, note in _ABLATION_NOTE.items():
        specs[f"rrsr_{config[len('small_'):]}_rec_seed0"] = _spec("rrsr", True, 0, config, note)
    return specs


CHECKPOINTS: dict[str, dict] = _all_specs()

# frozen parts shared by all networks: the contrastive matching trunks shipped by rrsr_lib.contrastive (the
# authors' matching features) and the offline ImageNet VGG16 texture features (rrsr_lib.vgg)
MATCHING = "contrastive"
VGG_WEIGHTS = "vgg16"
# What RRSR and C2 compute beyond their sizes (rrsr_lib.models.RRSRConfig): the authors' selection block and
# matching input for everything trained from now on; the checkpoints shipped before 2026-12-02 were trained
# with a LeakyReLU after the selection gate and torch's bicubic LR_up, and their info.json says so.
# An architecture record without "variant" predates the field and is the legacy variant.
AUTHORS_VARIANT = {"selection_activation": "none", "lr_up": "pil"}
LEGACY_VARIANT = {"selection_activation": "lrelu", "lr_up": "torch"}


def checkpoints_dir() -> Path:
    """checkpoints/ at the project root, or $RRSR_CHECKPOINTS when set."""
    return Path(os.environ.get("RRSR_CHECKPOINTS", project_root() / "checkpoints"))


def checkpoint_names() -> list[str]:
    """Names of the shipped checkpoints, in the order of :data:`CHECKPOINTS`."""
    return list(CHECKPOINTS)


def checkpoint_spec(name: str) -> dict:
    """The specification of a shipped checkpoint: {"model", "config", "reciprocal", "seed", "note"}."""
    if name not in CHECKPOINTS:
        raise InputError(f"unknown checkpoint {name!r}; the shipped checkpoints are {checkpoint_names()}")
    return dict(CHECKPOINTS[name])


def spec_architecture(spec: dict) -> dict:
    """The architecture record (:func:`build_architecture`) of a checkpoint spec (:func:`checkpoint_spec`)."""
    arch = {"model": spec["model"], "config": spec["config"], "matching": MATCHING, "vgg_weights": VGG_WEIGHTS}
    if spec["model"] in ("rrsr", "c2"):
        arch["variant"] = dict(AUTHORS_VARIANT)
    return arch


def _variant(arch: dict) -> dict:
    """The RRSRConfig fields of an architecture record's "variant" (legacy when the record has none)."""
    variant = arch.get("variant", LEGACY_VARIANT)
    if not isinstance(variant, dict) or set(variant) != set(AUTHORS_VARIANT):
        raise InputError(f"architecture variant must be a dict with the keys {sorted(AUTHORS_VARIANT)}, got {variant!r}")
    return dict(variant)


def build_architecture(arch: dict) -> nn.Module:
    """An untrained network for an architecture record {"model", "config", "matching", "vgg_weights", "variant"}.

    The frozen parts are pinned: matching features ("contrastive" or "vgg") and VGG weights ("vgg16",
    "vgg19") are what the record says, never the "auto" choice, which could differ between machines.
    "variant" (rrsr and c2): {"selection_activation", "lr_up"}, what the network was trained as
    (:data:`AUTHORS_VARIANT`, or :data:`LEGACY_VARIANT` for the checkpoints shipped before 2026-12-02).
    Returns the network in eval mode on the CPU; its call is model(lr, ref) -> sr (rrsr_lib.models).
    """
    from . import baselines
    from .models import build_model

    name, config = arch.get("model"), arch.get("config")
    if name == "rrsr":
        model = build_model("rrsr", config, matching=arch["matching"], vgg_weights=arch["vgg_weights"], **_variant(arch))
    elif name == "c2":
        if config not in baselines.C2_CONFIGS:
            raise InputError(f"unknown c2 configuration {config!r}; choose one of {sorted(baselines.C2_CONFIGS)}")
        model = build_model("c2", {**baselines.C2_CONFIGS[config], "matching": arch["matching"],
                                   "vgg_weights": arch["vgg_weights"], **_variant(arch)})
    elif name == "ttsr":
        if config not in baselines.TTSR_CONFIGS:
            raise InputError(f"unknown ttsr configuration {config!r}; choose one of {sorted(baselines.TTSR_CONFIGS)}")
        model = build_model("ttsr", dataclasses.replace(baselines.TTSR_CONFIGS[config], vgg_weights=arch["vgg_weights"]))
    elif name == "sisr":
        model = build_model("sisr", config)
    else:
        raise InputError(f"unknown model {name!r} in a checkpoint architecture; expected rrsr, c2, ttsr or sisr")
    return model.eval()


# ----------------------------------------------------------------------------------------------
# what is stored: trained tensors only, large weights as int8
# ----------------------------------------------------------------------------------------------
def frozen_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes ("texture.", "matcher.features.", ...) of the submodules whose parameters are all
    frozen (requires_grad False): the pretrained parts that are rebuilt, not stored. Outermost only."""
    out: list[str] = []
    for name, mod in model.named_modules():
        if not name or any(name.startswith(p) for p in out):
            continue
        params = list(mod.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name + ".")
    return out


def _split_state(model: nn.Module) -> tuple[dict, dict]:
    prefixes = frozen_prefixes(model)
    trained, frozen = {}, {}
    for k, v in model.state_dict().items():
        (frozen if any(k.startswith(p) for p in prefixes) else trained)[k] = v
    return trained, frozen


def frozen_fingerprint(model: nn.Module) -> str:
    """sha256 over the names, shapes and float32 values of the frozen tensors of ``model`` (hex string)."""
    h = hashlib.sha256()
    for k, v in sorted(_split_state(model)[1].items()):
        t = v.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{k}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def pack_state_dict(model: nn.Module) -> dict:
    """The trained tensors of ``model`` as a dict of plain tensors (torch.load(weights_only=True) can read it).

    Returns {"format": FORMAT, "float": {name: float32 tensor}, "int8": {name: int8 tensor},
    "scale": {name: float32 tensor [out_channels]}}: the frozen parts are left out (:func:`frozen_prefixes`),
    large weights go to "int8" (:func:`rrsr_lib.fast.int8.pack_tensors`: w ~= q * scale per output channel).
    """
    trained, _ = _split_state(model)
    return {"format": FORMAT, **pack_tensors(trained)}


def unpack_state_dict(packed: dict) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_state_dict`: {name: tensor} with int8 weights dequantized to float32."""
    if not isinstance(packed, dict) or packed.get("format") != FORMAT:
        raise InputError(f"not an rrsr checkpoint of format {FORMAT!r}; write it with rrsr_lib.checkpoints.save_checkpoint")
    return unpack_tensors(packed)


def save_checkpoint(model: nn.Module, folder: str | Path, arch: dict, **info) -> dict:
    """Write ``folder/model.pt`` (packed, see :func:`pack_state_dict`) and ``folder/info.json`` atomically.

    arch: the architecture record that :func:`build_architecture` rebuilds ``model`` from. ``info``: more
    fields for info.json (training time, spec, ...). Returns the info dict written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    atomic_torch_save(pack_state_dict(model), path)
    record = {"format": FORMAT, "architecture": dict(arch), "frozen_fingerprint": frozen_fingerprint(model),
              "trained_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "sha256": sha256_file(path), "bytes": path.stat().st_size, **info}
    atomic_write_text(folder / "info.json", json.dumps(record, indent=1) + "\n")
    return record


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------
# a checkpoint is named by its folder inside the checkpoints folder: no separators, no "..", no hidden names
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _train_command(name: str) -> str:
    return f"`python scripts/train_checkpoints.py {name}`"


def checkpoint_info(name: str, root: str | Path | None = None) -> dict:
    """info.json of a checkpoint (architecture, sha256, bytes, training time). Raises InputError naming the
    command that trains the checkpoint when its folder or files are missing."""
    root = Path(root) if root is not None else checkpoints_dir()
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(f"checkpoint name {name!r} must be a folder name inside {root} (letters, digits, '_', "
                         f"'-', '.'; no path); the shipped checkpoints are {checkpoint_names()}")
    folder = root / name
    known = name in CHECKPOINTS
    if not (folder / "info.json").is_file() or not (folder / "model.pt").is_file():
        missing = "model.pt" if (folder / "info.json").is_file() else "info.json"
        how = (f"train it with {_train_command(name)} (a few minutes on a CPU) or restore the shipped files with "
               f"`git checkout -- checkpoints/{name}`") if known else \
            f"the shipped checkpoints are {checkpoint_names()}"
        raise InputError(f"checkpoint {name!r} is missing ({folder / missing} not found); {how}")
    fix = (f"restore it with `git checkout -- checkpoints/{name}` or retrain with {_train_command(name)}" if known
           else "write it with rrsr_lib.checkpoints.save_checkpoint")
    try:
        info = json.loads((folder / "info.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{folder / 'info.json'} is not valid JSON ({str(exc)[:80]}); {fix}") from None
    arch = info.get("architecture") if isinstance(info, dict) else None
    if not isinstance(arch, dict) or not isinstance(arch.get("model"), str) or not isinstance(info.get("sha256"), str):
        raise InputError(f"{folder / 'info.json'} lacks the architecture record or the sha256 a checkpoint's "
                         f"info.json holds; {fix}")
    return info


def load_checkpoint(name: str, device: torch.device | str = "cpu", root: str | Path | None = None,
                    verify: bool = True) -> nn.Module:
    """A trained network from ``checkpoints/<name>``, in eval mode on ``device``.

    Call: model(lr [B,3,h,w], ref [B,3,Hr,Wr], float in [0,1]) -> sr [B,3,4h,4w] in [0,1].
    verify: check model.pt's sha256 against info.json and the fingerprint of the frozen parts (VGG,
    matching trunks) against the ones the checkpoint was trained with. The file is read with
    ``torch.load(weights_only=True)``. Raises InputError for a missing checkpoint (with the command that
    trains it), a changed file, or frozen parts that differ.
    """
    root = Path(root) if root is not None else checkpoints_dir()
    info = checkpoint_info(name, root)
    path = root / name / "model.pt"
    if verify:
        digest = sha256_file(path)
        if digest != info.get("sha256"):
            raise InputError(f"{path} has changed: its sha256 is {digest[:16]}..., info.json says "
                             f"{str(info.get('sha256'))[:16]}...; restore it with `git checkout -- checkpoints/{name}` "
                             f"or retrain it with {_train_command(name)}")
    model = build_architecture(info["architecture"])
    if verify and frozen_fingerprint(model) != info.get("frozen_fingerprint"):
        raise InputError(f"checkpoint {name!r} was trained with other frozen features (VGG / matching trunks: "
                         f"{info['architecture']}) than this installation builds; restore rrsr_lib/weights and the "
                         f"VGG weights it names, or retrain it with {_train_command(name)}")
    how = (f"restore it with `git checkout -- checkpoints/{name}` or retrain it with {_train_command(name)}"
           if name in CHECKPOINTS else "write it again with rrsr_lib.checkpoints.save_checkpoint")
    state = unpack_state_dict(load_tensors(path, "checkpoint", how))
    result = model.load_state_dict(state, strict=False)
    prefixes = frozen_prefixes(model)
    not_frozen = [k for k in result.missing_keys if not any(k.startswith(p) for p in prefixes)]
    if not_frozen or result.unexpected_keys:
        raise InputError(f"{path} does not fit the architecture {info['architecture']}: missing "
                         f"{not_frozen[:3]}, unexpected {result.unexpected_keys[:3]}; retrain it with "
                         f"{_train_command(name)}")
    return model.to(device).eval()


def load_authors_checkpoint(restoration_path: str | Path, feature_extraction_path: str | Path | None = None,
                            device: torch.device | str = "cpu") -> nn.Module:
    """The paper RRSR with the authors' released weights (``network_mse.pth`` / ``network_gan.pth``, and
    optionally C2-Matching's ``feature_extraction.pth``), in eval mode: see
    :func:`rrsr_lib.authors_weights.load_authors_checkpoint` (key mapping, checks, what is announced)."""
    from .authors_weights import load_authors_checkpoint as load

    return load(restoration_path, feature_extraction_path, device)


def list_checkpoints(root: str | Path | None = None) -> list[dict]:
    """One row per shipped checkpoint: {name, model, config, reciprocal, seed, note, present, bytes,
    train_seconds, iterations, recipe, trained_parameters, threads}; present=False (and None sizes) for a
    checkpoint whose files are missing."""
    root = Path(root) if root is not None else checkpoints_dir()
    rows = []
    for name, spec in CHECKPOINTS.items():
        try:
            info = checkpoint_info(name, root)
            present = True
        except InputError:
            info, present = {}, False
        rows.append({"name": name, **spec, "present": present, "bytes": info.get("bytes"),
                     "train_seconds": info.get("train_seconds"), "iterations": info.get("iterations"),
                     "recipe": checkpoint_recipe(info) if present else None,
                     "trained_parameters": info.get("trained_parameters"), "threads": info.get("threads")})
    return rows
