"""Reciprocal-learning explorer: pass 1 and pass 2 side by side for one training sample.

Pass 1 super-resolves the input with the real reference: SR = f(LR, Ref). Pass 2 super-resolves the
*warped reference* from its LR version, using SR as the reference: Ref_w_hat = f(LR(Ref_w), SR). The
explorer shows both rows, the two L1 terms of the loss, and where the gradient of the reciprocal term
lands on SR (|dL_rec/dSR|): the pixels of pass 1 that pass 2 asks to change. For a single-image model,
which ignores its reference, that map is zero.

:func:`reciprocal_view` computes one state (sample, warp seed, largest corner move), :func:`draw_reciprocal`
draws the static figure (papermill/nbval runs and figures/), :func:`reciprocal_explorer` wires widgets.
"""
from __future__ import annotations

from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..degradation import to_uint8
from ..errors import InputError
from ..metrics import psnr
from ..reciprocal import RECIPROCAL_WEIGHT, WARP_SHIFT_PX, reciprocal_passes, warped_reference
from . import show_explorer

__all__ = ["reciprocal_view", "draw_reciprocal", "reciprocal_explorer"]


def reciprocal_view(model: Callable, sample: dict, seed: int = 0, max_shift_px: float = WARP_SHIFT_PX[1],
                    min_shift_px: float = WARP_SHIFT_PX[0], device="cpu") -> dict:
    """One explorer state: both passes of ``model`` on one training sample.

    sample: dict with "lr" (3, h, w), "ref" and "hr" (3, 4h, 4w) float in [0, 1] (a training dataset item).
    seed: seed of the random homography of Ref_w; min/max_shift_px: range of the corner moves (authors 5-19).
    Returns uint8 HxWx3 arrays "lr", "ref", "sr", "hr", "lr_ref_w", "ref_w", "ref_w_hat"; floats "l1" =
    L1(SR, HR), "reciprocal" = L1(Ref_w_hat, Ref_w), "loss" = l1 + 0.6 reciprocal, "psnr_sr" and
    "psnr_ref_w_hat" (Y, crop 4); "grad": float32 (4h, 4w) map of |dL_rec / dSR| summed over colours.
    The model is run in its current mode (train or eval) and left unchanged.
    """
    for key in ("lr", "ref", "hr"):
        if key not in sample:
            raise InputError(f"the sample needs 'lr', 'ref' and 'hr'; it has no {key!r}")
    if not 0 <= min_shift_px <= max_shift_px:
        raise InputError(f"need 0 <= min_shift_px <= max_shift_px, got {min_shift_px} and {max_shift_px}")
    lr, ref, hr = (sample[k][None].to(device) for k in ("lr", "ref", "hr"))
    ref_w, lr_ref_w = warped_reference(ref, np.random.default_rng(seed), (min_shift_px, max_shift_px))
    with torch.enable_grad():
        sr, ref_w_hat = reciprocal_passes(model, lr, ref, lr_ref_w)
        sr.retain_grad()
        rec = (ref_w_hat - ref_w).abs().mean()
        rec.backward(inputs=[sr])   # the gradient of the reciprocal term on SR only (no weights are touched)
    grad = sr.grad[0].abs().sum(0) if sr.grad is not None else torch.zeros(sr.shape[-2:])
    l1 = (sr - hr).abs().mean().item()
    u8 = {k: to_uint8(v[0]) for k, v in (("lr", lr), ("ref", ref), ("sr", sr), ("hr", hr), ("lr_ref_w", lr_ref_w),
                                          ("ref_w", ref_w), ("ref_w_hat", ref_w_hat))}
    return {**u8, "l1": l1, "reciprocal": rec.item(), "loss": l1 + RECIPROCAL_WEIGHT * rec.item(),
            "psnr_sr": psnr(u8["sr"], u8["hr"], crop_border=4),
            "psnr_ref_w_hat": psnr(u8["ref_w_hat"], u8["ref_w"], crop_border=4),
            "grad": grad.detach().float().cpu().numpy()}


def _up(img: np.ndarray, factor: int = 4) -> np.ndarray:
    return np.kron(img, np.ones((factor, factor, 1), np.uint8))


def _draw(axes, view: dict) -> None:
    rows = [
        [(_up(view["lr"]), "pass 1 input: LR"), (view["ref"], "reference: Ref"),
         (view["sr"], f"SR = f(LR, Ref)\n{view['psnr_sr']:.2f} dB, L1 {view['l1']:.4f}"), (view["hr"], "HR truth")],
        [(_up(view["lr_ref_w"]), "pass 2 input: LR(Ref_w)"), (view["sr"], "reference: SR (pass 1)"),
         (view["ref_w_hat"], f"Ref_w_hat = f(LR(Ref_w), SR)\n{view['psnr_ref_w_hat']:.2f} dB, "
                             f"L1 {view['reciprocal']:.4f}"), (view["ref_w"], "Ref_w (truth of pass 2)")],
    ]
    for r, row in enumerate(rows):
        for c, (img, title) in enumerate(row):
            axes[r, c].imshow(img, interpolation="nearest")
            axes[r, c].set_title(title, fontsize=8)
            axes[r, c].axis("off")
    g = view["grad"]
    axes[0, 4].imshow(g, cmap="magma", vmin=0, vmax=float(g.max()) or 1.0)
    axes[0, 4].set_title("|dL_rec / dSR|:\nwhere pass 2 pushes pass 1", fontsize=8)
    axes[0, 4].axis("off")
    axes[1, 4].axis("off")
    axes[1, 4].text(0.0, 0.5, f"loss = L1 + {RECIPROCAL_WEIGHT} L1_rec\n= {view['l1']:.4f} + {RECIPROCAL_WEIGHT} x "
                              f"{view['reciprocal']:.4f}\n= {view['loss']:.4f}", fontsize=9, va="center")


def draw_reciprocal(model: Callable, sample: dict, seed: int = 0, device="cpu"):
    """Static figure of the default state (authors' 5-19 px warps). Returns (figure, view)."""
    view = reciprocal_view(model, sample, seed, device=device)
    fig, axes = plt.subplots(2, 5, figsize=(13, 5.8))
    _draw(axes, view)
    fig.tight_layout()
    return fig, view


def reciprocal_explorer(model: Callable, dataset, device="cpu"):
    """ipywidgets explorer: training-sample slider, warp-seed slider and largest-corner-move slider.

    dataset: a training dataset whose items hold "lr", "ref", "hr" (e.g. rrsr_lib.data.EmbeddedTrainPairs).
    """
    import ipywidgets as widgets

    index = widgets.IntSlider(value=0, min=0, max=len(dataset) - 1, description="sample", continuous_update=False)
    seed = widgets.IntSlider(value=0, min=0, max=99, description="warp seed", continuous_update=False)
    shift = widgets.FloatSlider(value=WARP_SHIFT_PX[1], min=0.0, max=40.0, step=1.0, description="max move px",
                                continuous_update=False)

    def draw():
        fig, axes = plt.subplots(2, 5, figsize=(13, 5.8))
        view = reciprocal_view(model, dataset[index.value], seed.value, shift.value,
                               min(WARP_SHIFT_PX[0], shift.value), device)
        _draw(axes, view)
        fig.tight_layout()

    return show_explorer([index, seed, shift], draw)
