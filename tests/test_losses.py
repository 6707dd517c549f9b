"""Tests of rrsr_lib.losses against hand-written formulas."""
import pytest
import torch
from torch import nn

from toy_refsr import one_thread  # noqa: F401  (autouse fixture: one CPU thread)

from rrsr_lib.errors import InputError
from rrsr_lib.losses import (Discriminator, PerceptualLoss, TextureLoss, gradient_penalty, gram_matrix,
                             l1_loss, wgan_critic_loss, wgan_generator_loss)
from rrsr_lib.vgg import VGGFeatures


@pytest.fixture(scope="module")
def vgg():
    return VGGFeatures(layers=("relu1_1", "relu2_1", "relu3_1", "relu5_1"))


def test_l1_is_the_mean_absolute_difference():
    a = torch.tensor([[0.0, 1.0], [0.5, 0.25]])
    b = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert l1_loss(a, b).item() == pytest.approx((1 + 0 + 0.5 + 0.25) / 4)
    with pytest.raises(InputError, match="differ in shape"):
        l1_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_perceptual_loss_is_the_frobenius_norm_of_relu5_1_differences(vgg):
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    loss = PerceptualLoss(vgg=vgg)
    expected = torch.sqrt(((vgg(x)["relu5_1"] - vgg(y)["relu5_1"]) ** 2).sum())
    torch.testing.assert_close(loss(x, y), expected)
    assert loss(x, x).item() == 0.0
    # gradients reach the prediction, not the target
    xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    loss(xg, yg).backward()
    assert xg.grad.abs().sum() > 0 and yg.grad is None
    with pytest.raises(InputError, match="criterion"):
        PerceptualLoss(criterion="l2", vgg=vgg)


def test_discriminator_has_the_authors_layout():
    d = Discriminator()  # base 32 channels as in the authors' configuration
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128, 256, 256, 512, 512, 1024, 1]
    assert [c.stride[0] for c in convs[:10]] == [1, 2] * 5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 10
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))
    # hand count: conv weights + biases, BN scale + shift
    chans = [3, 32, 64, 128, 256, 512]
    n = sum((ci * co * 9 + co) + (co * co * 9 + co) + 4 * co for ci, co in zip(chans[:-1], chans[1:]))
    n += 512 * 1024 + 1024 + 1024 + 1
    assert sum(p.numel() for p in d.parameters()) == n
    out = d(torch.rand(3, 3, 40, 40))
    assert out.shape == (3,) and ((out > 0) & (out < 1)).all()


def test_wgan_terms_have_the_right_signs():
    real, fake = torch.tensor([0.9, 0.7]), torch.tensor([0.2, 0.4])
    assert wgan_generator_loss(fake).item() == pytest.approx(-0.3)
    assert wgan_critic_loss(real, fake).item() == pytest.approx(0.3 - 0.8)


class _LinearCritic(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


def test_gradient_penalty_of_a_linear_critic_is_known_in_closed_form():
    # D(x) = <w, x> has gradient w everywhere, so the penalty is (||w|| - 1)^2 whatever the mixture
    torch.manual_seed(1)
    w = torch.randn(1, 3, 4, 4)
    critic = _LinearCritic(w.clone())
    gp = gradient_penalty(critic, torch.rand(5, 3, 4, 4), torch.rand(5, 3, 4, 4))
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)
    gp.backward()  # create_graph: the penalty trains the critic
    torch.testing.assert_close(critic.w.grad, 2 * (w.norm() - 1) * w / w.norm())


def test_gradient_penalty_runs_on_the_authors_discriminator():
    d = Discriminator(base_channels=4)
    gp = gradient_penalty(d, torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    gp.backward()
    assert gp.item() >= 0 and all(p.grad is not None for p in d.parameters())


def test_gram_matrix_and_texture_loss_ignore_where_texture_is(vgg):
    f = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(gram_matrix(f), torch.einsum("bihw,bjhw->bij", f, f))
    torch.manual_seed(2)
    x = torch.rand(1, 3, 32, 32)
    tex = TextureLoss(vgg=vgg)
    feats = tex.target_features(x)
    assert tex(x, feats).item() == pytest.approx(0.0, abs=1e-12)
    # moving features around (a permutation of positions) leaves every Gram matrix, hence the loss, at 0 ...
    moved = {k: torch.roll(v, shifts=(3, 5), dims=(2, 3)) for k, v in feats.items()}
    assert tex(x, moved).item() == pytest.approx(0.0, abs=1e-9)
    # ... while other content is punished
    other = tex.target_features(torch.rand(1, 3, 32, 32) * 0.2)
    assert tex(x, other).item() > 1e-6
    # a confidence of 0 switches the loss off
    assert tex(x, other, confidence=torch.zeros(1, 1, 8, 8)).item() == 0.0
