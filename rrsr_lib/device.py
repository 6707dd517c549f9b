"""The device is chosen once, here (cuda, then mps, then cpu), and seeds are fixed in one place.

Nothing else in the project calls ``.cuda()``: modules and tensors are moved with ``.to(device)``
where ``device`` comes from :func:`pick_device`.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import InputError

_CHOICES = ("auto", "cuda", "mps", "cpu")


def pick_device(preference: str = "auto") -> torch.device:
    """Return the device to run on.

    preference: "auto" (cuda if available, then mps, then cpu) or one of "cuda", "mps", "cpu".
    Asking for an accelerator that is not there is an error, not a silent fall-back.
    """
    if preference not in _CHOICES:
        raise InputError(f"device must be one of {_CHOICES}, got {preference!r}")
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise InputError("device='cuda' was asked for but torch sees no CUDA GPU; use device='auto' or 'cpu'")
    if preference == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device='mps' was asked for but this machine has no Apple GPU; use device='auto' or 'cpu'")
    return torch.device(preference)


def seed_everything(seed: int) -> None:
    """Fix Python's, numpy's and torch's random generators (all devices) to ``seed``."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
