"""Degradation: how the RefSR literature makes its low-resolution inputs.

The LR image is the HR image, first cropped to a multiple of the scale, then shrunk by PIL's bicubic
resampling (RRSR.md, "The task"). Matching additionally needs two helpers of the same family:

* ``upsample_lr``: the LR image enlarged back by bicubic x4 (the "LR-upsampled" image whose VGG
  features are matched against the reference);
* ``down_up``: the reference shrunk and enlarged again, so that both sides of the matching have
  the same blur (used by TTSR/C2-Matching-style matching and by the figures).

Arrays here are uint8 HxWx3 (the form images are stored in); :func:`to_tensor` / :func:`to_uint8`
convert to and from float tensors (B,3,H,W) in [0,1], rounding as the metrics expect.
"""
from __future__ import annotations

import numpy as np
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
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


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
