"""CUFED-like (input, reference) training pairs cut out of single photographs, at 5 similarity levels.

RRSR trains on CUFED: 11,871 pairs of 160x160 patches, an input and a reference photographed at the
same event, and is tested on CUFED5, whose 5 references per input go from "similar" (level 1) to
"hardly related" (level 5). Neither set can be had here, so we make pairs of the same kind from our
real photographs: the input is a 160x160 crop of a photo; the reference is another view of the
same scene, cut out of the same photo along a quadrilateral that is shifted, zoomed, rotated and
perspective-jittered relative to the input's square, then recoloured. The stronger the level, the
smaller the overlap and the stronger the warp; level 5 takes the reference from ANOTHER photo, so
that the network also learns to ignore a useless reference (CUFED5's level 5 has few matches).

Levels (our choice, graded like CUFED5; CUFED5's own levels come from counting SIFT matches):

=====  =======================  ============  ==========  ============  ======
level  centre shift (x patch)   zoom          rotation    corner jitter colour
=====  =======================  ============  ==========  ============  ======
1      0.00-0.10                0.90-1.10     <= 2 deg    <= 0.02       0.03
2      0.10-0.25                0.80-1.25     <= 5 deg    <= 0.05       0.06
3      0.25-0.45                0.70-1.40     <= 10 deg   <= 0.08       0.10
4      0.50-0.75                0.60-1.60     <= 20 deg   <= 0.12       0.15
5      another photo            0.80-1.25     0           0             0.10
=====  =======================  ============  ==========  ============  ======

"zoom" is the side of the reference's window in the photo divided by the patch side (>1: the
reference shows more of the scene, smaller; <1: less of it, magnified), drawn log-uniformly.
A shift of 0.75 patch leaves 25% overlap before rotation and zoom. The colour change is a
per-channel gain 1 +- c, a gamma exp(+-c) and an offset +- c/2 (c = the "colour" column).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from .warp import apply_homography, homography_from_points, warp_homography


@dataclass(frozen=True)
class Level:
    """Geometry and colour change of one similarity level (fractions are of the patch side)."""
    shift: tuple[float, float]
    zoom: tuple[float, float]
    rotation_deg: float
    jitter: float
    colour: float
    other_photo: bool = False


LEVELS = {
    1: Level(shift=(0.00, 0.10), zoom=(0.90, 1.10), rotation_deg=2.0, jitter=0.02, colour=0.03),
    2: Level(shift=(0.10, 0.25), zoom=(0.80, 1.25), rotation_deg=5.0, jitter=0.05, colour=0.06),
    3: Level(shift=(0.25, 0.45), zoom=(0.70, 1.40), rotation_deg=10.0, jitter=0.08, colour=0.10),
    4: Level(shift=(0.50, 0.75), zoom=(0.60, 1.60), rotation_deg=20.0, jitter=0.12, colour=0.15),
    5: Level(shift=(0.0, 0.0), zoom=(0.80, 1.25), rotation_deg=0.0, jitter=0.0, colour=0.10, other_photo=True),
}

# Bicubic interpolation reads 2 pixels on each side of a sampling position: keep the reference's
# quadrilateral this far inside the photo so that no padding value ever enters a reference.
_MARGIN = 2.0
_TRIES = 200


def _corners(p: int) -> np.ndarray:
    return np.array([[0, 0], [p - 1, 0], [p - 1, p - 1], [0, p - 1]], dtype=np.float64)


def _draw_quad(lv: Level, p: int, rng: np.random.Generator) -> np.ndarray:
    """Reference corners (4, 2) relative to the input window's top-left corner (photo pixel units)."""
    zoom = math.exp(rng.uniform(math.log(lv.zoom[0]), math.log(lv.zoom[1])))
    theta = math.radians(rng.uniform(-lv.rotation_deg, lv.rotation_deg))
    dist = rng.uniform(*lv.shift) * p
    phi = rng.uniform(0, 2 * math.pi)
    jitter = rng.uniform(-lv.jitter * p, lv.jitter * p, size=(4, 2))
    c = (p - 1) / 2
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    # corner = input centre + shift + R(theta) * zoom * (corner - centre) + jitter
    return c + dist * np.array([math.cos(phi), math.sin(phi)]) + (zoom * (_corners(p) - c)) @ rot.T + jitter


def _place(quad_rel: np.ndarray, p: int, height: int, width: int, rng: np.random.Generator,
           with_input: bool) -> tuple[int, int] | None:
    """Random integer top-left (ox, oy) so that the quad (and the input square, if asked) lie inside the photo."""
    pts = np.concatenate([quad_rel, _corners(p)]) if with_input else quad_rel
    lo = np.ceil(_MARGIN - pts.min(axis=0)).astype(int)
    hi = np.floor(np.array([width - 1, height - 1]) - _MARGIN - pts.max(axis=0)).astype(int)
    if with_input:
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, [width - p, height - p])
    if np.any(hi < lo):
        return None
    return int(rng.integers(lo[0], hi[0] + 1)), int(rng.integers(lo[1], hi[1] + 1))


def _render(photo: np.ndarray, ref_to_photo: np.ndarray, zoom_hint: float, p: int) -> np.ndarray:
    """Sample the reference (p x p, float64 HxWx3 in [0, 1]) from the photo through ``ref_to_photo``.

    When the reference shows a larger region than its size (zoom > 1), the photo is first shrunk by
    PIL's antialiased bicubic filter, so the bicubic sampling that follows does not alias.
    """
    h, w = photo.shape[:2]
    src, hmat = photo, ref_to_photo
    if zoom_hint > 1.0:
        ws, hs = max(1, round(w / zoom_hint)), max(1, round(h / zoom_hint))
        src = np.asarray(Image.fromarray(photo).resize((ws, hs), Image.BICUBIC))
        sx, sy = ws / w, hs / h
        # pixel centres: x_small + 0.5 = (x + 0.5) * ws / w
        to_small = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
        hmat = to_small @ hmat
    quad = apply_homography(hmat, _corners(p))
    x0, y0 = np.maximum(np.floor(quad.min(axis=0)) - 3, 0).astype(int)
    x1, y1 = np.minimum(np.ceil(quad.max(axis=0)) + 4, [src.shape[1], src.shape[0]]).astype(int)
    crop = torch.from_numpy(np.ascontiguousarray(src[y0:y1, x0:x1])).permute(2, 0, 1).double() / 255.0
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]])
    out = warp_homography(crop, shift @ hmat, (p, p), mode="bicubic", padding_mode="border")
    return out.clamp(0, 1).permute(1, 2, 0).numpy()


def colour_change(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random photometric change of a float HxWx3 image in [0, 1]; returns float HxWx3 in [0, 1].

    out = clip(gain_c * img ** gamma + offset), gain_c ~ U[1-s, 1+s] per channel,
    gamma = exp(U[-s, s]), offset ~ U[-s/2, s/2].
    """
    gain = rng.uniform(1 - strength, 1 + strength, size=3)
    gamma = math.exp(rng.uniform(-strength, strength))
    offset = rng.uniform(-strength / 2, strength / 2)
    return np.clip(gain * np.power(img, gamma) + offset, 0.0, 1.0)


def make_pair(photo: np.ndarray, level: int, patch: int, rng: np.random.Generator,
              other: np.ndarray | None = None, name: str = "photo") -> dict:
    """One CUFED-like pair from a photo.

    photo: uint8 HxWx3. level: 1-5 (see the module table). patch: side of both patches (the
    authors' HR patch: 160). other: uint8 photo used for level 5 (required there).
    Returns a dict with
      "hr": uint8 (patch, patch, 3), an axis-aligned crop of ``photo``;
      "ref": uint8 (patch, patch, 3), the reference view;
      "ref_to_hr": float64 (3, 3) homography from reference pixels to HR pixels (pixel centres at
      integers, x = column), all NaN at level 5;
      "overlap": fraction of the HR patch's pixels that the reference shows (0 at level 5).
    Deterministic for a given ``rng`` state.
    """
    if level not in LEVELS:
        raise InputError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    lv = LEVELS[level]
    h, w = photo.shape[:2]
    if h < patch or w < patch:
        raise InputError(f"{name}: photo of {w}x{h} pixels is smaller than the patch size {patch}")
    if lv.other_photo:
        if other is None:
            raise InputError("level 5 takes its reference from another photo: pass other=")
        ox, oy = int(rng.integers(0, w - patch + 1)), int(rng.integers(0, h - patch + 1))
        hr = photo[oy:oy + patch, ox:ox + patch]
        src, with_input = other, False
    else:
        src, with_input = photo, True
    sh, sw = src.shape[:2]
    for _ in range(_TRIES):
        quad = _draw_quad(lv, patch, rng)
        at = _place(quad, patch, sh, sw, rng, with_input)
        if at is not None:
            break
    else:
        raise InputError(f"{name}: photo of {sw}x{sh} pixels is too small for level-{level} pairs of {patch}x{patch} "
                         f"patches (the reference's window does not fit in {_TRIES} tries); use a smaller patch size")
    origin = np.array(at, dtype=np.float64)
    ref_to_src = homography_from_points(_corners(patch), quad + origin)
    side = np.linalg.norm(quad[1] - quad[0]) / (patch - 1)
    ref = _render(src, ref_to_src, side, patch)
    ref = colour_change(ref, lv.colour, rng)
    ref_u8 = np.round(ref * 255).astype(np.uint8)
    if lv.other_photo:
        return {"hr": np.ascontiguousarray(hr), "ref": ref_u8, "ref_to_hr": np.full((3, 3), np.nan), "overlap": 0.0}
    ox, oy = at
    hr = np.ascontiguousarray(photo[oy:oy + patch, ox:ox + patch])
    to_hr = np.array([[1, 0, -ox], [0, 1, -oy], [0, 0, 1.0]])
    ref_to_hr = to_hr @ ref_to_src
    return {"hr": hr, "ref": ref_u8, "ref_to_hr": ref_to_hr, "overlap": overlap_fraction(ref_to_hr, patch)}


def overlap_fraction(ref_to_hr: np.ndarray, patch: int, samples: int = 32) -> float:
    """Fraction of a patch x patch HR patch whose pixels appear in the reference (grid of samples^2 points)."""
    g = (np.arange(samples) + 0.5) * (patch / samples) - 0.5
    xs, ys = np.meshgrid(g, g)
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1)
    q = apply_homography(np.linalg.inv(ref_to_hr), pts)
    inside = (q >= -0.5).all(axis=1) & (q <= patch - 0.5).all(axis=1)
    return float(inside.mean())
