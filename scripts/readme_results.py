"""Keep the README's results table equal to the one notebook 09 writes (results/09_main_table.md).

    python scripts/readme_results.py          # rewrite the block between the README's results markers
    python scripts/readme_results.py --check  # exit 1 (and say so) when the README's block differs

`make reproduce` runs the first form after the notebooks; tests/test_repository.py runs the check.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from rrsr_lib.files import atomic_write_text  # noqa: E402
START, END = "<!-- results:start -->", "<!-- results:end -->"


def table_text(root: Path = ROOT) -> str:
    """The generated table (results/09_main_table.md), without trailing blank lines."""
    return (root / "results" / "09_main_table.md").read_text(encoding="utf-8").strip()


def readme_block(readme: str) -> str:
    """What the README holds between its results markers (stripped)."""
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise ValueError(f"README.md must hold one {START} ... {END} block")
    return readme.split(START, 1)[1].split(END, 1)[0].strip()


def with_table(readme: str, table: str) -> str:
    """The README with its results block replaced by ``table``."""
    readme_block(readme)   # checks the markers
    head, rest = readme.split(START, 1)
    return f"{head}{START}\n{table}\n{END}{rest.split(END, 1)[1]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when they differ")
    args = ap.parse_args(argv)
    path = ROOT / "README.md"
    readme, table = path.read_text(encoding="utf-8"), table_text()
    if args.check:
        same = readme_block(readme) == table
        print("README results table: " + ("up to date" if same else
              "differs from results/09_main_table.md; run python scripts/readme_results.py"))
        return 0 if same else 1
    new = with_table(readme, table)
    if new != readme:
        atomic_write_text(path, new)
        print("README results table rewritten from results/09_main_table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
