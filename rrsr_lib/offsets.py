"""From a match index to the offsets that seed RRSR's deformable kernels.

Idea (RRSR, following C2-Matching): matching gives, for every 3x3 input patch, the flat index of
its best reference patch. The index becomes a *flow* (matched top-left minus own top-left), and the
flow becomes the starting offsets ("pre-offsets") of the 3x3 modulated deformable convolutions
that align the reference texture at the x1, x2 and x4 scales. Each of the 9 kernel taps gets its own
shifted copy of the flow: tap (i, j) takes the flow of the patch that covers the output position at
that tap. The network then only learns a small residual around these offsets.

Shapes used below (the authors' conventions, ../shared/paper/RRSR.md):
    index        [B, h, w]            int64, row-major over the reference's valid patch grid
    flow         [B, H, W, 2]         float, last axis (x, y), H = h + 2, W = w + 2 (zero-padded)
    pre-offsets  [B, 9, H*s, W*s, 2]  float, per tap (i, j) row-major, last axis (x, y)
    DCN offsets  [B, 2*9*G, H*s, W*s] float, per deformable group, per tap, (dy, dx) (torchvision)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InputError

__all__ = ["flow_from_index", "shift_field", "pre_offsets", "pre_offsets_pyramid", "to_deform_offsets"]


def flow_from_index(index: torch.Tensor, ref_grid_width: int | None = None, pad: int = 2) -> torch.Tensor:
    """Turn a match index into a flow field (matched position minus own position), in (x, y).

    index: [B, h, w] (or [h, w]) integer tensor; entry k means "reference patch k", counted row-major
        over the reference's patch grid, whose width is ``ref_grid_width`` (default: w, the authors'
        case of input and reference of the same size).
    pad: rows/columns of zeros appended at the bottom and right. 2 for ``padding="valid"`` matches
        ((H-2)x(W-2) patches of an HxW map, so the flow gets back to HxW); 0 for ``padding="same"``.
    Returns: [B, h + pad, w + pad, 2] float32, last axis (x, y) in feature pixels, on index's device.
    """
    if index.dim() == 2:
        index = index.unsqueeze(0)
    if index.dim() != 3 or index.dtype.is_floating_point or index.dtype == torch.bool:
        raise InputError(f"index must be an integer tensor of shape [B, h, w], got {tuple(index.shape)} {index.dtype}")
    if pad < 0:
        raise InputError(f"pad must be >= 0 (2 for valid-padding matches, 0 for same), got {pad}")
    _, h, w = index.shape
    wr = w if ref_grid_width is None else int(ref_grid_width)
    if wr <= 0:
        raise InputError(f"ref_grid_width must be positive, got {ref_grid_width}")
    index = index.long()
    # (x, y) = (idx mod w, idx div w): row-major position of the matched top-left corner
    match_x = index % wr
    match_y = torch.div(index, wr, rounding_mode="floor")
    own_y, own_x = torch.meshgrid(torch.arange(h, device=index.device), torch.arange(w, device=index.device), indexing="ij")
    # flow = matched top-left - own top-left
    flow = torch.stack((match_x - own_x, match_y - own_y), dim=-1).float()
    # the authors zero-pad the (H-2)x(W-2) flow by 2 rows/columns at the bottom and right
    return F.pad(flow, (0, 0, 0, pad, 0, pad))


def shift_field(field: torch.Tensor, down: int, right: int) -> torch.Tensor:
    """Shift a field [B, H, W, K] down by ``down`` rows and right by ``right`` columns, zero fill.

    out[:, y, x] = field[:, y - down, x - right] where that exists, else 0 (down, right >= 0).
    """
    if down < 0 or right < 0:
        raise InputError(f"shift_field shifts down/right only (down, right >= 0), got ({down}, {right})")
    _, h, w, _ = field.shape
    out = torch.zeros_like(field)
    if down < h and right < w:
        out[:, down:, right:] = field[:, : h - down, : w - right]
    return out


def pre_offsets(flow: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """Per-tap pre-offsets of a 3x3 deformable kernel at ``scale`` x the flow's resolution.

    flow: [B, H, W, 2] float, (x, y), at the matching (LR) resolution, from :func:`flow_from_index`.
    scale: 1, 2 or 4 (any positive integer works).
    Returns: [B, 9, H*scale, W*scale, 2] float, (x, y); entry [:, 3*i + j] is the pre-offset of tap (i, j).
    """
    if flow.dim() != 4 or flow.shape[-1] != 2:
        raise InputError(f"flow must have shape [B, H, W, 2] with (x, y) last, got {tuple(flow.shape)}")
    if int(scale) != scale or scale < 1:
        raise InputError(f"scale must be a positive integer (1, 2 or 4), got {scale}")
    s = int(scale)
    if s > 1:
        # nearest upsampling (each value repeated s x s) and multiplication by s: the flow in pixels of the finer grid
        flow = F.interpolate(flow.permute(0, 3, 1, 2), scale_factor=s, mode="nearest").permute(0, 2, 3, 1) * s
    # tap (i, j) (row-major) takes the flow shifted down by i*s and right by j*s
    taps = [shift_field(flow, i * s, j * s) for i in range(3) for j in range(3)]
    return torch.stack(taps, dim=1)


def pre_offsets_pyramid(flow: torch.Tensor, scales=(1, 2, 4)) -> dict[int, torch.Tensor]:
    """:func:`pre_offsets` at each scale: {s: [B, 9, H*s, W*s, 2]} (RRSR uses x1, x2 and x4)."""
    return {int(s): pre_offsets(flow, s) for s in scales}


def to_deform_offsets(pre: torch.Tensor, groups: int = 8) -> torch.Tensor:
    """Lay out per-tap pre-offsets as ``torchvision.ops.deform_conv2d`` offsets, repeated per group.

    pre: [B, 9, H, W, 2] with (x, y) last (from :func:`pre_offsets`).
    groups: deformable groups (RRSR: 8); every group gets the same 9 pre-offsets.
    Returns: [B, 2*9*groups, H, W]; channel 2*(9*g + k) is dy and 2*(9*g + k) + 1 is dx of tap k in group g
    (torchvision's and mmcv's layout). Add it to the learned residual offsets.
    """
    if pre.dim() != 5 or pre.shape[1] != 9 or pre.shape[-1] != 2:
        raise InputError(f"pre-offsets must have shape [B, 9, H, W, 2], got {tuple(pre.shape)}")
    if groups < 1:
        raise InputError(f"groups must be >= 1, got {groups}")
    b, k, h, w, _ = pre.shape
    # (x, y) -> (dy, dx) per tap, then the 9 taps repeated for each group: [B, G, 9, 2, H, W]
    yx = pre.flip(-1).permute(0, 1, 4, 2, 3)
    return yx.unsqueeze(1).expand(b, groups, k, 2, h, w).reshape(b, groups * k * 2, h, w)
