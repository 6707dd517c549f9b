"""The numba kernels of rrsr_lib.fast.sampling_adjoint (imported by it on first use; see its docstring).

They live in their own module, at module level, so that numba's on-disk cache can find them again in the
next process (a kernel defined inside a function and calling another one is compiled afresh every time), and
so that importing rrsr_lib does not import numba.
"""
import numba
import numpy as np

__all__ = ["corners_and_weights", "scatter"]


@numba.njit(cache=True, nogil=True, boundscheck=False)
def corners_and_weights(grid_g, one, scale_x, scale_y, high_x, high_y, height, width, corner, weights):
    # pass 1 for one group: grid_g [Ho, Wo, 2] in [-1, 1] (x, y) -> corner[s] (index of the top-left pixel of
    # the 2x2 window, int64) and weights[s, 0:4] (NW, NE, SW, SE) for every sample position s = i * Wo + j.
    # one, scale_*, high_* have the tensors' dtype, so that float32 arithmetic stays float32 (as ATen's)
    zero = one - one
    low = -one - one
    s = 0
    for i in range(grid_g.shape[0]):
        for j in range(grid_g.shape[1]):
            # align_corners=True: pixel = (coordinate + 1) * (size - 1) / 2, as ATen computes it
            ix = (grid_g[i, j, 0] + one) * scale_x
            iy = (grid_g[i, j, 1] + one) * scale_y
            # positions far outside (or NaN) read nothing; clamping them keeps every corner outside
            # and the integer conversion below defined
            if not ix >= low:
                ix = low
            if ix > high_x:
                ix = high_x
            if not iy >= low:
                iy = low
            if iy > high_y:
                iy = high_y
            fx = np.floor(ix)
            fy = np.floor(iy)
            # ATen's bilinear weights: w/e/n/s are the distances to the east/west/north/south edges
            w = ix - fx
            e = one - w
            n = iy - fy
            so = one - n
            x0 = int(fx)
            y0 = int(fy)
            weights[s, 0] = so * e    # north-west corner (y0, x0)
            weights[s, 1] = so * w    # north-east (y0, x0 + 1)
            weights[s, 2] = n * e     # south-west (y0 + 1, x0)
            weights[s, 3] = n * w     # south-east (y0 + 1, x0 + 1)
            if 0 <= x0 < width - 1 and 0 <= y0 < height - 1:
                corner[s] = y0 * width + x0
            else:
                # at the border: move the 2x2 window inside the map, keep each weight on its own
                # pixel, and give corners outside the map weight 0 (zero padding)
                cx = min(max(x0, 0), width - 2)
                cy = min(max(y0, 0), height - 2)
                wt = (weights[s, 0], weights[s, 1], weights[s, 2], weights[s, 3])
                for k in range(4):
                    weights[s, k] = zero
                for k in range(4):
                    yy = y0 + k // 2
                    xx = x0 + k % 2
                    if 0 <= yy < height and 0 <= xx < width:
                        weights[s, (yy - cy) * 2 + (xx - cx)] = wt[k]
                corner[s] = cy * width + cx
            s += 1


@numba.njit(cache=True, nogil=True, boundscheck=False)
def scatter(grad_samples, grid, grad_x, one, scale_x, scale_y, high_x, high_y, accumulate,
            corner, weights, acc):
    # grad_samples [G, C, Ho, Wo]; grid [G, Ho, Wo, 2]; grad_x [G, C, H, W], added to (accumulate) or
    # overwritten. Scratch space, reused group after group: corner int64 [Ho*Wo], weights [Ho*Wo, 4],
    # acc [H*W*8] (8 channels of one pixel next to each other).
    n_groups, channels, h_out, w_out = grad_samples.shape
    height, width = grad_x.shape[2], grad_x.shape[3]
    npos = h_out * w_out
    zero = one - one
    blocked = channels - channels % 8
    acc8 = acc.reshape((acc.shape[0] // 8, 8))
    for g in range(n_groups):
        corners_and_weights(grid[g], one, scale_x, scale_y, high_x, high_y, height, width, corner, weights)
        # pass 2, 8 channels at a time: grad_x[c, q] += S[s, q] * grad_samples[c, s] into an accumulator
        # that holds the 8 channels of a pixel in one 32-byte run, so that the 4 corners of a sample touch
        # 4 (float32) cache lines instead of 32, and each sample's corner and weights are read once per
        # 8 channels
        for c0 in range(0, blocked, 8):
            acc[:] = zero
            g0 = grad_samples[g, c0].ravel()
            g1 = grad_samples[g, c0 + 1].ravel()
            g2 = grad_samples[g, c0 + 2].ravel()
            g3 = grad_samples[g, c0 + 3].ravel()
            g4 = grad_samples[g, c0 + 4].ravel()
            g5 = grad_samples[g, c0 + 5].ravel()
            g6 = grad_samples[g, c0 + 6].ravel()
            g7 = grad_samples[g, c0 + 7].ravel()
            for s in range(npos):
                v0, v1, v2, v3, v4, v5, v6, v7 = g0[s], g1[s], g2[s], g3[s], g4[s], g5[s], g6[s], g7[s]
                q = corner[s]
                for k in range(4):
                    # corner k of the window: NW (q), NE (q + 1), SW (q + W), SE (q + W + 1). Indexing the
                    # accumulator as [pixel, lane] (one index check per pixel, constant lanes) lets LLVM's SLP
                    # vectoriser turn the 8 adds into one 8-wide add
                    p = q + (k // 2) * width + k % 2
                    a = weights[s, k]
                    acc8[p, 0] += a * v0
                    acc8[p, 1] += a * v1
                    acc8[p, 2] += a * v2
                    acc8[p, 3] += a * v3
                    acc8[p, 4] += a * v4
                    acc8[p, 5] += a * v5
                    acc8[p, 6] += a * v6
                    acc8[p, 7] += a * v7
            # back to the planar layout, all 8 planes in one pass over the accumulator
            planes = grad_x[g, c0:c0 + 8].reshape((8, height * width))
            if accumulate:
                for q in range(height * width):
                    for c in range(8):
                        planes[c, q] += acc8[q, c]
            else:
                for q in range(height * width):
                    for c in range(8):
                        planes[c, q] = acc8[q, c]
        # the remaining channels (C not a multiple of 8), one at a time straight into their plane
        for c in range(blocked, channels):
            plane = grad_x[g, c].ravel()
            if not accumulate:
                plane[:] = zero
            src = grad_samples[g, c].ravel()
            for s in range(npos):
                v = src[s]
                q = corner[s]
                plane[q] += weights[s, 0] * v
                plane[q + 1] += weights[s, 1] * v
                plane[q + width] += weights[s, 2] * v
                plane[q + width + 1] += weights[s, 3] * v
