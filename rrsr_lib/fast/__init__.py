"""Fast implementations: code that computes what a paper module defines, faster or smaller, and nothing else.

Every module under rrsr_lib/ writes the paper's method out the simple way first. Where that simple way is too
slow or too large to use, the paper module says so at the one place where it hands the work over (a visible
call or dispatch), and the fast implementation lives here; a test shows that both give the same result. What
each one saves, measured, is in PERFORMANCE.md.

* :mod:`rrsr_lib.fast.matching_blocked`: the exact patch matcher behind
  :func:`rrsr_lib.matching.match_patches`. The paper's definition (:func:`rrsr_lib.matching.match_patches_naive`)
  holds one input-patch x reference-patch matrix, whose memory grows with the product of the image sizes;
  this one computes the same maxima from pixel similarities, block by block, under a memory budget.
  tests/test_matching.py compares the two.
"""
