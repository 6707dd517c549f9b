"""The paper's main comparison table, built from benchmark rows: one line per model, without and with
reciprocal learning.

Input: the rows of ``results/embedded_benchmark.json`` (notebook 08): one dict per checkpoint (and bicubic)
and metric, with ``model``, ``config``, ``reciprocal`` (None for bicubic), ``seed``, ``metric``, ``psnr_y`` and
``ssim_y``. Output, through three steps that notebook 09 calls in turn:

* ``main_table_rows``: the table as data, one dict a model (mean and spread over seeds of the per-seed means,
  through ``rrsr_lib.evaluate.summarize``);
* ``main_table_cells`` / ``main_table_markdown``: the same as text cells and as a Markdown table with its
  protocol line;
* ``main_table_csv`` / ``write_main_table``: the rows as CSV text, and ``<name>.md`` and ``<name>.csv``
  written atomically (``rrsr_lib.files``).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .evaluate import summarize
from .files import atomic_write_bytes, atomic_write_text

__all__ = ["MODELS", "FIELDS", "main_table_rows", "main_table_cells", "main_table_markdown", "main_table_csv",
           "write_main_table"]

MODELS = ("bicubic", "sisr", "c2", "ttsr", "rrsr")
# the columns of a table row (and of the CSV), in order
FIELDS = ["model"] + [f"{k}_{f}" for k in ("plain", "rec") for f in ("psnr", "std", "ssim", "seeds")]
_HEADER = ["| model | PSNR_Y / SSIM_Y, without reciprocal | PSNR_Y / SSIM_Y, with reciprocal | gain (dB) | seeds |",
           "|---|---|---|---|---|"]


def main_table_rows(rows: list[dict], models: tuple[str, ...] = MODELS,
                    configs: tuple[str, ...] = ("-", "small")) -> list[dict]:
    """The main table as data: one dict per model of ``models``, in that order, with the keys of ``FIELDS``.

    Only the rows of the metric ``y_crop4`` and of one of ``configs`` count. ``plain_*`` is the model without
    reciprocal learning (bicubic: its only line), ``rec_*`` with it: ``psnr`` and ``ssim`` the mean over seeds of
    the per-seed means, ``std`` the population standard deviation of those means (0.0 for one seed), ``seeds``
    the seeds joined by spaces. A model (or setting) without rows has None there and "" as its seeds.
    """
    rows = [r for r in rows if r["metric"] == "y_crop4" and r["config"] in configs]
    summary = {(s["model"], s["reciprocal"]): s for s in summarize(rows, by=("model", "reciprocal"))}
    table_rows = []
    for model in models:
        line = {field: None for field in FIELDS} | {"model": model}
        for rec in ((None,) if model == "bicubic" else (False, True)):
            s = summary.get((model, rec))
            key = "plain" if rec in (None, False) else "rec"
            line[f"{key}_psnr"] = s["psnr_y"] if s else None
            line[f"{key}_std"] = s["psnr_y_std_over_seeds"] if s else None
            line[f"{key}_ssim"] = s["ssim_y"] if s else None
            line[f"{key}_seeds"] = " ".join(map(str, s["seeds"])) if s else ""
        table_rows.append(line)
    return table_rows


def _show(v: float | None, std: float | None = None, digits: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" + (f" ± {std:.2f}" if std else "")


def main_table_cells(table_rows: list[dict]) -> list[list[str]]:
    """The text of the table, one list a row: [model, "PSNR ± std / SSIM" without reciprocal, the same with it,
    gain (with minus without, "+0.12"), seeds ("0 1 2 / 0 1 2")].

    A missing number reads "-"; bicubic has no reciprocal setting, so its second cell and its gain are empty,
    and so is the gain of a model missing one of the two settings. The spread is shown only when it is not 0.
    """
    cells = []
    for r in table_rows:
        plain = f"{_show(r['plain_psnr'], r['plain_std'])} / {_show(r['plain_ssim'], digits=4)}"
        bicubic = r["model"] == "bicubic"
        rec = "" if bicubic else f"{_show(r.get('rec_psnr'), r.get('rec_std'))} / {_show(r.get('rec_ssim'), digits=4)}"
        gain = "" if bicubic or r.get("rec_psnr") is None or r["plain_psnr"] is None \
            else f"{r['rec_psnr'] - r['plain_psnr']:+.2f}"
        seeds_txt = r["plain_seeds"] if bicubic else f"{r['plain_seeds']} / {r['rec_seeds']}"
        cells.append([r["model"], plain, rec, gain, seeds_txt or "-"])
    return cells


def main_table_markdown(table_rows: list[dict], protocol: str) -> str:
    """The table as Markdown (header, one line a row of ``main_table_cells``), then a blank line and the line
    "Protocol: <protocol>; metric y_crop4 (Y channel, 4-pixel border removed)." ending in a newline."""
    lines = _HEADER + [f"| {' | '.join(c)} |" for c in main_table_cells(table_rows)]
    return "\n".join(lines) + f"\n\nProtocol: {protocol}; metric y_crop4 (Y channel, 4-pixel border removed).\n"


def main_table_csv(table_rows: list[dict]) -> str:
    """The table rows as CSV text: a header of ``FIELDS``, then one line a row (None: empty; lines end in
    "\\r\\n", the csv module's default)."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(table_rows)
    return buf.getvalue()


def write_main_table(table_rows: list[dict], protocol: str, folder: str | Path,
                     name: str = "09_main_table") -> tuple[Path, Path]:
    """Write ``<folder>/<name>.md`` (``main_table_markdown``, UTF-8) and ``<folder>/<name>.csv``
    (``main_table_csv``, its bytes as they are: "\\r\\n" on every system), each atomically (a crash leaves the old
    file or the new one); returns the two paths."""
    folder = Path(folder)
    md = atomic_write_text(folder / f"{name}.md", main_table_markdown(table_rows, protocol))
    table_csv = atomic_write_bytes(folder / f"{name}.csv", main_table_csv(table_rows).encode("utf-8"))
    return md, table_csv
