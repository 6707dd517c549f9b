"""Metrics: PSNR and SSIM on the Y channel, in the convention of the RefSR literature.

Every number in this project names its protocol, because papers differ (RRSR.md, "Evaluation
protocols"): C2-Matching/RRSR crop 4 border pixels, TTSR/MASA crop none. The convention here:

* inputs are uint8 HxWx3 (SR rounded to uint8 first, see ``degradation.to_uint8``);
* Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 with R, G, B in [0, 1] (MATLAB's rgb2ycbcr),
  kept as float, range [16, 235];
* ``crop_border`` pixels are removed on every side before measuring;
* PSNR with peak 255; SSIM with a Gaussian window 11x11, sigma 1.5, over the valid region only,
  K1 = 0.01, K2 = 0.03, L = 255.

SSIM is computed by scikit-image's ``structural_similarity`` with the options that give exactly this
definition; the tests check both functions against a direct implementation of the formulas.
"""
from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from .errors import InputError


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> float64 HxW luma Y in [16, 235] (MATLAB rgb2ycbcr, no rounding)."""
    x = img.astype(np.float64) / 255.0
    # Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 ... in MATLAB's form on [0,1] input:
    return 16.0 + x @ np.array([65.481, 128.553, 24.966])


def _prepare(sr: np.ndarray, hr: np.ndarray, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    for name, a in (("sr", sr), ("hr", hr)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise InputError(f"{name} must be a uint8 HxWx3 array, got "
                             f"{getattr(a, 'dtype', type(a).__name__)} of shape {getattr(a, 'shape', None)}; "
                             "round SR to uint8 first with rrsr_lib.degradation.to_uint8")
    if sr.shape != hr.shape:
        raise InputError(f"sr and hr differ in shape: {sr.shape} vs {hr.shape}; crop SR to the HR size first")
    if crop_border < 0 or 2 * crop_border >= min(hr.shape[:2]):
        raise InputError(f"crop_border={crop_border} does not fit an image of size {hr.shape[1]}x{hr.shape[0]}")
    a = rgb_to_y(sr) if y_channel else sr.astype(np.float64)
    b = rgb_to_y(hr) if y_channel else hr.astype(np.float64)
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    return a, b


def psnr(sr: np.ndarray, hr: np.ndarray, crop_border: int = 4, y_channel: bool = True) -> float:
    """PSNR in dB between two uint8 HxWx3 images: 10 log10(255^2 / MSE), on Y (or all RGB channels).

    Identical images give ``inf``.
    """
    a, b = _prepare(sr, hr, crop_border, y_channel)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0 ** 2 / mse))


def ssim(sr: np.ndarray, hr: np.ndarray, crop_border: int = 4, y_channel: bool = True) -> float:
    """SSIM between two uint8 HxWx3 images, Gaussian 11x11 window (sigma 1.5), valid region, on Y.

    On RGB (``y_channel=False``) it is the mean of the per-channel SSIMs.
    """
    a, b = _prepare(sr, hr, crop_border, y_channel)
    if min(a.shape[:2]) < 11:
        raise InputError(f"SSIM needs at least 11x11 pixels after cropping {crop_border} px, got {a.shape[1]}x{a.shape[0]}")
    # gaussian_weights + sigma 1.5 gives the 11x11 window (truncate 3.5 -> radius 5);
    # use_sample_covariance=False: population (co)variances as in Wang et al.;
    # data_range=255 sets C1 = (0.01*255)^2 and C2 = (0.03*255)^2.
    kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255.0,
                  full=True)
    if a.ndim == 2:
        return _valid_mean(structural_similarity(a, b, **kwargs)[1])
    return float(np.mean([_valid_mean(structural_similarity(a[..., c], b[..., c], **kwargs)[1])
                          for c in range(a.shape[2])]))


def _valid_mean(ssim_map: np.ndarray) -> float:
    # scikit-image pads by reflection to return a full-size map; the literature's SSIM averages only
    # where the 11x11 window fits inside the image ("valid"), so drop the 5-pixel rim before averaging.
    return float(ssim_map[5:-5, 5:-5].mean())
