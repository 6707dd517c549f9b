"""The exact patch matcher of rrsr_lib.matching, fast and memory-bounded: pixel similarities, shift sums, blocks.

rrsr_lib.matching.match_patches computes the paper's matching (rrsr_lib.matching.match_patches_naive: every
input patch against every reference patch, one [h*w, hr*wr] matrix) by :func:`match_patches_blocked`. Same
definition, same outputs (indices equal up to ties, scores to float rounding; tests/test_matching.py), but
the extra memory stays under ``memory_budget_mb`` whatever the image size. A 9C-dimensional patch dot product
is the sum of 9 C-dimensional pixel dot products at shifted positions,

    <P_in(y, x), P_ref(v, u)> = sum_{a, b in 0..2} S[(y+a, x+b), (v+a, u+b)],  S = X^T R,

so the pixel similarities S are computed by matrix multiplication (9x fewer multiplications than the patch
matrix) and summed along the 3x3 diagonal shifts. S is never held whole: the reference is cut into blocks of
rows (and columns, for very wide images), the input's pixel rows are streamed through each block a few at a
time, and a running maximum is kept (:func:`plan_blocks` chooses the blocks, :func:`_match_block` streams
one). Consecutive row blocks share k-1 reference rows; their pixel similarities are handed from one block to
the next rather than multiplied twice. On CUDA the blocks are as large as the budget allows (fewer kernel
launches, :func:`_speed_knobs`). The timings behind these choices are in PERFORMANCE.md.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..device import fair_threads
from ..errors import InputError

__all__ = ["BlockPlan", "plan_blocks", "match_patches_blocked"]

_MIB = 1024 * 1024


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


@dataclass(frozen=True)
class BlockPlan:
    """How :func:`match_patches_blocked` cuts the work.

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
    """Peak bytes of the temporaries of one block of :func:`match_patches_blocked` (see :func:`_match_block`'s buffers).

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
    """Choose the blocking of :func:`match_patches_blocked` so that its extra memory stays under the budget.

    height/width, ref_height/ref_width: sizes of the (padded, for 'same') feature maps.
    padded_copy: True where copies of both maps live for the whole call (padding='same' pads them with zeros,
    half-precision inputs are converted to float32).
    work_mb, rows, ring_groups: speed knobs, independent of the budget. ``rows`` input pixel rows go through one
    matrix multiplication; the reference block grows until the streamed working set (the similarities
    of ``rows`` input rows against the block, the ring of column sums, the patch scores) reaches about
    ``work_mb``. Small blocks keep the matmul output and the shift sums in cache but mean more, smaller
    tensor operations (and, without ``reuse``, more recomputed overlap rows: (bv+k-1)/bv). The defaults
    (4 rows, work_mb=8) were the faster of the settings measured on the CPU (PERFORMANCE.md). With
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
    # not multiplied, and what remains per block is that copy and the loop: at CUFED5 size 6-row blocks
    # (2k) were the fastest of those measured (PERFORMANCE.md), so at least 2k.
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
    These were the fastest of the settings that benchmarks/matching_cuda.py sweeps on a GPU at CUFED5 size
    (results/matching_benchmark_cuda.json; the figures are in PERFORMANCE.md).
    """
    if device.type == "cuda":
        # no reuse of shared rows: at CUFED5 size the whole reference is one block, and the GPU timings
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
    vectorised on the CPU (max-with-index is several times slower per element there).
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
    # is tens of MB of new pages that the operating system maps and zeroes each time (the one-thread sgemm
    # of this shape is markedly slower into fresh memory than into a reused buffer: PERFORMANCE.md)
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



def match_patches_blocked(feat_input: torch.Tensor, feat_ref: torch.Tensor, patch_size: int, padding: str,
                          memory_budget_mb: float, plan: BlockPlan | None, norm_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The body of rrsr_lib.matching.match_patches (which checks the inputs and documents the arguments).

    Exact top-1 patch matching by pixel-similarity matmuls summed along the k x k shifts, blocked so that the
    extra memory stays under ``memory_budget_mb`` MiB. plan: force a :class:`BlockPlan` (None: :func:`plan_blocks`
    with the device's :func:`_speed_knobs`). norm_eps: added to every patch norm before dividing by it
    (rrsr_lib.matching.NORM_EPS, the authors' 1e-5). float16/bfloat16 features are matched in float32.
    Returns (index [B, h, w] int64, score [B, h, w]).
    """
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
        inv_ref = 1.0 / (_unit_patch_norms(ref_pix_norm, k) + norm_eps)   # [B, hr, wr]
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
        score = best / (in_norm + norm_eps)
    return best_idx, score
