"""Correspondence matching: for every 3x3 patch of the input, the most similar 3x3 patch of the reference.

Idea (RRSR step 2, as in C2-Matching): both feature maps are L2-normalised per pixel; every 3x3
patch (stride 1) of the reference is compared with every 3x3 patch of the input by cosine
similarity; the top-1 match per input position gives an index map and a score map. RRSR does it
once, at the LR scale, on the contrastively trained VGG features (rrsr_lib.contrastive).

* :func:`match_patches_naive` writes the definition out: unfold both maps into 9C-dimensional patch
  vectors, one matrix of all input-patch x reference-patch dot products, max over the reference.
  Its memory grows as (H*W)*(Hr*Wr): 0.4 GB at CUFED5 size, 6 GB for 200x200 inputs.
* :func:`match_patches`, what the network calls, is the same definition, exact, with bounded memory: it
  checks its inputs here and hands the work to :func:`rrsr_lib.fast.matching_blocked.match_patches_blocked`
  (pixel similarities by matrix multiplication, summed along the 3x3 shifts, block by block under
  ``memory_budget_mb``; tests/test_matching.py checks it against :func:`match_patches_naive`).
* :func:`match_coarse_to_fine` is MASA-SR's approximation for very large references: the centre
  patch of each input block takes its match from an exact matching of the pooled (coarser) maps,
  then all patches of the block search densely inside a window around that match. Not exact; its
  agreement with exact matching is measured in benchmarks/matching.py and notebook 02.

Score convention (the authors' code): reference patches are divided by (their 9C norm + 1e-5),
the input patch norm (+ 1e-5) is divided out at the end, so the score is a cosine in [-1, 1]. The
index is row-major over the reference's patch grid ((Hr-2) x (Wr-2) for ``padding="valid"``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InputError
from .fast.matching_blocked import BlockPlan, match_patches_blocked

__all__ = ["NORM_EPS", "normalize_pixels", "match_patches_naive", "match_patches", "patch_norms",
           "match_coarse_to_fine", "index_to_xy"]

# the authors add 1e-5 to every patch norm before dividing by it
NORM_EPS = 1e-5
# the extra memory (MiB) the exact matcher allows itself by default, at any image size
MATCH_BUDGET_MB = 512
_MIB = 1024 * 1024


def _check_pair(feat_input: torch.Tensor, feat_ref: torch.Tensor, patch_size: int, padding: str) -> None:
    if not isinstance(feat_input, torch.Tensor) or not isinstance(feat_ref, torch.Tensor):
        raise InputError("feat_input and feat_ref must be torch tensors of shape [B, C, H, W]")
    if feat_input.dim() != 4 or feat_ref.dim() != 4:
        raise InputError(f"feat_input and feat_ref must be 4-D [B, C, H, W], got {tuple(feat_input.shape)} and {tuple(feat_ref.shape)}")
    if feat_input.shape[:2] != feat_ref.shape[:2]:
        raise InputError(f"feat_input {tuple(feat_input.shape)} and feat_ref {tuple(feat_ref.shape)} must have the same batch size and channel count")
    if not feat_input.dtype.is_floating_point or feat_input.dtype != feat_ref.dtype:
        raise InputError(f"features must be floating point of the same dtype, got {feat_input.dtype} and {feat_ref.dtype}")
    if feat_input.device != feat_ref.device:
        raise InputError(f"feat_input is on {feat_input.device} but feat_ref is on {feat_ref.device}; move both to one device")
    if patch_size < 1 or patch_size % 2 == 0:
        raise InputError(f"patch_size must be a positive odd integer (the authors use 3), got {patch_size}")
    if padding not in ("valid", "same"):
        raise InputError(f"padding must be 'valid' (the authors' convention) or 'same', got {padding!r}")
    if padding == "valid":
        for name, t in (("feat_input", feat_input), ("feat_ref", feat_ref)):
            if t.shape[2] < patch_size or t.shape[3] < patch_size:
                raise InputError(f"{name} is {t.shape[2]}x{t.shape[3]}, smaller than one {patch_size}x{patch_size} patch; use larger maps or padding='same'")


def normalize_pixels(feat: torch.Tensor) -> torch.Tensor:
    """L2-normalise every pixel's C-vector: [B, C, H, W] -> same shape, each pixel of norm 1 (or 0 if it was 0)."""
    return F.normalize(feat, p=2, dim=1)


def _prepare(feat_input, feat_ref, patch_size, padding):
    """Per-pixel normalisation, then zero padding by patch_size // 2 for padding='same'."""
    x, r = normalize_pixels(feat_input), normalize_pixels(feat_ref)
    if padding == "same":
        p = patch_size // 2
        x, r = F.pad(x, (p, p, p, p)), F.pad(r, (p, p, p, p))
    return x, r


def patch_norms(feat: torch.Tensor, patch_size: int = 3) -> torch.Tensor:
    """L2 norm of every k x k patch (all k*k*C values), valid positions: [B, C, H, W] -> [B, H-k+1, W-k+1]."""
    sq = feat.pow(2).sum(dim=1, keepdim=True)
    # box sum of the squared pixel norms over the k x k window = squared patch norm
    box = F.avg_pool2d(sq, patch_size, stride=1) * (patch_size * patch_size)
    return box.clamp_min(0).sqrt()[:, 0]


def index_to_xy(index: torch.Tensor, grid_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat row-major index over a patch grid of width ``grid_width`` -> (x, y) integer tensors of index's shape."""
    return index % grid_width, torch.div(index, grid_width, rounding_mode="floor")


# ----------------------------------------------------------------------------------------------
# naive reference implementation
# ----------------------------------------------------------------------------------------------

def match_patches_naive(feat_input: torch.Tensor, feat_ref: torch.Tensor, patch_size: int = 3,
                        padding: str = "valid") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-1 patch matching by the full similarity matrix (unfold + one batched matmul).

    feat_input: [B, C, H, W] float, any values (normalised per pixel inside).
    feat_ref:   [B, C, Hr, Wr] float, same B, C, dtype and device.
    Returns (index, score): index [B, h, w] int64, row-major into the reference's patch grid
    (hr x wr), score [B, h, w] cosine similarity in [-1, 1] (input dtype). For padding="valid",
    (h, w) = (H-k+1, W-k+1) and (hr, wr) = (Hr-k+1, Wr-k+1), positions are patch top-left corners;
    for padding="same", (h, w) = (H, W), (hr, wr) = (Hr, Wr) and positions are patch centres of the
    zero-padded maps. Memory: the whole [B, h*w, hr*wr] matrix. Use it to check, not to work.
    """
    _check_pair(feat_input, feat_ref, patch_size, padding)
    x, r = _prepare(feat_input, feat_ref, patch_size, padding)
    b, _, hh, ww = x.shape
    h, w = hh - patch_size + 1, ww - patch_size + 1
    # patches as 9C-vectors: [B, 9C, L]
    px = F.unfold(x, patch_size)
    pr = F.unfold(r, patch_size)
    # reference patches divided by their norm (+1e-5), as the authors do
    pr = pr / (pr.norm(dim=1, keepdim=True) + NORM_EPS)
    corr = torch.bmm(px.transpose(1, 2), pr)  # [B, L_in, L_ref]
    score, index = corr.max(dim=2)
    # the input patch norm (+1e-5) is divided out at the end: the score is a cosine
    score = score / (px.norm(dim=1) + NORM_EPS)
    return index.view(b, h, w), score.view(b, h, w)


# ----------------------------------------------------------------------------------------------
# the same definition, exact, with bounded memory: rrsr_lib.fast.matching_blocked does the work
# ----------------------------------------------------------------------------------------------

def match_patches(feat_input: torch.Tensor, feat_ref: torch.Tensor, patch_size: int = 3, padding: str = "valid",
                  memory_budget_mb: float = MATCH_BUDGET_MB, plan: BlockPlan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-1 patch matching by cosine similarity, fast and with bounded memory.

    Same definition and outputs as :func:`match_patches_naive` (indices equal up to ties, scores to
    float rounding), computed by pixel-similarity matmuls summed along the k x k shifts, blocked so
    that the extra memory stays under ``memory_budget_mb`` MiB (default 512) at any image size.

    feat_input: [B, C, H, W] float (CPU or CUDA); feat_ref: [B, C, Hr, Wr] (any Hr, Wr), same dtype/device.
    patch_size: odd k (the authors: 3). padding: "valid" (the authors': (H-k+1)x(W-k+1) outputs,
    patch top-left corners) or "same" (zero padding, H x W outputs, patch centres).
    plan: force a :class:`rrsr_lib.fast.matching_blocked.BlockPlan` (tests use it to show that results do not depend on blocking).
    Returns (index [B, h, w] int64 row-major into the reference's patch grid, score [B, h, w] in [-1, 1]).
    float16/bfloat16 features (mixed-precision training) are matched in float32 and give a float32 score.
    """
    _check_pair(feat_input, feat_ref, patch_size, padding)
    # the definition is match_patches_naive's; its [B, h*w, hr*wr] matrix is what limits it, so the same
    # maxima are computed block by block (rrsr_lib.fast.matching_blocked), on the CPU and on CUDA alike
    return match_patches_blocked(feat_input, feat_ref, patch_size, padding, memory_budget_mb, plan, NORM_EPS)


# ----------------------------------------------------------------------------------------------
# coarse-to-fine (MASA-SR's idea): approximate, for very large references
# ----------------------------------------------------------------------------------------------

def _shift_sum(s: torch.Tensor, k: int, by: int, bx: int, bv: int, bu: int) -> torch.Tensor:
    """Patch scores from pixel similarities (used by the coarse-to-fine search on small windows).

    s: [bb, by+k-1, bx+k-1, bv+k-1, bu+k-1] pixel dot products.
    Returns [bb, by, bx, bv, bu]: P[y, x, v, u] = sum_{a,b < k} s[y+a, x+b, v+a, u+b],
    computed as column-shift sums followed by row-shift sums (separable: 2(k-1) additions, not k*k - 1).
    """
    t = s[:, :, 0:bx, :, 0:bu].clone()
    for b in range(1, k):
        t += s[:, :, b:b + bx, :, b:b + bu]
    p = t[:, 0:by, :, 0:bv].clone()
    for a in range(1, k):
        p += t[:, a:a + by, :, a:a + bv]
    return p


def match_coarse_to_fine(feat_input: torch.Tensor, feat_ref: torch.Tensor, patch_size: int = 3,
                         padding: str = "valid", block: int = 8, radius: int = 4, ref_scale: int = 2,
                         memory_budget_mb: float = MATCH_BUDGET_MB) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate top-1 matching: block centres matched at a coarse scale, then a dense search in a window.

    MASA-SR's coarse-to-fine scheme: the input's patch grid is cut into ``block`` x ``block`` blocks;
    (1) coarse: both maps are average-pooled by ``ref_scale`` (a downsampled reference:
    ref_scale**4 fewer patch pairs) and matched exactly there; the block's centre patch takes the
    match of the low-resolution patch that contains it, mapped back to full resolution;
    (2) fine: every patch of the block searches densely (stride 1, exact cosine) in the window of
    reference patches that the block maps to under that match, enlarged by ``radius`` patches on
    each side. Cost: the coarse matching plus about (block + 2*radius)**2 reference patches per
    input patch instead of all of them.

    Inputs and outputs as :func:`match_patches` (same index/score conventions); the result is exact
    wherever the true best match lies inside the searched window. Agreement with exact matching is
    measured in benchmarks/matching.py. Memory: copies of both feature maps plus blocks of windows
    that stay under ``memory_budget_mb``.
    """
    _check_pair(feat_input, feat_ref, patch_size, padding)
    if block < 1 or radius < 0 or ref_scale < 1:
        raise InputError(f"block >= 1, radius >= 0 and ref_scale >= 1 are required, got {block}, {radius}, {ref_scale}")
    k = patch_size
    with torch.no_grad():
        x, r = _prepare(feat_input, feat_ref, k, padding)
        b, c, hh, ww = x.shape
        _, _, hrr, wrr = r.shape
        h, w, hr, wr = hh - k + 1, ww - k + 1, hrr - k + 1, wrr - k + 1
        dev = x.device
        inv_ref = 1.0 / (patch_norms(r, k) + NORM_EPS)  # [B, hr, wr]
        in_norm = patch_norms(x, k)
        nby, nbx = -(-h // block), -(-w // block)
        cy = torch.clamp(torch.arange(nby, device=dev) * block + block // 2, max=h - 1)
        cx = torch.clamp(torch.arange(nbx, device=dev) * block + block // 2, max=w - 1)

        # (1) coarse: exact matching of the ref_scale-pooled maps; each centre takes its low-res patch's match
        s = ref_scale
        xd, rd = F.avg_pool2d(x, s, ceil_mode=True), F.avg_pool2d(r, s, ceil_mode=True)
        if min(xd.shape[2:] + rd.shape[2:]) < k:
            raise InputError(f"ref_scale={s} leaves maps smaller than one {k}x{k} patch; use a smaller ref_scale")
        cidx, _ = match_patches(xd, rd, k, "valid", memory_budget_mb)  # [B, hd, wd]
        hd, wd = cidx.shape[1:]
        wrd = rd.shape[3] - k + 1
        cyd, cxd = torch.clamp(cy // s, max=hd - 1), torch.clamp(cx // s, max=wd - 1)
        cm = cidx[:, cyd][:, :, cxd]                                     # [B, nby, nbx]
        # low-res top-left (v, u) -> full-res top-left v*s, plus the centre's position inside its low-res patch
        mv = torch.div(cm, wrd, rounding_mode="floor") * s + (cy - cyd * s).view(1, nby, 1)
        mu = (cm % wrd) * s + (cx - cxd * s).view(1, 1, nbx)

        # (2) fine: window of reference patches for every block, top-left clamped inside the patch grid
        wy, wx = min(block + 2 * radius, hr), min(block + 2 * radius, wr)
        oy = torch.arange(nby, device=dev).view(1, nby, 1) * block
        ox = torch.arange(nbx, device=dev).view(1, 1, nbx) * block
        # the block's top-left maps to (match - (centre - block top-left)); the window adds radius around it
        wv0 = (mv - (cy.view(1, nby, 1) - oy) - radius).clamp(0, hr - wy)
        wu0 = (mu - (cx.view(1, 1, nbx) - ox) - radius).clamp(0, wr - wx)

        # gather block input pixels and window reference pixels, all blocks at once (chunked by the budget)
        ph, pw = block + k - 1, block + k - 1
        xpad = F.pad(x, (0, nbx * block - w, 0, nby * block - h))  # whole blocks; padded outputs are dropped
        xt = xpad.permute(0, 2, 3, 1).reshape(b, -1, c)
        rt = r.permute(0, 2, 3, 1).reshape(b, -1, c)
        wpad = xpad.shape[3]
        dy = torch.arange(ph, device=dev)
        dx = torch.arange(pw, device=dev)
        in_pix = ((oy.view(nby, 1, 1, 1) + dy.view(1, 1, ph, 1)) * wpad + ox.view(1, nbx, 1, 1) + dx.view(1, 1, 1, pw))
        in_pix = in_pix.reshape(nby * nbx, ph * pw)
        ry = torch.arange(wy + k - 1, device=dev)
        rx = torch.arange(wx + k - 1, device=dev)
        ref_pix = ((wv0.view(b, -1, 1, 1) + ry.view(1, 1, -1, 1)) * wrr + wu0.view(b, -1, 1, 1) + rx.view(1, 1, 1, -1))
        ref_pix = ref_pix.reshape(b, nby * nbx, -1)
        pv = wv0.view(b, -1, 1, 1) + torch.arange(wy, device=dev).view(1, 1, -1, 1)
        pu = wu0.view(b, -1, 1, 1) + torch.arange(wx, device=dev).view(1, 1, 1, -1)

        nblk = nby * nbx
        per_block = (ph * pw * (wy + k - 1) * (wx + k - 1) * 2 + (ph * pw + (wy + k - 1) * (wx + k - 1)) * c) * x.element_size()
        chunk = max(1, int(memory_budget_mb * _MIB // 2 // per_block))
        best = torch.empty(b, nblk, block * block, dtype=x.dtype, device=dev)
        best_idx = torch.empty(b, nblk, block * block, dtype=torch.long, device=dev)
        for bi in range(b):
            for n0 in range(0, nblk, chunk):
                n1 = min(nblk, n0 + chunk)
                a = xt[bi][in_pix[n0:n1]]                        # [n, ph*pw, C]
                rr = rt[bi][ref_pix[bi, n0:n1]]                  # [n, (wy+k-1)*(wx+k-1), C]
                s = torch.bmm(a, rr.transpose(1, 2)).view(n1 - n0, ph, pw, wy + k - 1, wx + k - 1)
                p = _shift_sum(s, k, block, block, wy, wx)       # [n, block, block, wy, wx]
                p *= inv_ref[bi][pv[bi, n0:n1], pu[bi, n0:n1]].view(n1 - n0, 1, 1, wy, wx)
                val, arg = p.view(n1 - n0, block * block, wy * wx).max(dim=2)
                vv = torch.div(arg, wx, rounding_mode="floor")
                best[bi, n0:n1] = val
                best_idx[bi, n0:n1] = (wv0.view(b, -1, 1)[bi, n0:n1] + vv) * wr + wu0.view(b, -1, 1)[bi, n0:n1] + arg % wx
        # [B, nby, nbx, block, block] -> [B, h, w]
        best = best.view(b, nby, nbx, block, block).permute(0, 1, 3, 2, 4).reshape(b, nby * block, nbx * block)[:, :h, :w]
        best_idx = best_idx.view(b, nby, nbx, block, block).permute(0, 1, 3, 2, 4).reshape(b, nby * block, nbx * block)[:, :h, :w]
        score = best / (in_norm + NORM_EPS)
    return best_idx.contiguous(), score.contiguous()
