"""psnr/ssim against a direct implementation of the formulas (RRSR.md, 'Evaluation protocols')."""
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from skimage import data as skdata

from rrsr_lib.degradation import bicubic_downsample, upsample_lr
from rrsr_lib.errors import InputError
from rrsr_lib.metrics import psnr, rgb_to_y, ssim


def direct_y(img):
    r, g, b = (img[..., c].astype(np.float64) / 255.0 for c in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b)


def direct_psnr(a, b):
    return 10 * np.log10(255.0 ** 2 / np.mean((a - b) ** 2))


def direct_ssim(a, b):
    # Wang et al. 2004: Gaussian window 11x11, sigma 1.5, valid positions only, C1=(0.01 L)^2, C2=(0.03 L)^2.
    ax = np.arange(11) - 5
    g = np.exp(-(ax ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g)
    w /= w.sum()

    def filt(x):
        return np.einsum("ijkl,kl->ij", sliding_window_view(x, (11, 11)), w)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a ** 2
    var_b = filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return m.mean()


def real_pairs():
    """(SR-like, HR) pairs from real photos: bicubic x4 down-up, which is the bicubic baseline's output."""
    pairs = []
    for img in (skdata.astronaut()[:160, :200], skdata.coffee()[:120, :244], skdata.chelsea()[:100, :136]):
        hr = np.ascontiguousarray(img)
        pairs.append((upsample_lr(bicubic_downsample(hr)), hr))
    return pairs


@pytest.mark.parametrize("crop", [0, 4])
@pytest.mark.parametrize("metric, direct", [(psnr, direct_psnr), (ssim, direct_ssim)], ids=["psnr", "ssim"])
def test_psnr_and_ssim_equal_the_direct_formulas_on_the_y_channel(metric, direct, crop):
    for sr, hr in real_pairs():
        a, b = direct_y(sr), direct_y(hr)
        if crop:
            a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
        assert abs(metric(sr, hr, crop_border=crop) - direct(a, b)) < 1e-6


def test_rgb_ssim_and_psnr_use_all_channels():
    sr, hr = real_pairs()[0]
    direct = np.mean([direct_ssim(sr[..., c].astype(float), hr[..., c].astype(float)) for c in range(3)])
    assert abs(ssim(sr, hr, crop_border=0, y_channel=False) - direct) < 1e-6
    assert abs(psnr(sr, hr, 0, False) - direct_psnr(sr.astype(float), hr.astype(float))) < 1e-6


def test_y_channel_range_and_values():
    y = rgb_to_y(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8))
    np.testing.assert_allclose(y, [[16.0, 235.0]], atol=1e-9)


def test_crop_border_changes_the_number():
    sr, hr = real_pairs()[0]
    assert psnr(sr, hr, 0) != psnr(sr, hr, 4)


def test_identical_images():
    hr = real_pairs()[0][1]
    assert psnr(hr, hr) == float("inf")
    assert ssim(hr, hr) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("sr, hr, message", [
    (np.zeros((20, 20, 3), np.float32), np.zeros((20, 20, 3), np.uint8), "uint8"),
    (np.zeros((20, 20, 3), np.uint8), np.zeros((24, 20, 3), np.uint8), "differ in shape"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), "crop_border"),
])
def test_metric_input_errors(sr, hr, message):
    with pytest.raises(InputError, match=message):
        psnr(sr, hr)
