"""Evaluate one more recipe trial on whole images and add it to results/recipe_trials.json (the others kept).

    .venv/bin/python scripts/evaluate_recipe_trial.py NAME ARCH "what changed from the shipped recipe"

NAME: a trial trained with ``python -m rrsr_lib.train --params results/recipe_trials/NAME.yaml`` (its output in
runs/trials/NAME/); ARCH: rrsr or sisr. Same protocol as scripts/evaluate_recipe_trials.py (whole images of the
10 embedded pairs, PSNR_Y crop 4, SR rounded to uint8); the trial's train_log.csv is copied beside its yaml.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from rrsr_lib.data import EmbeddedTestPairs
from rrsr_lib.evaluate import evaluate, summarize, write_json
from rrsr_lib.models import build_model

name, arch, change = sys.argv[1:4]
torch.set_num_threads(2)
path = Path("results/recipe_trials.json")
out = json.loads(path.read_text())
if arch == "rrsr":
    model = build_model("rrsr", "small", matching="contrastive", vgg_weights="vgg16")
else:
    model = build_model("sisr", "small")
run = Path("runs/trials") / name
model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
summ = json.loads((run / "summary.json").read_text())
rows = evaluate(model.eval(), EmbeddedTestPairs(), name, "embedded", metrics=("y_crop4",), progress=False)
s = summarize(rows)[0]
shutil.copyfile(run / "train_log.csv", f"results/recipe_trials/{name}_train_log.csv")
out["runs"][name] = {"psnr_y": s["psnr_y"], "ssim_y": s["ssim_y"],
                     "per_pair": {r["name"]: round(r["psnr_y"], 3) for r in rows},
                     "change_from_shipped_recipe": change, "iterations": summ["iterations"],
                     "wall_seconds": summ["seconds_this_session"],
                     "code": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                            text=True).stdout.strip(),
                     "params": f"results/recipe_trials/{name}.yaml",
                     "train_log": f"results/recipe_trials/{name}_train_log.csv"}
b = out["runs"]["bicubic"]["psnr_y"]
out["gains_db"][f"{name} - bicubic"] = s["psnr_y"] - b
if "sisr_rec_hr64" in out["runs"]:
    out["gains_db"][f"{name} - sisr_rec_hr64"] = s["psnr_y"] - out["runs"]["sisr_rec_hr64"]["psnr_y"]
write_json(out, path)
print(name, round(s["psnr_y"], 3), "dB;", {k: round(v, 3) for k, v in out["gains_db"].items() if k.startswith(name)})
