"""Write executed notebooks as HTML for readers who do not run them (docs/notebooks/NN_topic.html).

    python scripts/export_html.py runs/00_overview.ipynb runs/01_data.ipynb ...   # into docs/notebooks/
    python scripts/export_html.py --out DIR runs/02_matching.ipynb

`make reproduce` runs it on every notebook it executed. Figures are embedded (base64 PNG). What would make
two exports of the same results differ is left out or fixed: papermill's metadata and timings, the widget
state with its random model ids (a static page cannot run an explorer; a note says so), cell ids (papermill
gives its injected cell a random one), this checkout's absolute path in printed text, and how the kernel
happened to split consecutive prints into messages (they are joined). A PNG figure over
200 kB (photographs, mostly) is embedded as a JPEG of quality 90 when that is smaller, which keeps each page
under 2 MB. Each file is written through a temporary name and renamed.

Printed timings differ on every run (a machine's load, its speed). So that rerunning `make reproduce` leaves
the repository unchanged when its results are unchanged, a page is only rewritten when it differs from the
committed one in something other than them: two pages are compared with, on every line that reports a time
(a number followed by " s", " ms" or " min"), the measurements masked (times, MiB, speed ratios such as
"0.6x", GFLOP/s, the load average), and when they agree, the committed page, with the timings of the run that
wrote it, stays as it is. Every other number (a PSNR, a count, a percentage) is compared as printed.
"""
from __future__ import annotations

import argparse
import base64
import io
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from rrsr_lib.files import atomic_write_text  # noqa: E402

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "[an interactive explorer: open this notebook in JupyterLab (make lab) and run it to use it]"
KEEP_NOTEBOOK_METADATA = ("kernelspec", "language_info")
PNG_LIMIT = 200_000   # bytes of a decoded PNG above which a JPEG is tried
JPEG_QUALITY = 90
# a printed time: a number, one space, a unit ("0.12 s", "1233 s", "16 ms", "3 min"); a base64 figure has no spaces
TIMING = re.compile(r"\d(?:\.\d+)? (?:s|ms|min)\b")
MEASURED = re.compile(r"\d+(?:\.\d+)?(?= ?(?:s|ms|min|MiB|GiB|MB|GB|x|GFLOP/s)\b)|load \[[\d., ]+\]")


def _clean_text(text: str) -> str:
    """Printed text without this checkout's absolute path (the same on every machine)."""
    return text.replace(f"{ROOT}/", "").replace(str(ROOT), ".")


def _smaller_figure(data: dict) -> None:
    """Replace a large ``image/png`` in ``data`` by ``image/jpeg`` when the JPEG is smaller (same bytes every run)."""
    from PIL import Image

    png = base64.b64decode(data["image/png"])
    if len(png) <= PNG_LIMIT:
        return
    image = Image.open(io.BytesIO(png))
    rgb = Image.new("RGB", image.size, "white")
    rgb.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    if buffer.tell() < len(png):
        data.pop("image/png")
        data["image/jpeg"] = base64.b64encode(buffer.getvalue()).decode("ascii")


def _clean_output(out) -> None:
    if "text" in out:
        out["text"] = _clean_text(out["text"])
    data = out.get("data", {})
    if WIDGET_VIEW in data:
        data.pop(WIDGET_VIEW)
        data["text/plain"] = WIDGET_NOTE
    if "image/png" in data:
        _smaller_figure(data)
    for mime in ("text/plain", "text/html"):
        if isinstance(data.get(mime), str):
            data[mime] = _clean_text(data[mime])


def _joined_streams(outputs: list) -> list:
    """``outputs`` with consecutive prints to the same stream joined into one output: how the kernel splits
    them into messages depends on timing, so the same prints would otherwise render as one box or several."""
    joined = []
    for out in outputs:
        if (out.get("output_type") == "stream" and joined and joined[-1].get("output_type") == "stream"
                and joined[-1].get("name") == out.get("name")):
            joined[-1]["text"] += out["text"]
        else:
            joined.append(out)
    return joined


def readable_copy(nb):
    """The notebook as readers see it, with nothing that changes between two runs of the same results."""
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_NOTEBOOK_METADATA}
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"
        cell.metadata = {"tags": cell.metadata["tags"]} if cell.metadata.get("tags") else {}
        if "outputs" in cell:
            cell.outputs = _joined_streams(cell.outputs)
        for out in cell.get("outputs", []):
            _clean_output(out)
    return nb


def without_timings(html: str) -> str:
    """``html`` with the measurements masked on the lines that report a time (times, memory, speed ratios, load)."""
    return "\n".join(MEASURED.sub("#", line) if TIMING.search(line) else line for line in html.split("\n"))


def export(executed: Path, out_dir: Path) -> tuple[Path, bool]:
    """docs-style HTML of one executed notebook (``out_dir/<stem>.html``): its path, and whether it was written
    (False: the page there already shows the same notebook, apart from printed timings)."""
    import nbformat
    from nbconvert import HTMLExporter

    if not executed.is_file() or executed.suffix != ".ipynb":
        raise SystemExit(f"export_html: {executed} is not an executed notebook (.ipynb); run make reproduce")
    nb = readable_copy(nbformat.read(executed, as_version=4))
    html, _ = HTMLExporter(template_name="lab").from_notebook_node(nb, resources={"metadata": {"name": executed.stem}})
    out = out_dir / f"{executed.stem}.html"
    if out.is_file() and without_timings(out.read_text(encoding="utf-8")) == without_timings(html):
        return out, False
    return atomic_write_text(out, html), True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="executed notebooks (runs/NN_topic.ipynb)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "notebooks", help="folder of the HTML files")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        html, written = export(path, args.out)
        shown = html.relative_to(ROOT) if html.is_relative_to(ROOT) else html
        print(f"== {path} -> {shown} ({html.stat().st_size / 1e6:.2f} MB)" if written else
              f"== {path}: {shown} unchanged (the same outputs apart from printed timings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
