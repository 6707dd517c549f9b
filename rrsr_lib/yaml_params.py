"""Parameter files and ``--set name=value``: YAML read safely, with the numbers people mean.

PyYAML speaks YAML 1.1, whose plain scalars surprise: ``010`` is 8 (octal), ``1:30`` is 90 (base 60),
``1e-3`` is a *string* (a float needs a dot there), ``no`` is False. Parameter files here follow YAML 1.2's core
schema instead: integers are decimal (or ``0o17`` / ``0x1f``), floats include ``1e-3``, ``.inf`` and ``.nan``,
booleans are ``true`` / ``false`` only. And since a parameter file is a flat mapping of plain values, it may not
use anchors or aliases (an alias "bomb" of a few lines expands to gigabytes) and may not exceed
:data:`MAX_BYTES`. Every problem is one :class:`~rrsr_lib.errors.InputError` naming the file.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

__all__ = ["parse_yaml", "read_yaml_file", "MAX_BYTES"]

# a parameter file is a few kilobytes; anything near this is not one
MAX_BYTES = 1 << 20

# YAML 1.2 core schema, https://yaml.org/spec/1.2.2/#1032-tag-resolution
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema's implicit types and no aliases."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise InputError(f"uses a YAML alias (*{self.peek_event().anchor}); parameter files hold plain values "
                             "only: write the value out")
        return super().compose_node(parent, index)


# replace YAML 1.1's implicit resolvers (octal, base 60, yes/no, ...) by the 1.2 core ones
_Loader.yaml_implicit_resolvers = {}
for _tag, _regex, _first in (("tag:yaml.org,2002:bool", _BOOL, "tTfF"),
                             ("tag:yaml.org,2002:int", _INT, "-+0123456789"),
                             ("tag:yaml.org,2002:float", _FLOAT, "-+0123456789."),
                             ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""])):
    _Loader.add_implicit_resolver(_tag, _regex, list(_first))


def _int(loader, node) -> int:
    text = loader.construct_scalar(node)
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)   # "010" is ten


def _float(loader, node) -> float:
    text = loader.construct_scalar(node).lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    return float("nan") if text == ".nan" else float(text)


def _bool(loader, node) -> bool:
    return loader.construct_scalar(node).lower() == "true"


_Loader.add_constructor("tag:yaml.org,2002:int", _int)
_Loader.add_constructor("tag:yaml.org,2002:float", _float)
_Loader.add_constructor("tag:yaml.org,2002:bool", _bool)


def parse_yaml(text: str, where: str) -> Any:
    """Parse ``text`` (a parameter file's or a ``--set`` value's) under the rules above; ``where`` names it in errors."""
    if len(text) > MAX_BYTES:
        raise InputError(f"{where}: {len(text)} characters, more than a parameter file holds ({MAX_BYTES}); "
                         "give the YAML file of parameters")
    try:
        return yaml.load(text, Loader=_Loader)
    except InputError as exc:
        raise InputError(f"{where} {exc}") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{where}: not valid YAML ({first}); fix its syntax") from None
    except RecursionError:
        raise InputError(f"{where}: nested too deeply for a parameter value") from None


def read_yaml_file(path: str | Path) -> Any:
    """A parameter file's YAML content; one InputError for a missing, huge, binary or invalid file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: parameter file not found; give a YAML file such as notebooks/params/cpu_demo.yaml")
    if path.stat().st_size > MAX_BYTES:
        raise InputError(f"{path}: {path.stat().st_size} bytes, more than a parameter file holds ({MAX_BYTES}); "
                         "give the YAML file of parameters")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (not UTF-8); give the YAML file of parameters") from None
    return parse_yaml(text, str(path))
