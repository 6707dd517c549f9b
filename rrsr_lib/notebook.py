"""Helpers for the notebooks: checking the ``parameters`` cell.

Every notebook has one cell tagged ``parameters`` whose lines read ``name: type = value  # meaning``.
The annotations make Python record each declared name and type in ``__annotations__``. papermill
injects its values in a new cell with plain ``name = value`` lines, and only warns about names the
notebook does not declare; :func:`check_parameters` turns both mistakes into clear errors:

    _before = set(globals())          # last line of the imports cell
    ...                               # the parameters cell (annotated)
    params = check_parameters(globals(), _before, rules={"iterations": lambda v: v > 0})
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from .errors import InputError

# Names IPython itself adds to the namespace between cells.
_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}


def check_parameters(namespace: Mapping[str, Any], before: set[str],
                     rules: Mapping[str, Callable[[Any], bool]] | None = None) -> dict[str, Any]:
    """Validate a notebook's parameters and return them as a dict.

    namespace: the notebook's ``globals()`` after the parameters (and any papermill-injected) cell.
    before: the set of global names that existed before the parameters cell.
    rules: optional ``name -> predicate`` or ``name -> (predicate, "what is allowed")``; a value for
        which the predicate is False is refused, with the explanation when one is given.

    Raises InputError for a name that is not declared in the parameters cell (a typo in ``-p`` or in
    a YAML file), for a value whose type is not the declared one (an int is accepted for a float),
    and for a value that breaks its rule.
    """
    declared: dict[str, Any] = dict(namespace.get("__annotations__", {}))
    new = {n for n in namespace if n not in before and not n.startswith("_") and n not in _IPYTHON_NAMES}
    unknown = sorted(new - set(declared))
    if unknown:
        raise InputError(
            f"unknown parameter(s) {unknown}: this notebook accepts only {sorted(declared)} "
            "(check the spelling in your papermill -p options or parameter file)")
    params = {}
    for name, typ in declared.items():
        if name not in namespace:
            raise InputError(f"parameter {name!r} is declared but has no value")
        value = namespace[name]
        if isinstance(typ, str):  # postponed annotations
            typ = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}.get(typ, object)
        ok = isinstance(value, typ) if typ is not float else isinstance(value, (int, float)) and not isinstance(value, bool)
        if typ is int and isinstance(value, bool):
            ok = False
        if not ok:
            raise InputError(f"parameter {name!r} must be of type {getattr(typ, '__name__', typ)}, got {value!r} ({type(value).__name__})")
        params[name] = value
    for name, rule in (rules or {}).items():
        if name not in params:
            raise InputError(f"rule given for undeclared parameter {name!r}")
        rule, allowed = rule if isinstance(rule, tuple) else (rule, "")
        if not rule(params[name]):
            raise InputError(f"parameter {name!r} has an invalid value {params[name]!r}"
                             + (f": it {allowed}" if allowed else ""))
    return params
