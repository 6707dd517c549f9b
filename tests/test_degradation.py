import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from rrsr_lib.degradation import bicubic_downsample, crop_to_multiple, down_up, to_tensor, to_uint8, upsample_lr
from rrsr_lib.errors import InputError


@pytest.fixture(scope="module")
def photo():
    return skdata.astronaut()[:203, :301]  # real photo, deliberately not a multiple of 4


def test_bicubic_downsample_equals_pil_bicubic_exactly(photo):
    lr = bicubic_downsample(photo, 4)
    # The literature's recipe written out: crop bottom/right to a multiple of 4, PIL bicubic resize.
    ref = np.asarray(Image.fromarray(np.ascontiguousarray(photo[:200, :300])).resize((75, 50), Image.BICUBIC))
    assert lr.dtype == np.uint8 and lr.shape == (50, 75, 3)
    np.testing.assert_array_equal(lr, ref)


def test_crop_to_multiple_keeps_top_left(photo):
    out = crop_to_multiple(photo, 4)
    assert out.shape == (200, 300, 3)
    np.testing.assert_array_equal(out, photo[:200, :300])


def test_upsample_and_down_up_sizes(photo):
    lr = bicubic_downsample(photo)
    assert upsample_lr(lr).shape == (200, 300, 3)
    du = down_up(photo)
    assert du.shape == (200, 300, 3)
    # down-up loses detail: it is close to, but not equal to, the original
    err = np.abs(du.astype(int) - photo[:200, :300].astype(int)).mean()
    assert 1.0 < err < 30.0


def test_tensor_round_trip_is_exact(photo):
    t = to_tensor(photo)
    assert t.shape == (1, 3, 203, 301) and t.dtype == torch.float32
    assert 0.0 <= t.min() and t.max() <= 1.0
    np.testing.assert_array_equal(to_uint8(t), photo)


def test_to_uint8_clamps_and_rounds():
    t = torch.tensor([-0.2, 0.5 / 255, 1.6 / 255, 1.3]).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    out = to_uint8(t)
    assert out[..., 0].tolist() == [[0, 0], [2, 255]]  # 0.5 rounds to even (0), 1.6 rounds to 2


@pytest.mark.parametrize("bad, message", [
    (np.zeros((8, 8), np.uint8), "HxWx3"),
    (np.zeros((8, 8, 4), np.uint8), "HxWx3"),
    (np.zeros((8, 8, 3), np.float32), "uint8"),
    (np.zeros((3, 3, 3), np.uint8), "smaller than the scale"),
])
def test_bad_arrays_are_named(bad, message):
    with pytest.raises(InputError, match=message):
        bicubic_downsample(bad)
