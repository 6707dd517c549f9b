"""Correspondence matching: for every 3x3 patch of the input, the most similar 3x3 patch of the reference.

Idea (RRSR step 2, as in C2-Matching): both feature maps are L2-normalised per pixel; every 3x3
patch (stride 1) of the reference is compared with every 3x3 patch of the input by cosine
similarity; the top-1 match per input position gives an index map and a score map. RRSR does it
once, at the LR scale, on the contrastively trained VGG features (rrsr_lib.contrastive).

Three implementations of the same definition live here:

* :func:`match_patches_naive` writes the definition out: unfold both maps into 9C-dimensional patch
  vectors, one matrix of all input-patch x reference-patch dot products, max over the reference.
  Its memory grows as (H*W)*(Hr*Wr): 0.4 GB at CUFED5 size, 6 GB for 200x200 inputs.
* :func:`match_patches` is exact too, but fast and memory-bounded. A 9C-dimensional patch dot
  product is the sum of 9 C-dimensional pixel dot products at shifted positions,

      <P_in(y, x), P_ref(v, u)> = sum_{a, b in 0..2} S[(y+a, x+b), (v+a, u+b)],  S = X^T R,

  so the pixel similarities S are computed by matrix multiplication (9x fewer multiplications
  than the patch matrix) and summed along the 3x3 diagonal shifts. S is never held whole: the
  reference is cut into blocks of rows (and columns, for very wide images), the input's pixel rows
  are streamed through each block a few at a time, and a running maximum is kept, so that the
  extra memory stays under ``memory_budget_mb`` whatever the image size. Consecutive row blocks
  share k-1 reference rows; their pixel similarities are handed from one block to the next rather
  than multiplied twice. On CUDA the blocks are as large as the budget allows (fewer kernel launches).
* :func:`match_coarse_to_fine` is MASA-SR's approximation for very large references: the centre
  patch of each input block takes its match from an exact matching of the pooled (coarser) maps,
  then all patches of the block search densely inside a window around that match. Not exact; its
  agreement with exact matching is measured in benchmarks/matching.py and notebook 02.

Score convention (the authors' code): reference patches are divided by (their 9C norm + 1e-5),
the input patch norm (+ 1e-5) is divided out at the end, so the score is a cosine in [-1, 1]. The
index is row-major over the reference's patch grid ((Hr-2) x (Wr-2) for ``padding="valid"``).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .device import fair_threads
from .errors import InputError

__all__ = ["NORM_EPS", "normalize_pixels", "match_patches_naive", "match_patches", "plan_blocks", "BlockPlan",
           "patch_norms", "match_coarse_to_fine", "index_to_xy"]

# the authors add 1e-5 to every patch norm before dividing by it
NORM_EPS = 1e-5
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


def _pixel_norms(feat: torch.Tensor) -> torch.Tensor:
    """Per-pixel L2 norms clamped at 1e-12 (F.normalize's divisor): [B, C, H, W] -> [B, H, W]."""
    return torch.linalg.vector_norm(feat, dim=1).clamp_min(1e-12)


def _unit_patch_norms(pix_norm: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Patch norms of the per-pixel normalised map, from its pixel norms: [B, H, W] -> [B, H-k+1, W-k+1].

    A normalised pixel has squared norm 1, or 0 for an all-zero pixel (whose clamped norm is 1e-12).
    """
    unit_sq = (pix_norm > 1e-12).to(pix_norm.dtype)[:, None]
    box = F.avg_pool2d(unit_sq, patch_size, stride=1) * (patch_size * patch_size)
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
# fast exact implementation: pixel similarities by matmul, summed along the 3x3 shifts, blocked
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockPlan:
    """How :func:`match_patches` cuts the work.

    bb samples at a time; the reference is cut into blocks of bv patch rows x bu patch columns, the
    input into column strips of bx patch columns; the input's pixel rows are streamed through each
    block ``rows`` at a time. ``block_bytes`` is the planned peak of the temporaries of one block,
    ``fixed_bytes`` what lives for the whole call (normalised copies, norms, running maxima);
    their sum stays under the memory budget. ``reuse``: where the reference is cut into row blocks only
    (bu covers its width), consecutive blocks share k-1 reference rows, and each block hands the pixel
    similarities of those rows on to the next instead of multiplying them again; ``ring_groups``: see
    :func:`_match_block`.
    """
    bb: int
    rows: int
    bx: int
    bv: int
    bu: int
    block_bytes: int
    fixed_bytes: int
    ring_groups: int = 8
    reuse: bool = True

    @property
    def total_bytes(self) -> int:
        return self.block_bytes + self.fixed_bytes


def _block_bytes(bb, rows, bx, bv, bu, k, c, itemsize, ring_groups=8, carry_rows=0):
    """Peak bytes of the temporaries of one block of :func:`match_patches` (see :func:`_match_block`'s buffers).

    carry_rows: input pixel rows whose similarities against k-1 shared reference rows are handed from one
    block to the next (two buffers); 0 where blocks share nothing."""
    slab = (bx + k - 1) * (bv + k - 1) * (bu + k - 1)  # pixel similarities of one input pixel row
    # the normalised reference block (and its raw slice while it is made), the normalised input rows
    ref = 2 * c * (bv + k - 1) * (bu + k - 1)
    inp = rows * (bx + k - 1) * c
    # S (rows slabs) + T ring (k - 1 + rows * ring_groups slabs) + P (rows slabs) + scaled scores (<= rows slabs)
    work = (3 * rows + k - 1 + rows * ring_groups) * slab
    # per input position: running maxima over u, then over v (values, int64 indices, masks)
    small = rows * bx * (bv + 8)
    carry = 2 * carry_rows * (bx + k - 1) * (k - 1) * (bu + k - 1)
    return bb * ((work + ref + inp + carry) * itemsize + small * 8)


def plan_blocks(batch: int, channels: int, height: int, width: int, ref_height: int, ref_width: int,
                patch_size: int = 3, memory_budget_mb: float = 512, itemsize: int = 4,
                work_mb: float = 8, rows: int = 4, padded_copy: bool = False, ring_groups: int = 8,
                reuse: bool = True) -> BlockPlan:
    """Choose the blocking of :func:`match_patches` so that its extra memory stays under the budget.

    height/width, ref_height/ref_width: sizes of the (padded, for 'same') feature maps.
    padded_copy: True where copies of both maps live for the whole call (padding='same' pads them with zeros,
    half-precision inputs are converted to float32).
    work_mb, rows, ring_groups: speed knobs, independent of the budget. ``rows`` input pixel rows go through one
    matrix multiplication; the reference block grows until the streamed working set (the similarities
    of ``rows`` input rows against the block, the ring of column sums, the patch scores) reaches about
    ``work_mb``. Small blocks keep the matmul output and the shift sums in cache but mean more, smaller
    tensor operations (and, without ``reuse``, more recomputed overlap rows: (bv+k-1)/bv). Measured at
    CUFED5 size (C=256, 125x83 against 125x83) on the idle 2-core machine before ``reuse`` existed,
    interleaved, 5 runs each, median: 4 rows with 12-row blocks (work_mb=8) took 2.11 s with one thread
    and 1.13 s with two, against 2.56 s and 1.52 s for 8 rows with 29-row blocks (work_mb=64). With
    ``reuse`` the default becomes 6-row blocks (see the minimum below). Blocks never exceed the budget.
    Raises InputError if not even the per-position arrays plus the smallest block fit the budget.
    reuse: hand shared reference rows on between blocks (see :class:`BlockPlan`); its two buffers hold
    every input row's similarities against k-1 reference rows, so where they would force the reference's
    columns to be cut (very large images or small budgets) the plan goes without reuse instead.
    """
    args = (batch, channels, height, width, ref_height, ref_width, patch_size, memory_budget_mb, itemsize,
            work_mb, rows, padded_copy, ring_groups)
    plan = _plan_blocks(*args, reuse=reuse)
    if plan.reuse and plan.bu < ref_width - patch_size + 1:
        plan = _plan_blocks(*args, reuse=False)
    return plan


def _plan_blocks(batch, channels, height, width, ref_height, ref_width, patch_size, memory_budget_mb, itemsize,
                 work_mb, rows, padded_copy, ring_groups, reuse) -> BlockPlan:
    k, c = patch_size, channels
    h, w = height - k + 1, width - k + 1
    hr, wr = ref_height - k + 1, ref_width - k + 1
    # whole-call memory: pixel norms of both maps, inverse reference patch norms, input patch norms,
    # running best score (float) and index (int64); features are normalised block by block, not copied whole
    fixed = batch * (height * width + ref_height * ref_width + hr * wr + 2 * h * w) * itemsize + batch * h * w * 8
    if padded_copy:
        fixed += batch * c * (height * width + ref_height * ref_width) * itemsize
    avail = int(memory_budget_mb * _MIB) - fixed
    work = work_mb * _MIB

    def cost(bb, m, bx, bv, bu):
        shared = reuse and bu >= wr and bv < hr
        return _block_bytes(bb, m, bx, bv, bu, k, c, itemsize, ring_groups, height if shared else 0)

    m = max(1, min(rows, height))
    bx, bu, bv = w, wr, 1
    # very wide images: cut reference columns, then input columns, until one reference row fits the budget
    while bu > 1 and cost(1, m, bx, bv, bu) > avail:
        bu = max(1, bu // 2)
    while bx > 1 and cost(1, m, bx, bv, bu) > avail:
        bx = max(1, bx // 2)
    while m > 1 and cost(1, m, bx, bv, bu) > avail:
        m -= 1
    if cost(1, m, bx, bv, bu) > avail:
        need = math.ceil((fixed + cost(1, 1, 1, 1, 1)) / _MIB)
        raise InputError(f"memory_budget_mb={memory_budget_mb} is too small for a {height}x{width} input and a "
                         f"{ref_height}x{ref_width} reference with {c} channels (per-position arrays plus the "
                         f"smallest block); give memory_budget_mb >= {need}")
    # grow the reference block (fewer overlap rows recomputed: (bv+k-1)/bv of the minimum work)
    # while the streamed working set stays near work_mb and the whole block within the budget
    slab_bytes = lambda bv_: (bx + k - 1) * (bv_ + k - 1) * (bu + k - 1) * itemsize * (4 * m + k - 1)
    while bv < hr and slab_bytes(bv + 1) <= work and cost(1, m, bx, bv + 1, bu) <= avail:
        bv += 1
    # a minimum block height when the budget allows it. Without reuse every block multiplies k-1 overlap
    # rows again: below 4k rows that costs more than small blocks save. With reuse the overlap is copied,
    # not multiplied, and what remains per block is that copy and the loop: measured at CUFED5 size (one
    # thread, 4 input rows, 9 interleaved runs, median) 4/6/9/12-row blocks took 2.41/2.14/2.44/2.34 s
    # on a noisy machine (a second run: 6 rows 2.13 s, 12 rows 2.30 s), so at least 2k.
    while bv < min(hr, (2 if reuse else 4) * k) and cost(1, m, bx, bv + 1, bu) <= avail:
        bv += 1
    bb = 1
    while bb < batch and slab_bytes(bv) * (bb + 1) <= work and cost(bb + 1, m, bx, bv, bu) <= avail:
        bb += 1
    return BlockPlan(bb, m, bx, bv, bu, cost(bb, m, bx, bv, bu), fixed, ring_groups, reuse)


def _speed_knobs(device: torch.device, memory_budget_mb: float) -> dict:
    """Blocking speed knobs of :func:`plan_blocks` for a device (the memory budget binds on every device).

    CPU: the defaults (4 input rows per matmul, ~8 MB streamed working set, a ring of 8 row groups so
    that live rows are moved rarely), which keep the shift sums in cache. CUDA: there is no cache to fit
    and every row group costs about 15 kernel launches, so blocks grow to the budget, 16 input rows go
    through each matmul, and the ring holds one group (moving its k-1 live rows is one cheap copy there).
    Measured on an H200 at CUFED5 size (C=256, 125x83 against 125x83), median of 7, blocks grown to the
    512 MiB budget (benchmarks/matching_cuda.py, results/matching_benchmark_cuda.json): 8/16/32 rows took
    9.3/5.5/6.0 ms with a one-group ring and 7.0/7.9/8.0 ms with eight groups (whose ring leaves room for
    fewer reference rows per block); the CPU blocking 81 ms; the naive full matrix 9.4 ms and +575 MiB.
    """
    if device.type == "cuda":
        # no reuse of shared rows: at CUFED5 size the whole reference is one block, and the timings above
        # were measured without it
        return {"rows": 16, "work_mb": memory_budget_mb, "ring_groups": 1, "reuse": False}
    return {}


def _no_autocast(device: torch.device):
    """A context in which autocast is off on ``device`` (a no-op where torch has no autocast for it)."""
    if device.type in ("cuda", "cpu", "mps", "xpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _first_max(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over the last axis and the index of its first occurrence (ties: lowest index).

    Same result as ``t.max(-1)`` with first-index ties, built from amax, comparison and where, which are
    vectorised on the CPU (max-with-index is about 10x slower per element there).
    """
    n = t.shape[-1]
    val = t.amax(dim=-1)
    # reversed positions n..1: the first position that reaches the max has the largest key
    rev = torch.arange(n, 0, -1, device=t.device, dtype=torch.int32)
    key = torch.where(t == val.unsqueeze(-1), rev, 0).amax(dim=-1)
    return val, (n - key).long()


def _block_argmax(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maximum of every [bv, bu] score block and its row-major first position.

    q: [..., bv, bu] contiguous. Returns (val [...], v [...], u [...]) int64, ties resolved row-major
    (smallest v, then smallest u), as one max over the flattened block would.
    Column maxima first (an elementwise max over rows, fast), then the first column holding the
    maximum and the first row in it; only where the maximum occurs in several columns (ties,
    e.g. zero-padded regions) the block is searched again in row-major order.
    """
    bu = q.shape[-1]
    colmax = q.amax(dim=-2)                                            # [..., bu]
    val, ui = _first_max(colmax)
    col = q.gather(-1, ui[..., None, None].expand(*q.shape[:-1], 1)).squeeze(-1)  # [..., bv]
    _, vi = _first_max(col)
    tied = (colmax == val.unsqueeze(-1)).sum(dim=-1) > 1
    if bool(tied.any()):
        _, fi = _first_max(q[tied].flatten(-2))
        vi[tied] = torch.div(fi, bu, rounding_mode="floor")
        ui[tied] = fi % bu
    return val, vi, ui


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


def _match_block(strip, strip_norm, rblk, inv_blk, best, best_idx, k, m, v0, u0, wr, ring_groups=8,
                 carry_in=None, carry_out=None):
    """Stream all input pixel rows of one (sample, input-column, reference) block; update the running best.

    strip: [bb, C, H, X'] raw input features of the column strip (X' = bx + k - 1); each group of rows is
    divided by its pixel norms ``strip_norm`` [bb, H, X'] on the fly into a [bb, C, rows*X'] buffer.
    rblk: [bb, C, V'*U'] the reference block's pixels, per-pixel normalised (V' = bv + k - 1, U' = bu + k - 1).
    inv_blk: [bb, bv, bu] 1 / (reference patch norm + 1e-5).
    best, best_idx: [bb, h, bx] running maximum and its global index (views, updated in place).
    m: input pixel rows per matmul; ring_groups: how many groups the ring of column-summed rows holds
    before its last k-1 rows are moved back to the front.
    carry_in: [bb, H, X', k-1, U'] the pixel similarities of every input row against this block's first k-1
    reference rows, kept by the previous block (its last k-1 rows); rblk then holds only the other rows.
    carry_out: a buffer of that shape that receives this block's last k-1 rows for the next block.

    Flat-index trick: in the similarity slab of one input pixel row, laid out [X', V', U'] and flattened,
    moving one pixel right in both the input and the reference is a constant step Dx = V'*U' + 1, and one
    pixel down in both is one slab plus U'. So the k x k shift sums are sums of contiguous 1-D slices.
    """
    bb, c, hh, xx = strip.shape
    bv, bu = inv_blk.shape[1:]
    vv, uu = bv + k - 1, bu + k - 1
    bx = xx - k + 1
    vu = vv * uu
    slab = xx * vu
    dx = vu + 1
    lt = (bx - 1) * vu + (vv - 1) * uu + bu   # length of a column-summed row T that later reads need
    lp = (bx - 1) * vu + (bv - 1) * uu + bu   # length of a patch-score row P
    cap = k - 1 + m * ring_groups
    ring = torch.empty(bb, cap, slab, dtype=strip.dtype, device=strip.device)
    pbuf = torch.empty(bb, m, bx * vu, dtype=strip.dtype, device=strip.device)
    abuf = torch.empty(bb, c, m * xx, dtype=strip.dtype, device=strip.device)
    # the pixel similarities of m input rows, one buffer reused by every matmul of the block: a fresh output
    # is tens of MB of new pages that the operating system maps and zeroes each time (one-thread sgemm of
    # this shape, 1016 x 256 x 3937: 33 GFLOP/s into fresh memory, 46 GFLOP/s into a reused buffer)
    sbuf = torch.empty(bb, m * xx, vu, dtype=strip.dtype, device=strip.device)
    # VGG features rarely have all-zero pixels: then every reference patch norm is the same (3) and the
    # division by it cannot change the ranking; it is applied to the maxima only (one pass less)
    flat_inv = inv_blk.flatten()
    uniform = bool((flat_inv == flat_inv[0]).all())
    start, filled, y_out = 0, 0, 0
    for y0 in range(0, hh, m):
        n = min(m, hh - y0)
        if start + filled + n > cap:
            # move the k-1 live rows to the front of the ring
            ring[:, 0:filled] = ring[:, start:start + filled].clone()
            start = 0
        # S = X^T R for n input pixel rows against the whole reference block: [bb, n, X'*V'*U']
        # the input rows, normalised per pixel, as [bb, C, n*X'] (no transposition: the matmul reads it transposed)
        a = abuf[:, :, :n * xx].view(bb, c, n, xx)
        torch.div(strip[:, :, y0:y0 + n], strip_norm[:, None, y0:y0 + n], out=a)
        s4 = sbuf[:, :n * xx].view(bb, n * xx, vv, uu)
        if carry_in is None:
            torch.bmm(a.view(bb, c, n * xx).transpose(1, 2), rblk, out=sbuf[:, :n * xx])
        else:
            # the first k-1 reference rows were multiplied by the previous block: copy, and multiply the rest
            s4[:, :, :k - 1].copy_(carry_in[:, y0:y0 + n].reshape(bb, n * xx, k - 1, uu))
            torch.bmm(a.view(bb, c, n * xx).transpose(1, 2), rblk, out=s4[:, :, k - 1:].flatten(2))
        if carry_out is not None:
            carry_out[:, y0:y0 + n].copy_(s4[:, :, vv - k + 1:].reshape(bb, n, xx, k - 1, uu))
        s = sbuf[:, :n * xx].view(bb, n, slab)
        # T[y', x, v', u] = sum_b S[y', x+b, v', u+b]  (column shifts: flat steps of Dx)
        t_new = ring[:, start + filled:start + filled + n, :lt]
        torch.add(s[:, :, 0:lt], s[:, :, dx:dx + lt], out=t_new)
        for b in range(2, k):
            t_new += s[:, :, b * dx:b * dx + lt]
        filled += n
        n_out = filled - (k - 1)
        if n_out <= 0:
            continue
        # P[y, x, v, u] = sum_a T[y+a, x, v+a, u]  (row shifts: next ring row, flat step of U')
        p = pbuf[:, :n_out, :lp]
        torch.add(ring[:, start:start + n_out, 0:lp], ring[:, start + 1:start + 1 + n_out, uu:uu + lp], out=p)
        for a in range(2, k):
            p += ring[:, start + a:start + a + n_out, a * uu:a * uu + lp]
        # scores of the valid (v < bv, u < bu) entries divided by the reference patch norms
        q = pbuf[:, :n_out].view(bb, n_out, bx, vv, uu)[..., :bv, :bu]
        if uniform:
            val, vi, ui = _block_argmax(q)
            val = val * flat_inv[0]
        else:
            val, vi, ui = _block_argmax(q * inv_blk[:, None, None])
        gidx = (v0 + vi) * wr + u0 + ui
        cur = best[:, y_out:y_out + n_out]
        cur_idx = best_idx[:, y_out:y_out + n_out]
        # strictly better only: on exact ties the earlier reference patch wins, as in one global max
        better = val > cur
        cur_idx.copy_(torch.where(better, gidx, cur_idx))
        cur.copy_(torch.where(better, val, cur))
        y_out += n_out
        start += n_out
        filled -= n_out


def match_patches(feat_input: torch.Tensor, feat_ref: torch.Tensor, patch_size: int = 3, padding: str = "valid",
                  memory_budget_mb: float = 512, plan: BlockPlan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-1 patch matching by cosine similarity, fast and with bounded memory.

    Same definition and outputs as :func:`match_patches_naive` (indices equal up to ties, scores to
    float rounding), computed by pixel-similarity matmuls summed along the k x k shifts, blocked so
    that the extra memory stays under ``memory_budget_mb`` MiB (default 512) at any image size.

    feat_input: [B, C, H, W] float (CPU or CUDA); feat_ref: [B, C, Hr, Wr] (any Hr, Wr), same dtype/device.
    patch_size: odd k (the authors: 3). padding: "valid" (the authors': (H-k+1)x(W-k+1) outputs,
    patch top-left corners) or "same" (zero padding, H x W outputs, patch centres).
    plan: force a :class:`BlockPlan` (tests use it to show that results do not depend on blocking).
    Returns (index [B, h, w] int64 row-major into the reference's patch grid, score [B, h, w] in [-1, 1]).
    float16/bfloat16 features (mixed-precision training) are matched in float32 and give a float32 score.
    """
    _check_pair(feat_input, feat_ref, patch_size, padding)
    if memory_budget_mb <= 0:
        raise InputError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
    k = patch_size
    # matching runs in float32 even inside mixed precision (the training step's autocast on CUDA): bfloat16
    # keeps 8 significant bits, which would reorder near-equal patch scores and change the top-1
    # fewer threads when other processes hold cores: many small parallel regions collapse otherwise
    with torch.no_grad(), _no_autocast(feat_input.device), fair_threads():
        x, r = feat_input, feat_ref
        converted = x.dtype in (torch.float16, torch.bfloat16)
        if converted:
            x, r = x.float(), r.float()
        if padding == "same":
            p = k // 2
            x, r = F.pad(x, (p, p, p, p)), F.pad(r, (p, p, p, p))
        b, c, hh, ww = x.shape
        _, _, hrr, wrr = r.shape
        h, w, hr, wr = hh - k + 1, ww - k + 1, hrr - k + 1, wrr - k + 1
        if plan is None:
            plan = plan_blocks(b, c, hh, ww, hrr, wrr, k, memory_budget_mb, x.element_size(),
                               padded_copy=padding == "same" or converted, **_speed_knobs(x.device, memory_budget_mb))
        # 1 / (patch norm + 1e-5) of the per-pixel normalised maps: the authors normalise each reference
        # patch over its 9C values, and divide the input patch norm out at the end
        ref_pix_norm = _pixel_norms(r)                         # [B, Hr, Wr]
        in_pix_norm = _pixel_norms(x)                           # [B, H, W]
        inv_ref = 1.0 / (_unit_patch_norms(ref_pix_norm, k) + NORM_EPS)   # [B, hr, wr]
        in_norm = _unit_patch_norms(in_pix_norm, k)                       # [B, h, w]
        best = torch.full((b, h, w), -math.inf, dtype=r.dtype, device=r.device)
        best_idx = torch.zeros((b, h, w), dtype=torch.long, device=r.device)
        for b0 in range(0, b, plan.bb):
            b1 = min(b, b0 + plan.bb)
            for x0 in range(0, w, plan.bx):
                x1 = min(w, x0 + plan.bx)
                strip = x[b0:b1, :, :, x0:x1 + k - 1]
                # one reference column block: consecutive row blocks share k-1 reference rows, whose pixel
                # similarities the previous block hands on instead of multiplying them again
                carry = None
                if plan.reuse and plan.bu >= wr and plan.bv < hr:
                    carry = [torch.empty(b1 - b0, hh, x1 - x0 + k - 1, k - 1, wrr, dtype=x.dtype, device=x.device)
                             for _ in range(2)]
                for j, v0 in enumerate(range(0, hr, plan.bv)):
                    v1 = min(hr, v0 + plan.bv)
                    c_in = carry[(j + 1) % 2] if carry is not None and j > 0 else None
                    c_out = carry[j % 2] if carry is not None and v1 < hr else None
                    vs = v0 + k - 1 if c_in is not None else v0
                    for u0 in range(0, wr, plan.bu):
                        u1 = min(wr, u0 + plan.bu)
                        # the reference block (its new rows), normalised per pixel: [bb, C, rows*U']
                        rblk = (r[b0:b1, :, vs:v1 + k - 1, u0:u1 + k - 1]
                                / ref_pix_norm[b0:b1, None, vs:v1 + k - 1, u0:u1 + k - 1]).reshape(b1 - b0, c, -1)
                        _match_block(strip, in_pix_norm[b0:b1, :, x0:x1 + k - 1], rblk, inv_ref[b0:b1, v0:v1, u0:u1],
                                     best[b0:b1, :, x0:x1], best_idx[b0:b1, :, x0:x1], k, plan.rows, v0, u0, wr,
                                     plan.ring_groups, c_in, c_out)
                        del rblk
        score = best / (in_norm + NORM_EPS)
    return best_idx, score


# ----------------------------------------------------------------------------------------------
# coarse-to-fine (MASA-SR's idea): approximate, for very large references
# ----------------------------------------------------------------------------------------------

def match_coarse_to_fine(feat_input: torch.Tensor, feat_ref: torch.Tensor, patch_size: int = 3,
                         padding: str = "valid", block: int = 8, radius: int = 4, ref_scale: int = 2,
                         memory_budget_mb: float = 512) -> tuple[torch.Tensor, torch.Tensor]:
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
