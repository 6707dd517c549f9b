"""Comparison models: what RRSR is measured against, built from the same parts, with the same call.

The paper's claims are comparative: reciprocal learning improves *several* RefSR networks, and RRSR
beats them. To test such claims here, every comparison model is written with the library's own
building blocks (:mod:`rrsr_lib.blocks`, :mod:`rrsr_lib.alignment`, :mod:`rrsr_lib.selection`,
:mod:`rrsr_lib.matching`, :mod:`rrsr_lib.models`) and has the call of every model of the library::

    model(lr, ref) -> sr      lr [B,3,h,w], ref [B,3,Hr,Wr] in [0,1]  ->  sr [B,3,4h,4w]

(unclamped in training mode, clamped to [0, 1] in eval mode, as :class:`rrsr_lib.models.RRSR`).
Each has a "paper" and a "small" configuration (same code, other numbers) and is registered in
:func:`rrsr_lib.models.build_model` under its name:

* ``"sisr"``: the single-image baseline: RRSR's backbone (content extractor, x1 stage, x2 and x4
  cascades, upsamplers, tail, bilinear global residual) with every reference branch removed. It
  accepts a reference and ignores it. Under reciprocal learning its second pass is then simply one
  more training image (the warped reference), with no gradient into pass 1.
* ``"c2"``: C2-Matching's restoration network (CVPR 2021), the network RRSR's code forks: at each
  scale *one* alignment unit (matched offsets + learned residual, modulated deformable conv), a plain
  convolution head on concat(LR feature, aligned reference) and 16 residual blocks; no cascade, no
  selection. In the paper configuration it has 8,865,547 trainable parameters, exactly the count of
  the authors' C2-Matching restoration network.
* ``"ttsr"``: a TTSR-style texture transformer (Yang et al., CVPR 2020): queries from the upsampled
  LR, keys from the reference blurred the same way (down x4, up x4), values from the reference, all
  VGG features; *hard attention* transfers, for every LR position, the best-matching reference patch
  of the values at three scales (relu3_1, relu2_1, relu1_1; patches 3, 6, 12 px wide, folded back);
  *soft attention* weights the fused texture by the match's cosine similarity, upsampled to each scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import LRELU_SLOPE, Upsample2x, authors_init_, conv3x3, residual_stack
from .errors import InputError
from .matching import match_patches, normalize_pixels
from .models import RRSR, ContentExtractor, check_inputs, register_model, resolve_config
from .vgg import VGGFeatures

__all__ = ["SISRConfig", "SingleImageSR", "C2_CONFIGS", "C2Matching", "TTSRConfig", "TextureTransformer", "TTSR",
           "C2_AUTHORS_PARAMETERS"]

# C2-Matching's restoration network, counted from the authors' architecture (RRSR.md, "Size")
C2_AUTHORS_PARAMETERS = 8_865_547


def _config(configs: dict, config, kind: str):
    if isinstance(config, str):
        if config not in configs:
            raise InputError(f"unknown {kind} configuration {config!r}; choose one of {sorted(configs)}")
        return configs[config]
    return config


class _SkipStage(nn.Module):
    """x + blocks(x): a stage of the backbone with no reference branch. [B,C,H,W] -> [B,C,H,W]."""

    def __init__(self, channels: int, blocks: int):
        super().__init__()
        self.body = residual_stack(channels, blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


# ----------------------------------------------------------------------------------------------
# sisr: RRSR's backbone without a reference
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SISRConfig:
    """Sizes of the single-image baseline; the defaults are RRSR's backbone ("paper")."""
    channels: int = 64
    content_blocks: int = 16
    x1_blocks: int = 16
    stage_blocks: int = 5
    stages: tuple[int, int, int] = (1, 3, 3)


SISR_CONFIGS = {"paper": SISRConfig(),
                # the sizes of rrsr_lib.models.CONFIGS["small"]
                "small": SISRConfig(channels=32, content_blocks=2, x1_blocks=2, stage_blocks=1, stages=(1, 2, 2))}


class SingleImageSR(nn.Module):
    """RRSR's backbone with the reference branches removed: model(lr, ref) -> sr, ``ref`` is ignored.

    LR -> conv + residual blocks -> x1 stage (x + blocks(x)) -> conv+PixelShuffle x2 -> x2 stages ->
    conv+PixelShuffle x2 -> x4 stages -> conv, LeakyReLU, conv -> + bilinear x4 of LR.
    """

    def __init__(self, config: SISRConfig | str = "paper"):
        super().__init__()
        cfg = self.config = _config(SISR_CONFIGS, config, "sisr")
        c = cfg.channels
        self.content = ContentExtractor(c, cfg.content_blocks)
        blocks = (cfg.x1_blocks, cfg.stage_blocks, cfg.stage_blocks)
        self.x1, self.x2, self.x4 = (nn.ModuleList(_SkipStage(c, nb) for _ in range(n))
                                     for nb, n in zip(blocks, cfg.stages))
        self.up1, self.up2 = Upsample2x(c), Upsample2x(c)
        self.tail = nn.Sequential(conv3x3(c, c // 2), nn.LeakyReLU(LRELU_SLOPE), conv3x3(c // 2, 3))
        # RRSR's initialisation (the authors'): convolutions N(0, 0.02), biases 0
        authors_init_(self)

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        lr, ref = check_inputs(lr, ref, self.content.conv_first.weight.dtype, check_range=not self.training)
        x = self.content(lr)
        for stages, up in ((self.x1, self.up1), (self.x2, self.up2), (self.x4, None)):
            for stage in stages:
                x = stage(x)
            if up is not None:
                x = up(x)
        sr = self.tail(x) + F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)
        return sr if self.training else sr.clamp(0, 1)


@register_model("sisr")
def _build_sisr(config="paper", **kwargs) -> SingleImageSR:
    if kwargs:
        raise InputError(f"the sisr model takes no options, got {sorted(kwargs)}")
    return SingleImageSR(config)


# ----------------------------------------------------------------------------------------------
# c2: C2-Matching's restoration network = RRSR's network with one stage per scale, no selection
# ----------------------------------------------------------------------------------------------
C2_CONFIGS = {
    # C2-Matching: 64 channels, 16 residual blocks at every scale, one alignment unit per scale, a plain
    # conv head instead of RRSR's selection block, 8 deformable groups
    "paper": dict(selection=False, stages=(1, 1, 1), x1_blocks=16, stage_blocks=16),
    # the same network at the sizes of rrsr_lib.models.CONFIGS["small"]
    "small": dict(channels=32, content_blocks=2, x1_blocks=2, stage_blocks=2, stages=(1, 1, 1), selection=False,
                  offset_channels=(32, 32, 16)),
}


class C2Matching(RRSR):
    """C2-Matching-style restoration network: model(lr, ref) -> sr.

    RRSR grew out of C2-Matching's code, so C2-Matching's network *is* RRSR's with one stage per scale
    and a plain head: at x1, x2 and x4 in turn (VGG relu3_1, relu2_1, relu1_1 of the reference)

        aligned = AlignmentUnit(x, ref_feat, matched offsets)            (rrsr_lib.alignment)
        x = x + blocks16(LeakyReLU(conv3x3(concat(x, aligned))))          (PlainHead + residual blocks)

    with conv + PixelShuffle x2 between the scales and the same tail and global residual. The
    matching front end (frozen features, patch matching, pre-offsets, LR_up by PIL's bicubic) is RRSR's,
    and so is the initialisation, which RRSR took from C2-Matching: every convolution N(0, 0.02), biases 0,
    offset predictors zero.
    config: "paper", "small", or a dict of :class:`rrsr_lib.models.RRSRConfig` fields.
    """

    def __init__(self, config: str | dict = "paper", **kwargs):
        fields = dict(_config(C2_CONFIGS, config, "c2"))
        super().__init__(resolve_config("paper", **fields), **kwargs)


@register_model("c2")
def _build_c2(config="paper", **kwargs) -> C2Matching:
    return C2Matching(config, **kwargs)


# ----------------------------------------------------------------------------------------------
# ttsr: texture transformer (hard attention transfer + soft attention) at three scales
# ----------------------------------------------------------------------------------------------
# value features per scale: VGG layer and channels (patch width 3 * scale at that layer)
_TTSR_LEVELS = {1: ("relu3_1", 256), 2: ("relu2_1", 128), 4: ("relu1_1", 64)}


@dataclass(frozen=True)
class TTSRConfig:
    """Sizes of the TTSR-style model; the defaults are TTSR's main network widths ("paper")."""
    channels: int = 64
    content_blocks: int = 16
    blocks: tuple[int, int, int] = (16, 8, 4)   # residual blocks after the texture fusion at x1, x2, x4
    vgg_weights: str = "auto"


TTSR_CONFIGS = {"paper": TTSRConfig(), "small": TTSRConfig(channels=32, content_blocks=2, blocks=(2, 1, 1))}


def _patch_cosine(q: torch.Tensor, k: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each 3x3 input patch with its matched 3x3 reference patch, differentiable.

    q: [B, C, h, w], k: [B, C, hr, wr] (features; per-pixel normalised here, zero padding 1, as
    :func:`rrsr_lib.matching.match_patches` with padding="same"); index: [B, h, w] into the hr x wr grid.
    Returns [B, 1, h, w]. TTSR's soft attention is this value: the max relevance, with its gradient.
    """
    b, _, h, w = q.shape
    pq = F.unfold(normalize_pixels(q), 3, padding=1)                   # [B, 9C, h*w]
    pk = F.unfold(normalize_pixels(k), 3, padding=1)                   # [B, 9C, hr*wr]
    pk = torch.gather(pk, 2, index.view(b, 1, -1).expand(-1, pk.shape[1], -1))
    # cos = <q, k> / ((|q| + eps)(|k| + eps)), eps = 1e-5 as the matcher
    cos = (pq * pk).sum(1) / ((pq.norm(dim=1) + 1e-5) * (pk.norm(dim=1) + 1e-5))
    return cos.view(b, 1, h, w)


class TextureTransformer(nn.Module):
    """TTSR's texture transformer on frozen VGG features: (lr, ref) -> ({1: T1, 2: T2, 4: T4}, S).

    Q = VGG(LR up x4) relu3_1, K = VGG(Ref down x4 up x4) relu3_1, V = VGG(Ref) relu3_1/relu2_1/relu1_1.
    Relevance r_ij = cosine of 3x3 patches of Q and K (rrsr_lib.matching, zero padding: one match per LR
    position). Hard attention h_i = argmax_j r_ij; T_s = fold(gather(unfold(V_s, 3s, pad s, stride s), h)) / 9,
    the matched value patches pasted back with their overlaps averaged, at LR size x s. Soft attention
    S_i = max_j r_ij (differentiable, recomputed at the argmax).
    TTSR's extractor (LTE) is a VGG that trains with the network; ours is frozen ImageNet VGG, like
    RRSR's texture features, so that all models here see the same reference features.
    lr [B,3,h,w], ref [B,3,Hr,Wr] (Hr, Wr multiples of 4) -> T_s [B, C_s, s*h, s*w], S [B, 1, h, w].
    """

    def __init__(self, vgg: VGGFeatures):
        super().__init__()
        self.vgg = vgg

    def forward(self, lr: torch.Tensor, ref: torch.Tensor):
        b, _, h, w = lr.shape
        if ref.shape[2] % 4 or ref.shape[3] % 4:
            raise InputError(f"the reference must have a size that is a multiple of 4, got {tuple(ref.shape[2:])}")
        lr_up = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
        # Ref down x4 and up again: blurred like the LR input, so that Q and K are comparable
        ref_du = F.interpolate(F.interpolate(ref, scale_factor=0.25, mode="bicubic", align_corners=False, antialias=True),
                               size=ref.shape[2:], mode="bicubic", align_corners=False).clamp(0, 1)
        q = self.vgg(lr_up)["relu3_1"]
        k = self.vgg(ref_du)["relu3_1"]
        v = self.vgg(ref)
        with torch.no_grad():
            # hard attention: h_i = argmax_j r_ij
            index, _ = match_patches(q.detach(), k.detach(), 3, padding="same")
        # soft attention: S_i = r_{i, h_i}
        s = _patch_cosine(q, k, index)
        transferred = {}
        for scale, (layer, _) in _TTSR_LEVELS.items():
            patches = F.unfold(v[layer], 3 * scale, padding=scale, stride=scale)      # [B, C*(3s)^2, hr*wr]
            picked = torch.gather(patches, 2, index.view(b, 1, -1).expand(-1, patches.shape[1], -1))
            # paste the matched patches back; every position is covered by 9 patches: average them
            transferred[scale] = F.fold(picked, (h * scale, w * scale), 3 * scale, padding=scale, stride=scale) / 9.0
        return transferred, s


class TTSR(nn.Module):
    """TTSR-style RefSR network: model(lr, ref) -> sr.

    x = content(LR)                                            conv + residual blocks
    at x1, x2, x4 (texture T_s, soft attention S_s = S upsampled bicubic x s):
        x = x + conv3x3(concat(x, T_s)) * S_s                  soft-attention-weighted texture fusion
        x = x + conv3x3(blocks(x))                             residual blocks
        conv + PixelShuffle x2 (after x1 and x2)
    SR = conv(LeakyReLU(conv(x))) + bilinear x4 of LR.
    TTSR's cross-scale feature integration (CSFI: exchanging features between the three scales) is
    left out: the three scales run one after the other as in RRSR's backbone.
    """

    def __init__(self, config: TTSRConfig | str = "paper", texture: VGGFeatures | None = None):
        super().__init__()
        cfg = self.config = _config(TTSR_CONFIGS, config, "ttsr")
        c = cfg.channels
        self.vgg = texture if texture is not None else VGGFeatures(("relu1_1", "relu2_1", "relu3_1"),
                                                                   weights=cfg.vgg_weights)
        self.vgg.requires_grad_(False)
        self.transformer = TextureTransformer(self.vgg)
        self.content = ContentExtractor(c, cfg.content_blocks)
        self.heads = nn.ModuleDict({f"x{s}": conv3x3(c + ch, c) for s, (_, ch) in _TTSR_LEVELS.items()})
        self.bodies = nn.ModuleDict({f"x{s}": residual_stack(c, n) for s, n in zip(_TTSR_LEVELS, cfg.blocks)})
        self.body_tails = nn.ModuleDict({f"x{s}": conv3x3(c, c) for s in _TTSR_LEVELS})
        self.up = nn.ModuleDict({"x1": Upsample2x(c), "x2": Upsample2x(c)})
        self.tail = nn.Sequential(conv3x3(c, c // 2), nn.LeakyReLU(LRELU_SLOPE), conv3x3(c // 2, 3))
        # RRSR's initialisation for every trained part (convolutions N(0, 0.02), biases 0), as every model here
        # (TTSR's own initialisation is not reproduced); the frozen VGG keeps its weights
        authors_init_(self.content, self.heads, self.bodies, self.body_tails, self.up, self.tail)

    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        lr, ref = check_inputs(lr, ref, self.content.conv_first.weight.dtype, check_range=not self.training)
        # zero-pad the reference (bottom, right) to a multiple of 4, and to at least one 3x3 patch at LR scale
        hr_, wr_ = ref.shape[2:]
        ph, pw = max(-(-hr_ // 4) * 4, 12), max(-(-wr_ // 4) * 4, 12)
        ref = F.pad(ref, (0, pw - wr_, 0, ph - hr_))
        textures, soft = self.transformer(lr, ref)
        x = self.content(lr)
        for s in _TTSR_LEVELS:
            key = f"x{s}"
            s_up = soft if s == 1 else F.interpolate(soft, scale_factor=s, mode="bicubic", align_corners=False)
            # x = x + Conv(Concat(F, T)) * S
            x = x + self.heads[key](torch.cat((x, textures[s]), dim=1)) * s_up
            x = x + self.body_tails[key](self.bodies[key](x))
            if key in self.up:
                x = self.up[key](x)
        sr = self.tail(x) + F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)
        return sr if self.training else sr.clamp(0, 1)


@register_model("ttsr")
def _build_ttsr(config="paper", texture: VGGFeatures | None = None, **kwargs) -> TTSR:
    if kwargs:
        raise InputError(f"the ttsr model takes only texture=, got {sorted(kwargs)}")
    return TTSR(config, texture=texture)
