import json

import numpy as np
import pytest
import torch
from torch import nn

from rrsr_lib.data import EmbeddedTestPairs
from rrsr_lib.degradation import bicubic_downsample, to_uint8, upsample_lr
from rrsr_lib.errors import InputError
from rrsr_lib.evaluate import Bicubic, LevelPairs, PairWindows, evaluate, summarize, tiled_forward, write_json
from rrsr_lib.images import save_png
from rrsr_lib.metrics import psnr


class TinySR(nn.Module):
    """A small conv net with a known receptive field (3 convs 3x3 at LR: radius 3) and a reference term."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 48, 3, padding=1))
        self.up = nn.PixelShuffle(4)

    def forward(self, lr, ref):
        return self.up(self.body(lr)) * 0.1 + nn.functional.interpolate(lr, scale_factor=4) + 0 * ref.mean()


def test_bicubic_baseline_is_pil_bicubic():
    item = EmbeddedTestPairs(pairs=["aloe"])[0]
    sr = Bicubic()(item["lr"][None], item["ref"][None])
    np.testing.assert_array_equal(to_uint8(sr[0]), upsample_lr(to_uint8(item["lr"])))


def test_tiling_equals_whole_image_when_overlap_covers_receptive_field():
    model = TinySR().eval()
    lr, ref = torch.rand(1, 3, 37, 53), torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        whole = model(lr, ref)
        tiled = tiled_forward(model, lr, ref, tile=16, overlap=4)
        too_small = tiled_forward(model, lr, ref, tile=16, overlap=1)
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=0)
    assert (too_small - whole).abs().max() > 1e-4  # the check can fail: too little context shows


def test_evaluate_rows_name_their_protocol_and_match_direct_metrics():
    data = EmbeddedTestPairs(pairs=["aloe", "books"])
    rows = evaluate(Bicubic(), data, "bicubic", "embedded", progress=False, seed=0)
    assert len(rows) == 4 and {r["metric"] for r in rows} == {"y_crop4", "y_crop0"}
    assert all(r["reference"] == "pair" and r["metric_note"] for r in rows)
    hr = to_uint8(data[0]["hr"])
    direct = psnr(upsample_lr(bicubic_downsample(hr)), hr, crop_border=4)
    row = next(r for r in rows if r["name"] == "aloe" and r["metric"] == "y_crop4")
    assert row["psnr_y"] == pytest.approx(direct, abs=1e-9)


def test_summarize_means_over_images_then_seeds():
    rows = [{"model": "m", "metric": "y_crop4", "seed": s, "psnr_y": p, "ssim_y": 0.5}
            for s, ps in ((0, (20, 22)), (1, (24, 26))) for p in ps]
    (out,) = summarize(rows, by=("model", "metric"))
    assert out["psnr_y"] == 23 and out["psnr_y_std_over_seeds"] == 2 and out["seeds"] == [0, 1] and out["n_images"] == 2


def test_bad_protocol_and_wrong_output_size():
    data = EmbeddedTestPairs(pairs=["aloe"])
    with pytest.raises(InputError, match="unknown metric protocol"):
        evaluate(Bicubic(), data, "b", "e", metrics=("psnr_rgb",), progress=False)
    with pytest.raises(InputError, match="returned"):
        evaluate(lambda lr, ref: lr, data, "identity", "e", progress=False)


def test_write_json_is_atomic(tmp_path):
    path = write_json([{"a": 1}], tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text()) == [{"a": 1}] and not list(path.parent.glob(".*.tmp"))


def test_level_pairs_are_graded_and_deterministic():
    data = LevelPairs(patch=96, seed=3, pairs=["aloe", "books", "graf"])
    assert len(data) == 15
    item = data[5 + 4]                                   # second image, level 5
    assert item["level"] == 5 and item["name"] == "books#L5" and item["lr"].shape == (3, 24, 24)
    torch.testing.assert_close(data[2]["ref"], LevelPairs(patch=96, seed=3, pairs=["aloe", "books", "graf"])[2]["ref"])
    rows = evaluate(Bicubic(), data, "bicubic", "embedded-levels", metrics=("y_crop4",), progress=False)
    assert [r["reference"] for r in rows[:5]] == [f"level-{k}" for k in range(1, 6)]


def test_pair_windows_cut_the_centre_and_a_larger_reference_window():
    base = EmbeddedTestPairs(pairs=["aloe", "rubberwhale"])
    data = PairWindows(base, window=96, margin=32)
    for i in range(2):
        full, item = base[i], data[i]
        _, h, w = full["hr"].shape
        y0, x0, size = item["window"]
        assert size == 96 and y0 % 4 == 0 and x0 % 4 == 0 and abs(y0 - (h - 96) / 2) < 4 and abs(x0 - (w - 96) / 2) < 4
        torch.testing.assert_close(item["hr"], full["hr"][:, y0:y0 + 96, x0:x0 + 96], rtol=0, atol=1 / 255 / 2)
        # the LR is made from the window, not cut from the whole image's LR
        np.testing.assert_array_equal(to_uint8(item["lr"]), bicubic_downsample(to_uint8(item["hr"])))
        ry, rx, rh, rw = item["ref_window"]
        assert (rh, rw) == (160, 160) and ry <= y0 and rx <= x0 and ry + rh >= y0 + 96 and rx + rw >= x0 + 96
        torch.testing.assert_close(item["ref"], full["ref"][:, ry:ry + rh, rx:rx + rw], rtol=0, atol=0)
    rows = evaluate(Bicubic(), data, "bicubic", "embedded", metrics=("y_crop4",), progress=False)
    assert {r["reference"] for r in rows} == {"pair-window"}
    assert evaluate(Bicubic(), PairWindows(base, 0), "b", "e", metrics=("y_crop4",), progress=False)[0]["reference"] == "pair"


def test_pair_windows_refuse_bad_sizes():
    base = EmbeddedTestPairs(pairs=["aloe"])
    with pytest.raises(InputError, match="multiple of 4"):
        PairWindows(base, window=30)
    with pytest.raises(InputError, match="smaller than the window"):
        PairWindows(base, window=400)[0]


def _write_png(path, rng):
    save_png(path, rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))


def test_evaluate_reads_every_public_layout_and_names_the_reference(tmp_path):
    """CUFED5 (one level, each level, stitched), WR-SR, Sun80, Urban100 and Manga109, in their usual layouts."""
    from rrsr_lib.data import CUFED5, WRSR, Manga109, Sun80, Urban100

    rng = np.random.default_rng(0)
    for g in ("000", "001"):
        for level in range(6):
            _write_png(tmp_path / "CUFED5" / f"{g}_{level}.png", rng)
    _write_png(tmp_path / "WR-SR" / "input" / "a.png", rng)
    _write_png(tmp_path / "WR-SR" / "ref" / "a.png", rng)
    _write_png(tmp_path / "Sun80" / "Sun_Hays_SR_groundtruth" / "s.png", rng)
    _write_png(tmp_path / "Sun80" / "Sun_Hays_SR_scenematches" / "s" / "m2.png", rng)
    _write_png(tmp_path / "Sun80" / "Sun_Hays_SR_scenematches" / "s" / "m1.png", rng)
    _write_png(tmp_path / "Urban100" / "u.png", rng)
    _write_png(tmp_path / "Manga109" / "m.png", rng)
    cases = [
        (CUFED5(tmp_path / "CUFED5", mode="level", level=3), {"level-3"}, 2),
        (CUFED5(tmp_path / "CUFED5", mode="each"), {f"level-{i}" for i in range(1, 6)}, 10),
        (CUFED5(tmp_path / "CUFED5", mode="stitched"), {"stitched"}, 2),
        (WRSR(tmp_path / "WR-SR"), {"pair"}, 1),
        (Sun80(tmp_path / "Sun80"), {"chosen"}, 1),
        (Urban100(tmp_path / "Urban100"), {"self-lr"}, 1),
        (Manga109(tmp_path / "Manga109"), {"self-lr"}, 1),
    ]
    for data, references, n in cases:
        rows = evaluate(Bicubic(), data, "bicubic", type(data).__name__, progress=False)
        assert len(rows) == 2 * n, type(data).__name__
        assert {r["reference"] for r in rows} == references, type(data).__name__
        for r in rows:   # every row equals the metric computed directly on the same item
            hr = to_uint8(next(data[i] for i in range(len(data)) if data[i]["name"] == r["name"])["hr"])
            crop = 4 if r["metric"] == "y_crop4" else 0
            assert r["psnr_y"] == pytest.approx(psnr(upsample_lr(bicubic_downsample(hr)), hr, crop_border=crop), abs=1e-9)
    assert Sun80(tmp_path / "Sun80")[0]["ref_file"] == "m1.png"   # the documented choice: first in sorted order


def test_the_authors_padding_pads_hr_and_ref_to_a_common_size_before_the_lr_is_made():
    from rrsr_lib.evaluate import authors_padded_input
    g = torch.Generator().manual_seed(0)
    hr = torch.randint(0, 256, (3, 40, 48), generator=g).float() / 255
    ref = torch.randint(0, 256, (3, 51, 36), generator=g).float() / 255   # cropped to 48 x 36 first
    lr, ref_p, size = authors_padded_input(hr, ref)
    assert size == (40, 48) and lr.shape == (1, 3, 12, 12) and ref_p.shape == (1, 3, 48, 48)
    padded = np.zeros((48, 48, 3), np.uint8)
    padded[:40, :48] = to_uint8(hr)
    assert torch.equal(lr[0], torch.from_numpy(np.array(bicubic_downsample(padded))).permute(2, 0, 1).float() / 255)
    assert torch.equal(ref_p[0, :, :48, :36], ref[:, :48, :36]) and not ref_p[0, :, :, 36:].any()
    same_lr, same_ref, same_size = authors_padded_input(hr, hr)
    assert same_size == (40, 48) and same_lr.shape == (1, 3, 10, 12)


def test_evaluate_with_the_authors_padding_calls_the_model_with_the_unpadded_size():
    from rrsr_lib.models import build_model
    model = build_model("rrsr", "small", matching="vgg").eval()
    calls = []
    original = model.forward

    def spy(lr, ref, trace=None, original_size=None):
        calls.append((tuple(lr.shape), tuple(ref.shape), original_size))
        return original(lr, ref, trace, original_size)
    model.forward = spy
    hr, ref = torch.rand(3, 32, 40), torch.rand(3, 40, 32)
    item = {"hr": hr, "lr": torch.from_numpy(np.array(bicubic_downsample(to_uint8(hr)))).permute(2, 0, 1).float() / 255,
            "ref": ref, "name": "x"}
    rows = evaluate(model, [item], "rrsr", "toy", padding="hr", progress=False)
    assert calls == [((1, 3, 10, 10), (1, 3, 40, 40), (32, 40))]
    assert all(r["padding"] == "hr (authors)" for r in rows)
    with pytest.raises(InputError, match="padding must be"):
        evaluate(model, [item], "rrsr", "toy", padding="canvas")


def test_protocol_datasets_name_the_embedded_and_both_cufed5_reference_protocols(tmp_path):
    from rrsr_lib.evaluate import protocol_datasets
    rng = np.random.default_rng(1)
    for g in ("000", "001", "002"):
        for level in range(6):
            _write_png(tmp_path / f"{g}_{level}.png", rng)
    sets = protocol_datasets(pairs=2, window=32, cufed5_root=tmp_path, cufed5_limit=2)
    assert [(name, kind) for name, kind, _, _ in sets] == [("embedded", "pair-window"), ("CUFED5", "level-1"),
                                                          ("CUFED5", "stitched")]
    assert [len(data) for *_, data in sets] == [2, 2, 2]
    assert "2 groups" in sets[1][2] and "whole images" in sets[2][2]
    assert [k for _, k, _, _ in protocol_datasets(pairs=1, window=0)] == ["pair"]
