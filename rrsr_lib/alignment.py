"""Progressive feature alignment: deformable convolution seeded by the matches.

Idea (RRSR's second idea, first half): matching (rrsr_lib.matching) says, for every input position,
where the similar content sits in the reference; rrsr_lib.offsets turns that into per-tap
"pre-offsets" of a 3x3 kernel. The alignment unit is a *modulated deformable convolution* on the
reference texture feature whose 9 taps do not sample the usual 3x3 neighbourhood but

    position of tap k at output p  =  p + k_grid + pre_offset_k(p) + residual_offset_k(p),

where the residual offsets and the modulation masks m_k(p) in [0, 1] are predicted by small
convolutions from concat(current LR feature, reference feature):

    aligned(p) = sum_k  m_k(p) * W_k . ref(p + k_grid + offset_k(p))  + b          (one group)

with ref(.) read by bilinear interpolation (zero outside the map). The channels are split into 8
deformable groups, each with its own offsets and masks. The residual/mask convolution starts at
zero, so an untrained unit samples exactly at the matched positions (mask sigmoid(0) = 0.5).
"Progressive": every cascade stage has its own unit, which re-estimates the residual offsets from the
LR feature that earlier stages have already improved (rrsr_lib.models).

Two implementations of the same operator, chosen by ``path``:

* ``"torchvision"``: ``torchvision.ops.deform_conv2d`` (no compiled extension to build; mmcv's and
  torchvision's offset layout). Its CPU backward is slow.
* ``"sampling"``: "sample, then convolve": bilinear sampling of the 9 taps with ``grid_sample``
  (an im2col whose columns sit at the deformed positions), times the modulation mask, then ONE
  matrix multiplication with the kernel, one sample of the batch at a time. Same numbers (forward and
  gradients), several times faster than torchvision for one alignment unit on the CPU (forward +
  backward). :func:`deform_conv_sampling` writes it out and hands the batch to the autograd Function of
  rrsr_lib.fast.deform_sampling (hand-written backward pass); when the sampled feature itself needs a
  gradient (reciprocal learning's pass 2, whose reference is SR), that gradient comes from the numba
  kernel of rrsr_lib.fast.sampling_adjoint, much faster than ATen's. The timings are in PERFORMANCE.md.
* ``"auto"`` (default): "sampling" on the CPU, "torchvision" on accelerators.

Kink at integer positions: bilinear interpolation is not differentiable where a sampling coordinate
is an integer. torchvision takes floor(coordinate) as the lower corner, i.e. the one-sided
derivative towards +x / +y (v(n+1) - v(n)). grid_sample does the same, but only if the coordinate
reaches it exactly; we therefore pad the feature map to 2^k + 1 rows and columns, so that the
normalisation to [-1, 1] (a multiplication by 2 / 2^k) and grid_sample's way back are exact for
integers. Our gradients then equal torchvision's at integer positions too, and at the map border
(a coordinate of exactly -1 reads one zero and one real pixel, like torchvision's). Either side would be a
valid subgradient; it matters at initialisation only, where every matched offset is an integer and the
first update moves the residual offsets off the integers. (In float32, a coordinate that is an integer
only up to rounding can still land on different sides in the two paths: tests/test_alignment.py checks
exact equality in float64.)
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from .blocks import LRELU_SLOPE, conv3x3
from .errors import InputError
from .fast.deform_sampling import SampleModulateMultiply, sample_modulate_multiply_no_grad
from .offsets import to_deform_offsets

__all__ = ["DEFORM_PATHS", "deform_path", "get_deform_path", "resolve_path", "tap_positions", "sample_taps",
           "deform_conv_sampling", "deform_conv_from_map", "modulated_deform_conv", "AlignmentUnit"]

DEFORM_PATHS = ("auto", "torchvision", "sampling")
# 3x3 kernel, taps k = 3*i + j (row-major), at (i - 1, j - 1) around the output position
KERNEL = 3
TAPS = KERNEL * KERNEL
_default_path = "auto"


@contextlib.contextmanager
def deform_path(path: str):
    """Context manager: inside it, units whose ``path`` is "auto" use ``path`` ("torchvision" or "sampling").

    Used by benchmarks/model.py to time the same model on both paths in one run.
    """
    global _default_path
    if path not in DEFORM_PATHS:
        raise InputError(f"deformable-convolution path must be one of {DEFORM_PATHS}, got {path!r}")
    old, _default_path = _default_path, path
    try:
        yield
    finally:
        _default_path = old


def get_deform_path() -> str:
    """The process-wide default set by :func:`deform_path` ("auto" outside any ``with``)."""
    return _default_path


def resolve_path(path: str, device: torch.device) -> str:
    """"torchvision" or "sampling" for a requested path ("auto" defers to :func:`deform_path`, then the device)."""
    if path not in DEFORM_PATHS:
        raise InputError(f"deformable-convolution path must be one of {DEFORM_PATHS}, got {path!r}")
    if path == "auto":
        path = _default_path
    if path == "auto":
        # the sampling path pays off where torchvision's kernels are slow: the CPU
        path = "sampling" if device.type == "cpu" else "torchvision"
    return path


def _check(x, offset, mask, weight, bias, any_size: bool = False):
    """The number of deformable groups G, after checking the shapes (``any_size``: the output grid, given by
    ``offset``, may differ from the input's H x W: :func:`deform_conv_from_map`)."""
    if x.dim() != 4:
        raise InputError(f"the deformable convolution's input must be [B, C, H, W], got {tuple(x.shape)}")
    b, c, h, w = x.shape
    if any_size and offset.dim() == 4:
        h, w = offset.shape[2:]
    if weight.dim() != 4 or weight.shape[1] != c or weight.shape[2:] != (KERNEL, KERNEL):
        raise InputError(f"weight must be [Cout, {c}, 3, 3] for an input with {c} channels, got {tuple(weight.shape)}")
    if offset.dim() != 4 or offset.shape[0] != b or offset.shape[2:] != (h, w) or offset.shape[1] % (2 * TAPS):
        raise InputError(f"offset must be [B, 2*9*G, H, W] = [{b}, 18*G, {h}, {w}], got {tuple(offset.shape)}")
    groups = offset.shape[1] // (2 * TAPS)
    if c % groups:
        raise InputError(f"{groups} deformable groups do not divide {c} input channels; choose G dividing C")
    if mask.shape != (b, TAPS * groups, h, w):
        raise InputError(f"mask must be [B, 9*G, H, W] = {[b, TAPS * groups, h, w]}, got {tuple(mask.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise InputError(f"bias must have {weight.shape[0]} entries, got {tuple(bias.shape)}")
    return groups


def _tap_rows_cols(dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(i - 1, j - 1) of the 9 taps k = 3*i + j: two [9] tensors, the 3x3 kernel's row and column offsets."""
    tap_i = torch.arange(KERNEL, dtype=dtype, device=device).repeat_interleave(KERNEL) - 1
    tap_j = torch.arange(KERNEL, dtype=dtype, device=device).repeat(KERNEL) - 1
    return tap_i, tap_j


def tap_positions(offset: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each tap samples: absolute (y, x) pixel coordinates in the input map.

    offset: [B, 2*9*G, H, W] in torchvision's layout (per group, per tap, (dy, dx)); height, width: H, W.
    Returns (py, px), each [B, G, 9, H, W] float: py = y + (i - 1) + dy, px = x + (j - 1) + dx for
    tap k = 3*i + j at output (y, x) (stride 1, padding 1, dilation 1: RRSR's only case).
    """
    b, ch, h, w = offset.shape
    if (h, w) != (height, width) or ch % (2 * TAPS):
        raise InputError(f"offset must be [B, 18*G, {height}, {width}], got {tuple(offset.shape)}")
    g = ch // (2 * TAPS)
    off = offset.view(b, g, TAPS, 2, h, w)
    dt, dev = offset.dtype, offset.device
    tap_i, tap_j = _tap_rows_cols(dt, dev)
    ys = torch.arange(h, dtype=dt, device=dev).view(1, 1, 1, h, 1)
    xs = torch.arange(w, dtype=dt, device=dev).view(1, 1, 1, 1, w)
    py = ys + tap_i.view(1, 1, TAPS, 1, 1) + off[:, :, :, 0]
    px = xs + tap_j.view(1, 1, TAPS, 1, 1) + off[:, :, :, 1]
    return py, px


def _exact_size(n: int) -> int:
    """Smallest 2^k + 1 >= n: grid_sample's (size - 1) is then a power of two and integers stay exact."""
    return 2 ** max(0, (n - 2).bit_length()) + 1 if n >= 2 else 2


def _tap_grid(offset: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int, int]:
    """grid_sample's grid [B, G, 9*H, W, 2] for the 9 taps on the map zero-padded to Hp x Wp, and Hp, Wp."""
    hp, wp = _exact_size(height), _exact_size(width)
    # g = p * 2 / (size - 1) - 1 is exact for integer p because size - 1 is a power of two
    return _grid_on(offset, hp, wp), hp, wp


def _grid_on(offset: torch.Tensor, hm: int, wm: int) -> torch.Tensor:
    """grid_sample's grid [B, G, 9*H, W, 2] for the 9 taps of every output of ``offset`` [B, 18G, H, W], on a map
    of Hm x Wm pixels (align_corners=True coordinates: -1 is pixel 0, +1 is pixel Hm - 1 or Wm - 1)."""
    b, ch, h, w = offset.shape
    if ch % (2 * TAPS):
        raise InputError(f"offset must be [B, 18*G, {h}, {w}], got {tuple(offset.shape)}")
    g = ch // (2 * TAPS)
    off = offset.view(b, g, TAPS, 2, h, w)
    dt, dev = offset.dtype, offset.device
    sx, sy = 2.0 / (wm - 1), 2.0 / (hm - 1)
    tap_i, tap_j = _tap_rows_cols(dt, dev)
    # where tap k of output (y, x) sits without offset, normalised: (x + j - 1) * 2 / (Wm - 1) - 1 (and y)
    base_x = ((torch.arange(w, dtype=dt, device=dev) + tap_j.view(TAPS, 1)) * sx - 1.0).view(1, 1, TAPS, 1, w)
    base_y = ((torch.arange(h, dtype=dt, device=dev) + tap_i.view(TAPS, 1)) * sy - 1.0).view(1, 1, TAPS, h, 1)
    # grid = base + offset * scale, written straight into the interleaved (x, y) layout: one pass per coordinate
    # instead of tap_positions' map-sized temporaries and a stack (same numbers up to float rounding)
    if torch.is_grad_enabled() and offset.requires_grad:   # out= has no autograd: the same sums, stacked
        grid = torch.stack((torch.add(base_x, off[:, :, :, 1], alpha=sx), torch.add(base_y, off[:, :, :, 0], alpha=sy)), -1)
    else:
        grid = offset.new_empty(b, g, TAPS, h, w, 2)
        torch.add(base_x, off[:, :, :, 1], alpha=sx, out=grid[..., 0])
        torch.add(base_y, off[:, :, :, 0], alpha=sy, out=grid[..., 1])
    return grid.view(b, g, TAPS * h, w, 2)


def _sampling_grid(x: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The zero-padded input [B, G, C/G, Hp, Wp] and grid_sample's grid [B, G, 9*H, W, 2] for the 9 taps."""
    b, c, h, w = x.shape
    grid, hp, wp = _tap_grid(offset, h, w)
    # zero rows/columns up to 2^k + 1: they read as "outside" (0), exactly like torchvision's border
    xp = F.pad(x, (0, wp - w, 0, hp - h))
    return xp.view(b, grid.shape[1], c // grid.shape[1], hp, wp), grid


def sample_taps(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of the input at the 9 deformed tap positions of every output pixel.

    x: [B, C, H, W] float; offset: [B, 2*9*G, H, W] (torchvision layout, G groups dividing C).
    Returns [B, G, C/G, 9, H*W]: entry (b, g, c, k, p) = x[b, g*C/G + c] read at tap k's position for
    output p, bilinear, with zeros outside the map (torchvision's rule: a corner outside contributes 0).
    """
    b, c, h, w = x.shape
    xp, grid = _sampling_grid(x, offset)
    g = xp.shape[1]
    samples = F.grid_sample(xp.reshape(b * g, c // g, *xp.shape[3:]), grid.reshape(b * g, TAPS * h, w, 2),
                            mode="bilinear", padding_mode="zeros", align_corners=True)
    return samples.view(b, g, c // g, TAPS, h * w)


def deform_conv_sampling(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """Modulated deformable 3x3 convolution as "sample the 9 taps, then one matrix multiplication".

    x: [B, C, H, W]; offset: [B, 2*9*G, H, W] (per group, per tap, (dy, dx)); mask: [B, 9*G, H, W] in
    [0, 1]; weight: [Cout, C, 3, 3]; bias: [Cout] or None. Stride 1, padding 1, dilation 1.
    Returns [B, Cout, H, W], equal to ``torchvision.ops.deform_conv2d(x, offset, weight, bias,
    padding=1, mask=mask)`` (to float rounding; gradients too, see the module docstring).
    Written out for one sample: cols = sample_taps(x, offset) * mask (per group and tap), then
    out = weight.view(Cout, C*9) @ cols; :class:`rrsr_lib.fast.deform_sampling.SampleModulateMultiply` does
    exactly that, sample by sample, with a hand-written backward pass. Without gradients the call goes to
    :func:`deform_conv_from_map` on x itself (no 2^k + 1 canvas), which equals it up to float rounding.
    """
    groups = _check(x, offset, mask, weight, bias)
    b, c, h, w = x.shape
    wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, offset, mask, weight, bias))
    if not wants_grad and min(h, w) >= 2:
        # inference: no gradient at integer positions to keep exact, so no 2^k + 1 padding (a copy of the map
        # into a canvas up to 4x its size): the same sum, up to float rounding (tested)
        return deform_conv_from_map(x, offset, mask, weight, bias)
    grid, hp, wp = _tap_grid(offset, h, w)
    args = (x.contiguous().view(b, groups, c // groups, h, w), grid, mask.reshape(b, groups, 1, TAPS, h * w),
            weight.reshape(weight.shape[0], c * TAPS), bias, hp, wp)
    # the same numbers either way (tested); without gradients the columns are made a band of rows at a time
    multiply = SampleModulateMultiply.apply if wants_grad else sample_modulate_multiply_no_grad
    return multiply(*args).view(b, weight.shape[0], h, w)


@torch.no_grad()
def deform_conv_from_map(src: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """The same modulated deformable 3x3 convolution, sampling a map of another size than the output (inference).

    src: [B, C, Hm, Wm], the map the taps read (rrsr_lib.reference_grid: a whole reference's texture, shared by
    every LR tile); offset: [B, 2*9*G, H, W] and mask: [B, 9*G, H, W] on the output grid, tap k of output p
    reading src at p + k_grid + offset_k(p) in src's pixels (zeros outside src); weight, bias as in
    :func:`deform_conv_sampling`. Returns [B, Cout, H, W]. When Hm x Wm = H x W this is the autograd path of
    :func:`deform_conv_sampling` up to float rounding (and what that function runs without gradients): the grid
    is normalised by Hm - 1 and Wm - 1 instead of padding src to 2^k + 1 rows and columns (a copy of the map, up
    to 4x its size, at every call); only the gradient at integer positions needs that padding, and this path
    computes none.
    """
    groups = _check(src, offset, mask, weight, bias, any_size=True)
    b, c, hm, wm = src.shape
    h, w = offset.shape[2:]
    if min(hm, wm) < 2:
        raise InputError(f"deform_conv_from_map samples a map of at least 2 x 2, got {tuple(src.shape)}")
    # the grid on src itself, no padding
    grid = _grid_on(offset, hm, wm)
    out = sample_modulate_multiply_no_grad(src.contiguous().view(b, groups, c // groups, hm, wm), grid,
                                           mask.reshape(b, groups, 1, TAPS, h * w), weight.reshape(weight.shape[0], c * TAPS),
                                           bias, hm, wm)
    return out.view(b, weight.shape[0], h, w)


def modulated_deform_conv(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None = None, path: str = "auto") -> torch.Tensor:
    """Modulated deformable 3x3 convolution (stride 1, padding 1), by torchvision or by sampling.

    Shapes as in :func:`deform_conv_sampling`. path: "auto" (sampling on CPU, torchvision elsewhere,
    unless a :func:`deform_path` block says otherwise), "torchvision" or "sampling".
    Returns [B, Cout, H, W].
    """
    _check(x, offset, mask, weight, bias)
    if resolve_path(path, x.device) == "sampling":
        return deform_conv_sampling(x, offset, mask, weight, bias)
    return deform_conv2d(x, offset, weight, bias, stride=1, padding=1, dilation=1, mask=mask)


class AlignmentUnit(nn.Module):
    """RRSR's alignment unit at one scale: reference texture feature -> aligned to the LR feature.

    lr_channels: channels of the LR (content) feature (RRSR: 64). ref_channels: channels of the
    reference texture feature (VGG relu3_1: 256 at x1, relu2_1: 128 at x2, relu1_1: 64 at x4).
    groups: deformable groups (RRSR: 8). offset_channels: width of the two convolutions that predict
    residual offsets and masks (None = ref_channels, the authors' choice). path: see
    :func:`modulated_deform_conv`.

    Parameters (authors' layout, which reproduces their parameter count):
        offset_conv1  3x3, (lr + ref) -> offset_channels, LeakyReLU(0.1)
        offset_conv2  3x3, offset_channels -> offset_channels, LeakyReLU(0.1)
        offset_mask   3x3, offset_channels -> 3*9*G, zero-initialised: 2*9*G residual offsets, 9*G masks
        weight, bias  the deformable kernel [ref, ref, 3, 3] and its bias
    """

    def __init__(self, lr_channels: int = 64, ref_channels: int = 256, groups: int = 8,
                 offset_channels: int | None = None, path: str = "auto"):
        super().__init__()
        if ref_channels % groups:
            raise InputError(f"{groups} deformable groups do not divide {ref_channels} reference channels")
        if path not in DEFORM_PATHS:
            raise InputError(f"path must be one of {DEFORM_PATHS}, got {path!r}")
        oc = ref_channels if offset_channels is None else offset_channels
        self.groups, self.path = groups, path
        self.lr_channels, self.ref_channels = lr_channels, ref_channels
        # residual offsets and masks come from convolutions on concat(current LR feature, reference feature)
        self.offset_conv1 = conv3x3(lr_channels + ref_channels, oc)
        self.offset_conv2 = conv3x3(oc, oc)
        self.offset_mask = conv3x3(oc, 3 * TAPS * groups)
        # zero-initialised: residual offsets 0 and masks sigmoid(0) = 0.5, so training starts at the matched offsets
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        self.weight = nn.Parameter(torch.empty(ref_channels, ref_channels, KERNEL, KERNEL))
        self.bias = nn.Parameter(torch.zeros(ref_channels))
        # the deformable kernel's usual initialisation (mmcv): uniform(+-1/sqrt(fan_in)), bias 0
        bound = 1.0 / math.sqrt(ref_channels * TAPS)
        nn.init.uniform_(self.weight, -bound, bound)
        self.act = nn.LeakyReLU(LRELU_SLOPE)

    @torch.no_grad()
    def authors_init(self) -> None:
        """After :func:`rrsr_lib.blocks.authors_init_` has drawn every convolution from N(0, 0.02): the
        offset/mask convolution back to zero (the authors' ``re_init_dcn_offset``). The deformable kernel is a
        parameter of this unit, not a convolution module, so it keeps the constructor's mmcv init, as the
        authors' DynAgg (not matched by their "Conv"/"Linear" rule) does."""
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)

    def residual_offsets_and_mask(self, lr_feat: torch.Tensor, ref_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Learned part: ([B, 2*9*G, H, W] residual offsets in pixels (dy, dx), [B, 9*G, H, W] masks in (0, 1))."""
        f = self.act(self.offset_conv1(torch.cat((lr_feat, ref_feat), dim=1)))
        f = self.act(self.offset_conv2(f))
        o = self.offset_mask(f)
        n = 2 * TAPS * self.groups
        # first 2*9*G channels: residual offsets; last 9*G: mask logits -> mask = sigmoid
        return o[:, :n], torch.sigmoid(o[:, n:])

    def forward(self, lr_feat: torch.Tensor, ref_feat: torch.Tensor, pre_offsets: torch.Tensor,
                return_offsets: bool = False, sample_from: torch.Tensor | None = None):
        """Align ``ref_feat`` to ``lr_feat``.

        lr_feat: [B, lr_channels, H, W]; ref_feat: [B, ref_channels, H, W] (same canvas size);
        pre_offsets: matched offsets, either [B, 9, H, W, 2] with (x, y) last (rrsr_lib.offsets.pre_offsets)
        or already in DCN layout [B, 2*9*G, H, W] (rrsr_lib.offsets.to_deform_offsets).
        sample_from: None (the taps read ``ref_feat``, the authors' case), or a [B, ref_channels, Hm, Wm] map of
        any size that the taps read instead, the offsets then pointing into it (inference only:
        rrsr_lib.reference_grid); ``ref_feat`` is then only what the offset convolutions see at each position.
        Returns aligned [B, ref_channels, H, W] (after LeakyReLU(0.1)); with ``return_offsets`` also a dict
        {"offset": total offsets [B, 18G, H, W], "residual": learned part, "mask": [B, 9G, H, W]}.
        """
        if lr_feat.dim() != 4 or ref_feat.dim() != 4 or lr_feat.shape[2:] != ref_feat.shape[2:] \
                or lr_feat.shape[0] != ref_feat.shape[0]:
            raise InputError(f"lr_feat {tuple(lr_feat.shape)} and ref_feat {tuple(ref_feat.shape)} must be [B, C, H, W] "
                             "with the same B, H, W (pad both to a common canvas)")
        if lr_feat.shape[1] != self.lr_channels or ref_feat.shape[1] != self.ref_channels:
            raise InputError(f"this unit expects {self.lr_channels} LR and {self.ref_channels} reference channels, "
                             f"got {lr_feat.shape[1]} and {ref_feat.shape[1]}")
        if pre_offsets.dim() == 5:
            pre_offsets = to_deform_offsets(pre_offsets, self.groups)
        expected = (ref_feat.shape[0], 2 * TAPS * self.groups, *ref_feat.shape[2:])
        if tuple(pre_offsets.shape) != expected:
            raise InputError(f"pre_offsets must be [B, 9, H, W, 2] or {list(expected)}, got {tuple(pre_offsets.shape)}")
        residual, mask = self.residual_offsets_and_mask(lr_feat, ref_feat)
        # offsets = matched pre-offsets (repeated for every group) + learned residual
        offset = pre_offsets.to(residual.dtype) + residual
        if sample_from is None:
            out = self.act(modulated_deform_conv(ref_feat, offset, mask, self.weight, self.bias, self.path))
        else:
            out = self.act(deform_conv_from_map(sample_from, offset, mask, self.weight, self.bias))
        if return_offsets:
            return out, {"offset": offset, "residual": residual, "mask": mask}
        return out
