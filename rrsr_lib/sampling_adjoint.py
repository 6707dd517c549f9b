"""The input gradient of bilinear sampling, computed channel by channel (the reciprocal pass's extra cost).

Why this module exists. Reciprocal learning (rrsr_lib.reciprocal) does not detach SR: in pass 2 SR is the
reference, so the loss must be differentiated with respect to the reference texture features that the
alignment units sample. Bilinear sampling is linear in its input,

    samples[c, s] = sum_q S[s, q] * x[c, q]          (S: 4 bilinear weights per sample s, zero elsewhere)

so its input gradient is the transpose,  grad_x[c, q] = sum_s S[s, q] * grad_samples[c, s]: a *scatter*
of every sample's gradient onto the 4 pixels around its position. This is the only work that a reciprocal
step does beyond two plain steps (a plain step's reference needs no gradient).

ATen's CPU kernel (``grid_sampler_2d_backward``) does that scatter scalar by scalar, all channels of a point
before the next point, with masks and index arithmetic for every lane: at CUFED5-sized x4 features
(8 groups x 8 channels, 9 x 160 x 160 samples) it takes ~0.3 s per sample of the batch, ~2.5x the
forward sampling, and it made a reciprocal step cost 2.2-2.4x a plain step on one CPU core (issue 5).
Here the same sum is computed in two passes per group, compiled with numba:

1. per sample position s: the index of its top-left corner and its 4 weights, with the weights of
   corners outside the map set to 0 (zero padding, ATen's rule) and the 2x2 window moved inside the map;
2. per channel: one sweep over the samples that adds the 4 weighted values into that channel's plane,
   which stays in the CPU cache (a 257 x 257 float32 plane is 264 KB).

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
    import numpy as np

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def scatter(grad_samples, grid, grad_x, one, scale_x, scale_y, high_x, high_y, corner, weights):
        # grad_samples [G, C, Ho, Wo]; grid [G, Ho, Wo, 2] in [-1, 1] (x, y); grad_x [G, C, H, W], added to;
        # corner int64 [Ho*Wo] and weights [Ho*Wo, 4]: scratch space that pass 1 fills for each group in turn.
        # one, scale_*, high_* have the tensors' dtype, so that float32 arithmetic stays float32 (as ATen's)
        n_groups, channels, h_out, w_out = grad_samples.shape
        height, width = grad_x.shape[2], grad_x.shape[3]
        zero = one - one
        low = -one - one
        for g in range(n_groups):
            # pass 1: corners and weights of every sample position
            s = 0
            for i in range(h_out):
                for j in range(w_out):
                    # align_corners=True: pixel = (coordinate + 1) * (size - 1) / 2, as ATen computes it
                    ix = (grid[g, i, j, 0] + one) * scale_x
                    iy = (grid[g, i, j, 1] + one) * scale_y
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
            # pass 2: channel by channel, grad_x[c, q] += S[s, q] * grad_samples[c, s]
            for c in range(channels):
                plane = grad_x[g, c].ravel()
                src = grad_samples[g, c].ravel()
                for s in range(h_out * w_out):
                    v = src[s]
                    q = corner[s]
                    plane[q] += weights[s, 0] * v
                    plane[q + 1] += weights[s, 1] * v
                    plane[q + width] += weights[s, 2] * v
                    plane[q + width + 1] += weights[s, 3] * v

    _kernel = scatter
    return _kernel


def bilinear_input_grad(grad_samples: torch.Tensor, grid: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Add the input gradient of ``F.grid_sample(x, grid, "bilinear", "zeros", align_corners=True)`` to ``out``.

    grad_samples: [N, C, Ho, Wo], the gradient of the samples; grid: [N, Ho, Wo, 2], (x, y) in [-1, 1];
    out: [N, C, H, W], the gradient of x, added to in place (pass zeros for the gradient itself).
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
    import numpy as np

    positions = grad_samples.shape[2] * grad_samples.shape[3]
    scalar = out.numpy().dtype.type
    arrays = (grad_samples.detach().numpy(), grid.detach().numpy(), out.detach().numpy())
    constants = (scalar(1), scalar((w - 1) / 2), scalar((h - 1) / 2), scalar(w + 1), scalar(h + 1))

    def run(lo: int, hi: int) -> None:
        # pass 1's scratch, reused group after group: one corner index and 4 weights per sample position
        corner = np.empty(positions, dtype=np.int64)
        weights = np.empty((positions, 4), dtype=scalar)
        gs, gr, o = (a[lo:hi] for a in arrays)
        _kernel(gs, gr, o, *constants, corner, weights)

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
