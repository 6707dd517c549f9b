"""Learned matching features: C2-Matching's contrastive correspondence network (teacher, then student).

Idea (RRSR step 1, taken from C2-Matching): ImageNet VGG features are not made for matching a
blurry LR-upsampled image against a sharp reference seen from another viewpoint. Two VGG16 trunks
up to conv3_1 (one for the input, one for the reference; 256 channels at 1/4 of the image size)
are therefore fine-tuned for correspondence:

* teacher: an HR image against the same image warped by a random homography (corners moved by up
  to 10 px), so that the true correspondence of every feature pixel is known. Margin loss on
  L2-normalised descriptors with squared distances d = 2 - 2 cos:
      L = mean_i relu(margin + d(p_i, p'_i) - min(hardest negative in image 2, hardest in image 1)),
  where negatives are only positions farther than the "safe radius" (4 feature px, Chebyshev) from
  the true correspondence;
* student: the LR-upsampled image against the warped HR, trained with the same margin loss plus a
  distillation of the teacher's correlation (which sees the HR image):
      L = L_margin + 15 * KL(softmax(C_teacher / 0.15) || softmax(C_student / 0.15)),
  C = correlation of the corresponding descriptors, row-wise softmax over the reference side.

The student's trunks are RRSR's matching features (frozen afterwards). This module holds the
configuration (CPU-sized by default, the authors' numbers in ``PAPER_CONFIG``), the network, the
ground-truth correspondences, the two losses, and the shipped weights (loaded by default). The
training loop and the command line are in :mod:`rrsr_lib.contrastive_train`; the ground-truth
correspondence accuracy (notebook 02, ``results/contrastive_accuracy.json``) in
:mod:`rrsr_lib.contrastive_eval`.

Run ``python -m rrsr_lib.contrastive_train train`` to retrain the shipped weights and
``python -m rrsr_lib.contrastive_train evaluate`` to measure the accuracy table.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .files import atomic_write_bytes
from .vgg import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ContrastiveConfig", "PAPER_CONFIG", "CPU_CONFIG", "ContrastiveTrunk", "ContrastiveFeatures",
           "correspondences", "margin_loss", "distillation_loss", "save_weights", "load_weights", "load_contrastive",
           "WEIGHTS_DIR", "SHIPPED"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# sha256 of the shipped weight files (rrsr_lib/weights/); python -m rrsr_lib.contrastive_train train prints new ones
SHIPPED = {
    "teacher": ("contrastive_teacher.pt", "7f21555b364b6c73fd61f289a2bfb331bfe3d3c74e9a81d3fe11ca0c5471e177"),
    "student": ("contrastive_student.pt", "29177cf48cf00650b766df80cea38c1eb4ba75557a008b31bea734a938eadacd"),
}

# torchvision's vgg16().features up to and including conv3_1 (index 10); 256 channels at 1/4 size
TRUNK_LAYOUT = [("conv1_1", 3, 64), ("relu1_1",), ("conv1_2", 64, 64), ("relu1_2",), ("pool1",),
                ("conv2_1", 64, 128), ("relu2_1",), ("conv2_2", 128, 128), ("relu2_2",), ("pool2",),
                ("conv3_1", 128, 256)]


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ContrastiveConfig:
    """Training configuration. Defaults are the authors' (C2-Matching stage 1 and 2, as RRSR uses them)."""
    patch: int = 160                 # HR training crop (authors: CUFED inputs resized to 160x160)
    batch: int = 8
    teacher_iters: int = 5000
    student_iters: int = 75000
    lr: float = 1e-3                 # Adam, both stages
    student_lr_step: int = 72545     # student lr x0.1 there (MultiStepLR)
    lr_gamma: float = 0.1
    margin: float = 1.0
    safe_radius: int = 4             # feature px (Chebyshev)
    temperature: float = 0.15
    distill_weight: float = 15.0
    max_shift_px: float = 10.0       # homography corner jitter (authors: randint(0, 10) px, random sign)
    border_px: int = 10              # correspondences closer than this to the warped image's edge are dropped
    min_correspondences: int = 128   # a sample with fewer is skipped
    frozen_layers: int = 0           # leading trunk modules kept at their ImageNet values (authors: none)
    seed: int = 10
    scale: int = 4

    def deviations(self) -> list[str]:
        """One sentence per value that differs from the authors' configuration."""
        out = []
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(PAPER_CONFIG, f.name)
            if mine != theirs:
                out.append(f"{f.name} = {mine} (authors: {theirs})")
        return out


PAPER_CONFIG = ContrastiveConfig()
# What the shipped weights were trained with on a 2-core CPU in a few minutes: 96 px crops, batch 4,
# conv1_x frozen (its backward at full resolution is the most expensive part), and a tiny fraction
# of the authors' iterations (20 + 50 instead of 5000 + 75000; 0.4% and 0.07%). Same code, other numbers.
# A trial with lr 1e-4 gave about the same accuracy; the authors' 1e-3 is kept.
CPU_CONFIG = dataclasses.replace(PAPER_CONFIG, patch=96, batch=4, teacher_iters=20, student_iters=50, frozen_layers=4)


# ----------------------------------------------------------------------------------------------
# network
# ----------------------------------------------------------------------------------------------

class ContrastiveTrunk(nn.Module):
    """VGG16 up to conv3_1 (no ReLU after it), ImageNet normalisation inside.

    Input: float (B, 3, H, W) RGB in [0, 1]. Output: (B, 256, H/4, W/4) (floor), unnormalised
    descriptors (normalise per pixel before comparing). init="imagenet" copies the pretrained VGG16
    weights from :mod:`rrsr_lib.vgg` (VGG19 has the same layers up to here: the fallback when only
    VGG19 is there); init="empty" builds the layers only (weights are loaded afterwards).
    """

    def __init__(self, init: str = "imagenet"):
        super().__init__()
        layers = []
        for spec in TRUNK_LAYOUT:
            name = spec[0]
            if name.startswith("conv"):
                layers.append(nn.Conv2d(spec[1], spec[2], 3, padding=1))
            elif name.startswith("relu"):
                layers.append(nn.ReLU(inplace=True))
            else:
                layers.append(nn.MaxPool2d(2, 2))
        self.body = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if init == "imagenet":
            from .vgg import load_vgg
            try:
                features, _, _ = load_vgg("vgg16")
            except InputError:
                features, _, _ = load_vgg("auto")
            self.body.load_state_dict(features[: len(TRUNK_LAYOUT)].state_dict())
        elif init != "empty":
            raise InputError(f"init must be 'imagenet' or 'empty', got {init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputError(f"the matching trunk expects (B, 3, H, W) RGB in [0, 1], got {tuple(x.shape)}")
        return self.body((x - self.mean) / self.std)


class ContrastiveFeatures(nn.Module):
    """Two separate trunks: ``input_trunk`` for the (LR-upsampled) input, ``ref_trunk`` for the reference.

    forward(img_in (B,3,H,W), img_ref (B,3,H',W')) -> (feat_in (B,256,H/4,W/4), feat_ref (B,256,H'/4,W'/4)).
    """

    def __init__(self, init: str = "imagenet"):
        super().__init__()
        self.input_trunk = ContrastiveTrunk(init)
        self.ref_trunk = ContrastiveTrunk(init)

    def forward(self, img_in: torch.Tensor, img_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_trunk(img_in), self.ref_trunk(img_ref)

    # one side at a time (rrsr_lib.reference_grid encodes a reference once for many LR tiles)
    def encode_input(self, img_in: torch.Tensor) -> torch.Tensor:
        return self.input_trunk(img_in)

    def encode_reference(self, img_ref: torch.Tensor) -> torch.Tensor:
        return self.ref_trunk(img_ref)

    def freeze_leading(self, n: int) -> None:
        """Keep the first ``n`` modules of both trunks fixed (n=4: conv1_1 and conv1_2)."""
        for trunk in (self.input_trunk, self.ref_trunk):
            for i, layer in enumerate(trunk.body):
                for p in layer.parameters():
                    p.requires_grad_(i >= n)


# ----------------------------------------------------------------------------------------------
# ground truth and losses
# ----------------------------------------------------------------------------------------------

def correspondences(h_src_to_dst: torch.Tensor, feat_hw: tuple[int, int], img_hw: tuple[int, int],
                    scale: int = 4, border_px: float = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """True correspondences of image 1's feature pixels in image 2, from a homography.

    h_src_to_dst: (3, 3) float64, maps an image-1 pixel (x, y, 1) to its position in image 2.
    feat_hw: image 1's feature size (h1, w1); img_hw: image 2's size (H2, W2) in pixels.
    As the authors: feature pixel (y, x) stands for image pixel (scale*x, scale*y); pairs whose
    image-2 position is within ``border_px`` of its edge are dropped; the image-2 feature position
    is the rounded position / scale.
    Returns (ids [N] int64, flat row-major indices into image 1's feature grid; pos2 [N, 2] int64 (y, x)
    in image 2's feature grid).
    """
    h1, w1 = feat_hw
    hh, ww = img_hw
    hm = torch.as_tensor(h_src_to_dst, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(h1, dtype=torch.float64), torch.arange(w1, dtype=torch.float64), indexing="ij")
    pts = torch.stack([xs.flatten() * scale, ys.flatten() * scale, torch.ones(h1 * w1, dtype=torch.float64)])
    q = hm @ pts
    qx, qy = q[0] / q[2], q[1] / q[2]
    ok = (qx > border_px) & (qx < ww - border_px) & (qy > border_px) & (qy < hh - border_px)
    ids = torch.nonzero(ok).flatten()
    pos2 = torch.stack([torch.round(qy[ok] / scale), torch.round(qx[ok] / scale)], dim=1).long()
    pos2[:, 0].clamp_(0, hh // scale - 1)
    pos2[:, 1].clamp_(0, ww // scale - 1)
    return ids, pos2


def _chebyshev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise max(|dy|, |dx|) between point sets a [N, 2] and b [M, 2] -> [N, M]."""
    return (a[:, None, :] - b[None, :, :]).abs().amax(dim=2)


def margin_loss(f1: torch.Tensor, f2: torch.Tensor, ids: torch.Tensor, pos2: torch.Tensor, margin: float = 1.0,
                safe_radius: float = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """C2-Matching's margin loss with hardest negatives in both images, for one image pair.

    f1: [C, h1, w1] image-1 features; f2: [C, h2, w2] image-2 features; ids, pos2 from :func:`correspondences`.
    Distances are squared distances of unit vectors, d = 2 - 2 cos in [0, 4].
    Returns (loss (scalar), mean positive distance, mean hardest-negative distance, the unit descriptors
    of image 1 at ids [C, N] and of image 2 at pos2 [C, N]).
    """
    c, h1, w1 = f1.shape
    all1 = F.normalize(f1.reshape(c, -1), dim=0)                       # [C, h1*w1]
    d1 = all1[:, ids]                                                  # [C, N]
    d2 = F.normalize(f2[:, pos2[:, 0], pos2[:, 1]], dim=0)             # [C, N]
    # positive: d(p_i, p'_i) = 2 - 2 <d1_i, d2_i>
    pos = 2 - 2 * (d1 * d2).sum(dim=0)
    # hardest negative in image 2 among the corresponding positions farther than the safe radius from p'_i
    far2 = _chebyshev(pos2.float(), pos2.float()) > safe_radius
    neg2 = (2 - 2 * d1.t() @ d2 + (~far2).float() * 10.0).amin(dim=1)
    # hardest negative in image 1 among all positions farther than the safe radius from p_i
    grid1 = torch.stack(torch.meshgrid(torch.arange(h1, device=f1.device), torch.arange(w1, device=f1.device),
                                       indexing="ij"), dim=-1).reshape(-1, 2).float()
    far1 = _chebyshev(grid1[ids], grid1) > safe_radius
    neg1 = (2 - 2 * d2.t() @ all1 + (~far1).float() * 10.0).amin(dim=1)
    neg = torch.minimum(neg1, neg2)
    # L = mean relu(margin + d_pos - d_neg)
    loss = F.relu(margin + pos - neg).mean()
    return loss, pos.mean(), neg.mean(), d1, d2


def distillation_loss(student_d1: torch.Tensor, student_d2: torch.Tensor, teacher_d1: torch.Tensor,
                      teacher_d2: torch.Tensor, temperature: float = 0.15) -> torch.Tensor:
    """KL(teacher || student) of the row-wise softmax of the correlations / temperature, batch-mean over rows.

    *_d1, *_d2: unit descriptors [C, N] at the N corresponding positions (from :func:`margin_loss`).
    """
    # C = D1^T D2 / T; rows: image-1 positions, softmax over image-2 positions
    log_q = F.log_softmax(student_d1.t() @ student_d2 / temperature, dim=1)
    p = F.softmax(teacher_d1.t() @ teacher_d2 / temperature, dim=1)
    return F.kl_div(log_q, p, reduction="batchmean")


# ----------------------------------------------------------------------------------------------
# shipped weights
# ----------------------------------------------------------------------------------------------

def save_weights(model: ContrastiveFeatures, path: str | Path, meta: dict) -> str:
    """Save both trunks in float16 (plus ``meta``: plain JSON-like values) atomically; return the sha256."""
    path = Path(path)
    state = {k: v.detach().to("cpu", torch.float16) for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"state_dict": state, "meta": json.loads(json.dumps(meta))}, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_weights(path: str | Path, sha256: str | None = None, device=None) -> tuple[ContrastiveFeatures, dict]:
    """Load trunks saved by :func:`save_weights` (weights_only, sha256 checked when given). Returns (model, meta)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"contrastive weights {path} are missing; restore them with `git checkout -- {path}` "
                         "or retrain with `python -m rrsr_lib.contrastive_train train`")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise InputError(f"{path} has sha256 {digest[:16]}..., expected {sha256[:16]}...: the file was changed; "
                         f"restore it with `git checkout -- {path}`")
    blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model = ContrastiveFeatures("empty")
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    model.eval().requires_grad_(False)
    return model.to(device or "cpu"), blob.get("meta", {})


def load_contrastive(kind: str = "student", device=None) -> ContrastiveFeatures:
    """The shipped matching features: kind "student" (RRSR's, for LR-upsampled input vs reference) or "teacher"."""
    if kind not in SHIPPED:
        raise InputError(f"kind must be one of {sorted(SHIPPED)}, got {kind!r}")
    name, digest = SHIPPED[kind]
    model, _ = load_weights(WEIGHTS_DIR / name, digest, device)
    return model
