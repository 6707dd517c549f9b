"""Under nbval: a notebook cell that writes to stderr fails its test.

A learner sees stderr as red text in JupyterLab: a warning in a teaching cell reads as an error. Every warning
is fixed where it arises, and the project's own one-line announcements go to stdout. nbval keeps the outputs
of each executed cell in ``item.test_outputs``; this hook reads them after the cell ran.
"""
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
