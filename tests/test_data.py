"""Embedded real data (manifest, checksums), CUFED-like pairs, homography warps and the public-set loaders."""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rrsr_lib
from rrsr_lib.data import (CUFED5, LEVELS, WRSR, CUFEDTrain, EmbeddedTestPairs, EmbeddedTrainPairs, Manga109, Sun80,
                           Urban100, apply_homography, cufed_like, homography_from_points, make_pair, manifest,
                           random_homography_warp, read_embedded, stitch_references, verify_embedded, warp_homography)
from rrsr_lib.degradation import bicubic_downsample
from rrsr_lib.errors import InputError
from rrsr_lib.images import save_png

PKG = Path(rrsr_lib.__file__).resolve().parent


def _u8(t: torch.Tensor) -> np.ndarray:
    return t.mul(255).round().byte().permute(1, 2, 0).numpy()


# ---------------------------------------------------------------- manifest and checksums

def test_manifest_counts_sources_licences_and_size():
    rows = manifest()
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    assert {r["split"] for r in rows} == {"train", "test"}
    assert len(train) >= 30
    assert len({r["package"] for r in train}) >= 3
    pairs = {}
    for r in test:
        pairs.setdefault(r["pair"], set()).add(r["role"])
    assert len(pairs) >= 10 and all(roles == {"input", "ref"} for roles in pairs.values())
    for r in rows:
        for key in ("file", "source", "license", "sha256", "original", "processing", "version", "registry"):
            assert isinstance(r[key], str) and r[key].strip(), (r["file"], key)
        assert r["file"].startswith("embedded/") and r["file"].endswith(".png")
        assert r["registry"] in ("debian", "pypi")
    total = sum((PKG / r["file"]).stat().st_size for r in rows)
    assert total == sum(r["bytes"] for r in rows)
    assert total <= 40e6
    # no test image comes from a file that a training photo comes from
    train_orig = {(r["package"], r["original"]) for r in train}
    assert not train_orig & {(r["package"], r["original"]) for r in test}
    # SOURCES.md says to avoid these
    assert not [r for r in rows if any(bad in r["original"] for bad in ("messi5", "Megamind", "mahotas"))]


def test_verify_embedded_passes_on_the_committed_data():
    report = verify_embedded()
    assert report["problems"] == []
    assert report["files"] == len(manifest()) and report["train"] >= 30 and report["test_pairs"] >= 10


@pytest.fixture
def embedded_copy(tmp_path):
    shutil.copytree(PKG / "embedded", tmp_path / "embedded")
    return tmp_path


def test_changed_embedded_file_is_named(embedded_copy):
    row = [r for r in manifest(embedded_copy) if r["split"] == "test"][0]
    path = embedded_copy / row["file"]
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"embedded file {row['file']} has changed: its sha256 is"):
        read_embedded(row, embedded_copy)
    with pytest.raises(InputError, match=rf"1 of \d+ embedded files failed the check: .*{row['file']} has changed"):
        verify_embedded(embedded_copy)
    report = verify_embedded(embedded_copy, strict=False)
    assert len(report["problems"]) == 1 and row["file"] in report["problems"][0]
    ds = EmbeddedTestPairs(package_dir=embedded_copy, pairs=[row["pair"]])
    with pytest.raises(InputError, match="has changed"):
        ds[0]


def test_missing_embedded_file_and_manifest_are_named(embedded_copy):
    row = [r for r in manifest(embedded_copy) if r["split"] == "train"][3]
    (embedded_copy / row["file"]).unlink()
    with pytest.raises(InputError, match=rf"embedded file {row['file']} .* is missing"):
        verify_embedded(embedded_copy)
    with pytest.raises(InputError, match="is missing"):
        EmbeddedTrainPairs(package_dir=embedded_copy)
    (embedded_copy / "embedded" / "manifest.json").unlink()
    with pytest.raises(InputError, match="manifest is missing"):
        manifest(embedded_copy)


# ---------------------------------------------------------------- homographies

def test_homography_from_points_is_exact_and_refuses_degenerate_points():
    src = np.array([[0, 0], [10, 0], [10, 8], [0, 8]], float)
    dst = np.array([[1, 2], [12, 1], [11, 9], [-1, 7]], float)
    h = homography_from_points(src, dst)
    np.testing.assert_allclose(apply_homography(h, src), dst, atol=1e-9)
    with pytest.raises(InputError, match="degenerate"):
        homography_from_points(np.array([[0, 0], [1, 1], [2, 2], [3, 3]], float), dst)


def test_zero_jitter_warp_is_the_identity():
    img = torch.rand(3, 20, 24, dtype=torch.float64)
    out, h = random_homography_warp(img, 0.0, np.random.default_rng(0))
    np.testing.assert_allclose(h, np.eye(3), atol=1e-12)
    torch.testing.assert_close(out, img, atol=1e-9, rtol=0)


def test_random_homography_warp_moves_corners_within_range_and_is_reproducible():
    img = torch.rand(2, 3, 32, 40)
    out, hs = random_homography_warp(img, 19.0, np.random.default_rng(5), min_shift_px=5.0)
    assert out.shape == img.shape and hs.shape == (2, 3, 3)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    corners = np.array([[0, 0], [39, 0], [39, 31], [0, 31]], float)
    for h in hs:
        moved = np.abs(apply_homography(h, corners) - corners)
        assert moved.min() >= 5 - 1e-9 and moved.max() <= 19 + 1e-9
    assert not np.allclose(hs[0], hs[1])
    out2, hs2 = random_homography_warp(img, 19.0, np.random.default_rng(5), min_shift_px=5.0)
    torch.testing.assert_close(out, out2)
    np.testing.assert_array_equal(hs, hs2)
    u8 = (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)
    w8, _ = random_homography_warp(u8, 3.0, np.random.default_rng(2))
    assert w8.dtype == np.uint8 and w8.shape == u8.shape


def test_warp_reads_the_source_where_the_homography_points():
    # out(x, y) = src(H (x, y)): with a pure translation by (+2, +1) the output is the source shifted.
    src = torch.rand(1, 12, 16, dtype=torch.float64)
    h = np.array([[1, 0, 2], [0, 1, 1], [0, 0, 1.0]])
    out = warp_homography(src, h, (8, 10))
    torch.testing.assert_close(out, src[:, 1:9, 2:12], atol=1e-9, rtol=0)


# ---------------------------------------------------------------- CUFED-like pairs

def _smooth_photo(h=300, w=400):
    y, x = np.mgrid[0:h, 0:w].astype(float)
    r = 0.5 + 0.4 * np.sin(x / 23.0) * np.cos(y / 31.0)
    g = 0.5 + 0.4 * np.sin((x + y) / 41.0)
    b = 0.5 + 0.4 * np.cos((x - 2 * y) / 37.0)
    return np.round(np.stack([r, g, b], -1) * 255).astype(np.uint8)


def _alignment_error(hr_u8, ref_u8, ref_to_hr, p):
    """Mean |ref - hr read through ref_to_hr| over reference pixels that fall inside the HR patch."""
    hr = torch.from_numpy(hr_u8).permute(2, 0, 1).double() / 255
    ref = torch.from_numpy(ref_u8).permute(2, 0, 1).double() / 255
    seen = warp_homography(hr, ref_to_hr, (p, p), mode="bilinear")
    ys, xs = np.mgrid[0:p, 0:p]
    q = apply_homography(ref_to_hr, np.stack([xs.ravel(), ys.ravel()], 1)).reshape(p, p, 2)
    inside = torch.from_numpy(((q >= 1) & (q <= p - 2)).all(-1))
    return float((seen - ref).abs().mean(0)[inside].mean()), float(inside.double().mean())


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_reference_is_where_the_homography_says(monkeypatch, level):
    monkeypatch.setitem(cufed_like.LEVELS, level, dataclasses.replace(LEVELS[level], colour=0.0))
    photo = _smooth_photo()
    pair = make_pair(photo, level, 64, np.random.default_rng(level))
    err, frac = _alignment_error(pair["hr"], pair["ref"], pair["ref_to_hr"], 64)
    assert frac > 0.02
    assert err < 0.01, err


def test_level_5_reference_comes_from_another_photo_and_levels_are_graded():
    ds = EmbeddedTrainPairs(patch_size=64, length=100, seed=3)
    assert len(ds) == 100
    overlaps = {lv: [] for lv in range(1, 6)}
    for i in range(0, 100, 2):
        item = ds[i]
        lv = int(item["level"])
        assert lv == i % 5 + 1
        photo = item["name"].split("#")[0]
        if lv == 5:
            assert item["ref_name"] != photo
            assert torch.isnan(item["ref_to_hr"]).all()
        else:
            assert item["ref_name"] == photo
        overlaps[lv].append(float(item["overlap"]))
    means = [np.mean(overlaps[lv]) for lv in range(1, 6)]
    assert means[0] > 0.8 and means[4] == 0.0
    assert all(a > b for a, b in zip(means, means[1:])), means


def test_train_items_shapes_ranges_determinism_and_lr():
    ds = EmbeddedTrainPairs(patch_size=48, length=10, seed=1, photos=["mate_aqua", "lomiri_life", "plasma_path"])
    item = ds[4]
    assert item["hr"].shape == (3, 48, 48) and item["ref"].shape == (3, 48, 48) and item["lr"].shape == (3, 12, 12)
    for key in ("hr", "lr", "ref"):
        assert item[key].dtype == torch.float32 and 0 <= float(item[key].min()) and float(item[key].max()) <= 1
    np.testing.assert_array_equal(_u8(item["lr"]), bicubic_downsample(_u8(item["hr"]), 4))
    again = ds[4]
    for key in ("hr", "lr", "ref", "ref_to_hr"):
        torch.testing.assert_close(item[key], again[key], equal_nan=True)
    other_seed = EmbeddedTrainPairs(patch_size=48, length=10, seed=2, photos=["mate_aqua", "lomiri_life", "plasma_path"])
    assert not torch.equal(other_seed[4]["hr"], item["hr"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["hr"].shape == (5, 3, 48, 48) and len(batch["name"]) == 5


def test_augmentation_keeps_the_homography_true(monkeypatch):
    for lv in (1, 2):
        monkeypatch.setitem(cufed_like.LEVELS, lv, dataclasses.replace(LEVELS[lv], colour=0.0))
    ds = EmbeddedTrainPairs(patch_size=64, levels=(1, 2), length=12, seed=0, augment=True)
    errs = []
    for i in range(12):
        it = ds[i]
        errs.append(_alignment_error(_u8(it["hr"]), _u8(it["ref"]), it["ref_to_hr"].double().numpy(), 64)[0])
    # misaligned by a flip, the error would be that of unrelated content (about 0.1-0.2)
    assert max(errs) < 0.03, errs


def test_train_pairs_bad_arguments():
    with pytest.raises(InputError, match="multiple of the scale"):
        EmbeddedTrainPairs(patch_size=50)
    with pytest.raises(InputError, match="unknown training photos"):
        EmbeddedTrainPairs(photos=["no_such_photo"])
    with pytest.raises(InputError, match="levels must be"):
        EmbeddedTrainPairs(levels=(0, 6))
    with pytest.raises(InputError, match="another photo"):
        EmbeddedTrainPairs(photos=["mate_aqua"])
    with pytest.raises(InputError, match="too small for level-4 pairs"):
        make_pair(_smooth_photo(130, 140), 4, 128, np.random.default_rng(0))


def test_test_pairs_are_real_pairs_with_bicubic_lr():
    ds = EmbeddedTestPairs()
    assert len(ds) >= 10
    for i in range(len(ds)):
        item = ds[i]
        _, h, w = item["hr"].shape
        assert h % 4 == 0 and w % 4 == 0 and max(h, w) == 320
        assert item["lr"].shape == (3, h // 4, w // 4)
        assert abs(item["ref"].shape[1] - h) <= 8 and abs(item["ref"].shape[2] - w) <= 8
        # two views of one scene: alike, not the same
        assert not torch.equal(item["hr"], item["ref"])
    item = ds[0]
    np.testing.assert_array_equal(_u8(item["lr"]), bicubic_downsample(_u8(item["hr"]), 4))


# ---------------------------------------------------------------- public sets from folders

def _img(path, h, w, seed=0):
    save_png(path, np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def test_cufed_train_folder(tmp_path):
    for i, name in enumerate(["a", "b"]):
        _img(tmp_path / "input" / f"{name}.png", 160, 160, i)
        _img(tmp_path / "ref" / f"{name}.png", 150, 158, 10 + i)
    ds = CUFEDTrain(tmp_path)
    assert len(ds) == 2
    item = ds[1]
    assert item["name"] == "b" and item["hr"].shape == (3, 160, 160) and item["lr"].shape == (3, 40, 40)
    assert item["ref"].shape == (3, 160, 160)  # the authors resize every reference to 160x160
    assert CUFEDTrain(tmp_path, ref_size=None)[1]["ref"].shape == (3, 148, 156)
    # joint augmentation: input and reference get the same one of the 8 flips/transposes, reproducibly
    plain = ds[0]
    changed = 0
    for seed in range(6):
        aug = CUFEDTrain(tmp_path, augment=True, seed=seed)[0]
        torch.testing.assert_close(aug["hr"], CUFEDTrain(tmp_path, augment=True, seed=seed)[0]["hr"])
        ops = [k for k, op in enumerate(_dihedral()) if torch.equal(op(plain["hr"]), aug["hr"])]
        assert len(ops) == 1 and torch.equal(_dihedral()[ops[0]](plain["ref"]), aug["ref"])
        changed += ops[0] != 0
    assert changed >= 3


def _dihedral():
    flips = []
    for h in (False, True):
        for v in (False, True):
            for t in (False, True):
                def op(x, h=h, v=v, t=t):
                    x = x.flip(-1) if h else x
                    x = x.flip(-2) if v else x
                    return x.transpose(-1, -2) if t else x
                flips.append(op)
    return flips


def test_folder_pair_input_without_reference(tmp_path):
    _img(tmp_path / "input" / "001.png", 32, 32)
    _img(tmp_path / "input" / "002.png", 32, 32)
    _img(tmp_path / "ref" / "001.png", 32, 32)
    with pytest.raises(InputError, match=r"002\.png: input without its reference: no .*ref/002\.\* found"):
        WRSR(tmp_path)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(InputError, match=r"nowhere: folder not found; WR-SR expects a folder with input/ and ref/"):
        WRSR(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: contains no images"):
        Urban100(tmp_path / "empty")
    (tmp_path / "w" / "input").mkdir(parents=True)
    with pytest.raises(InputError, match=r"w/ref: folder not found"):
        WRSR(tmp_path / "w")


def test_wrsr_crops_to_multiple_of_4_and_names_bad_images(tmp_path):
    _img(tmp_path / "input" / "x.png", 50, 61)
    _img(tmp_path / "ref" / "x.png", 45, 39)
    item = WRSR(tmp_path)[0]
    assert item["hr"].shape == (3, 48, 60) and item["lr"].shape == (3, 12, 15) and item["ref"].shape == (3, 44, 36)
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "input" / "x.png")
    with pytest.raises(InputError, match=r"input/x\.png: is a grayscale image"):
        WRSR(tmp_path)[0]


def _cufed5(root, groups=("000", "001")):
    for g, name in enumerate(groups):
        _img(root / f"{name}_0.png", 64, 84, g)
        for k in range(1, 6):
            _img(root / f"{name}_{k}.png", 40 + 4 * k, 60 - 2 * k, 10 * g + k)


def test_cufed5_level_each_and_stitched(tmp_path):
    _cufed5(tmp_path)
    one = CUFED5(tmp_path)
    assert len(one) == 2 and one[0]["level"] == 1 and one[0]["name"] == "000"
    assert one[0]["hr"].shape == (3, 64, 84) and one[0]["ref"].shape == (3, 44, 56)
    lv3 = CUFED5(tmp_path, level=3)[1]
    assert lv3["ref"].shape == (3, 52, 52)
    each = CUFED5(tmp_path, mode="each")
    assert len(each) == 10 and [each[i]["level"] for i in range(5)] == [1, 2, 3, 4, 5] and each[7]["name"] == "001"
    st = CUFED5(tmp_path, mode="stitched")[0]
    hmax, wmax = 60, 56  # level 5 is 60 high; level 1 is 58 -> 56 wide after cropping to a multiple of 4
    assert st["ref"].shape == (3, hmax, 5 * wmax) and st["level"] == 0
    torch.testing.assert_close(st["ref"][:, :44, :56], one[0]["ref"])
    assert float(st["ref"][:, 44:, :56].abs().max()) == 0.0  # zero padding below the level-1 reference


def test_cufed5_missing_reference(tmp_path):
    _cufed5(tmp_path)
    (tmp_path / "001_3.png").unlink()
    assert len(CUFED5(tmp_path, level=1)) == 2  # level 1 alone does not need it
    with pytest.raises(InputError, match=r"001_0\.png: input without its reference: 001_3\.png missing"):
        CUFED5(tmp_path, mode="stitched")
    with pytest.raises(InputError, match="mode must be"):
        CUFED5(tmp_path, mode="all")


def test_stitch_references_rule():
    a = np.full((10, 9, 3), 7, np.uint8)
    b = np.full((6, 12, 3), 9, np.uint8)
    s = stitch_references([a, b])
    assert s.shape == (8, 24, 3)
    assert (s[:8, :8] == 7).all() and (s[:, 8:12] == 0).all() and (s[:4, 12:24] == 9).all() and (s[4:, 12:] == 0).all()


def test_sun80_uses_the_first_scene_match_in_sorted_order(tmp_path):
    gt = tmp_path / "Sun_Hays_SR_groundtruth"
    gt.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(gt / "Sun_001.jpg")
    m = tmp_path / "Sun_Hays_SR_scenematches" / "Sun_001"
    _img(m / "b_match.png", 40, 40, 1)
    _img(m / "a_match.png", 36, 44, 2)
    item = Sun80(tmp_path)[0]
    assert item["ref_file"] == "a_match.png" and item["ref"].shape == (3, 36, 44) and item["hr"].shape == (3, 48, 68)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(gt / "Sun_002.jpg")
    with pytest.raises(InputError, match=r"Sun_002\.jpg: input without its reference: .*Sun_002 is missing"):
        Sun80(tmp_path)


@pytest.mark.parametrize("cls", [Urban100, Manga109])
def test_self_reference_sets(tmp_path, cls):
    _img(tmp_path / "img_001.png", 64, 48)
    item = cls(tmp_path)[0]
    assert item["ref"].shape == item["lr"].shape == (3, 16, 12)
    torch.testing.assert_close(item["ref"], item["lr"])
    up = cls(tmp_path, ref_mode="lr_up")[0]
    assert up["ref"].shape == up["hr"].shape == (3, 64, 48)
    _img(tmp_path / "img_002.png", 10, 48)
    with pytest.raises(InputError, match=r"img_002\.png: is 48x10 pixels.*too small for one 3x3 LR patch"):
        cls(tmp_path)[1]


def test_test_pair_without_its_reference_in_the_manifest(embedded_copy):
    path = embedded_copy / "embedded" / "manifest.json"
    doc = json.loads(path.read_text())
    doc["rows"] = [r for r in doc["rows"] if not (r.get("pair") == "aloe" and r["role"] == "ref")]
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="test pair aloe has no ref image in the manifest"):
        EmbeddedTestPairs(package_dir=embedded_copy)
