"""Tests of rrsr_lib.reciprocal: the warped reference, the two passes, the loss, and the gradient path."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toy_refsr import ToyRefSR, one_thread  # noqa: F401  (autouse fixture: one CPU thread)

from rrsr_lib.data.warp import random_homography_warp
from rrsr_lib.degradation import bicubic_downsample, to_uint8
from rrsr_lib.errors import InputError
from rrsr_lib.reciprocal import (RECIPROCAL_WEIGHT, ReciprocalLearning, add_warped_reference, reciprocal_loss,
                                 reciprocal_passes, warped_reference)


def _batch(seed=0, b=2, p=32):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(b, 3, p, p, generator=g)
    ref = torch.rand(b, 3, p, p, generator=g)
    return {"hr": hr, "lr": F.avg_pool2d(hr, 4), "ref": ref}


def test_warped_reference_uses_the_authors_5_to_19_px_corner_jitter_and_pil_lr():
    ref = (torch.randint(0, 256, (3, 40, 48)) / 255.0)
    ref_w, lr_ref_w = warped_reference(ref, np.random.default_rng(3))
    # same draw, made directly with the warp helper: corners moved 5-19 px, bicubic
    expected, _ = random_homography_warp(to_uint8(ref), max_shift_px=19, rng=np.random.default_rng(3),
                                         min_shift_px=5, mode="bicubic")
    assert np.array_equal(to_uint8(ref_w), expected)
    assert np.array_equal(to_uint8(lr_ref_w), bicubic_downsample(expected, 4))
    assert ref_w.shape == (3, 40, 48) and lr_ref_w.shape == (3, 10, 12)
    assert not torch.equal(ref_w, ref)
    # no jitter: the warp is the identity
    same, _ = warped_reference(ref, np.random.default_rng(0), shift_px=(0.0, 0.0))
    assert torch.equal(same, ref)
    with pytest.raises(InputError, match="multiple of 4"):
        warped_reference(torch.rand(3, 30, 32), np.random.default_rng(0))


def test_warped_reference_is_a_pure_function_of_the_generator_state():
    refs = torch.rand(2, 3, 32, 32)
    a = warped_reference(refs, np.random.default_rng(7))
    b = warped_reference(refs, np.random.default_rng(7))
    c = warped_reference(refs, np.random.default_rng(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    # one homography per batch item
    assert not torch.equal(warped_reference(refs[:1].expand(2, -1, -1, -1), np.random.default_rng(1))[0][0],
                           warped_reference(refs[:1].expand(2, -1, -1, -1), np.random.default_rng(1))[0][1])
    sample = add_warped_reference({"ref": refs[0], "name": "x"}, np.random.default_rng(7))
    assert torch.equal(sample["ref_w"], a[0][0]) and sample["name"] == "x"


def test_reciprocal_loss_is_l1_plus_0_6_l1():
    sr, hr = torch.full((1, 3, 4, 4), 0.5), torch.zeros(1, 3, 4, 4)
    hat, ref_w = torch.full((1, 3, 4, 4), 0.25), torch.full((1, 3, 4, 4), 0.75)
    total, parts = reciprocal_loss(sr, hr, hat, ref_w)
    assert RECIPROCAL_WEIGHT == 0.6
    assert parts["l1"].item() == pytest.approx(0.5) and parts["reciprocal"].item() == pytest.approx(0.5)
    assert total.item() == pytest.approx(0.5 + 0.6 * 0.5)


def test_reciprocal_pass_2_uses_sr_as_reference_and_its_gradient_reaches_pass_1():
    torch.manual_seed(0)
    model, batch = ToyRefSR(), _batch()
    ref_w, lr_ref_w = warped_reference(batch["ref"], np.random.default_rng(0))
    sr, hat = reciprocal_passes(model, batch["lr"], batch["ref"], lr_ref_w)
    torch.testing.assert_close(hat, model(lr_ref_w, sr))  # pass 2 = f(LR(Ref_w), SR)
    sr.retain_grad()
    F.l1_loss(hat, ref_w).backward()  # the reciprocal term alone
    assert sr.grad is not None and sr.grad.abs().sum() > 0  # SR is not detached
    g_full = model.head.weight.grad.clone()
    # the same term with SR detached gives another gradient: the path through pass 1 is really there
    model.zero_grad()
    F.l1_loss(model(lr_ref_w, sr.detach()), ref_w).backward()
    assert not torch.allclose(g_full, model.head.weight.grad)


def test_reciprocal_wrapper_is_pass_1_at_inference_and_trains_with_both_passes():
    torch.manual_seed(0)
    model = ToyRefSR()
    wrapped = ReciprocalLearning(model).eval()
    batch = _batch(1)
    torch.testing.assert_close(wrapped(batch["lr"], batch["ref"]), model(batch["lr"], batch["ref"]))
    assert [n for n, _ in wrapped.named_parameters()] == ["model.head.weight", "model.head.bias", "model.tail.weight", "model.tail.bias"]
    with pytest.raises(InputError, match="rng"):
        wrapped.training_loss(batch)
    out = wrapped.training_loss(batch, rng=np.random.default_rng(0))
    expected, _ = reciprocal_loss(out["sr"], batch["hr"], out["ref_w_hat"], out["ref_w"])
    torch.testing.assert_close(out["loss"], expected)
    # a batch that carries Ref_w from the data pipeline is used as it is
    batch.update(zip(("ref_w", "lr_ref_w"), warped_reference(batch["ref"], np.random.default_rng(5))))
    out2 = wrapped.training_loss(batch)
    assert torch.equal(out2["ref_w"], batch["ref_w"])
    with pytest.raises(InputError, match="missing"):
        wrapped.training_loss({"lr": batch["lr"]})


def test_a_non_finite_pass_1_stops_training_before_pass_2_sees_it():
    from rrsr_lib.errors import DivergenceError
    from rrsr_lib.reciprocal import reciprocal_passes

    def exploded(lr, ref):
        return torch.full((lr.shape[0], 3, 4 * lr.shape[2], 4 * lr.shape[3]), float("nan"))
    with pytest.raises(DivergenceError, match="pass 1 produced non-finite SR values"):
        reciprocal_passes(exploded, torch.rand(1, 3, 4, 4), torch.rand(1, 3, 16, 16), torch.rand(1, 3, 4, 4))
