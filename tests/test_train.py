"""Tests of rrsr_lib.train: parameter checks, a short run, exact resume, reciprocal and GAN steps."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toy_refsr import ToyRefSR, one_thread  # noqa: F401  (autouse fixture: one CPU thread)

from rrsr_lib.errors import InputError
from rrsr_lib.reciprocal import warped_reference
from rrsr_lib.train import PARAMETERS, Trainer, check_params, load_params, main, train


# CPU-sized run on the embedded photos: HR 32, LR 8, batch 2, a toy network
TINY = dict(dataset="embedded", hr_patch=32, lr_patch=8, ref_size=32, embedded_length=12, batch_size=2,
            val_dataset="none", lr=1e-3, log_every=1, checkpoint_every=0, progress=False, device="cpu")


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_defaults_are_the_authors_configuration():
    p = check_params()
    assert (p["iterations"], p["batch_size"], p["hr_patch"], p["lr_patch"], p["lr"]) == (255000, 9, 160, 40, 1e-4)
    assert p["lr_milestones"] == [72545, 211040] and p["lr_gamma"] == 0.1 and p["seed"] == 10
    assert (p["offset_lr_x1"], p["offset_lr_x2"], p["offset_lr_x4"]) == (1e-6, 1e-5, 1e-4)
    assert p["reciprocal_weight"] == 0.6 and p["betas"] == [0.9, 0.999]


@pytest.mark.parametrize("bad, message", [
    ({"iteratons": 5}, "unknown training parameter"),
    ({"iterations": "5"}, "must be of type int"),
    ({"iterations": 0}, "invalid value 0"),
    ({"reciprocal": 1}, "must be of type bool"),
    ({"model": "srgan"}, "one of rrsr, sisr, c2, ttsr"),
    ({"lr_milestones": [5, 3]}, "ascending"),
    ({"betas": [0.9]}, "two numbers"),
    ({"hr_patch": 160, "lr_patch": 32}, "hr_patch / 4"),
    ({"warp_min_px": 20.0}, "larger than warp_max_px"),
    ({"dataset": "cufed", "data_root": ""}, "needs data_root"),
    ({"lr": float("inf")}, "'lr' must be finite"),
    ({"lr": float("nan")}, "'lr' must be finite"),
    ({"betas": [0.9, float("nan")]}, "'betas' must be finite"),
    ({"warp_max_px": float("inf")}, "'warp_max_px' must be finite"),
    ({"iterations": [[list(range(100))] * 100] * 100}, r"must be of type int, got \[\[\[0, 1, 2, 3, 4, 5, \.\.\.\]"),
])
def test_bad_params_are_refused_with_a_clear_message(bad, message):
    with pytest.raises(InputError, match=message):
        check_params(bad)


def test_bad_parameter_files_are_refused(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text("iterations: 10\nbatchsize: 3\n")
    with pytest.raises(InputError, match=r"unknown training parameter\(s\) \['batchsize'\]"):
        load_params(f)
    f.write_text("iterations: [1\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_params(f)
    with pytest.raises(InputError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    # the command line prints one sentence, no traceback
    f.write_text("iterations: 10\nbatchsize: 3\n")
    assert main(["--params", str(f)]) == 2
    assert "batchsize" in capsys.readouterr().err


def test_a_short_run_brings_the_loss_down(tmp_path):
    torch.manual_seed(0)
    r = train(dict(TINY, iterations=12, reciprocal=False, log_every=4, val_dataset="embedded", val_limit=1,
                   val_every=12, output_dir=str(tmp_path)), model=ToyRefSR())
    losses = [row["loss"] for row in r["train_log"]]
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0]
    assert r["summary"]["final_validation"]["pairs"] == 1 and r["summary"]["final_validation"]["psnr"] > 10
    assert (tmp_path / "model.pt").exists() and (tmp_path / "summary.json").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files
    torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # loads without running code


def test_a_run_can_start_from_a_shipped_checkpoint_and_refuses_one_of_another_network(tmp_path, capsys):
    from rrsr_lib.checkpoints import load_checkpoint

    shipped = load_checkpoint("sisr_plain_seed0").state_dict()
    # one step at a negligible learning rate: the trained weights are the checkpoint's, not a fresh network's
    r = train(dict(TINY, model="sisr", model_config="small", iterations=1, lr=1e-12, reciprocal=False,
                   init_weights="checkpoints/sisr_plain_seed0", output_dir=str(tmp_path / "ft")))
    assert "started from checkpoints/sisr_plain_seed0 (sisr small, 2000 steps)" in capsys.readouterr().out
    trained = r["model"].state_dict()
    assert max((trained[k].cpu() - v).abs().max().item() for k, v in shipped.items()) < 1e-6
    fresh = train(dict(TINY, model="sisr", model_config="small", iterations=1, lr=1e-12, reciprocal=False,
                       output_dir=str(tmp_path / "fresh")))["model"].state_dict()
    assert max((fresh[k].cpu() - v).abs().max().item() for k, v in shipped.items()) > 1e-2
    with pytest.raises(InputError, match=r"holds sisr \(small\), this run trains rrsr \(small\)"):
        train(dict(TINY, model="rrsr", model_config="small", iterations=1, init_weights="checkpoints/sisr_plain_seed0",
                   output_dir=str(tmp_path / "other")))
    with pytest.raises(InputError, match="is not a folder"):
        train(dict(TINY, iterations=1, init_weights="checkpoints/no_such_network", output_dir=str(tmp_path / "none")),
              model=ToyRefSR())


def test_resume_after_an_interruption_gives_the_uninterrupted_losses_exactly(tmp_path):
    # GAN variant with reciprocal learning: covers the data order, Ref_w warps, the discriminator and the
    # random mixtures of the gradient penalty (torch's generator), Adam states and the lr schedule
    params = dict(TINY, iterations=6, reciprocal=True, gan=True, pixel_warmup=3, d_channels=4, perceptual_weight=0.0,
                  lr_milestones=[5], checkpoint_every=4, embedded_length=5)
    torch.manual_seed(0)
    train(dict(params, output_dir=str(tmp_path / "straight")), model=ToyRefSR())
    torch.manual_seed(0)
    partial = train(dict(params, output_dir=str(tmp_path / "cut")), model=ToyRefSR(), stop_after=5)
    assert partial["summary"] is None and len(partial["train_log"]) == 5  # "killed" after step 5, checkpoint at 4
    torch.manual_seed(123)  # a different state before resuming must not matter
    resumed = train(dict(params, output_dir=str(tmp_path / "cut")), model=ToyRefSR())
    straight = _csv_rows(tmp_path / "straight" / "train_log.csv")
    cut = _csv_rows(tmp_path / "cut" / "train_log.csv")
    assert [r["step"] for r in cut] == [str(s) for s in range(1, 7)]  # step 5 was redone, not logged twice
    columns = ["loss", "l1", "reciprocal", "gan_g", "critic", "gp", "lr"]
    assert [[r[c] for c in columns] for r in cut] == [[r[c] for c in columns] for r in straight]
    assert float(straight[-1]["critic"]) != 0 and float(straight[-1]["reciprocal"]) > 0
    assert float(straight[-1]["lr"]) == pytest.approx(1e-4)  # x0.1 after the milestone
    final_a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    final_b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert resumed["summary"]["iterations"] == 6
    # resuming with parameters that change the run is refused
    with pytest.raises(InputError, match="other values"):
        train(dict(params, output_dir=str(tmp_path / "cut"), lr=5e-4), model=ToyRefSR())


def test_reciprocal_step_loss_is_l1_plus_0_6_times_the_second_pass(tmp_path):
    torch.manual_seed(0)
    model = ToyRefSR()
    trainer = Trainer(check_params(TINY, output_dir=str(tmp_path), lr=1e-12), model=model)
    g = torch.Generator().manual_seed(1)
    hr, ref = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    batch = {"hr": hr, "lr": F.avg_pool2d(hr, 4), "ref": ref}
    batch["ref_w"], batch["lr_ref_w"] = warped_reference(ref, np.random.default_rng(0))
    with torch.no_grad():
        sr = model(batch["lr"], ref)
        expected_rec = (model(batch["lr_ref_w"], sr) - batch["ref_w"]).abs().mean().item()
        expected_l1 = (sr - hr).abs().mean().item()
    logs = trainer.step(batch)
    assert logs["l1"] == pytest.approx(expected_l1, rel=1e-6)
    assert logs["reciprocal"] == pytest.approx(expected_rec, rel=1e-6)
    assert logs["loss"] == pytest.approx(expected_l1 + 0.6 * expected_rec, rel=1e-6)
    # without Ref_w in the batch the step refuses to run reciprocal learning
    with pytest.raises(InputError, match="ref_w"):
        trainer.step({k: batch[k] for k in ("hr", "lr", "ref")})


def test_every_parameter_has_a_meaning_and_a_valid_default():
    for name, (default, typ, rule, allowed, meaning) in PARAMETERS.items():
        assert meaning, name
    check_params()  # all defaults pass their own rules


def test_command_line_trains_from_a_parameter_file(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    lines = [f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY.items()]
    f.write_text("\n".join(lines + ["iterations: 2", "model: sisr", "model_config: small",
                                     f"output_dir: {tmp_path / 'out'}"]))
    # --set takes several values, and may be repeated: every override counts
    assert main(["--params", str(f), "--set", "reciprocal=false", "val_dataset=embedded", "--set", "val_limit=1"]) == 0
    assert '"iterations": 2' in capsys.readouterr().out
    assert len(_csv_rows(tmp_path / "out" / "train_log.csv")) == 2
    assert len(_csv_rows(tmp_path / "out" / "val_log.csv")) == 1


def test_offset_parameters_get_the_authors_per_scale_learning_rates(tmp_path):
    from rrsr_lib.models import offset_scale

    trainer = Trainer(check_params(TINY, model="c2", model_config="small", lr_milestones=[1], output_dir=str(tmp_path)))
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert {k: g["lr"] for k, g in groups.items()} == {"main": 1e-3, "offset_x1": 1e-6, "offset_x2": 1e-5,
                                                       "offset_x4": 1e-4}
    for name, prm in trainer.model.named_parameters():
        if prm.requires_grad:
            group = f"offset_{offset_scale(name)}" if offset_scale(name) else "main"
            assert any(prm is q for q in groups[group]["params"]), name
    trainer.optimizer.step()
    trainer.scheduler.step()  # one milestone passed: every group x0.1
    assert groups["offset_x1"]["lr"] == pytest.approx(1e-7) and groups["main"]["lr"] == pytest.approx(1e-4)


# ---------------------------------------------------------------------------------------------------------
# parameter files
# ---------------------------------------------------------------------------------------------------------
PARAMS_DIR = Path(__file__).resolve().parent.parent / "notebooks" / "params"
RRSR_MD = Path(__file__).resolve().parent.parent.parent / "shared" / "paper" / "RRSR.md"

# (parameter, value in paper_rec.yaml, the sentence of RRSR.md it comes from)
RRSR_REC = [
    ("model", "rrsr", "RRSR"),
    ("model_config", "paper", "Restoration network, 64 channels"),
    ("reciprocal", True, "Loss = L1(SR, HR) + 0.6 * L1(Ref_w_hat, Ref_w)"),
    ("reciprocal_weight", 0.6, "Loss = L1(SR, HR) + 0.6 * L1(Ref_w_hat, Ref_w)"),
    ("pixel_weight", 1.0, '"-rec" (PSNR-oriented): L1 x1 + reciprocal 0.6.'),
    ("warp_min_px", 5.0, "each corner moved 5-19 px with random sign"),
    ("warp_max_px", 19.0, "each corner moved 5-19 px with random sign"),
    ("dataset", "cufed", "CUFED training set (11,871 input/ref pairs of 160x160"),
    ("hr_patch", 160, "HR patch 160"),
    ("lr_patch", 40, "LR patch 40"),
    ("ref_size", 160, "Ref resized to 160x160"),
    ("augment", True, "joint flips and transpose"),
    ("batch_size", 9, "batch 9"),
    ("lr", 1e-4, "Adam(0.9, 0.999) lr 1e-4"),
    ("betas", [0.9, 0.999], "Adam(0.9, 0.999) lr 1e-4"),
    ("iterations", 255000, "255k iterations"),
    ("lr_milestones", [72545, 211040], "lr x0.1 at 72,545 and 211,040"),
    ("lr_gamma", 0.1, "lr x0.1 at 72,545 and 211,040"),
    ("offset_lr_x1", 1e-6, "Offset learning rates: 1e-6 at x1, 1e-5 at x2, 1e-4 at x4"),
    ("offset_lr_x2", 1e-5, "Offset learning rates: 1e-6 at x1, 1e-5 at x2, 1e-4 at x4"),
    ("offset_lr_x4", 1e-4, "Offset learning rates: 1e-6 at x1, 1e-5 at x2, 1e-4 at x4"),
    ("seed", 10, "seed 10"),
    ("val_dataset", "cufed5", "validation on CUFED5 every 5k"),
    ("val_every", 5000, "validation on CUFED5 every 5k"),
    ("gan", False, '"-rec" (PSNR-oriented): L1 x1 + reciprocal 0.6.'),
]
# the GAN variant adds these (paper_gan.yaml)
RRSR_GAN = [
    ("gan", True, "GAN variant: 10k iterations of the pixel losses first"),
    ("pixel_warmup", 10000, "GAN variant: 10k iterations of the pixel losses first"),
    ("perceptual_weight", 1e-4, "perceptual (VGG19 relu5_1, Frobenius-norm, x1e-4)"),
    ("gan_weight", 1e-6, "WGAN-GP (generator x1e-6, gradient penalty 10)"),
    ("gp_weight", 10.0, "WGAN-GP (generator x1e-6, gradient penalty 10)"),
    ("d_channels", 32, "Discriminator: 32 base channels, BN, LeakyReLU(0.2), lr 1e-4"),
    ("d_lr", 1e-4, "Discriminator: 32 base channels, BN, LeakyReLU(0.2), lr 1e-4"),
    ("reciprocal_weight", 0.6, "+ WGAN-GP (generator x1e-6, gradient penalty 10) + reciprocal 0.6"),
]


def _yaml(name):
    import yaml

    return yaml.safe_load((PARAMS_DIR / name).read_text())


@pytest.mark.parametrize("name, facts", [("paper_rec.yaml", RRSR_REC), ("paper_gan.yaml", RRSR_GAN)])
def test_paper_parameter_files_match_rrsr_md_value_by_value(name, facts):
    values = _yaml(name)
    load_params(PARAMS_DIR / name)  # valid as a whole
    for key, expected, _ in facts:
        assert values[key] == expected, f"{name}: {key} = {values[key]!r}, RRSR.md says {expected!r}"
    if RRSR_MD.exists():  # the quoted sentences are really in RRSR.md (whitespace-insensitive)
        text = " ".join(RRSR_MD.read_text().split())
        for key, _, quote in facts:
            assert " ".join(quote.split()) in text, f"{key}: {quote!r} not found in RRSR.md"
    # the GAN file differs from the -rec file only in the GAN switch and the output folder
    if name == "paper_gan.yaml":
        rec = _yaml("paper_rec.yaml")
        assert {k for k in rec if rec[k] != values[k]} == {"gan", "output_dir"}


def test_every_model_has_a_reciprocal_on_off_pair_of_paper_files():
    rec = _yaml("paper_rec.yaml")
    for model in ("rrsr", "sisr", "c2", "ttsr"):
        pair = ["paper_rec.yaml", "paper_plain.yaml"] if model == "rrsr" else [f"paper_{model}_rec.yaml",
                                                                               f"paper_{model}_plain.yaml"]
        for f, on in zip(pair, (True, False)):
            values = load_params(PARAMS_DIR / f)
            assert values["model"] == model and values["reciprocal"] is on
            changed = {k for k in rec if rec[k] != values[k]}
            assert changed <= {"model", "reciprocal", "output_dir"}, (f, changed)


def test_all_parameter_files_are_valid_and_complete():
    files = sorted(PARAMS_DIR.glob("*.yaml"))
    assert {"cpu_demo.yaml", "notebook_07.yaml", "paper_rec.yaml", "paper_gan.yaml"} <= {f.name for f in files}
    for f in files:
        if f.name.startswith(("paper_", "cpu_demo", "notebook_07")):
            assert set(_yaml(f.name)) == set(PARAMETERS), f.name  # every value written out
            load_params(f)


def _notebook_07_parameters() -> dict:
    import ast
    import json

    nb = json.loads((PARAMS_DIR.parent / "07_reciprocal_training.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    return {node.target.id: ast.literal_eval(node.value) for node in ast.parse("".join(cell["source"])).body}


def test_notebook_07_names_a_parameter_file_and_overrides_instead_of_repeating_every_parameter():
    declared = _notebook_07_parameters()
    assert set(declared) == {"params_file", "overrides"}
    assert declared["overrides"] == {}
    # the default file (a path from the project root, like every path parameter) holds valid CPU defaults
    defaults = load_params(PARAMS_DIR.parent.parent / declared["params_file"])
    assert defaults["model_config"] == "small" and defaults["iterations"] <= 50


def test_the_overrides_of_notebook_07_go_through_the_one_validator():
    path = PARAMS_DIR / "notebook_07.yaml"
    assert load_params(path, iterations=3)["iterations"] == 3
    with pytest.raises(InputError, match=r"unknown training parameter\(s\) \['iteration'\]"):
        load_params(path, iteration=3)
    with pytest.raises(InputError, match="'lr' must be finite"):
        load_params(path, lr=float("inf"))


def test_a_learning_rate_far_above_the_authors_is_announced(capsys):
    check_params(lr=1e-3)
    assert capsys.readouterr().out == ""
    check_params(lr=1000.0)
    assert "lr = 1000 is far above the authors' 0.0001" in capsys.readouterr().out


def test_a_diverging_run_stops_with_one_message_naming_the_step_and_the_kept_checkpoint(tmp_path):
    from rrsr_lib.errors import DivergenceError
    params = dict(TINY, iterations=8, checkpoint_every=2, output_dir=str(tmp_path / "run"), reciprocal=False)
    model = ToyRefSR()
    step = Trainer.step

    def poisoned(self, batch):   # the loss becomes NaN at step 5, as with a learning rate that blows up
        if self.step_count == 4:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return step(self, batch)
    Trainer.step = poisoned
    try:
        with pytest.raises(DivergenceError, match=r"step 5: the loss is not finite \(l1 nan\): training diverged; this step "
                                                  r"updated nothing; the last good checkpoint is kept: .*checkpoint\.pt "
                                                  r"\(step 4\); lower lr \(now 0\.001\)"):
            train(params, model=model)
    finally:
        Trainer.step = step
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["trainer"]["step"] == 4


def test_a_restart_that_starts_over_moves_the_old_run_aside_before_its_first_step(tmp_path, capsys):
    # resume false, interrupted before its first checkpoint: a later resume must start over, not jump to the
    # old run's step with the new run's log
    params = dict(TINY, iterations=4, checkpoint_every=2, reciprocal=False, output_dir=str(tmp_path))
    train(params, model=ToyRefSR())
    assert (tmp_path / "checkpoint.pt").exists()
    partial = train(dict(params, resume=False, checkpoint_every=0), model=ToyRefSR(), stop_after=1)
    assert partial["summary"] is None
    assert "earlier run's checkpoint.pt, train_log.csv, model.pt, summary.json moved to" in capsys.readouterr().out
    aside = tmp_path / "replaced_1"
    assert {p.name for p in aside.iterdir()} == {"checkpoint.pt", "train_log.csv", "model.pt", "summary.json"}
    assert not (tmp_path / "checkpoint.pt").exists()
    resumed = train(params, model=ToyRefSR())
    assert [r["step"] for r in resumed["train_log"]] == [1, 2, 3, 4]


@pytest.mark.parametrize("content, message", [
    (b"", r"checkpoint\.pt is empty \(0 bytes\)"),
    (b"PK\x03\x04 cut", r"checkpoint\.pt cannot be read: it is truncated"),
])
def test_a_damaged_training_checkpoint_is_named_with_how_to_start_over(tmp_path, content, message):
    (tmp_path / "checkpoint.pt").write_bytes(content)
    with pytest.raises(InputError, match=message + r".*delete it \(or set resume: false\)"):
        train(dict(TINY, iterations=2, output_dir=str(tmp_path)), model=ToyRefSR())


def test_a_training_checkpoint_that_is_not_ours_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "checkpoint.pt")
    with pytest.raises(InputError, match="is not one that rrsr_lib.train wrote"):
        train(dict(TINY, iterations=2, output_dir=str(tmp_path)), model=ToyRefSR())


@pytest.mark.parametrize("text, expected", [
    ("seed: 010", {"seed": 10}),                    # YAML 1.1: 8 (octal)
    ("iterations: 1:30", {"iterations": "1:30"}),   # YAML 1.1: 90 (base 60); refused by check_params as a str
    ("lr: 1e-3", {"lr": 1e-3}),                     # YAML 1.1: the string "1e-3"
    ("lr: .inf", {"lr": float("inf")}),
    ("reciprocal: no", {"reciprocal": "no"}),       # YAML 1.1: False
    ("seed: 0x1f", {"seed": 31}),
    ("betas: [0.9, 0.999]", {"betas": [0.9, 0.999]}),
])
def test_parameter_yaml_has_the_numbers_people_mean(text, expected):
    from rrsr_lib.yaml_params import parse_yaml
    assert parse_yaml(text, "p.yaml") == expected


@pytest.mark.parametrize("content, message", [
    (b"a: &x [1, 2]\nb: *x\n", r"uses a YAML alias \(\*x\)"),
    (b"iterations: [&a [1, 1, 1, 1], &b [*a, *a, *a, *a], &c [*b, *b, *b, *b]]\n", r"uses a YAML alias \(\*a\)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00binary", r"not a text file \(not UTF-8\)"),
    (b"iterations: [1,\n", r"not valid YAML \(.*\); fix its syntax"),
    (b"x: " + b"1" * (1 << 20) + b"\n", r"more than a parameter file holds"),
])
def test_bad_parameter_files_give_one_bounded_message(tmp_path, content, message):
    f = tmp_path / "p.yaml"
    f.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        load_params(f)
    assert len(str(info.value)) < 400


def test_set_values_are_parsed_as_parameter_files_are(tmp_path, capsys):
    from rrsr_lib.train_params import parse_overrides
    assert parse_overrides(["lr=1e-3", "seed=010", "lr_milestones=[5, 9]"]) == {"lr": 1e-3, "seed": 10, "lr_milestones": [5, 9]}
    with pytest.raises(InputError, match=r"--set iterations: not valid YAML"):
        parse_overrides(["iterations=[1,"])
    f = tmp_path / "p.yaml"
    f.write_text("iterations: 2\n")
    assert main(["--params", str(f), "--set", "iterations=[1,"]) == 2
    assert "not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["a file", "under a file"])
def test_an_output_dir_that_cannot_be_used_is_named(tmp_path, case):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if case == "a file" else tmp_path / "f" / "run"
    with pytest.raises(InputError, match=r"output_dir .*f.* cannot be used \(.*\); choose a folder you can write to"):
        train(dict(TINY, iterations=1, output_dir=str(out)), model=ToyRefSR())


def test_a_bad_image_read_in_a_loader_worker_gives_its_own_message(tmp_path, monkeypatch):
    import rrsr_lib.train as tr

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            raise InputError(f"/data/CUFED/input/{i:03d}.png: is truncated or corrupt; download or export it again")
    monkeypatch.setattr(tr, "training_set", lambda p: Broken())
    with pytest.raises(InputError) as info:
        train(dict(TINY, iterations=2, num_workers=1, reciprocal=False, output_dir=str(tmp_path)), model=ToyRefSR())
    assert str(info.value).startswith("/data/CUFED/input/") and "is truncated or corrupt" in str(info.value)
    assert "Traceback" not in str(info.value) and "worker" not in str(info.value)


def test_the_number_of_loader_workers_changes_nothing_but_the_speed(tmp_path):
    params = dict(TINY, iterations=4, reciprocal=True, embedded_length=6)
    logs = []
    for workers in (0, 2):
        torch.manual_seed(0)
        r = train(dict(params, num_workers=workers, output_dir=str(tmp_path / f"w{workers}")), model=ToyRefSR())
        logs.append([(row["loss"], row["reciprocal"]) for row in r["train_log"]])
    assert logs[0] == logs[1] and len(logs[0]) == 4


def test_cpu_amp_trains_in_bfloat16_with_the_deformable_sampling_kept_in_float32(tmp_path):
    from rrsr_lib.alignment import deform_conv_sampling
    from rrsr_lib.registry import build_model
    g = torch.Generator().manual_seed(2)
    # the sampling Function casts to float32 under CPU autocast: the same numbers as a float32 call
    x, off = torch.rand(1, 16, 9, 9, generator=g), torch.randn(1, 2 * 9 * 2, 9, 9, generator=g)
    mask, w = torch.rand(1, 9 * 2, 9, 9, generator=g), torch.randn(8, 16, 3, 3, generator=g)
    x.requires_grad_(True)
    plain = deform_conv_sampling(x, off, mask, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = deform_conv_sampling(x, off, mask, w)
    assert cast.dtype == torch.float32 and torch.equal(cast, plain)
    # one reciprocal step of the small RRSR, float32 and bfloat16, from the same weights and batch
    hr, ref = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    batch = {"hr": hr, "lr": F.avg_pool2d(hr, 4), "ref": ref}
    batch["ref_w"], batch["lr_ref_w"] = warped_reference(ref, np.random.default_rng(0))
    logs = {}
    for amp in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(check_params(TINY, model="rrsr", model_config="small", reciprocal=True, cpu_amp=amp,
                                       output_dir=str(tmp_path / str(amp))), model=build_model("rrsr", "small"))
        assert trainer.amp_dtype == (torch.bfloat16 if amp else None)
        logs[amp] = trainer.step(batch)
    # bfloat16 keeps 8 bits of mantissa: the losses agree to about a percent, not to float32 rounding
    for key in ("l1", "reciprocal"):
        assert logs[True][key] == pytest.approx(logs[False][key], rel=3e-2), key
        assert logs[True][key] != logs[False][key], f"{key}: autocast changed nothing"
