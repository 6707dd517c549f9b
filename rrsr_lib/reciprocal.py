"""Reciprocal learning: a well reconstructed SR image should in turn serve as a good reference.

RRSR's first idea (RRSR.md, "Reciprocal learning"), for training only and for any RefSR network
``f`` with the call ``f(LR, Ref) -> SR``:

* every training sample (LR, Ref, HR) also carries ``Ref_w``, the reference warped by a random
  homography (each corner moved 5-19 px with a random sign, bicubic), and its LR version
  ``LR(Ref_w)`` (PIL bicubic x1/4, as every LR image of the literature);
* pass 1:  ``SR = f(LR, Ref)``;
* pass 2:  ``Ref_w_hat = f(LR(Ref_w), SR)``: the network super-resolves the warped reference using
  its own output as the reference; ``SR`` is *not* detached, so the gradient of pass 2 reaches pass 1
  (through the frozen but differentiable VGG texture features of SR, for RRSR);
* loss:    ``L1(SR, HR) + 0.6 L1(Ref_w_hat, Ref_w)``, the same weights used in both passes.

Why it helps: pass 2 can only do well if SR carries textures that the network can find and transfer,
so the network is pushed to produce SR images that are good references, i.e. realistic, matchable
texture. At test time nothing changes: inference is pass 1 alone.

Cost: a reciprocal step is two plain steps plus the gradient into SR, i.e. the backward pass of the VGG
texture layers on SR and the input gradient of every alignment unit's bilinear sampling (a scatter; on the
CPU rrsr_lib.fast.sampling_adjoint computes it, much faster than ATen: benchmarks/sampling_adjoint.py).
benchmarks/train.py measures the ratio.

Shapes (the authors' training set-up): LR (B, 3, 40, 40), Ref and HR (B, 3, 160, 160); Ref_w
(B, 3, 160, 160) and LR(Ref_w) (B, 3, 40, 40), so pass 2 sees the same sizes as pass 1.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .data.warp import random_homography_warp
from .degradation import bicubic_downsample
from .errors import DivergenceError, InputError
from .losses import l1_loss

__all__ = ["RECIPROCAL_WEIGHT", "WARP_SHIFT_PX", "warped_reference", "add_warped_reference",
           "reciprocal_passes", "reciprocal_loss", "ReciprocalLearning"]

# The authors' weight of the reciprocal term: loss = L1(SR, HR) + 0.6 L1(Ref_w_hat, Ref_w).
RECIPROCAL_WEIGHT = 0.6
# Each corner of Ref_w is moved by 5-19 px (x and y independently) with a random sign.
WARP_SHIFT_PX = (5.0, 19.0)


def _to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def _to_float_chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)


def warped_reference(ref: torch.Tensor, rng: np.random.Generator, shift_px: tuple[float, float] = WARP_SHIFT_PX,
                     scale: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Make ``(Ref_w, LR(Ref_w))`` for one reference or a batch.

    ref: float (3, H, W) or (B, 3, H, W) in [0, 1], H and W multiples of ``scale`` (authors: 160x160).
    rng: numpy Generator; the result is a pure function of its state (one homography per image).
    shift_px: (min, max) corner displacement in px; each corner's x and y move by U[min, max] with a
        random sign (authors: 5-19). The warp is bicubic (rrsr_lib.data.warp, the authors use cv2's
        bicubic warpPerspective); pixels that fall outside the reference read black, like cv2's
        default border.
    Returns float32 tensors on ref's device: Ref_w with ref's shape and LR(Ref_w) of size H/scale x
    W/scale, both in [0, 1] and on the uint8 grid (Ref_w is rounded to 8 bits, as an image file
    would be, and LR(Ref_w) is PIL's bicubic downsampling of it, as every LR image here).
    """
    single = ref.dim() == 3
    batch = ref.unsqueeze(0) if single else ref
    if batch.dim() != 4 or batch.shape[1] != 3:
        raise InputError(f"warped_reference expects a reference (3,H,W) or (B,3,H,W), got shape {tuple(ref.shape)}")
    h, w = batch.shape[-2:]
    if h % scale or w % scale:
        raise InputError(f"the reference is {w}x{h}: its size must be a multiple of {scale} so that LR(Ref_w) "
                         f"is exact; resize it to 160x160 as the authors do")
    lo, hi = shift_px
    warped, lows = [], []
    for img in batch:
        ref_w, _ = random_homography_warp(_to_uint8_hwc(img), max_shift_px=hi, rng=rng, min_shift_px=lo,
                                          mode="bicubic", padding_mode="zeros")
        warped.append(_to_float_chw(ref_w))
        # LR(Ref_w): PIL bicubic downsampling by the scale, as the LR inputs are made
        lows.append(_to_float_chw(bicubic_downsample(ref_w, scale)))
    ref_w, lr_ref_w = torch.stack(warped).to(ref.device), torch.stack(lows).to(ref.device)
    return (ref_w[0], lr_ref_w[0]) if single else (ref_w, lr_ref_w)


def add_warped_reference(sample: dict, rng: np.random.Generator, shift_px: tuple[float, float] = WARP_SHIFT_PX,
                         scale: int = 4) -> dict:
    """Return a copy of a training sample with "ref_w" and "lr_ref_w" added (see :func:`warped_reference`).

    sample: dict with "ref" float (3, H, W) in [0, 1] (a dataset item, before batching).
    """
    if "ref" not in sample:
        raise InputError(f"a training sample needs a 'ref' entry to make Ref_w; it has {sorted(sample)}")
    out = dict(sample)
    out["ref_w"], out["lr_ref_w"] = warped_reference(sample["ref"], rng, shift_px, scale)
    return out


def reciprocal_passes(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], lr: torch.Tensor,
                      ref: torch.Tensor, lr_ref_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the two passes and return ``(SR, Ref_w_hat)``, both with their graphs.

    model: any callable ``model(lr, ref) -> sr``, (B,3,h,w), (B,3,Hr,Wr) -> (B,3,4h,4w) in [0, 1].
    lr: (B, 3, h, w); ref: (B, 3, Hr, Wr); lr_ref_w: (B, 3, h', w'), LR(Ref_w).
    Returns SR (B, 3, 4h, 4w) and Ref_w_hat (B, 3, 4h', 4w').
    """
    # pass 1: SR = f(LR, Ref)
    sr = model(lr, ref)
    if not torch.isfinite(sr).all():
        # pass 2 would refuse this SR as its reference: say what happened instead
        raise DivergenceError("pass 1 produced non-finite SR values (NaN or Inf): training diverged")
    # pass 2: Ref_w_hat = f(LR(Ref_w), SR). SR is the reference and is NOT detached: the gradient of the
    # reciprocal term flows back into pass 1.
    ref_w_hat = model(lr_ref_w, sr)
    return sr, ref_w_hat


def reciprocal_loss(sr: torch.Tensor, hr: torch.Tensor, ref_w_hat: torch.Tensor, ref_w: torch.Tensor,
                    weight: float = RECIPROCAL_WEIGHT) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L1(SR, HR) + weight * L1(Ref_w_hat, Ref_w)``; returns (total, {"l1": ..., "reciprocal": ...}).

    All images (B, 3, H, W) in [0, 1]; ``weight`` is 0.6 in the authors' configuration. The parts are
    returned unweighted (scalars with graph).
    """
    l1 = l1_loss(sr, hr)
    rec = l1_loss(ref_w_hat, ref_w)
    # L = L1(SR, HR) + 0.6 L1(Ref_w_hat, Ref_w)
    return l1 + weight * rec, {"l1": l1, "reciprocal": rec}


class ReciprocalLearning(nn.Module):
    """Wrap any RefSR model for reciprocal training; at inference it is the model itself.

    ``ReciprocalLearning(model, weight=0.6)``:

    * ``forward(lr, ref) -> sr``: pass 1 only (inference, validation, and what DDP wraps for plain
      steps);
    * ``passes(lr, ref, lr_ref_w) -> (sr, ref_w_hat)``: both passes;
    * ``training_loss(batch, rng=None) -> dict``: batch with "lr", "ref", "hr" and, when the data
      pipeline made them, "ref_w" and "lr_ref_w" (else they are made here from "ref" with ``rng``);
      returns {"loss", "l1", "reciprocal", "sr", "ref_w_hat", "ref_w"}.

    Everything the wrapped model has (its parameters, its ``named_parameters`` names under
    ``model.``) is unchanged, so optimiser groups and checkpoints work the same way.
    """

    def __init__(self, model: nn.Module, weight: float = RECIPROCAL_WEIGHT,
                 shift_px: tuple[float, float] = WARP_SHIFT_PX, scale: int = 4):
        super().__init__()
        if weight < 0:
            raise InputError(f"the reciprocal weight must be >= 0 (authors: 0.6), got {weight}")
        self.model, self.weight, self.shift_px, self.scale = model, float(weight), tuple(shift_px), scale

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.model(lr, ref)

    def passes(self, lr: torch.Tensor, ref: torch.Tensor, lr_ref_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pass 1 and pass 2 (see :func:`reciprocal_passes`)."""
        return reciprocal_passes(self.model, lr, ref, lr_ref_w)

    def training_loss(self, batch: dict, rng: np.random.Generator | None = None) -> dict:
        missing = [k for k in ("lr", "ref", "hr") if k not in batch]
        if missing:
            raise InputError(f"a reciprocal training batch needs 'lr', 'ref' and 'hr'; missing {missing}")
        if "ref_w" in batch and "lr_ref_w" in batch:
            ref_w, lr_ref_w = batch["ref_w"], batch["lr_ref_w"]
        else:
            if rng is None:
                raise InputError("the batch has no 'ref_w'/'lr_ref_w': pass rng=np.random.default_rng(seed) "
                                 "to make them here, or add them in the data pipeline (add_warped_reference)")
            ref_w, lr_ref_w = warped_reference(batch["ref"], rng, self.shift_px, self.scale)
        sr, ref_w_hat = self.passes(batch["lr"], batch["ref"], lr_ref_w)
        total, parts = reciprocal_loss(sr, batch["hr"], ref_w_hat, ref_w, self.weight)
        return {"loss": total, **parts, "sr": sr, "ref_w_hat": ref_w_hat, "ref_w": ref_w}
