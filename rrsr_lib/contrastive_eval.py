"""Ground-truth correspondence accuracy of matching features (notebook 02, results/contrastive_accuracy.json).

Held-out pairs whose true correspondence is known (the embedded test-pair inputs warped by fixed
homographies; scikit-image's stereo_motorcycle with its ground-truth disparity), the share of
feature pixels that RRSR's 3x3 patch matching (:mod:`rrsr_lib.matching`) puts within 1 feature px of
the truth, and ImageNet VGG as the baseline the contrastive trunks (:mod:`rrsr_lib.contrastive`)
start from.
"""
from __future__ import annotations

import numpy as np
import torch

from .data.embedded import uint8_to_tensor
from .degradation import bicubic_downsample, upsample_lr
from .matching import match_patches

__all__ = ["match_accuracy", "warped_eval_pairs", "stereo_eval_pair", "plain_vgg_features", "evaluate"]


# ----------------------------------------------------------------------------------------------
# ground-truth correspondence accuracy
# ----------------------------------------------------------------------------------------------

def match_accuracy(feat_in: torch.Tensor, feat_ref: torch.Tensor, true_xy: torch.Tensor, valid: torch.Tensor,
                   tol: float = 1.0) -> dict:
    """Share of positions whose matched reference position lies within ``tol`` feature px of the truth.

    feat_in [1, C, h, w], feat_ref [1, C, hr, wr]: features of the input and the reference.
    true_xy [h, w, 2]: true position (x, y) of each input feature pixel centre in the reference's feature
    grid (continuous); valid [h, w] bool: where the truth is known and inside the reference.
    Matching is RRSR's: exact top-1 cosine of 3x3 patches (``padding="valid"``); patch (y, x) stands for its
    centre pixel (y+1, x+1). Returns {"accuracy", "n", "matched_xy" [h-2, w-2, 2], "correct" [h-2, w-2] bool,
    "considered" [h-2, w-2] bool}.
    """
    idx, _ = match_patches(feat_in, feat_ref)
    wr = feat_ref.shape[3] - 2
    mx = (idx[0] % wr + 1).float()
    my = (torch.div(idx[0], wr, rounding_mode="floor") + 1).float()
    t = true_xy[1:-1, 1:-1]
    # the true centre must be a patch centre of the reference (one pixel from its edge)
    considered = valid[1:-1, 1:-1] & (t[..., 0] >= 1) & (t[..., 0] <= feat_ref.shape[3] - 2) \
        & (t[..., 1] >= 1) & (t[..., 1] <= feat_ref.shape[2] - 2)
    correct = ((mx - t[..., 0]).abs() <= tol) & ((my - t[..., 1]).abs() <= tol) & considered
    n = int(considered.sum())
    return {"accuracy": correct.sum().item() / max(n, 1), "n": n, "matched_xy": torch.stack([mx, my], -1),
            "correct": correct, "considered": considered}


def _feature_centres(h: int, w: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates (x, y) of the centres of feature pixels: feature (y, x) covers pixels [s*y, s*y+s)."""
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return xs * scale + (scale - 1) / 2, ys * scale + (scale - 1) / 2


def warped_eval_pairs(max_shift_px: float = 10.0, seed: int = 0, scale: int = 4, names=None) -> list[dict]:
    """Held-out warped pairs: the embedded test-pair inputs (never trained on), each warped by a fixed homography.

    names: only these test pairs (default: all); each pair's homography is the same whichever are chosen.

    Each dict: "name", "hr" uint8 (H, W, 3), "up" (its LR-upsampled version), "ref" (hr warped, uint8),
    "true_xy" float32 [H/s, W/s, 2] position of each input feature pixel centre in the reference's
    feature grid, "valid" bool [H/s, W/s].
    """
    from .data import EmbeddedTestPairs
    from .data.warp import apply_homography, random_homography_warp
    rng = np.random.default_rng(seed)
    out = []
    pairs = EmbeddedTestPairs()
    for i in range(len(pairs)):
        # one homography per pair in a fixed order, drawn even for pairs that are skipped
        shifts_rng = np.random.default_rng(rng.integers(2 ** 63))
        if names is not None and pairs.pair_names[i] not in names:
            continue
        item = pairs[i]
        hr = (item["hr"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        ref, h_ref_to_hr = random_homography_warp(hr, max_shift_px, shifts_rng, mode="bicubic")
        h, w = hr.shape[0] // scale, hr.shape[1] // scale
        cx, cy = _feature_centres(h, w, scale)
        q = apply_homography(np.linalg.inv(h_ref_to_hr), np.stack([cx.ravel(), cy.ravel()], 1)).reshape(h, w, 2)
        true_xy = (q - (scale - 1) / 2) / scale
        valid = (q[..., 0] >= 0) & (q[..., 0] <= hr.shape[1] - 1) & (q[..., 1] >= 0) & (q[..., 1] <= hr.shape[0] - 1)
        up = upsample_lr(bicubic_downsample(hr, scale), scale)
        out.append({"name": item["name"], "hr": hr, "up": up, "ref": ref,
                    "true_xy": torch.from_numpy(true_xy).float(), "valid": torch.from_numpy(valid)})
    return out


def stereo_eval_pair(scale: int = 4) -> dict:
    """scikit-image's stereo_motorcycle pair as embedded (left = input, right = reference, 320x216) with the
    ground-truth disparity from scikit-image, resized the same way (x 0.431849, nearest; occlusions invalid).

    Left pixel (x, y) corresponds to right pixel (x - d, y). Same keys as :func:`warped_eval_pairs`.
    """
    from skimage import data as skdata
    from .data import EmbeddedTestPairs
    item = EmbeddedTestPairs(pairs=["motorcycle"])[0]
    hr = (item["hr"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    ref = (item["ref"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    _, _, disp = skdata.stereo_motorcycle()
    factor = hr.shape[1] / disp.shape[1]  # 320 / 741, the embedding's resize factor
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    cx, cy = _feature_centres(h, w, scale)
    # disparity at the nearest full-size pixel of each feature centre, in resized pixels
    sx = np.clip(np.round((cx + 0.5) / factor - 0.5).astype(int), 0, disp.shape[1] - 1)
    sy = np.clip(np.round((cy + 0.5) / factor - 0.5).astype(int), 0, disp.shape[0] - 1)
    d = disp[sy, sx] * factor
    qx, qy = cx - d, cy
    valid = np.isfinite(d) & (qx >= 0) & (qx <= ref.shape[1] - 1)
    true_xy = np.stack([(np.where(valid, qx, 0) - (scale - 1) / 2) / scale, (qy - (scale - 1) / 2) / scale], -1)
    up = upsample_lr(bicubic_downsample(hr, scale), scale)
    return {"name": "motorcycle (stereo, ground-truth disparity)", "hr": hr, "up": up, "ref": ref,
            "true_xy": torch.from_numpy(true_xy).float(), "valid": torch.from_numpy(valid)}


def plain_vgg_features(layer: str = "relu3_1"):
    """ImageNet VGG (rrsr_lib.vgg) at ``layer`` as a (img_in, img_ref) -> (feat_in, feat_ref) function, shared weights."""
    from .vgg import VGGFeatures
    vgg = VGGFeatures(layers=(layer,))
    return lambda a, b: (vgg(a)[layer], vgg(b)[layer])


def evaluate(extractors: dict, pairs: list[dict], inputs: str = "up") -> dict:
    """Accuracy of each feature extractor on each pair.

    extractors: name -> function (img_in (1,3,H,W), img_ref) -> (feat_in, feat_ref), or a ContrastiveFeatures.
    inputs: which input image is matched against the reference: "up" (LR-upsampled, RRSR's case) or "hr".
    Returns {name: {"per_pair": {pair: accuracy}, "mean": mean accuracy, "pooled": correct / considered}}.
    """
    out = {}
    with torch.no_grad():
        for name, fn in extractors.items():
            per, correct, total = {}, 0, 0
            for p in pairs:
                fi, fr = fn(uint8_to_tensor(p[inputs])[None], uint8_to_tensor(p["ref"])[None])
                h, w = p["true_xy"].shape[:2]
                r = match_accuracy(fi[..., :h, :w], fr, p["true_xy"], p["valid"])
                per[p["name"]] = r["accuracy"]
                correct += int(r["correct"].sum())
                total += r["n"]
            out[name] = {"per_pair": per, "mean": float(np.mean(list(per.values()))), "pooled": correct / max(total, 1)}
    return out
