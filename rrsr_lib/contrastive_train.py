"""Training of the contrastive matching features (teacher, then student) and the command line.

The network, the losses and the weight files are in :mod:`rrsr_lib.contrastive`; this module
holds the training data (random crops of the embedded photos warped by random homographies), the
two training loops (CPU-sized by default: ``CPU_CONFIG``; the authors' numbers: ``PAPER_CONFIG``)
and the command line:

    python -m rrsr_lib.contrastive_train train      # retrain the shipped weights (rrsr_lib/weights/)
    python -m rrsr_lib.contrastive_train evaluate   # the accuracy table, results/contrastive_accuracy.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .contrastive import (CPU_CONFIG, PAPER_CONFIG, SHIPPED, WEIGHTS_DIR, ContrastiveConfig, ContrastiveFeatures,
                          correspondences, distillation_loss, load_contrastive, load_weights, margin_loss, save_weights)
from .contrastive_eval import evaluate, plain_vgg_features, stereo_eval_pair, warped_eval_pairs
from .data.embedded import uint8_to_tensor
from .degradation import bicubic_downsample, upsample_lr
from .errors import InputError
from .files import atomic_write_text

__all__ = ["WarpedPairSampler", "training_photos", "train_teacher", "train_student", "main"]


# ----------------------------------------------------------------------------------------------
# training data: random crops of the embedded photos, warped by random homographies
# ----------------------------------------------------------------------------------------------

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
        return {"hr": uint8_to_tensor(hr), "up": uint8_to_tensor(up), "ref": uint8_to_tensor(ref), "h12": torch.from_numpy(np.linalg.inv(h_ref_to_hr))}

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
    print(f"wrote {args.out}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rrsr_lib.contrastive_train", description=__doc__.split("\n")[0])
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
