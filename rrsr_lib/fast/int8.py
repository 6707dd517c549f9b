"""Int8 packing of trained weights, so that the shipped checkpoints stay small: w ~= q * scale per output channel.

rrsr_lib.checkpoints.pack_state_dict decides *which* tensors a checkpoint stores (the trained ones, not the
frozen VGG and matching trunks) and hands them to :func:`pack_tensors`; rrsr_lib.checkpoints.unpack_state_dict
checks the format and hands them back to :func:`unpack_tensors`.

Weight tensors of 2 or more dimensions with at least :data:`QUANTIZE_MIN_NUMEL` values are stored as int8 with
one float32 scale per output channel (symmetric: w = q * scale, scale = max|w| / 127), everything else (biases,
small tensors) as float32. RRSR's "small" network has 2.6 M trained parameters because its alignment and
selection units see VGG's 256/128/64 texture channels: 10.5 MB in float32 and 5.3 MB in float16, above the 5 MB
a shipped checkpoint may take; int8 makes it 2.7 MB. The project's numbers are measured with the dequantized
weights (tests/test_checkpoints.py checks the round trip).
"""
from __future__ import annotations

import torch

__all__ = ["QUANTIZE_MIN_NUMEL", "pack_tensors", "unpack_tensors"]

# weight tensors with at least this many values are stored as int8 + per-output-channel scales
QUANTIZE_MIN_NUMEL = 1024


def pack_tensors(tensors: dict[str, torch.Tensor]) -> dict:
    """{name: tensor} -> {"float": {name: float32 tensor}, "int8": {name: int8 tensor}, "scale": {name: float32
    tensor [out_channels]}}, plain CPU tensors: floating-point weights with dim >= 2 and >= QUANTIZE_MIN_NUMEL
    values go to "int8" with one scale per output channel (dim 0), w ~= q * scale, scale = max|w| / 127."""
    out = {"float": {}, "int8": {}, "scale": {}}
    for k, v in tensors.items():
        v = v.detach().to("cpu")
        if v.is_floating_point() and v.dim() >= 2 and v.numel() >= QUANTIZE_MIN_NUMEL:
            w = v.float().reshape(v.shape[0], -1)
            # symmetric int8 per output channel: scale = max|w| / 127, q = round(w / scale)
            scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            out["int8"][k] = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(v.shape).clone()
            out["scale"][k] = scale.clone()
        else:
            out["float"][k] = (v.float() if v.is_floating_point() else v).clone()
    return out


def unpack_tensors(packed: dict) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_tensors`: {name: tensor} with the int8 weights dequantized to float32."""
    state = dict(packed["float"])
    for k, q in packed["int8"].items():
        scale = packed["scale"][k]
        state[k] = (q.float().reshape(q.shape[0], -1) * scale[:, None]).reshape(q.shape)
    return state
