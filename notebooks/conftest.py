"""Under nbval: a notebook cell that writes to stderr fails its test.

A learner sees stderr as red text in JupyterLab: a warning in a teaching cell reads as an error. Every warning
is fixed where it arises, and the project's own one-line announcements go to stdout. nbval keeps the outputs
of each executed cell in ``item.test_outputs``; this hook reads them after the cell ran.
"""
import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or report.failed:
        return
    errs = [o.get("text", "") for o in (getattr(item, "test_outputs", None) or [])
            if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    if errs:
        report.outcome = "failed"
        report.longrepr = "the cell wrote to stderr (a learner sees this as red text):\n" + "".join(errs)[-3000:]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs two workers, --dist loadgroup) every notebook cell goes to one worker,
    in order: a notebook's cells share one kernel, and notebook 09 reads what notebook 08 wrote."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.xdist_group("notebooks"))


def pytest_configure(config):
    """One clear error instead of a hundred: pytest-xdist <= 3.8 does not group tests under pytest >= 9.2
    (pytest-xdist issue 1386: it marks a group in `item._nodeid`, which pytest 9.2 no longer reads), so each cell
    would run on whichever worker is free, without the cells before it."""
    if (getattr(config.option, "dist", "no") != "loadgroup" or not getattr(config.option, "numprocesses", 0)
            or "PYTEST_XDIST_WORKER" in os.environ):
        return
    import xdist

    if pytest.version_tuple[:2] >= (9, 2) and tuple(map(int, xdist.__version__.split(".")[:2])) <= (3, 8):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} with pytest-xdist {xdist.__version__} cannot keep a notebook's cells "
            "together (pytest-xdist issue 1386): install 'pytest<9.2' (as pyproject.toml asks) or run "
            "`make test TEST_WORKERS=0`")
