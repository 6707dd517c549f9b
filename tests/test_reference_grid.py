"""rrsr_lib.reference_grid: a reference prepared once, LR tiles sampling it; equal to the model's call where the
canvas adds no padding, and a tile's memory no longer that of the reference's canvas."""
import copy

import pytest
import torch

from rrsr_lib.alignment import deform_conv_from_map, deform_conv_sampling
from rrsr_lib.checkpoints import load_checkpoint
from rrsr_lib.cost import LiveTensorBytes, measure_grid_cost
from rrsr_lib.data import EmbeddedTestPairs
from rrsr_lib.errors import InputError
from rrsr_lib.reference_grid import ReferenceGrid, reference_grid_forward


@pytest.fixture(scope="module")
def rrsr():
    return load_checkpoint("rrsr_rec_seed0")


@pytest.fixture(scope="module")
def pair():
    """A real embedded pair cut so that the reference is exactly 4x the LR (96 x 128 and 24 x 32): no padding."""
    item = EmbeddedTestPairs(pairs=["aero"])[0]
    return item["lr"][None, :, :24, :32].contiguous(), item["ref"][None, :, :96, :128].contiguous()


def _map_case(h, w, hm, wm, groups=8, c=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(1, c, hm, wm, generator=g, dtype=torch.float64)
    offset = torch.randn(1, 18 * groups, h, w, generator=g, dtype=torch.float64) * 4
    mask = torch.rand(1, 9 * groups, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c + 3, c, 3, 3, generator=g, dtype=torch.float64) / (9 * c) ** 0.5
    bias = torch.randn(c + 3, generator=g, dtype=torch.float64)
    return src, offset, mask, weight, bias


def test_sampling_a_map_of_the_output_size_is_the_sampling_path():
    src, offset, mask, weight, bias = _map_case(13, 17, 13, 17)
    torch.testing.assert_close(deform_conv_from_map(src, offset, mask, weight, bias),
                               deform_conv_sampling(src, offset, mask, weight, bias), rtol=1e-10, atol=1e-10)


def test_a_small_output_grid_samples_a_larger_map_as_the_top_left_of_the_full_grid():
    # an output grid of 9 x 11 reading a 30 x 40 map = the top-left of the 30 x 40 call with the same offsets there
    src, offset, mask, weight, bias = _map_case(9, 11, 30, 40)
    full_offset = torch.nn.functional.pad(offset, (0, 40 - 11, 0, 30 - 9))
    full_mask = torch.nn.functional.pad(mask, (0, 40 - 11, 0, 30 - 9))
    full = deform_conv_sampling(src, full_offset, full_mask, weight, bias)[..., :9, :11]
    torch.testing.assert_close(deform_conv_from_map(src, offset, mask, weight, bias), full, rtol=1e-10, atol=1e-10)


def test_one_tile_without_padding_is_the_models_call(rrsr, pair):
    lr, ref = pair
    with torch.no_grad():
        whole = rrsr(lr, ref)
    torch.testing.assert_close(reference_grid_forward(rrsr, lr, ref), whole, rtol=0, atol=1e-5)


def test_tiles_agree_with_the_whole_image_apart_from_the_seams(rrsr, pair):
    lr, ref = pair
    with torch.no_grad():
        whole = rrsr(lr, ref)
    tiled = reference_grid_forward(rrsr, lr, ref, tile=20, overlap=6)
    psnr = -10 * torch.log10(((tiled - whole) ** 2).mean())
    # only the seams differ (per-tile selection pools, 6 px of context): 46.6 dB; calling the model on each tile,
    # which pads it to the reference's canvas and matches it there, gives 29.1 dB
    assert tiled.shape == whole.shape and psnr > 43, float(psnr)


def test_a_tiles_unaligned_context_is_the_reference_at_its_place(rrsr, pair):
    grid = ReferenceGrid(rrsr, pair[1])
    context = grid._context((20, 4), (8, 10))
    for name, scale in (("relu3_1", 1), ("relu2_1", 2), ("relu1_1", 4)):
        full = grid.texture[name]
        assert context[name].shape[2:] == (8 * scale, 10 * scale)
        # rows 20-23 of the 24-row reference canvas at LR scale, then zeros below it
        torch.testing.assert_close(context[name][..., :4 * scale, :], full[..., 20 * scale:, 4 * scale:14 * scale])
        assert not context[name][..., 4 * scale:, :].any()


def test_a_tile_no_longer_holds_the_reference_canvas(rrsr):
    # a 16 x 16 LR tile with a 256 x 256 reference: the model's call pads the tile to the 64 x 64 canvas
    g = torch.Generator().manual_seed(0)
    lr, ref = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 256, 256, generator=g)
    with torch.no_grad(), LiveTensorBytes() as call:
        rrsr(lr, ref)
    grid = ReferenceGrid(rrsr, ref)
    with LiveTensorBytes() as tile:
        grid.restore(lr, (0, 0))
    assert tile.peak < call.peak / 4, (tile.peak, call.peak)


def test_the_grid_cost_predicts_a_tiles_counted_memory(rrsr):
    cost = measure_grid_cost(rrsr)
    assert measure_grid_cost(rrsr) is cost
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(1, 3, 240, 320, generator=g)
    with LiveTensorBytes() as prep:
        grid = ReferenceGrid(rrsr, ref)
    with LiveTensorBytes() as tile:
        grid.restore(torch.rand(1, 3, 40, 40, generator=g), (8, 8))
    counted = prep.current + tile.peak
    predicted = cost.peak_mb(160 * 160, 240 * 320) * 2 ** 20
    assert 0.7 < predicted / max(counted, prep.peak) < 1.6, (predicted, counted, prep.peak)


def test_only_rrsr_networks_and_one_reference_are_taken(rrsr, pair):
    with pytest.raises(InputError, match="runs RRSR networks"):
        ReferenceGrid(load_checkpoint("sisr_plain_seed0"), pair[1])
    with pytest.raises(InputError, match="one reference"):
        ReferenceGrid(rrsr, pair[1].repeat(2, 1, 1, 1))
    with pytest.raises(InputError, match="h, w >= 3"):
        ReferenceGrid(rrsr, pair[1]).restore(pair[0][..., :2, :8])
    other = copy.deepcopy(rrsr)
    other.matcher.features = torch.nn.Identity()
    with pytest.raises(InputError, match="cannot encode the reference alone"):
        ReferenceGrid(other, pair[1])


def test_stitching_as_uint8_gives_the_bytes_of_converting_the_whole_result(rrsr, pair):
    from rrsr_lib.degradation import to_uint8
    lr, ref = pair
    whole = reference_grid_forward(rrsr, lr, ref, tile=20, overlap=6)
    as_bytes = reference_grid_forward(rrsr, lr, ref, tile=20, overlap=6, as_uint8=True)
    assert as_bytes.dtype.name == "uint8" and as_bytes.shape == (96, 128, 3)
    assert (as_bytes == to_uint8(whole)).all()


def test_ctrl_c_in_a_command_is_one_line_and_status_130(capsys):
    from rrsr_lib.errors import run_command

    def body():
        raise KeyboardInterrupt
    assert run_command(body) == 130
    assert capsys.readouterr().err.startswith("interrupted:")
