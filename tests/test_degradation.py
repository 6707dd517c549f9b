import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from rrsr_lib.data.embedded import manifest, read_embedded
from rrsr_lib.degradation import (
    _pil_resample_axis,
    _pil_vertical_first,
    bicubic_downsample,
    crop_to_multiple,
    down_up,
    pil_bicubic_resize,
    pil_bicubic_upsample,
    to_tensor,
    to_uint8,
    upsample_lr,
)
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



# --- the torch port of PIL's bicubic resize (pil_bicubic_resize / pil_bicubic_upsample) ---

def _chw(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC -> uint8 tensor [C, H, W]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def _hwc(t: torch.Tensor) -> np.ndarray:
    """uint8 tensor [C, H, W] (any device) -> HxWxC array."""
    return t.cpu().permute(1, 2, 0).numpy()


def _pil(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """PIL's own bicubic resize to (height, width)."""
    return np.asarray(Image.fromarray(img).resize((size_hw[1], size_hw[0]), Image.BICUBIC))


def _grey_levels(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int64) - np.asarray(b, dtype=np.int64)).max())


def _by_size(images: list[np.ndarray]) -> dict:
    groups = {}
    for i, img in enumerate(images):
        groups.setdefault(img.shape, []).append(i)
    return groups


@pytest.fixture(scope="module")
def embedded_hr():
    """The 20 embedded test images (inputs and references), uint8 HxWx3, cropped to a multiple of 4."""
    rows = [r for r in manifest() if r["split"] == "test"]
    assert len(rows) == 20
    return [np.ascontiguousarray(crop_to_multiple(read_embedded(r), 4)) for r in rows]


def test_torch_downsampling_by_4_equals_pil_on_the_20_embedded_images(embedded_hr):
    groups = _by_size(embedded_hr)
    assert len(groups) < len(embedded_hr)  # some sizes agree, so some of this runs batched
    for (h, w, _), members in groups.items():
        batch = torch.stack([_chw(embedded_hr[i]) for i in members])
        out = pil_bicubic_resize(batch, (h // 4, w // 4))
        assert out.dtype == torch.uint8 and out.shape == (len(members), 3, h // 4, w // 4)
        for j, i in enumerate(members):
            assert _grey_levels(_hwc(out[j]), bicubic_downsample(embedded_hr[i], 4)) == 0


def test_torch_upsampling_by_4_of_the_20_embedded_lr_images_equals_upsample_lr(embedded_hr):
    lrs = [np.array(bicubic_downsample(img, 4)) for img in embedded_hr]  # writable copies for to_tensor
    for (h, w, _), members in _by_size(lrs).items():
        floats = torch.cat([to_tensor(lrs[i]) for i in members])  # float32 [B,3,h,w], values k/255
        up_float = pil_bicubic_upsample(floats, 4)
        up_uint8 = pil_bicubic_resize(torch.stack([_chw(lrs[i]) for i in members]), (4 * h, 4 * w))
        assert up_float.dtype == torch.float32 and up_float.shape == (len(members), 3, 4 * h, 4 * w)
        for j, i in enumerate(members):
            ref = np.array(upsample_lr(lrs[i], 4))
            assert _grey_levels(_hwc(up_uint8[j]), ref) == 0
            # the float version is exactly the float32 image our loaders make from PIL's uint8 LR_up
            assert torch.equal(up_float[j:j + 1], to_tensor(ref))


ODD_SIZES = [(1, 1), (1, 7), (13, 5), (37, 29), (101, 3)]


@pytest.mark.parametrize("hw", ODD_SIZES, ids=[f"{h}x{w}" for h, w in ODD_SIZES])
def test_odd_sizes_and_non_integer_ratios_equal_pil_both_down_and_up(hw):
    h, w = hw
    img = np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    targets = [
        (4 * h, 4 * w),                        # RRSR's x4 enlargement
        (10, 50),                              # e.g. 37x29 -> 10x50: height down, width up
        (3, 2), (1, 1),                        # shrink (both axes, or only one for the tiny images)
        (2 * h + 3, max(1, w // 3)),           # height up, width down
        (max(1, h // 3), 3 * w + 1),           # height down by a non-integer ratio, width up
        (h, 5 * w + 2), (3 * h + 1, w),        # one axis unchanged: PIL skips that pass
    ]
    for size in targets:
        got = pil_bicubic_resize(_chw(img), size)
        assert got.shape == (3, *size)
        assert _grey_levels(_hwc(got), _pil(img, size)) == 0, f"{h}x{w} -> {size[0]}x{size[1]}"


def test_the_pass_order_matters_and_follows_pillow():
    # 40x40 -> 10x30: the height loses 30 rows, the width 10 columns; Pillow >= 13 resizes the height
    # first here, older versions the width first, and the two orders round differently
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    x = _chw(img)[None].long()
    width_first = _pil_resample_axis(_pil_resample_axis(x, -1, 30), -2, 10)
    height_first = _pil_resample_axis(_pil_resample_axis(x, -2, 10), -1, 30)
    assert not torch.equal(width_first, height_first)
    assert _grey_levels(_hwc(pil_bicubic_resize(_chw(img), (10, 30))), _pil(img, (10, 30))) == 0
    # the rule per Pillow version
    assert _pil_vertical_first(40, 40, 10, 30, version=(13, 0))
    assert not _pil_vertical_first(40, 40, 20, 30, version=(13, 0))      # 20 rows lost = 2 x 10: not more
    assert not _pil_vertical_first(40, 40, 160, 160, version=(13, 0))    # enlargement: width first
    assert not _pil_vertical_first(40, 40, 10, 30, version=(12, 1))
    assert _pil_vertical_first(1010, 10, 500, 5, version=(12, 2))
    assert not _pil_vertical_first(40, 40, 10, 30, version=(12, 3))


def test_a_batch_equals_its_images_resized_one_by_one():
    batch = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 23, 17), dtype=np.uint8))
    for size in [(92, 68), (7, 40)]:
        together = pil_bicubic_resize(batch, size)
        assert together.shape == (4, 3, *size)
        for i in range(4):
            alone = pil_bicubic_resize(batch[i], size)  # [C,H,W] in, [C,h,w] out
            assert alone.shape == (3, *size)
            assert torch.equal(together[i], alone)
    up = pil_bicubic_upsample(batch.double() / 255, 4)
    for i in range(4):
        assert torch.equal(up[i:i + 1], pil_bicubic_upsample(batch[i:i + 1].double() / 255, 4))


def test_float64_input_gives_float64_output_equal_to_pil():
    img = np.random.default_rng(2).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    lr = torch.from_numpy(img).permute(2, 0, 1)[None].double().div(255).requires_grad_(True)
    up = pil_bicubic_upsample(lr, 4)
    assert up.dtype == torch.float64 and up.shape == (1, 3, 36, 44) and not up.requires_grad
    ref = _chw(upsample_lr(img, 4))[None]
    assert torch.equal(up, ref.double() / 255)


def test_float_input_is_rounded_and_clamped_to_uint8_first():
    img = np.random.default_rng(3).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    lr = to_tensor(img) + 0.4 / 255  # not exactly k/255: rounds back to img
    lr[0, 0, 0, 0], lr[0, 1, 2, 3] = -0.3, 1.7  # out of range: clamped to 0 and 255
    q = img.copy()
    q[0, 0, 0], q[2, 3, 1] = 0, 255
    np.testing.assert_array_equal(to_uint8(pil_bicubic_upsample(lr, 4)), upsample_lr(q, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_cuda_result_equals_pil(embedded_hr):
    img = embedded_hr[0]
    lr = np.array(bicubic_downsample(img, 4))
    down = pil_bicubic_resize(_chw(img).cuda(), (img.shape[0] // 4, img.shape[1] // 4))
    assert down.is_cuda and _grey_levels(_hwc(down), lr) == 0
    up = pil_bicubic_upsample(to_tensor(lr).cuda(), 4)
    assert up.is_cuda and up.dtype == torch.float32
    assert torch.equal(up.cpu(), to_tensor(np.array(upsample_lr(lr, 4))))
    odd = np.random.default_rng(4).integers(0, 256, (37, 29, 3), dtype=np.uint8)
    assert _grey_levels(_hwc(pil_bicubic_resize(_chw(odd).cuda(), (10, 50))), _pil(odd, (10, 50))) == 0


@pytest.mark.parametrize("call, message", [
    (lambda: pil_bicubic_resize(np.zeros((3, 8, 8), np.uint8), (4, 4)), "torch tensor"),
    (lambda: pil_bicubic_resize(torch.zeros(3, 8, 8), (4, 4)), "uint8"),
    (lambda: pil_bicubic_resize(torch.zeros(8, 8, dtype=torch.uint8), (4, 4)), "2 dims"),
    (lambda: pil_bicubic_resize(torch.zeros(1, 1, 3, 8, 8, dtype=torch.uint8), (4, 4)), "5 dims"),
    (lambda: pil_bicubic_resize(torch.zeros(3, 0, 8, dtype=torch.uint8), (4, 4)), "empty image"),
    (lambda: pil_bicubic_resize(torch.zeros(3, 8, 8, dtype=torch.uint8), (0, 4)), "at least 1x1"),
    (lambda: pil_bicubic_resize(torch.zeros(3, 8, 8, dtype=torch.uint8), (4, -2)), "at least 1x1"),
    (lambda: pil_bicubic_resize(torch.zeros(3, 8, 8, dtype=torch.uint8), (4,)), "pair"),
    (lambda: pil_bicubic_resize(torch.zeros(3, 8, 8, dtype=torch.uint8), (4.5, 4)), "pair"),
    (lambda: pil_bicubic_upsample(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)), "float tensor"),
    (lambda: pil_bicubic_upsample(torch.zeros(3, 8, 8)), "3 dims"),
    (lambda: pil_bicubic_upsample(torch.zeros(1, 3, 8, 8), 0), "positive integer"),
    (lambda: pil_bicubic_upsample(torch.zeros(1, 3, 8, 8), 2.0), "positive integer"),
    (lambda: pil_bicubic_upsample([[0.5]]), "torch tensor"),
])
def test_bad_tensors_and_sizes_end_in_one_clear_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_to_tensor_of_a_read_only_array_gives_no_warning():
    import warnings
    from PIL import Image
    arr = np.asarray(Image.new("RGB", (8, 6), (10, 20, 30)))
    assert not arr.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = to_tensor(arr)
    assert t.shape == (1, 3, 6, 8) and abs(t[0, 0, 0, 0].item() - 10 / 255) < 1e-7
