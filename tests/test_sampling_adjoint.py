"""Tests of rrsr_lib.fast.sampling_adjoint: the numba input gradient of bilinear sampling equals ATen's.

ATen's ``grid_sampler_2d_backward`` is the reference: same weights (bit for bit where only one sample
touches a pixel), same zero padding at the borders, sums equal up to the order of float additions.
"""
from __future__ import annotations

import logging
import sys

import pytest
import torch

from rrsr_lib.alignment import deform_conv_sampling
from rrsr_lib.fast import sampling_adjoint
from rrsr_lib.fast.sampling_adjoint import bilinear_input_grad

pytestmark = pytest.mark.skipif(not sampling_adjoint.available(), reason="numba is not installed")


def _aten(grad_samples, x, grid):
    return torch.ops.aten.grid_sampler_2d_backward(grad_samples, x, grid, 0, 0, True, [True, False])[0]


def _positions(n, h_out, w_out, height, width, dtype, gen):
    """Pixel positions that cover every case: inside, on integers, on the last row/column, just outside,
    far outside. Returned as grid_sample coordinates [n, h_out, w_out, 2] in [-1, 1] (align_corners=True)."""
    px = torch.rand(n, h_out, w_out, generator=gen, dtype=dtype) * (width + 3) - 2
    py = torch.rand(n, h_out, w_out, generator=gen, dtype=dtype) * (height + 3) - 2
    px[:, 0] = px[:, 0].round()                  # integer positions: the kink of bilinear interpolation
    py[:, 1] = py[:, 1].round()
    px[:, 2, :3] = torch.tensor([-1.0, 0.0, width - 1.0], dtype=dtype)     # border corners
    py[:, 2, 3:6] = torch.tensor([-0.5, height - 1.0, height - 0.5], dtype=dtype)
    px[:, 3, :2] = torch.tensor([-1e6, 1e6], dtype=dtype)                 # far outside: contribute nothing
    py[:, 3, 2:4] = torch.tensor([-1e30, 1e30], dtype=dtype)
    return torch.stack((px * (2 / (width - 1)) - 1, py * (2 / (height - 1)) - 1), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(17, 17), (12, 9), (2, 3)])
@pytest.mark.parametrize("c", [5, 8, 13])   # channels one at a time, in blocks of 8, and both
def test_input_grad_equals_aten(dtype, size, c):
    gen = torch.Generator().manual_seed(1)
    height, width = size
    n, h_out, w_out = 3, 7, 11
    x = torch.randn(n, c, height, width, generator=gen, dtype=dtype)
    grid = _positions(n, h_out, w_out, height, width, dtype, gen)
    grad_samples = torch.randn(n, c, h_out, w_out, generator=gen, dtype=dtype)
    ours = bilinear_input_grad(grad_samples, grid, torch.zeros_like(x))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, _aten(grad_samples, x, grid), **tol)
    # it adds to `out`
    start = torch.randn_like(x)
    torch.testing.assert_close(bilinear_input_grad(grad_samples, grid, start.clone()), start + ours, **tol)
    # or overwrites it: whatever `out` held (here NaN) is gone
    fresh = bilinear_input_grad(grad_samples, grid, torch.full_like(x, float("nan")), accumulate=False)
    assert torch.equal(fresh, ours)


@pytest.mark.parametrize("c", [3, 8])
def test_one_sample_per_pixel_is_bit_identical_to_aten(c):
    # each pixel touched by one sample only: no sums of several terms, so ATen's formulas give the same bits
    gen = torch.Generator().manual_seed(2)
    height, width = 9, 9
    px = torch.tensor([0.3, 2.75, 5.0, 7.125], dtype=torch.float32)
    py = torch.tensor([0.6, 3.25, 6.5, -0.5], dtype=torch.float32)
    grid = torch.stack((px * 0.25 - 1, py * 0.25 - 1), dim=-1).view(1, 1, 4, 2)
    grad_samples = torch.randn(1, c, 1, 4, generator=gen)
    x = torch.zeros(1, c, height, width)
    assert torch.equal(bilinear_input_grad(grad_samples, grid, torch.zeros_like(x)), _aten(grad_samples, x, grid))


@pytest.mark.parametrize("c", [5, 8, 13])
@pytest.mark.parametrize("valid", [(17, 17), (12, 9), (2, 2)])
def test_grid_size_gives_the_cropped_gradient_of_the_padded_map(c, valid):
    # the map is the top-left `valid` part of a 17 x 17 map whose other pixels are zero padding (as
    # rrsr_lib.alignment pads to 2^k + 1); positions cover the padding and beyond. The gradient of the
    # valid part must be the padded map's gradient cropped, computed with the same sums in the same order
    gen = torch.Generator().manual_seed(5)
    height, width = valid
    padded = torch.zeros(3, c, 17, 17)
    padded[..., :height, :width] = torch.randn(3, c, height, width, generator=gen)
    grid = _positions(3, 7, 11, 17, 17, torch.float32, gen)
    grad_samples = torch.randn(3, c, 7, 11, generator=gen)
    full = bilinear_input_grad(grad_samples, grid, torch.zeros_like(padded))
    cropped = bilinear_input_grad(grad_samples, grid, torch.full((3, c, height, width), float("nan")),
                                  accumulate=False, grid_size=(17, 17))
    assert torch.equal(cropped, full[..., :height, :width])
    torch.testing.assert_close(cropped, _aten(grad_samples, padded, grid)[..., :height, :width], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="grid_size .* smaller"):
        bilinear_input_grad(grad_samples, grid, torch.zeros(3, c, height, width), grid_size=(height - 1, width))


def test_threads_give_the_same_result():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 12, 33, 33, generator=gen)
    grid = _positions(8, 18, 16, 33, 33, torch.float32, gen)
    grad_samples = torch.randn(8, 12, 18, 16, generator=gen)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = bilinear_input_grad(grad_samples, grid, torch.zeros_like(x))
        torch.set_num_threads(3)
        three = bilinear_input_grad(grad_samples, grid, torch.zeros_like(x))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, three)   # each group is summed by one thread, in the same order


def test_bad_input_is_refused_with_a_clear_message():
    x = torch.zeros(2, 3, 5, 5)
    grid = torch.zeros(2, 4, 4, 2)
    gs = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="float32/float64"):
        bilinear_input_grad(gs.half(), grid, x)
    with pytest.raises(ValueError, match="contiguous"):
        bilinear_input_grad(gs.transpose(2, 3), grid, x)
    with pytest.raises(ValueError, match="one dtype"):
        bilinear_input_grad(gs.double(), grid, x)
    with pytest.raises(ValueError, match="shapes do not fit"):
        bilinear_input_grad(gs, torch.zeros(2, 4, 5, 2), x)
    with pytest.raises(ValueError, match="shapes do not fit"):
        bilinear_input_grad(gs, grid, torch.zeros(2, 3, 1, 5))


@pytest.mark.parametrize("groups", [4, 2])   # 6 channels per group (one at a time), 12 (a block of 8 and 4)
def test_deformable_convolution_gradients_do_not_depend_on_the_kernel(groups):
    # the alignment path with the numba kernel against the same path with ATen's, every gradient
    gen = torch.Generator().manual_seed(4)
    b, c, h, w = 2, 24, 10, 13
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    offset = torch.randn(b, 2 * 9 * groups, h, w, generator=gen, dtype=torch.float64) * 3
    mask = torch.rand(b, 9 * groups, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(8, c, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(8, generator=gen, dtype=torch.float64)
    grads = {}
    for fast in (True, False):
        old = sampling_adjoint.use_numba(fast)
        try:
            args = [t.clone().requires_grad_(True) for t in (x, offset, mask, weight, bias)]
            deform_conv_sampling(*args).square().sum().backward()
        finally:
            sampling_adjoint.use_numba(old)
        grads[fast] = [a.grad for a in args]
    for ours, aten in zip(grads[True], grads[False]):
        torch.testing.assert_close(ours, aten, rtol=1e-12, atol=1e-12)


def test_without_numba_the_aten_kernel_is_used_and_said_once(monkeypatch, caplog):
    monkeypatch.setattr(sampling_adjoint, "_kernel", None)
    monkeypatch.setattr(sampling_adjoint, "_state", {"enabled": True, "checked": False, "ok": False})
    monkeypatch.setitem(sys.modules, "numba", None)     # `import numba` now raises ImportError
    with caplog.at_level(logging.WARNING, logger="rrsr_lib.fast.sampling_adjoint"):
        assert not sampling_adjoint.available()
        assert not sampling_adjoint.available()
    assert len([r for r in caplog.records if "numba unavailable" in r.getMessage()]) == 1
    with pytest.raises(RuntimeError, match="pip install numba"):
        bilinear_input_grad(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 3, 3))
    # the deformable convolution still has its input gradient (ATen's kernel)
    x = torch.randn(1, 8, 5, 5, requires_grad=True)
    deform_conv_sampling(x, torch.zeros(1, 18, 5, 5), torch.ones(1, 9, 5, 5), torch.randn(4, 8, 3, 3)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_channels_last_reference_features_get_the_same_gradient():
    # a channels-last feature map pads to a non-contiguous tensor: the alignment path must still give its gradient
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 9, 9, generator=gen)
    offset = torch.randn(2, 18 * 4, 9, 9, generator=gen)
    mask = torch.rand(2, 36, 9, 9, generator=gen)
    weight = torch.randn(8, 16, 3, 3, generator=gen)
    grads = []
    for t in (x, x.to(memory_format=torch.channels_last)):
        t = t.clone().requires_grad_(True)
        deform_conv_sampling(t, offset, mask, weight).square().sum().backward()
        grads.append(t.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_building_the_kernel_leaves_numbas_vectoriser_setting_as_it_was():
    # the kernels are compiled with LLVM's SLP vectoriser switched on for them only; numba's global setting
    # must be back to what it was (here forced to a sentinel) after a (re)build
    numba = pytest.importorskip("numba")
    config = numba.core.config
    old_kernel, old_setting = sampling_adjoint._kernel, config.SLP_VECTORIZE
    try:
        sampling_adjoint._kernel = None
        config.SLP_VECTORIZE = 0
        kernel = sampling_adjoint._build()
        assert config.SLP_VECTORIZE == 0
        assert kernel is not None and sampling_adjoint._kernel is kernel
    finally:
        sampling_adjoint._kernel, config.SLP_VECTORIZE = old_kernel, old_setting
