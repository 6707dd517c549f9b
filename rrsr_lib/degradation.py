"""Degradation: how the RefSR literature makes its low-resolution inputs.

The LR image is the HR image, first cropped to a multiple of the scale, then shrunk by PIL's bicubic
resampling (RRSR.md, "The task"). Matching additionally needs two helpers of the same family:

* ``upsample_lr``: the LR image enlarged back by bicubic x4 (the "LR-upsampled" image whose VGG
  features are matched against the reference);
* ``down_up``: the reference shrunk and enlarged again, so that both sides of the matching have
  the same blur (used by TTSR/C2-Matching-style matching and by the figures).

Arrays here are uint8 HxWx3 (the form images are stored in); :func:`to_tensor` / :func:`to_uint8`
convert to and from float tensors (B,3,H,W) in [0,1], rounding as the metrics expect.

The numpy functions call PIL itself and are the reference. For the network, which must make
LR_up inside the model on batched tensors (any device), :func:`pil_bicubic_resize` and
:func:`pil_bicubic_upsample` re-implement PIL's 8-bit bicubic resampling in torch (same filter,
same fixed-point arithmetic, the installed Pillow's pass order); tests/test_degradation.py checks
that they give exactly PIL's uint8 images (0 grey levels of difference) on the embedded test
images and on odd sizes and ratios.
"""
from __future__ import annotations

import math
import operator
import re
from functools import lru_cache

import numpy as np
import PIL
import torch
from PIL import Image

from .errors import InputError


def _check_uint8_rgb(img: np.ndarray, what: str = "image") -> None:
    if not isinstance(img, np.ndarray):
        raise InputError(f"{what} must be a numpy array (HxWx3 uint8), got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise InputError(f"{what} must be uint8 (values 0-255), got dtype {img.dtype}; "
                         "convert with (x * 255).round().clip(0, 255).astype(np.uint8)")
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"{what} must have shape HxWx3 (RGB), got shape {img.shape}")


def crop_to_multiple(img: np.ndarray, scale: int = 4) -> np.ndarray:
    """Crop the bottom and right edges so that height and width are multiples of ``scale``.

    img: uint8 HxWx3. Returns a view of shape (H - H % scale) x (W - W % scale) x 3.
    """
    _check_uint8_rgb(img)
    h, w = img.shape[:2]
    if h < scale or w < scale:
        raise InputError(f"image of size {w}x{h} is smaller than the scale factor {scale}")
    return img[: h - h % scale, : w - w % scale]


def bicubic_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bicubic resize of a uint8 HxWx3 array to ``size`` = (width, height)."""
    _check_uint8_rgb(img)
    return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))


def bicubic_downsample(img: np.ndarray, scale: int = 4) -> np.ndarray:
    """Make the LR image as the RefSR literature does.

    img: uint8 HxWx3 (the HR image). Returns uint8 (H//scale) x (W//scale) x 3.
    The HR image is first cropped to a multiple of ``scale`` (bottom/right), then shrunk with PIL's
    bicubic filter (antialiased, a=-0.5), exactly like the CUFED5/C2-Matching data preparation.
    """
    if not isinstance(scale, int) or scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale!r}")
    hr = crop_to_multiple(img, scale)
    h, w = hr.shape[:2]
    return bicubic_resize(np.ascontiguousarray(hr), (w // scale, h // scale))


def upsample_lr(lr: np.ndarray, scale: int = 4) -> np.ndarray:
    """LR-upsampled image: PIL bicubic enlargement of uint8 hxwx3 to (h*scale)x(w*scale)x3."""
    _check_uint8_rgb(lr, "LR image")
    h, w = lr.shape[:2]
    return bicubic_resize(lr, (w * scale, h * scale))


def down_up(ref: np.ndarray, scale: int = 4) -> np.ndarray:
    """Reference blurred like the LR input: bicubic down by ``scale`` then up again (uint8, size of the cropped ref)."""
    return upsample_lr(bicubic_downsample(ref, scale), scale)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 array -> float32 tensor (1,3,H,W) in [0,1]."""
    _check_uint8_rgb(img)
    # a copy: arrays made from PIL images are read-only, and torch warns about those
    return torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float tensor (3,H,W) or (1,3,H,W), any range -> uint8 HxWx3.

    RRSR.md: "SR output: clamp to [0, 1], x255, round to uint8 before any metric".
    """
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise InputError(f"to_uint8 takes one image, got a batch of {x.shape[0]}; index it first")
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise InputError(f"to_uint8 expects a tensor (3,H,W) or (1,3,H,W), got shape {tuple(x.shape)}")
    return x.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()



# ---------------------------------------------------------------------------------------------------
# PIL's bicubic resampling in torch (exact port of the 8-bit path of Pillow's libImaging/Resample.c)
# ---------------------------------------------------------------------------------------------------
#
# PIL resizes separably: one 1-D resampling of every row (width), rounded to uint8, and one of every
# column (height), rounded to uint8 (width first, except in the cases of _pil_vertical_first; an axis
# whose size does not change is left alone). A 1-D resampling from n to m samples is, for each output sample,
# a weighted sum of at most `ksize` consecutive input samples. The weights are computed in double
# precision, then turned into 22-bit fixed-point integers, and the sums are done in integers. We build
# the same two tables (where each output sample reads, and with which integer weights) with numpy
# in float64, evaluating every expression in the order PIL's C code does so that the doubles, and
# therefore the rounded integer weights, are bit-identical; the sums themselves are exact integer
# arithmetic in torch (int64), so their order does not matter.

_PIL_PRECISION_BITS = 32 - 8 - 2  # 22 fractional bits: 8 bits of pixel value and 2 of headroom in an int32
_PIL_CUBIC_A = -0.5                # PIL's bicubic is Keys' cubic convolution with a = -0.5
_PIL_CUBIC_SUPPORT = 2.0           # the kernel is zero for |t| >= 2 (at scale 1)


def _pil_cubic(t: np.ndarray) -> np.ndarray:
    """Keys' cubic kernel with a = -0.5 evaluated exactly as PIL does (float64 array -> float64 array)."""
    a = _PIL_CUBIC_A
    t = np.abs(t)
    # |t| < 1:      ((a + 2) |t| - (a + 3)) |t|^2 + 1, multiplied out left to right like PIL
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    # 1 <= |t| < 2: (((|t| - 5) |t| + 8) |t| - 4) a
    far = (((t - 5.0) * t + 8.0) * t - 4.0) * a
    return np.where(t < 1.0, near, np.where(t < 2.0, far, 0.0))


@lru_cache(maxsize=256)
def _pil_axis_tables_np(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's resampling tables for one axis: (index, weight), both int64 arrays [out_size, ksize].

    Output sample i is sum_j weight[i, j] * input[index[i, j]] / 2^22 (before rounding). Unused
    entries (beyond the input edge) have weight 0 and a valid index (clamped to the last sample).
    """
    # scale = in / out (PIL: (double)(in1 - in0) / out with the box (0, in) in float, exact here);
    # the kernel is stretched by max(scale, 1) when shrinking (antialiasing), not when enlarging
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = _PIL_CUBIC_SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    inv_filterscale = 1.0 / filterscale  # PIL multiplies by 1 / filterscale (not a division per tap)

    # center_i = (i + 0.5) * scale: where output sample i falls in input coordinates (0.0 + ..., as PIL)
    center = 0.0 + (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    # first input sample: int(center - support + 0.5) (C truncation), at least 0;
    # end (exclusive):    int(center + support + 0.5), at most in_size; count = end - first
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)
    end = np.minimum((center + support + 0.5).astype(np.int64), in_size)
    count = end - first

    taps = np.arange(ksize, dtype=np.int64)
    pos = first[:, None] + taps[None, :]                      # [out, ksize] input sample of each tap
    used = taps[None, :] < count[:, None]
    # w_ij = cubic((first_i + j - center_i + 0.5) / filterscale) for the used taps, 0 for the others
    w = np.where(used, _pil_cubic((pos.astype(np.float64) - center[:, None] + 0.5) * inv_filterscale), 0.0)

    # the normaliser sum_j w_ij, accumulated tap after tap in PIL's order (numpy's pairwise sum could
    # differ in the last bit); the loop is over the <= ksize taps, vectorised over the output samples
    total = np.zeros(out_size, dtype=np.float64)
    for j in range(ksize):
        total = total + w[:, j]
    # w_ij / sum_j w_ij, left as is where the sum is 0 (PIL does the same)
    w = np.divide(w, total[:, None], out=w.copy(), where=(total != 0.0)[:, None])

    # fixed point: k_ij = int(w_ij * 2^22 + 0.5) for w >= 0, int(w_ij * 2^22 - 0.5) for w < 0
    # (round half away from zero; C's int() truncates toward zero, as np.trunc does)
    scaled = w * float(1 << _PIL_PRECISION_BITS)
    weight = np.where(w < 0.0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int64)
    index = np.minimum(pos, in_size - 1)
    index.setflags(write=False)
    weight.setflags(write=False)
    return index, weight


@lru_cache(maxsize=256)
def _pil_axis_tables(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_pil_axis_tables_np` as int64 tensors on ``device`` (cached per (in, out, device))."""
    index, weight = _pil_axis_tables_np(in_size, out_size)
    return torch.tensor(index, device=device), torch.tensor(weight, device=device)


def _pil_resample_axis(v: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    """One PIL pass along ``dim`` (-1: width, -2: height) of an int64 tensor of values 0..255.

    Returns int64 values 0..255 (PIL's uint8 intermediate image), the size of ``dim`` set to out_size.
    """
    index, weight = _pil_axis_tables(v.shape[dim], out_size, v.device)
    ksize = index.shape[1]
    # gather the ksize input samples of every output sample: [..., out * ksize, ...] -> [..., out, ksize, ...]
    taps = v.index_select(dim, index.reshape(-1)).unflatten(dim, (out_size, ksize))
    if dim == -1:
        acc = taps.mul_(weight).sum(dim=-1)
    else:
        acc = taps.mul_(weight[:, :, None]).sum(dim=-2)
    # out = clip((2^21 + sum_j k_ij * v_j) >> 22, 0, 255): PIL's rounding (add half, arithmetic shift)
    # and its clip to 8 bits
    acc = acc.add_(1 << (_PIL_PRECISION_BITS - 1)).bitwise_right_shift_(_PIL_PRECISION_BITS)
    return acc.clamp_(0, 255)


def _version_tuple(version: str) -> tuple[int, int]:
    """"13.0.0" -> (13, 0); "12.3.0.dev0" -> (12, 3); (0, 0) if unreadable."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


_PIL_VERSION = _version_tuple(PIL.__version__)


def _pil_vertical_first(in_h: int, in_w: int, out_h: int, out_w: int, version: tuple[int, int] = _PIL_VERSION) -> bool:
    """Whether the installed Pillow resizes the height before the width (the order changes the rounding).

    Pillow up to 12.1 always does the width first. Pillow 12.2-12.3 (Python side of Image.resize)
    does the height first for very tall images: in_h > 100 * in_w and out_h < in_h. Pillow 13
    (libImaging) does the height first when the height loses more than twice as many pixels as
    the width: out_h < in_h and in_h - out_h > 2 * (in_w - out_w); measured equal to Pillow 13.0.0
    on ~1400 random sizes. For RRSR's x4 enlargement (both sizes grow) every version goes width first.
    """
    if version >= (13, 0):
        return out_h < in_h and (in_h - out_h) > 2 * (in_w - out_w)
    if version >= (12, 2):
        return in_h > 100 * in_w and out_h < in_h
    return False


def _check_size_pair(size, what: str = "size") -> tuple[int, int]:
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 2:
        raise InputError(f"{what} must be a pair (height, width) of positive integers, got {size!r}")
    out = []
    for v in size:
        if isinstance(v, bool):
            raise InputError(f"{what} must be a pair (height, width) of positive integers, got {size!r}")
        try:
            n = operator.index(v)
        except TypeError:
            raise InputError(f"{what} must be a pair (height, width) of positive integers, got {size!r}") from None
        if n < 1:
            raise InputError(f"{what} must be at least 1x1 (height, width), got {tuple(size)!r}")
        out.append(n)
    return out[0], out[1]


def pil_bicubic_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL's bicubic resize (``Image.resize((w, h), Image.BICUBIC)`` on an 8-bit image), in torch.

    x: uint8 tensor [B, C, H, W] or [C, H, W], values 0..255, on any device; every channel is
    resized independently (for C = 3 this is PIL's RGB result, for C = 1 its "L" result).
    size: the output size as **(height, width)**, torch's order, *not* PIL's (width, height).
    Returns a uint8 tensor [B, C, height, width] (or [C, height, width]) on x's device, equal to
    PIL's image pixel for pixel: same filter (a = -0.5, antialiased when shrinking), same 22-bit
    fixed-point weights, one pass per axis rounded to uint8 in between, an unchanged axis skipped,
    the passes in the order the installed Pillow uses (width first, except, from Pillow 13, when the
    height shrinks much more than the width; see :func:`_pil_vertical_first`).
    No Python loop over pixels or images; the per-axis tables are cached per (in, out, device).
    Not differentiable (integer arithmetic).
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"pil_bicubic_resize takes a torch tensor (uint8 [B,C,H,W] or [C,H,W]), "
                         f"got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise InputError(f"pil_bicubic_resize takes a uint8 tensor (values 0-255), got dtype {x.dtype}; for "
                         "float images in [0, 1] use pil_bicubic_upsample or (x * 255).round().clamp(0, 255).byte()")
    if x.dim() not in (3, 4):
        raise InputError(f"pil_bicubic_resize takes a tensor [B,C,H,W] or [C,H,W], got shape {tuple(x.shape)} "
                         f"({x.dim()} dims)")
    if x.shape[-2] < 1 or x.shape[-1] < 1:
        raise InputError(f"pil_bicubic_resize cannot resize an empty image (shape {tuple(x.shape)})")
    out_h, out_w = _check_size_pair(size)
    in_h, in_w = x.shape[-2], x.shape[-1]
    if (out_h, out_w) == (in_h, in_w):
        return x.clone()
    v = x.long()
    # one pass per axis whose size changes (PIL skips the others), in the installed Pillow's order
    passes = [(-1, out_w, in_w), (-2, out_h, in_h)]
    if _pil_vertical_first(in_h, in_w, out_h, out_w):
        passes.reverse()
    for dim, out_size, in_size in passes:
        if out_size != in_size:
            v = _pil_resample_axis(v, dim, out_size)
    return v.to(torch.uint8)


def pil_bicubic_upsample(lr: torch.Tensor, scale: int = 4) -> torch.Tensor:
    """LR-upsampled image as the authors make it (PIL bicubic x``scale`` of the uint8 LR), in torch.

    lr: float tensor [B, 3, h, w] in [0, 1] (any channel count works; channels are independent),
    normally values k/255 as our LR images are. It is first quantised as the authors' uint8 LR:
    round(lr * 255) clamped to 0..255 (computed in float32, or float64 for float64 input).
    scale: positive integer. Returns a float tensor [B, 3, h*scale, w*scale] in [0, 1] in lr's
    dtype and on lr's device, equal to PIL's bicubic enlargement of that uint8 image divided by 255
    (``to_tensor(upsample_lr(to_uint8(lr), scale))`` for one float32 image). No gradient flows
    through it (it is a fixed, quantised preprocessing, like the authors' data loader). NaN is not
    checked (that would cost a device sync per call); it becomes an unspecified grey level.
    """
    if not isinstance(lr, torch.Tensor):
        raise InputError(f"pil_bicubic_upsample takes a torch tensor (float [B,3,h,w] in [0,1]), "
                         f"got {type(lr).__name__}")
    if not lr.dtype.is_floating_point:
        raise InputError(f"pil_bicubic_upsample takes a float tensor in [0, 1], got dtype {lr.dtype}; "
                         "for uint8 images use pil_bicubic_resize")
    if lr.dim() != 4:
        raise InputError(f"pil_bicubic_upsample takes a tensor [B,3,h,w], got shape {tuple(lr.shape)} "
                         f"({lr.dim()} dims)")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale!r}")
    h, w = lr.shape[-2], lr.shape[-1]
    if h < 1 or w < 1:
        raise InputError(f"pil_bicubic_upsample cannot enlarge an empty image (shape {tuple(lr.shape)})")
    work = torch.float64 if lr.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        # the authors' uint8 LR: q = clip(round(255 x), 0, 255)
        q = lr.detach().to(work).mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
        up = pil_bicubic_resize(q, (h * scale, w * scale))
        # back to [0, 1]: LR_up / 255, as to_tensor does
        return up.to(work).div_(255.0).to(lr.dtype)
