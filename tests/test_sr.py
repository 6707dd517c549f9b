"""python -m rrsr_lib.sr: your own images, the same pixels as the library call, one message per bad input."""
import numpy as np
import pytest
from PIL import Image

from rrsr_lib.checkpoints import load_checkpoint
from rrsr_lib.data import EmbeddedTestPairs
from rrsr_lib.degradation import bicubic_downsample, to_uint8
from rrsr_lib.images import save_png
from rrsr_lib.sr import main, super_resolve


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Two embedded pairs cut small (HR 64 x 80, reference 96 x 112): folders hr/, lr/ and ref/."""
    root = tmp_path_factory.mktemp("sr")
    data = EmbeddedTestPairs(pairs=["aero", "books"])
    for i in range(2):
        item = data[i]
        hr = to_uint8(item["hr"])[:64, :80]
        save_png(root / "hr" / f"{item['name']}.png", hr)
        save_png(root / "lr" / f"{item['name']}.png", bicubic_downsample(hr))
        save_png(root / "ref" / f"{item['name']}.png", to_uint8(item["ref"])[:96, :112])
    return root


def test_the_command_writes_the_pixels_of_the_library_call_byte_for_byte(pairs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--input", str(pairs / "lr"), "--ref", str(pairs / "ref"), "--out", str(out), "--bicubic"]) == 0
    assert "2 image(s) super-resolved x4 with rrsr_rec_seed0" in capsys.readouterr().out
    model = load_checkpoint("rrsr_rec_seed0")
    for name in ("aero", "books"):
        lr = np.asarray(Image.open(pairs / "lr" / f"{name}.png"))
        ref = np.asarray(Image.open(pairs / "ref" / f"{name}.png"))
        save_png(tmp_path / f"{name}_library.png", super_resolve(model, lr, ref, "cpu"))
        assert (out / f"{name}.png").read_bytes() == (tmp_path / f"{name}_library.png").read_bytes()
        assert np.asarray(Image.open(out / f"{name}_bicubic.png")).shape == (64, 80, 3)
    assert not list(out.glob(".*"))   # no temporary files left


def test_an_hr_image_is_degraded_first_and_the_result_scored(pairs, tmp_path, capsys):
    out = tmp_path / "aero_sr.png"
    assert main(["--hr", str(pairs / "hr" / "aero.png"), "--ref", str(pairs / "ref" / "aero.png"),
                 "--out", str(out), "--checkpoint", "sisr_plain_seed0"]) == 0
    text = capsys.readouterr().out
    assert "PSNR_Y" in text and "4-pixel border removed" in text
    assert np.asarray(Image.open(out)).shape == (64, 80, 3)


def _bad(pairs, tmp_path, case):
    """(arguments, message) for one bad input; the files are written into tmp_path."""
    ref = str(pairs / "ref" / "aero.png")
    rgb = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    if case == "missing":
        return ["--input", str(tmp_path / "nope.png"), "--ref", ref], "input .*nope.png not found"
    if case == "unreadable":
        (tmp_path / "text.png").write_text("not an image")
        return ["--input", str(tmp_path / "text.png"), "--ref", ref], "is not an image file"
    if case == "truncated":
        save_png(tmp_path / "full.png", rgb)
        (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:200])
        return ["--input", str(tmp_path / "cut.png"), "--ref", ref], "truncated or corrupt"
    if case == "16-bit":
        Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "deep.png")
        return ["--input", str(tmp_path / "deep.png"), "--ref", ref], "16-bit"
    if case == "grey":
        Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
        return ["--input", str(tmp_path / "grey.png"), "--ref", ref], "grayscale"
    if case == "RGBA":
        Image.fromarray(rgb).convert("RGBA").save(tmp_path / "alpha.png")
        return ["--input", str(tmp_path / "alpha.png"), "--ref", ref], "alpha"
    if case == "too small":
        save_png(tmp_path / "tiny.png", rgb[:2, :2])
        return ["--input", str(tmp_path / "tiny.png"), "--ref", ref], "smaller than one 3x3 patch"
    if case == "folder without its pair":
        save_png(tmp_path / "lr" / "aero.png", rgb)
        save_png(tmp_path / "lr" / "lonely.png", rgb)
        return ["--input", str(tmp_path / "lr"), "--ref", str(pairs / "ref")], r"lonely\.png has no reference"
    if case == "file and folder":
        return ["--input", str(pairs / "lr"), "--ref", ref], "give two files or two folders"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "unreadable", "truncated", "16-bit", "grey", "RGBA", "too small",
                                  "folder without its pair", "file and folder"])
def test_every_bad_input_is_one_message_and_exit_2_with_nothing_written(pairs, tmp_path, capsys, case):
    args, message = _bad(pairs, tmp_path, case)
    out = tmp_path / "out"
    target = out if case in ("folder without its pair", "file and folder") else out / "sr.png"
    assert main([*args, "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    import re
    assert re.search(message, err), err
    assert not out.exists()
