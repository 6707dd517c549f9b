"""Tests of the comparison models (sisr, c2, ttsr) and of reciprocal learning with all four models."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from toy_refsr import one_thread  # noqa: F401  (autouse fixture: one CPU thread)

from rrsr_lib.baselines import C2_AUTHORS_PARAMETERS, TextureTransformer
from rrsr_lib.errors import InputError
from rrsr_lib.model_counts import count_parameters
from rrsr_lib.models import build_model, offset_scale
from rrsr_lib.reciprocal import ReciprocalLearning
from rrsr_lib.vgg import VGGFeatures

MODELS = ("sisr", "c2", "ttsr", "rrsr")


@pytest.fixture(scope="module")
def small_models():
    torch.manual_seed(0)
    return {name: build_model(name, "small") for name in MODELS}


def test_c2_paper_configuration_has_the_authors_parameter_count(small_models):
    n = count_parameters(build_model("c2", "paper"))
    assert abs(n - C2_AUTHORS_PARAMETERS) <= 0.005 * C2_AUTHORS_PARAMETERS
    assert n == 8_865_547  # in fact exactly
    for name in ("sisr", "ttsr"):
        assert count_parameters(build_model(name, "paper")) > 4 * count_parameters(small_models[name])
    with pytest.raises(InputError, match="unknown"):
        build_model("ttsr", "tiny")


@pytest.mark.parametrize("name", MODELS)
def test_every_model_has_the_library_call_at_odd_sizes(small_models, name):
    model = small_models[name].eval()
    with torch.no_grad():
        sr = model(torch.rand(1, 3, 7, 9), torch.rand(1, 3, 30, 26))
    assert sr.shape == (1, 3, 28, 36) and sr.min() >= 0 and sr.max() <= 1
    with pytest.raises(InputError):
        model(torch.rand(1, 3, 8, 8), torch.rand(2, 3, 32, 32))
    model.train()


def test_sisr_ignores_the_reference(small_models):
    model = small_models["sisr"].eval()
    lr = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(lr, torch.rand(1, 3, 32, 32)), model(lr, torch.zeros(1, 3, 20, 24)))
    model.train()


def test_offset_parameters_are_found_at_each_scale_where_there_are_alignment_units(small_models):
    for name, model in small_models.items():
        scales = {offset_scale(n) for n, _ in model.named_parameters()} - {None}
        assert scales == ({"x1", "x2", "x4"} if name in ("c2", "rrsr") else set()), name


def test_ttsr_hard_attention_copies_the_matching_value_patches():
    # when the reference blurred like the LR input equals the upsampled LR, every LR position matches itself:
    # the hard attention returns the value features themselves (inside the 1-patch border), S = 1
    torch.manual_seed(3)
    ref = torch.rand(1, 3, 32, 32)
    lr = F.interpolate(ref, scale_factor=0.25, mode="bicubic", align_corners=False, antialias=True)
    vgg = VGGFeatures(("relu1_1", "relu2_1", "relu3_1"))
    textures, soft = TextureTransformer(vgg)(lr, ref)
    v = vgg(ref)
    assert soft.shape == (1, 1, 8, 8)
    torch.testing.assert_close(soft[..., 1:-1, 1:-1], torch.ones(1, 1, 6, 6), atol=1e-4, rtol=0)
    for s, layer in ((1, "relu3_1"), (2, "relu2_1"), (4, "relu1_1")):
        assert textures[s].shape == v[layer].shape
        inner = slice(2 * s, -2 * s)
        torch.testing.assert_close(textures[s][..., inner, inner], v[layer][..., inner, inner], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_reciprocal_learning_trains_every_model(small_models, name):
    torch.manual_seed(1)
    model = small_models[name].train()
    model.zero_grad()
    hr, ref = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    batch = {"hr": hr, "lr": F.avg_pool2d(hr, 4), "ref": ref}
    out = ReciprocalLearning(model).training_loss(batch, rng=np.random.default_rng(0))
    assert out["sr"].shape == out["ref_w_hat"].shape == (2, 3, 32, 32)
    sr = out["sr"]
    sr.retain_grad()
    (0.6 * out["reciprocal"]).backward(retain_graph=True)
    uses_reference = name != "sisr"
    # pass 2 takes SR as its reference: its gradient reaches pass 1 exactly when the model uses a reference
    assert (sr.grad is not None and sr.grad.abs().sum().item() > 0) == uses_reference
    out["l1"].backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert torch.isfinite(out["loss"])
