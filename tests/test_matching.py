"""Exact patch matching: the fast, blocked matcher against the naive full matrix; budget; coarse-to-fine."""
import pytest
import torch
import torch.nn.functional as F

from rrsr_lib.data import EmbeddedTestPairs
from rrsr_lib.errors import InputError
from rrsr_lib.fast.matching_blocked import BlockPlan, _block_bytes, _speed_knobs, plan_blocks
from rrsr_lib.matching import match_coarse_to_fine, match_patches, match_patches_naive, normalize_pixels
from rrsr_lib.vgg import VGGFeatures


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The matcher runs many small tensor ops; on a shared 2-core machine one thread avoids idle-wait stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _patch_scores(x, r, k=3, padding="valid"):
    """All cosine scores [B, L_in, L_ref] written out (same epsilons as the library), for tie checks."""
    x, r = normalize_pixels(x), normalize_pixels(r)
    if padding == "same":
        x, r = F.pad(x, (1, 1, 1, 1)), F.pad(r, (1, 1, 1, 1))
    px, pr = F.unfold(x, k), F.unfold(r, k)
    px = px / (px.norm(dim=1, keepdim=True) + 1e-5)
    pr = pr / (pr.norm(dim=1, keepdim=True) + 1e-5)
    return torch.bmm(px.transpose(1, 2), pr)


def assert_same_matches(x, r, idx, score, padding="valid", tol=1e-5):
    """Indices equal to the naive ones except at ties (then the chosen patch scores within tol of the best)."""
    n_idx, n_score = match_patches_naive(x, r, padding=padding)
    assert idx.shape == n_idx.shape and idx.dtype == torch.int64
    torch.testing.assert_close(score, n_score, atol=tol, rtol=0)
    differ = idx != n_idx
    if differ.any():
        full = _patch_scores(x, r, padding=padding)
        chosen = full.gather(2, idx.flatten(1).unsqueeze(2)).squeeze(2).view_as(n_score)
        best = full.amax(dim=2).view_as(n_score)
        assert (best - chosen)[differ].max() <= tol, "an index differs from the naive one by more than a tie"
    return differ.float().mean().item()


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_fast_equals_naive_random(padding):
    torch.manual_seed(0)
    x, r = torch.randn(2, 16, 13, 17), torch.randn(2, 16, 11, 19)  # other reference size, batch of 2
    idx, score = match_patches(x, r, padding=padding)
    expect = (2, 11, 15) if padding == "valid" else (2, 13, 17)
    assert idx.shape == expect
    assert assert_same_matches(x, r, idx, score, padding) == 0.0
    assert score.abs().max() <= 1 + 1e-5


def test_score_is_the_cosine_of_the_matched_patches():
    torch.manual_seed(1)
    x, r = torch.randn(1, 8, 6, 7), torch.randn(1, 8, 9, 5)
    idx, score = match_patches(x, r)
    # input patch at (y, x) = (2, 3); its match (v, u) in the 3-wide reference grid
    v, u = divmod(idx[0, 2, 3].item(), 3)
    a = F.normalize(x, dim=1)[0, :, 2:5, 3:6].flatten()
    b = F.normalize(r, dim=1)[0, :, v:v + 3, u:u + 3].flatten()
    assert abs(score[0, 2, 3].item() - (a @ b / (a.norm() * b.norm())).item()) < 1e-5


@pytest.fixture(scope="module")
def real_features():
    """ImageNet VGG relu3_1 of a real stereo pair (embedded), 30x40 feature maps."""
    pair = EmbeddedTestPairs(pairs=["books"])[0]
    vgg = VGGFeatures(layers=("relu3_1",))
    with torch.no_grad():
        fi = vgg(pair["hr"][None, :, :120, :160])["relu3_1"]
        fr = vgg(pair["ref"][None, :, :120, :160])["relu3_1"]
    return fi, fr


def test_fast_equals_naive_real_vgg_features(real_features):
    fi, fr = real_features
    idx, score = match_patches(fi, fr)
    # real features have near-ties: allow a few differing indices, each a tie to 1e-5
    assert assert_same_matches(fi, fr, idx, score) < 0.01
    # a map matched with itself: every patch finds itself with cosine 1 (ties aside)
    idx, score = match_patches(fi, fi)
    own = torch.arange(idx.numel()).view_as(idx)
    assert (idx == own).float().mean() > 0.99
    assert (score > 1 - 1e-4).all()


def test_results_do_not_depend_on_blocking_or_budget(real_features):
    fi, fr = real_features
    fi, fr = torch.cat([fi, fr]), torch.cat([fr, fi])
    ref_idx, ref_score = match_patches(fi, fr, memory_budget_mb=512)
    assert plan_blocks(2, 256, 30, 40, 30, 40, memory_budget_mb=2).bv < 28  # a small budget cuts the reference
    for kwargs in [dict(memory_budget_mb=2), dict(plan=BlockPlan(1, 40, 50, 50, 50, 0, 0)),
                   dict(plan=BlockPlan(2, 5, 19, 9, 17, 0, 0)), dict(plan=BlockPlan(2, 5, 19, 9, 17, 0, 0, ring_groups=1)),
                   dict(plan=BlockPlan(1, 4, 38, 5, 38, 0, 0, reuse=True)), dict(plan=BlockPlan(1, 4, 38, 5, 38, 0, 0, reuse=False)),
                   dict(plan=plan_blocks(2, 256, 30, 40, 30, 40, **_speed_knobs(torch.device("cuda"), 512)))]:
        idx, score = match_patches(fi, fr, **kwargs)
        torch.testing.assert_close(score, ref_score, atol=1e-6, rtol=0)
        assert (idx != ref_idx).float().mean() < 0.01
    # tiny blocks (one patch row / column each way), on a crop
    ci, cr = fi[:, :, :9, :10], fr[:, :, :8, :11]
    for plan in [BlockPlan(1, 1, 1, 1, 1, 0, 0), BlockPlan(2, 3, 2, 1, 4, 0, 0), BlockPlan(2, 3, 2, 1, 4, 0, 0, 1),
                 BlockPlan(2, 3, 8, 1, 9, 0, 0), BlockPlan(1, 2, 8, 2, 9, 0, 0, 8, False)]:
        idx, score = match_patches(ci, cr, plan=plan)
        assert_same_matches(ci, cr, idx, score)


def test_ties_pick_the_first_reference_patch():
    # constant features: every reference patch scores the same; both implementations take patch 0
    x, r = torch.ones(1, 4, 5, 6), torch.ones(1, 4, 7, 5)
    for fn in (match_patches, match_patches_naive):
        idx, score = fn(x, r)
        assert torch.all(idx == 0) and torch.allclose(score, torch.ones_like(score), atol=1e-5)
    # a reference with a repeated pattern: the first (row-major) copy wins
    torch.manual_seed(2)
    tile = torch.randn(1, 4, 3, 3)
    r = torch.zeros(1, 4, 9, 9)
    r[..., 6:9, 0:3] = tile
    r[..., 0:3, 5:8] = tile
    idx, _ = match_patches(tile, r)
    assert idx.item() == 0 * 7 + 5


def test_zero_padded_canvas_is_handled_like_the_naive():
    torch.manual_seed(3)
    x, r = torch.zeros(1, 8, 12, 12), torch.zeros(1, 8, 12, 12)
    x[..., :8, :9] = torch.rand(1, 8, 8, 9)
    r[..., :10, :7] = torch.rand(1, 8, 10, 7)
    idx, score = match_patches(x, r)
    assert_same_matches(x, r, idx, score)


@pytest.mark.parametrize("size", [(83, 125, 83, 125, 256), (200, 200, 200, 200, 64), (600, 600, 600, 600, 256),
                                  (40, 3000, 40, 3000, 64)])
def test_plan_stays_under_budget(size):
    h, w, hr, wr, c = size
    for budget in (128, 256, 512):
        plan = plan_blocks(1, c, h, w, hr, wr, memory_budget_mb=budget)
        assert plan.total_bytes <= budget * 2 ** 20
        assert min(plan.rows, plan.bx, plan.bv, plan.bu) >= 1


def test_plan_refuses_an_impossible_budget():
    with pytest.raises(InputError, match="memory_budget_mb"):
        plan_blocks(1, 256, 600, 600, 600, 600, memory_budget_mb=4)


def test_bad_inputs_raise_input_error():
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(InputError):
        match_patches(x, torch.randn(1, 5, 8, 8))
    with pytest.raises(InputError):
        match_patches(x[0], x)
    with pytest.raises(InputError):
        match_patches(x, x, padding="reflect")
    with pytest.raises(InputError):
        match_patches(x, torch.randn(1, 4, 2, 8))
    with pytest.raises(InputError):
        match_patches(x, x, patch_size=2)
    with pytest.raises(InputError):
        match_patches(x, x, memory_budget_mb=0)


def test_coarse_to_fine_exact_when_the_window_covers_everything():
    torch.manual_seed(4)
    x, r = torch.randn(1, 8, 14, 15), torch.randn(1, 8, 12, 13)
    idx, score = match_coarse_to_fine(x, r, block=4, radius=20)
    assert_same_matches(x, r, idx, score)


def test_coarse_to_fine_finds_a_known_shift_in_real_features(real_features):
    fi, _ = real_features
    inp, ref = fi[..., 3:, 5:], fi[..., :-3, :-5]  # input patch (y, x) is reference patch (y + 3, x + 5)
    exact, _ = match_patches(inp, ref)
    approx, _ = match_coarse_to_fine(inp, ref, block=6, radius=3, ref_scale=2)
    h, w = exact.shape[1:]
    wr = ref.shape[3] - 2
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    inside = (ys + 3 < h) & (xs + 5 < wr)
    truth = (ys + 3) * wr + xs + 5
    assert (exact[0] == truth)[inside].float().mean() > 0.95
    assert (approx[0] == truth)[inside].float().mean() > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_cuda_equals_cpu():
    torch.manual_seed(5)
    x, r = torch.randn(2, 32, 20, 23), torch.randn(2, 32, 17, 21)
    idx, score = match_patches(x, r)
    gidx, gscore = match_patches(x.cuda(), r.cuda())
    torch.testing.assert_close(gscore.cpu(), score, atol=1e-5, rtol=0)
    assert (gidx.cpu() != idx).float().mean() < 0.01
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    match_patches(x.cuda(), r.cuda(), memory_budget_mb=16)
    assert torch.cuda.max_memory_allocated() - base <= 16 * 2 ** 20


def test_explorer_view_agrees_with_the_matcher(real_features):
    import matplotlib.pyplot as plt
    from rrsr_lib.explorers.matching import draw_default_view, match_view, matching_explorer
    fi, fr = real_features
    idx, score = match_patches(fi, fr)
    for y, x in [(0, 0), (13, 17), (27, 37)]:
        view = match_view(fi, fr, y, x, top_k=4)
        assert view["index"] == idx[0, y, x].item()
        assert abs(view["best_score"] - score[0, y, x].item()) < 1e-5
        assert [t[2] for t in view["top"]] == sorted((t[2] for t in view["top"]), reverse=True)
    img_in = (torch.rand(120, 160, 3) * 255).byte().numpy()
    fig, view = draw_default_view(fi, fr, img_in, img_in)
    assert (view["y"], view["x"]) == (14, 19) and len(fig.axes) >= 5
    plt.close(fig)
    box = matching_explorer({"vgg": (fi, fr)}, img_in, img_in)
    assert len(box.children) == 2
    plt.close("all")
    with pytest.raises(InputError):
        match_view(fi, fr, 28, 0)


def test_correspondence_lines_join_each_patch_centre_to_its_match_in_image_pixels():
    # the drawing notebook 09 and the own-images explorer share: one line per stride-th patch, from the
    # patch's centre (x + 1.5, y + 1.5) to the centre of its match (x + dx + 1.5, y + dy + 1.5), times the scale
    import matplotlib.pyplot as plt
    from matplotlib.patches import ConnectionPatch
    from rrsr_lib.explorers.matching import draw_correspondences
    g = torch.Generator().manual_seed(0)
    flow = torch.randint(-3, 4, (7, 10, 2), generator=g).float().numpy()
    score = torch.rand(7, 10, generator=g).numpy()
    fig, (a_in, a_ref) = plt.subplots(1, 2)
    assert draw_correspondences(a_in, a_ref, flow, score, scale=4, stride=3, dots=True) == 3 * 4
    lines = [a for a in fig.artists if isinstance(a, ConnectionPatch)]
    assert len(lines) == 12 and len(a_in.lines) == len(a_ref.lines) == 12
    y, x = 6, 9
    dx, dy = flow[y, x]
    last = lines[-1]
    assert last.xy1 == ((x + 1.5) * 4, (y + 1.5) * 4)
    assert last.xy2 == ((x + dx + 1.5) * 4, (y + dy + 1.5) * 4)
    assert tuple(a_ref.lines[-1].get_xydata()[0]) == last.xy2
    plt.close(fig)
    fig, (a_in, a_ref) = plt.subplots(1, 2)
    with pytest.raises(InputError, match="flow must be"):
        draw_correspondences(a_in, a_ref, flow[..., 0], score)
    plt.close(fig)


def test_half_precision_features_are_matched_in_float32_even_under_autocast():
    # mixed-precision training hands the matcher bfloat16 features from inside autocast; it must neither fail
    # nor match in bfloat16: the result is that of the same values in float32
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 32, 11, 13, generator=g).bfloat16()
    r = torch.randn(2, 32, 12, 9, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        idx, score = match_patches(x, r)
    ref_idx, ref_score = match_patches_naive(x.float(), r.float())
    assert score.dtype == torch.float32
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(score, ref_score, rtol=0, atol=1e-5)


def test_cuda_blocking_grows_to_the_budget_and_stays_under_it():
    # the CUDA knobs (no cache to fit: big blocks, 16 rows per matmul, a one-group ring) respect the budget
    for budget in (32, 512):
        plan = plan_blocks(1, 256, 83, 125, 83, 125, memory_budget_mb=budget, **_speed_knobs(torch.device("cuda"), budget))
        assert plan.total_bytes <= budget * 2 ** 20 and plan.ring_groups == 1
    cpu = plan_blocks(1, 256, 83, 125, 83, 125, **_speed_knobs(torch.device("cpu"), 512))
    cuda = plan_blocks(1, 256, 83, 125, 83, 125, **_speed_knobs(torch.device("cuda"), 512))
    assert cuda.rows * cuda.bv > 4 * cpu.rows * cpu.bv   # far fewer, larger blocks


def test_shared_reference_rows_are_handed_on_only_where_they_fit():
    # CUFED5 size: row blocks over the whole reference width, shared rows handed on (their buffers counted)
    plan = plan_blocks(1, 256, 83, 125, 83, 125)
    assert plan.reuse and plan.bu == 123 and plan.bv < 81
    # the two hand-on buffers (83 input rows x 125 columns x 2 shared rows x 125 reference columns) are planned
    without = _block_bytes(1, plan.rows, 123, plan.bv, 123, 3, 256, 4, plan.ring_groups, carry_rows=0)
    assert plan.block_bytes - without == 2 * 83 * 125 * 2 * 125 * 4
    # where the hand-on buffers would force the reference's columns to be cut, the plan goes without them
    big = plan_blocks(1, 256, 600, 600, 600, 600, memory_budget_mb=512)
    assert not big.reuse and big.total_bytes <= 512 * 2 ** 20
