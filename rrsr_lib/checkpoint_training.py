"""Making the shipped checkpoints: their params.yaml from the recipe, and the training run that packs one.

rrsr_lib.checkpoints says what each shipped checkpoint is (:data:`rrsr_lib.checkpoints.CHECKPOINTS`), the
recipe they share (:data:`rrsr_lib.checkpoints.RECIPE`) and how one is stored and loaded. This module makes
them: :func:`params_text` writes a checkpoint's training parameter file (every parameter of
rrsr_lib.train.PARAMETERS, the recipe's values and comments; a shipped ``checkpoints/<name>/params.yaml`` equals
it, tests/test_checkpoints.py), :func:`write_params` saves it, and :func:`train_checkpoint` trains the network
from it and packs the result into ``checkpoints/<name>/``. ``python scripts/train_checkpoints.py`` runs it for
every checkpoint.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoints import (RECIPE_VERSION, build_architecture, recipe, checkpoint_spec, checkpoints_dir, save_checkpoint,
                          spec_architecture)
from .errors import InputError
from .figures import project_root
from .files import atomic_output, atomic_write_text

__all__ = ["params_text", "write_params", "train_checkpoint", "readme_table", "write_readme_table"]


def _yaml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:.1e}"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    return str(v)


def _header(name: str, version: int) -> list[str]:
    """The comment lines under the first of a params.yaml (recipe 1's files were written with these words)."""
    if version == 1:
        return ["# The recipe shared by every shipped checkpoint (rrsr_lib.checkpoints.RECIPE): same data, patch, batch,",
                "# steps and schedule for every model. Retrain: python scripts/train_checkpoints.py " + name]
    return [f"# Recipe {version} (rrsr_lib.checkpoints.recipe), shared by every checkpoint trained with it: same data,",
            "# patch, batch, steps and schedule for every model; info.json records the recipe.",
            "# Retrain: python scripts/train_checkpoints.py " + name]


def params_text(name: str, recipe_version: int = RECIPE_VERSION) -> str:
    """The params.yaml of a shipped checkpoint: every parameter of rrsr_lib.train.PARAMETERS, with the
    values and comments of recipe ``recipe_version`` (authors' values elsewhere). Parsed by
    rrsr_lib.train.load_params."""
    from .train import PARAMETERS

    spec = checkpoint_spec(name)
    arch_note = f"architecture: {spec['model']} '{spec['config']}' (info.json)"
    if spec["config"] != "small":
        arch_note += "; built by rrsr_lib.checkpoints (train's model_config names its base)"
    per_run = {"model": (spec["model"], arch_note),
               "model_config": ("small", "CPU-sized configuration: same code as 'paper', smaller numbers"),
               "reciprocal": (spec["reciprocal"], "reciprocal second pass on/off"),
               "seed": (spec["seed"], ""),
               "output_dir": (f"runs/checkpoints/{name}", "training folder; model.pt is packed into checkpoints/")}
    lines = [f"# checkpoint {name}: {spec['model']} ({spec['config']}), reciprocal learning "
             f"{'on' if spec['reciprocal'] else 'off'}, seed {spec['seed']}" + (f"; {spec['note']}" if spec["note"] else ""),
             *_header(name, recipe_version)]
    shared = recipe(recipe_version)
    for key, (default, *_rest) in PARAMETERS.items():
        value, comment = per_run.get(key) or shared.get(key) or (default, "")
        line = f"{key}: {_yaml_value(value)}"
        lines.append(f"{line:<28} # {comment}" if comment else line)
    return "\n".join(lines) + "\n"


def write_params(name: str, root: str | Path | None = None) -> Path:
    """Write ``checkpoints/<name>/params.yaml`` from the recipe (see :func:`params_text`); returns its path."""
    from .train import load_params

    root = Path(root) if root is not None else checkpoints_dir()
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    atomic_write_text(path, params_text(name))
    load_params(path)  # the file must be valid for rrsr_lib.train
    return path


def train_checkpoint(name: str, root: str | Path | None = None, params_file: str | Path | None = None,
                     threads: int | None = 1, folder: str | Path | None = None, **overrides) -> dict:
    """Train checkpoint ``name`` from its params.yaml and pack it into ``root/<name>/``.

    params_file: the parameter file to train from (default: the current recipe's, :func:`params_text`, written
    to ``runs/checkpoint_params/<name>/params.yaml``; the shipped params.yaml is replaced only when the new
    checkpoint is packed). root: where the packed checkpoint goes (default: checkpoints_dir(); give
    another folder, e.g. runs/retrained, to keep the shipped checkpoints). overrides: training parameters
    that replace the file's (e.g. iterations=50); recorded in info.json. threads: torch CPU threads during
    training (1 is fastest on a shared 2-core machine; None: leave torch's setting). folder: where to pack it
    (default ``root/<name>``), e.g. ``checkpoints/rrsr_rec_seed0/step50`` for the same run stopped early.
    Returns the info dict (architecture, sha256, bytes, train_seconds, ...).
    """
    from .train import load_params, train

    spec = checkpoint_spec(name)
    root = Path(root) if root is not None else checkpoints_dir()
    if params_file is None:
        params_file = write_params(name, project_root() / "runs" / "checkpoint_params")
    params_file = Path(params_file)
    # info.json records the recipe when the file is the recipe's, else the file it was trained from
    made_by = RECIPE_VERSION if params_file.read_text() == params_text(name) else f"custom: {params_file}"
    p = load_params(params_file, **overrides)
    if p["model"] != spec["model"] or p["reciprocal"] != spec["reciprocal"] or p["seed"] != spec["seed"]:
        raise InputError(f"{params_file} trains model={p['model']} reciprocal={p['reciprocal']} seed={p['seed']}, "
                         f"but checkpoint {name!r} is {spec['model']} reciprocal={spec['reciprocal']} seed={spec['seed']}")
    if root.resolve() != checkpoints_dir().resolve() and "output_dir" not in overrides:
        p["output_dir"] = str(Path("runs") / "retrained_runs" / name)
    arch = spec_architecture(spec)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        from .device import seed_everything
        # the network is initialised from the run's seed, then trained (train() seeds again for the data)
        seed_everything(p["seed"])
        model = build_architecture(arch).train()
        t0 = time.perf_counter()
        result = train(p, model=model)
        seconds = time.perf_counter() - t0
        # a resumed run: the seconds of every logged window, the earlier processes' included
        logged = sum(r.get("seconds", 0.0) for r in result.get("train_log") or [])
        seconds = max(seconds, logged)
    finally:
        torch.set_num_threads(old_threads)
    out = Path(result["output_dir"])
    folder = Path(folder) if folder is not None else root / name
    folder.mkdir(parents=True, exist_ok=True)
    if params_file.resolve() != (folder / "params.yaml").resolve():
        shutil.copyfile(params_file, folder / "params.yaml")
    with atomic_output(folder / "train_log.csv") as tmp:
        shutil.copyfile(out / "train_log.csv", tmp)
    return save_checkpoint(result["model"].cpu(), folder, arch, spec=spec, iterations=int(p["iterations"]),
                           overrides=copy.deepcopy(overrides), recipe=made_by, train_seconds=round(seconds, 1),
                           threads=torch.get_num_threads() if not threads else threads,
                           device=str(result["summary"]["device"]) if result.get("summary") else "cpu",
                           machine=f"{platform.machine()}, {os.cpu_count()} CPU cores visible",
                           torch=torch.__version__)


# the table of checkpoints/README.md between these two lines is written by write_readme_table
TABLE_START, TABLE_END = "<!-- checkpoints table: python scripts/train_checkpoints.py --readme -->", "<!-- end of table -->"


def readme_table(root: str | Path | None = None) -> str:
    """The markdown table of the checkpoints in ``root`` (default: the shipped ones), from their info.json."""
    from .checkpoints import list_checkpoints

    lines = ["| checkpoint | model (config) | reciprocal | seed | recipe | steps | trained parameters | model.pt | training time |",
             "|---|---|---|---|---|---|---|---|---|"]
    total_bytes = total_seconds = 0.0
    for r in list_checkpoints(root):
        if not r["present"]:
            lines.append(f"| `{r['name']}` | {r['model']} ({r['config']}) | | | | | | missing | |")
            continue
        total_bytes += r["bytes"]
        total_seconds += r["train_seconds"]
        lines.append(f"| `{r['name']}` | {r['model']} ({r['config']}) | {'on' if r['reciprocal'] else 'off'} | "
                     f"{r['seed']} | {r['recipe']} | {r['iterations']:,} | {r['trained_parameters']:,} | "
                     f"{r['bytes'] / 1e6:.2f} MB | {r['train_seconds'] / 60:.1f} min |")
    lines.append("")
    lines.append(f"model.pt total {total_bytes / 1e6:.2f} MB; training time total {total_seconds / 60:.0f} min")
    return "\n".join(lines)


def write_readme_table(readme: str | Path | None = None) -> Path:
    """Replace the table between :data:`TABLE_START` and :data:`TABLE_END` of checkpoints/README.md."""
    readme = Path(readme) if readme is not None else checkpoints_dir() / "README.md"
    text = readme.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise InputError(f"{readme} lacks the lines {TABLE_START!r} and {TABLE_END!r} around the table")
    head, rest = text.split(TABLE_START, 1)
    tail = rest.split(TABLE_END, 1)[1]
    return atomic_write_text(readme, f"{head}{TABLE_START}\n{readme_table()}\n{TABLE_END}{tail}")
