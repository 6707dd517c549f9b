"""index -> flow -> per-tap pre-offsets -> torchvision DCN layout, on hand-computed small cases."""
import pytest
import torch
from torchvision.ops import deform_conv2d

from rrsr_lib.errors import InputError
from rrsr_lib.offsets import flow_from_index, pre_offsets, pre_offsets_pyramid, shift_field, to_deform_offsets


def test_flow_from_index_hand_case():
    # a 4x5 map has a 2x3 valid patch grid; the reference has the same size (grid width 3)
    index = torch.tensor([[[5, 0, 2],
                           [1, 4, 3]]])
    flow = flow_from_index(index)
    assert flow.shape == (1, 4, 5, 2) and flow.dtype == torch.float32
    # position (y=0, x=0) matched index 5 -> (x, y) = (2, 1): flow (2 - 0, 1 - 0)
    assert flow[0, 0, 0].tolist() == [2.0, 1.0]
    # (y=0, x=1) matched 0 -> (0, 0): flow (-1, 0)
    assert flow[0, 0, 1].tolist() == [-1.0, 0.0]
    # (y=1, x=2) matched 3 -> (0, 1): flow (-2, 0)
    assert flow[0, 1, 2].tolist() == [-2.0, 0.0]
    # (y=1, x=1) matched 4 -> (1, 1): flow 0
    assert flow[0, 1, 1].tolist() == [0.0, 0.0]
    # two zero rows at the bottom, two zero columns at the right
    assert flow[0, 2:].abs().sum() == 0 and flow[0, :, 3:].abs().sum() == 0


def test_flow_identity_index_is_zero_and_other_ref_width():
    h, w = 3, 4
    ident = torch.arange(h * w).view(1, h, w)
    assert flow_from_index(ident).abs().sum() == 0
    # a wider reference (grid width 6): index 6*y + x + 1 means one patch to the right
    wide = (torch.arange(h).view(h, 1) * 6 + torch.arange(w).view(1, w) + 1).view(1, h, w)
    flow = flow_from_index(wide, ref_grid_width=6, pad=0)
    assert flow.shape == (1, h, w, 2)
    assert torch.equal(flow[..., 0], torch.ones(1, h, w)) and flow[..., 1].abs().sum() == 0


def test_shift_field_zero_fill():
    f = torch.arange(1, 7, dtype=torch.float32).view(1, 2, 3, 1)
    out = shift_field(f, 1, 2)
    assert out[0, :, :, 0].tolist() == [[0, 0, 0], [0, 0, 1]]
    with pytest.raises(InputError):
        shift_field(f, -1, 0)


def test_pre_offsets_scale1_taps():
    flow = torch.zeros(1, 4, 4, 2)
    flow[0, 0, 0] = torch.tensor([3.0, -1.0])  # (x, y) at the top-left corner
    pre = pre_offsets(flow, 1)
    assert pre.shape == (1, 9, 4, 4, 2)
    for i in range(3):
        for j in range(3):
            tap = pre[0, 3 * i + j]
            # tap (i, j) sees the top-left flow at (row i, column j) and nothing else
            assert tap[i, j].tolist() == [3.0, -1.0]
            assert tap.abs().sum() == 4.0


def test_pre_offsets_scale2_nearest_times_two_then_shift():
    flow = torch.zeros(1, 3, 3, 2)
    flow[0, 1, 0] = torch.tensor([1.0, 2.0])
    pre = pre_offsets(flow, 2)
    assert pre.shape == (1, 9, 6, 6, 2)
    # tap (0, 0): the upsampled flow itself: value (2, 4) on rows 2-3, columns 0-1
    t00 = pre[0, 0]
    assert t00[2:4, 0:2].reshape(-1, 2).tolist() == [[2.0, 4.0]] * 4
    assert t00.abs().sum() == 4 * 6
    # tap (1, 2): shifted down by 2 and right by 4: rows 4-5, columns 4-5
    t12 = pre[0, 5]
    assert t12[4:6, 4:6].reshape(-1, 2).tolist() == [[2.0, 4.0]] * 4
    assert t12.abs().sum() == 4 * 6
    # tap (2, 2) at x2: shifted down 4 and right 4, rows 2-3 move to rows 6-7, outside the 6x6 map
    assert pre[0, 8].abs().sum() == 0


def test_pre_offsets_pyramid_shapes_and_scale4_values():
    flow = torch.randn(2, 5, 7, 2)
    pyr = pre_offsets_pyramid(flow)
    assert {s: tuple(v.shape) for s, v in pyr.items()} == {1: (2, 9, 5, 7, 2), 2: (2, 9, 10, 14, 2), 4: (2, 9, 20, 28, 2)}
    # tap (0, 0) at x4 equals 4 * nearest upsampling of the flow
    up = flow.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2) * 4
    torch.testing.assert_close(pyr[4][:, 0], up)
    # tap (2, 1) at x4: shifted down 8, right 4
    torch.testing.assert_close(pyr[4][:, 7, 8:, 4:], up[:, :-8, :-4])
    assert pyr[4][:, 7, :8].abs().sum() == 0 and pyr[4][:, 7, :, :4].abs().sum() == 0


def test_to_deform_offsets_layout():
    pre = torch.zeros(1, 9, 2, 2, 2)
    pre[0, 4, ..., 0] = 7.0   # tap 4, x
    pre[0, 4, ..., 1] = -3.0  # tap 4, y
    off = to_deform_offsets(pre, groups=8)
    assert off.shape == (1, 144, 2, 2)
    for g in range(8):
        assert torch.all(off[0, 2 * (9 * g + 4)] == -3.0)      # dy first
        assert torch.all(off[0, 2 * (9 * g + 4) + 1] == 7.0)   # then dx
    assert off.abs().sum() == 8 * 4 * 10


def test_deform_conv_samples_the_matched_pixels():
    """With the pre-offsets, torchvision's DCN tap (i, j) reads ref at p + (i-1, j-1) + flow(p - (i, j))."""
    h, w = 8, 10
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    ref = torch.stack((xs, ys))[None]  # channel 0 = x coordinate, channel 1 = y coordinate
    flow = torch.zeros(1, h, w, 2, dtype=torch.float64)
    flow[0, 1, 2] = torch.tensor([2.0, 1.0])  # patch with top-left (y=1, x=2) moves by (+2, +1)
    off = to_deform_offsets(pre_offsets(flow, 1), groups=1)
    for i in range(3):
        for j in range(3):
            weight = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
            weight[0, 0, i, j] = weight[1, 1, i, j] = 1.0  # read only tap (i, j), channel-wise
            out = deform_conv2d(ref, off, weight, padding=1)
            py, px = 1 + i, 2 + j  # the output pixel that tap (i, j) of patch (1, 2) covers
            assert out[0, 0, py, px].item() == px + (j - 1) + 2.0
            assert out[0, 1, py, px].item() == py + (i - 1) + 1.0


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError):
        flow_from_index(torch.zeros(1, 2, 2))  # float index
    with pytest.raises(InputError):
        pre_offsets(torch.zeros(1, 2, 2, 3))
    with pytest.raises(InputError):
        pre_offsets(torch.zeros(1, 2, 2, 2), scale=0)
    with pytest.raises(InputError):
        to_deform_offsets(torch.zeros(1, 8, 2, 2, 2))
