"""Alignment explorer: where the 9 taps of a deformable kernel read the reference, at x1, x2 and x4.

Pick a point of the input image (as fractions of its height and width) and a scale: the explorer
shows the point on the input at that scale and, on the reference at that scale, the 9 positions its
3x3 deformable kernel samples: with the matched pre-offsets only ("before", hollow circles) and with
the learned residual offsets added ("after", filled dots). The same point is shown at the three
scales, so one sees the matched flow repeated (x2, x4: scaled) and the learned corrections.

* :func:`alignment_state` packs images and offsets per scale (from any source: an RRSR trace via
  :func:`state_from_trace`, or alignment units fitted by hand as in notebook 03);
* :func:`tap_view` computes one explorer state (positions of the taps; the tests call it);
* :func:`draw_alignment` draws the static figure of a state (papermill / nbval runs and figures/);
* :func:`alignment_explorer` wires sliders to :func:`tap_view` (ipywidgets).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..alignment import tap_positions
from ..errors import InputError
from . import show_explorer

SCALES = (1, 2, 4)


def _image(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) float in [0, 1] -> H x W x 3 float array for imshow."""
    t = t.detach().float().cpu()
    if t.dim() == 4:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise InputError(f"expected an RGB image tensor (3, H, W), got {tuple(t.shape)}")
    return t.clamp(0, 1).permute(1, 2, 0).numpy()


def alignment_state(inputs: dict, refs: dict, before: dict, after: dict, group: int = 0) -> dict:
    """Pack what the explorer shows, per scale s in {1, 2, 4} (any subset):

    inputs[s]: the input image at scale s, (3, H_s, W_s) in [0, 1] (e.g. the LR image enlarged s times);
    refs[s]: the reference image on the same canvas, (3, H_s, W_s) (what the kernel at scale s samples);
    before[s] / after[s]: offsets [18G, H_s, W_s] or [1, 18G, H_s, W_s] in torchvision's layout, without
    and with the learned residual. group: which deformable group's taps to show.
    Returns {s: {"input", "ref" (H x W x 3 arrays), "before", "after" ((py, px) tap positions [9, H, W])}}.
    """
    state = {}
    for s in sorted(before):
        if s not in inputs or s not in refs or s not in after:
            raise InputError(f"scale {s}: inputs, refs, before and after must all be given")
        views = {}
        for key, off in (("before", before[s]), ("after", after[s])):
            off = off.detach().float().cpu()
            if off.dim() == 3:
                off = off.unsqueeze(0)
            h, w = off.shape[2:]
            py, px = tap_positions(off[:1], h, w)
            if not 0 <= group < py.shape[1]:
                raise InputError(f"group must be in 0..{py.shape[1] - 1}, got {group}")
            views[key] = (py[0, group].numpy(), px[0, group].numpy())
        img_in, img_ref = _image(inputs[s]), _image(refs[s])
        if img_in.shape[:2] != views["before"][0].shape[1:] or img_ref.shape[:2] != img_in.shape[:2]:
            raise InputError(f"scale {s}: input {img_in.shape[:2]}, reference {img_ref.shape[:2]} and offsets "
                             f"{views['before'][0].shape[1:]} must have the same size")
        state[s] = {"input": img_in, "ref": img_ref, **views}
    return state


def state_from_trace(trace: dict, lr: torch.Tensor, ref: torch.Tensor, stage: int = -1, group: int = 0) -> dict:
    """Explorer state from an RRSR forward pass: ``trace = {}; model(lr, ref, trace=trace)``.

    Uses the given cascade ``stage`` at each scale (default: the last). The input at scale s is the LR
    image enlarged s times (nearest), the reference is the padded reference reduced to the canvas at
    scale s (area average), as the texture feature of that scale sees it (VGG relu3_1 / 2_1 / 1_1).
    """
    import torch.nn.functional as F

    hc, wc = trace["canvas"]
    lr_c = F.pad(lr[:1], (0, wc - lr.shape[3], 0, hc - lr.shape[2]))
    ref_c = F.pad(ref[:1], (0, 4 * wc - ref.shape[3], 0, 4 * hc - ref.shape[2]))
    inputs, refs, before, after = {}, {}, {}, {}
    for s in SCALES:
        stages = trace.get(f"x{s}") or []
        if not stages:
            continue   # this scale does not use the reference (ablation)
        st = stages[stage]
        inputs[s] = F.interpolate(lr_c, scale_factor=s, mode="nearest")[0]
        refs[s] = F.avg_pool2d(ref_c, 4 // s)[0] if s < 4 else ref_c[0]
        after[s] = st["offset"][:1]
        before[s] = (st["offset"] - st["residual"])[:1]
    return alignment_state(inputs, refs, before, after, group)


def tap_view(state: dict, fy: float, fx: float, scale: int) -> dict:
    """One explorer state: the output position for the point (fy, fx) (fractions of height and width)
    at ``scale`` and the 9 tap positions before/after, each (9, 2) arrays of (y, x) reference pixels.
    Also "shift": the mean distance (pixels at this scale) the learned residual moved the taps."""
    if scale not in state:
        raise InputError(f"scale must be one of {sorted(state)}, got {scale!r}")
    if not (0.0 <= fy <= 1.0 and 0.0 <= fx <= 1.0):
        raise InputError(f"fy and fx are fractions of the image size, in [0, 1]; got {fy}, {fx}")
    st = state[scale]
    h, w = st["input"].shape[:2]
    y, x = int(round(fy * (h - 1))), int(round(fx * (w - 1)))
    taps = {}
    for key in ("before", "after"):
        py, px = st[key]
        taps[key] = np.stack([py[:, y, x], px[:, y, x]], axis=1)
    return {"scale": scale, "position": (y, x), "before": taps["before"], "after": taps["after"],
            "shift": float(np.linalg.norm(taps["after"] - taps["before"], axis=1).mean())}


def _draw_scale(ax_in, ax_ref, state: dict, view: dict, window: int) -> None:
    s = view["scale"]
    st = state[s]
    y, x = view["position"]
    ax_in.imshow(st["input"], interpolation="nearest")
    ax_in.plot([x], [y], marker="+", color="yellow", markersize=14, mew=2)
    ax_in.set_title(f"x{s} input, output pixel ({y}, {x})", fontsize=8)
    ax_ref.imshow(st["ref"], interpolation="nearest")
    for key, style in (("before", dict(marker="o", mfc="none", mec="white", ms=7, mew=1.5, ls="none")),
                       ("after", dict(marker="o", color="red", ms=4, ls="none"))):
        t = view[key]
        ax_ref.plot(t[:, 1], t[:, 0], label=key, **style)
        # the 3x3 kernel drawn as a grid: rows and columns of taps joined
        grid = t.reshape(3, 3, 2)
        for line in list(grid) + list(grid.transpose(1, 0, 2)):
            ax_ref.plot(line[:, 1], line[:, 0], color="white" if key == "before" else "red", lw=0.6, alpha=0.7)
    cy, cx = view["after"].mean(axis=0)
    half = window * s / 2
    ax_ref.set_xlim(cx - half, cx + half)
    ax_ref.set_ylim(cy + half, cy - half)
    ax_ref.set_title(f"x{s} reference: taps (moved {view['shift']:.2f} px)", fontsize=8)
    for ax in (ax_in, ax_ref):
        ax.set_xticks([])
        ax.set_yticks([])


def draw_alignment(state: dict, fy: float = 0.5, fx: float = 0.5, window: int = 12):
    """Static figure of the default state: for every scale, the input with the chosen point and a
    ``window`` x ``window`` LR-pixel view of the reference with the 9 taps before (hollow) and after
    (red) the learned residual offsets. Returns (figure, {scale: tap_view})."""
    scales = sorted(state)
    fig, axes = plt.subplots(2, len(scales), figsize=(3.3 * len(scales), 6.4), squeeze=False)
    views = {}
    for col, s in enumerate(scales):
        views[s] = tap_view(state, fy, fx, s)
        _draw_scale(axes[0, col], axes[1, col], state, views[s], window)
    axes[1, 0].legend(loc="lower left", fontsize=7, framealpha=0.6)
    fig.tight_layout()
    return fig, views


def alignment_explorer(state: dict, window: int = 12):
    """ipywidgets explorer: sliders for the point (fractions of height and width) and a scale dropdown."""
    import ipywidgets as widgets

    fy = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="y (fraction)", continuous_update=False)
    fx = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="x (fraction)", continuous_update=False)
    scale = widgets.Dropdown(options=[(f"x{s}", s) for s in sorted(state)], value=sorted(state)[0], description="scale")

    def draw():
        fig, axes = plt.subplots(1, 2, figsize=(8, 4))
        _draw_scale(axes[0], axes[1], state, tap_view(state, fy.value, fx.value, scale.value), window)
        fig.tight_layout()

    return show_explorer([fy, fx, scale], draw)
