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
(8 groups x 8 channels, 9 x 160 x 160 samples) it costs more than the forward sampling, and it made a
reciprocal step cost well over twice a plain step on one CPU core (issue 5; the figures are in PERFORMANCE.md).
Here the same sum is computed in two passes per group, compiled with numba:

1. per sample position s: the index of its top-left corner and its 4 weights, with the weights of
   corners outside the map set to 0 (zero padding, ATen's rule) and the 2x2 window moved inside the map;
2. per block of 8 channels: one sweep over the samples that adds the 4 weighted values of all 8 channels
   into an accumulator holding a pixel's 8 channels side by side (one 32-byte run), so that a sample's 4
   corners touch 4 cache lines rather than 32 and its corner and weights are read once per 8 channels;
   the accumulator is then copied back to the planar layout, all 8 planes in one pass. Channels beyond a
   multiple of 8 get one sweep each, straight into their plane. The blocks are faster than one sweep per
   channel, and they are compiled with LLVM's SLP vectoriser on (numba leaves it off by default), so that a
   corner's 8 adds become one 8-wide SIMD add: faster again, with bit-identical results (the order of the
   additions into each value is unchanged). PERFORMANCE.md has the measured gains.

The alignment units sample feature maps zero-padded to 2^k + 1 pixels (exact integer positions, see
rrsr_lib.alignment). ``grid_size`` tells the kernel that size while ``out`` holds the unpadded map: corners
in the padding are then treated like corners outside the map, and no gradient is computed for the padding
(at x4, 160 x 160 pixels instead of 257 x 257, and no crop afterwards).

The weights are computed with ATen's formulas and operation order (align_corners=True, bilinear, zeros),
so each term is bit-identical; only the order of the additions into a pixel differs (float rounding,
relative 1e-7 in float32; tests/test_sampling_adjoint.py compares with ATen). Groups run in parallel on
``torch.get_num_threads()`` threads (each group writes only its own planes). The kernel is plain serial
numba code (no numba threading layer: OpenMP's spinning threads would double the CPU time it costs).

The kernels are in rrsr_lib.fast._sampling_adjoint_kernels. The first use in a process compiles them for
float32 and float64 (seconds, once) or loads them from numba's cache (``rrsr_lib/fast/__pycache__``, or numba's
user cache where that is read-only).

numba is a dependency (pyproject.toml). Where it cannot be imported, :func:`available` is False and
rrsr_lib.alignment falls back to ATen's kernel, saying so once.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..errors import InputError

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
            log.warning("rrsr_lib.fast.sampling_adjoint: numba unavailable (%s); using ATen's slower CPU kernel "
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

    from . import _sampling_adjoint_kernels as kernels

    # compile now (or load numba's cache), for both dtypes, with LLVM's SLP vectoriser on: numba turns it off
    # by default (NUMBA_SLP_VECTORIZE=0), and the 8-lane adds of pass 2 need it to become SIMD instructions.
    # The setting is read when a function is compiled, so it is switched on for these compilations only.
    config = getattr(numba.core, "config", None)
    old = getattr(config, "SLP_VECTORIZE", None)
    try:
        if old is not None:
            config.SLP_VECTORIZE = 1
        for dt in (np.float32, np.float64):
            one = dt(1)
            kernels.scatter(np.zeros((1, 8, 1, 2), dt), np.zeros((1, 1, 2, 2), dt), np.zeros((1, 8, 2, 2), dt),
                            one, one, one, dt(3), dt(3), False, np.zeros(2, np.int64), np.zeros((2, 4), dt),
                            np.zeros(32, dt))
    finally:
        if old is not None:
            config.SLP_VECTORIZE = old
    _kernel = kernels.scatter
    return _kernel


def bilinear_input_grad(grad_samples: torch.Tensor, grid: torch.Tensor, out: torch.Tensor,
                        accumulate: bool = True, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Add the input gradient of ``F.grid_sample(x, grid, "bilinear", "zeros", align_corners=True)`` to ``out``.

    grad_samples: [N, C, Ho, Wo], the gradient of the samples; grid: [N, Ho, Wo, 2], (x, y) in [-1, 1];
    out: [N, C, H, W], the gradient of x, added to in place; with ``accumulate=False`` it is overwritten
    instead (``out`` may then be uninitialised, e.g. ``torch.empty_like(x)``: no separate zeroing pass).
    All three contiguous, on the CPU, of one dtype, float32 or float64; H, W >= 2.
    grid_size: (Hs, Ws) >= (H, W), the size of the map that the grid's coordinates refer to, when x is
    the top-left H x W part of a map zero-padded to Hs x Ws (rrsr_lib.alignment pads to 2^k + 1 so that
    integer positions stay exact): ``out`` then receives the gradient of that part only, as if the padded
    map's gradient had been computed and cropped, without computing the rest. None: (H, W).
    Equals ``torch.ops.aten.grid_sampler_2d_backward(grad_samples, x, grid, 0, 0, True, [True, False])[0]``
    (cropped to H x W; plus ``out``) up to the order of float additions. Returns ``out``.
    """
    if not available():
        raise RuntimeError("rrsr_lib.fast.sampling_adjoint: numba is not available (pip install numba)")
    n, c, h, w = out.shape
    hs, ws = (h, w) if grid_size is None else (int(grid_size[0]), int(grid_size[1]))
    if hs < h or ws < w:
        raise InputError(f"bilinear_input_grad: grid_size {tuple(grid_size)} is smaller than out's map {h}x{w}; "
                         f"it must be the (padded) size of the sampled map, at least H x W")
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
    # pixel = (coordinate + 1) * (size - 1) / 2 on the sampled (padded) map; corners at or beyond H, W are
    # treated like those outside the map (weight 0): their gradient is the padding's, which nobody wants
    constants = (scalar(1), scalar((ws - 1) / 2), scalar((hs - 1) / 2), scalar(ws + 1), scalar(hs + 1))

    def run(lo: int, hi: int) -> None:
        # scratch, reused group after group: one corner index and 4 weights per sample position (pass 1) and
        # the 8-channel accumulator of pass 2 (h * w * 8 values: 0.8 MB for 160 x 160 float32 x4 features)
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
