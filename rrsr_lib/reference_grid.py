"""Large images: the reference's features computed once, the LR image restored tile by tile against them.

``model(lr, ref)`` works on a canvas: it zero-pads the LR image and the reference to a common size (the
authors' test protocol, rrsr_lib.models.RRSR). Cut a large LR image into tiles and call the model on each
(:func:`rrsr_lib.evaluate.tiled_forward`), and every tile is padded up to the reference's size at LR scale:
its memory and time follow the reference, not the tile (a 2000x1500 reference: about 14 GB for any tile).

Here the reference side runs once, on the canvas the reference has for an input no larger than it (padded to
a multiple of 4 pixels, at least 12): its texture features (VGG relu1_1 / relu2_1 / relu3_1) and its matching
features. Then, for each LR tile (with ``overlap`` pixels of context, stitched like ``tiled_forward``):

1. its patches are matched against *every* patch of the reference (exact, rrsr_lib.matching), so its flow
   points into the whole reference;
2. the alignment units' taps sample the whole reference's texture at those positions
   (rrsr_lib.alignment.deform_conv_from_map) instead of a canvas-sized copy;
3. what the offset convolutions see of the unaligned reference at each position (the authors concatenate the
   reference feature at the same position) is the reference at that position in the whole image's
   coordinates: the texture cut at the tile's place.

Memory: the reference's texture and matching features (about 520 bytes per reference pixel) + one tile's
network, whatever the image size. With one tile covering an LR image exactly a quarter of the reference's size
(no padding anywhere) the result is ``model(lr, ref)``'s up to float rounding (tests/test_reference_grid.py).
Otherwise it differs from the whole-image call, like any tiling, where the authors' network is not local: the
selection blocks' pools average over one tile, and the seams get only ``overlap`` pixels of context. Two deviations from the
whole-image canvas when the LR image is larger than a quarter of the reference: matches are searched in the
reference only, not in the zero padding the canvas would add to it, and the unaligned context beyond the
reference is zero where the canvas has the VGG features of zero pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InputError
from .front_end import SCALES
from .models import RRSR, TEXTURE, check_inputs

__all__ = ["ReferenceGrid", "reference_grid_forward"]


class ReferenceGrid:
    """One reference, prepared for any number of LR tiles: ``ReferenceGrid(model, ref).restore(tile, origin)``.

    model: an :class:`rrsr_lib.models.RRSR` in eval mode (its matching features must be able to encode the
    reference alone: the shipped contrastive trunks, the authors', or the VGG stand-in). ref: [1, 3, Hr, Wr]
    in [0, 1]. Holds the texture maps {"relu1_1": [1,64,Hc,Wc], "relu2_1": [1,128,Hc/2,Wc/2],
    "relu3_1": [1,256,Hc/4,Wc/4]} and the matching features of the reference canvas Hc x Wc.
    """

    @torch.no_grad()
    def __init__(self, model: RRSR, ref: torch.Tensor):
        if not isinstance(model, RRSR):
            raise InputError(f"the reference grid runs RRSR networks, got {type(model).__name__}; "
                             "tile other models with rrsr_lib.evaluate.tiled_forward")
        features = model.matcher.features
        if not (hasattr(features, "encode_input") and hasattr(features, "encode_reference")):
            raise InputError(f"the matching features {type(features).__name__} cannot encode the reference alone: give "
                             "them encode_input(lr_up) and encode_reference(ref) methods (as ContrastiveFeatures), "
                             "or tile with rrsr_lib.evaluate.tiled_forward")
        if ref.dim() != 4 or ref.shape[0] != 1:
            raise InputError(f"the reference grid takes one reference (1, 3, Hr, Wr), got shape {tuple(ref.shape)}")
        self.model = model
        # the canvas of an input no larger than the reference: max(ceil(Hr/4), 3) x max(ceil(Wr/4), 3) LR pixels
        hc, wc = RRSR.canvas_size((1, 1), ref.shape[2:])
        ref = check_inputs(ref, ref, model.content.conv_first.weight.dtype)[1]
        ref_c = F.pad(ref, (0, 4 * wc - ref.shape[3], 0, 4 * hc - ref.shape[2]))
        self.canvas = (hc, wc)
        # matching features first (1/16 of the pixels, 256 channels): the texture's full-resolution maps then
        # never coexist with the matching trunk's (peak 3.3-3.4 GB instead of 4.4 GB for a 2000x1500 reference)
        self.matching = model.matcher.reference_features(ref_c)
        self.texture = model.texture(ref_c)

    def _context(self, origin: tuple[int, int], size: tuple[int, int]) -> dict:
        """The texture at the tile's place (LR origin (y0, x0), LR size (h, w)) at every scale, zero beyond."""
        out = {}
        for scale in SCALES:
            name = TEXTURE[scale][0]
            t = self.texture[name]
            y0, x0, h, w = (scale * v for v in (*origin, *size))
            part = t[..., y0:y0 + h, x0:x0 + w]
            out[name] = F.pad(part, (0, w - part.shape[3], 0, h - part.shape[2]))
        return out

    @torch.no_grad()
    def restore(self, lr: torch.Tensor, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """SR of one LR tile [1, 3, h, w] in [0, 1] whose top-left pixel is ``origin`` (y0, x0) of the whole LR
        image: [1, 3, 4h, 4w] in [0, 1]."""
        model = self.model
        lr = check_inputs(lr, lr, model.content.conv_first.weight.dtype)[0]
        if lr.shape[0] != 1 or min(lr.shape[2:]) < 3:
            raise InputError(f"an LR tile must be (1, 3, h, w) with h, w >= 3, got {tuple(lr.shape)}")
        # 1. exact matching of the tile's patches against every patch of the reference
        matched = model.matcher.match(lr, self.matching)
        # 2.-3. the restoration network on the tile: taps sample the whole reference, context cut at its place
        context = self._context(origin, lr.shape[2:])
        sr = model.restore(lr, {s: matched[s] for s in SCALES}, context, sample_from=self.texture)
        return sr.clamp(0, 1)


def reference_grid_forward(model: RRSR, lr: torch.Tensor, ref: torch.Tensor, tile: int | None = None,
                           overlap: int = 8, progress: bool = False, as_uint8: bool = False):
    """SR of one LR image (1, 3, h, w) with a reference of any size, in LR tiles of ``tile`` pixels (None: one
    tile), the reference prepared once (:class:`ReferenceGrid`). Returns (1, 3, 4h, 4w) in [0, 1], stitched
    like :func:`rrsr_lib.evaluate.tiled_forward` (each output pixel from the tile where it lies furthest from
    a cut; ``overlap`` LR pixels of context on each inner side); with ``as_uint8`` an uint8 4h x 4w x 3 array
    converted tile by tile (the memory of a large output: rrsr_lib.sr)."""
    from .evaluate import tiled_forward

    grid = ReferenceGrid(model, ref)
    return tiled_forward(grid.restore, lr, None, tile=tile, overlap=overlap, progress=progress, with_origin=True,
                         as_uint8=as_uint8)
