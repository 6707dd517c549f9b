import pytest

from rrsr_lib.errors import InputError
from rrsr_lib.notebook import check_parameters


def run_cells(injected: str = ""):
    ns: dict = {}
    exec("import math", ns)
    before = set(ns)
    exec("iterations: int = 10  # steps\nlr: float = 1e-4  # learning rate\nname: str = 'x'", ns)
    exec(injected, ns)
    return ns, before


def test_defaults_pass():
    ns, before = run_cells()
    assert check_parameters(ns, before) == {"iterations": 10, "lr": 1e-4, "name": "x"}


def test_injected_values_are_used_and_int_accepted_for_float():
    ns, before = run_cells("iterations = 3\nlr = 1")
    assert check_parameters(ns, before)["lr"] == 1


def test_unknown_parameter_is_refused():
    ns, before = run_cells("iteratoins = 3")
    with pytest.raises(InputError, match=r"unknown parameter\(s\) \['iteratoins'\]"):
        check_parameters(ns, before)


@pytest.mark.parametrize("injected", ["iterations = '3'", "iterations = 2.5", "iterations = True", "name = 3"])
def test_wrong_type_is_refused(injected):
    ns, before = run_cells(injected)
    with pytest.raises(InputError, match="must be of type"):
        check_parameters(ns, before)


def test_rule_is_enforced():
    ns, before = run_cells("iterations = -1")
    with pytest.raises(InputError, match="iterations"):
        check_parameters(ns, before, rules={"iterations": lambda v: v > 0})


def test_rule_with_explanation():
    ns, before = run_cells("iterations = 0")
    with pytest.raises(InputError, match="it must be positive"):
        check_parameters(ns, before, rules={"iterations": (lambda v: v > 0, "must be positive")})
