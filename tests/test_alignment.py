"""Tests of rrsr_lib.alignment: the sampling path equals torchvision's deform_conv2d, and the alignment
unit puts the matched reference content where it belongs."""
import pytest
import torch
from torchvision.ops import deform_conv2d

from rrsr_lib import alignment
from rrsr_lib.alignment import AlignmentUnit, deform_conv_sampling, deform_path, modulated_deform_conv, resolve_path
from rrsr_lib.errors import InputError
from rrsr_lib.offsets import flow_from_index, pre_offsets, to_deform_offsets


def _case(b, c, h, w, groups=8, dtype=torch.float64, integer=False, spread=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    if integer:
        offset = torch.randint(-4, 5, (b, 18 * groups, h, w), generator=g).to(dtype)
    else:
        offset = torch.randn(b, 18 * groups, h, w, generator=g, dtype=dtype) * spread
    mask = torch.rand(b, 9 * groups, h, w, generator=g, dtype=dtype)
    weight = torch.randn(c + 3, c, 3, 3, generator=g, dtype=dtype) / (9 * c) ** 0.5
    bias = torch.randn(c + 3, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, offset, mask, weight, bias)]


def _grads(fn, args):
    out = fn(*args)
    # a loss that is not linear in the output, so that every gradient depends on the forward values
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum() + (out ** 2).sum()
    return out, torch.autograd.grad(loss, args)


def _torchvision(x, offset, mask, weight, bias):
    return deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)


@pytest.mark.parametrize("shape", [(2, 64, 24, 24), (1, 256, 40, 40), (1, 64, 13, 7)])
def test_forward_equals_torchvision_float32(shape):
    args = [t.detach().float() for t in _case(*shape)]
    ours = deform_conv_sampling(*args)
    ref = _torchvision(*args)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("shape,groups", [((2, 16, 9, 11), 8), ((1, 8, 1, 5), 1), ((2, 16, 2, 3), 4), ((1, 16, 17, 33), 8)])
def test_gradients_equal_torchvision_float64_noninteger(shape, groups):
    args = _case(*shape, groups=groups)
    with torch.no_grad():   # some taps far outside the map, some across the border
        args[1][:, :7] *= 5
    ref, g_ref = _grads(_torchvision, args)
    ours, g_ours = _grads(deform_conv_sampling, args)
    assert (ours - ref).abs().max().item() < 1e-12
    for name, a, b in zip(("input", "offset", "mask", "weight", "bias"), g_ours, g_ref):
        rel = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
        assert rel < 1e-6, f"{name}: relative difference {rel:.2e}"


def test_integer_positions_same_side_of_the_kink_as_torchvision():
    # integer offsets: every tap sits exactly on pixels, where bilinear interpolation has a kink
    args = _case(2, 16, 9, 11, integer=True)
    ref, g_ref = _grads(_torchvision, args)
    ours, g_ours = _grads(deform_conv_sampling, args)
    assert (ours - ref).abs().max().item() < 1e-12
    # the offset gradient is the one-sided derivative towards +x/+y in both (floor picks the lower corner)
    torch.testing.assert_close(g_ours[1], g_ref[1], rtol=1e-9, atol=1e-12)


def test_kink_side_is_the_forward_difference():
    # one channel holding a ramp with a bend: v(x) = x^2 along x. At integer x = n the sampling path must
    # return d/dx = v(n+1) - v(n) = 2n + 1 (right side), not v(n) - v(n-1) = 2n - 1.
    h, w = 3, 8
    x = (torch.arange(w, dtype=torch.float64) ** 2).expand(1, 1, h, w).contiguous()
    offset = torch.zeros(1, 18, h, w, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 9, h, w, dtype=torch.float64)
    weight = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    weight[0, 0, 1, 1] = 1.0   # centre tap only: out(y, x) = v(x + dx)
    out = deform_conv_sampling(x, offset, mask, weight)
    (grad,) = torch.autograd.grad(out[0, 0, 1, 3], offset)
    # centre tap is k = 4, its dx is channel 2*4 + 1
    assert grad[0, 9, 1, 3].item() == pytest.approx(2 * 3 + 1)


def test_border_zero_padding_like_torchvision():
    # taps exactly at -1 / H, and between -1 and 0: zeros outside, in-image corners keep their weight
    c, h, w = 8, 5, 6
    x = torch.rand(1, c, h, w, dtype=torch.float64, requires_grad=True)
    offset = torch.zeros(1, 18, h, w, dtype=torch.float64)
    offset[:, 0::2] = -0.5      # dy: half a pixel up
    offset[:, 1::2, :, :2] = -1.0
    offset[:, 1::2, :, -2:] = 1.0
    offset.requires_grad_()
    mask = torch.rand(1, 9, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, c, 3, 3, dtype=torch.float64, requires_grad=True)
    out_tv = deform_conv2d(x, offset, weight, None, padding=1, mask=mask)
    out = deform_conv_sampling(x, offset, mask, weight)
    torch.testing.assert_close(out, out_tv, rtol=0, atol=1e-12)
    g1 = torch.autograd.grad(out.square().sum(), (x, offset, mask, weight))
    g2 = torch.autograd.grad(out_tv.square().sum(), (x, offset, mask, weight))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_path_switch():
    assert resolve_path("auto", torch.device("cpu")) == "sampling"
    assert resolve_path("auto", torch.device("cuda")) == "torchvision"
    with deform_path("torchvision"):
        assert resolve_path("auto", torch.device("cpu")) == "torchvision"
        assert resolve_path("sampling", torch.device("cpu")) == "sampling"
    assert alignment.get_deform_path() == "auto"
    with pytest.raises(InputError):
        resolve_path("cuda-ext", torch.device("cpu"))
    args = [t.detach() for t in _case(1, 16, 6, 7)]
    torch.testing.assert_close(modulated_deform_conv(*args, path="torchvision"), modulated_deform_conv(*args, path="sampling"))


def test_bad_shapes_raise_input_error():
    x, offset, mask, weight, bias = [t.detach() for t in _case(1, 16, 6, 7)]
    with pytest.raises(InputError, match="offset"):
        deform_conv_sampling(x, offset[:, :-1], mask, weight, bias)
    with pytest.raises(InputError, match="mask"):
        deform_conv_sampling(x, offset, mask[:, :-1], weight, bias)
    with pytest.raises(InputError, match="weight"):
        deform_conv_sampling(x, offset, mask, weight[:, :-1], bias)
    unit = AlignmentUnit(lr_channels=4, ref_channels=16, groups=8)
    with pytest.raises(InputError, match="canvas"):
        unit(torch.zeros(1, 4, 6, 7), torch.zeros(1, 16, 6, 8), torch.zeros(1, 9, 6, 7, 2))


def _identity_unit(channels, lr_channels=4, groups=8):
    """An alignment unit whose kernel copies the centre tap: with the initial masks (0.5) the output is the
    sampled reference itself (x2 undoes the 0.5)."""
    unit = AlignmentUnit(lr_channels=lr_channels, ref_channels=channels, groups=groups)
    with torch.no_grad():
        unit.weight.zero_()
        unit.weight[torch.arange(channels), torch.arange(channels), 1, 1] = 2.0
        unit.bias.zero_()
    return unit


def test_initial_unit_has_zero_residual_and_half_masks():
    unit = AlignmentUnit(lr_channels=8, ref_channels=16, groups=8)
    lr, ref = torch.randn(2, 8, 5, 6), torch.rand(2, 16, 5, 6)
    residual, mask = unit.residual_offsets_and_mask(lr, ref)
    assert residual.shape == (2, 144, 5, 6) and mask.shape == (2, 72, 5, 6)
    assert residual.abs().max().item() == 0.0
    assert torch.all(mask == 0.5)


@pytest.mark.parametrize("path", ["sampling", "torchvision"])
def test_reference_equal_to_input_reproduces_reference(path):
    # ref = input: every patch matches itself, index = own position, flow = 0, pre-offsets = 0
    torch.manual_seed(0)
    h, w, c = 7, 9, 16
    index = torch.arange((h - 2) * (w - 2)).view(1, h - 2, w - 2)
    flow = flow_from_index(index)
    assert flow.abs().max().item() == 0
    ref = torch.rand(1, c, h, w)     # VGG features are >= 0, LeakyReLU leaves them unchanged
    unit = _identity_unit(c)
    unit.path = path
    aligned = unit(torch.randn(1, 4, h, w), ref, pre_offsets(flow, 1))
    torch.testing.assert_close(aligned, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_translated_reference_is_aligned_back(scale):
    # the reference is the input moved by t = (tx, ty) LR pixels; the authors' index -> flow -> per-tap
    # pre-offsets must bring every tap back onto the input's content (checks (x, y) vs (dy, dx) and the taps)
    torch.manual_seed(1)
    h, w, c, tx, ty = 10, 12, 8, 2, -1
    gh, gw = h - 2, w - 2
    qy, qx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    index = ((qy + ty).clamp(0, gh - 1) * gw + (qx + tx).clamp(0, gw - 1)).unsqueeze(0)
    pre = pre_offsets(flow_from_index(index), scale)
    H, W = h * scale, w * scale
    feat = torch.rand(1, c, H, W)
    s_t = (scale * tx, scale * ty)
    ref = torch.zeros_like(feat)
    # ref(y, x) = feat(y - s*ty, x - s*tx): content moved by +s*t
    ref[:, :, max(0, s_t[1]):H + min(0, s_t[1]), max(0, s_t[0]):W + min(0, s_t[0])] = \
        feat[:, :, max(0, -s_t[1]):H - max(0, s_t[1]), max(0, -s_t[0]):W - max(0, s_t[0])]
    unit = _identity_unit(c, groups=4)
    aligned = unit(torch.randn(1, 4, H, W), ref, to_deform_offsets(pre, 4))
    # interior: where the centre tap's flow is the translation and the source lies inside the map
    y0, y1 = scale * 3, H - scale * 4
    x0, x1 = scale * 2, W - scale * 5
    torch.testing.assert_close(aligned[..., y0:y1, x0:x1], feat[..., y0:y1, x0:x1], rtol=0, atol=1e-6)
    # without the pre-offsets the unit would copy the (misaligned) reference instead
    plain = unit(torch.randn(1, 4, H, W), ref, torch.zeros_like(pre))
    assert (plain[..., y0:y1, x0:x1] - feat[..., y0:y1, x0:x1]).abs().max() > 0.1


def test_unit_gradients_equal_between_paths():
    torch.manual_seed(2)
    unit = AlignmentUnit(lr_channels=8, ref_channels=16, groups=8).double()
    with torch.no_grad():   # a trained-looking unit: non-zero residual offsets
        unit.offset_mask.weight.normal_(0, 0.05)
    lr = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    ref = torch.rand(2, 16, 6, 7, dtype=torch.float64, requires_grad=True)
    pre = torch.randn(2, 9, 6, 7, 2, dtype=torch.float64) * 2
    grads = {}
    for path in ("sampling", "torchvision"):
        unit.path = path
        out = unit(lr, ref, pre)
        grads[path] = torch.autograd.grad(out.square().sum(), [ref] + list(unit.parameters()))
    for a, b in zip(grads["sampling"], grads["torchvision"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)


def test_sample_taps_then_one_matmul_is_the_sampling_path():
    # the definition written out for the whole batch: columns = samples * masks, then weight.view(Cout, C*9) @ columns
    x, offset, mask, weight, bias = [t.detach() for t in _case(2, 16, 6, 7)]
    samples = alignment.sample_taps(x, offset)                      # [B, G, C/G, 9, HW]
    cols = (samples * mask.view(2, 8, 1, 9, 42)).reshape(2, 16 * 9, 42)
    out = (weight.reshape(weight.shape[0], -1) @ cols + bias.view(1, -1, 1)).view(2, -1, 6, 7)
    torch.testing.assert_close(out, deform_conv_sampling(x, offset, mask, weight, bias), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("band_bytes", [1, 4096, 2 ** 30])
def test_without_gradients_the_row_bands_give_the_numbers_of_the_autograd_path(monkeypatch, band_bytes):
    from rrsr_lib.fast import deform_sampling
    x, offset, mask, weight, bias = [t.detach().float() for t in _case(2, 16, 11, 13, groups=4)]
    grid, hp, wp = alignment._tap_grid(offset, 11, 13)
    args = (x.view(2, 4, 4, 11, 13), grid, mask.reshape(2, 4, 1, 9, 143), weight.reshape(weight.shape[0], 144), bias, hp, wp)
    with_grad = deform_sampling.SampleModulateMultiply.apply(*[t.clone().requires_grad_() if torch.is_tensor(t) else t
                                                               for t in args])
    monkeypatch.setattr(deform_sampling, "BAND_BYTES", band_bytes)   # 1 row, a few rows, the whole map per band
    banded = deform_sampling.sample_modulate_multiply_no_grad(*args)
    assert with_grad.grad_fn is not None and banded.grad_fn is None
    assert torch.equal(banded, with_grad.detach())


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_inference_without_the_padding_gives_the_numbers_of_the_autograd_path(dtype, tol):
    # no_grad skips the 2^k + 1 canvas (deform_conv_from_map on the map itself): equal up to float rounding,
    # offsets reaching outside the map included
    x, offset, mask, weight, bias = [t.detach().to(dtype) for t in _case(2, 16, 11, 13, groups=4)]
    offset = offset * 4
    with_grad = deform_conv_sampling(x.clone().requires_grad_(), offset, mask, weight, bias)
    with torch.no_grad():
        fast = deform_conv_sampling(x, offset, mask, weight, bias)
    assert with_grad.grad_fn is not None and fast.grad_fn is None
    torch.testing.assert_close(fast, with_grad.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(fast, deform_conv2d(x, offset, weight, bias, padding=1, mask=mask), rtol=tol, atol=tol)
