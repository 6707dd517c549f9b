"""The "your own images" explorer of notebook 08: uploads read as the command line reads files, SR equal to it."""
import datetime
import io

import numpy as np
import pytest
from PIL import Image

from rrsr_lib.checkpoints import load_checkpoint
from rrsr_lib.data import EmbeddedTestPairs
from rrsr_lib.degradation import bicubic_downsample, to_uint8
from rrsr_lib.errors import InputError
from rrsr_lib.explorers.own_images import MAX_LR_SIDE, decode_uploads, draw_own_images, own_images_explorer, own_view
from rrsr_lib.sr import super_resolve

STAMP = datetime.datetime(2026, 12, 3, tzinfo=datetime.timezone.utc)  # an upload's last-modified time


def png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pair():
    item = EmbeddedTestPairs(pairs=["aero"])[0]
    hr, ref = to_uint8(item["hr"])[:96, :128], to_uint8(item["ref"])[:96, :160]
    return hr, ref


@pytest.fixture(scope="module")
def rrsr():
    return load_checkpoint("rrsr_rec_seed0").eval()


def test_an_lr_upload_gives_the_command_lines_sr_and_the_matches(pair, rrsr):
    hr, ref = pair
    lr = bicubic_downsample(hr)
    got_lr, got_hr, got_ref = decode_uploads(png(lr), "lr.png", png(ref), "ref.png", mode="LR")
    assert got_hr is None and np.array_equal(got_lr, lr) and np.array_equal(got_ref, ref)
    view = own_view(rrsr, got_lr, got_ref)
    assert np.array_equal(view["sr"], super_resolve(rrsr, lr, ref, "cpu"))
    assert view["sr"].shape == (96, 128, 3) and view["bicubic"].shape == (96, 128, 3)
    h, w = lr.shape[:2]
    assert view["flow"].shape == (h - 2, w - 2, 2) and view["score"].shape == (h - 2, w - 2)
    assert view["score"].max() <= 1 + 1e-5
    fig = draw_own_images(view, "rrsr_rec_seed0")
    assert len(fig.axes) == 6


def test_an_hr_upload_is_degraded_first_and_scored(pair, rrsr):
    hr, ref = pair
    lr, got_hr, _ = decode_uploads(png(hr), "photo.png", png(ref), "ref.png", mode="HR")
    assert np.array_equal(got_hr, hr) and np.array_equal(lr, bicubic_downsample(hr))
    view = own_view(rrsr, lr, ref, got_hr)
    assert set(view["psnr"]) == {"sr", "bicubic"} and 10 < view["psnr"]["bicubic"] < 60


def _bad_uploads(pair):
    hr, ref = pair
    lr = bicubic_downsample(hr)
    good = png(lr)
    big = np.zeros((MAX_LR_SIDE + 4, 16, 3), np.uint8)
    return [
        (b"not an image at all", "notes.png", "notes.png"),
        (good[: len(good) // 2], "cut.png", "cut.png"),
        (png((lr[..., 0].astype(np.uint16) * 257)), "deep.png", "16-bit"),
        (png(lr[..., 0]), "grey.png", "grey.png"),
        (png(np.dstack([lr, np.full(lr.shape[:2], 255, np.uint8)])), "alpha.png", "alpha.png"),
        (png(lr[:2, :2]), "tiny.png", "smaller than one"),
        (png(big), "big.png", f"at most {MAX_LR_SIDE} pixels"),
        (b"", "", "no input uploaded"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_every_bad_upload_is_one_message_naming_it(pair, case):
    content, name, message = _bad_uploads(pair)[case]
    with pytest.raises(InputError, match=message) as info:
        decode_uploads(content, name, png(pair[1]), "ref.png", mode="LR")
    assert "/tmp" not in str(info.value), "the message names the upload, not a temporary file"


def test_the_widgets_run_the_uploads_and_say_when_sr_is_done(pair, rrsr, capsys):
    hr, ref = pair
    box = own_images_explorer({"rrsr_rec_seed0": rrsr})
    up_input, up_ref, mode = box.children[0].children
    up_input.value = ({"name": "photo.png", "type": "image/png", "size": 1, "last_modified": STAMP,
                       "content": memoryview(png(hr))},)
    up_ref.value = ({"name": "ref.png", "type": "image/png", "size": 1, "last_modified": STAMP,
                     "content": memoryview(png(ref))},)
    mode.value = "HR"
    box.run()
    out = capsys.readouterr().out
    assert "SR done: 128x96 with rrsr_rec_seed0; PSNR_Y" in out
    up_ref.value = ()
    box.run()
    assert "cannot run: no reference uploaded" in capsys.readouterr().out
