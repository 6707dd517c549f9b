"""A large call's cost is measured and said before it runs; beyond the memory budget it tiles or is refused."""
import numpy as np
import pytest
import torch
from PIL import Image

from rrsr_lib.checkpoints import load_checkpoint
from rrsr_lib.cost import CallCost, LiveTensorBytes, _fit, measure_cost, plan_call
from rrsr_lib.degradation import to_tensor
from rrsr_lib.errors import InputError
from rrsr_lib.images import save_png
from rrsr_lib.sr import main, super_resolve

MIB = 2 ** 20


def test_live_tensor_bytes_counts_what_is_alive_once_per_storage():
    with LiveTensorBytes() as counter:
        a = torch.zeros(MIB // 4)                 # 1 MiB of float32
        view = a[: MIB // 8]                      # a view: no new memory
        b = torch.ones(MIB // 2)                  # 2 MiB
        assert counter.current == 3 * MIB
        del a, b                                  # `view` keeps a's storage alive
        assert counter.current == MIB
        del view
        assert counter.current == 0
        c = torch.ones(MIB // 4)
    assert counter.peak == 3 * MIB and counter.current == MIB
    del c


@pytest.mark.parametrize("s", [0.0, 1.0])
def test_the_law_is_recovered_from_four_probes(s):
    # the probes' design: a pixel of output and one of reference cost about the same (the shipped networks:
    # a = 0.00837, b = 0.00839 MiB), so each of the probes "lr" and "ref" is dominated by its own side
    law = CallCost((5.0, 0.01, 0.01, s), (0.1, 1e-4, 1e-4, s))
    o, r = (4096, 16384), (4096, 16384)
    values = {k: law.peak_mb(oo, rr) for k, (oo, rr) in
              {"small": (o[0], r[0]), "lr": (o[1], r[0]), "ref": (o[0], r[1]), "both": (o[1], r[1])}.items()}
    c, a, b, s_fit = _fit(values["small"], values["lr"], values["ref"], values["both"], o, r)
    fitted = CallCost((c, a, b, s_fit), law.seconds)
    for out_px, ref_px in [(10 ** 6, 10 ** 5), (10 ** 5, 10 ** 6), (3 * 10 ** 6, 3 * 10 ** 6)]:
        assert fitted.peak_mb(out_px, ref_px) == pytest.approx(law.peak_mb(out_px, ref_px), rel=1e-6)


LAW = CallCost((10.0, 0.01, 0.01, 0.0), (0.0, 1e-5, 1e-5, 0.0))   # 10 MB + 10 KB per pixel


def test_a_call_that_fits_runs_whole_and_one_that_does_not_is_tiled_within_the_budget():
    whole = plan_call(LAW, (100, 100), (200, 200), budget_mb=2000)
    assert whole.tile is None and whole.tiles == 1 and whole.peak_mb == pytest.approx(10 + 0.01 * 160_000)
    tiled = plan_call(LAW, (400, 600), (200, 200), budget_mb=2000)
    assert tiled.tile is not None and tiled.tiles > 1 and tiled.peak_mb <= 2000
    assert "LR tiles of" in tiled.describe(2000) and "budget 2,000 MB" in tiled.describe(2000)


def test_a_reference_over_the_budget_is_refused_naming_the_budget():
    with pytest.raises(InputError, match=r"reference \(2000x1500\) alone needs about 30,010 MB, over the memory "
                                         r"budget of 4,096 MB.*downscale or crop the reference, or raise --memory-mb"):
        plan_call(LAW, (1500, 2000), (1500, 2000), budget_mb=4096)


def test_a_given_tile_over_the_budget_is_refused():
    with pytest.raises(InputError, match=r"--tile 200 needs about 6,410 MB, over the memory budget of 1,000 MB"):
        plan_call(LAW, (400, 400), (100, 100), budget_mb=1000, tile=200)


@pytest.fixture(scope="module")
def rrsr():
    return load_checkpoint("rrsr_rec_seed0")


def test_the_measured_law_predicts_the_peak_of_a_larger_call(rrsr):
    cost = measure_cost(rrsr)
    assert measure_cost(rrsr) is cost                               # measured once per model
    gen = torch.Generator().manual_seed(1)
    lr, ref = torch.rand(1, 3, 40, 56, generator=gen), torch.rand(1, 3, 176, 208, generator=gen)
    with torch.no_grad(), LiveTensorBytes() as counter:
        rrsr(lr, ref)
    predicted = cost.peak_mb(16 * 40 * 56, 176 * 208)
    assert predicted == pytest.approx(counter.peak / MIB, rel=0.15)


@pytest.fixture
def big_pair(tmp_path):
    rng = np.random.default_rng(0)
    save_png(tmp_path / "lr.png", rng.integers(0, 256, (60, 72, 3), dtype=np.uint8))
    save_png(tmp_path / "ref.png", rng.integers(0, 256, (96, 112, 3), dtype=np.uint8))
    return tmp_path


def test_the_command_says_the_cost_and_tiles_within_memory_mb(big_pair, rrsr, capsys):
    out = big_pair / "sr.png"
    assert main(["--input", str(big_pair / "lr.png"), "--ref", str(big_pair / "ref.png"), "--out", str(out),
                 "--memory-mb", "200"]) == 0
    said = capsys.readouterr().out
    assert "LR 72x60, reference 112x96, in " in said and "budget 200 MB" in said
    tile = int(said.split("LR tiles of ")[1].split("x")[0])
    lr, ref = np.asarray(Image.open(big_pair / "lr.png")), np.asarray(Image.open(big_pair / "ref.png"))
    # the library call with the tile the command chose; up to a rounding flip, since on a busy machine the two
    # calls may run with different thread counts (rrsr_lib.device.fair_threads) and so sum in another order
    diff = np.abs(np.asarray(Image.open(out)).astype(int) - super_resolve(rrsr, lr, ref, "cpu", tile).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (said, diff.max(), (diff > 0).mean())
    assert float(said.split("about ")[1].split(" MB")[0].replace(",", "")) <= 200, said


@pytest.mark.parametrize("budget, message", [
    # RRSR's tiles share one pass over the reference (rrsr_lib.reference_grid): about 8 MB for 112x96
    ("5", "error: lr: the reference (112x96) alone needs about"),
    ("20", "error: lr: even LR tiles of 24x24 need about")])
def test_the_command_refuses_a_budget_too_small_for_the_reference_or_any_tile(big_pair, capsys, budget, message):
    out = big_pair / "out" / "sr.png"
    assert main(["--input", str(big_pair / "lr.png"), "--ref", str(big_pair / "ref.png"), "--out", str(out),
                 "--memory-mb", budget]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and f"budget of {budget} MB" in err
    assert not out.parent.exists()


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_a_budget_that_is_not_a_positive_number_is_refused(big_pair, capsys, value):
    assert main(["--input", str(big_pair / "lr.png"), "--ref", str(big_pair / "ref.png"),
                 "--out", str(big_pair / "sr.png"), "--memory-mb", value]) == 2
    assert "--memory-mb must be a positive number of MB" in capsys.readouterr().err


def test_a_small_call_is_not_slowed_by_measuring(rrsr, monkeypatch, big_pair):
    import rrsr_lib.cost as cost
    monkeypatch.setattr(cost, "measure_cost", lambda *a, **k: pytest.fail("a small call was measured"))
    lr = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    save_png(big_pair / "small.png", lr)
    assert main(["--input", str(big_pair / "small.png"), "--ref", str(big_pair / "ref.png"),
                 "--out", str(big_pair / "small_sr.png")]) == 0
    assert to_tensor(np.asarray(Image.open(big_pair / "small_sr.png"))).shape == (1, 3, 48, 64)
