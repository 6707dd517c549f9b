"""The RRSR network, assembled from its parts; and the model registry ``build_model(name, config)``.

Idea: RRSR restores the LR image at three scales (x1 = LR size, x2, x4 = HR size). At each scale the
reference texture (VGG relu3_1 / relu2_1 / relu1_1 of the reference) is aligned to the current LR
feature by deformable convolutions seeded by the matches (rrsr_lib.alignment), a reference-aware
block selects what to use (rrsr_lib.selection), and residual blocks restore. At x2 and x4 this is
done by a *cascade* of 3 stages, each re-estimating its residual offsets from the LR feature that the
stages before it improved ("progressive alignment and selection")::

    LR --conv+16 blocks--> F
    x1:  F = F + blocks16(select(F, align(F, relu3_1)))                      then conv + PixelShuffle x2
    x2:  3 x [F = F + blocks5(select(F, align(F, relu2_1)))]                 then conv + PixelShuffle x2
    x4:  3 x [F = F + blocks5(select(F, align(F, relu1_1)))]
    SR = conv(LeakyReLU(conv(F))) + bilinear_x4(LR)

where select(.) returns conv_experts(x) * gate, with no activation after it, as the authors' block.
Every trained part starts from the authors' initialisation (:func:`rrsr_lib.blocks.authors_init_`: every
convolution and Linear N(0, 0.02), biases 0, experts N(0, 0.02), offset/mask convolutions zero).

The matching front end (rrsr_lib.front_end; frozen: contrastive VGG16 trunks, patch matching, index ->
flow -> per-tap pre-offsets) runs once, at the LR scale, and its offsets seed every alignment unit (x2, x4:
flow upsampled and scaled, rrsr_lib.offsets).

Parameter count: the authors' restoration network has 22,594,651 trainable parameters (RRSR.md,
counted from their architecture). The network below has exactly that many. What we had to infer:
the alignment unit's offset branch is C2-Matching's (conv3x3 (64+C)->C, conv3x3 C->C, then a
zero-initialised conv3x3 C->216 for 8 groups x 9 taps x (dy, dx, mask)) and the deformable kernel
is C->C; the rest of the count (12,170,032, the "about 12.17 M in the 7 selection blocks") is met
exactly by experts with one bias each, routing Linear(Cin, 16) with bias, and a gate whose squeeze
keeps Cin channels (conv1x1 Cin->Cin, ReLU, conv1x1 Cin->64). That design also gives about 88 GMACs
for a 40x40 LR input without VGG and matching, the authors' other count (rrsr_lib.model_counts counts both).
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .alignment import DEFORM_PATHS, AlignmentUnit
from .blocks import LRELU_SLOPE, Upsample2x, authors_init_, conv3x3, residual_stack
from .device import fair_threads
from .errors import InputError
from .front_end import LR_UP_MODES, SCALES, MatchingFrontEnd, default_matching_features
from .registry import MODELS, build_model, register_model
from .selection import SELECTION_ACTIVATIONS, PlainHead, SelectionBlock
from .vgg import VGGFeatures

__all__ = ["check_inputs", "RRSRConfig", "CONFIGS", "ABLATIONS", "resolve_config", "RRSR", "Stage", "ContentExtractor",
           "MODELS", "register_model", "build_model", "offset_scale"]

# reference texture per scale: VGG layer and its channels (RRSR.md, pipeline step 4)
TEXTURE = {1: ("relu3_1", 256), 2: ("relu2_1", 128), 4: ("relu1_1", 64)}


@dataclass(frozen=True)
class RRSRConfig:
    """Sizes of the RRSR network. The defaults are the authors' ("paper")."""
    channels: int = 64                      # width of the LR feature everywhere
    content_blocks: int = 16                # residual blocks of the content extractor
    x1_blocks: int = 16                     # residual blocks of the x1 stage
    stage_blocks: int = 5                   # residual blocks of each x2 / x4 cascade stage
    stages: tuple[int, int, int] = (1, 3, 3)  # stages at x1, x2, x4
    experts: int = 16                       # CondConv experts per selection block
    groups: int = 8                         # deformable groups of the alignment units
    gate_hidden: int | None = None          # squeeze width of the channel gate (None: Cin, as inferred)
    offset_channels: tuple[int | None, int | None, int | None] = (None, None, None)  # offset-branch width at x1/x2/x4 (None: ref channels)
    selection: bool = True                  # False: ablation "no selection" (plain conv head)
    ref_scales: tuple[int, ...] = (1, 2, 4)  # scales that use the reference; (1,): ablation "single-scale alignment"
    deform_path: str = "auto"               # "auto", "torchvision" or "sampling" (rrsr_lib.alignment)
    vgg_weights: str = "auto"               # rrsr_lib.vgg.load_vgg's choice of pretrained weights
    matching: str = "auto"                  # matching features: "contrastive" (the shipped trunks of rrsr_lib.contrastive),
                                            # "vgg" (ImageNet VGG stand-in) or "auto" (contrastive if shipped, else vgg, announced)
    patch_size: int = 3                     # matching patch size
    # the authors' network is "none" / "pil"; "lrelu" / "torch" rebuild the networks shipped before 2026-12-02
    selection_activation: str = "none"      # after the selection gate: "none" (authors) or "lrelu" (legacy)
    lr_up: str = "pil"                      # matching input LR_up: "pil" (authors) or "torch" (legacy)

    def __post_init__(self):
        if len(self.stages) != 3 or any(int(s) < 1 for s in self.stages):
            raise InputError(f"stages must be three counts >= 1 (x1, x2, x4), got {self.stages}")
        if not set(self.ref_scales) <= set(SCALES) or not self.ref_scales:
            raise InputError(f"ref_scales must be a non-empty subset of {SCALES}, got {self.ref_scales}")
        if self.matching not in ("auto", "contrastive", "vgg"):
            raise InputError(f"matching must be 'auto', 'contrastive' or 'vgg', got {self.matching!r}")
        if self.selection_activation not in SELECTION_ACTIVATIONS:
            raise InputError(f"selection_activation must be one of {SELECTION_ACTIVATIONS}, got {self.selection_activation!r}")
        if self.lr_up not in LR_UP_MODES:
            raise InputError(f"lr_up must be one of {LR_UP_MODES}, got {self.lr_up!r}")
        if self.deform_path not in DEFORM_PATHS:
            raise InputError(f"deform_path must be one of {DEFORM_PATHS}, got {self.deform_path!r}")
        if any(c % self.groups for _, c in TEXTURE.values()):
            raise InputError(f"groups={self.groups} must divide the texture channels 64, 128 and 256")
        if self.channels < 2 or self.experts < 1:
            raise InputError(f"channels must be >= 2 and experts >= 1, got {self.channels} and {self.experts}")


CONFIGS: dict[str, RRSRConfig] = {
    # the authors' sizes: 64 channels, 16 residual blocks, 16 experts, 8 deformable groups, cascades 1/3/3, 5 blocks per stage
    "paper": RRSRConfig(),
    # the same network with smaller numbers, for training on a CPU in minutes (texture channels stay VGG's)
    "small": RRSRConfig(channels=32, content_blocks=2, x1_blocks=2, stage_blocks=1, stages=(1, 2, 2), experts=4,
                        gate_hidden=32, offset_channels=(32, 32, 16)),
}
# ablations, applied to any base configuration: "paper_no_selection", "small_single_scale", ...
ABLATIONS: dict[str, dict[str, Any]] = {
    "no_selection": {"selection": False},      # plain convolution head instead of the reference-aware block
    "no_cascade": {"stages": (1, 1, 1)},       # one stage per scale
    "single_scale": {"ref_scales": (1,)},      # the reference is aligned and used at x1 only
}


def resolve_config(config: str | RRSRConfig | dict = "paper", **overrides) -> RRSRConfig:
    """An :class:`RRSRConfig` from a name ("paper", "small", "paper_no_cascade", ...), a config, or a dict
    of field values (applied to "paper"); keyword ``overrides`` replace fields last."""
    if isinstance(config, RRSRConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = resolve_config("paper", **config)
    elif isinstance(config, str):
        names = sorted(CONFIGS) + [f"{b}_{a}" for b in sorted(CONFIGS) for a in sorted(ABLATIONS)]
        base, _, ablation = config.partition("_")
        if base not in CONFIGS or (ablation and ablation not in ABLATIONS):
            raise InputError(f"unknown RRSR configuration {config!r}; choose one of {names}")
        cfg = dataclasses.replace(CONFIGS[base], **ABLATIONS.get(ablation, {}))
    else:
        raise InputError(f"config must be a name, an RRSRConfig or a dict, got {type(config).__name__}")
    fields = {f.name for f in dataclasses.fields(RRSRConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InputError(f"unknown RRSR config field(s) {unknown}; fields are {sorted(fields)}")
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


# ----------------------------------------------------------------------------------------------
# parts
# ----------------------------------------------------------------------------------------------
class ContentExtractor(nn.Module):
    """LR image -> LR feature: conv3x3 3->C, LeakyReLU(0.1), residual blocks. [B,3,h,w] -> [B,C,h,w]."""

    def __init__(self, channels: int = 64, blocks: int = 16):
        super().__init__()
        self.conv_first = conv3x3(3, channels)
        self.act = nn.LeakyReLU(LRELU_SLOPE)
        self.body = residual_stack(channels, blocks)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.body(self.act(self.conv_first(lr)))


class Stage(nn.Module):
    """One stage of a scale: align the reference, select, restore; with a skip over the stage.

    out = x + blocks(select(x, align(x, ref_feat)))  (ref_channels > 0), or x + blocks(x) (no reference).
    x: [B, C, H, W]; ref_feat: [B, ref_channels, H, W]; pre_offsets: [B, 18G, H, W] or [B, 9, H, W, 2];
    valid: (h, w), the unpadded top-left region at this scale (None: the whole map).
    """

    def __init__(self, channels: int, ref_channels: int, blocks: int, cfg: RRSRConfig, offset_channels: int | None):
        super().__init__()
        self.uses_reference = ref_channels > 0
        if self.uses_reference:
            self.align = AlignmentUnit(channels, ref_channels, cfg.groups, offset_channels, cfg.deform_path)
            if cfg.selection:
                self.select = SelectionBlock(channels, ref_channels, channels, cfg.experts, cfg.gate_hidden,
                                             cfg.selection_activation)
            else:
                self.select = PlainHead(channels, ref_channels, channels)
        self.body = residual_stack(channels, blocks)

    def forward(self, x, ref_feat=None, pre_offsets=None, valid=None, trace: list | None = None, sample_from=None):
        # sample_from: see AlignmentUnit.forward (a whole reference's feature for an LR tile; None: ref_feat)
        h = x
        if self.uses_reference:
            aligned, off = self.align(x, ref_feat, pre_offsets, return_offsets=True, sample_from=sample_from)
            h, gates = self.select(x, aligned, valid, return_gates=True)
            if trace is not None:
                trace.append({**{k: v.detach() for k, v in off.items()}, **{k: v.detach() for k, v in gates.items()}})
        return x + self.body(h)


# ----------------------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------------------
# values may exceed [0, 1] by this much (float rounding of images that were x / 255)
_RANGE_SLACK = 1e-3


def check_inputs(lr, ref, dtype: torch.dtype | None = None, check_range: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The input check of every model's call ``model(lr, ref)``; returns (lr, ref), converted to ``dtype``.

    lr [B, 3, h, w] and ref [B, 3, Hr, Wr]: float tensors, B >= 1, on one device, every value finite and (with
    ``check_range``) in [0, 1] up to rounding. float64, float16 and bfloat16 inputs are converted to ``dtype``
    (the model's parameters' dtype). Anything else raises one InputError naming the tensor and the fix. Models
    check the range in eval mode only: in training, pass 2 of reciprocal learning takes the unclamped SR as
    its reference.
    """
    out = []
    for name, t in (("lr", lr), ("ref", ref)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] != 3 or not t.dtype.is_floating_point:
            raise InputError(f"{name} must be a float tensor [B, 3, H, W] with values in [0, 1], "
                             f"got {getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        if t.shape[0] == 0 or t.shape[2] == 0 or t.shape[3] == 0:
            raise InputError(f"{name} is empty (shape {tuple(t.shape)}): give at least one image of at least 1x1 pixels")
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise InputError(f"{name} has {bad} non-finite value(s) (NaN or Inf); fix the image or replace them, "
                             f"e.g. torch.nan_to_num({name}).clamp(0, 1)")
        if check_range:
            lo, hi = float(t.detach().min()), float(t.detach().max())
            if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
                raise InputError(f"{name} has values in [{lo:.4g}, {hi:.4g}], outside [0, 1]: images are float in "
                                 "[0, 1] (divide 8-bit images by 255, e.g. rrsr_lib.degradation.to_tensor)")
        out.append(t.to(dtype) if dtype is not None and t.dtype != dtype else t)
    lr, ref = out
    if lr.shape[0] != ref.shape[0]:
        raise InputError(f"lr and ref must have the same batch size, got {lr.shape[0]} and {ref.shape[0]}")
    if lr.device != ref.device:
        raise InputError(f"lr is on {lr.device} and ref on {ref.device}; move both to the model's device")
    return lr, ref


class RRSR(nn.Module):
    """RRSR: model(lr, ref) -> sr.

    lr: [B, 3, h, w] float in [0, 1]; ref: [B, 3, Hr, Wr] float in [0, 1] (any sizes, h, w >= 1).
    Returns [B, 3, 4h, 4w]; clamped to [0, 1] in eval mode (in training mode unclamped, as the
    authors train, so that the loss sees the raw output).
    Inside, LR and Ref are zero-padded at the bottom/right to a common canvas (LR canvas x4 = Ref
    canvas, at least 3x3 LR pixels), as the authors do for test pairs of different size, and the output
    is cropped back. The selection blocks' pools cover the unpadded LR region only.

    config: an :class:`RRSRConfig`. matching_features: the module that gives matching features
    (default: the ImageNet-VGG stand-in, announced). texture: the frozen VGGFeatures giving relu1_1/2_1/3_1
    (default: rrsr_lib.vgg with ``config.vgg_weights``).
    """

    def __init__(self, config: RRSRConfig | None = None, matching_features: nn.Module | None = None,
                 texture: VGGFeatures | None = None):
        super().__init__()
        cfg = config or RRSRConfig()
        self.config = cfg
        c = cfg.channels
        # frozen reference texture: VGG relu1_1 (HR), relu2_1 (HR/2), relu3_1 (HR/4)
        self.texture = texture if texture is not None else VGGFeatures(("relu1_1", "relu2_1", "relu3_1"), weights=cfg.vgg_weights)
        self.texture.requires_grad_(False)
        if matching_features is None:
            matching_features = default_matching_features(cfg.matching, self.texture)
        self.matcher = MatchingFrontEnd(matching_features, cfg.groups, cfg.patch_size, cfg.lr_up)
        self.content = ContentExtractor(c, cfg.content_blocks)
        blocks = {1: cfg.x1_blocks, 2: cfg.stage_blocks, 4: cfg.stage_blocks}

        def stages(scale, n):
            ref_ch = TEXTURE[scale][1] if scale in cfg.ref_scales else 0
            oc = cfg.offset_channels[SCALES.index(scale)]
            return nn.ModuleList(Stage(c, ref_ch, blocks[scale], cfg, oc) for _ in range(n))

        self.x1 = stages(1, cfg.stages[0])
        self.up1 = Upsample2x(c)
        self.x2 = stages(2, cfg.stages[1])
        self.up2 = Upsample2x(c)
        self.x4 = stages(4, cfg.stages[2])
        # tail: conv 64 -> 32, LeakyReLU, conv 32 -> 3
        self.tail = nn.Sequential(conv3x3(c, c // 2), nn.LeakyReLU(LRELU_SLOPE), conv3x3(c // 2, 3))
        # the authors' initialisation of every trained part (the frozen VGG and matching trunks keep theirs)
        authors_init_(self.content, self.x1, self.up1, self.x2, self.up2, self.x4, self.tail)

    @staticmethod
    def canvas_size(lr_hw: tuple[int, int], ref_hw: tuple[int, int]) -> tuple[int, int]:
        """LR-scale size of the common canvas: max(h, ceil(Hr/4), 3) x max(w, ceil(Wr/4), 3)."""
        return (max(lr_hw[0], math.ceil(ref_hw[0] / 4), 3), max(lr_hw[1], math.ceil(ref_hw[1] / 4), 3))

    def forward(self, lr: torch.Tensor, ref: torch.Tensor, trace: dict | None = None,
                original_size: tuple[int, int] | None = None) -> torch.Tensor:
        """SR image [B, 3, 4h, 4w], or [B, 3, H, W] when ``original_size`` = (H, W) is given.

        original_size: for inputs already padded the authors' way (HR input and reference zero-padded at HR
        to a common size, then the LR made from the padded HR): the HR size of the unpadded image. The
        selection pools then cover that region only, and the output is cropped to it. Without it, ``lr`` is
        the whole image and the padding (if the reference is larger) happens here, at LR scale.
        ``trace``: an optional dict that receives the matching result and, per scale, each stage's offsets,
        masks, routing weights and gates (for the notebooks).
        """
        lr, ref = check_inputs(lr, ref, self.content.conv_first.weight.dtype, check_range=not self.training)
        if not self.training:
            # inference: fewer CPU threads when other processes hold cores (rrsr_lib.device.fair_threads)
            with fair_threads():
                return self._forward(lr, ref, trace, original_size)
        return self._forward(lr, ref, trace, original_size)

    def _forward(self, lr, ref, trace, original_size):
        b, _, h, w = lr.shape
        hc, wc = self.canvas_size((h, w), ref.shape[2:])
        if original_size is not None:
            hv, wv = (int(v) for v in original_size)
            if not (1 <= hv <= 4 * h and 1 <= wv <= 4 * w):
                raise InputError(f"original_size {original_size} must lie within the padded HR size {(4 * h, 4 * w)}")
        else:
            hv, wv = 4 * h, 4 * w
        # zero-pad both to the common canvas (bottom and right), as the authors do for test pairs
        lr_c = F.pad(lr, (0, wc - w, 0, hc - h))
        ref_c = F.pad(ref, (0, 4 * wc - ref.shape[3], 0, 4 * hc - ref.shape[2]))
        matched = self.matcher(lr_c, ref_c)
        texture = self.texture(ref_c)
        if trace is not None:
            trace.update(matching={k: v for k, v in matched.items()}, canvas=(hc, wc), valid=(hv // 4, wv // 4))
        base = None
        if (hc, wc) != (h, w):
            # padded here: the global residual is the bilinear x4 of the unpadded LR (the authors upsample the
            # canvas, whose LR they made from the padded HR), so that the last rows/columns do not blend in zeros
            base = F.pad(F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False),
                         (0, 4 * (wc - w), 0, 4 * (hc - h)))
        sr = self.restore(lr_c, {s: matched[s] for s in SCALES}, texture, (hv, wv), base, trace)[:, :, :hv, :wv]
        return sr if self.training else sr.clamp(0, 1)

    def restore(self, lr: torch.Tensor, pre_offsets: dict, texture: dict, original_size: tuple[int, int] | None = None,
                base: torch.Tensor | None = None, trace: dict | None = None, sample_from: dict | None = None) -> torch.Tensor:
        """The restoration network alone, on a canvas: the authors' ``RestorationNet.forward``.

        lr: [B, 3, h, w] LR canvas in [0, 1]. pre_offsets: {1: ..., 2: ..., 4: ...} matched offsets per scale,
        each [B, 18G, s*h, s*w] (DCN layout) or [B, 9, s*h, s*w, 2] ((x, y) last, the authors' layout).
        texture: VGG features of the reference canvas {"relu3_1": [B,256,h,w], "relu2_1": [B,128,2h,2w],
        "relu1_1": [B,64,4h,4w]}. original_size: (H, W) HR pixels of the unpadded region (the pools of the
        selection blocks at scale s cover H // (4/s) x W // (4/s)), None for the whole canvas. base: the
        global residual [B, 3, 4h, 4w] (None: bilinear x4 of ``lr``, as the authors). sample_from: None (the
        authors' case), or texture maps of a whole reference, keyed like ``texture``, that the alignment units
        sample instead, ``texture`` then being only the unaligned context of each position
        (rrsr_lib.reference_grid, inference). Returns [B, 3, 4h, 4w], unclamped, for the whole canvas.
        """
        x = self.content(lr)
        for scale, stages, up in ((1, self.x1, self.up1), (2, self.x2, self.up2), (4, self.x4, None)):
            ref_feat = texture[TEXTURE[scale][0]] if scale in self.config.ref_scales else None
            # the authors' pools: original_size // 4 at x1, // 2 at x2, // 1 at x4
            valid = None if original_size is None else (original_size[0] // (4 // scale), original_size[1] // (4 // scale))
            stage_trace = [] if trace is not None else None
            source = sample_from[TEXTURE[scale][0]] if sample_from is not None and ref_feat is not None else None
            for stage in stages:
                x = stage(x, ref_feat, pre_offsets[scale], valid, stage_trace, source)
            if trace is not None:
                trace[f"x{scale}"] = stage_trace
            if up is not None:
                x = up(x)
        if base is None:
            # global residual: + bilinear x4 of the LR canvas (the authors' `base`)
            base = F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)
        return self.tail(x) + base


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------
@register_model("rrsr")
def _build_rrsr(config: Any = "paper", matching_features: nn.Module | None = None, texture: VGGFeatures | None = None,
                **overrides) -> RRSR:
    return RRSR(resolve_config(config, **overrides), matching_features=matching_features, texture=texture)


# the convolutions that predict residual offsets and masks (the authors give them their own learning rates)
_OFFSET_PARAM = re.compile(r"(?:^|\.)(x1|x2|x4)\.\d+\.align\.(offset_conv1|offset_conv2|offset_mask)\.(weight|bias)$")


def offset_scale(name: str) -> str | None:
    """"x1", "x2" or "x4" for a parameter name of an offset/mask convolution at that scale, else None.

    e.g. "x2.1.align.offset_mask.weight" -> "x2" (RRSR.md: offset learning rates 1e-6 / 1e-5 / 1e-4).
    """
    m = _OFFSET_PARAM.search(name)
    return m.group(1) if m else None
