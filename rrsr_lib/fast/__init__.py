"""Fast implementations: what makes the paper's code fast or small enough to use, kept apart from it.

Every module under rrsr_lib/ writes the paper's method out the simple way first. Where that simple way is too
slow or too large to use, the paper module says so at the one place where it hands the work over (a visible
call or dispatch), and the fast implementation lives here; a test shows that both give the same result (the
memory tuning computes nothing, and changes no number). What each one saves, measured, is in PERFORMANCE.md.

* :mod:`rrsr_lib.fast.matching_blocked`: the exact patch matcher behind
  :func:`rrsr_lib.matching.match_patches`. The paper's definition (:func:`rrsr_lib.matching.match_patches_naive`)
  holds one input-patch x reference-patch matrix, whose memory grows with the product of the image sizes;
  this one computes the same maxima from pixel similarities, block by block, under a memory budget.
  tests/test_matching.py compares the two.
* :mod:`rrsr_lib.fast.deform_sampling`: the autograd Function behind :func:`rrsr_lib.alignment.deform_conv_sampling`
  (the alignment units' "sampling" path, chosen on the CPU by :func:`rrsr_lib.alignment.modulated_deform_conv`):
  sample the 9 taps, modulate, one matrix multiplication, sample by sample, with a hand-written backward pass,
  because torchvision's deform_conv2d (the "torchvision" path) is slow on the CPU. tests/test_alignment.py
  compares the two paths, forward and gradients.
* :mod:`rrsr_lib.fast.sampling_adjoint` (kernels in :mod:`rrsr_lib.fast._sampling_adjoint_kernels`): the input
  gradient of bilinear sampling as a numba scatter, used by that backward pass on the CPU when the reference
  needs a gradient (reciprocal learning's pass 2), because ATen's CPU kernel for it dominated a reciprocal
  step. Without numba ATen's kernel is used; tests/test_sampling_adjoint.py compares the two.
* :mod:`rrsr_lib.fast.memory`: glibc malloc tuning (:func:`rrsr_lib.fast.memory.keep_freed_cpu_memory`, turned
  on by the trainer on the CPU, re-exported by rrsr_lib.device): freed memory is reused instead of mapped and
  zeroed again every step. Computes nothing; numbers do not change. tests/test_device.py checks the page faults.
* :mod:`rrsr_lib.fast.int8`: per-output-channel int8 packing of the large trained weights, used by
  :func:`rrsr_lib.checkpoints.pack_state_dict` (which decides what a checkpoint stores), because float32 weights
  would not fit the 5 MB a shipped checkpoint may take. Smaller, not faster; every reported number is measured
  with the dequantized weights. tests/test_checkpoints.py checks the round trip.
"""
