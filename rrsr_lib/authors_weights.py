"""The authors' released weights in this project's network: their key names, mapped by rule.

The RRSR authors publish ``network_mse.pth`` and ``network_gan.pth`` (their ``RestorationNet``, saved with
``torch.save(net.state_dict())``) and use C2-Matching's ``feature_extraction.pth`` (``ContrasExtractorSep``:
two VGG16 trunks up to conv3_1 with ImageNet mean/std buffers). Their network and :class:`rrsr_lib.models.RRSR`
compute the same function (tests/test_authors_weights.py checks it against numbers made with the authors'
own architecture code); only the names differ. One rule maps every name:

=====================================================  =============================================
authors (``RestorationNet`` / ``ContrasExtractorSep``)  this project (``RRSR``)
=====================================================  =============================================
``content_extractor.*``                                ``content.*``
``dyn_agg_restore.small_offset_conv{1,2}``             ``x1.0.align.offset_conv{1,2}``
``dyn_agg_restore.medium_offset_conv{1,2}_second``     ``x2.1.align.offset_conv{1,2}`` (first/second/third = 0/1/2)
``dyn_agg_restore.large_dyn_agg_first.{weight,bias}``  ``x4.0.align.{weight,bias}`` (the deformable kernel)
``..._dyn_agg_first.conv_offset_mask``                 ``x4.0.align.offset_mask``
``dyn_agg_restore.head_small.{weight,bias}``           ``x1.0.select.condconv.{weight,bias}`` (experts)
``head_small.routing_func.0`` / ``se.0`` / ``se.2``    ``select.condconv.routing`` / ``select.gate.squeeze`` / ``.excite``
``dyn_agg_restore.body_medium_third.N``                ``x2.2.body.N``
``tail_small.0`` / ``tail_medium.0``                   ``up1.conv`` / ``up2.conv``
``tail_large.0`` / ``tail_large.2``                    ``tail.0`` / ``tail.2``
``feature_extraction_image1.model.conv2_1``            ``matcher.features.input_trunk.body.5`` (image2: ``ref_trunk``)
=====================================================  =============================================

(small = x1, medium = x2, large = x4.) Files are read with ``torch.load(weights_only=True)``: nothing in them
can run code. A file whose names or shapes do not fit is refused with one message naming the first wrong key.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from .errors import InputError
from .files import load_tensors

__all__ = ["authors_key", "restoration_key_map", "map_restoration_state", "read_state_dict",
           "load_authors_features", "load_authors_checkpoint", "FEATURE_LAYERS"]

# x1 / x2 / x4 are the authors' small / medium / large scale; their cascade stages are first / second / third
_SCALE_NAME = {"x1": "small", "x2": "medium", "x4": "large"}
_ORDINAL = ("first", "second", "third")
_UP = {"up1.conv": "tail_small.0", "up2.conv": "tail_medium.0", "tail.0": "tail_large.0", "tail.2": "tail_large.2"}
_SELECT = {"condconv.weight": "weight", "condconv.bias": "bias", "condconv.routing": "routing_func.0",
           "gate.squeeze": "se.0", "gate.excite": "se.2"}
_STAGE_KEY = re.compile(r"^(x1|x2|x4)\.(\d+)\.(align|select|body)\.(.+)$")
# C2-Matching's trunk layers (an OrderedDict Sequential named like VGG16) -> index in our trunk's body
FEATURE_LAYERS = {"conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7, "conv3_1": 10}


def authors_key(key: str) -> str:
    """The authors' name of one trained tensor of :class:`rrsr_lib.models.RRSR`, e.g.
    "x2.1.align.offset_mask.weight" -> "dyn_agg_restore.medium_dyn_agg_second.conv_offset_mask.weight"."""
    if key.startswith("content."):
        return "content_extractor." + key[len("content."):]
    for ours, theirs in _UP.items():
        if key.startswith(ours + "."):
            return f"dyn_agg_restore.{theirs}{key[len(ours):]}"
    m = _STAGE_KEY.match(key)
    if m is None:
        raise InputError(f"{key!r} has no counterpart in the authors' RestorationNet")
    scale, i, part, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    name = _SCALE_NAME[scale]
    if scale == "x1":
        if i != 0:
            raise InputError(f"the authors' network has one x1 stage; {key!r} has none")
        suffix = ""
    elif i < len(_ORDINAL):
        suffix = "_" + _ORDINAL[i]
    else:
        raise InputError(f"the authors' cascades have 3 stages; {key!r} has none")
    if part == "body":
        return f"dyn_agg_restore.body_{name}{suffix}.{rest}"
    if part == "select":
        for ours, theirs in _SELECT.items():
            if rest.startswith(ours):
                return f"dyn_agg_restore.head_{name}{suffix}.{theirs}{rest[len(ours):]}"
    if part == "align":
        conv = re.match(r"^offset_conv([12])\.(weight|bias)$", rest)
        if conv:
            # their offset convolutions carry the ordinal after the number: medium_offset_conv1_first
            return f"dyn_agg_restore.{name}_offset_conv{conv.group(1)}{suffix}.{conv.group(2)}"
        if rest.startswith("offset_mask."):
            return f"dyn_agg_restore.{name}_dyn_agg{suffix}.conv_offset_mask.{rest[len('offset_mask.'):]}"
        if rest in ("weight", "bias"):
            return f"dyn_agg_restore.{name}_dyn_agg{suffix}.{rest}"
    raise InputError(f"{key!r} has no counterpart in the authors' RestorationNet")


def restoration_key_map(model: nn.Module) -> dict[str, str]:
    """{authors' key: project key} for every trained tensor of ``model`` (an RRSR)."""
    frozen = ("texture.", "matcher.")
    return {authors_key(k): k for k in model.state_dict() if not k.startswith(frozen)}


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (``torch.load(weights_only=True)``, a ``module.`` prefix stripped).

    Accepts a plain state dict or one under a "state_dict" / "params" key. Raises InputError naming the
    file for a missing, unreadable or non-state-dict file.
    """
    path = Path(path)
    obj = load_tensors(path, what, "give the path of the authors' released file (download it again if it is damaged)")
    for key in ("state_dict", "params"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{what} {path} holds no state dict of tensors (found {type(obj).__name__})")
    # saved from a DataParallel / DistributedDataParallel network: "module." before every name
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _check_fit(state: dict, expected: dict[str, tuple], what: str, path) -> None:
    """Raise InputError naming the first key of ``state`` that is unknown, missing or of another shape."""
    for k in state:
        if k not in expected:
            example = next(iter(expected))
            raise InputError(f"{what} {path} does not fit: unexpected key {k!r}; expected the {len(expected)} keys "
                             f"of the authors' layout (e.g. {example!r})")
    for k, shape in expected.items():
        if k not in state:
            raise InputError(f"{what} {path} does not fit: key {k!r} (shape {list(shape)}) is missing")
        if tuple(state[k].shape) != tuple(shape):
            raise InputError(f"{what} {path} does not fit: {k!r} has shape {list(state[k].shape)}, "
                             f"expected {list(shape)}")


def map_restoration_state(state: dict[str, torch.Tensor], model: nn.Module, path="the state dict") -> dict:
    """The authors' restoration state dict renamed to ``model``'s keys (checked: every key, every shape)."""
    key_map = restoration_key_map(model)
    ours = model.state_dict()
    _check_fit(state, {a: tuple(ours[p].shape) for a, p in key_map.items()}, "restoration weights", path)
    return {key_map[k]: v for k, v in state.items()}


def load_authors_features(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """C2-Matching's ``feature_extraction.pth`` as this project's matching features (two VGG16 trunks).

    feature_extraction_image1 (the LR-upsampled input) -> ``input_trunk``, feature_extraction_image2 (the
    reference) -> ``ref_trunk``; their ImageNet mean/std buffers replace ours. Returns a frozen
    :class:`rrsr_lib.contrastive.ContrastiveFeatures` in eval mode: call (lr_up, ref) -> (feat_in, feat_ref).
    """
    from .contrastive import ContrastiveFeatures

    state = read_state_dict(path, "feature extraction weights")
    features = ContrastiveFeatures("empty")
    mapping, expected = {}, {}
    for image, trunk in (("feature_extraction_image1", features.input_trunk),
                         ("feature_extraction_image2", features.ref_trunk)):
        for buf in ("mean", "std"):
            expected[f"{image}.{buf}"] = (1, 3, 1, 1)
        for layer, index in FEATURE_LAYERS.items():
            conv = trunk.body[index]
            for p in ("weight", "bias"):
                expected[f"{image}.model.{layer}.{p}"] = tuple(getattr(conv, p).shape)
                mapping[f"{image}.model.{layer}.{p}"] = (conv, p)
        mapping[f"{image}.mean"], mapping[f"{image}.std"] = (trunk, "mean"), (trunk, "std")
    _check_fit(state, expected, "feature extraction weights", path)
    with torch.no_grad():
        for k, (module, name) in mapping.items():
            getattr(module, name).copy_(state[k].float())
    return features.eval().requires_grad_(False).to(device)


def load_authors_checkpoint(restoration_path: str | Path, feature_extraction_path: str | Path | None = None,
                            device: torch.device | str = "cpu") -> nn.Module:
    """The paper RRSR with the authors' released weights, in eval mode on ``device``.

    restoration_path: ``network_mse.pth`` or ``network_gan.pth`` (their RestorationNet state dict).
    feature_extraction_path: C2-Matching's ``feature_extraction.pth`` for the matching trunks; None keeps
    this project's shipped contrastive trunks (announced in one printed line). The texture VGG is
    torchvision's VGG19 when cached (the authors'), else the offline VGG16, announced by rrsr_lib.vgg.
    Call: model(lr [B,3,h,w], ref [B,3,Hr,Wr] in [0,1]) -> sr [B,3,4h,4w] in [0,1].
    """
    from .models import build_model

    state = read_state_dict(restoration_path, "restoration weights")
    matching = load_authors_features(feature_extraction_path) if feature_extraction_path is not None else None
    if matching is None:
        print("rrsr_lib.authors_weights: no feature_extraction.pth given; matching with this project's "
              "shipped contrastive trunks")
    model = build_model("rrsr", "paper", matching_features=matching, vgg_weights="auto",
                        matching="contrastive")
    mapped = map_restoration_state(state, model, restoration_path)
    model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=False)
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------
# the command-line options of every command that can run the authors' weights (sr, evaluate)
# ----------------------------------------------------------------------------------------------
def add_authors_arguments(parser) -> None:
    """Add ``--authors-weights`` and ``--authors-features`` to an argparse parser."""
    parser.add_argument("--authors-weights", type=Path, help="the authors' network_mse.pth or network_gan.pth")
    parser.add_argument("--authors-features", type=Path,
                        help="with --authors-weights: C2-Matching's feature_extraction.pth (the matching trunks)")


def authors_label(args) -> str | None:
    """The row label of the authors' weights the arguments name ("authors:<file>"), or None; InputError for
    ``--authors-features`` without ``--authors-weights``."""
    if args.authors_features and not args.authors_weights:
        raise InputError("--authors-features needs --authors-weights (the restoration network it feeds)")
    return f"authors:{Path(args.authors_weights).name}" if args.authors_weights else None
