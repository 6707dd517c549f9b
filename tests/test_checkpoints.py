"""Shipped checkpoints: safe loading (weights_only), checksums, clear errors, the recipe, and packing."""
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from rrsr_lib import checkpoint_training as ckt
from rrsr_lib import checkpoints as ck
from rrsr_lib.errors import InputError
from rrsr_lib.train import load_params

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints"
SISR = {"model": "sisr", "config": "small", "matching": "contrastive", "vgg_weights": "vgg16"}


def _sisr(seed=0):
    torch.manual_seed(seed)
    return ck.build_architecture(SISR)


def test_pack_stores_int8_per_output_channel_and_unpacks_within_half_a_step():
    model = _sisr()
    packed = ck.pack_state_dict(model)
    state = model.state_dict()
    assert packed["int8"], "large weights must be quantized"
    for k, q in packed["int8"].items():
        assert q.dtype == torch.int8 and packed["scale"][k].shape == (q.shape[0],)
    restored = ck.unpack_state_dict(packed)
    assert set(restored) == set(state)
    for k, v in state.items():
        if k in packed["int8"]:
            step = packed["scale"][k].view(-1, *[1] * (v.dim() - 1))
            assert ((restored[k] - v).abs() <= step / 2 + 1e-7).all(), k
        else:
            torch.testing.assert_close(restored[k], v, rtol=0, atol=0)


def test_frozen_parts_are_not_stored_but_fingerprinted():
    arch = {"model": "rrsr", "config": "small", "matching": "contrastive", "vgg_weights": "vgg16"}
    a, b = ck.build_architecture(arch), ck.build_architecture(arch)
    prefixes = ck.frozen_prefixes(a)
    assert "texture." in prefixes and "matcher." in prefixes
    packed = ck.pack_state_dict(a)
    names = list(packed["float"]) + list(packed["int8"])
    assert names and not any(n.startswith(tuple(prefixes)) for n in names)
    assert ck.frozen_fingerprint(a) == ck.frozen_fingerprint(b)
    with torch.no_grad():
        b.texture.body[0].weight[0, 0, 0, 0] += 1.0
    assert ck.frozen_fingerprint(a) != ck.frozen_fingerprint(b)


def test_save_then_load_gives_the_dequantized_network(tmp_path):
    model = _sisr(3)
    info = ck.save_checkpoint(model, tmp_path / "sisr_plain_seed0", SISR)
    data = torch.load(tmp_path / "sisr_plain_seed0" / "model.pt", weights_only=True)
    assert data["format"] == ck.FORMAT and info["sha256"] == ck.sha256_file(tmp_path / "sisr_plain_seed0" / "model.pt")
    loaded = ck.load_checkpoint("sisr_plain_seed0", root=tmp_path)
    assert not loaded.training
    reference = _sisr(0)
    reference.load_state_dict(ck.unpack_state_dict(data))
    lr, ref = torch.rand(1, 3, 9, 11), torch.rand(1, 3, 36, 44)
    with torch.no_grad():
        torch.testing.assert_close(loaded(lr, ref), reference.eval()(lr, ref))


def test_missing_checkpoint_names_the_command_that_trains_it(tmp_path):
    with pytest.raises(InputError, match=r"python scripts/train_checkpoints.py rrsr_rec_seed0"):
        ck.load_checkpoint("rrsr_rec_seed0", root=tmp_path)
    with pytest.raises(InputError, match="shipped checkpoints are"):
        ck.checkpoint_spec("rrsr_rec_seed9")


def test_changed_file_is_refused(tmp_path):
    ck.save_checkpoint(_sisr(), tmp_path / "sisr_plain_seed0", SISR)
    path = tmp_path / "sisr_plain_seed0" / "model.pt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="has changed"):
        ck.load_checkpoint("sisr_plain_seed0", root=tmp_path)


def test_unpack_refuses_other_files():
    with pytest.raises(InputError, match="not an rrsr checkpoint"):
        ck.unpack_state_dict({"weight": torch.zeros(3)})


def test_recipe_is_the_same_for_every_checkpoint_and_valid_for_train():
    shared = None
    for name in ck.checkpoint_names():
        spec = ck.checkpoint_spec(name)
        p = load_params_from_text(ckt.params_text(name))
        assert (p["model"], p["reciprocal"], p["seed"]) == (spec["model"], spec["reciprocal"], spec["seed"])
        common = {k: v for k, v in p.items() if k not in ("model", "reciprocal", "seed", "output_dir")}
        shared = shared or common
        assert common == shared, f"{name} does not use the shared recipe"
    assert shared["val_dataset"] == "none", "the test pairs must not be used while training"


def test_the_recipe_is_the_best_recipe_trial_and_recipe_1_is_kept_exactly():
    # recipe 2 is the reciprocal float32 trial that scored best on whole images (results/recipe_trials.json)
    # within the hour; the plain trials (more steps, what reciprocal learning costs) and the bfloat16 ones
    # (cpu_amp: the precision, not the recipe) answer other questions
    trials = json.loads((ROOT / "results" / "recipe_trials.json").read_text())["runs"]
    params = {k: load_params(ROOT / v["params"]) for k, v in trials.items() if "params" in v}
    within_hour = {k: v for k, v in trials.items() if k in params and k.startswith("rrsr_")
                   and v["wall_seconds"] <= 3900 and params[k]["reciprocal"] and not params[k]["cpu_amp"]}
    best = max(within_hour, key=lambda k: within_hour[k]["psnr_y"])
    trial = load_params(ROOT / within_hour[best]["params"])
    p = load_params_from_text(ckt.params_text("rrsr_rec_seed0"))
    assert {k: v for k, v in p.items() if p[k] != trial[k]} == {"output_dir": "runs/checkpoints/rrsr_rec_seed0"}
    # recipe 1's values, which the checkpoints trained before 2026-12-03 record in their params.yaml
    old = load_params_from_text(ckt.params_text("rrsr_rec_seed0", 1))
    assert (old["hr_patch"], old["iterations"], old["lr_milestones"]) == (32, 300, [240])
    with pytest.raises(InputError, match="recipe 7 is unknown"):
        ck.recipe(7)


def load_params_from_text(text):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "p.yaml").write_text(text)
        return load_params(Path(d) / "p.yaml")


def test_train_checkpoint_end_to_end_tiny(tmp_path):
    info = ckt.train_checkpoint("sisr_rec_seed0", root=tmp_path, iterations=2, log_every=1,
                               output_dir=str(tmp_path / "run"), progress=False, lr_milestones=[1])
    folder = tmp_path / "sisr_rec_seed0"
    assert info["iterations"] == 2 and info["overrides"]["iterations"] == 2
    assert (folder / "train_log.csv").read_text().count("\n") == 3  # header + 2 steps
    assert load_params(folder / "params.yaml")["model"] == "sisr"
    model = ck.load_checkpoint("sisr_rec_seed0", root=tmp_path)
    assert model(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------------- shipped files
def _present():
    return [n for n in ck.checkpoint_names() if (SHIPPED / n / "model.pt").is_file()]


def test_every_checkpoint_ships_within_the_size_limits():
    missing = [n for n in ck.checkpoint_names() if n not in _present()]
    assert not missing, f"checkpoints missing: {missing}; train them with python scripts/train_checkpoints.py"
    sizes = {n: (SHIPPED / n / "model.pt").stat().st_size for n in _present()}
    assert max(sizes.values()) <= 5_000_000, sizes
    total = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert total <= 40_000_000, f"checkpoints/ holds {total / 1e6:.1f} MB (limit 40 MB)"


@pytest.mark.parametrize("name", ck.checkpoint_names())
def test_shipped_checkpoint_is_complete_and_checksummed(name):
    folder = SHIPPED / name
    if not (folder / "model.pt").is_file():
        pytest.fail(f"{folder} is missing; train it with python scripts/train_checkpoints.py {name}")
    info = json.loads((folder / "info.json").read_text())
    assert info["sha256"] == ck.sha256_file(folder / "model.pt")
    made_by = ck.checkpoint_recipe(info)
    assert isinstance(made_by, int), f"{name} was not trained from a recipe: {made_by}"
    assert (folder / "params.yaml").read_text() == ckt.params_text(name, made_by), "params.yaml is not the recipe's"
    data = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    assert data["format"] == ck.FORMAT
    rows = (folder / "train_log.csv").read_text().strip().splitlines()
    assert int(rows[-1].split(",")[0]) == info["iterations"] == load_params(folder / "params.yaml")["iterations"]


@pytest.mark.parametrize("name", ["rrsr_rec_seed0", "c2_rec_seed0", "ttsr_rec_seed0"])
def test_shipped_checkpoint_loads_and_runs(name):
    if not (SHIPPED / name / "model.pt").is_file():
        pytest.fail(f"{name} is missing; train it with python scripts/train_checkpoints.py {name}")
    model = ck.load_checkpoint(name)
    with torch.no_grad():
        sr = model(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32))
    assert sr.shape == (1, 3, 32, 32) and 0 <= sr.min() and sr.max() <= 1


def test_a_copied_checkpoint_folder_loads_from_another_root(tmp_path):
    name = "sisr_plain_seed0"
    if not (SHIPPED / name / "model.pt").is_file():
        pytest.fail(f"{name} is missing")
    shutil.copytree(SHIPPED / name, tmp_path / name)
    a, b = ck.load_checkpoint(name), ck.load_checkpoint(name, root=tmp_path)
    x, r = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x, r), b(x, r), rtol=0, atol=0)


def test_records_without_a_variant_build_the_legacy_network_and_new_records_the_authors():
    arch = {"model": "rrsr", "config": "small", "matching": "contrastive", "vgg_weights": "vgg16"}
    legacy = ck.build_architecture(arch)
    assert (legacy.config.selection_activation, legacy.config.lr_up) == ("lrelu", "torch")
    new = ck.build_architecture(ck.spec_architecture(ck.checkpoint_spec("rrsr_rec_seed0")))
    assert (new.config.selection_activation, new.config.lr_up) == ("none", "pil")
    with pytest.raises(InputError, match="variant must be a dict"):
        ck.build_architecture({**arch, "variant": {"lr_up": "pil"}})


def _legacy_variant_checkpoints():
    # the shipped rrsr and c2 networks trained before the authors' selection block (recipe 1)
    names = []
    for name in ("rrsr_rec_seed0", "c2_rec_seed0"):
        info = json.loads((SHIPPED / name / "info.json").read_text())
        if info["architecture"].get("variant") == ck.LEGACY_VARIANT:
            names.append(name)
    return names


@pytest.mark.parametrize("name", _legacy_variant_checkpoints())
def test_shipped_checkpoints_still_compute_what_they_were_trained_and_evaluated_as(name):
    # their info.json records the variant they were trained as; their recorded PSNR on one embedded pair
    # (notebook 08, results/embedded_benchmark_images.json) is reproduced with it, not with the authors' variant
    from rrsr_lib.data import EmbeddedTestPairs
    from rrsr_lib.evaluate import PairWindows, evaluate

    info = ck.checkpoint_info(name)
    assert info["architecture"]["variant"] == ck.LEGACY_VARIANT
    rows = json.loads((ROOT / "results" / "embedded_benchmark_images.json").read_text())
    recorded = next(r for r in rows if r["checkpoint"] == name and r["name"] == "aero" and r["metric"] == "y_crop4")
    data = PairWindows(EmbeddedTestPairs(pairs=["aero"]), window=recorded["window"], margin=recorded["margin"])
    model = ck.load_checkpoint(name)
    got = evaluate(model, data, name, "embedded", metrics=("y_crop4",), progress=False)[0]["psnr_y"]
    assert got == pytest.approx(recorded["psnr_y"], abs=1e-4)   # float rounding can flip a rounded pixel
    state = model.state_dict()
    authors = ck.build_architecture({**info["architecture"], "variant": ck.AUTHORS_VARIANT})
    authors.load_state_dict(state)
    other = evaluate(authors, data, name, "embedded", metrics=("y_crop4",), progress=False)[0]["psnr_y"]
    assert abs(other - recorded["psnr_y"]) > 1e-3


@pytest.mark.parametrize("name", ["../checkpoints/rrsr_rec_seed0", "/etc", ".hidden", "a/b", ""])
def test_checkpoint_names_stay_inside_the_checkpoints_folder(name):
    with pytest.raises(InputError, match="must be a folder name inside"):
        ck.load_checkpoint(name)


@pytest.mark.parametrize("content, message", [
    (b"[]", "lacks the architecture record"),
    (b'{"architecture": 3, "sha256": "x"}', "lacks the architecture record"),
    (b"{not json", "is not valid JSON"),
    (b"\xff\xfe\x00binary", "is not valid JSON"),
])
def test_a_malformed_info_json_gives_one_message_naming_it(tmp_path, content, message):
    folder = tmp_path / "rrsr_rec_seed0"
    shutil.copytree(SHIPPED / "rrsr_rec_seed0", folder)
    (folder / "info.json").write_bytes(content)
    with pytest.raises(InputError, match=rf"info\.json {message}.*git checkout -- checkpoints/rrsr_rec_seed0"):
        ck.load_checkpoint("rrsr_rec_seed0", root=tmp_path)


@pytest.mark.parametrize("cut", [0, 1000])
def test_a_truncated_model_file_is_named_with_how_to_restore_it(tmp_path, cut):
    folder = tmp_path / "sisr_plain_seed0"
    shutil.copytree(SHIPPED / "sisr_plain_seed0", folder)
    (folder / "model.pt").write_bytes((folder / "model.pt").read_bytes()[:cut])
    with pytest.raises(InputError, match="has changed: its sha256"):
        ck.load_checkpoint("sisr_plain_seed0", root=tmp_path)
    with pytest.raises(InputError, match=r"model\.pt (is empty|cannot be read).*git checkout -- checkpoints/sisr_plain_seed0"):
        ck.load_checkpoint("sisr_plain_seed0", root=tmp_path, verify=False)


def test_the_checkpoints_readme_table_is_the_one_their_info_json_gives():
    text = (SHIPPED / "README.md").read_text()
    table = text.split(ckt.TABLE_START, 1)[1].split(ckt.TABLE_END, 1)[0]
    assert table.strip() == ckt.readme_table().strip(), \
        "checkpoints/README.md is out of date: run python scripts/train_checkpoints.py --readme"


def test_notebook_07_starts_from_rrsr_rec_seed0s_recipe_stopped_after_50_steps():
    folder = SHIPPED / "rrsr_rec_seed0" / "step50"
    info, full = ck.checkpoint_info("step50", folder.parent), ck.checkpoint_info("rrsr_rec_seed0")
    assert info["architecture"] == full["architecture"] and info["spec"] == full["spec"]
    assert info["recipe"] == full["recipe"] == ck.RECIPE_VERSION
    assert info["iterations"] == info["overrides"]["iterations"] == 50 and full["iterations"] == 2000
    assert (folder / "params.yaml").read_text() == (SHIPPED / "rrsr_rec_seed0" / "params.yaml").read_text()
    assert (folder / "model.pt").stat().st_size <= 5_000_000
    ck.load_checkpoint("step50", root=folder.parent)   # sha256 and frozen parts checked
    defaults = load_params(ROOT / "notebooks" / "params" / "notebook_07.yaml")
    assert defaults["init_weights"] == "checkpoints/rrsr_rec_seed0/step50"
    # the data it fine-tunes on is the recipe's (only the optimizer and the number of steps differ)
    recipe = load_params(SHIPPED / "rrsr_rec_seed0" / "params.yaml")
    same = ("model", "model_config", "reciprocal", "reciprocal_weight", "warp_min_px", "warp_max_px",
            "embedded_levels", "hr_patch", "lr_patch", "ref_size", "batch_size", "augment")
    assert {k: defaults[k] for k in same} == {k: recipe[k] for k in same}


def test_an_early_stop_needs_the_names_of_the_runs_to_stop():
    import runpy
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "scripts" / "train_checkpoints.py"), run_name="not_main")["main"](["--early", "50"])
    assert stop.value.code == 2
