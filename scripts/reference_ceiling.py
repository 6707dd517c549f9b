"""How much of a reference a trained network can use: the embedded test pairs with the reference swapped.

For each checkpoint, the whole images of the 10 embedded pairs are super-resolved three times, changing only
the reference:

* ``pair``: the real other view (the project's main protocol, results/embedded_benchmark.json);
* ``hr``: the ground-truth HR image itself, the best reference there can be (every LR patch has its exact
  match at the same place): an upper bound on what the network transfers;
* ``bicubic``: the bicubic x4 of the LR input (the bicubic baseline's own image, PIL's bicubic), a reference
  that holds nothing the input does not: what the network does when the reference is useless (a single-image
  network scores the same under all three).

The gap ``hr - pair`` says how much is lost to the real reference (matching, viewpoint, light); the gap
``hr - bicubic`` says how much the network has learned to take from a reference at all.

    .venv/bin/python scripts/reference_ceiling.py                          # the default checkpoints
    .venv/bin/python scripts/reference_ceiling.py rrsr_rec_seed0 sisr_rec_seed0

Writes results/reference_ceiling.json (PSNR_Y with a 4-pixel border removed, SR rounded to uint8, as the
main protocol). About half a minute per checkpoint and reference on one core.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rrsr_lib.checkpoints import load_checkpoint  # noqa: E402
from rrsr_lib.data import EmbeddedTestPairs  # noqa: E402
from rrsr_lib.errors import InputError  # noqa: E402
from rrsr_lib.evaluate import Bicubic, evaluate, summarize, write_json  # noqa: E402

DEFAULT = ["sisr_rec_seed0", "c2_rec_seed0", "ttsr_rec_seed0", "rrsr_rec_seed0"]
REFERENCES = ("pair", "hr", "bicubic")
OUT = ROOT / "results" / "reference_ceiling.json"


class SwappedReference(torch.utils.data.Dataset):
    """The embedded test pairs with "ref" replaced: "pair" (unchanged), "hr" or "bicubic" (see the module)."""

    def __init__(self, base: EmbeddedTestPairs, reference: str):
        if reference not in REFERENCES:
            raise InputError(f"reference must be one of {REFERENCES}, got {reference!r}")
        self.base, self.reference = base, reference
        self._bicubic = Bicubic()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        if self.reference == "hr":
            item["ref"] = item["hr"].clone()
        elif self.reference == "bicubic":
            # float (3, H, W) in [0, 1]: the image the bicubic baseline scores (24.73 dB in the main table)
            item["ref"] = self._bicubic(item["lr"][None])[0]
        return item


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="*", default=DEFAULT, help=f"shipped checkpoints (default: {' '.join(DEFAULT)})")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = EmbeddedTestPairs()
    result = {"what": "PSNR_Y (y_crop4) on the whole images of the 10 embedded pairs with the reference swapped: "
                      "pair = the real other view, hr = the HR ground truth itself, bicubic = the bicubic x4 of the "
                      "LR input (scripts/reference_ceiling.py)",
              "checkpoints": {}}
    for name in args.checkpoints:
        model = load_checkpoint(name)
        entry = {}
        for reference in REFERENCES:
            t = time.perf_counter()
            rows = evaluate(model, SwappedReference(base, reference), name, "embedded", metrics=("y_crop4",),
                            progress=False)
            mean = summarize(rows)[0]["psnr_y"]
            entry[reference] = {"psnr_y": round(mean, 3), "per_pair": {r["name"]: round(r["psnr_y"], 3) for r in rows}}
            print(f"{name:28s} reference {reference:8s} {mean:7.3f} dB  ({time.perf_counter() - t:.0f} s)", flush=True)
        entry["hr_minus_pair"] = round(entry["hr"]["psnr_y"] - entry["pair"]["psnr_y"], 3)
        entry["hr_minus_bicubic"] = round(entry["hr"]["psnr_y"] - entry["bicubic"]["psnr_y"], 3)
        result["checkpoints"][name] = entry
    write_json(result, args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
