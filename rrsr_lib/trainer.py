"""One training step of RRSR, and the state a run needs to resume: :class:`Trainer`.

The step is the paper's loss in one place (RRSR.md, "Losses and variants"): pass 1 and, with reciprocal
learning, pass 2 (:func:`rrsr_lib.reciprocal.reciprocal_passes`), then L1(SR, HR) + 0.6 L1(Ref_w_hat, Ref_w);
the GAN variant adds, after its pixel-loss warm-up, the perceptual loss and WGAN-GP with one discriminator
step per generator step. Adam gives the alignment units' learned offsets their own learning rate per scale.
"""
from __future__ import annotations

import random
from contextlib import nullcontext
from typing import Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from .degradation import to_uint8
from .device import keep_freed_cpu_memory, pick_device
from .errors import DivergenceError, InputError
from .losses import (Discriminator, PerceptualLoss, TextureLoss, gradient_penalty, l1_loss, wgan_critic_loss,
                     wgan_generator_loss)
from .metrics import psnr, ssim
from .models import offset_scale
from .reciprocal import reciprocal_passes
from .registry import build_model

__all__ = ["Trainer", "LOG_KEYS"]

# the losses a step reports (0 when a term is off), in the order of train_log.csv's columns
LOG_KEYS = ("loss", "l1", "reciprocal", "perceptual", "texture", "gan_g", "critic", "gp")


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
        elif p["cpu_amp"] and self.device.type == "cpu":
            # a trial (issue 21): bfloat16 convolutions and matrix products on CPUs with AVX512-BF16; the
            # deformable sampling stays float32 (rrsr_lib.fast.deform_sampling casts its inputs)
            self.amp_dtype = torch.bfloat16
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
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

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
        logs = {k: 0.0 for k in LOG_KEYS}

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
            t = torch.tensor([logs[k] for k in LOG_KEYS], device=dev, dtype=torch.float64)
            dist.all_reduce(t)
            logs = dict(zip(LOG_KEYS, (t / self.world).tolist()))
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
