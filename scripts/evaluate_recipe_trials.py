"""Evaluate the recipe trials of results/recipe_trials/ on whole images; update results/recipe_trials.json.

    .venv/bin/python -m rrsr_lib.train --params results/recipe_trials/NAME.yaml   # train a trial (runs/trials/NAME/)
    .venv/bin/python scripts/evaluate_recipe_trials.py                           # every trial trained here
    .venv/bin/python scripts/evaluate_recipe_trials.py --only NAME [NAME ...]    # just these

Protocol: the whole images of the 10 embedded test pairs, PSNR_Y / SSIM_Y with a 4-pixel border removed
(y_crop4), SR rounded to uint8. A trial is evaluated when its model (runs/trials/NAME/model.pt) is here; the
entries of results/recipe_trials.json for the other trials are kept as they are, so that trials trained in
earlier sessions stay recorded. Each evaluated trial's train_log.csv is copied beside its yaml.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rrsr_lib.data import EmbeddedTestPairs  # noqa: E402
from rrsr_lib.evaluate import Bicubic, evaluate, summarize, write_json  # noqa: E402
from rrsr_lib.registry import build_model  # noqa: E402
from rrsr_lib.train_params import load_params  # noqa: E402

TRIALS = ROOT / "results" / "recipe_trials"
RUNS = ROOT / "runs" / "trials"
OUT = ROOT / "results" / "recipe_trials.json"
# the single-image trial an RRSR trial is compared with (the reference's worth: rrsr - sisr) when it has no twin
# trained the same way (rrsr_plain_hr64_4k -> sisr_plain_hr64_4k)
SISR = "sisr_rec_hr64"
HEADER = {
    "what": "recipe trials for retraining the shipped networks (issue 21): each trained with python -m rrsr_lib.train "
            "--params results/recipe_trials/<name>.yaml (the shipped recipe with the changes listed), then evaluated "
            "on the whole images of the 10 embedded pairs",
    "protocol": "embedded real pairs (10), whole images, PSNR_Y/SSIM_Y with a 4-pixel border removed (y_crop4), "
                "SR rounded to uint8",
    "machine": "2-core CPU, two trainings side by side, one torch thread each",
}


def _model(params: dict) -> torch.nn.Module:
    """The trial's architecture; RRSR with the shipped matching trunks and VGG16 named, so that a missing
    pretrained file is an error here and never a silent fallback."""
    if params["model"] == "rrsr":
        return build_model("rrsr", params["model_config"], matching="contrastive", vgg_weights="vgg16")
    return build_model(params["model"], params["model_config"])


def _change(name: str, old: dict) -> str:
    """What the trial changes: kept from an earlier record, else the yaml's first comment line."""
    if "change_from_shipped_recipe" in old:
        return old["change_from_shipped_recipe"]
    first = (TRIALS / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0]
    return first.lstrip("# ").split(": ", 1)[-1]


def _score(model, data, name: str) -> tuple[dict, dict]:
    rows = evaluate(model, data, name, "embedded", metrics=("y_crop4",), progress=False)
    s = summarize(rows)[0]
    return {"psnr_y": s["psnr_y"], "ssim_y": s["ssim_y"]}, {r["name"]: round(r["psnr_y"], 3) for r in rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="evaluate just these trials (names of results/recipe_trials/NAME.yaml)")
    args = ap.parse_args(argv)
    names = sorted(p.stem for p in TRIALS.glob("*.yaml"))
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        ap.error(f"no trial named {', '.join(unknown)}: the trials are {', '.join(names)}")
    wanted = [n for n in (args.only or names) if (RUNS / n / "model.pt").is_file()]
    missing = sorted(set(args.only or ()) - set(wanted))
    if missing:
        ap.error(f"{', '.join(missing)} not trained here (no runs/trials/<name>/model.pt); train with "
                 f"python -m rrsr_lib.train --params results/recipe_trials/<name>.yaml")
    out = json.loads(OUT.read_text()) if OUT.is_file() else {**HEADER, "runs": {}}
    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    torch.set_num_threads(2)
    data = EmbeddedTestPairs()
    if "bicubic" not in out["runs"]:
        score, per_pair = _score(Bicubic(), data, "bicubic")
        out["runs"]["bicubic"] = {**score, "per_pair": per_pair}
    for name in wanted:
        params = load_params(TRIALS / f"{name}.yaml")
        model = _model(params)
        model.load_state_dict(torch.load(RUNS / name / "model.pt", weights_only=True))
        summary = json.loads((RUNS / name / "summary.json").read_text())
        score, per_pair = _score(model.eval(), data, name)
        shutil.copyfile(RUNS / name / "train_log.csv", TRIALS / f"{name}_train_log.csv")
        out["runs"][name] = {**score, "per_pair": per_pair, "change_from_shipped_recipe": _change(name, out["runs"].get(name, {})),
                             "iterations": summary["iterations"], "wall_seconds": summary["seconds_this_session"],
                             "code": code, "params": f"results/recipe_trials/{name}.yaml",
                             "train_log": f"results/recipe_trials/{name}_train_log.csv"}
        print(f"{name}: {score['psnr_y']:.3f} dB", flush=True)
    bicubic = out["runs"]["bicubic"]["psnr_y"]
    gains = {}
    for name, run in out["runs"].items():
        if name != "bicubic":
            gains[f"{name} - bicubic"] = run["psnr_y"] - bicubic
        # the single-image trial trained the same way (rrsr_X -> sisr_X), else the first one (SISR)
        twin = "sisr" + name[len("rrsr"):] if name.startswith("rrsr") else None
        twin = twin if twin in out["runs"] else SISR
        if name.startswith("rrsr") and twin in out["runs"]:
            gains[f"{name} - {twin}"] = run["psnr_y"] - out["runs"][twin]["psnr_y"]
    out["gains_db"] = gains
    write_json(out, OUT)
    print(json.dumps({k: round(v, 3) for k, v in gains.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
