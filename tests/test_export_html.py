"""scripts/export_html.py: the readers' HTML copies, rewritten only when a notebook's outputs change."""
import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("export_html", ROOT / "scripts" / "export_html.py")
export_html = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_html)


def _executed(folder: Path, printed: str | list[str]) -> Path:
    """A small executed notebook whose one code cell printed ``printed`` (a list: one stream message each)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("print(result)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=t)
                    for t in ([printed] if isinstance(printed, str) else printed)]
    nb.cells = [nbformat.v4.new_markdown_cell("# 99 · a test"), cell]
    path = folder / "99_test.ipynb"
    nbformat.write(nb, path)
    return path


EVAL = "PSNR 26.31 dB; 320 rows (16 models x 10 images) in 1410 s\n"
BENCH = "fast 1.9 s +43 MiB (0.6x faster), load [0.9, 1.1, 1.0]; same index at 72.5%\n"


@pytest.mark.parametrize("first, second, rewritten", [
    (EVAL, "PSNR 26.31 dB; 320 rows (16 models x 10 images) in 1233 s\n", False),   # the same results, slower
    (EVAL, "PSNR 26.32 dB; 320 rows (16 models x 10 images) in 1410 s\n", True),    # a result changed
    (EVAL, "PSNR 26.31 dB; 321 rows (16 models x 10 images) in 1410 s\n", True),    # a count on a timing line
    (BENCH, "fast 1.2 s +40 MiB (0.5x faster), load [2.0, 1.5, 1.0]; same index at 72.5%\n", False),
    (BENCH, "fast 1.9 s +43 MiB (0.6x faster), load [0.9, 1.1, 1.0]; same index at 72.6%\n", True),
])
def test_a_rerun_rewrites_a_page_only_when_something_other_than_its_printed_timings_changed(
        tmp_path, first, second, rewritten):
    out = tmp_path / "html"
    page, written = export_html.export(_executed(tmp_path, first), out)
    assert written and page == out / "99_test.html"
    before = page.read_bytes()
    assert first.strip().replace(">", "&gt;").encode() in before
    page, written = export_html.export(_executed(tmp_path, second), out)
    assert written == rewritten
    after = page.read_bytes()
    if rewritten:
        assert second.strip().encode() in after
    else:
        assert after == before, "an unchanged page keeps the bytes (and the timings) of the run that wrote it"


def test_the_same_prints_split_into_other_messages_give_the_same_page(tmp_path):
    lines = ["flow x in [-18, 27]\n", "torchvision: forward 0.17 s\n"]
    one, _ = export_html.export(_executed(tmp_path, "".join(lines)), tmp_path / "one")
    two, _ = export_html.export(_executed(tmp_path, lines), tmp_path / "two")
    assert one.read_bytes() == two.read_bytes()
    assert "flow x in [-18, 27]\ntorchvision: forward" in one.read_text()   # one box, as printed
