"""Bad image files end in one clear error that names the file and the problem; good ones load exactly."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from rrsr_lib.errors import InputError
from rrsr_lib.images import check_hr_size, load_hr, load_rgb, save_png


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, size=(40, 44, 3), dtype=np.uint8)


def _png16_rgb(path, arr16):
    """A 48-bit RGB PNG written by hand (PIL cannot write one)."""
    h, w, _ = arr16.shape
    raw = b"".join(b"\x00" + arr16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_save_and_load_roundtrip_is_exact_and_atomic(tmp_path, rgb):
    out = save_png(tmp_path / "sub" / "x.png", rgb)
    assert out == tmp_path / "sub" / "x.png"
    np.testing.assert_array_equal(load_rgb(out), rgb)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]  # no temporary file left behind
    # saving again over it replaces it and gives identical bytes (no time stamp in the file)
    first = out.read_bytes()
    save_png(out, rgb)
    assert out.read_bytes() == first


def test_save_png_refuses_float(tmp_path):
    with pytest.raises(InputError, match="uint8"):
        save_png(tmp_path / "f.png", np.zeros((4, 4, 3), np.float32))
    assert not list(tmp_path.iterdir())


def test_palette_without_transparency_is_expanded(tmp_path, rgb):
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    out = load_rgb(tmp_path / "p.png")
    assert out.shape == (40, 44, 3) and out.dtype == np.uint8


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.png: file not found"):
        load_rgb(tmp_path / "nope.png")


def test_not_an_image(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image" * 10)
    with pytest.raises(InputError, match=r"junk\.png: is not an image file"):
        load_rgb(tmp_path / "junk.png")


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated_file(tmp_path, rgb, fmt):
    full = tmp_path / f"full.{fmt}"
    Image.fromarray(rgb).save(full)
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    with pytest.raises(InputError, match=rf"cut\.{fmt}: is truncated or corrupt"):
        load_rgb(cut)


def test_truncated_file_is_caught_even_if_pil_was_told_to_pad(tmp_path, rgb, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    full = tmp_path / "full.jpg"
    Image.fromarray(rgb).save(full)
    (tmp_path / "cut.jpg").write_bytes(full.read_bytes()[:300])
    with pytest.raises(InputError, match="truncated"):
        load_rgb(tmp_path / "cut.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_grayscale(tmp_path, rgb):
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    with pytest.raises(InputError, match=r"gray\.png: is a grayscale image \(PIL mode L\).*convert\('RGB'\)"):
        load_rgb(tmp_path / "gray.png")


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_channel(tmp_path, rgb, mode):
    Image.fromarray(rgb).convert(mode).save(tmp_path / "a.png")
    with pytest.raises(InputError, match=rf"a\.png: has an alpha .*mode {mode}.*dropped silently"):
        load_rgb(tmp_path / "a.png")


def test_palette_with_transparency(tmp_path, rgb):
    Image.fromarray(rgb).convert("P").save(tmp_path / "t.png", transparency=0)
    with pytest.raises(InputError, match="alpha"):
        load_rgb(tmp_path / "t.png")


def test_16bit_gray(tmp_path, rgb):
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "g16.png")
    with pytest.raises(InputError, match=r"g16\.png: is a 16-bit image"):
        load_rgb(tmp_path / "g16.png")


def test_16bit_rgb_png_is_not_truncated_silently(tmp_path, rgb):
    _png16_rgb(tmp_path / "c16.png", rgb.astype(np.uint16) * 257)
    assert Image.open(tmp_path / "c16.png").mode == "RGB"  # what PIL alone would hand over
    with pytest.raises(InputError, match=r"c16\.png: is a 16-bit PNG"):
        load_rgb(tmp_path / "c16.png")


def test_cmyk(tmp_path, rgb):
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    with pytest.raises(InputError, match=r"c\.jpg: has PIL mode CMYK"):
        load_rgb(tmp_path / "c.jpg")


def test_size_not_a_multiple_of_4():
    with pytest.raises(InputError, match=r"hr\.png: is 45x41 pixels .*not a multiple of 4; crop it to 44x40"):
        check_hr_size(np.zeros((41, 45, 3), np.uint8), name="hr.png")


def test_too_small_for_one_lr_patch():
    with pytest.raises(InputError, match=r"too small for one 3x3 LR patch.*LR image would be 25x2.*at least 12x12"):
        check_hr_size(np.zeros((8, 100, 3), np.uint8), name="thin.png")
    check_hr_size(np.zeros((12, 12, 3), np.uint8))  # the smallest usable HR image passes


def test_load_hr_crops_or_refuses(tmp_path, rgb):
    save_png(tmp_path / "odd.png", rgb[:39, :43])
    assert load_hr(tmp_path / "odd.png").shape == (36, 40, 3)
    np.testing.assert_array_equal(load_hr(tmp_path / "odd.png"), rgb[:36, :40])
    with pytest.raises(InputError, match=r"odd\.png: is 43x39 pixels.*not a multiple of 4"):
        load_hr(tmp_path / "odd.png", crop=False)
    save_png(tmp_path / "tiny.png", rgb[:10, :10])
    with pytest.raises(InputError, match=r"tiny\.png: is 10x10 pixels.*too small"):
        load_hr(tmp_path / "tiny.png")


def test_a_rotated_camera_photo_is_read_upright_and_said(tmp_path, capsys):
    upright = np.zeros((12, 20, 3), np.uint8)
    upright[:, :4] = 255                                    # a white band on the left of the upright image
    stored = np.ascontiguousarray(np.rot90(upright, 1))     # as the camera stored it: rotated by 90 degrees
    exif = Image.Exif()
    exif[0x0112] = 6                                        # "rotate 90 CW to display"
    Image.fromarray(stored).save(tmp_path / "cam.png", exif=exif)
    got = load_rgb(tmp_path / "cam.png")
    assert got.shape == (12, 20, 3)
    np.testing.assert_array_equal(got, upright)
    assert "EXIF orientation 6 applied" in capsys.readouterr().out


def test_an_image_too_large_to_decode_safely_is_named(tmp_path, rgb, monkeypatch):
    save_png(tmp_path / "huge.png", rgb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)   # 40 x 44 pixels is then a "decompression bomb"
    with pytest.raises(InputError, match=r"huge\.png: is too large to decode safely .*MAX_IMAGE_PIXELS"):
        load_rgb(tmp_path / "huge.png")


def test_two_images_with_one_name_are_refused_and_hidden_files_ignored(tmp_path, rgb):
    from rrsr_lib.data import CUFED5, WRSR, Sun80
    for g in ("000",):
        for level in range(6):
            save_png(tmp_path / "CUFED5" / f"{g}_{level}.png", rgb)
    Image.fromarray(rgb).save(tmp_path / "CUFED5" / "000_1.jpg")
    with pytest.raises(InputError, match=r"000_1\.jpg and .*000_1\.png: two images with one name"):
        CUFED5(tmp_path / "CUFED5")
    for sub in ("input", "ref"):
        save_png(tmp_path / "WR-SR" / sub / "a.png", rgb)
    Image.fromarray(rgb).save(tmp_path / "WR-SR" / "input" / "a.jpg")
    with pytest.raises(InputError, match=r"a\.jpg and .*a\.png: two images with one name"):
        WRSR(tmp_path / "WR-SR")
    save_png(tmp_path / "Sun80" / "Sun_Hays_SR_groundtruth" / "s.png", rgb)
    save_png(tmp_path / "Sun80" / "Sun_Hays_SR_scenematches" / "s" / "m1.png", rgb)
    (tmp_path / "Sun80" / "Sun_Hays_SR_scenematches" / "s" / "._a.png").write_bytes(b"macOS resource fork")
    assert Sun80(tmp_path / "Sun80")[0]["ref_file"] == "m1.png"


def test_a_decoder_warning_about_the_file_is_an_error_naming_it(tmp_path, rgb):
    # a TIFF whose description tag claims 100,000 bytes: PIL warns "Tag data larger than file" and goes on
    Image.fromarray(rgb).save(tmp_path / "ok.tif", description="x" * 200)
    raw = bytearray((tmp_path / "ok.tif").read_bytes())
    ifd = int.from_bytes(raw[4:8], "little")
    for i in range(int.from_bytes(raw[ifd:ifd + 2], "little")):
        entry = ifd + 2 + 12 * i
        if int.from_bytes(raw[entry:entry + 2], "little") == 270:   # ImageDescription
            raw[entry + 4:entry + 8] = (100_000).to_bytes(4, "little")
    (tmp_path / "bad.tif").write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="Tag data larger than file"):
        Image.open(tmp_path / "bad.tif").load()
    with pytest.raises(InputError, match=r"bad\.tif: is corrupt: decoding it gave the warning 'Tag data larger"):
        load_rgb(tmp_path / "bad.tif")


@pytest.mark.parametrize("damage", ["zeroed", "random"])
def test_a_jpeg_damaged_in_the_middle_is_an_error_not_garbled_pixels(tmp_path, damage):
    photo = np.random.default_rng(1).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "ok.jpg", quality=90)
    raw = bytearray((tmp_path / "ok.jpg").read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 40] = bytes(40) if damage == "zeroed" else bytes(
        np.random.default_rng(2).integers(0, 255, 40, dtype=np.uint8))
    (tmp_path / "bad.jpg").write_bytes(bytes(raw))
    # PIL alone decodes it without a word (the pixels differ from the intact file's)
    with Image.open(tmp_path / "bad.jpg") as garbled, Image.open(tmp_path / "ok.jpg") as intact:
        assert not np.array_equal(np.asarray(garbled.convert("RGB")), np.asarray(intact.convert("RGB")))
    with pytest.raises(InputError, match=r"bad\.jpg: is corrupt: the JPEG decoder reported 'Corrupt JPEG data"):
        load_rgb(tmp_path / "bad.jpg")


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"quality": 30, "subsampling": 0}])
def test_intact_jpegs_load_as_pil_decodes_them_and_write_nothing_to_stderr(tmp_path, rgb, options, capfd):
    Image.fromarray(rgb).save(tmp_path / "ok.jpg", **options)
    with Image.open(tmp_path / "ok.jpg") as im:
        expected = np.asarray(im.convert("RGB"))
    assert np.array_equal(load_rgb(tmp_path / "ok.jpg"), expected)
    assert capfd.readouterr().err == ""
