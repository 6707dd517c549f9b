"""Contrastive matching features: ground truth, losses, sampler, a training step, shipped weights, accuracy."""
import dataclasses
import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rrsr_lib import contrastive as cm
from rrsr_lib import contrastive_eval as ce
from rrsr_lib import contrastive_train as ct
from rrsr_lib.errors import InputError
from test_matching import one_thread  # noqa: F401  (autouse fixture: one torch thread in this module)


def test_correspondences_identity_and_translation():
    ids, pos2 = cm.correspondences(np.eye(3), (10, 12), (40, 48), scale=4, border_px=10)
    ys, xs = ids // 12, ids % 12
    assert torch.equal(pos2[:, 0], ys) and torch.equal(pos2[:, 1], xs)
    # image pixel 4*y must be strictly inside (10, 40-10): y in {3, ..., 7}
    assert set(ys.tolist()) == {3, 4, 5, 6, 7}
    # a translation by (+8, +4) px (x, y): feature position moves by (+2, +1)
    t = np.array([[1, 0, 8], [0, 1, 4], [0, 0, 1.0]])
    ids, pos2 = cm.correspondences(t, (10, 12), (40, 48), scale=4, border_px=0)
    assert torch.equal(pos2[:, 0], ids // 12 + 1) and torch.equal(pos2[:, 1], ids % 12 + 2)


def test_margin_loss_hand_case():
    # 4 feature pixels in a row; image 2 equals image 1: positives have distance 0
    f = torch.tensor([[1.0, 0, 0, 0.6], [0, 1.0, 0, 0.8], [0, 0, 1.0, 0]]).view(3, 1, 4)
    ids = torch.arange(4)
    pos2 = torch.stack([torch.zeros(4, dtype=torch.long), torch.arange(4)], 1)
    loss, pos, neg, d1, d2 = cm.margin_loss(f, f.clone(), ids, pos2, margin=1.0, safe_radius=1)
    assert pos.item() == pytest.approx(0.0, abs=1e-6)
    # pixel 0's negatives: pixels 2 and 3 (pixel 1 is within the safe radius); closest: pixel 3, cos 0.6 -> 0.8
    # pixel 3's negatives: pixels 0, 1; cos 0.6 and 0.8 -> hardest distance 2 - 1.6 = 0.4
    # pixel 1's negatives: pixel 3 (cos 0.8) -> 0.4; pixel 2's: pixel 0 (cos 0) -> 2
    expected_neg = torch.tensor([0.8, 0.4, 2.0, 0.4])
    assert neg.item() == pytest.approx(expected_neg.mean().item(), abs=1e-5)
    assert loss.item() == pytest.approx(F.relu(1.0 - expected_neg).mean().item(), abs=1e-5)
    assert d1.shape == (3, 4) and torch.allclose(d1.norm(dim=0), torch.ones(4))


def test_margin_loss_has_gradients():
    f1 = torch.randn(8, 6, 6, requires_grad=True)
    f2 = torch.randn(8, 6, 6, requires_grad=True)
    ids, pos2 = cm.correspondences(np.eye(3), (6, 6), (24, 24), border_px=0)
    loss = cm.margin_loss(f1, f2, ids, pos2)[0]
    loss.backward()
    assert f1.grad.abs().sum() > 0 and f2.grad.abs().sum() > 0


def test_distillation_loss_zero_for_equal_and_matches_manual_kl():
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(16, 10), dim=0), F.normalize(torch.randn(16, 10), dim=0)
    assert cm.distillation_loss(a, b, a, b).item() == pytest.approx(0.0, abs=1e-6)
    c, d = F.normalize(torch.randn(16, 10), dim=0), F.normalize(torch.randn(16, 10), dim=0)
    p = F.softmax(c.t() @ d / 0.15, dim=1)
    q = F.softmax(a.t() @ b / 0.15, dim=1)
    manual = (p * (p.log() - q.log())).sum(dim=1).mean()
    assert cm.distillation_loss(a, b, c, d, 0.15).item() == pytest.approx(manual.item(), rel=1e-4)


def test_sampler_homography_maps_hr_pixels_onto_ref():
    rng = np.random.default_rng(0)
    photo = (rng.random((80, 90, 3)) * 255).astype(np.uint8)
    photo = np.asarray(torch.nn.functional.avg_pool2d(torch.from_numpy(photo).permute(2, 0, 1)[None].float(), 5, 1, 2)[0]
                       .permute(1, 2, 0).round().byte())  # smooth, so that bilinear reading is close
    cfg = dataclasses.replace(cm.CPU_CONFIG, patch=64, batch=2)
    b = ct.WarpedPairSampler([photo], cfg, seed=1).sample()
    assert b["hr"].shape == b["ref"].shape == b["up"].shape == (2, 3, 64, 64)
    hr, ref, h12 = b["hr"][0], b["ref"][0], b["h12"][0].numpy()
    # pixel (x, y) of hr appears at h12 (x, y) in ref
    errs = []
    for y in range(16, 48, 4):
        for x in range(16, 48, 4):
            q = h12 @ np.array([x, y, 1.0])
            qx, qy = int(round(q[0] / q[2])), int(round(q[1] / q[2]))
            errs.append((hr[:, y, x] - ref[:, qy, qx]).abs().max().item())
    assert np.median(errs) < 0.05


def test_trunk_equals_imagenet_vgg_relu3_1():
    from rrsr_lib.vgg import VGGFeatures
    trunk = cm.ContrastiveTrunk("imagenet").eval()
    vgg = VGGFeatures(layers=("relu3_1",), weights="vgg16")
    x = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        torch.testing.assert_close(torch.relu(trunk(x)), vgg(x)["relu3_1"])


def test_one_training_step_changes_only_unfrozen_layers():
    rng = np.random.default_rng(0)
    photos = [(rng.random((72, 72, 3)) * 255).astype(np.uint8)]
    cfg = dataclasses.replace(cm.CPU_CONFIG, patch=64, batch=1, teacher_iters=1, min_correspondences=16)
    before = cm.ContrastiveFeatures("imagenet").state_dict()
    teacher, hist = ct.train_teacher(cfg, photos=photos, device=torch.device("cpu"), log=lambda s: None)
    after = teacher.state_dict()
    assert np.isfinite(hist[0]["loss"])
    assert torch.equal(before["input_trunk.body.2.weight"], after["input_trunk.body.2.weight"])      # conv1_2 frozen
    assert not torch.equal(before["input_trunk.body.10.weight"], after["input_trunk.body.10.weight"])  # conv3_1 trained


def test_config_deviations_are_listed():
    assert cm.PAPER_CONFIG.deviations() == []
    devs = cm.CPU_CONFIG.deviations()
    assert any(d.startswith("student_iters") for d in devs) and any(d.startswith("patch") for d in devs)


def test_match_accuracy_identity():
    torch.manual_seed(0)
    f = torch.randn(1, 16, 9, 11)
    ys, xs = torch.meshgrid(torch.arange(9.0), torch.arange(11.0), indexing="ij")
    res = ce.match_accuracy(f, f, torch.stack([xs, ys], -1), torch.ones(9, 11, dtype=torch.bool))
    assert res["accuracy"] == 1.0 and res["n"] == 7 * 9
    # shifted truth by 3 px: nothing is correct
    res = ce.match_accuracy(f, f, torch.stack([xs + 3, ys], -1), torch.ones(9, 11, dtype=torch.bool))
    assert res["accuracy"] == 0.0


def test_shipped_weights_load_with_checksum(tmp_path):
    for kind in ("teacher", "student"):
        model = cm.load_contrastive(kind)
        fi, fr = model(torch.rand(1, 3, 32, 48), torch.rand(1, 3, 40, 40))
        assert fi.shape == (1, 256, 8, 12) and fr.shape == (1, 256, 10, 10)
        name, digest = cm.SHIPPED[kind]
        data = (cm.WEIGHTS_DIR / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        assert len(data) < 5 * 2 ** 20
    bad = tmp_path / "x.pt"
    bad.write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(InputError, match="sha256"):
        cm.load_weights(bad, digest)
    with pytest.raises(InputError, match="missing"):
        cm.load_weights(tmp_path / "none.pt")


def test_student_beats_plain_vgg_on_the_stereo_pair():
    pair = ce.stereo_eval_pair()
    assert pair["valid"].float().mean() > 0.8
    res = ce.evaluate({"vgg": ce.plain_vgg_features("relu3_1"), "student": cm.load_contrastive("student")}, [pair])
    assert res["student"]["pooled"] > res["vgg"]["pooled"]
