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
network, the losses, a small training loop (CPU-sized by default, the authors' numbers in
``PAPER_CONFIG``), shipped weights loaded by default, and the ground-truth correspondence accuracy
used in notebook 02 and ``results/contrastive_accuracy.json``.

Run ``python -m rrsr_lib.contrastive train`` to retrain the shipped weights and
``python -m rrsr_lib.contrastive evaluate`` to measure the accuracy table.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .degradation import bicubic_downsample, upsample_lr
from .errors import InputError
from .files import atomic_write_bytes, atomic_write_text
from .matching import match_patches
from .vgg import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ContrastiveConfig", "PAPER_CONFIG", "CPU_CONFIG", "ContrastiveTrunk", "ContrastiveFeatures",
           "correspondences", "margin_loss", "distillation_loss", "WarpedPairSampler", "train_teacher",
           "train_student", "save_weights", "load_weights", "load_contrastive", "WEIGHTS_DIR", "SHIPPED",
           "training_photos", "match_accuracy", "warped_eval_pairs", "stereo_eval_pair", "plain_vgg_features", "evaluate"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# sha256 of the shipped weight files (rrsr_lib/weights/); python -m rrsr_lib.contrastive train prints new ones
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
# training data: random crops of the embedded photos, warped by random homographies
# ----------------------------------------------------------------------------------------------

def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0


class WarpedPairSampler:
    """Batches of (HR crop, its LR-upsampled version, the crop warped by a random homography).

    photos: list of uint8 HxWx3 arrays at least ``cfg.patch`` on each side. Each sample: a random
    ``patch`` x ``patch`` crop, the authors' random flips and transpose, then
    ``rrsr_lib.data.random_homography_warp`` (corner jitter up to ``max_shift_px``, bilinear as
    cv2.warpPerspective's default) and the PIL-bicubic x4 down/up of the crop.
    sample() -> dict: "hr", "up", "ref" float (B, 3, P, P) in [0, 1]; "h12" float64 (B, 3, 3) mapping
    an HR pixel to its position in "ref".
    """

    def __init__(self, photos: list[np.ndarray], cfg: ContrastiveConfig, seed: int | None = None):
        small = [p.shape for p in photos if min(p.shape[:2]) < cfg.patch]
        if small or not photos:
            raise InputError(f"every photo must be at least {cfg.patch}x{cfg.patch}; got sizes {small or 'none'}")
        self.photos, self.cfg = photos, cfg
        self.rng = np.random.default_rng(cfg.seed if seed is None else seed)

    def one(self) -> dict:
        from .data.warp import random_homography_warp
        cfg, rng = self.cfg, self.rng
        img = self.photos[int(rng.integers(len(self.photos)))]
        y = int(rng.integers(img.shape[0] - cfg.patch + 1))
        x = int(rng.integers(img.shape[1] - cfg.patch + 1))
        hr = img[y:y + cfg.patch, x:x + cfg.patch]
        if rng.random() < 0.5:
            hr = hr[:, ::-1]
        if rng.random() < 0.5:
            hr = hr[::-1]
        if rng.random() < 0.5:
            hr = hr.transpose(1, 0, 2)
        hr = np.ascontiguousarray(hr)
        ref, h_ref_to_hr = random_homography_warp(hr, cfg.max_shift_px, rng, mode="bilinear")
        up = upsample_lr(bicubic_downsample(hr, cfg.scale), cfg.scale)
        return {"hr": _to_tensor(hr), "up": _to_tensor(up), "ref": _to_tensor(ref), "h12": torch.from_numpy(np.linalg.inv(h_ref_to_hr))}

    def sample(self, batch: int | None = None) -> dict:
        items = [self.one() for _ in range(batch or self.cfg.batch)]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def training_photos(exclude: tuple[str, ...] = ()) -> list[np.ndarray]:
    """The embedded training photographs (rrsr_lib/embedded/train), checksums verified."""
    from .data.embedded import manifest, read_embedded
    return [read_embedded(r) for r in manifest() if r["split"] == "train" and r["name"] not in exclude]


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------

def _batch_margin(f1, f2, h12, cfg, img_hw):
    """Margin loss averaged over the samples of a batch that have enough correspondences."""
    losses, pos, neg, descs = [], [], [], []
    for i in range(f1.shape[0]):
        ids, pos2 = correspondences(h12[i], f1.shape[2:], img_hw, cfg.scale, cfg.border_px)
        if ids.numel() < cfg.min_correspondences:
            descs.append(None)
            continue
        ids, pos2 = ids.to(f1.device), pos2.to(f1.device)
        l, p, n, d1, d2 = margin_loss(f1[i], f2[i], ids, pos2, cfg.margin, cfg.safe_radius)
        losses.append(l)
        pos.append(p.detach())
        neg.append(n.detach())
        descs.append((ids, pos2, d1, d2))
    if not losses:
        raise InputError("no sample of the batch has enough correspondences; lower max_shift_px or border_px")
    return torch.stack(losses).mean(), torch.stack(pos).mean(), torch.stack(neg).mean(), descs


def _announce(cfg: ContrastiveConfig, stage: str, log) -> None:
    dev = cfg.deviations()
    log(f"[contrastive] {stage}: " + ("the authors' configuration" if not dev else
        "DEVIATES from the authors' configuration: " + "; ".join(dev)))


def train_teacher(cfg: ContrastiveConfig = CPU_CONFIG, photos=None, device=None, log=print) -> tuple[ContrastiveFeatures, list]:
    """Stage 1: trunks on (HR, warped HR) with the margin loss. Returns (teacher, history of dicts)."""
    from .device import pick_device, seed_everything
    device = device or pick_device()
    seed_everything(cfg.seed)
    _announce(cfg, f"teacher, {cfg.teacher_iters} iterations (authors: {PAPER_CONFIG.teacher_iters})", log)
    model = ContrastiveFeatures("imagenet").to(device)
    model.freeze_leading(cfg.frozen_layers)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    sampler = WarpedPairSampler(training_photos() if photos is None else photos, cfg)
    history, t0 = [], time.time()
    model.train()
    for it in range(cfg.teacher_iters):
        b = sampler.sample()
        f1, f2 = model(b["hr"].to(device), b["ref"].to(device))
        loss, pos, neg, _ = _batch_margin(f1, f2, b["h12"], cfg, b["ref"].shape[2:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({"iter": it + 1, "loss": loss.item(), "pos": pos.item(), "neg": neg.item()})
        if (it + 1) % max(1, cfg.teacher_iters // 10) == 0 or it == 0:
            log(f"[teacher] iter {it + 1}/{cfg.teacher_iters} loss {loss.item():.4f} d_pos {pos.item():.3f} "
                f"d_neg {neg.item():.3f} ({time.time() - t0:.0f} s)")
    return model.eval(), history


def train_student(teacher: ContrastiveFeatures, cfg: ContrastiveConfig = CPU_CONFIG, photos=None, device=None,
                  log=print) -> tuple[ContrastiveFeatures, list]:
    """Stage 2: fresh ImageNet trunks on (LR-upsampled, warped HR): margin loss + 15 x distillation of the
    frozen teacher's correlation (teacher sees (HR, warped HR)). Returns (student, history)."""
    from .device import pick_device, seed_everything
    device = device or pick_device()
    seed_everything(cfg.seed + 1)
    _announce(cfg, f"student, {cfg.student_iters} iterations (authors: {PAPER_CONFIG.student_iters})", log)
    teacher = teacher.to(device).eval().requires_grad_(False)
    # the authors start the student from ImageNet VGG too (pretrain_model_student: none)
    model = ContrastiveFeatures("imagenet").to(device)
    model.freeze_leading(cfg.frozen_layers)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [cfg.student_lr_step], cfg.lr_gamma)
    sampler = WarpedPairSampler(training_photos() if photos is None else photos, cfg, seed=cfg.seed + 1)
    history, t0 = [], time.time()
    model.train()
    for it in range(cfg.student_iters):
        b = sampler.sample()
        f1, f2 = model(b["up"].to(device), b["ref"].to(device))
        with torch.no_grad():
            t1, t2 = teacher(b["hr"].to(device), b["ref"].to(device))
        m_loss, pos, neg, descs = _batch_margin(f1, f2, b["h12"], cfg, b["ref"].shape[2:])
        kd = []
        for i, d in enumerate(descs):
            if d is None:
                continue
            ids, pos2, d1, d2 = d
            td1 = F.normalize(t1[i].reshape(t1.shape[1], -1), dim=0)[:, ids]
            td2 = F.normalize(t2[i][:, pos2[:, 0], pos2[:, 1]], dim=0)
            kd.append(distillation_loss(d1, d2, td1, td2, cfg.temperature))
        kd = torch.stack(kd).mean()
        # L = L_margin + 15 * KL
        loss = m_loss + cfg.distill_weight * kd
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.append({"iter": it + 1, "loss": loss.item(), "margin": m_loss.item(), "kd": kd.item(),
                        "pos": pos.item(), "neg": neg.item()})
        if (it + 1) % max(1, cfg.student_iters // 10) == 0 or it == 0:
            log(f"[student] iter {it + 1}/{cfg.student_iters} loss {loss.item():.4f} margin {m_loss.item():.4f} "
                f"kd {kd.item():.4f} ({time.time() - t0:.0f} s)")
    return model.eval(), history


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
                         "or retrain with `python -m rrsr_lib.contrastive train`")
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


# ----------------------------------------------------------------------------------------------
# ground-truth correspondence accuracy
# ----------------------------------------------------------------------------------------------

def match_accuracy(feat_in: torch.Tensor, feat_ref: torch.Tensor, true_xy: torch.Tensor, valid: torch.Tensor,
                   tol: float = 1.0) -> dict:
    """Share of positions whose matched reference position lies within ``tol`` feature px of the truth.

    feat_in [1, C, h, w], feat_ref [1, C, hr, wr]: features of the input and the reference.
    true_xy [h, w, 2]: true position (x, y) of each input feature pixel centre in the reference's feature
    grid (continuous); valid [h, w] bool: where the truth is known and inside the reference.
    Matching is RRSR's: exact top-1 cosine of 3x3 patches (``padding="valid"``); patch (y, x) stands for its
    centre pixel (y+1, x+1). Returns {"accuracy", "n", "matched_xy" [h-2, w-2, 2], "correct" [h-2, w-2] bool,
    "considered" [h-2, w-2] bool}.
    """
    idx, _ = match_patches(feat_in, feat_ref)
    wr = feat_ref.shape[3] - 2
    mx = (idx[0] % wr + 1).float()
    my = (torch.div(idx[0], wr, rounding_mode="floor") + 1).float()
    t = true_xy[1:-1, 1:-1]
    # the true centre must be a patch centre of the reference (one pixel from its edge)
    considered = valid[1:-1, 1:-1] & (t[..., 0] >= 1) & (t[..., 0] <= feat_ref.shape[3] - 2) \
        & (t[..., 1] >= 1) & (t[..., 1] <= feat_ref.shape[2] - 2)
    correct = ((mx - t[..., 0]).abs() <= tol) & ((my - t[..., 1]).abs() <= tol) & considered
    n = int(considered.sum())
    return {"accuracy": correct.sum().item() / max(n, 1), "n": n, "matched_xy": torch.stack([mx, my], -1),
            "correct": correct, "considered": considered}


def _feature_centres(h: int, w: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates (x, y) of the centres of feature pixels: feature (y, x) covers pixels [s*y, s*y+s)."""
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return xs * scale + (scale - 1) / 2, ys * scale + (scale - 1) / 2


def warped_eval_pairs(max_shift_px: float = 10.0, seed: int = 0, scale: int = 4, names=None) -> list[dict]:
    """Held-out warped pairs: the embedded test-pair inputs (never trained on), each warped by a fixed homography.

    names: only these test pairs (default: all); each pair's homography is the same whichever are chosen.

    Each dict: "name", "hr" uint8 (H, W, 3), "up" (its LR-upsampled version), "ref" (hr warped, uint8),
    "true_xy" float32 [H/s, W/s, 2] position of each input feature pixel centre in the reference's
    feature grid, "valid" bool [H/s, W/s].
    """
    from .data import EmbeddedTestPairs
    from .data.warp import apply_homography, random_homography_warp
    rng = np.random.default_rng(seed)
    out = []
    pairs = EmbeddedTestPairs()
    for i in range(len(pairs)):
        # one homography per pair in a fixed order, drawn even for pairs that are skipped
        shifts_rng = np.random.default_rng(rng.integers(2 ** 63))
        if names is not None and pairs.pair_names[i] not in names:
            continue
        item = pairs[i]
        hr = (item["hr"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        ref, h_ref_to_hr = random_homography_warp(hr, max_shift_px, shifts_rng, mode="bicubic")
        h, w = hr.shape[0] // scale, hr.shape[1] // scale
        cx, cy = _feature_centres(h, w, scale)
        q = apply_homography(np.linalg.inv(h_ref_to_hr), np.stack([cx.ravel(), cy.ravel()], 1)).reshape(h, w, 2)
        true_xy = (q - (scale - 1) / 2) / scale
        valid = (q[..., 0] >= 0) & (q[..., 0] <= hr.shape[1] - 1) & (q[..., 1] >= 0) & (q[..., 1] <= hr.shape[0] - 1)
        up = upsample_lr(bicubic_downsample(hr, scale), scale)
        out.append({"name": item["name"], "hr": hr, "up": up, "ref": ref,
                    "true_xy": torch.from_numpy(true_xy).float(), "valid": torch.from_numpy(valid)})
    return out


def stereo_eval_pair(scale: int = 4) -> dict:
    """scikit-image's stereo_motorcycle pair as embedded (left = input, right = reference, 320x216) with the
    ground-truth disparity from scikit-image, resized the same way (x 0.431849, nearest; occlusions invalid).

    Left pixel (x, y) corresponds to right pixel (x - d, y). Same keys as :func:`warped_eval_pairs`.
    """
    from skimage import data as skdata
    from .data import EmbeddedTestPairs
    item = EmbeddedTestPairs(pairs=["motorcycle"])[0]
    hr = (item["hr"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    ref = (item["ref"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    _, _, disp = skdata.stereo_motorcycle()
    factor = hr.shape[1] / disp.shape[1]  # 320 / 741, the embedding's resize factor
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    cx, cy = _feature_centres(h, w, scale)
    # disparity at the nearest full-size pixel of each feature centre, in resized pixels
    sx = np.clip(np.round((cx + 0.5) / factor - 0.5).astype(int), 0, disp.shape[1] - 1)
    sy = np.clip(np.round((cy + 0.5) / factor - 0.5).astype(int), 0, disp.shape[0] - 1)
    d = disp[sy, sx] * factor
    qx, qy = cx - d, cy
    valid = np.isfinite(d) & (qx >= 0) & (qx <= ref.shape[1] - 1)
    true_xy = np.stack([(np.where(valid, qx, 0) - (scale - 1) / 2) / scale, (qy - (scale - 1) / 2) / scale], -1)
    up = upsample_lr(bicubic_downsample(hr, scale), scale)
    return {"name": "motorcycle (stereo, ground-truth disparity)", "hr": hr, "up": up, "ref": ref,
            "true_xy": torch.from_numpy(true_xy).float(), "valid": torch.from_numpy(valid)}


def plain_vgg_features(layer: str = "relu3_1"):
    """ImageNet VGG (rrsr_lib.vgg) at ``layer`` as a (img_in, img_ref) -> (feat_in, feat_ref) function, shared weights."""
    from .vgg import VGGFeatures
    vgg = VGGFeatures(layers=(layer,))
    return lambda a, b: (vgg(a)[layer], vgg(b)[layer])


def evaluate(extractors: dict, pairs: list[dict], inputs: str = "up") -> dict:
    """Accuracy of each feature extractor on each pair.

    extractors: name -> function (img_in (1,3,H,W), img_ref) -> (feat_in, feat_ref), or a ContrastiveFeatures.
    inputs: which input image is matched against the reference: "up" (LR-upsampled, RRSR's case) or "hr".
    Returns {name: {"per_pair": {pair: accuracy}, "mean": mean accuracy, "pooled": correct / considered}}.
    """
    out = {}
    with torch.no_grad():
        for name, fn in extractors.items():
            per, correct, total = {}, 0, 0
            for p in pairs:
                fi, fr = fn(_to_tensor(p[inputs])[None], _to_tensor(p["ref"])[None])
                h, w = p["true_xy"].shape[:2]
                r = match_accuracy(fi[..., :h, :w], fr, p["true_xy"], p["valid"])
                per[p["name"]] = r["accuracy"]
                correct += int(r["correct"].sum())
                total += r["n"]
            out[name] = {"per_pair": per, "mean": float(np.mean(list(per.values()))), "pooled": correct / max(total, 1)}
    return out


# ----------------------------------------------------------------------------------------------
# command line: retrain the shipped weights, or measure the accuracy table
# ----------------------------------------------------------------------------------------------

def _root() -> Path:
    return Path(__file__).resolve().parent.parent


def _cmd_train(args) -> None:
    overrides = {k: v for k, v in (("teacher_iters", args.teacher_iters), ("student_iters", args.student_iters),
                                   ("patch", args.patch), ("batch", args.batch), ("lr", args.lr)) if v is not None}
    cfg = dataclasses.replace(PAPER_CONFIG if args.paper else CPU_CONFIG, **overrides)
    torch.set_num_threads(args.threads)
    print("=" * 100)
    print(f"[contrastive] training configuration: {dataclasses.asdict(cfg)}")
    for d in cfg.deviations():
        print(f"[contrastive] DEVIATION: {d}")
    print("=" * 100)
    t0 = time.time()
    teacher, th = train_teacher(cfg)
    t1 = time.time()
    student, sh = train_student(teacher, cfg)
    t2 = time.time()
    meta = {"config": dataclasses.asdict(cfg), "deviations": cfg.deviations(), "teacher_seconds": round(t1 - t0, 1),
            "student_seconds": round(t2 - t1, 1), "threads": args.threads,
            "trained_on": "rrsr_lib/embedded/train (40 photos), random crops warped by random homographies"}
    out = Path(args.out)
    hashes = {"teacher": save_weights(teacher, out / SHIPPED["teacher"][0], {**meta, "history": th[-20:]}),
              "student": save_weights(student, out / SHIPPED["student"][0], {**meta, "history": sh[-20:]})}
    atomic_write_text(_root() / "results" / "contrastive_training.json",
                      json.dumps({**meta, "teacher_history": th, "student_history": sh, "sha256": hashes}, indent=1))
    print(f"[contrastive] teacher {t1 - t0:.0f} s, student {t2 - t1:.0f} s; sha256 {hashes}")


def _cmd_evaluate(args) -> None:
    torch.set_num_threads(args.threads)
    warped = warped_eval_pairs()
    stereo = [stereo_eval_pair()]
    teacher, student = load_contrastive("teacher"), load_contrastive("student")
    untrained = ContrastiveFeatures("imagenet").eval()
    extractors = {"imagenet_vgg_relu3_1": plain_vgg_features("relu3_1"), "imagenet_vgg_conv3_1": untrained,
                  "teacher": teacher, "student": student}
    report = {"metric": "share of input feature pixels whose matched reference patch centre lies within 1 feature px "
                        "(Chebyshev) of the true correspondence; exact 3x3 cosine matching (rrsr_lib.matching)",
              "input": "LR-upsampled input (PIL bicubic x4 down and up) against the HR reference, as RRSR matches",
              "weights": {k: load_weights(WEIGHTS_DIR / SHIPPED[k][0])[1].get("config") for k in ("teacher", "student")},
              "warped_pairs": {"what": "the 10 embedded test-pair inputs (not trained on), each warped by a fixed random "
                                       "homography, corners moved up to 10 px (seed 0)",
                               "results": evaluate(extractors, warped)},
              "warped_pairs_hr_input": {"what": "same pairs, HR input instead of LR-upsampled (the teacher's setting)",
                                        "results": evaluate(extractors, warped, inputs="hr")},
              "stereo_motorcycle": {"what": "scikit-image stereo_motorcycle as embedded (320x216), left = input, "
                                            "right = reference, ground-truth disparity from scikit-image",
                                    "results": evaluate(extractors, stereo)}}
    atomic_write_text(args.out, json.dumps(report, indent=1))
    for key in ("warped_pairs", "warped_pairs_hr_input", "stereo_motorcycle"):
        print(key, {k: round(v["pooled"], 4) for k, v in report[key]["results"].items()})
    print(f"wrote {out}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rrsr_lib.contrastive", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train teacher then student and write rrsr_lib/weights/contrastive_*.pt")
    t.add_argument("--paper", action="store_true", help="the authors' configuration (days on a CPU; use a GPU)")
    t.add_argument("--teacher-iters", type=int)
    t.add_argument("--student-iters", type=int)
    t.add_argument("--patch", type=int)
    t.add_argument("--batch", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--out", default=str(WEIGHTS_DIR))
    e = sub.add_parser("evaluate", help="accuracy of plain VGG, teacher and student -> results/contrastive_accuracy.json")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--out", default=str(_root() / "results" / "contrastive_accuracy.json"))
    args = ap.parse_args(argv)
    _cmd_train(args) if args.cmd == "train" else _cmd_evaluate(args)


if __name__ == "__main__":
    main()
