"""The embedded-data builder, run offline on small fake packages: extraction, processing, manifest, reproducibility.

(The real build downloads about 250 MB from Debian and PyPI; it is checked by
``python tools/build_embedded.py --check``, not by the tests.)
"""
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rrsr_lib.errors import InputError
from rrsr_lib.images import load_rgb

# the builder is a script outside the package (tools/build_embedded.py): load it from its file
_SPEC = importlib.util.spec_from_file_location("build_embedded",
                                               Path(__file__).resolve().parent.parent / "tools" / "build_embedded.py")
build = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = build  # dataclasses look their module up there
_SPEC.loader.exec_module(build)


def _photo(h, w, seed):
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    base = np.stack([np.sin(x / (9 + seed)), np.cos(y / 13), np.sin((x + y) / 17)], -1) * 90 + 128
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake package with two photos and one stereo MPO, wired into the builder's tables."""
    src = tmp_path / "originals"
    src.mkdir()
    Image.fromarray(_photo(700, 900, 1)).save(src / "wide.jpg", quality=92)
    Image.fromarray(_photo(800, 500, 2)).save(src / "tall.png")
    left, right = Image.fromarray(_photo(480, 641, 3)), Image.fromarray(_photo(480, 641, 4))
    left.save(src / "pair.mpo", save_all=True, append_images=[right])
    pkg = build.Package("fake-pkg", "1.0", "pypi", "wheel", "CC0-1.0")
    monkeypatch.setitem(build.PACKAGES, "fake-pkg", pkg)
    monkeypatch.setattr(build, "TRAIN", [("f_wide", "fake-pkg", "wide.jpg", "CC0-1.0", "me"),
                                         ("f_tall", "fake-pkg", "tall.png", "CC-BY-4.0", "you")])
    monkeypatch.setattr(build, "TEST_PAIRS", [("stereo", "fake-pkg", "pair.mpo", "pair.mpo", 0, 1, "stereo", "MIT", "us")])
    monkeypatch.setattr(build, "ORIGINAL_SHA256", {f"fake-pkg:{n}": build.sha256_file(src / n)
                                                   for n in ("wide.jpg", "tall.png", "pair.mpo")})
    monkeypatch.setattr(build, "fetch", lambda p, dest: src / "archive.whl")
    monkeypatch.setattr(build, "extract", lambda p, archive, members, dest: {m: src / m for m in members})
    return src


def test_build_processing_manifest_and_identical_rebuild(tmp_path, fake):
    out = tmp_path / "a" / "embedded"
    rows = build.build(out, verbose=False)
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["rows"] == rows and doc["built_with"]["pillow"]
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"f_wide", "f_tall", "stereo_input", "stereo_ref"}
    wide = load_rgb(out / "train" / "f_wide.png")
    assert wide.shape == (498, 640, 3)  # long side 640, aspect kept (700 * 640 / 900 = 497.8)
    assert load_rgb(out / "train" / "f_tall.png").shape == (640, 400, 3)
    s_in, s_ref = load_rgb(out / "test" / "stereo_input.png"), load_rgb(out / "test" / "stereo_ref.png")
    # same factor for both views (320 / 641), then cropped top-left to a multiple of 4
    assert s_in.shape == s_ref.shape == (240, 320, 3)
    assert not np.array_equal(s_in, s_ref)  # frame 1 is the other camera
    r = by_name["stereo_ref"]
    assert r["pair"] == "stereo" and r["role"] == "ref" and r["split"] == "test" and "frame 1 of 2" in r["processing"]
    assert r["file"] == "embedded/test/stereo_ref.png" and r["license"] == "MIT" and r["source"] == "fake-pkg 1.0 (PyPI, wheel)"
    assert r["sha256"] == build.sha256_file(out / "test" / "stereo_ref.png")
    # rebuilding elsewhere gives the same bytes
    rows2 = build.build(tmp_path / "b" / "embedded", verbose=False)
    assert [x["sha256"] for x in rows2] == [x["sha256"] for x in rows]


def test_build_removes_stale_files_and_refuses_changed_originals(tmp_path, fake, monkeypatch):
    out = tmp_path / "embedded"
    (out / "train").mkdir(parents=True)
    (out / "train" / "old_photo.png").write_bytes(b"x")
    build.build(out, verbose=False)
    assert not (out / "train" / "old_photo.png").exists()
    monkeypatch.setitem(build.ORIGINAL_SHA256, "fake-pkg:tall.png", "0" * 64)
    with pytest.raises(InputError, match="fake-pkg:tall.png has sha256 .* not the pinned"):
        build.build(tmp_path / "again", verbose=False)


def test_extract_from_wheel_and_sdist(tmp_path):
    whl = tmp_path / "x-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("x/data/a.png", b"png-bytes")
        zf.writestr("x/other.py", b"")
    got = build.extract(build.Package("x", "1.0", "pypi", "wheel", ""), whl, ["x/data/a.png"], tmp_path / "w")
    assert got["x/data/a.png"].read_bytes() == b"png-bytes"
    sdist = tmp_path / "x-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        info = tarfile.TarInfo("x-1.0/Tests/images/b.mpo")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"mpo"))
    got = build.extract(build.Package("x", "1.0", "pypi", "sdist", ""), sdist, ["x-1.0/Tests/images/b.mpo"], tmp_path / "s")
    assert got["x-1.0/Tests/images/b.mpo"].read_bytes() == b"mpo"
    with pytest.raises(InputError, match=r"x-1\.0\.tar\.gz does not contain x-1\.0/missing\.png"):
        build.extract(build.Package("x", "1.0", "pypi", "sdist", ""), sdist, ["x-1.0/missing.png"], tmp_path / "s2")


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian/Ubuntu)")
def test_extract_single_files_from_a_deb(tmp_path):
    root = tmp_path / "pkgroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: fake\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: t <t@example.org>\nDescription: test\n")
    (root / "usr/share/backgrounds").mkdir(parents=True)
    (root / "usr/share/backgrounds/a.jpg").write_bytes(b"jpeg")
    (root / "usr/share/backgrounds/b.jpg").write_bytes(b"other")
    deb = tmp_path / "fake_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True, capture_output=True)
    got = build.extract(build.Package("fake", "1.0", "debian", "deb", ""), deb, ["usr/share/backgrounds/a.jpg"],
                        tmp_path / "x")
    assert got["usr/share/backgrounds/a.jpg"].read_bytes() == b"jpeg"
    assert not (tmp_path / "x/usr/share/backgrounds/b.jpg").exists()  # single files, not the whole package
    with pytest.raises(InputError, match="failed"):
        build.extract(build.Package("fake", "1.0", "debian", "deb", ""), deb, ["usr/share/nothing.jpg"], tmp_path / "y")


def test_tables_match_the_committed_manifest():
    rows = json.loads((build.EMBEDDED_DIR / "manifest.json").read_text())["rows"]
    assert {r["name"] for r in rows if r["split"] == "train"} == {t[0] for t in build.TRAIN}
    assert {r["pair"] for r in rows if r["split"] == "test"} == {t[0] for t in build.TEST_PAIRS}
    for r in rows:
        assert build.ORIGINAL_SHA256[f"{r['package']}:{r['original']}"] == r["original_sha256"]
        pkg = build.PACKAGES[r["package"]]
        assert r["version"] == pkg.version and r["source"] == pkg.source
