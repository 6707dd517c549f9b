"""Your own images: upload an input and a reference, see what a shipped network makes of them (notebook 08).

The input is an LR image, or an HR photo that is degraded first (crop to a multiple of 4, PIL bicubic /4), as
``python -m rrsr_lib.sr --input`` / ``--hr`` do; the uploads are read and checked by the command's own loader
(:func:`rrsr_lib.sr.load_job`), so a bad file gets the command's one-line message. :func:`decode_uploads` turns
two uploaded files into arrays, :func:`own_view` computes one state (input, bicubic, SR, reference, the matched
correspondences of networks that match, PSNR/SSIM when an HR was given), :func:`draw_own_images` draws it, and
:func:`own_images_explorer` wires two ``FileUpload`` widgets, a mode, a network menu and a button to them.
"""
from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..errors import InputError
from .matching import draw_correspondences

__all__ = ["MAX_LR_SIDE", "MAX_REF_SIDE", "decode_uploads", "own_view", "draw_own_images", "own_images_explorer"]

# what the explorer runs on a CPU in seconds; larger images: python -m rrsr_lib.sr (tiles, --memory-mb)
MAX_LR_SIDE = 200
MAX_REF_SIDE = 800


def decode_uploads(input_bytes: bytes, input_name: str, ref_bytes: bytes, ref_name: str,
                   mode: str = "LR") -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Two uploaded files -> (lr uint8 hxwx3, hr uint8 4hx4wx3 or None, ref uint8 HrxWrx3).

    mode: "LR" (the input is the low-resolution image) or "HR" (the input is degraded first and SR is scored
    against it). Raises InputError naming the upload for anything the command line would refuse, and for
    images larger than the explorer runs interactively (:data:`MAX_LR_SIDE`, :data:`MAX_REF_SIDE`).
    """
    from ..sr import load_job

    if mode not in ("LR", "HR"):
        raise InputError(f"mode must be 'LR' or 'HR', got {mode!r}")
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for what, content, name in (("input", input_bytes, input_name), ("reference", ref_bytes, ref_name)):
            if not content:
                raise InputError(f"no {what} uploaded: choose an image file for the {what}")
            # the upload under its own file name, so that the loader's messages name it
            path = Path(folder) / f"{what}_{Path(name).name or 'upload.png'}"
            path.write_bytes(bytes(content))
            paths.append(path)
        try:
            lr, hr, ref = load_job(paths[0], paths[1], hr_mode=mode == "HR")
        except InputError as exc:
            raise InputError(str(exc).replace(folder + "/input_", "").replace(folder + "/reference_", "")) from None
    for what, img, limit in (("input (LR)", lr, MAX_LR_SIDE), ("reference", ref, MAX_REF_SIDE)):
        if max(img.shape[:2]) > limit:
            raise InputError(f"{what} is {img.shape[1]}x{img.shape[0]} pixels; the explorer takes at most {limit} "
                             f"pixels a side: crop it, or run python -m rrsr_lib.sr on it (tiles, --memory-mb)")
    return lr, hr, ref


@torch.no_grad()
def own_view(model: Callable, lr: np.ndarray, ref: np.ndarray, hr: np.ndarray | None = None, device="cpu") -> dict:
    """One explorer state. lr uint8 hxwx3, ref uint8 (any size), hr uint8 4hx4wx3 or None.

    Returns uint8 arrays "input" (lr), "bicubic" and "sr" (4hx4wx3), "ref", "hr" (or None); "flow" (h-2, w-2, 2)
    (x, y) LR-pixel displacement of each 3x3 input patch's best reference patch and "score" (h-2, w-2) its
    cosine, for networks that match (else None); "psnr"/"ssim" {"sr", "bicubic"} on Y, crop 4, with an HR.
    SR is the same array as :func:`rrsr_lib.sr.super_resolve` gives (the command line's call).
    """
    from ..degradation import to_tensor, to_uint8, upsample_lr
    from ..metrics import psnr, ssim

    lr_t, ref_t = to_tensor(lr).to(device), to_tensor(ref).to(device)
    forward = getattr(model, "forward", model)
    trace = {} if "trace" in inspect.signature(forward).parameters else None
    sr_t = model(lr_t, ref_t, trace=trace) if trace is not None else model(lr_t, ref_t)
    view = {"input": lr, "bicubic": upsample_lr(lr), "sr": to_uint8(sr_t[0]), "ref": ref, "hr": hr,
            "flow": None, "score": None}
    if trace and "matching" in trace:
        h, w = lr.shape[:2]
        # the model matches on a padded canvas: keep the input's own patches
        view["flow"] = trace["matching"]["flow"][0].cpu().numpy()[:h - 2, :w - 2]
        view["score"] = trace["matching"]["score"][0].cpu().numpy()[:h - 2, :w - 2]
    if hr is not None:
        view["psnr"] = {k: psnr(view[k], hr, 4, True) for k in ("sr", "bicubic")}
        view["ssim"] = {k: ssim(view[k], hr, 4, True) for k in ("sr", "bicubic")}
    return view


def draw_own_images(view: dict, model_name: str = "model", stride: int = 0):
    """Figure: input (enlarged, nearest), bicubic, SR, reference; below them, when the network matches, lines
    from every ``stride``-th input patch (0: about 12 a side) to its match in the reference, coloured by score."""
    rows = 2 if view["flow"] is not None else 1
    fig = plt.figure(figsize=(13, 3.6 * rows))
    top = [fig.add_subplot(rows, 4, i + 1) for i in range(4)]
    scale = view["sr"].shape[0] // view["input"].shape[0]
    score = lambda k: f", {view['psnr'][k]:.2f} dB" if view.get("psnr") else ""
    panels = [(np.kron(view["input"], np.ones((scale, scale, 1), np.uint8)), "input (LR, enlarged)"),
              (view["bicubic"], "bicubic" + score("bicubic")), (view["sr"], f"{model_name}" + score("sr")),
              (view["ref"], "reference")]
    for ax, (img, title) in zip(top, panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if rows == 2:
        a_in, a_ref = fig.add_subplot(2, 2, 3), fig.add_subplot(2, 2, 4)
        a_in.imshow(view["sr"])
        a_ref.imshow(view["ref"])
        draw_correspondences(a_in, a_ref, view["flow"], view["score"], scale, stride)
        a_in.set_title("SR: each line starts at an input patch", fontsize=9)
        a_ref.set_title("reference: where it matched (colour: cosine score)", fontsize=9)
        for ax in (a_in, a_ref):
            ax.axis("off")
    fig.tight_layout()
    return fig


def own_images_explorer(models: dict[str, Callable], device="cpu"):
    """ipywidgets explorer: "input" and "reference" uploads, an LR/HR mode, a network menu and a "run" button;
    the output shows the figure and a line "SR done: WxH", or the one-line message for a bad upload."""
    import ipywidgets as widgets
    from IPython.display import display

    up_input = widgets.FileUpload(accept="image/*", multiple=False, description="input")
    up_ref = widgets.FileUpload(accept="image/*", multiple=False, description="reference")
    mode = widgets.ToggleButtons(options=["LR", "HR"], value="LR", description="input is")
    network = widgets.Dropdown(options=list(models), value=list(models)[0], description="network")
    run = widgets.Button(description="run", button_style="primary")
    out = widgets.Output()

    def first(upload):
        files = upload.value      # ipywidgets 8: a tuple of {"name", "content", ...}
        return (files[0]["content"], files[0]["name"]) if files else (b"", "")

    def on_run(_=None):
        with out:
            out.clear_output(wait=True)
            try:
                lr, hr, ref = decode_uploads(*first(up_input), *first(up_ref), mode=mode.value)
                view = own_view(models[network.value], lr, ref, hr, device=device)
            except InputError as exc:
                print(f"cannot run: {exc}")
                return
            draw_own_images(view, network.value)
            plt.show()
            extra = f"; PSNR_Y {view['psnr']['sr']:.2f} dB (bicubic {view['psnr']['bicubic']:.2f})" if hr is not None else ""
            print(f"SR done: {view['sr'].shape[1]}x{view['sr'].shape[0]} with {network.value}{extra}")

    run.on_click(on_run)
    box = widgets.VBox([widgets.HBox([up_input, up_ref, mode]), widgets.HBox([network, run]), out])
    display(box)
    box.run = on_run          # the tests press the button without a browser
    return box
