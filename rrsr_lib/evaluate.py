"""Evaluation: any model (LR, Ref) -> SR, on any test set, under named protocols.

RefSR papers disagree on how they measure (RRSR.md, "Evaluation protocols"), so every row this module
writes names its protocol completely:

* ``reference``: which reference the model saw - "pair" (the embedded real pairs), "pair-window" (the same
  pairs cut to a window, :class:`PairWindows`), "level-1" ... "level-5"
  (one CUFED5 level), "stitched" (the five CUFED5 references side by side, TTSR/MASA papers), "chosen"
  (Sun80's documented choice), "self-lr" (Urban100/Manga109: the LR image itself);
* ``metric``: "y_crop4" (C2-Matching/RRSR: Y channel, 4-pixel border removed) or "y_crop0" (TTSR/MASA:
  Y channel, no crop). SR is clamped to [0, 1] and rounded to uint8 before any metric.

Large images stay within a memory budget by *tiling the input*: the LR image is cut into overlapping
tiles, each is restored against the whole reference, and the centres of the tiles are stitched. A model's
receptive field is finite, so with enough overlap the result equals the untiled one up to float rounding
(tested); matching against the whole reference is kept exact.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from torch.utils.data import Dataset

from .data import EmbeddedTestPairs, make_pair
from .degradation import bicubic_downsample, crop_to_multiple, to_uint8, upsample_lr
from .device import fair_threads
from .errors import InputError, run_command
from .files import atomic_write_text
from .metrics import psnr, ssim

METRIC_PROTOCOLS = {
    # name: (crop_border, y_channel, who uses it)
    "y_crop4": (4, True, "C2-Matching / RRSR: PSNR/SSIM on Y, 4-pixel border removed"),
    "y_crop0": (0, True, "TTSR / MASA papers: PSNR/SSIM on Y, no border removed"),
}


class Bicubic(nn.Module):
    """The bicubic baseline with the RefSR call: (LR, Ref) -> PIL bicubic x``scale`` of LR (the Ref is ignored).

    lr: float (B,3,h,w) in [0,1]; returns float (B,3,h*scale,w*scale) in [0,1] on LR's device. PIL's
    bicubic (not torch's) so that the baseline is the one the literature reports.
    """

    def __init__(self, scale: int = 4):
        super().__init__()
        self.scale = scale

    def forward(self, lr: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        out = [torch.from_numpy(np.array(upsample_lr(to_uint8(x), self.scale))).permute(2, 0, 1).float() / 255 for x in lr]
        return torch.stack(out).to(lr.device)


def tiled_forward(model: Callable, lr: torch.Tensor, ref: torch.Tensor | None, tile: int | None = None,
                  overlap: int = 8, scale: int = 4, progress: bool = False, with_origin: bool = False,
                  as_uint8: bool = False):
    """Run ``model(lr_tile, ref)`` on overlapping LR tiles and stitch the SR tiles' centres.

    lr: (1,3,h,w) in [0,1]; ref: (1,3,Hr,Wr). tile: LR tile side in pixels (None: no tiling);
    overlap: LR pixels of context kept on each inner side of a tile and thrown away after.
    Returns (1,3,h*scale,w*scale). Every output pixel comes from the tile in which it lies furthest
    from a cut, so the result equals the untiled one when ``overlap`` covers the model's receptive field
    (and the model is local: RRSR's selection pools are not, and each call pads the tile to the reference's
    canvas; rrsr_lib.reference_grid avoids the second). ``progress``: a progress bar over the tiles (tqdm).
    with_origin: call ``model(lr_tile, (y0, x0))``, the tile's top-left LR pixel, instead of
    ``model(lr_tile, ref)`` (rrsr_lib.reference_grid.ReferenceGrid.restore). as_uint8: return the image as
    uint8 (h*scale) x (w*scale) x 3 (:func:`rrsr_lib.degradation.to_uint8`), each tile converted as it comes:
    the same bytes as converting the whole result, without its float copy (576 MB for an 8000x6000 output)
    and the conversion's temporaries.
    """
    from .degradation import to_uint8

    if lr.dim() != 4 or lr.shape[0] != 1:
        raise InputError(f"tiled_forward takes one image (1,3,h,w), got shape {tuple(lr.shape)}")
    h, w = lr.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        sr = model(lr, (0, 0) if with_origin else ref)
        return to_uint8(sr) if as_uint8 else sr
    if tile <= 2 * overlap:
        raise InputError(f"tile ({tile}) must be larger than twice the overlap ({overlap})")
    step = tile - 2 * overlap
    out = np.zeros((h * scale, w * scale, 3), np.uint8) if as_uint8 else lr.new_zeros(1, 3, h * scale, w * scale)
    corners = [(y0, x0) for y0 in range(0, h, step) for x0 in range(0, w, step)]
    for y0, x0 in tqdm(corners, desc="LR tiles", unit="tile", disable=not progress):
        # core region [y0, y1) x [x0, x1) is kept; the tile adds `overlap` of context around it
        y1, x1 = min(y0 + step, h), min(x0 + step, w)
        ty0, tx0 = max(0, y0 - overlap), max(0, x0 - overlap)
        ty1, tx1 = min(h, y1 + overlap), min(w, x1 + overlap)
        sr = model(lr[..., ty0:ty1, tx0:tx1], (ty0, tx0) if with_origin else ref)
        core = sr[..., (y0 - ty0) * scale:(y1 - ty0) * scale, (x0 - tx0) * scale:(x1 - tx0) * scale]
        if as_uint8:
            out[y0 * scale:y1 * scale, x0 * scale:x1 * scale] = to_uint8(core)
        else:
            out[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale] = core
    return out


class LevelPairs(Dataset):
    """Pairs at the 5 similarity levels cut from the embedded *test* inputs (never from training photos).

    For each test input image and each level 1-5, one ``patch`` x ``patch`` HR crop and a reference made
    by :func:`rrsr_lib.data.make_pair` (level 5: from the next test input, another scene), deterministic
    given ``seed``. This is the embedded stand-in for CUFED5's table of PSNR by reference level.
    Items: "hr" (3,P,P), "lr" (3,P/4,P/4), "ref" (3,P,P) float in [0,1]; "name" "<pair>#L<level>"; "level".
    Item order is image-major: item 5*i + (level-1).
    """

    def __init__(self, patch: int = 160, seed: int = 0, pairs: list[str] | None = None, scale: int = 4):
        if patch % scale or patch < 3 * scale:
            raise InputError(f"patch must be a multiple of {scale} and give at least one 3x3 LR patch ({3 * scale} px), got {patch}")
        base = EmbeddedTestPairs(scale=scale, pairs=pairs)
        if len(base) < 2:
            raise InputError("level 5 takes its reference from another image: use at least 2 test pairs")
        self.images = [to_uint8(base[i]["hr"]) for i in range(len(base))]
        self.names, self.patch, self.seed, self.scale = base.pair_names, patch, seed, scale

    def __len__(self) -> int:
        return 5 * len(self.images)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        i, level = divmod(index, 5)
        level += 1
        rng = np.random.default_rng([self.seed, i, level])
        other = self.images[(i + 1) % len(self.images)]
        pair = make_pair(self.images[i], level, self.patch, rng, other=other, name=self.names[i])

        def t(a):
            return torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 255
        return {"hr": t(pair["hr"]), "lr": t(bicubic_downsample(pair["hr"], self.scale)), "ref": t(pair["ref"]),
                "name": f"{self.names[i]}#L{level}", "level": level}


class PairWindows(Dataset):
    """The same test pairs, each cut to one window: a cheaper evaluation protocol, named in every row.

    Whole embedded test pairs (about 320x240) cost RRSR-type networks seconds per image on a CPU, because
    input and reference are padded to a common canvas. This wraps a dataset of pairs (items "hr", "ref",
    "name"; e.g. :class:`rrsr_lib.data.EmbeddedTestPairs`) and keeps, of every pair,

    * the ``window`` x ``window`` HR square at the centre of the input (top-left corner rounded down to a
      multiple of ``scale``), and its LR made from it (PIL bicubic /``scale``, as every LR image here);
    * the reference cut to the same square grown by ``margin`` pixels on each side (the other view of a
      stereo or multi-view pair shows the content displaced), shifted inside the reference where it
      would stick out, and clipped to the reference's size (multiples of ``scale``).

    window=0 keeps the whole pair (the items of ``base`` unchanged). Items as ``base``'s, plus "window"
    (y, x, size) and "ref_window" (y, x, h, w) in pixels. Reference kind in rows: "pair-window".
    """

    def __init__(self, base, window: int = 128, margin: int = 32, scale: int = 4):
        if window < 0 or window % scale or (0 < window < 3 * scale):
            raise InputError(f"window must be 0 (whole images) or a multiple of {scale} of at least {3 * scale}, got {window}")
        if margin < 0 or margin % scale:
            raise InputError(f"margin must be a non-negative multiple of {scale}, got {margin}")
        self.base, self.window, self.margin, self.scale = base, window, margin, scale

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.base[index])
        if self.window == 0:
            return item
        s, size = self.scale, self.window
        _, h, w = item["hr"].shape
        if h < size or w < size:
            raise InputError(f"test pair {item['name']} is {w}x{h}, smaller than the window {size}; use a smaller window")
        y0, x0 = (h - size) // 2 // s * s, (w - size) // 2 // s * s
        hr = to_uint8(item["hr"][:, y0:y0 + size, x0:x0 + size])
        _, rh, rw = item["ref"].shape
        # reference: the same window grown by the margin, kept inside the reference, multiples of the scale
        rsize_h, rsize_w = min(size + 2 * self.margin, rh // s * s), min(size + 2 * self.margin, rw // s * s)
        ry = min(max(0, y0 - self.margin), rh - rsize_h) // s * s
        rx = min(max(0, x0 - self.margin), rw - rsize_w) // s * s

        def t(a):
            return torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 255
        item.update(hr=t(hr), lr=t(bicubic_downsample(hr, s)), ref=item["ref"][:, ry:ry + rsize_h, rx:rx + rsize_w].clone(),
                    window=(y0, x0, size), ref_window=(ry, rx, rsize_h, rsize_w))
        return item


def _reference_kind(item: dict, dataset) -> str:
    name = type(dataset).__name__
    if name == "PairWindows" and dataset.window:
        return "pair-window"
    if name == "PairWindows":
        dataset = dataset.base
        name = type(dataset).__name__
    if name == "LevelPairs":
        return f"level-{item['level']}"
    if name == "CUFED5":
        return "stitched" if dataset.mode == "stitched" else f"level-{int(item['level'])}"
    if name in ("Urban100", "Manga109", "SelfReferenceSet"):
        return f"self-{dataset.ref_mode.replace('_', '-')}"
    if name == "Sun80":
        return "chosen"
    return "pair"


@torch.no_grad()
def authors_padded_input(hr: torch.Tensor, ref: torch.Tensor, scale: int = 4):
    """The authors' test input for a pair of different sizes (their ref_test_dataset.py).

    hr (3,H,W), ref (3,H',W') float in [0,1]: both cropped to multiples of ``scale``, zero-padded at the bottom
    and right to the larger height and width, and the LR made from the *padded* HR (PIL bicubic /scale).
    Returns (lr (1,3,Hc/s,Wc/s), ref (1,3,Hc,Wc), original_size (H, W)); a pair of equal sizes is returned as
    it is (no padding, the LR of the HR).
    """
    hr_u8 = crop_to_multiple(to_uint8(hr), scale)
    ref_u8 = crop_to_multiple(to_uint8(ref), scale)
    (h, w), (hr_, wr_) = hr_u8.shape[:2], ref_u8.shape[:2]
    th, tw = max(h, hr_), max(w, wr_)
    hr_p = np.zeros((th, tw, 3), np.uint8)
    hr_p[:h, :w] = hr_u8
    ref_p = np.zeros((th, tw, 3), np.uint8)
    ref_p[:hr_, :wr_] = ref_u8

    def t(a):
        return torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 255
    return t(bicubic_downsample(hr_p, scale)), t(ref_p), (h, w)


def evaluate(model: Callable, dataset, model_name: str, dataset_name: str,
             metrics: Iterable[str] = ("y_crop4", "y_crop0"), device: torch.device | str = "cpu",
             tile: int | None = None, overlap: int = 8, progress: bool = True, padding: str = "lr",
             **row_fields) -> list[dict]:
    """Evaluate ``model`` on every item of ``dataset``; return one row per (image, metric protocol).

    model: callable (lr (1,3,h,w), ref (1,3,Hr,Wr)) -> sr (1,3,4h,4w), float in [0,1].
    dataset: items with "hr", "lr", "ref" float (3,H,W) in [0,1] and "name" (rrsr_lib.data's datasets).
    Rows: {model, dataset, name, reference, metric, metric_note, psnr_y, ssim_y, **row_fields}.
    tile: LR tile side for large images (see :func:`tiled_forward`), None for whole images.
    padding: for pairs of different sizes, "lr" (the LR of the HR image; the model pads at LR scale) or "hr"
    (the authors' test protocol, :func:`authors_padded_input`; for models that take ``original_size``, as
    rrsr_lib.models.RRSR; written into each row as "padding").
    """
    if padding not in ("lr", "hr"):
        raise InputError(f"padding must be 'lr' or 'hr' (the authors' test protocol), got {padding!r}")
    if padding == "hr" and tile is not None:
        raise InputError("padding='hr' evaluates whole images: leave tile at None")
    unknown = [m for m in metrics if m not in METRIC_PROTOCOLS]
    if unknown:
        raise InputError(f"unknown metric protocol(s) {unknown}; choose from {list(METRIC_PROTOCOLS)}")
    if isinstance(model, nn.Module):
        model.eval()
    rows = []
    for i in tqdm(range(len(dataset)), desc=f"{model_name} on {dataset_name}", disable=not progress, leave=False):
        item = dataset[i]
        hr_u8 = to_uint8(item["hr"])
        # fewer CPU threads when other processes hold cores (rrsr_lib.device.fair_threads)
        with fair_threads():
            if padding == "hr":
                lr, ref, size = authors_padded_input(item["hr"], item["ref"])
                sr = model(lr.to(device), ref.to(device), original_size=size)
            else:
                lr = item["lr"].unsqueeze(0).to(device)
                ref = item["ref"].unsqueeze(0).to(device)
                sr = tiled_forward(model, lr, ref, tile=tile, overlap=overlap)
        if tuple(sr.shape[-2:]) != hr_u8.shape[:2]:
            raise InputError(f"model {model_name} returned {tuple(sr.shape[-2:])} for an HR of {hr_u8.shape[:2]}")
        sr_u8 = to_uint8(sr[0])
        for m in metrics:
            crop, y, note = METRIC_PROTOCOLS[m]
            rows.append({"model": model_name, "dataset": dataset_name, "name": item["name"],
                         "reference": _reference_kind(item, dataset), "metric": m, "metric_note": note,
                         "psnr_y": psnr(sr_u8, hr_u8, crop, y), "ssim_y": ssim(sr_u8, hr_u8, crop, y),
                         **({"padding": "hr (authors)"} if padding == "hr" else {}), **row_fields})
    return rows


def summarize(rows: list[dict], by: tuple[str, ...] = ("model", "dataset", "reference", "metric")) -> list[dict]:
    """Mean (and, over seeds when rows carry a "seed", the spread) of psnr_y/ssim_y grouped by ``by``.

    Returns rows {**group, psnr_y, ssim_y, n_images, seeds, psnr_y_std_over_seeds}: the mean over images is
    taken per seed first, then averaged over seeds; the std is over the per-seed means (0 for one seed).
    """
    groups: dict[tuple, dict] = {}
    for r in rows:
        key = tuple(r.get(k) for k in by)
        groups.setdefault(key, {}).setdefault(r.get("seed"), []).append(r)
    out = []
    for key, per_seed in groups.items():
        means_p = [statistics.fmean(x["psnr_y"] for x in rs) for rs in per_seed.values()]
        means_s = [statistics.fmean(x["ssim_y"] for x in rs) for rs in per_seed.values()]
        out.append({**dict(zip(by, key)), "psnr_y": statistics.fmean(means_p), "ssim_y": statistics.fmean(means_s),
                    "n_images": len(next(iter(per_seed.values()))), "seeds": sorted(s for s in per_seed if s is not None),
                    "psnr_y_std_over_seeds": statistics.pstdev(means_p) if len(means_p) > 1 else 0.0})
    return out


def write_json(obj, path: str | Path) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (temporary name, then rename); returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=True) + "\n")


def protocol_datasets(pairs: int = 10, window: int = 0, margin: int = 32, cufed5_root: str | Path | None = None,
                      cufed5_limit: int = 0) -> list[tuple[str, str, str, Dataset]]:
    """The labelled evaluation sets: [(dataset name, reference kind, protocol text, dataset)].

    The embedded real pairs (whole images, or one ``window`` per pair), and with ``cufed5_root`` CUFED5 under
    the literature's two reference protocols: level-1 (C2-Matching / RRSR) and the five references stitched
    (TTSR / MASA), whole images, the first ``cufed5_limit`` groups (0: all).
    """
    from torch.utils.data import Subset

    from .data import CUFED5

    names = EmbeddedTestPairs().pair_names[:pairs]
    base = EmbeddedTestPairs(pairs=names)
    if window:
        sets = [("embedded", "pair-window", f"embedded real pairs ({len(names)}), central HR window {window} px, "
                 f"reference window +{margin} px", PairWindows(base, window=window, margin=margin))]
    else:
        sets = [("embedded", "pair", f"embedded real pairs ({len(names)}), whole images", base)]
    if cufed5_root:
        for mode, kind in (("level", "level-1"), ("stitched", "stitched")):
            data = CUFED5(cufed5_root, mode=mode, level=1)
            n = min(cufed5_limit, len(data)) if cufed5_limit else len(data)
            sets.append(("CUFED5", kind, f"CUFED5 ({n} groups), whole images, reference {kind}",
                         Subset(data, range(n)) if n < len(data) else data))
    return sets


def main(argv: list[str] | None = None) -> int:
    """``python -m rrsr_lib.evaluate``: evaluate shipped checkpoints and/or the authors' released weights
    under every labelled protocol; one JSON file of per-image rows and a printed summary."""
    import argparse

    from .authors_weights import add_authors_arguments
    from .checkpoints import checkpoint_names

    ap = argparse.ArgumentParser(prog="python -m rrsr_lib.evaluate", description=main.__doc__.split(";")[0])
    ap.add_argument("--checkpoint", action="append", default=[], choices=checkpoint_names(), metavar="NAME",
                    help="a shipped checkpoint (repeat for several)")
    add_authors_arguments(ap)
    ap.add_argument("--pairs", type=int, default=10, help="embedded test pairs (1-10)")
    ap.add_argument("--window", type=int, default=0, help="HR window per embedded pair (0: whole images)")
    ap.add_argument("--cufed5", help="a CUFED5 folder (XXX_0.png ... XXX_5.png): level-1 and stitched protocols")
    ap.add_argument("--cufed5-limit", type=int, default=0, help="the first N CUFED5 groups only (0: all)")
    ap.add_argument("--tile", type=int, default=None, help="LR tile side for large images (default: untiled)")
    ap.add_argument("--out", default="runs/evaluation.json", help="JSON file of per-image rows")
    args = ap.parse_args(argv)
    return run_command(lambda: _evaluate_command(args))


def _evaluate_command(args) -> None:
    """The work of ``python -m rrsr_lib.evaluate``; raises InputError for anything bad."""
    from .authors_weights import authors_label
    from .checkpoints import checkpoint_spec, load_authors_checkpoint, load_checkpoint
    from .device import pick_device

    label = authors_label(args)
    if not (1 <= args.pairs <= 10):
        raise InputError(f"--pairs must be 1-10, got {args.pairs}")
    device = pick_device()
    models: list[tuple[str, Callable, dict]] = [("bicubic", Bicubic(), {"model": "bicubic", "config": "-"})]
    for name in args.checkpoint:
        spec = checkpoint_spec(name)
        models.append((name, load_checkpoint(name, device), {"model": spec["model"], "config": spec["config"],
                                                             "reciprocal": spec["reciprocal"], "seed": spec["seed"]}))
    if label:
        model = load_authors_checkpoint(args.authors_weights, args.authors_features, device)
        models.append((label, model, {"model": "rrsr", "config": "paper", "reciprocal": True, "seed": None,
                                      "padding": "hr",
                                      "weights": str(args.authors_weights),
                                      "features": str(args.authors_features or "shipped contrastive trunks")}))
    rows = []
    for dataset_name, kind, protocol, data in protocol_datasets(args.pairs, args.window, 32, args.cufed5,
                                                                args.cufed5_limit):
        for label, model, fields in models:
            got = evaluate(model, data, fields["model"], dataset_name, device=device,
                           tile=None if fields.get("padding") == "hr" else args.tile, checkpoint=label,
                           protocol=protocol, **{k: v for k, v in fields.items() if k != "model"})
            for r in got:   # a Subset hides the dataset's type: the reference kind is set here
                r["reference"] = kind
            rows += got
    write_json(rows, args.out)
    for s in summarize(rows, by=("checkpoint", "dataset", "reference", "metric")):
        print(f"{s['checkpoint']:<28} {s['dataset']:<9} {s['reference']:<11} {s['metric']:<8} "
              f"PSNR {s['psnr_y']:.2f}  SSIM {s['ssim_y']:.4f}  ({s['n_images']} images)")
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
