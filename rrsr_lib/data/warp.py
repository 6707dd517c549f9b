"""Random homographies by corner jitter, and warping an image with a homography.

Three places in RRSR move an image by a random projective transform:

* C2-Matching's contrastive teacher compares an HR image with itself warped by a random homography
  (each corner moved by up to 10 px) and learns that corresponding pixels should match;
* the reciprocal-learning sample carries Ref_w, the 160x160 reference warped by a random homography
  whose corners move 5-19 px with a random sign (bicubic interpolation);
* our CUFED-like training pairs (:mod:`rrsr_lib.data.cufed_like`) cut the reference out of a photo
  along a jittered quadrilateral.

Convention used everywhere here (pixel centres at integer coordinates, x = column, y = row):
a homography ``H`` (3x3, float64) maps a pixel ``(x, y, 1)`` of the OUTPUT image to the position
``H @ (x, y, 1)`` (after division by the third coordinate) in the SOURCE image where its value is
read: ``out(x, y) = src(H(x, y))``. "Corner jitter" means: the four output corners (0, 0),
(W-1, 0), (W-1, H-1), (0, H-1) read the source at the corners moved by the random shifts.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError


def homography_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 homography H (float64, H[2, 2] = 1) with ``H @ (src_i, 1) ~ (dst_i, 1)`` for 4 point pairs.

    src, dst: arrays (4, 2) of (x, y) pixel positions. Solved exactly as the 8x8 linear system of
    the direct linear transform: for each pair, x' (h31 x + h32 y + 1) = h11 x + h12 y + h13 and
    y' (h31 x + h32 y + 1) = h21 x + h22 y + h23.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != (4, 2) or dst.shape != (4, 2):
        raise InputError(f"homography_from_points needs two (4, 2) arrays of points, got {src.shape} and {dst.shape}")
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(src, dst)):
        a[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * i], b[2 * i + 1] = u, v
    try:
        h = np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        raise InputError("the four points are degenerate (three of them on one line): no homography") from None
    return np.append(h, 1.0).reshape(3, 3)


def apply_homography(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map (N, 2) points (x, y) through the 3x3 homography ``h``; returns (N, 2) float64."""
    pts = np.asarray(pts, dtype=np.float64)
    q = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ np.asarray(h, dtype=np.float64).T
    return q[:, :2] / q[:, 2:3]


def warp_homography(img: torch.Tensor, h: np.ndarray | torch.Tensor, out_size: tuple[int, int],
                    mode: str = "bicubic", padding_mode: str = "zeros") -> torch.Tensor:
    """Resample ``img`` so that ``out(x, y) = img(H (x, y))`` (see the module's convention).

    img: float tensor (C, H, W) or (B, C, H, W), any device. h: (3, 3), or (B, 3, 3) for one per
    batch item, mapping output pixels to source pixels. out_size: (height, width) of the output.
    mode: "bicubic" (as the authors' cv2 warps), "bilinear" or "nearest"; padding_mode: what
    positions outside the source read: "zeros" (black, like cv2's default constant border),
    "border" or "reflection". Returns a float tensor (C, h, w) or (B, C, h, w), not clamped (bicubic
    can overshoot the input range slightly).
    """
    if not torch.is_tensor(img) or img.dim() not in (3, 4) or not img.is_floating_point():
        raise InputError(f"warp_homography needs a float tensor (C,H,W) or (B,C,H,W), got "
                         f"{type(img).__name__} {getattr(img, 'shape', '')} {getattr(img, 'dtype', '')}")
    single = img.dim() == 3
    x = img.unsqueeze(0) if single else img
    b, _, hin, win = x.shape
    ht = torch.as_tensor(np.asarray(h) if not torch.is_tensor(h) else h, dtype=torch.float64)
    if ht.shape == (3, 3):
        ht = ht.expand(b, 3, 3)
    if ht.shape != (b, 3, 3):
        raise InputError(f"homography must be (3, 3) or ({b}, 3, 3) for a batch of {b}, got {tuple(ht.shape)}")
    oh, ow = int(out_size[0]), int(out_size[1])
    ys, xs = torch.meshgrid(torch.arange(oh, dtype=torch.float64), torch.arange(ow, dtype=torch.float64),
                            indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(-1, 3)     # (oh*ow, 3)
    q = torch.einsum("bij,nj->bni", ht, pts)                                    # (B, oh*ow, 3)
    sx, sy = q[..., 0] / q[..., 2], q[..., 1] / q[..., 2]
    # grid_sample with align_corners=False: pixel centre x sits at normalised (2x + 1) / W - 1.
    grid = torch.stack([(2 * sx + 1) / win - 1, (2 * sy + 1) / hin - 1], dim=-1).reshape(b, oh, ow, 2)
    out = F.grid_sample(x, grid.to(device=x.device, dtype=x.dtype), mode=mode, padding_mode=padding_mode,
                        align_corners=False)
    return out[0] if single else out


def random_corner_shifts(rng: np.random.Generator, max_shift_px: float, min_shift_px: float = 0.0,
                         n: int = 1) -> np.ndarray:
    """Random corner displacements, shape (n, 4, 2): each x and y moves by U[min, max] px with a random sign."""
    if not 0 <= min_shift_px <= max_shift_px:
        raise InputError(f"need 0 <= min_shift_px <= max_shift_px, got {min_shift_px} and {max_shift_px}")
    mag = rng.uniform(min_shift_px, max_shift_px, size=(n, 4, 2))
    sign = np.where(rng.random(size=(n, 4, 2)) < 0.5, -1.0, 1.0)
    return mag * sign


def corner_jitter_homography(height: int, width: int, shifts: np.ndarray) -> np.ndarray:
    """Homography (3, 3) taking the corners of a height x width image to the same corners plus ``shifts`` (4, 2).

    Corner order: top-left, top-right, bottom-right, bottom-left, as (x, y).
    """
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=np.float64)
    return homography_from_points(corners, corners + np.asarray(shifts, dtype=np.float64))


def random_homography_warp(img, max_shift_px: float, rng: np.random.Generator, min_shift_px: float = 0.0,
                           mode: str = "bicubic", padding_mode: str = "zeros"):
    """Warp an image by a random corner-jitter homography; return ``(warped, H)``.

    img: float tensor (C, H, W) in [0, 1], a batch (B, C, H, W) (one homography per item), or a uint8
    numpy array HxWx3. Each of the four corners moves in x and in y by a distance drawn from
    U[min_shift_px, max_shift_px] with a random sign:

    * C2-Matching's teacher: ``max_shift_px=10`` (jitter up to 10 px);
    * RRSR's reciprocal Ref_w: ``min_shift_px=5, max_shift_px=19`` (the authors draw 5-19 px with a
      random sign), bicubic.

    The warped image has the input's size and type (tensor outputs are clamped to [0, 1]; uint8 is
    rounded). H (float64 (3, 3), or (B, 3, 3)) maps a warped-image pixel (x, y, 1) to the source
    pixel it was read from; positions outside the source read ``padding_mode`` (zeros by default).
    Deterministic for a given ``rng`` state.
    """
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3:
            raise InputError(f"random_homography_warp takes a uint8 HxWxC array or a float tensor, got "
                             f"{img.dtype} {img.shape}")
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).double() / 255.0
        out, h = random_homography_warp(t, max_shift_px, rng, min_shift_px, mode, padding_mode)
        return (out.permute(1, 2, 0).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()), h
    if not torch.is_tensor(img) or img.dim() not in (3, 4):
        raise InputError(f"random_homography_warp takes a tensor (C,H,W) or (B,C,H,W), got {type(img).__name__}")
    hgt, wid = img.shape[-2:]
    n = 1 if img.dim() == 3 else img.shape[0]
    shifts = random_corner_shifts(rng, max_shift_px, min_shift_px, n)
    hs = np.stack([corner_jitter_homography(hgt, wid, s) for s in shifts])
    out = warp_homography(img, hs[0] if img.dim() == 3 else hs, (hgt, wid), mode, padding_mode).clamp(0, 1)
    return out, (hs[0] if img.dim() == 3 else hs)
