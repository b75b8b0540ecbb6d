"""One definition per setting: a dataclass field that carries its help and its constraints.

`setting(default, help, ge=..., choices=...)` is all a step's config declares. From it come the TOML
key and the `ilf run key=value` override (ilf.config), the step command's flag and its help
(ilf.cli.settings_flags), and one validation, `check`, which every dataclass runs in `__post_init__`,
so a config built from a file, from flags or in Python is refused the same way.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from ilf.errors import IlfError


class SettingError(IlfError):
    """A bad value for one field; the caller says where it came from (file:line, flag, key)."""

    def __init__(self, name: str, problem: str):
        self.name, self.problem = name, problem
        super().__init__(f"{name} {problem}")


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Any = dataclasses.MISSING,
    choices: tuple | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    cli: bool = True,
    flag: str | None = None,
) -> Any:
    """A dataclass field with its help and constraints. Numbers must also be finite; for a list the
    constraints apply to each element. cli=False: the field is a key of the run config only; flag: the
    command-line name when it is not the field's (ModelConfig.base is `--model`)."""
    md = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "cli": cli, "flag": flag}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


def override(cls: type, name: str, default: Any, help: str | None = None) -> Any:
    """The field `name` of `cls` with another default (a subclass's), same constraints."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    md = dict(f.metadata)
    if help is not None:
        md["help"] = help
    return dataclasses.field(default=default, metadata=md)


def settings_fields(cls_or_obj: Any) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls_or_obj) if "help" in f.metadata]


def flag_name(field: dataclasses.Field) -> str:
    """The field's name on the command line, without the dashes or a prefix."""
    return field.metadata.get("flag") or field.name


def _describe(md: dict) -> str:
    parts = []
    if md.get("ge") is not None:
        parts.append(f">= {md['ge']:g}")
    if md.get("gt") is not None:
        parts.append(f"> {md['gt']:g}")
    if md.get("le") is not None:
        parts.append(f"<= {md['le']:g}")
    return " and ".join(parts)


def _check_value(name: str, value: Any, tp: Any, md: dict) -> None:
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise SettingError(name, f"must be a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        for v in value:
            _check_value(name, v, inner, md)
        return
    if tp is bool and not isinstance(value, bool):
        raise SettingError(name, f"must be true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise SettingError(name, f"must be an integer, got {value!r}")
    if tp is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise SettingError(name, f"must be a number, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise SettingError(name, f"must be a string, got {value!r}")
    if tp in (int, float):
        bounds = _describe(md)
        ok = math.isfinite(value)
        ok = ok and (md.get("ge") is None or value >= md["ge"]) and (md.get("gt") is None or value > md["gt"])
        ok = ok and (md.get("le") is None or value <= md["le"])
        if not ok:
            what = "an integer" if tp is int else "a finite number"
            raise SettingError(name, f"must be {what}{' ' + bounds if bounds else ''}, got {value!r}")
    if md.get("choices") is not None and value not in md["choices"]:
        raise SettingError(name, f"must be one of {', '.join(map(str, md['choices']))}, got {value!r}")


def check(obj: Any) -> None:
    """Validate every setting of a dataclass instance (int given for a float is made a float)."""
    hints = typing.get_type_hints(type(obj))
    for f in settings_fields(obj):
        value = getattr(obj, f.name)
        if hints[f.name] is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            object.__setattr__(obj, f.name, value)
        if typing.get_origin(hints[f.name]) is list and isinstance(value, list) and typing.get_args(hints[f.name]) == (float,):
            value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
            object.__setattr__(obj, f.name, value)
        _check_value(f.name, value, hints[f.name], f.metadata)
