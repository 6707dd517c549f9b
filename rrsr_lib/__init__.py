"""rrsr_lib: RRSR (reference-based super-resolution, ECCV 2022), learned and reproduced.

Importing the package registers every architecture (rrsr_lib.registry): RRSR in rrsr_lib.models, the
comparison models in rrsr_lib.baselines.
"""
from . import baselines, models  # noqa: F401  (each registers its architectures)
