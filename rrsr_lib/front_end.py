"""RRSR's matching front end: (LR, Ref) -> matched pre-offsets for the alignment units at every scale. Frozen.

Idea (RRSR, pipeline steps 1-3, as in C2-Matching): the LR image is enlarged x4 (LR_up) so that it has the
reference's scale; both go through the matching features (the contrastive VGG16 trunks of
rrsr_lib.contrastive, or the ImageNet VGG stand-in :class:`VGGMatchingFeatures`); every 3x3 patch of LR_up's
features takes its best reference patch (rrsr_lib.matching.match_patches); the index becomes a flow
(rrsr_lib.offsets.flow_from_index), the flow per-tap pre-offsets at x1, x2 and x4 (rrsr_lib.offsets), in the
deformable convolution's layout. It runs once, at the LR scale, with no gradients (matching is an argmax);
rrsr_lib.models.RRSR feeds its offsets to every alignment unit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .degradation import pil_bicubic_upsample
from .errors import InputError
from .matching import match_patches
from .offsets import flow_from_index, pre_offsets, to_deform_offsets
from .vgg import VGGFeatures

__all__ = ["SCALES", "LR_UP_MODES", "VGGMatchingFeatures", "MatchingFrontEnd", "default_matching_features"]

# the scales whose alignment units the front end seeds: x1 (LR size), x2, x4 (HR size)
SCALES = (1, 2, 4)
# how the matching front end enlarges the LR image: "pil" (the authors' data path: PIL bicubic x4 of the uint8
# LR, rounded to uint8) or "torch" (torch's bicubic, a = -0.75: the variant shipped before 2026-12-02)
LR_UP_MODES = ("pil", "torch")
_announced: set[str] = set()


class VGGMatchingFeatures(nn.Module):
    """Matching features from ImageNet VGG relu3_1 (one trunk for both images), frozen.

    The authors match on two VGG16 trunks trained by C2-Matching's contrastive scheme
    (rrsr_lib.contrastive); ImageNet VGG is what those trunks start from. This class is the
    stand-in used until trained trunks are given; :class:`RRSR` announces it in one printed line.
    forward(lr_up [B,3,H,W], ref [B,3,H,W], in [0,1]) -> ([B,256,H/4,W/4], [B,256,H/4,W/4]).
    """

    description = "ImageNet VGG relu3_1 (untrained stand-in for the contrastive trunks)"

    def __init__(self, vgg: VGGFeatures):
        super().__init__()
        if "relu3_1" not in vgg.layers:
            raise InputError("VGGMatchingFeatures needs a VGGFeatures module that returns relu3_1")
        self.vgg = vgg

    def forward(self, lr_up: torch.Tensor, ref: torch.Tensor):
        return self.encode_input(lr_up), self.encode_reference(ref)

    def encode_input(self, lr_up: torch.Tensor) -> torch.Tensor:
        return self.vgg(lr_up)["relu3_1"]

    def encode_reference(self, ref: torch.Tensor) -> torch.Tensor:
        return self.vgg(ref)["relu3_1"]


class MatchingFrontEnd(nn.Module):
    """Frozen front end: (LR canvas, Ref canvas) -> matched pre-offsets for every scale, in DCN layout.

    features: a module (lr_up [B,3,4h,4w], ref [B,3,4h,4w]) -> (feat_in, feat_ref), both [B, C, h, w]
    (the contrastive trunks, or :class:`VGGMatchingFeatures`). groups: deformable groups.
    lr_up: "pil" (the authors: LR_up = PIL bicubic x4 of the uint8 LR, rounded to uint8; computed in torch,
    equal to PIL's image, rrsr_lib.degradation.pil_bicubic_upsample) or "torch" (torch's bicubic, a = -0.75,
    clamped: the variant of the networks shipped before 2026-12-02).
    forward(lr [B,3,h,w], ref [B,3,4h,4w]) -> {"index", "score" [B,h-2,w-2], "flow" [B,h,w,2],
    1: [B,18G,h,w], 2: [B,18G,2h,2w], 4: [B,18G,4h,4w]}. No gradients (matching is an argmax).
    """

    def __init__(self, features: nn.Module, groups: int = 8, patch_size: int = 3, lr_up: str = "pil"):
        super().__init__()
        if lr_up not in LR_UP_MODES:
            raise InputError(f"lr_up must be one of {LR_UP_MODES}, got {lr_up!r}")
        self.features, self.groups, self.patch_size, self.lr_up = features, groups, patch_size, lr_up
        self.features.requires_grad_(False)

    def train(self, mode: bool = True):
        # frozen: stays in eval mode whatever the network around it does
        return super().train(False)

    @torch.no_grad()
    def forward(self, lr: torch.Tensor, ref: torch.Tensor) -> dict:
        feat_in, feat_ref = self.features(self._upsample(lr), ref)
        return self._offsets(feat_in, feat_ref)

    @torch.no_grad()
    def reference_features(self, ref: torch.Tensor) -> torch.Tensor:
        """The reference's matching features alone, [B, C, Hr/4, Wr/4] (rrsr_lib.reference_grid: once per reference)."""
        return self.features.encode_reference(ref)

    @torch.no_grad()
    def match(self, lr: torch.Tensor, feat_ref: torch.Tensor) -> dict:
        """``forward`` for an LR image [B, 3, h, w] against reference features of any size (from
        :meth:`reference_features`): the flow and offsets point into that reference."""
        return self._offsets(self.features.encode_input(self._upsample(lr)), feat_ref)

    def _upsample(self, lr: torch.Tensor) -> torch.Tensor:
        if self.lr_up == "pil":
            # the authors' data loader: LR_up = PIL bicubic x4 of the uint8 LR, stored as uint8 (RRSR.md); torch's
            # bicubic (a = -0.75) differs from it by up to 17 grey levels on the embedded pairs
            return pil_bicubic_upsample(lr, 4)
        # legacy variant: torch's bicubic, clamped
        return F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)

    def _offsets(self, feat_in: torch.Tensor, feat_ref: torch.Tensor) -> dict:
        index, score = match_patches(feat_in, feat_ref, self.patch_size)
        # flow = matched top-left - own top-left, zero-padded back to h x w
        flow = flow_from_index(index, ref_grid_width=feat_ref.shape[3] - self.patch_size + 1, pad=self.patch_size - 1)
        out = {"index": index, "score": score, "flow": flow}
        for s in SCALES:
            out[s] = to_deform_offsets(pre_offsets(flow, s), self.groups)
        return out


def default_matching_features(kind: str, texture: VGGFeatures) -> nn.Module:
    """The matching features for ``RRSRConfig.matching``: the shipped contrastive student trunks
    (rrsr_lib.contrastive.load_contrastive), or the ImageNet VGG stand-in; "auto" tries the first and
    says so in one printed line when it falls back."""
    why = None
    if kind in ("auto", "contrastive"):
        try:
            from .contrastive import load_contrastive
            return load_contrastive("student")
        except (ImportError, InputError) as exc:
            if kind == "contrastive":
                raise InputError(f"matching='contrastive' needs the shipped contrastive trunks: {exc}") from None
            why = str(exc).split(";")[0]
    note = VGGMatchingFeatures.description + (f" (contrastive trunks unavailable: {why})" if why else "")
    if note not in _announced:   # one line per process, never silent
        _announced.add(note)
        print(f"rrsr_lib.models: matching features = {note}")
    return VGGMatchingFeatures(texture)
