"""Reading and writing images safely: every bad file ends in one sentence that names it and the fix.

RefSR needs 8-bit RGB photographs whose size survives a x4 downsampling. Image files in the wild are
often something else: grayscale scans, PNGs with an alpha channel, 16-bit TIFFs and PNGs from raw
converters, half-downloaded JPEGs. PIL opens most of them without complaint and converts them
silently (it drops alpha, it truncates 16 bits to 8, it decodes a truncated JPEG lazily and fails much
later deep inside a data loader). Here every such case is caught when the file is read:

* :func:`load_rgb` returns uint8 HxWx3 or raises :class:`~rrsr_lib.errors.InputError` naming the file
  and the problem (missing, not an image, truncated/corrupt, a JPEG with damaged data that PIL would
  decode garbled, grayscale, alpha, 16-bit, other mode);
* :func:`check_hr_size` says whether an HR image can be used at scale 4 (size a multiple of 4, and
  an LR image of at least one 3x3 patch, the unit of RRSR's matching);
* :func:`save_png` writes a PNG atomically (temporary name, then ``os.replace``), so that an
  interrupted run never leaves a half-written file behind.
"""
from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import InputError
from .files import atomic_output

# Matching compares 3x3 patches of the LR-scale feature maps (RRSR.md, "Correspondence"), so an LR
# image needs at least 3x3 pixels: at scale 4 the HR image must be at least 12x12.
MIN_LR_PATCH = 3

_GRAY_MODES = {"1", "L", "I", "F"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16BS", "I;16LS"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# the EXIF tag of a photo's orientation (1 = upright)
_EXIF_ORIENTATION = 0x0112
_announced_orientation: set[str] = set()


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth per sample from a PNG's IHDR chunk (byte 24 of the file), or None if unreadable.

    PIL opens a 48-bit RGB PNG as an 8-bit "RGB" image (it keeps the high byte), so the mode alone
    cannot tell a 16-bit PNG from an 8-bit one.
    """
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24]


def _libjpeg_complaint(path: Path) -> str | None:
    """What libjpeg says about a JPEG file's data, or None if it decodes cleanly.

    A JPEG whose entropy-coded data is damaged (bytes lost or overwritten in the middle) decodes without an
    error: libjpeg substitutes what it cannot read and goes on, and PIL hides libjpeg's warning, so the
    pixels come out garbled without a word. torchvision's decoder (also libjpeg) lets the warning through to
    the process's stderr, file descriptor 2: decode the file with it once more and read what it wrote there.
    Returns None as well where torchvision cannot decode images (it deprecates its decoders from 0.29 on).
    """
    try:
        import torch
        from torchvision.io import decode_jpeg
    except ImportError:
        return None
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    with tempfile.TemporaryFile() as captured, warnings.catch_warnings():
        # torchvision >= 0.29 warns that its image decoders are deprecated; that is not about the file
        warnings.simplefilter("ignore")
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            decode_jpeg(data)
        except RuntimeError:
            # a JPEG flavour torchvision does not decode (CMYK, arithmetic coding, ...): PIL's word stands,
            # unless libjpeg complained about the data before giving up (read below)
            pass
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode("utf-8", "replace")
    # libjpeg's warnings: "Corrupt JPEG data: ...", "Premature end of JPEG file", "Invalid SOS parameters ..."
    complaints = [line for line in text.splitlines() if "JPEG" in line or "Invalid" in line]
    others = [line for line in text.splitlines() if line not in complaints]
    if others:
        # someone else's stderr output written while fd 2 was borrowed: pass it on
        print("\n".join(others), file=sys.stderr)
    return "; ".join(complaints) or None


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit RGB image file completely (see :func:`_load_rgb`); a warning PIL's decoders give about
    the file (corrupt EXIF, tag data beyond the end of a TIFF, ...) is an InputError naming the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        try:
            return _load_rgb(path)
        except UserWarning as w:
            raise InputError(f"{path}: is corrupt: decoding it gave the warning '{str(w)[:120]}'; "
                             "download or export the file again") from None


def _load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit RGB image file completely and return it as a uint8 array of shape HxWx3 (0-255).

    Palette images without transparency are expanded to RGB (no information is lost). Multi-frame
    files (GIF, MPO, TIFF) give their first frame. Everything else that is not plain 8-bit colour is
    refused with an :class:`InputError` that names the file and says how to convert it: a missing
    file, a file that is not an image, a truncated or corrupt file (the whole image is decoded here,
    not lazily), grayscale, an alpha channel (which would otherwise be dropped silently), 16 bits per
    sample, and other modes such as CMYK.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found; check the path (the current folder is {Path.cwd()})")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not an image file; give the path of a .png/.jpg file inside it")
    try:
        img = Image.open(p)
    except Image.DecompressionBombError as exc:
        raise InputError(f"{p}: is too large to decode safely ({exc}); downscale it first, or raise "
                         "PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from None
    except UnidentifiedImageError:
        raise InputError(f"{p}: is not an image file PIL can read (corrupt, or not an image at all); "
                         "replace it with a valid PNG or JPEG") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot be opened as an image ({exc}); replace it with a valid PNG or JPEG") from None
    with img:
        # Force a full decode now: PIL decodes lazily, so a truncated file would otherwise fail only when
        # the pixels are first touched, or be padded with grey if someone set LOAD_TRUNCATED_IMAGES.
        allow_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"{p}: is truncated or corrupt, decoding the pixels failed ({exc}); "
                             "download or export the file again") from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated
        if img.format == "JPEG" and (complaint := _libjpeg_complaint(p)):
            raise InputError(f"{p}: is corrupt: the JPEG decoder reported '{complaint[:160]}' (PIL would have "
                             "returned garbled pixels); download or export the file again")
        mode = img.mode
        if mode in _SIXTEEN_BIT_MODES or (mode == "I" and img.format == "PNG"):
            raise InputError(f"{p}: is a 16-bit image (PIL mode {mode}); RefSR uses 8-bit RGB: convert it to "
                             "8 bits per channel first, e.g. np.round(x / 257).astype(np.uint8)")
        if img.format == "PNG" and (_png_bit_depth(p) or 8) > 8:
            raise InputError(f"{p}: is a 16-bit PNG (PIL would keep only the high byte of each sample); "
                             "convert it to 8 bits per channel first, e.g. np.round(x / 257).astype(np.uint8)")
        if img.format == "TIFF":
            bits = img.tag_v2.get(258) if hasattr(img, "tag_v2") else None
            bits = tuple(bits) if isinstance(bits, (tuple, list)) else (bits,)
            if any(b is not None and b > 8 for b in bits):
                raise InputError(f"{p}: is a {max(b for b in bits if b)}-bit TIFF; convert it to 8 bits per "
                                 "channel RGB first")
        if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
            raise InputError(f"{p}: has an alpha (transparency) channel (PIL mode {mode}) that would be dropped "
                             "silently; flatten it onto a background yourself, e.g. "
                             "Image.alpha_composite(Image.new('RGBA', im.size, 'white'), im.convert('RGBA'))"
                             ".convert('RGB'), and save that")
        if mode in _GRAY_MODES:
            raise InputError(f"{p}: is a grayscale image (PIL mode {mode}); RefSR here works on RGB: if a gray "
                             "image is what you mean, save it as RGB with Image.open(path).convert('RGB')")
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation not in (1, None):
            # a camera's rotated photo: shown upright by every viewer, so read upright too (and said once per file)
            img = ImageOps.exif_transpose(img)
            if str(p) not in _announced_orientation:
                _announced_orientation.add(str(p))
                print(f"rrsr_lib.images: {p}: EXIF orientation {orientation} applied (the image is read as viewers show it)")
        if mode == "P":
            img = img.convert("RGB")
        elif mode != "RGB":
            raise InputError(f"{p}: has PIL mode {mode}, not 8-bit RGB; convert it to RGB first "
                             "(for CMYK or LAB use a colour-managed tool so the colours stay right)")
        arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr)


def check_hr_size(hr: np.ndarray | tuple[int, ...], scale: int = 4, min_lr: int = MIN_LR_PATCH,
                  name: str = "image") -> None:
    """Raise :class:`InputError` unless an HR image of this size can be super-resolved at ``scale``.

    hr: uint8 HxWx3 array (or just its shape). Two rules:

    * too small: the LR image (H//scale x W//scale) must hold at least one ``min_lr`` x ``min_lr`` patch
      (the 3x3 patch that matching compares), so H and W must be at least ``scale * min_lr`` (12);
    * not a multiple of ``scale``: H and W must be divisible by ``scale`` so that LR x scale = HR
      exactly. :func:`rrsr_lib.degradation.bicubic_downsample` would crop the bottom/right rows and
      columns silently; code that must compare SR with HR pixel for pixel calls this check instead,
      and the message says how to crop (the literature's rule: keep the top-left part).
    """
    shape = tuple(hr.shape) if hasattr(hr, "shape") else tuple(hr)
    if len(shape) < 2:
        raise InputError(f"{name}: expected an image array HxWx3, got shape {shape}")
    h, w = int(shape[0]), int(shape[1])
    need = scale * min_lr
    if h < need or w < need:
        raise InputError(f"{name}: is {w}x{h} pixels (width x height), too small for one {min_lr}x{min_lr} LR patch "
                         f"at scale {scale}: its LR image would be {w // scale}x{h // scale}; use an image of at "
                         f"least {need}x{need} pixels")
    if h % scale or w % scale:
        raise InputError(f"{name}: is {w}x{h} pixels (width x height), not a multiple of {scale}; crop it to "
                         f"{w - w % scale}x{h - h % scale} (keep the top-left part, as the RefSR literature does: "
                         "rrsr_lib.degradation.crop_to_multiple)")


def load_hr(path: str | os.PathLike, scale: int = 4, crop: bool = True, min_lr: int = MIN_LR_PATCH) -> np.ndarray:
    """Read an HR ground-truth image: :func:`load_rgb`, then the size rules of :func:`check_hr_size`.

    crop=True (what the RefSR test sets do: TTSR, C2-Matching and RRSR crop every HR image to a
    multiple of 4 before making its LR version) keeps the top-left (H - H % scale) x (W - W % scale)
    part; crop=False refuses a size that is not a multiple of ``scale``. Either way an image too
    small for one 3x3 LR patch is refused. Returns uint8 HxWx3.
    """
    img = load_rgb(path)
    h, w = img.shape[:2]
    need = scale * min_lr
    if crop and h >= need and w >= need:
        img = np.ascontiguousarray(img[: h - h % scale, : w - w % scale])
    check_hr_size(img, scale=scale, min_lr=min_lr, name=str(path))
    return img


def save_png(path: str | os.PathLike, arr: np.ndarray) -> Path:
    """Write a uint8 HxWx3 (or HxW) array as a PNG at ``path``, atomically; return the path.

    The PNG is written through :func:`rrsr_lib.files.atomic_output` (a temporary name in the same folder,
    then one rename): a crash leaves either the old file or the new one, never half a file. Parent
    folders are created. The file carries no metadata (no time stamp), so equal pixels give equal bytes
    with the same PIL/zlib versions.
    """
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8:
        raise InputError(f"save_png({path}): needs a uint8 numpy array, got "
                         f"{type(arr).__name__} {getattr(arr, 'dtype', '')}; convert with "
                         "(x * 255).round().clip(0, 255).astype(np.uint8)")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise InputError(f"save_png({path}): needs shape HxWx3 or HxW, got {arr.shape}")
    p = Path(path)
    with atomic_output(p) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG", compress_level=9)
    return p
