"""Data: the embedded real photographs and pairs, CUFED-like training pairs, and the public RefSR sets.

* :func:`manifest` / :func:`verify_embedded`: what is embedded, where it comes from, checksums;
* :class:`EmbeddedTrainPairs`: CUFED-like (input, reference) pairs at 5 similarity levels;
* :class:`EmbeddedTestPairs`: the real test pairs (stereo, multi-view, flow frames);
* :func:`random_homography_warp`: corner-jitter homographies (C2-Matching's teacher, RRSR's Ref_w);
* public sets read from a folder the user gives (:mod:`rrsr_lib.data.public`): CUFED training,
  CUFED5 (one level, each level, five stitched), WR-SR, Sun80, Urban100, Manga109.

The builder of the embedded data is ``tools/build_embedded.py`` (``python tools/build_embedded.py``, or
``make data``), outside the package.
"""
from .cufed_like import LEVELS, make_pair
from .embedded import (EmbeddedTestPairs, EmbeddedTrainPairs, embedded_path, manifest, read_embedded,
                       verify_embedded)
from .public import CUFED5, WRSR, CUFEDTrain, Manga109, SelfReferenceSet, Sun80, Urban100, stitch_references
from .warp import (apply_homography, homography_from_points, random_corner_shifts, random_homography_warp,
                   warp_homography)

__all__ = [
    "manifest", "verify_embedded", "read_embedded", "embedded_path", "EmbeddedTrainPairs", "EmbeddedTestPairs",
    "LEVELS", "make_pair", "random_homography_warp", "random_corner_shifts", "warp_homography",
    "homography_from_points", "apply_homography", "CUFEDTrain", "CUFED5", "WRSR", "Sun80", "Urban100",
    "Manga109", "SelfReferenceSet", "stitch_references",
]
