"""What a super-resolution call will cost, said before it starts, and LR tiles chosen to fit a memory budget.

A call ``model(lr, ref)`` holds feature maps at output resolution for the LR side and at reference resolution
for the reference side, so its peak memory grows with the output's pixels and the reference's pixels, not
with anything a user can guess from the file sizes (a 500x500 LR with a 2000x2000 reference: tens of GB).
The cost here is *measured*, not guessed from the architecture: the network runs on four small probes while
:class:`LiveTensorBytes` counts the bytes of every tensor alive (the peak of that count is what the call
adds to the process's memory: 663 MB counted against 716 MB of resident memory measured for the shipped
small RRSR at LR 80x60, reference 320x240). From the probes, with ``O`` the output pixels of a tile and
``R`` the reference pixels,

    peak ~ c + max(a O, b R) + s min(a O, b R)

(s = 0 when the two sides' peaks happen one after the other, as in the shipped networks: their measured
peak at O = R = 307,200 equals the one at O = 307,200, R = 76,800; s = 1 when they add up), and the time
follows the same form. Tiling the LR input (:func:`rrsr_lib.evaluate.tiled_forward`) shrinks ``O``; the
reference is always matched whole (exact matching), so when ``b R`` alone is over the budget the call is
refused, naming the budget and the two ways out. RRSR networks run their tiles by :mod:`rrsr_lib.reference_grid`,
which pays for the reference once instead of once per tile: their tiles follow :class:`GridCost`.
"""
from __future__ import annotations

import math
import os
import time
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .errors import InputError
from .matching import MATCH_BUDGET_MB

__all__ = ["LiveTensorBytes", "CallCost", "measure_cost", "GridCost", "measure_grid_cost", "default_budget_mb",
           "plan_call", "Plan"]

_MIB = 2 ** 20
# the probes: (LR side, reference side) in pixels; O = (4 x LR side)^2, R = (reference side)^2
_PROBES = {"small": (16, 64), "lr": (32, 64), "ref": (16, 128), "both": (32, 128)}


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of tensor storages that operators create inside the ``with`` block and that are still alive.

    ``current`` and ``peak`` are in bytes. Each storage is counted once (views share it) and uncounted when it
    is freed (a finalizer on the storage). Memory an operator allocates and frees internally is not seen.
    """

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self._live: set[int] = set()

    def _freed(self, key: int, nbytes: int) -> None:
        self._live.discard(key)
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in self._live:
                    self._live.add(key)
                    self.current += nbytes
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._freed, key, nbytes)
        return out


@dataclass(frozen=True)
class CallCost:
    """A network's cost law (module docstring): MiB and seconds as ``c + max(aO, bR) + s min(aO, bR)``."""
    mb: tuple[float, float, float, float]          # c (MiB), a, b (MiB per pixel), s
    seconds: tuple[float, float, float, float]     # the same for seconds

    @staticmethod
    def _law(coef, out_px: float, ref_px: float) -> float:
        c, a, b, s = coef
        x, y = a * out_px, b * ref_px
        return c + max(x, y) + s * min(x, y)

    def peak_mb(self, out_px: float, ref_px: float) -> float:
        return self._law(self.mb, out_px, ref_px)

    def time_s(self, out_px: float, ref_px: float) -> float:
        return self._law(self.seconds, out_px, ref_px)

    def ref_mb(self, ref_px: float) -> float:
        """What the reference side alone needs (MiB): tiling the LR input cannot lower it."""
        c, _, b, _ = self.mb
        return c + b * ref_px


def _fit(small: float, lr: float, ref: float, both: float, o: tuple[int, int], r: tuple[int, int]):
    """c, a, b, s of the law from the four probes' values; o, r: the (small, large) O and R of the probes.

    Exact when an output pixel and a reference pixel cost about the same (a ~ b: true of every network
    here), so that probe "lr" is dominated by its output and probe "ref" by its reference.
    """
    a = max(lr - small, 0.0) / (o[1] - o[0])
    b = max(ref - small, 0.0) / (r[1] - r[0])
    # with O large, how much a larger reference still adds, against what it adds with O small
    s = min(max((both - lr) / (ref - small), 0.0), 1.0) if ref > small else 1.0
    x, y = a * o[0], b * r[0]
    c = max(small - max(x, y) - s * min(x, y), 0.0)
    return c, a, b, s


_measured: "weakref.WeakKeyDictionary[torch.nn.Module, CallCost]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def measure_cost(model, device: torch.device | str = "cpu", scale: int = 4) -> CallCost:
    """Run ``model`` on the four probes of ``_PROBES`` and fit its :class:`CallCost` (cached per model).

    Takes about 2-3 s for the shipped small networks on a 2-core CPU. The probes are random images, so the
    matching is as costly as on photographs (its cost does not depend on the content).
    """
    if isinstance(model, torch.nn.Module) and model in _measured:
        return _measured[model]
    gen = torch.Generator().manual_seed(0)
    mb, sec = {}, {}
    for name, (lr_side, ref_side) in _PROBES.items():
        lr = torch.rand(1, 3, lr_side, lr_side, generator=gen).to(device)
        ref = torch.rand(1, 3, ref_side, ref_side, generator=gen).to(device)
        with LiveTensorBytes() as counter:
            t0 = time.perf_counter()
            model(lr, ref)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            sec[name] = time.perf_counter() - t0
        mb[name] = counter.peak / _MIB
    o = ((scale * _PROBES["small"][0]) ** 2, (scale * _PROBES["lr"][0]) ** 2)
    r = (_PROBES["small"][1] ** 2, _PROBES["ref"][1] ** 2)
    cost = CallCost(_fit(mb["small"], mb["lr"], mb["ref"], mb["both"], o, r),
                    _fit(sec["small"], sec["lr"], sec["ref"], sec["both"], o, r))
    if isinstance(model, torch.nn.Module):
        _measured[model] = cost
    return cost


@dataclass(frozen=True)
class GridCost:
    """The cost of a tiled call by :mod:`rrsr_lib.reference_grid`: the reference prepared once, then tiles.

    Preparing holds at most ``prep_mb[0] + prep_mb[1] R`` MiB and keeps ``keep_mb R`` (the texture); a tile of
    ``O`` output pixels adds at most ``tile_mb[0] + tile_mb[1] O + tile_mb[2] R``. Preparing takes
    ``prep_s[0] + prep_s[1] R`` seconds, a tile ``c + a O + b R + m O R`` (``tile_s``; the exact matching of its
    patches against all the reference's patches is the O R term).
    """
    prep_mb: tuple[float, float]
    keep_mb: float
    tile_mb: tuple[float, float, float]
    prep_s: tuple[float, float]
    tile_s: tuple[float, float, float, float]

    def ref_mb(self, ref_px: float) -> float:
        """What the reference side alone needs (MiB): tiling the LR input cannot lower it."""
        return self.prep_mb[0] + self.prep_mb[1] * ref_px

    def peak_mb(self, tile_out_px: float, ref_px: float) -> float:
        c, a, b = self.tile_mb
        # what a tile adds in proportion to the reference is the blocked matcher's work, which it keeps under
        # its memory budget (rrsr_lib.matching.match_patches): the probes only see it growing
        return max(self.ref_mb(ref_px), self.keep_mb * ref_px + c + a * tile_out_px + min(b * ref_px, MATCH_BUDGET_MB))

    def time_s(self, tile_out_px: float, ref_px: float, tiles: int) -> float:
        c, a, b, m = self.tile_s
        tile = c + a * tile_out_px + b * ref_px + m * tile_out_px * ref_px
        return self.prep_s[0] + self.prep_s[1] * ref_px + tiles * tile


_measured_grid: "weakref.WeakKeyDictionary[torch.nn.Module, GridCost]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def measure_grid_cost(model, device: torch.device | str = "cpu", scale: int = 4) -> GridCost:
    """Fit the :class:`GridCost` of an RRSR network on small probes (references 64 and 128 pixels square, tiles
    of 16 and 32 LR pixels against each, and one matching of random features; cached per model; about 2 s for
    the shipped small networks)."""
    from .reference_grid import ReferenceGrid

    if model in _measured_grid:
        return _measured_grid[model]
    gen = torch.Generator().manual_seed(0)
    sides, tiles = (64, 128), (16, 32)
    prep_mb, keep, prep_s, tile_mb, tile_s = {}, {}, {}, {}, {}
    for r in sides:
        ref = torch.rand(1, 3, r, r, generator=gen).to(device)
        with LiveTensorBytes() as counter:
            t0 = time.perf_counter()
            grid = ReferenceGrid(model, ref)
            prep_s[r] = time.perf_counter() - t0
        prep_mb[r], keep[r] = counter.peak / _MIB, counter.current / _MIB
        for t in tiles:
            lr = torch.rand(1, 3, t, t, generator=gen).to(device)
            with LiveTensorBytes() as counter:
                t0 = time.perf_counter()
                grid.restore(lr)
                if torch.device(device).type == "cuda":
                    torch.cuda.synchronize()
                tile_s[r, t] = time.perf_counter() - t0
            tile_mb[r, t] = counter.peak / _MIB
        channels = grid.matching.shape[1]
        del grid
    # the O R term (exact matching of every tile patch against every reference patch) is too small to see
    # in such probes: timed on its own, 64 x 64 LR positions against 128 x 128 reference positions
    from .matching import match_patches
    feat_in, feat_ref = (torch.randn(1, channels, n, n, generator=gen).to(device) for n in (64, 128))
    t0 = time.perf_counter()
    match_patches(feat_in, feat_ref, model.matcher.patch_size)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    m = (time.perf_counter() - t0) / ((scale * 64) ** 2 * (scale * 128) ** 2)
    (r0, r1), (t0_, t1_) = sides, tiles
    dr = r1 * r1 - r0 * r0
    do = (scale * t1_) ** 2 - (scale * t0_) ** 2

    def line(v0, v1):   # c + b R through the two references
        b = max(v1 - v0, 0.0) / dr
        return max(v0 - b * r0 * r0, 0.0), b

    # the rest of the tile law, c + a O + b R, through the four probes
    v = {(r, t): tile_s[r, t] for r in sides for t in tiles}
    a = max((v[r0, t1_] - v[r0, t0_]) / do - m * r0 * r0, 0.0)
    b = max((v[r1, t0_] - v[r0, t0_]) / dr - m * (scale * t0_) ** 2, 0.0)
    c = max(v[r0, t0_] - a * (scale * t0_) ** 2 - b * r0 * r0 - m * (scale * t0_) ** 2 * r0 * r0, 0.0)
    # tile memory c + a O + b R (the blocked matcher keeps its own work under a fixed budget: no O R term)
    ma = max(max(tile_mb[r, t1_] - tile_mb[r, t0_] for r in sides) / do, 0.0)
    mb_ = max(max(tile_mb[r1, t] - tile_mb[r0, t] for t in tiles) / dr, 0.0)
    mc = max(max(tile_mb[r, t] - ma * (scale * t) ** 2 - mb_ * r * r for r in sides for t in tiles), 0.0)
    cost = GridCost(line(prep_mb[r0], prep_mb[r1]), max(keep[r1] / (r1 * r1), keep[r0] / (r0 * r0)),
                    (mc, ma, mb_), line(prep_s[r0], prep_s[r1]), (c, a, b, m))
    _measured_grid[model] = cost
    return cost


def default_budget_mb(device: torch.device | str = "cpu") -> float:
    """Half the memory free now (MiB): the device's on a GPU, the machine's available RAM on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / _MIB / 2
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / _MIB / 2
    except (ValueError, OSError, AttributeError):
        return 4096.0


@dataclass(frozen=True)
class Plan:
    """How one call will run: ``tile`` (LR pixels, None: whole image), tiles, peak MiB and seconds estimated."""
    tile: int | None
    tiles: int
    peak_mb: float
    seconds: float

    def describe(self, budget_mb: float) -> str:
        how = "whole" if self.tile is None else f"in {self.tiles} LR tiles of {self.tile}x{self.tile}"
        return (f"{how}: about {self.peak_mb:,.0f} MB at most (budget {budget_mb:,.0f} MB) and about "
                f"{_duration(self.seconds)}")


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


def _tiles(h: int, w: int, tile: int, overlap: int) -> int:
    step = tile - 2 * overlap
    return math.ceil(h / step) * math.ceil(w / step)


def plan_call(cost: CallCost, lr_hw: tuple[int, int], ref_hw: tuple[int, int], budget_mb: float,
              tile: int | None = None, overlap: int = 8, scale: int = 4, tiled: GridCost | None = None) -> Plan:
    """The plan for one LR image (h, w) with a reference (Hr, Wr) under ``budget_mb`` MiB.

    ``tile`` None: the whole image if it fits, else the largest LR tile side that fits (tiles carry
    ``overlap`` LR pixels of context on each inner side, as in :func:`rrsr_lib.evaluate.tiled_forward`).
    A given ``tile`` is kept, and refused if it does not fit. ``tiled``: the network's :class:`GridCost`
    when its tiles run by rrsr_lib.reference_grid (RRSR networks; ``cost`` is then the whole call's law only).
    Raises InputError, naming the budget, when the reference alone is over it or no tile of at least
    ``3 * overlap`` LR pixels fits.
    """
    (h, w), ref_px = lr_hw, ref_hw[0] * ref_hw[1]
    ref_mb = (tiled or cost).ref_mb(ref_px)
    if ref_mb > budget_mb:
        raise InputError(f"the reference ({ref_hw[1]}x{ref_hw[0]}) alone needs about {ref_mb:,.0f} MB, "
                         f"over the memory budget of {budget_mb:,.0f} MB; tiling the LR image cannot help (the "
                         "reference is matched whole): downscale or crop the reference, or raise --memory-mb")

    def plan(t: int | None) -> Plan:
        if t is None or (h <= t and w <= t):
            return Plan(None, 1, cost.peak_mb(scale * scale * h * w, ref_px), cost.time_s(scale * scale * h * w, ref_px))
        n, side = _tiles(h, w, t, overlap), scale * t
        if tiled is not None:
            return Plan(t, n, tiled.peak_mb(side * side, ref_px), tiled.time_s(side * side, ref_px, n))
        return Plan(t, n, cost.peak_mb(side * side, ref_px), n * cost.time_s(side * side, ref_px))

    if tile is not None:
        chosen = plan(tile)
        if chosen.peak_mb > budget_mb:
            raise InputError(f"--tile {tile} needs about {chosen.peak_mb:,.0f} MB, over the memory budget of "
                             f"{budget_mb:,.0f} MB: give a smaller --tile, or leave it out to have one chosen")
        return chosen
    whole = plan(None)
    if whole.peak_mb <= budget_mb:
        return whole
    smallest = 3 * overlap
    for t in range(max(h, w), smallest - 1, -max(1, max(h, w) // 64)):
        candidate = plan(t)
        if candidate.peak_mb <= budget_mb:
            return candidate
    raise InputError(f"even LR tiles of {smallest}x{smallest} need about {plan(smallest).peak_mb:,.0f} MB, over the "
                     f"memory budget of {budget_mb:,.0f} MB: raise --memory-mb, or use a smaller reference")
