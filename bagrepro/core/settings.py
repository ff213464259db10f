"""Typed experiment settings: each experiment declares a frozen dataclass whose defaults are the
paper's protocol; a profile overrides some fields by name, and this module checks those overrides.

Every field says whose its default is (:func:`paper_setting`: the paper states it, with where;
:func:`our_setting`: the paper leaves it open, with why we chose it; :func:`mechanics_setting`: how
the work is done, not what it computes). ``run_all.py --list --experiment X``, the CSV sidecars and
``docs/protocol.md`` show it.

An unknown experiment or field, or a value of the wrong type, is a :class:`ConfigError` in one line
that names the valid choices, so a misspelt key can never be silently ignored. Torch-free.

Supported field types: ``int``, ``float`` (an int is accepted and converted), ``str``, ``bool``,
``tuple[T, ...]`` (a list is accepted and converted), ``X | None`` and ``typing.Literal[...]``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from bagrepro.core.errors import ConfigError


#: the key of a setting's field metadata that says whose value its default is
PROVENANCE = "provenance"
#: how a provenance begins: the paper states it (with its section, figure or table); an open choice of
#: ours (with why); a setting of how the work is done that leaves the results unchanged
PAPER, OURS, MECHANICS = "paper", "ours", "mechanics"


def paper_setting(default, where: str, note: str = ""):
    """A setting whose default the paper states: ``where`` names its section, figure or table
    ('Table 1', 'Sec. 4.1'); ``note`` adds how we read it. A dataclass field."""
    text = f"{PAPER}, {where}" + (f": {note}" if note else "")
    return dataclasses.field(default=default, metadata={PROVENANCE: text})


def our_setting(default, why: str):
    """A setting the paper leaves open: the default is our choice, ``why`` says why. A dataclass field."""
    return dataclasses.field(default=default, metadata={PROVENANCE: f"{OURS}: {why}"})


def mechanics_setting(default, what: str = "memory and speed, not results"):
    """A setting of how the work is done that leaves the results unchanged. A dataclass field."""
    return dataclasses.field(default=default, metadata={PROVENANCE: f"{MECHANICS}: {what}"})


def provenance(settings_type: type) -> dict[str, str]:
    """field -> whose its default is ('paper, Table 1', 'ours: ...', 'mechanics: ...'); '' for a
    field declared without one of the helpers above (``tests/test_settings.py`` allows none)."""
    return {field.name: field.metadata.get(PROVENANCE, "") for field in dataclasses.fields(settings_type)}


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """For an experiment without settings (every override is then an error)."""


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _convert(value: Any, hint, where: str):
    """``value`` as type ``hint``, or a ConfigError naming ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, where)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{where} must be a tuple, got {value!r}")
        item = args[0] if args else Any
        return tuple(v if item is Any else _convert(v, item, where) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Any:
        return value
    else:
        raise ConfigError(f"{where} has a type the settings checker does not support ({_type_name(hint)})")
    raise ConfigError(f"{where} must be {_type_name(hint)}, got {value!r}")


def resolve(settings_type: type, overrides: Mapping[str, Any], where: str):
    """``settings_type(**overrides)`` with every override checked: a field that does not exist or a
    value of the wrong type is a ConfigError naming ``where`` (e.g. "profile 'demo', experiment
    'masking'") and the valid fields."""
    fields = {f.name for f in dataclasses.fields(settings_type)}
    hints = typing.get_type_hints(settings_type)
    values = {}
    for key, value in overrides.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"{where} has no setting '{key}'; settings: {valid}")
        values[key] = _convert(value, hints[key], f"{where}, setting '{key}'")
    return settings_type(**values)


def describe(settings) -> list[tuple[str, str, Any, Any, str]]:
    """(field, type, default, value here, whose the default is) for every field of a settings instance."""
    hints = typing.get_type_hints(type(settings))
    rows = []
    for field in dataclasses.fields(settings):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        rows.append((field.name, _type_name(hints[field.name]), default, getattr(settings, field.name),
                     field.metadata.get(PROVENANCE, "")))
    return rows
