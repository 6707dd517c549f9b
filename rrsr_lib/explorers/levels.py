"""Reference-similarity explorer: how SR quality depends on how related the reference is.

For one embedded test image and a level 1-5 (1: large overlap, small warp ... 5: another scene), show
the LR input, the reference, the SR output of a model and the HR truth, with the PSNR. A slider picks the
level, a dropdown the image. :func:`level_view` computes one state, :func:`draw_levels` draws the static
figure of all five levels (for papermill/nbval runs and figures/), :func:`levels_explorer` wires widgets.
"""
from __future__ import annotations

from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..degradation import to_uint8
from ..errors import InputError
from ..metrics import psnr
from . import show_explorer


@torch.no_grad()
def level_view(model: Callable, pairs, image: int, level: int, device="cpu") -> dict:
    """One explorer state. pairs: :class:`rrsr_lib.evaluate.LevelPairs`; image: index of the test image;
    level: 1-5. Returns uint8 HxWx3 arrays "lr", "ref", "sr", "hr", the "psnr_y" of SR (Y, crop 4) and "name"."""
    if level not in (1, 2, 3, 4, 5):
        raise InputError(f"level must be 1-5, got {level!r}")
    if not 0 <= image < len(pairs) // 5:
        raise InputError(f"image must be in 0..{len(pairs) // 5 - 1}, got {image!r}")
    item = pairs[5 * image + level - 1]
    sr = model(item["lr"][None].to(device), item["ref"][None].to(device))
    hr, sr_u8 = to_uint8(item["hr"]), to_uint8(sr[0])
    return {"lr": to_uint8(item["lr"]), "ref": to_uint8(item["ref"]), "sr": sr_u8, "hr": hr,
            "psnr_y": psnr(sr_u8, hr, crop_border=4), "name": item["name"]}


def _draw_row(axes, view: dict, model_name: str) -> None:
    panels = [(np.kron(view["lr"], np.ones((4, 4, 1), np.uint8)), "LR input"), (view["ref"], "reference"),
              (view["sr"], f"{model_name}: {view['psnr_y']:.2f} dB"), (view["hr"], "HR truth")]
    for ax, (img, title) in zip(axes, panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")


def draw_levels(model: Callable, pairs, image: int = 0, model_name: str = "model", device="cpu"):
    """Static figure: one row per level 1-5 for test image ``image``. Returns (figure, list of 5 PSNRs)."""
    fig, axes = plt.subplots(5, 4, figsize=(9, 11.5))
    values = []
    for level in range(1, 6):
        view = level_view(model, pairs, image, level, device)
        _draw_row(axes[level - 1], view, model_name)
        axes[level - 1, 0].text(-0.08, 0.5, f"level {level}", transform=axes[level - 1, 0].transAxes,
                                rotation=90, va="center", ha="right", fontsize=10)
        values.append(view["psnr_y"])
    fig.tight_layout()
    return fig, values


def levels_explorer(models: dict[str, Callable], pairs, device="cpu"):
    """ipywidgets explorer: a level slider (1-5), an image dropdown and a model dropdown."""
    import ipywidgets as widgets

    names = [pairs.names[i] for i in range(len(pairs) // 5)]
    level = widgets.IntSlider(value=1, min=1, max=5, description="level", continuous_update=False)
    image = widgets.Dropdown(options=list(zip(names, range(len(names)))), value=0, description="image")
    model = widgets.Dropdown(options=list(models), value=list(models)[0], description="model")

    def draw():
        fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
        _draw_row(axes, level_view(models[model.value], pairs, image.value, level.value, device), model.value)
        fig.tight_layout()

    return show_explorer([level, image, model], draw)
