"""Counting RRSR's size: trainable parameters per part, and multiply-accumulates per part for one LR input.

The paper gives two numbers for its restoration network (RRSR.md "Size (count)"): 22,594,651 trainable
parameters (:data:`AUTHORS_PARAMETERS`) and about 88 GMACs for a 40x40 LR input without VGG and matching
(:data:`AUTHORS_GMACS_40`). rrsr_lib.models builds the network to meet them; this module counts
(tests/test_models.py checks the counts, notebook 06 shows them).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .alignment import AlignmentUnit

if TYPE_CHECKING:   # for the annotations only: rrsr_lib.models does not import this module
    from .models import RRSR

__all__ = ["AUTHORS_PARAMETERS", "AUTHORS_SELECTION_PARAMETERS", "AUTHORS_GMACS_40", "count_parameters",
           "parameter_table", "count_macs"]

# RRSR.md "Size (count)": the authors' restoration network
AUTHORS_PARAMETERS = 22_594_651
AUTHORS_SELECTION_PARAMETERS = 12.17e6
AUTHORS_GMACS_40 = 88.0


def count_parameters(module: nn.Module, trainable: bool = True) -> int:
    """Number of (trainable, by default) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def parameter_table(model: RRSR) -> dict[str, int]:
    """Trainable parameters per part of an RRSR network: content, alignment, selection, residual blocks,
    upsampling, tail (and the total)."""
    parts = {"content extractor": 0, "alignment units": 0, "selection blocks": 0, "stage residual blocks": 0,
             "upsampling": 0, "tail": 0}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("content."):
            key = "content extractor"
        elif ".align." in name:
            key = "alignment units"
        elif ".select." in name:
            key = "selection blocks"
        elif name.startswith(("x1.", "x2.", "x4.")):
            key = "stage residual blocks"
        elif name.startswith(("up1.", "up2.")):
            key = "upsampling"
        elif name.startswith("tail."):
            key = "tail"
        else:
            raise RuntimeError(f"parameter {name} belongs to no part")
        parts[key] += p.numel()
    parts["total"] = sum(parts.values())
    return parts


def count_macs(model: RRSR, lr_hw: tuple[int, int] = (40, 40)) -> dict[str, int]:
    """Multiply-accumulates per part for one LR input of size lr_hw (h, w), without VGG and matching.

    Counted from the layer shapes and the scale each layer runs at (x1: h*w pixels, x2: 4hw, x4: 16hw):
    a convolution costs Cin/groups * k*k * Cout per output pixel; a deformable convolution counts as a
    3x3 convolution (its bilinear sampling is not included); a CondConv counts its one convolution
    plus mixing the E expert kernels; the routing Linear and the gate's 1x1 convolutions act on pooled
    vectors (one "pixel"). tests/test_models.py checks these numbers against hooks on a real forward pass.
    """
    from .selection import ChannelGate, CondConv2d

    h, w = lr_hw
    macs = {"content extractor": 0, "alignment units": 0, "selection blocks": 0, "stage residual blocks": 0,
            "upsampling": 0, "tail": 0}
    # the pixel count each top-level part runs at
    pixels = {"content": h * w, "x1": h * w, "up1": h * w, "x2": 4 * h * w, "up2": 4 * h * w, "x4": 16 * h * w,
              "tail": 16 * h * w}
    pooled = set()
    for mod in model.modules():
        if isinstance(mod, ChannelGate):
            pooled.update(id(m) for m in mod.modules())
    for name, mod in model.named_modules():
        top = name.split(".")[0]
        if top not in pixels:
            continue   # the frozen VGG and matching front end
        key = ("alignment units" if ".align" in name else "selection blocks" if ".select" in name
               else "content extractor" if top == "content" else "upsampling" if top.startswith("up")
               else "tail" if top == "tail" else "stage residual blocks")
        n = 1 if id(mod) in pooled else pixels[top]
        if isinstance(mod, nn.Conv2d):
            macs[key] += n * mod.out_channels * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            macs[key] += mod.in_features * mod.out_features
        elif isinstance(mod, AlignmentUnit):
            # the deformable kernel: ref_channels x 9 multiply-adds per output value
            macs[key] += n * mod.weight.numel()
        elif isinstance(mod, CondConv2d):
            # one convolution with the mixed kernel, plus mixing E kernels (E multiply-adds per kernel entry)
            macs[key] += n * mod.weight[0].numel() + mod.weight.numel()
    macs["total"] = sum(macs.values())
    return macs
