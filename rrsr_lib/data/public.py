"""The public RefSR datasets, read from a folder the user gives, in their usual layouts.

None of these sets can be downloaded here; whoever has them points these loaders at their folders.
Every loader makes the LR input the way the literature does (RRSR.md, "The task"): the HR image is
cropped top-left to a multiple of 4, then shrunk by PIL bicubic (:func:`rrsr_lib.degradation.bicubic_downsample`).
References are cropped top-left to a multiple of 4 too (as TTSR's and C2-Matching's test code do).

Items are dicts: "hr" float32 (3, H, W) in [0, 1]; "lr" float32 (3, H/4, W/4); "ref" float32
(3, H', W') (see each set for its size); "name": str (the input's file stem). Sizes differ between
items: use batch_size=1 or pad (the RRSR test protocol zero-pads pairs to a common canvas).

Layouts (what each loader expects under ``root``):

* CUFED training (:class:`CUFEDTrain`): ``input/`` and ``ref/``, paired by file stem;
* CUFED5 (:class:`CUFED5`): one flat folder, ``XXX_0.png`` = HR input, ``XXX_1.png`` ...
  ``XXX_5.png`` = references from most to least similar;
* WR-SR (:class:`WRSR`): ``input/`` and ``ref/``, paired by file stem;
* Sun80 (:class:`Sun80`): ``Sun_Hays_SR_groundtruth/<name>.<ext>`` and, for each input,
  ``Sun_Hays_SR_scenematches/<name>/`` with many scene matches;
* Urban100, Manga109 (:class:`Urban100`, :class:`Manga109`): one flat folder of HR images, no
  reference: the LR image itself serves as the reference.

Protocols differ between papers (RRSR.md, "Evaluation protocols"): always say which one a number uses.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..degradation import bicubic_downsample, upsample_lr
from ..errors import InputError
from ..images import MIN_LR_PATCH, check_hr_size, load_hr, load_rgb
from .embedded import joint_augment, uint8_to_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _folder(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise InputError(f"{path}: folder not found; {what} expects {layout}")
    if not path.is_dir():
        raise InputError(f"{path}: is a file, not a folder; {what} expects {layout}")
    return path


def image_files(folder: Path, what: str, layout: str, required: bool = True) -> list[Path]:
    """The image files of ``folder``, sorted; hidden files (".name", e.g. macOS's "._name") ignored; two files
    with one stem (a.jpg and a.png) refused, naming both, since pairing by name could not tell which is meant."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files and required:
        raise InputError(f"{folder}: contains no images ({', '.join(IMAGE_SUFFIXES)}); {what} expects {layout}")
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise InputError(f"{seen[p.stem]} and {p}: two images with one name; {what} pairs files by name, "
                             "so keep one of them (move or rename the other)")
        seen[p.stem] = p
    return files


def _load_ref(path: Path, scale: int) -> np.ndarray:
    """A reference image, cropped top-left to a multiple of ``scale`` (refused if too small for one LR patch)."""
    return load_hr(path, scale=scale, crop=True)


def _item(hr: np.ndarray, ref: np.ndarray, name: str, scale: int, **extra) -> dict:
    item = {"hr": uint8_to_tensor(hr), "lr": uint8_to_tensor(bicubic_downsample(hr, scale)), "ref": uint8_to_tensor(ref), "name": name}
    item.update(extra)
    return item


def _pair_by_stem(root: Path, what: str, inputs: str = "input", refs: str = "ref") -> list[tuple[str, Path, Path]]:
    layout = f"a folder with {inputs}/ and {refs}/ holding images paired by file name (input/001.png with ref/001.png)"
    root = _folder(Path(root), what, layout)
    in_dir = _folder(root / inputs, what, layout)
    ref_dir = _folder(root / refs, what, layout)
    ins = image_files(in_dir, what, layout)
    ref_by_stem = {}
    for p in image_files(ref_dir, what, layout):
        ref_by_stem.setdefault(p.stem, p)
    pairs = []
    for p in ins:
        if p.stem not in ref_by_stem:
            raise InputError(f"{p}: input without its reference: no {ref_dir / p.stem}.* found; every image in "
                             f"{inputs}/ needs an image of the same name in {refs}/")
        pairs.append((p.stem, p, ref_by_stem[p.stem]))
    return pairs


class _PairFolder(Dataset):
    scale = 4

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        name, hr_path, ref_path = self.pairs[index]
        return _item(load_hr(hr_path, self.scale), _load_ref(ref_path, self.scale), name, self.scale)


class CUFEDTrain(_PairFolder):
    """CUFED training set: ``root/input/*.png`` and ``root/ref/*.png``, paired by file stem.

    Items: "hr" (3, 160, 160) for the real set, "lr" (3, 40, 40), "ref" (3, ref_size, ref_size),
    "name". ref_size=160 resizes every reference to 160x160 with PIL bicubic, as the authors'
    configuration does (RRSR.md, "Training setup"); None keeps it as it is (cropped to a multiple
    of 4). augment=True applies the authors' joint random flips and transpose (the same to input and
    reference), drawn from a generator seeded with (seed, index), so an item is reproducible.
    """

    def __init__(self, root: str | Path, scale: int = 4, ref_size: int | None = 160, augment: bool = False,
                 seed: int = 0):
        self.pairs = _pair_by_stem(Path(root), "CUFED training")
        self.scale, self.ref_size, self.augment, self.seed = scale, ref_size, augment, seed

    def __getitem__(self, index: int) -> dict:
        name, hr_path, ref_path = self.pairs[index]
        hr = load_hr(hr_path, self.scale)
        ref = _load_ref(ref_path, self.scale)
        if self.ref_size is not None and ref.shape[:2] != (self.ref_size, self.ref_size):
            ref = np.asarray(Image.fromarray(ref).resize((self.ref_size, self.ref_size), Image.BICUBIC))
        if self.augment:
            rng = np.random.default_rng([self.seed, index])
            hr, ref = joint_augment([hr, ref], *(rng.random(3) < 0.5))
        return _item(hr, ref, name, self.scale)


class WRSR(_PairFolder):
    """WR-SR (80 pairs): ``root/input/`` and ``root/ref/``, paired by file stem.

    Items: "hr" (3, H, W) the input cropped to a multiple of 4, "lr" (3, H/4, W/4), "ref" (3, H', W')
    cropped to a multiple of 4, "name".
    """

    def __init__(self, root: str | Path, scale: int = 4):
        self.pairs = _pair_by_stem(Path(root), "WR-SR")
        self.scale = scale


def stitch_references(refs: list[np.ndarray], scale: int = 4) -> np.ndarray:
    """Stitch several references into one large reference (the TTSR/MASA "5 references" protocol).

    refs: uint8 arrays HixWix3. Our rule (TTSR's released code does not include this step, so the
    layout is our documented choice): each reference is cropped top-left to a multiple of ``scale``,
    zero-padded at the bottom and right to the largest height and width among them, and the padded
    images are placed side by side, left to right in the given order (level 1 first). Returns uint8
    Hmax x (n * Wmax) x 3. Matching is translation-invariant, so the layout only matters through the
    black padding, which matches nothing textured.
    """
    if not refs:
        raise InputError("stitch_references needs at least one reference image")
    cropped = [r[: r.shape[0] - r.shape[0] % scale, : r.shape[1] - r.shape[1] % scale] for r in refs]
    hmax = max(r.shape[0] for r in cropped)
    wmax = max(r.shape[1] for r in cropped)
    out = np.zeros((hmax, wmax * len(cropped), 3), dtype=np.uint8)
    for i, r in enumerate(cropped):
        out[: r.shape[0], i * wmax: i * wmax + r.shape[1]] = r
    return out


class CUFED5(Dataset):
    """CUFED5 (126 groups) from its flat folder: ``XXX_0.png`` (HR input) and ``XXX_1.png`` ... ``XXX_5.png``.

    mode:

    * "level" (default, the C2-Matching/RRSR protocol with level=1): one item per group, the
      reference of the given ``level`` (1 = most similar ... 5 = least);
    * "each": one item per (group, level), group-major: item 5*g + (level-1); for tables by level;
    * "stitched" (TTSR/MASA papers): the five references stitched into one by :func:`stitch_references`
      (each cropped to a multiple of 4, zero-padded to the largest, side by side in level order).

    Items: "hr" (3, H, W) cropped to a multiple of 4, "lr" (3, H/4, W/4), "ref" (3, H', W') (stitched:
    (3, Hmax, 5*Wmax)), "name" (the group id, e.g. "000"), "level" (int; 0 when stitched).
    """

    _NAME = re.compile(r"^(.+)_([0-5])$")

    def __init__(self, root: str | Path, mode: str = "level", level: int = 1, scale: int = 4):
        if mode not in ("level", "each", "stitched"):
            raise InputError(f"CUFED5 mode must be 'level', 'each' or 'stitched', got {mode!r}")
        if mode == "level" and level not in (1, 2, 3, 4, 5):
            raise InputError(f"CUFED5 level must be 1-5 (1 = most similar reference), got {level!r}")
        layout = "one flat folder with XXX_0.png (HR input) and XXX_1.png ... XXX_5.png (references)"
        root = _folder(Path(root), "CUFED5", layout)
        groups: dict[str, dict[int, Path]] = {}
        for p in image_files(root, "CUFED5", layout):
            m = self._NAME.match(p.stem)
            if m:
                groups.setdefault(m.group(1), {})[int(m.group(2))] = p
        inputs = sorted(g for g, files in groups.items() if 0 in files)
        if not inputs:
            raise InputError(f"{root}: no CUFED5 input images (XXX_0.png) found; CUFED5 expects {layout}")
        needed = [level] if mode == "level" else [1, 2, 3, 4, 5]
        for g in inputs:
            missing = [k for k in needed if k not in groups[g]]
            if missing:
                raise InputError(f"{groups[g][0]}: input without its reference: {', '.join(f'{g}_{k}.png' for k in missing)} "
                                 f"missing in {root}")
        self.root, self.mode, self.level, self.scale = root, mode, level, scale
        self.groups = {g: groups[g] for g in inputs}
        self.names = inputs

    def __len__(self) -> int:
        return len(self.names) * (5 if self.mode == "each" else 1)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self.mode == "each":
            g, level = self.names[index // 5], index % 5 + 1
        else:
            g, level = self.names[index], (self.level if self.mode == "level" else 0)
        files = self.groups[g]
        hr = load_hr(files[0], self.scale)
        if self.mode == "stitched":
            ref = stitch_references([load_rgb(files[k]) for k in (1, 2, 3, 4, 5)], self.scale)
            check_hr_size(ref, self.scale, name=f"stitched references of {g}")
        else:
            ref = _load_ref(files[level], self.scale)
        return _item(hr, ref, g, self.scale, level=level)


class Sun80(Dataset):
    """Sun80 (Sun and Hays): 80 inputs, each with many scene matches; we use ONE documented reference.

    Layout: ``root/Sun_Hays_SR_groundtruth/<name>.<ext>`` and ``root/Sun_Hays_SR_scenematches/<name>/``.
    Reference choice (papers differ and rarely say): the first image of ``<name>/`` in sorted file-name
    order, cropped to a multiple of 4. Items: "hr", "lr", "ref", "name", "ref_file" (the chosen file name).
    """

    def __init__(self, root: str | Path, scale: int = 4):
        layout = ("Sun_Hays_SR_groundtruth/<name>.jpg and Sun_Hays_SR_scenematches/<name>/ (the scene matches "
                  "of each input) under the root folder")
        root = _folder(Path(root), "Sun80", layout)
        gt = _folder(root / "Sun_Hays_SR_groundtruth", "Sun80", layout)
        matches = _folder(root / "Sun_Hays_SR_scenematches", "Sun80", layout)
        self.items = []
        for p in image_files(gt, "Sun80", layout):
            sub = matches / p.stem
            refs = image_files(sub, "Sun80", layout, required=False) if sub.is_dir() else []
            if not refs:
                raise InputError(f"{p}: input without its reference: {sub} is missing or holds no images")
            self.items.append((p.stem, p, refs[0]))
        self.scale = scale

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        name, hr_path, ref_path = self.items[index]
        return _item(load_hr(hr_path, self.scale), _load_ref(ref_path, self.scale), name, self.scale,
                     ref_file=ref_path.name)


class SelfReferenceSet(Dataset):
    """A flat folder of HR images without references (Urban100, Manga109): the LR image is the reference.

    ref_mode="lr" (default): "ref" is the LR image itself, (3, H/4, W/4), as RRSR.md states for these
    sets; a RefSR network then matches its input against a reference 4x smaller than HR, so only
    self-similar structures at a 4x larger scale can help. ref_mode="lr_up": "ref" is the LR image
    enlarged by PIL bicubic x4, (3, H, W), for networks that need an HR-sized reference (it carries no
    more information than the LR image). Items: "hr", "lr", "ref", "name".
    """

    dataset = "a self-reference set"

    def __init__(self, root: str | Path, scale: int = 4, ref_mode: str = "lr"):
        if ref_mode not in ("lr", "lr_up"):
            raise InputError(f"ref_mode must be 'lr' (the LR image) or 'lr_up' (it upsampled x{scale}), got {ref_mode!r}")
        layout = "one flat folder of HR images"
        root = _folder(Path(root), self.dataset, layout)
        self.files = image_files(root, self.dataset, layout)
        self.scale, self.ref_mode = scale, ref_mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        p = self.files[index]
        hr = load_hr(p, self.scale)
        lr = bicubic_downsample(hr, self.scale)
        ref = lr if self.ref_mode == "lr" else upsample_lr(lr, self.scale)
        return {"hr": uint8_to_tensor(hr), "lr": uint8_to_tensor(lr), "ref": uint8_to_tensor(ref), "name": p.stem}


class Urban100(SelfReferenceSet):
    """Urban100 (100 urban photos, flat folder of HR images); the LR image is the reference (see :class:`SelfReferenceSet`)."""

    dataset = "Urban100"


class Manga109(SelfReferenceSet):
    """Manga109 (109 manga pages, flat folder of HR images); the LR image is the reference (see :class:`SelfReferenceSet`)."""

    dataset = "Manga109"


__all__ = ["image_files", "CUFEDTrain", "CUFED5", "WRSR", "Sun80", "SelfReferenceSet", "Urban100", "Manga109",
           "stitch_references", "MIN_LR_PATCH"]
