"""Matching explorer: pick an input position, see its best reference patch, the score map and the top-k candidates.

For one 3x3 input patch (top-left (y, x) in the feature grid), the cosine similarity with every 3x3
reference patch is a correlation: the normalised input patch slides over the normalised reference as a
convolution kernel, divided by each reference patch's norm. :func:`match_view` computes one state,
:func:`draw_match_view` draws it (input image with the patch, reference with the best patch and the
top-k candidates, the score map, the two patches enlarged), :func:`draw_default_view` is the static
figure of the default state (for papermill/nbval runs and figures/), :func:`matching_explorer` wires
two sliders (and a feature-set dropdown) to them. :func:`draw_correspondences` draws a whole matching (every
few input patches joined to their match), for notebook 09 and the own-images explorer of notebook 08.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import ConnectionPatch, Rectangle

from ..errors import InputError
from ..matching import NORM_EPS, normalize_pixels, patch_norms
from . import show_explorer


@torch.no_grad()
def match_view(feat_in: torch.Tensor, feat_ref: torch.Tensor, y: int, x: int, top_k: int = 5,
               patch_size: int = 3) -> dict:
    """One explorer state.

    feat_in [1, C, H, W], feat_ref [1, C, Hr, Wr]: feature maps (any scale; normalised per pixel here).
    (y, x): top-left of the input patch, 0 <= y <= H-k, 0 <= x <= W-k.
    Returns {"y", "x", "score_map" [Hr-k+1, Wr-k+1] float cosine in [-1, 1], "best" (v, u) top-left of the
    best reference patch, "best_score", "top" list of (v, u, score) for the top_k patches (best first),
    "index" the flat row-major index of the best patch (the convention of rrsr_lib.matching)}.
    """
    k = patch_size
    if feat_in.dim() != 4 or feat_ref.dim() != 4 or feat_in.shape[0] != 1 or feat_ref.shape[0] != 1:
        raise InputError(f"match_view takes one pair of feature maps [1, C, H, W], got {tuple(feat_in.shape)} "
                         f"and {tuple(feat_ref.shape)}")
    h, w = feat_in.shape[2] - k + 1, feat_in.shape[3] - k + 1
    if not (0 <= y < h and 0 <= x < w):
        raise InputError(f"position (y={y}, x={x}) is outside the input's patch grid 0..{h - 1} x 0..{w - 1}")
    xi, xr = normalize_pixels(feat_in), normalize_pixels(feat_ref)
    patch = xi[:, :, y:y + k, x:x + k]                                   # [1, C, k, k]
    # cosine = <patch, ref patch> / ((|patch| + eps)(|ref patch| + eps)): a correlation with the patch as kernel
    corr = F.conv2d(xr, patch)[0, 0]                                     # [hr, wr]
    score = corr / ((patch.norm() + NORM_EPS) * (patch_norms(xr, k)[0] + NORM_EPS))
    flat = score.flatten()
    vals, idx = flat.topk(min(top_k, flat.numel()))
    wr = score.shape[1]
    top = [(int(i) // wr, int(i) % wr, float(v)) for v, i in zip(vals, idx)]
    return {"y": y, "x": x, "score_map": score, "best": top[0][:2], "best_score": top[0][2], "top": top,
            "index": int(idx[0])}


def _box(ax, y, x, size, color, lw=2.0):
    ax.add_patch(Rectangle((x - 0.5, y - 0.5), size, size, fill=False, edgecolor=color, linewidth=lw))


def draw_match_view(view: dict, img_in: np.ndarray, img_ref: np.ndarray, scale: int = 4, patch_size: int = 3,
                    titles=("input (LR-upsampled)", "reference"), fig=None):
    """Draw one state: input with the patch (yellow), reference with the best patch (red) and the other top-k
    candidates (cyan), the score map with the same marks, and both patches enlarged.

    img_in, img_ref: uint8 HxWx3 images whose features were matched; one feature pixel covers ``scale`` px.
    Returns the figure.
    """
    fig = fig or plt.figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 5, gridspec_kw={"width_ratios": [3, 3, 3, 1.3, 1.3]})
    k, s = patch_size, scale
    y, x = view["y"], view["x"]
    v, u = view["best"]
    axes[0].imshow(img_in)
    _box(axes[0], y * s, x * s, k * s, "yellow")
    axes[0].set_title(f"{titles[0]}: patch ({y}, {x})", fontsize=9)
    axes[1].imshow(img_ref)
    for tv, tu, _ in view["top"][1:]:
        _box(axes[1], tv * s, tu * s, k * s, "cyan", 1.0)
    _box(axes[1], v * s, u * s, k * s, "red")
    axes[1].set_title(f"{titles[1]}: best ({v}, {u}), cos {view['best_score']:.3f}", fontsize=9)
    im = axes[2].imshow(view["score_map"].cpu().numpy(), cmap="magma", vmin=-0.2, vmax=1.0)
    axes[2].plot([t[1] for t in view["top"][1:]], [t[0] for t in view["top"][1:]], "c+", ms=8)
    axes[2].plot([u], [v], "rx", ms=10, mew=2)
    axes[2].set_title("cosine with every reference patch", fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.02)
    axes[3].imshow(img_in[y * s:(y + k) * s, x * s:(x + k) * s], interpolation="nearest")
    axes[3].set_title("input patch", fontsize=9)
    axes[4].imshow(img_ref[v * s:(v + k) * s, u * s:(u + k) * s], interpolation="nearest")
    axes[4].set_title("best match", fontsize=9)
    for ax in axes[[0, 1, 3, 4]]:
        ax.axis("off")
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    fig.tight_layout()
    return fig


def default_position(feat_in: torch.Tensor, patch_size: int = 3) -> tuple[int, int]:
    """The default explorer state: the centre of the input's patch grid."""
    return (feat_in.shape[2] - patch_size + 1) // 2, (feat_in.shape[3] - patch_size + 1) // 2


def draw_default_view(feat_in, feat_ref, img_in, img_ref, scale: int = 4, top_k: int = 5):
    """Static figure of the explorer's default state (centre position). Returns (figure, view)."""
    y, x = default_position(feat_in)
    view = match_view(feat_in, feat_ref, y, x, top_k)
    return draw_match_view(view, img_in, img_ref, scale), view


def matching_explorer(features: dict, img_in: np.ndarray, img_ref: np.ndarray, scale: int = 4, top_k: int = 5):
    """ipywidgets explorer. features: name -> (feat_in [1,C,H,W], feat_ref [1,C,Hr,Wr]) for the same image pair
    (e.g. plain VGG and the contrastive student); sliders pick the input patch (y, x), a dropdown the features."""
    import ipywidgets as widgets

    if not features:
        raise InputError("matching_explorer needs at least one feature set")
    first = next(iter(features.values()))[0]
    y0, x0 = default_position(first)
    ys = widgets.IntSlider(value=y0, min=0, max=first.shape[2] - 3, description="y", continuous_update=False)
    xs = widgets.IntSlider(value=x0, min=0, max=first.shape[3] - 3, description="x", continuous_update=False)
    which = widgets.Dropdown(options=list(features), value=list(features)[0], description="features")

    def draw():
        fi, fr = features[which.value]
        draw_match_view(match_view(fi, fr, ys.value, xs.value, top_k), img_in, img_ref, scale)

    return show_explorer([ys, xs, which], draw)


def draw_correspondences(a_in, a_ref, flow: np.ndarray, score: np.ndarray, scale: int = 4, stride: int = 0,
                         dots: bool = False, lw: float = 0.6, alpha: float = 0.7) -> int:
    """Join every ``stride``-th input patch (drawn on axes ``a_in``) to its match (on axes ``a_ref``).

    flow: (h-2, w-2, 2) float, the (dx, dy) in LR pixels from each input 3x3 patch's top-left corner to its
    matched reference patch's (the valid grid of the trace's ``matching["flow"]``); score: (h-2, w-2), the
    match's cosine score, which colours the line (viridis, from its 5th percentile to its maximum).
    scale: image pixels per LR pixel on both axes (4 when they show HR-sized images); stride 0: about 12
    lines a side. dots: also mark both ends. Returns the number of lines drawn.
    """
    if flow.ndim != 3 or flow.shape[-1] != 2 or score.shape != flow.shape[:2]:
        raise InputError(f"draw_correspondences: flow must be (h, w, 2) and score (h, w); got {flow.shape} and "
                         f"{score.shape}: pass trace['matching']['flow'][0] and ['score'][0] as numpy arrays")
    lo, hi = float(np.percentile(score, 5)), float(score.max())
    step = stride or max(1, max(flow.shape[:2]) // 12)
    cmap = plt.get_cmap("viridis")
    fig = a_in.figure
    n = 0
    for y in range(0, flow.shape[0], step):
        for x in range(0, flow.shape[1], step):
            dx, dy = flow[y, x]
            # patch (y, x) covers LR pixels y..y+2: from its centre to the centre of its match, in image pixels
            src = ((x + 1.5) * scale, (y + 1.5) * scale)
            dst = ((x + dx + 1.5) * scale, (y + dy + 1.5) * scale)
            color = cmap((score[y, x] - lo) / max(hi - lo, 1e-6))
            if dots:
                a_in.plot(*src, ".", color=color, ms=3)
                a_ref.plot(*dst, ".", color=color, ms=3)
            fig.add_artist(ConnectionPatch(xyA=src, coordsA=a_in.transData, xyB=dst, coordsB=a_ref.transData,
                                           color=color, lw=lw, alpha=alpha))
            n += 1
    return n
