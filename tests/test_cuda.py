"""Tests of the CUDA path: the same results on a GPU as on the CPU, and training (mixed precision) runs there.

Skipped where no CUDA GPU is present (CI and this project's own machine); run on a GPU with
``.venv/bin/python -m pytest tests/test_cuda.py tests/test_matching.py -k cuda``.
"""
import contextlib

import numpy as np
import pytest
import torch
from torchvision.ops import deform_conv2d

from rrsr_lib.alignment import deform_conv_sampling, deform_path, resolve_path
from rrsr_lib.checkpoints import load_checkpoint
from rrsr_lib.data import EmbeddedTestPairs
from rrsr_lib.device import pick_device
from rrsr_lib.evaluate import evaluate
from rrsr_lib.matching import match_patches
from rrsr_lib.models import build_model
from rrsr_lib.reciprocal import warped_reference
from rrsr_lib.train import Trainer, check_params, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


@contextlib.contextmanager
def exact_float32():
    """Turn off TF32 (cuDNN convolutions use it by default), so float32 on the GPU compares with the CPU."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _deform_case(seed=0, dtype=torch.float64, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w, groups = 2, 16, 9, 11, 8
    x = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    offset = torch.randn(b, 18 * groups, h, w, generator=g, dtype=dtype) * 3
    mask = torch.rand(b, 9 * groups, h, w, generator=g, dtype=dtype)
    weight = torch.randn(c, c, 3, 3, generator=g, dtype=dtype) / (9 * c) ** 0.5
    bias = torch.randn(c, generator=g, dtype=dtype)
    return [t.to(device).requires_grad_() for t in (x, offset, mask, weight, bias)]


def test_auto_device_is_cuda_and_auto_path_is_torchvision():
    assert pick_device("auto").type == "cuda"
    assert resolve_path("auto", torch.device("cuda")) == "torchvision"


def test_sampling_path_equals_torchvision_on_cuda_with_gradients():
    args = _deform_case()
    outs, grads = {}, {}
    for name, fn in (("sampling", deform_conv_sampling),
                     ("torchvision", lambda x, o, m, w, b: deform_conv2d(x, o, w, b, padding=1, mask=m))):
        out = fn(*args)
        outs[name] = out
        grads[name] = torch.autograd.grad((out * out).sum() + out.sum(), args)
    assert (outs["sampling"] - outs["torchvision"]).abs().max().item() < 1e-10
    for label, a, b in zip(("input", "offset", "mask", "weight", "bias"), grads["sampling"], grads["torchvision"]):
        rel = ((a - b).abs().max() / b.abs().max()).item()
        assert rel < 1e-8, f"{label}: relative difference {rel:.1e}"


@pytest.mark.parametrize("model_name", ["rrsr", "sisr", "c2", "ttsr"])
def test_small_models_give_the_cpu_output_on_cuda(model_name):
    torch.manual_seed(0)
    model = build_model(model_name, "small").eval()
    g = torch.Generator().manual_seed(1)
    lr, ref = torch.rand(1, 3, 12, 10, generator=g), torch.rand(1, 3, 48, 44, generator=g)
    with torch.no_grad(), deform_path("torchvision"):
        cpu = model(lr, ref)
        with exact_float32():
            gpu = model.cuda()(lr.cuda(), ref.cuda()).cpu()
    assert gpu.shape == cpu.shape == (1, 3, 48, 40)
    assert (gpu - cpu).abs().max().item() < 1e-4


def test_shipped_checkpoint_scores_the_same_on_cuda():
    pairs = EmbeddedTestPairs(pairs=None)
    subset = [pairs[i] for i in range(2)]
    scores = {}
    with exact_float32():
        for device in ("cpu", "cuda"):
            model = load_checkpoint("rrsr_rec_seed0", device=device)
            rows = evaluate(model, subset, "rrsr", "embedded", metrics=("y_crop4",), device=device, progress=False)
            scores[device] = [r["psnr_y"] for r in rows]
    assert len(scores["cuda"]) == 2
    np.testing.assert_allclose(scores["cuda"], scores["cpu"], atol=0.01)


@pytest.mark.parametrize("model_name", ["rrsr", "sisr", "c2", "ttsr"])
def test_reciprocal_mixed_precision_step_on_cuda(model_name, tmp_path):
    torch.manual_seed(0)
    p = check_params(model=model_name, model_config="small", dataset="embedded", hr_patch=64, lr_patch=16,
                     ref_size=64, batch_size=2, device="cuda", amp=True, reciprocal=True, val_dataset="none",
                     output_dir=str(tmp_path), progress=False)
    trainer = Trainer(p, device=torch.device("cuda"))
    assert trainer.amp_dtype in (torch.bfloat16, torch.float16)
    g = torch.Generator().manual_seed(2)
    hr, ref = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    batch = {"hr": hr, "lr": torch.nn.functional.avg_pool2d(hr, 4), "ref": ref}
    batch["ref_w"], batch["lr_ref_w"] = warped_reference(ref, np.random.default_rng(0))
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    logs = trainer.step(batch)
    assert all(np.isfinite(logs[k]) for k in ("loss", "l1", "reciprocal"))
    assert logs["reciprocal"] > 0
    unchanged = [k for k, v in trainer.model.named_parameters() if v.requires_grad and torch.equal(v, before[k])]
    # every trainable tensor got an Adam update, except the layers in front of the offset/mask convolution,
    # which starts at zero (the authors' initialisation) and so passes them no gradient in the first step
    assert all(".offset_conv" in k for k in unchanged), unchanged[:3]
    assert next(trainer.model.parameters()).device.type == "cuda"


@pytest.mark.parametrize("size, budget", [((256, 83, 125), 512), ((256, 83, 125), 64), ((64, 200, 200), 512)])
def test_matching_stays_within_its_memory_budget_on_cuda(size, budget):
    # what the CUDA caching allocator hands out during the call, beyond the inputs and outputs
    c, h, w = size
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(1, c, h, w, generator=g).cuda(), torch.randn(1, c, h, w, generator=g).cuda()
    match_patches(x, r, memory_budget_mb=budget)   # warm-up: cuBLAS workspace
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    idx, score = match_patches(x, r, memory_budget_mb=budget)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base <= budget * 2 ** 20
    assert (idx.cpu() != match_patches(x.cpu(), r.cpu())[0]).float().mean().item() < 0.001   # ties aside


def test_training_run_on_cuda_with_mixed_precision_validates_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    r = train(dict(model="rrsr", model_config="small", dataset="embedded", hr_patch=64, lr_patch=16, ref_size=64,
                   embedded_length=16, batch_size=4, iterations=30, lr=5e-4, log_every=10, reciprocal=True,
                   val_dataset="embedded", val_limit=1, val_every=30, checkpoint_every=15, device="cuda",
                   progress=False, output_dir=str(tmp_path)))
    losses = [row["loss"] for row in r["train_log"]]
    # (that training brings the loss down is tested on the CPU; 30 steps of a real network are too noisy for it)
    assert len(losses) == 3 and all(0 < v < 1 for v in losses)
    assert r["summary"]["device"].startswith("cuda") and r["summary"]["amp"] != "off"
    assert r["summary"]["final_validation"]["psnr"] > 15
    torch.load(tmp_path / "checkpoint.pt", weights_only=True, map_location="cpu")
