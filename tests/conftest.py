import os

os.environ.setdefault("MPLBACKEND", "Agg")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# the notebook whose training folder (runs/07_reciprocal_training, from the project root) the browser test of the
# same notebook also writes: the two must never run at the same time
_SHARES_FOLDER_WITH_BROWSER = "07_reciprocal_training.ipynb"


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``) every test file runs whole on one worker:
    a notebook's cells in order on one kernel, a module's fixtures built once. The browser tests and notebook 07
    share one group, so they run one after the other (they train into the same folder)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        path = Path(str(item.fspath))
        group = str(path)
        if "browser" in path.parts or path.name == _SHARES_FOLDER_WITH_BROWSER:
            group = "browser"
        item.add_marker(pytest.mark.xdist_group(group))
