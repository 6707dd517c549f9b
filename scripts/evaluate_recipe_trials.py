"""Evaluate the recipe trials of results/recipe_trials/ on whole images; writes results/recipe_trials.json.

Train each trial first:  .venv/bin/python -m rrsr_lib.train --params results/recipe_trials/<name>.yaml
(its output goes to runs/trials/<name>/), then run this script from the project root.
"""
import json, subprocess, torch
from pathlib import Path
from rrsr_lib.data import EmbeddedTestPairs
from rrsr_lib.evaluate import Bicubic, evaluate, summarize, write_json
from rrsr_lib.models import build_model
torch.set_num_threads(2)
data = EmbeddedTestPairs()
out = {"what": "recipe trials for retraining the shipped networks (issue 21): each trained with python -m rrsr_lib.train "
               "--params results/recipe_trials/<name>.yaml (the shipped recipe with the changes listed), then evaluated "
               "on the whole images of the 10 embedded pairs",
       "protocol": "embedded real pairs (10), whole images, PSNR_Y/SSIM_Y with a 4-pixel border removed (y_crop4), SR rounded to uint8",
       "date": "2026-12-02", "machine": "2-core CPU, two trainings side by side, one torch thread each",
       "code": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
       "runs": {}}
def row(name, model, extra):
    rows = evaluate(model, data, name, "embedded", metrics=("y_crop4",), progress=False)
    s = summarize(rows)[0]
    out["runs"][name] = {"psnr_y": s["psnr_y"], "ssim_y": s["ssim_y"],
                         "per_pair": {r["name"]: round(r["psnr_y"], 3) for r in rows}, **extra}
    print(name, round(s["psnr_y"], 3), flush=True)
row("bicubic", Bicubic(), {})
for name, arch, change in (("rrsr_rec_hr64", "rrsr", "HR 64 / LR 16 / Ref 64, 2000 steps, lr x0.1 after 1600, Ref_w corners 2-7.6 px"),
                           ("rrsr_rec_hr96", "rrsr", "HR 96 / LR 24 / Ref 96, 900 steps, lr x0.1 after 720, Ref_w corners 3-11.4 px"),
                           ("sisr_rec_hr64", "sisr", "as rrsr_rec_hr64, the single-image network")):
    model = build_model("rrsr", "small", matching="contrastive", vgg_weights="vgg16") if arch == "rrsr" else build_model("sisr", "small")
    model.load_state_dict(torch.load(f"runs/trials/{name}/model.pt", weights_only=True))
    summ = json.loads(Path(f"runs/trials/{name}/summary.json").read_text())
    row(name, model.eval(), {"change_from_shipped_recipe": change, "iterations": summ["iterations"],
                             "wall_seconds": summ["seconds_this_session"],
                             "params": f"results/recipe_trials/{name}.yaml", "train_log": f"results/recipe_trials/{name}_train_log.csv"})
b = out["runs"]["bicubic"]["psnr_y"]
out["gains_db"] = {"rrsr_rec_hr64 - bicubic": out["runs"]["rrsr_rec_hr64"]["psnr_y"] - b,
                   "rrsr_rec_hr96 - bicubic": out["runs"]["rrsr_rec_hr96"]["psnr_y"] - b,
                   "sisr_rec_hr64 - bicubic": out["runs"]["sisr_rec_hr64"]["psnr_y"] - b,
                   "rrsr_rec_hr64 - sisr_rec_hr64": out["runs"]["rrsr_rec_hr64"]["psnr_y"] - out["runs"]["sisr_rec_hr64"]["psnr_y"]}
write_json(out, "results/recipe_trials.json")
print(json.dumps(out["gains_db"], indent=1))
