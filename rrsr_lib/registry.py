"""The model registry: ``build_model(name, config)`` for every architecture of the project.

An architecture registers itself with ``@register_model(name)`` where it is defined (rrsr in rrsr_lib.models;
sisr, c2 and ttsr in rrsr_lib.baselines). Importing the package imports both (rrsr_lib/__init__.py), so every
architecture is registered before anything asks for one; this module imports none of them.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .errors import InputError

__all__ = ["MODELS", "register_model", "build_model"]

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator: register ``builder(config, **kwargs) -> nn.Module`` under ``name`` for :func:`build_model`."""
    def deco(builder):
        MODELS[name] = builder
        return builder
    return deco


def build_model(name: str, config: Any = "paper", **kwargs) -> nn.Module:
    """Build a registered network: ``build_model("rrsr", "paper")``, ``build_model("rrsr", "small")``,
    ``build_model("rrsr", "paper_no_cascade")``, ``build_model("c2", "small")``. Extra keyword arguments go to
    the builder (for "rrsr": ``matching_features=``, ``texture=`` or config fields such as ``experts=4``)."""
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
    return MODELS[name](config, **kwargs)
