"""Small building blocks shared by the restoration networks (RRSR and the comparison models).

Nothing here is specific to RRSR's ideas: a 3x3 convolution, the residual block without batch
normalisation that EDSR introduced and the C2-Matching code base (which the RRSR authors fork) uses
everywhere, a stack of such blocks, and the conv + PixelShuffle x2 upsampler. They live in one module
so that RRSR (:mod:`rrsr_lib.models`) and the comparison models reuse exactly the same pieces.

All blocks take and return float feature maps [B, C, H, W] (any H, W) and are device-agnostic.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["conv3x3", "ResidualBlock", "residual_stack", "Upsample2x", "scale_init_", "authors_init_", "LRELU_SLOPE",
           "AUTHORS_INIT_STD"]

# RRSR.md: the restoration network uses LeakyReLU(0.1) between its parts.
LRELU_SLOPE = 0.1


def conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    """A 3x3 convolution with zero padding 1 (output size = input size): [B, Cin, H, W] -> [B, Cout, H, W]."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


@torch.no_grad()
def scale_init_(module: nn.Module, scale: float = 0.1) -> nn.Module:
    """Kaiming-normal initialisation of every conv/linear weight times ``scale``, biases 0.

    The authors' code base (BasicSR, via C2-Matching) initialises residual blocks this way with
    scale 0.1, so that a deep stack starts close to the identity. Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            m.weight.mul_(scale)
            if m.bias is not None:
                m.bias.zero_()
    return module


# RRSR.md, "Facts checked against the authors' code": srntt_init_weights(net, "normal", init_gain=0.02)
AUTHORS_INIT_STD = 0.02


@torch.no_grad()
def authors_init_(*modules: nn.Module) -> None:
    """The authors' initialisation of a restoration network, in place.

    Their RestorationNet calls ``srntt_init_weights(self, init_type="normal", init_gain=0.02)``: every module
    whose class name contains "Conv" or "Linear" gets weights from N(0, 0.02) and biases 0. This overrides
    the 0.1-scaled Kaiming initialisation of the residual blocks (:func:`scale_init_`) and every other
    convolution's. Then modules with their own rule apply it (a method ``authors_init()``, called after the
    pass over the convolutions, so that it wins): the expert kernels of the selection block (N(0, 0.02),
    biases 0) and the alignment units (offset/mask convolution zero; the deformable kernel keeps mmcv's
    uniform init, because the authors' deformable module is named "DynAgg" and the rule above skips it).
    Give only the trained parts: the frozen VGG and matching trunks keep their pretrained weights.
    """
    for module in modules:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                # w ~ N(0, 0.02), b = 0
                nn.init.normal_(m.weight, 0.0, AUTHORS_INIT_STD)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in module.modules():
            if hasattr(m, "authors_init"):
                m.authors_init()


class ResidualBlock(nn.Module):
    """x + conv(ReLU(conv(x))), 3x3 convolutions, no batch normalisation (EDSR's block).

    [B, C, H, W] -> [B, C, H, W]. RRSR.md: "16 residual blocks (no BN)". Inside the block we use ReLU,
    as BasicSR's block that the authors' code base uses; LeakyReLU(0.1) sits between the parts of
    the network (after the first convolution, after upsampling, in the tail).
    """

    def __init__(self, channels: int = 64):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)
        self.relu = nn.ReLU(inplace=True)
        scale_init_(self, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # out = x + W2 * ReLU(W1 * x + b1) + b2
        return x + self.conv2(self.relu(self.conv1(x)))


def residual_stack(channels: int, blocks: int) -> nn.Sequential:
    """``blocks`` residual blocks in a row (an empty Sequential, i.e. the identity, for 0)."""
    return nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])


class Upsample2x(nn.Module):
    """conv 3x3 (C -> 4C), PixelShuffle(2), LeakyReLU(0.1): [B, C, H, W] -> [B, C, 2H, 2W].

    RRSR.md: after the x1 stage and after the x2 cascade, "conv + PixelShuffle x2".
    """

    def __init__(self, channels: int = 64):
        super().__init__()
        self.conv = conv3x3(channels, 4 * channels)
        self.shuffle = nn.PixelShuffle(2)
        self.act = nn.LeakyReLU(LRELU_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shuffle(self.conv(x)))
