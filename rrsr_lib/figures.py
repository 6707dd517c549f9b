"""One helper saves every figure of the project into figures/, under a stable name.

Figures are drawn from saved results (small JSON/CSV files), never by retraining; this module only
decides where and how they are written: PNG always, PDF too where print quality matters. Files are
written to a temporary name and renamed when complete, so an interrupted run never leaves half a figure.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import InputError
from .files import atomic_output

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def project_root() -> Path:
    """The repository root (the folder that holds rrsr_lib/), or the current folder for an installed copy."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def figures_dir() -> Path:
    """figures/ at the project root, or $RRSR_FIGURES when set (tests point it at a temporary folder)."""
    root = Path(os.environ.get("RRSR_FIGURES", project_root() / "figures"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def results_dir() -> Path:
    """Where notebooks write their results: results/ at the project root, or $RRSR_RESULTS when set.

    ``make test`` points it (like $RRSR_FIGURES) at a folder under runs/, so that running the notebooks as tests
    leaves the committed results of ``make reproduce`` alone.
    """
    root = Path(os.environ.get("RRSR_RESULTS", project_root() / "results"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def results_path(name: str) -> Path:
    """A results file to read: the one in :func:`results_dir` if this run wrote it, else the committed one."""
    written = results_dir() / name
    return written if written.exists() else project_root() / "results" / name


def save_figure(fig, name: str, pdf: bool = True, dpi: int = 150) -> list[Path]:
    """Save a matplotlib figure as figures/<name>.png (and .pdf); return the written paths.

    name: letters, digits, '_' and '-' only, no extension (e.g. "02_matching_score_map").
    """
    if not _NAME.match(name):
        raise InputError(f"figure name {name!r} must be letters, digits, '_' or '-' with no extension")
    out = []
    for ext in (("png", "pdf") if pdf else ("png",)):
        path = figures_dir() / f"{name}.{ext}"
        # no time stamps or software names in the file: the same figure gives the same bytes
        meta = {"Software": None} if ext == "png" else {"Creator": None, "Producer": None, "CreationDate": None}
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight", metadata=meta)
        out.append(path)
    return out
