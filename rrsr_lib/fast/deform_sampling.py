"""The autograd Function of rrsr_lib.alignment's "sampling" path: sample the taps, modulate, one matmul.

rrsr_lib.alignment.deform_conv_sampling writes the modulated deformable convolution out as "sample the 9 taps
(grid_sample), times the masks, times the kernel" and hands the batch to :class:`SampleModulateMultiply`, which
does exactly that sample by sample with a hand-written backward pass, so that it is faster than
torchvision's CPU kernel and keeps its temporaries small. The input's gradient (reciprocal learning's pass 2)
comes from the numba scatter of :mod:`rrsr_lib.fast.sampling_adjoint` where it can be used, from ATen's kernel
otherwise. tests/test_alignment.py and tests/test_sampling_adjoint.py check forward and gradients against
torchvision's deform_conv2d and ATen's; the timings are in PERFORMANCE.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import sampling_adjoint

__all__ = ["SampleModulateMultiply", "sample_modulate_multiply_no_grad"]


# Inference makes the columns (the 9 taps' samples of every input channel, 9x the input map) for this many
# bytes of output rows at a time: the whole column matrix of one x4 map of 160 x 160 would be 59 MB at C = 64.
BAND_BYTES = 8 * 2 ** 20


def sample_modulate_multiply_no_grad(x, grid, mask, w2, bias, hp, wp):
    """SampleModulateMultiply's forward where no gradient is wanted: the same samples, masks and matmul, a
    band of output rows at a time, so the columns never take more than about BAND_BYTES (and no samples are
    kept for a backward pass). Arguments and result as SampleModulateMultiply.forward, except that the map
    ``x`` [B, G, Cg, Hx, Wx] may be larger or smaller than the output grid (H, W) given by ``grid`` and
    ``mask`` (rrsr_lib.reference_grid samples a whole reference for a small LR tile); it is zero-padded to
    Hp x Wp (the size ``grid`` is normalised by) when smaller."""
    b, g, cg, hx, wx = x.shape
    n, taps = mask.shape[-1], mask.shape[3]
    w = grid.shape[3]
    h = n // w
    # zero rows/columns up to 2^k + 1 (see rrsr_lib.alignment._sampling_grid); none when the map has that size
    xp = x if (hx, wx) == (hp, wp) else F.pad(x, (0, wp - wx, 0, hp - hx))
    out = xp.new_empty(b, w2.shape[0], h * w)
    rows = max(1, min(h, BAND_BYTES // (xp.element_size() * g * cg * taps * w)))
    grid_rows = grid.view(b, g, taps, h, w, 2)
    mask_rows = mask.view(b, g, 1, taps, h, w)
    for i in range(b):
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            n = (r1 - r0) * w
            band = grid_rows[i, :, :, r0:r1].reshape(g, taps * (r1 - r0), w, 2)
            s = F.grid_sample(xp[i], band, mode="bilinear", padding_mode="zeros", align_corners=True)
            # columns: m_k(p) * x(p + k + offset_k(p)) for the band's outputs p, rows (g, c, k) as in w2
            cols = s.view(g, cg, taps, n).mul_(mask_rows[i, :, :, :, r0:r1].reshape(g, 1, taps, n))
            cols = cols.view(g * cg * taps, n)
            band_out = w2 @ cols if bias is None else torch.addmm(bias.unsqueeze(1), w2, cols)
            out[i, :, r0 * w:r1 * w] = band_out
    return out


class SampleModulateMultiply(torch.autograd.Function):
    """The sampling path for a batch, one sample at a time: taps (grid_sample), times masks, one matmul.

    forward(x [B, G, Cg, H, W], grid [B, G, 9H, W, 2] on the map zero-padded to Hp x Wp, mask [B, G, 1, 9, HW],
    w2 [Cout, G*Cg*9], bias, hp, wp) -> [B, Cout, HW]. The padding happens inside, so that the input's
    gradient (when it needs one: reciprocal pass 2) is computed for the H x W map only, not for the padding
    (at x4, 160 x 160 of the 257 x 257 padded map). Working on one sample at a time keeps every temporary
    small (on the CPU that is faster than whole-batch tensors, and inference never holds the column tensor of
    the whole batch, 9x the size of the input). For the backward pass only the unmodulated samples are kept
    (grid_sample is the most expensive step; sampling again would cost more time than the memory is worth),
    not the modulated columns, which the backward recomputes sample by sample.
    """

    @staticmethod
    # under CPU autocast (the trainer's cpu_amp trial) the sampling and its hand-written backward run in float32
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, grid, mask, w2, bias, hp, wp):
        b, g, cg, h, w = x.shape
        # zero rows/columns up to 2^k + 1 (see rrsr_lib.alignment._sampling_grid)
        xp = F.pad(x, (0, wp - w, 0, hp - h))
        n, taps = mask.shape[-1], mask.shape[3]
        keep = any(ctx.needs_input_grad[1:4])   # offsets, masks or kernel need gradients
        out = xp.new_empty(b, w2.shape[0], n)
        samples = xp.new_empty(b, g, cg, taps, n) if keep else None
        for i in range(b):
            s = F.grid_sample(xp[i], grid[i], mode="bilinear", padding_mode="zeros", align_corners=True)
            s = s.view(g, cg, taps, n)
            if keep:
                samples[i] = s
            # columns: m_k(p) * x(p + k + offset_k(p)), row index (g, c, k) = c*9 + k as in weight.view(Cout, C*9)
            cols = s.mul_(mask[i]).view(g * cg * taps, n)
            # out[o, p] = sum_{c,k} W[o, c, k] * cols[c*9 + k, p] + bias[o]
            if bias is None:
                torch.mm(w2, cols, out=out[i])
            else:
                torch.addmm(bias.unsqueeze(1), w2, cols, out=out[i])
        ctx.save_for_backward(xp, grid, mask, w2, samples)
        ctx.has_bias, ctx.hw = bias is not None, (h, w)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out):
        xp, grid, mask, w2, samples = ctx.saved_tensors
        need_x, need_grid, need_mask, need_w = ctx.needs_input_grad[:4]
        b, g, cg, hp, wp = xp.shape
        h, w = ctx.hw
        n, taps = mask.shape[-1], mask.shape[3]
        # every sample's slice of the input gradient is written whole below (by either kernel): no zeroing pass
        grad_x = xp.new_empty(b, g, cg, h, w) if need_x else None
        grad_grid = torch.empty_like(grid) if need_grid else None
        grad_mask = torch.empty_like(mask) if need_mask else None
        grad_w2 = torch.zeros_like(w2) if need_w else None
        grad_bias = grad_out.sum(dim=(0, 2)) if ctx.has_bias and ctx.needs_input_grad[4] else None
        # the input's gradient (needed only when the reference itself needs one: reciprocal pass 2) by the
        # numba kernel of rrsr_lib.fast.sampling_adjoint, much faster than ATen's CPU scatter (PERFORMANCE.md),
        # same sums, for the H x W map only; ATen's kernel computes it for the padded map, which is then cropped
        numba_x = (need_x and xp.device.type == "cpu" and xp.dtype in (torch.float32, torch.float64)
                   and grid.dtype == xp.dtype == grad_out.dtype and xp.is_contiguous() and min(h, w) >= 2
                   and sampling_adjoint.available())
        aten_x = need_x and not numba_x
        for i in range(b):
            if samples is not None:
                s4 = samples[i]
            else:   # only the input needs a gradient: sample again
                s4 = F.grid_sample(xp[i], grid[i], mode="bilinear", padding_mode="zeros",
                                   align_corners=True).view(g, cg, taps, n)
            go = grad_out[i]
            # d out / d cols = W^T grad
            gc = (w2.t() @ go).view(g, cg, taps, n)
            if need_mask:
                # d / d m_k(p) = sum over the group's channels of grad_cols * samples (channel by channel: fast)
                gm = grad_mask[i, :, 0]
                torch.mul(gc[:, 0], s4[:, 0], out=gm)
                for c in range(1, cg):
                    gm.addcmul_(gc[:, c], s4[:, c])
            if need_w:
                # d / d W = grad @ cols^T, with the columns recomputed for this sample
                grad_w2.addmm_(go, (s4 * mask[i]).view(g * cg * taps, n).t())
            if need_x or need_grid:
                gs = gc.mul_(mask[i]).view(g, cg, grid.shape[2], grid.shape[3])   # grid_sample's output layout
                if numba_x:
                    sampling_adjoint.bilinear_input_grad(gs, grid[i].contiguous(), grad_x[i], accumulate=False,
                                                         grid_size=(hp, wp))
                if aten_x or need_grid:
                    gx, gg = torch.ops.aten.grid_sampler_2d_backward(gs, xp[i], grid[i], 0, 0, True,
                                                                     [aten_x, need_grid])
                    if aten_x:
                        grad_x[i] = gx[..., :h, :w]
                    if need_grid:
                        grad_grid[i] = gg
        return grad_x, grad_grid, grad_mask, grad_w2, grad_bias, None, None
