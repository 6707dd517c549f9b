"""The input gradient of bilinear sampling as a numba scatter (the reciprocal pass's extra cost on the CPU).

Why this module exists. Reciprocal learning (rrsr_lib.reciprocal) does not detach SR: in pass 2 SR is the
reference, so the loss must be differentiated with respect to the reference texture features that the
alignment units sample. Bilinear sampling is linear in its input,

    samples[c, s] = sum_q S[s, q] * x[c, q]          (S: 4 bilinear weights per sample s, zero elsewhere)

so its input gradient is the transpose,  grad_x[c, q] = sum_s S[s, q] * grad_samples[c, s]: a *scatter*
of every sample's gradient onto the 4 pixels around its position. Besides the backward pass of the VGG texture
layers on SR, this is the only work that a reciprocal step does beyond two plain steps (a plain step's
reference needs no gradient).

ATen's CPU kernel (``grid_sampler_2d_backward``) does that scatter scalar by scalar, all channels of a point
before the next point, with masks and index arithmetic for every lane: at CUFED5-sized x4 features
(8 groups x 8 channels, 9 x 160 x 160 samples) it takes ~0.3 s per sample of the batch, ~2.5x the
forward sampling, and it made a reciprocal step cost 2.2-2.4x a plain step on one CPU core (issue 5).
Here the same sum is computed in two passes per group, compiled with numba:

1. per sample position s: the index of its top-left corner and its 4 weights, with the weights of
   corners outside the map set to 0 (zero padding, ATen's rule) and the 2x2 window moved inside the map;
2. per block of 8 channels: one sweep over the samples that adds the 4 weighted values of all 8 channels
   into an accumulator holding a pixel's 8 channels side by side (one 32-byte run), so that a sample's 4
   corners touch 4 cache lines rather than 32 and its corner and weights are read once per 8 channels;
   the accumulator is then copied back to the planar layout. Channels beyond a multiple of 8 get one sweep
   each, straight into their plane. (The blocks make the kernel 1.3-1.4x faster than one sweep per
   channel; numba compiles the 8 lanes as scalar code, not SIMD.)

The weights are computed with ATen's formulas and operation order (align_corners=True, bilinear, zeros),
so each term is bit-identical; only the order of the additions into a pixel differs (float rounding,
relative 1e-7 in float32; tests/test_sampling_adjoint.py compares with ATen). Groups run in parallel on
``torch.get_num_threads()`` threads (each group writes only its own planes). The kernel is plain serial
numba code (no numba threading layer: OpenMP's spinning threads would double the CPU time it costs).

The first use in a process compiles the kernel (about 2 s per dtype on the 2-core machine) or loads it
from numba's cache (``rrsr_lib/__pycache__``, or numba's user cache where that is read-only).

numba is a dependency (pyproject.toml). Where it cannot be imported, :func:`available` is False and
rrsr_lib.alignment falls back to ATen's kernel, saying so once.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from .errors import InputError

__all__ = ["available", "use_numba", "bilinear_input_grad"]

log = logging.getLogger(__name__)
_kernel = None          # the compiled function, built on first use
_executor = None        # threads for several groups at once (only when torch uses several threads)
_state = {"enabled": True, "checked": False, "ok": False}


def available() -> bool:
    """True when the numba kernel can be used (numba imports and :func:`use_numba` has not turned it off)."""
    if not _state["enabled"]:
        return False
    if not _state["checked"]:
        _state["checked"] = True
        try:
            _build()
            _state["ok"] = True
        except ImportError as exc:   # numba missing or broken: ATen's kernel does the same job, slower
            log.warning("rrsr_lib.sampling_adjoint: numba unavailable (%s); using ATen's slower CPU kernel "
                        "for the reference gradient of reciprocal learning", exc)
    return _state["ok"]


def use_numba(enabled: bool) -> bool:
    """Turn the numba kernel on or off (tests and benchmarks compare it with ATen's); returns the old setting."""
    old = _state["enabled"]
    _state["enabled"] = bool(enabled)
    return old


def _build():
    global _kernel
    if _kernel is not None:
        return _kernel
    import numba

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def corners_and_weights(grid_g, one, scale_x, scale_y, high_x, high_y, height, width, corner, weights):
        # pass 1 for one group: grid_g [Ho, Wo, 2] in [-1, 1] (x, y) -> corner[s] (index of the top-left pixel of
        # the 2x2 window, int64) and weights[s, 0:4] (NW, NE, SW, SE) for every sample position s = i * Wo + j.
        # one, scale_*, high_* have the tensors' dtype, so that float32 arithmetic stays float32 (as ATen's)
        zero = one - one
        low = -one - one
        s = 0
        for i in range(grid_g.shape[0]):
            for j in range(grid_g.shape[1]):
                # align_corners=True: pixel = (coordinate + 1) * (size - 1) / 2, as ATen computes it
                ix = (grid_g[i, j, 0] + one) * scale_x
                iy = (grid_g[i, j, 1] + one) * scale_y
                # positions far outside (or NaN) read nothing; clamping them keeps every corner outside
                # and the integer conversion below defined
                if not ix >= low:
                    ix = low
                if ix > high_x:
                    ix = high_x
                if not iy >= low:
                    iy = low
                if iy > high_y:
                    iy = high_y
                fx = np.floor(ix)
                fy = np.floor(iy)
                # ATen's bilinear weights: w/e/n/s are the distances to the east/west/north/south edges
                w = ix - fx
                e = one - w
                n = iy - fy
                so = one - n
                x0 = int(fx)
                y0 = int(fy)
                weights[s, 0] = so * e    # north-west corner (y0, x0)
                weights[s, 1] = so * w    # north-east (y0, x0 + 1)
                weights[s, 2] = n * e     # south-west (y0 + 1, x0)
                weights[s, 3] = n * w     # south-east (y0 + 1, x0 + 1)
                if 0 <= x0 < width - 1 and 0 <= y0 < height - 1:
                    corner[s] = y0 * width + x0
                else:
                    # at the border: move the 2x2 window inside the map, keep each weight on its own
                    # pixel, and give corners outside the map weight 0 (zero padding)
                    cx = min(max(x0, 0), width - 2)
                    cy = min(max(y0, 0), height - 2)
                    wt = (weights[s, 0], weights[s, 1], weights[s, 2], weights[s, 3])
                    for k in range(4):
                        weights[s, k] = zero
                    for k in range(4):
                        yy = y0 + k // 2
                        xx = x0 + k % 2
                        if 0 <= yy < height and 0 <= xx < width:
                            weights[s, (yy - cy) * 2 + (xx - cx)] = wt[k]
                    corner[s] = cy * width + cx
                s += 1

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def scatter(grad_samples, grid, grad_x, one, scale_x, scale_y, high_x, high_y, accumulate,
                corner, weights, acc):
        # grad_samples [G, C, Ho, Wo]; grid [G, Ho, Wo, 2]; grad_x [G, C, H, W], added to (accumulate) or
        # overwritten. Scratch space, reused group after group: corner int64 [Ho*Wo], weights [Ho*Wo, 4],
        # acc [H*W*8] (8 channels of one pixel next to each other).
        n_groups, channels, h_out, w_out = grad_samples.shape
        height, width = grad_x.shape[2], grad_x.shape[3]
        npos = h_out * w_out
        zero = one - one
        blocked = channels - channels % 8
        for g in range(n_groups):
            corners_and_weights(grid[g], one, scale_x, scale_y, high_x, high_y, height, width, corner, weights)
            # pass 2, 8 channels at a time: grad_x[c, q] += S[s, q] * grad_samples[c, s] into an accumulator
            # that holds the 8 channels of a pixel in one 32-byte run, so that the 4 corners of a sample touch
            # 4 (float32) cache lines instead of 32, and each sample's corner and weights are read once per
            # 8 channels
            for c0 in range(0, blocked, 8):
                acc[:] = zero
                g0 = grad_samples[g, c0].ravel()
                g1 = grad_samples[g, c0 + 1].ravel()
                g2 = grad_samples[g, c0 + 2].ravel()
                g3 = grad_samples[g, c0 + 3].ravel()
                g4 = grad_samples[g, c0 + 4].ravel()
                g5 = grad_samples[g, c0 + 5].ravel()
                g6 = grad_samples[g, c0 + 6].ravel()
                g7 = grad_samples[g, c0 + 7].ravel()
                for s in range(npos):
                    v0, v1, v2, v3, v4, v5, v6, v7 = g0[s], g1[s], g2[s], g3[s], g4[s], g5[s], g6[s], g7[s]
                    q = corner[s]
                    for k in range(4):
                        # corner k of the window: NW (q), NE (q + 1), SW (q + W), SE (q + W + 1)
                        b = 8 * (q + (k // 2) * width + k % 2)
                        a = weights[s, k]
                        acc[b] += a * v0
                        acc[b + 1] += a * v1
                        acc[b + 2] += a * v2
                        acc[b + 3] += a * v3
                        acc[b + 4] += a * v4
                        acc[b + 5] += a * v5
                        acc[b + 6] += a * v6
                        acc[b + 7] += a * v7
                # back to the planar layout, one pixel (8 channels) at a time
                for c in range(8):
                    plane = grad_x[g, c0 + c].ravel()
                    if accumulate:
                        for q in range(height * width):
                            plane[q] += acc[8 * q + c]
                    else:
                        for q in range(height * width):
                            plane[q] = acc[8 * q + c]
            # the remaining channels (C not a multiple of 8), one at a time straight into their plane
            for c in range(blocked, channels):
                plane = grad_x[g, c].ravel()
                if not accumulate:
                    plane[:] = zero
                src = grad_samples[g, c].ravel()
                for s in range(npos):
                    v = src[s]
                    q = corner[s]
                    plane[q] += weights[s, 0] * v
                    plane[q + 1] += weights[s, 1] * v
                    plane[q + width] += weights[s, 2] * v
                    plane[q + width + 1] += weights[s, 3] * v

    _kernel = scatter
    return _kernel


def bilinear_input_grad(grad_samples: torch.Tensor, grid: torch.Tensor, out: torch.Tensor,
                        accumulate: bool = True) -> torch.Tensor:
    """Add the input gradient of ``F.grid_sample(x, grid, "bilinear", "zeros", align_corners=True)`` to ``out``.

    grad_samples: [N, C, Ho, Wo], the gradient of the samples; grid: [N, Ho, Wo, 2], (x, y) in [-1, 1];
    out: [N, C, H, W], the gradient of x, added to in place; with ``accumulate=False`` it is overwritten
    instead (``out`` may then be uninitialised, e.g. ``torch.empty_like(x)``: no separate zeroing pass).
    All three contiguous, on the CPU, of one dtype, float32 or float64; H, W >= 2.
    Equals ``torch.ops.aten.grid_sampler_2d_backward(grad_samples, x, grid, 0, 0, True, [True, False])[0]``
    (plus ``out``) up to the order of float additions. Returns ``out``.
    """
    if not available():
        raise RuntimeError("rrsr_lib.sampling_adjoint: numba is not available (pip install numba)")
    n, c, h, w = out.shape
    for name, t in (("grad_samples", grad_samples), ("grid", grid), ("out", out)):
        if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64) or not t.is_contiguous():
            raise InputError(f"bilinear_input_grad: {name} must be a contiguous float32/float64 CPU tensor, "
                             f"got {t.dtype} on {t.device}, contiguous={t.is_contiguous()}")
        if t.dtype != out.dtype:
            raise InputError(f"bilinear_input_grad: {name} is {t.dtype} but out is {out.dtype}; use one dtype")
    if grad_samples.shape[:2] != (n, c) or grid.shape != (n, *grad_samples.shape[2:], 2) or h < 2 or w < 2:
        raise InputError(f"bilinear_input_grad: shapes do not fit: grad_samples {tuple(grad_samples.shape)}, "
                         f"grid {tuple(grid.shape)}, out {tuple(out.shape)} (want [N, C, Ho, Wo], "
                         f"[N, Ho, Wo, 2], [N, C, H>=2, W>=2])")
    positions = grad_samples.shape[2] * grad_samples.shape[3]
    scalar = out.numpy().dtype.type
    arrays = (grad_samples.detach().numpy(), grid.detach().numpy(), out.detach().numpy())
    constants = (scalar(1), scalar((w - 1) / 2), scalar((h - 1) / 2), scalar(w + 1), scalar(h + 1))

    def run(lo: int, hi: int) -> None:
        # scratch, reused group after group: one corner index and 4 weights per sample position (pass 1) and
        # the 8-channel accumulator of pass 2 (h * w * 8 values: 2.1 MB for a 257 x 257 float32 map)
        corner = np.empty(positions, dtype=np.int64)
        weights = np.empty((positions, 4), dtype=scalar)
        acc = np.empty(h * w * 8 if c >= 8 else 0, dtype=scalar)
        gs, gr, o = (a[lo:hi] for a in arrays)
        _kernel(gs, gr, o, *constants, bool(accumulate), corner, weights, acc)

    # threads: as many as torch uses, each on its own groups (a group writes only its own planes); the
    # kernel releases the GIL. One thread (the benchmarks' and the tests' setting) runs inline.
    threads = min(torch.get_num_threads(), n)
    if threads <= 1:
        run(0, n)
    else:
        bounds = [round(k * n / threads) for k in range(threads + 1)]
        list(_pool(threads).map(run, bounds[:-1], bounds[1:]))
    return out


def _pool(threads: int):
    global _executor
    if _executor is None or _executor._max_workers < threads:
        from concurrent.futures import ThreadPoolExecutor
        _executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rrsr-scatter")
    return _executor
