"""Feature selection: the reference-aware block (a dynamic convolution with a channel gate).

Idea (RRSR's second idea, second half): after alignment, the network still has to decide, per image,
how much of the aligned reference texture to trust and which of it to use: a well-matched
reference deserves other filters than a poorly matched one. RRSR's "reference-aware block" makes the
convolution that fuses the LR feature with the aligned reference feature depend on the pair:

* a conditionally parameterised convolution (CondConv): E expert kernels W_e (3x3) mixed per sample,

      r = sigmoid(Linear(GAP(x)))                       [B, E],  x = concat(LR feature, aligned ref)
      y = conv(x, sum_e r_e W_e) + sum_e r_e b_e        (one kernel per sample)

  with E = 16. Mixing kernels first and convolving once costs one convolution, not E.
* a squeeze-excitation channel gate, also computed from the pooled input:

      s = sigmoid(conv1x1(ReLU(conv1x1(GAP(x)))))      [B, 64, 1, 1]
      out = y * s                                       (no activation after the gate, as the authors)

The authors' block (``RefAwareBlock`` in their arch_util.py) builds a LeakyReLU but its forward returns
``output * x_se``: the activation is never called. The block here does the same. The networks this
project shipped before 2026-12-02 were trained with ``LeakyReLU(y * s)``; ``activation="lrelu"`` builds
that variant so that they keep computing what they were trained as (rrsr_lib.checkpoints).

When inputs are zero-padded to a common canvas (test images of different sizes), the global
average pool covers the unpadded region only: padding must not change the statistics that route
the experts (:func:`masked_global_average_pool`).

Sizes (inferred from the authors' parameter count, see rrsr_lib.models): experts carry a bias each,
the routing is Linear(Cin, E) with bias, and the gate's squeeze has no reduction: conv1x1 Cin -> Cin,
ReLU, conv1x1 Cin -> 64. With these, the 7 blocks of the paper network hold 12,170,032 parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AUTHORS_INIT_STD, LRELU_SLOPE, conv3x3
from .errors import InputError

__all__ = ["masked_global_average_pool", "CondConv2d", "ChannelGate", "SelectionBlock", "PlainHead",
           "SELECTION_ACTIVATIONS"]

# "none": the authors' block (no activation after the gate); "lrelu": the variant shipped before 2026-12-02
SELECTION_ACTIVATIONS = ("none", "lrelu")


def masked_global_average_pool(x: torch.Tensor, valid=None) -> torch.Tensor:
    """Per-channel mean over the unpadded region: [B, C, H, W] -> [B, C].

    valid: None (the whole map), (h, w) (the top-left h x w region holds the image, the rest is
    padding: the authors pad at the bottom and right), or a mask [B, 1, H, W] (1 = image, 0 = padding).
    """
    if x.dim() != 4:
        raise InputError(f"expected a feature map [B, C, H, W], got {tuple(x.shape)}")
    if valid is None:
        return x.mean(dim=(2, 3))
    if isinstance(valid, torch.Tensor):
        if valid.dim() != 4 or valid.shape[1] != 1 or valid.shape[2:] != x.shape[2:] or valid.shape[0] != x.shape[0]:
            raise InputError(f"valid mask must be [B, 1, H, W] = {[x.shape[0], 1, *x.shape[2:]]}, got {tuple(valid.shape)}")
        m = valid.to(x.dtype)
        return (x * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp_min(1.0)
    h, w = (int(v) for v in valid)
    if not (1 <= h <= x.shape[2] and 1 <= w <= x.shape[3]):
        raise InputError(f"valid size {h}x{w} must be between 1x1 and the map size {x.shape[2]}x{x.shape[3]}")
    return x[:, :, :h, :w].mean(dim=(2, 3))


class CondConv2d(nn.Module):
    """Conditionally parameterised convolution: E expert kernels mixed per sample, then one convolution.

    in_channels -> out_channels, kernel_size x kernel_size, zero padding kernel_size // 2.
    Parameters: weight [E, out, in, k, k], bias [E, out], routing Linear(in, E).
    forward(x [B, in, H, W], pooled [B, in]) -> (y [B, out, H, W], routing weights [B, E] in (0, 1)).
    """

    def __init__(self, in_channels: int, out_channels: int, experts: int = 16, kernel_size: int = 3):
        super().__init__()
        if experts < 1:
            raise InputError(f"experts must be >= 1, got {experts}")
        self.in_channels, self.out_channels, self.experts, self.kernel_size = in_channels, out_channels, experts, kernel_size
        self.weight = nn.Parameter(torch.empty(experts, out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(experts, out_channels))
        self.routing = nn.Linear(in_channels, experts)
        # at the start every routing weight is about sigmoid(0) = 0.5, so the mixed kernel is a sum of E
        # independent experts times 0.5; experts uniform in +-2/sqrt(E fan_in) give it the spread of a
        # default convolution (uniform +-1/sqrt(fan_in)): 0.5 * sqrt(E) * 2 / sqrt(E fan_in) = 1 / sqrt(fan_in)
        bound = 2.0 / math.sqrt(experts * in_channels * kernel_size * kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)

    @torch.no_grad()
    def authors_init(self) -> None:
        """The authors' initialisation (their RefAwareBlock): experts N(0, 0.02), expert biases 0
        (called by :func:`rrsr_lib.blocks.authors_init_`; the routing Linear gets N(0, 0.02) there)."""
        nn.init.normal_(self.weight, 0.0, AUTHORS_INIT_STD)
        nn.init.zeros_(self.bias)

    def routing_weights(self, pooled: torch.Tensor) -> torch.Tensor:
        """r = sigmoid(Linear(pooled)): [B, in] -> [B, E] (sigmoid, not softmax: experts are not exclusive)."""
        return torch.sigmoid(self.routing(pooled))

    def forward(self, x: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        if c != self.in_channels:
            raise InputError(f"CondConv2d expects {self.in_channels} input channels, got {c}")
        r = self.routing_weights(pooled)
        # per-sample kernel and bias: W_b = sum_e r[b, e] W_e, b_b = sum_e r[b, e] bias_e
        kernel = torch.einsum("be,eoikl->boikl", r, self.weight).reshape(b * self.out_channels, c, *self.weight.shape[3:])
        bias = (r @ self.bias).reshape(b * self.out_channels)
        # one grouped convolution: sample b (group b) is convolved with its own kernel
        y = F.conv2d(x.reshape(1, b * c, h, w), kernel, bias, padding=self.kernel_size // 2, groups=b)
        return y.view(b, self.out_channels, h, w), r


class ChannelGate(nn.Module):
    """Squeeze-excitation gate from a pooled vector: s = sigmoid(conv1x1(ReLU(conv1x1(p)))).

    in_channels -> hidden -> out_channels (RRSR: Cin -> Cin -> 64, see the module docstring).
    forward(pooled [B, in]) -> [B, out, 1, 1] in (0, 1).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int | None = None):
        super().__init__()
        hidden = in_channels if hidden is None else hidden
        self.squeeze = nn.Conv2d(in_channels, hidden, 1)
        self.excite = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        p = pooled[:, :, None, None]
        return torch.sigmoid(self.excite(F.relu(self.squeeze(p))))


class SelectionBlock(nn.Module):
    """RRSR's reference-aware block: concat(LR feature, aligned reference) -> 64 selected channels.

    lr_channels (64), ref_channels (256 / 128 / 64 at x1 / x2 / x4), out_channels (64), experts (16),
    gate_hidden (None = Cin, the authors' size as we infer it), activation ("none": the authors' block;
    "lrelu": LeakyReLU(0.1) after the gate, the variant the checkpoints shipped before 2026-12-02 were
    trained with).
    forward(lr_feat [B, lr, H, W], aligned [B, ref, H, W], valid=None, return_gates=False)
    -> [B, out, H, W], unbounded (and {"routing": [B, E], "gate": [B, out]} with ``return_gates``).
    ``valid``: see :func:`masked_global_average_pool`.
    """

    def __init__(self, lr_channels: int = 64, ref_channels: int = 256, out_channels: int = 64, experts: int = 16,
                 gate_hidden: int | None = None, activation: str = "none"):
        super().__init__()
        if activation not in SELECTION_ACTIVATIONS:
            raise InputError(f"activation must be one of {SELECTION_ACTIVATIONS}, got {activation!r}")
        cin = lr_channels + ref_channels
        self.in_channels = cin
        self.condconv = CondConv2d(cin, out_channels, experts)
        self.gate = ChannelGate(cin, out_channels, gate_hidden)
        self.activation = activation

    def forward(self, lr_feat: torch.Tensor, aligned: torch.Tensor, valid=None, return_gates: bool = False):
        x = torch.cat((lr_feat, aligned), dim=1)
        if x.shape[1] != self.in_channels:
            raise InputError(f"SelectionBlock expects {self.in_channels} channels in concat(LR, aligned ref), got {x.shape[1]}")
        # the pool covers the unpadded region only
        pooled = masked_global_average_pool(x, valid)
        y, r = self.condconv(x, pooled)
        s = self.gate(pooled)
        # out = y * s: the authors' RefAwareBlock returns `output * x_se`, with no activation after it
        out = y * s
        if self.activation == "lrelu":
            # legacy variant (checkpoints shipped before 2026-12-02): out = LeakyReLU(y * s)
            out = F.leaky_relu(out, LRELU_SLOPE)
        if return_gates:
            return out, {"routing": r, "gate": s.flatten(1)}
        return out


class PlainHead(nn.Module):
    """Ablation "no selection": a plain 3x3 convolution + LeakyReLU on concat(LR, aligned ref) (C2-Matching's head).

    Same call as :class:`SelectionBlock` (``valid`` is accepted and unused).
    """

    def __init__(self, lr_channels: int = 64, ref_channels: int = 256, out_channels: int = 64):
        super().__init__()
        self.conv = conv3x3(lr_channels + ref_channels, out_channels)
        self.act = nn.LeakyReLU(LRELU_SLOPE)

    def forward(self, lr_feat: torch.Tensor, aligned: torch.Tensor, valid=None, return_gates: bool = False):
        out = self.act(self.conv(torch.cat((lr_feat, aligned), dim=1)))
        return (out, {}) if return_gates else out
