"""Tests of the reciprocal-learning explorer: its logic, its static figure and its widget wiring."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from toy_refsr import ToyRefSR, one_thread  # noqa: E402, F401  (autouse fixture: one CPU thread)

from rrsr_lib.errors import InputError  # noqa: E402
from rrsr_lib.explorers import reciprocal as explorer  # noqa: E402
from rrsr_lib.reciprocal import reciprocal_loss, warped_reference  # noqa: E402


class _NoReference(torch.nn.Module):
    """A single-image model: bilinear x4 with one trainable gain; ignores the reference."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))

    def forward(self, lr, ref):
        return self.gain * F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)


def _samples(n=3, p=32):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        hr = torch.rand(3, p, p, generator=g)
        out.append({"hr": hr, "lr": F.avg_pool2d(hr[None], 4)[0], "ref": torch.rand(3, p, p, generator=g)})
    return out


def test_view_runs_both_passes_and_reports_the_loss_terms():
    torch.manual_seed(0)
    model, sample = ToyRefSR(), _samples()[0]
    v = explorer.reciprocal_view(model, sample, seed=4)
    ref_w, lr_ref_w = warped_reference(sample["ref"][None], np.random.default_rng(4))
    with torch.no_grad():
        sr = model(sample["lr"][None], sample["ref"][None])
        hat = model(lr_ref_w, sr)
    total, parts = reciprocal_loss(sr, sample["hr"][None], hat, ref_w)
    assert v["l1"] == pytest.approx(parts["l1"].item(), rel=1e-6)
    assert v["reciprocal"] == pytest.approx(parts["reciprocal"].item(), rel=1e-6)
    assert v["loss"] == pytest.approx(total.item(), rel=1e-6)
    assert v["sr"].shape == v["ref_w_hat"].shape == v["ref_w"].shape == (32, 32, 3)
    assert v["lr_ref_w"].shape == (8, 8, 3) and v["grad"].shape == (32, 32)
    assert v["grad"].max() > 0  # the reciprocal term reaches SR
    assert all(p.grad is None for p in model.parameters())  # looking does not train


def test_gradient_map_is_zero_for_a_model_without_reference():
    v = explorer.reciprocal_view(_NoReference(), _samples()[0])
    assert v["grad"].max() == 0


def test_static_figure_and_bad_input():
    fig, view = explorer.draw_reciprocal(ToyRefSR(), _samples()[1])
    assert len(fig.axes) == 10 and view["psnr_sr"] > 0
    with pytest.raises(InputError, match="'hr'"):
        explorer.reciprocal_view(ToyRefSR(), {"lr": torch.rand(3, 8, 8), "ref": torch.rand(3, 32, 32)})
    with pytest.raises(InputError, match="min_shift_px"):
        explorer.reciprocal_view(ToyRefSR(), _samples()[0], max_shift_px=2.0)


def test_widget_redraws_for_the_chosen_sample_and_warp(monkeypatch):
    seen = []
    real = explorer.reciprocal_view
    monkeypatch.setattr(explorer, "reciprocal_view",
                        lambda m, s, seed, mx, mn, device: seen.append((seed, mx)) or real(m, s, seed, mx, mn, device))
    box = explorer.reciprocal_explorer(ToyRefSR(), _samples())
    index, seed, shift = box.children[0].children
    index.value = 2
    seed.value = 7
    shift.value = 3.0
    assert seen == [(0, 19.0), (0, 19.0), (7, 19.0), (7, 3.0)]
