"""Files written whole or not at all, read without running code, and hashed: one place for all three.

* ``atomic_write_text`` / ``atomic_torch_save``: write to a temporary name in the same folder, then
  ``os.replace``: a crash leaves the old file or the new one, never half a file;
* ``load_tensors``: ``torch.load(weights_only=True)`` with one clear message per way a file can be bad
  (missing, empty, truncated, not a torch file, a pickle that would run code); the message names the file and
  the fix given by the caller, and never suggests loading with ``weights_only=False``;
* ``sha256_file``: the hex digest that manifests and info.json files record.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import secrets
from pathlib import Path
from typing import Any

import torch

from .errors import InputError

__all__ = ["atomic_output", "atomic_write_text", "atomic_write_bytes", "atomic_torch_save", "load_tensors",
           "sha256_file"]


def _tmp(path: Path) -> Path:
    # unique per writer (process id and a random part), so that two processes writing the same file at once
    # (two notebooks, parallel test workers) never rename or remove each other's half-written copy
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_output(path: str | Path):
    """``with atomic_output(path) as tmp:`` write the file ``tmp``; when the block ends without an error it
    becomes ``path`` (one rename), otherwise it is removed. The folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns the path."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_tensors(path: str | Path, what: str, fix: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, or one InputError: "<what> <path> <problem>; <fix>"."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} not found; {fix}")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {path} is empty (0 bytes); {fix}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:   # truncated zip, wrong magic number, EOF, refused pickle: torch raises several types
        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in text:
            # a pickle that names a function to call; torch's own text goes on to suggest weights_only=False,
            # the one thing never to do with such a file, so it is not quoted
            raise InputError(f"{what} {path} holds objects other than tensors and plain containers (a pickle "
                             f"that could run code); it was not loaded; {fix}") from None
        # quote torch's reason, leaving out its lines about weights_only and its documentation
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not any(
            w in ln for w in ("weights_only", "Weights only", "documentation", "http", "file an issue"))]
        detail = lines[0][:120] if lines else type(exc).__name__
        raise InputError(f"{what} {path} cannot be read: it is truncated or not a torch file ({detail}); {fix}") from None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
