"""Losses that train a RefSR network: what "close to the ground truth" means to the optimiser.

RRSR (RRSR.md, "Losses and variants") trains two variants of the same network:

* "-rec", PSNR-oriented: ``L1(SR, HR)`` plus the reciprocal term ``0.6 L1(Ref_w_hat, Ref_w)``
  (the reciprocal term lives in :mod:`rrsr_lib.reciprocal`; it is an L1 too).
* GAN variant: 10k iterations of the pixel losses first, then
  ``L1 x1 + perceptual x1e-4 + WGAN-GP generator term x1e-6 + reciprocal x0.6``, the discriminator
  trained with the WGAN-GP critic loss (gradient penalty weight 10), one D step per G step.

Each loss rewards something different:

* L1 rewards the per-pixel mean (median, in fact) of all plausible answers: high PSNR, soft texture.
* the perceptual loss compares deep VGG features (relu5_1, 1/16 resolution), so it punishes wrong
  structure and content but forgives small shifts and colour noise;
* the adversarial loss rewards outputs a critic cannot tell from real photos: sharp texture, even
  if it is not the texture of the ground truth;
* SRNTT's texture loss (an option, not in RRSR's configuration) compares Gram matrices, i.e.
  feature *statistics* regardless of where they are: it rewards texture "of the right kind".

All image inputs are float (B, 3, H, W) RGB in [0, 1].
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .vgg import VGGFeatures

__all__ = ["l1_loss", "PerceptualLoss", "Discriminator", "wgan_generator_loss", "wgan_critic_loss",
           "gradient_penalty", "gram_matrix", "TextureLoss"]


def _check_pair(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise InputError(f"{name}: prediction and target differ in shape, {tuple(pred.shape)} vs "
                         f"{tuple(target.shape)}; crop or resize one of them to the other's size")


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error, the authors' pixel loss (``L1Loss``, reduction 'mean').

    pred, target: float tensors of the same shape, e.g. (B, 3, H, W) in [0, 1].
    Returns a scalar tensor: mean |pred - target| over all elements.
    """
    _check_pair(pred, target, "l1_loss")
    # L1 = 1/N sum_i |pred_i - target_i|
    return (pred - target).abs().mean()


class PerceptualLoss(nn.Module):
    """Distance between frozen-VGG features of two images (the authors' ``PerceptualLoss``).

    The authors' configuration: VGG19 relu5_1 with layer weight 1, ImageNet input normalisation,
    criterion "fro": the Frobenius norm of the feature difference over the *whole batch*,
    ``||phi(SR) - phi(HR)||_F`` (not squared, not averaged), later multiplied by 1e-4 in training.
    The 1e-4 is not applied here; :mod:`rrsr_lib.train` applies it (``perceptual_weight``).

    layers: mapping VGG layer -> weight (default {"relu5_1": 1.0}).
    criterion: "fro" (authors) or "l1" (mean absolute feature difference).
    vgg: an existing :class:`rrsr_lib.vgg.VGGFeatures` that returns at least these layers (shares
        weights and memory); default builds one. Our offline VGG is VGG16 when torchvision's VGG19 is
        not cached (see rrsr_lib.vgg); relu5_1 exists in both.
    forward(pred, target): (B, 3, H, W) in [0, 1] each, H and W >= 16 -> scalar tensor.
    Gradients flow into ``pred`` only; the target's features are computed without a graph.
    """

    def __init__(self, layers: Mapping[str, float] | None = None, criterion: str = "fro",
                 vgg: VGGFeatures | None = None):
        super().__init__()
        self.layers = dict(layers or {"relu5_1": 1.0})
        if criterion not in ("fro", "l1"):
            raise InputError(f"PerceptualLoss criterion must be 'fro' (authors) or 'l1', got {criterion!r}")
        self.criterion = criterion
        self.vgg = vgg if vgg is not None else VGGFeatures(layers=tuple(self.layers))
        missing = [l for l in self.layers if l not in self.vgg.layers]
        if missing:
            raise InputError(f"the VGG given to PerceptualLoss does not return {missing}; build it with "
                             f"VGGFeatures(layers={tuple(self.layers)})")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target, "PerceptualLoss")
        fp = self.vgg(pred)
        with torch.no_grad():
            ft = self.vgg(target)
        loss = pred.new_zeros(())
        for layer, weight in self.layers.items():
            diff = fp[layer] - ft[layer]
            if self.criterion == "fro":
                # ||phi_l(SR) - phi_l(HR)||_F = sqrt(sum over batch, channels, pixels of diff^2)
                loss = loss + weight * torch.linalg.vector_norm(diff)
            else:
                loss = loss + weight * diff.abs().mean()
        return loss


class Discriminator(nn.Module):
    """The authors' image discriminator (C2-Matching's ``ImageDiscriminator``, used by RRSR's GAN variant).

    Five blocks, each conv3x3(stride 1) - BN - LeakyReLU(0.2) - conv3x3(stride 2) - BN - LeakyReLU(0.2),
    with base_channels x (1, 2, 4, 8, 16) channels (authors: 32 -> 512); then global average pooling,
    conv1x1 -> 1024, LeakyReLU(0.2), conv1x1 -> 1 and a sigmoid.

    The authors keep the sigmoid although the loss is WGAN-GP (an unbounded critic in the WGAN
    paper); we keep it too, for fidelity (``sigmoid=False`` gives the textbook critic).
    Weights start as N(0, 0.02) for convolutions (bias 0) and N(1, 0.02) for BN scales, the
    SRNTT-style initialisation of the authors' code.

    forward(x): (B, 3, H, W) in [0, 1], any H, W >= 1 (the pooling makes it size-free) -> (B,) scores.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 32, sigmoid: bool = True):
        super().__init__()
        if base_channels < 1:
            raise InputError(f"Discriminator base_channels must be >= 1, got {base_channels}")
        blocks, c_in = [], in_channels
        for k in range(5):
            c = base_channels * 2 ** k
            blocks += [nn.Conv2d(c_in, c, 3, 1, 1), nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True),
                       nn.Conv2d(c, c, 3, 2, 1), nn.BatchNorm2d(c), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c
        self.features = nn.Sequential(*blocks)
        head = [nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_in, 1024, 1), nn.LeakyReLU(0.2), nn.Conv2d(1024, 1, 1)]
        if sigmoid:
            head.append(nn.Sigmoid())
        self.head = nn.Sequential(*head)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise InputError(f"Discriminator expects (B,C,H,W) images, got shape {tuple(x.shape)}")
        return self.head(self.features(x)).flatten()


def wgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """WGAN generator term: ``-E[D(SR)]`` (scalar). The authors multiply it by 1e-6 (``gan_weight``).

    fake_scores: (B,) discriminator outputs on SR images (with graph to the generator).
    """
    # L_G = -E[D(G(x))]
    return -fake_scores.mean()


def wgan_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """WGAN critic loss without the penalty: ``E[D(SR)] - E[D(HR)]`` (scalar, weight 1 as in the authors' code).

    real_scores, fake_scores: (B,) discriminator outputs on HR and on detached SR images.
    """
    # L_D = E[D(fake)] - E[D(real)]
    return fake_scores.mean() - real_scores.mean()


def gradient_penalty(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP penalty ``E[(||grad_x D(x_hat)||_2 - 1)^2]`` on random mixtures of real and fake images.

    real, fake: (B, C, H, W); fake is detached here. x_hat = a real + (1 - a) fake with one
    a ~ U[0, 1) per sample (drawn from ``generator`` or torch's global generator, on real's device; or given
    as ``alpha`` (B, 1, 1, 1), as the distributed trainer does so that N processes mix like one).
    Returns a scalar with a graph into the discriminator's weights (create_graph=True), to be added
    with weight 10 (the authors' ``grad_penalty_weight``) to the critic loss.
    """
    _check_pair(real, fake, "gradient_penalty")
    b = real.shape[0]
    if alpha is None:
        alpha = torch.rand(b, 1, 1, 1, generator=generator, device=real.device if generator is None else generator.device)
    elif tuple(alpha.shape) != (b, 1, 1, 1):
        raise InputError(f"alpha must have shape ({b}, 1, 1, 1), one mixing weight per sample; got {tuple(alpha.shape)}")
    alpha = alpha.to(device=real.device, dtype=real.dtype)
    # x_hat = alpha * real + (1 - alpha) * fake
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = discriminator(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    # (||grad||_2 - 1)^2 per sample, averaged over the batch
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix of a feature map: (B, C, H, W) -> (B, C, C), G_ij = sum_p F_i(p) F_j(p) (unnormalised)."""
    if features.dim() != 4:
        raise InputError(f"gram_matrix expects (B,C,H,W) features, got shape {tuple(features.shape)}")
    f = features.flatten(2)
    # G = F F^T over the pixel axis
    return f @ f.transpose(1, 2)


class TextureLoss(nn.Module):
    """SRNTT's texture loss (an option; RRSR's released configuration does not use it).

    SRNTT (Zhang et al., CVPR 2019) compares Gram matrices of VGG relu1_1 / relu2_1 / relu3_1 of SR
    with those of the reference texture transferred to the SR grid, both optionally multiplied by the
    matching-confidence map S:

        L_tex = mean over layers l of  ||G(phi_l(SR) * S_l) - G(T_l * S_l)||_F^2 / (4 (C_l H_l W_l)^2)

    with the normalisation of SRNTT's code. Because a Gram matrix sums over positions, it rewards the
    right *kind* of texture anywhere in the image, not the texture at the right place.

    layers: VGG layers (default relu1_1, relu2_1, relu3_1).
    forward(pred, target_features, confidence=None):
        pred: (B, 3, H, W) in [0, 1];
        target_features: dict layer -> (B, C_l, H_l, W_l), e.g. VGG features of the HR image or the
            swapped reference features (same sizes as pred's VGG features);
        confidence: optional (B, 1, h, w) >= 0, resized (bilinear) to each layer's size.
        Returns a scalar tensor.
    """

    def __init__(self, layers=("relu1_1", "relu2_1", "relu3_1"), vgg: VGGFeatures | None = None):
        super().__init__()
        self.layers = tuple(layers)
        self.vgg = vgg if vgg is not None else VGGFeatures(layers=self.layers)
        missing = [l for l in self.layers if l not in self.vgg.layers]
        if missing:
            raise InputError(f"the VGG given to TextureLoss does not return {missing}; build it with "
                             f"VGGFeatures(layers={self.layers})")

    def target_features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """VGG features of an image (B, 3, H, W) in [0, 1], without graph: a ready ``target_features``."""
        with torch.no_grad():
            return {k: v for k, v in self.vgg(image).items() if k in self.layers}

    def forward(self, pred: torch.Tensor, target_features: Mapping[str, torch.Tensor],
                confidence: torch.Tensor | None = None) -> torch.Tensor:
        fp = self.vgg(pred)
        total = pred.new_zeros(())
        for layer in self.layers:
            if layer not in target_features:
                raise InputError(f"TextureLoss: target_features has no {layer!r}; give all of {self.layers}")
            a = fp[layer]
            t = target_features[layer].to(a.dtype)
            _check_pair(a, t, f"TextureLoss at {layer}")
            if confidence is not None:
                s = F.interpolate(confidence.to(a.dtype), size=a.shape[-2:], mode="bilinear", align_corners=False)
                a, t = a * s, t * s
            c, h, w = a.shape[1:]
            # ||G(a) - G(t)||_F^2 / (4 (C H W)^2), averaged over the batch
            diff = gram_matrix(a) - gram_matrix(t)
            total = total + (diff ** 2).sum(dim=(1, 2)).mean() / (4.0 * (c * h * w) ** 2)
        return total / len(self.layers)
