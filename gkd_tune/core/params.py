"""Run parameters, each declared once: a config dataclass field made with ``setting(...)`` carries its help text,
its allowed range or choices and whether a sweep may search it. Everything else is generated from those fields:

    space.py     the validation of search-space files (field paths, "did you mean", the allowed values)
    train.py     the ``train`` command's flags, with help and defaults
    tracking.py  a run's MLflow params (every value that shaped it)

A setting's public name (YAML key, ``--flag``, MLflow param) is the field's name unless ``name=`` says otherwise.
Nested config dataclasses (a schedule inside the distillation config) are walked: their settings are flat, so
their public names must be unique within the root config. Fields made with plain ``field`` are internal: fixed
by the code, still recorded in MLflow, never set by a user.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

KINDS = {int: "an integer", float: "a number", str: "a string"}
# An integer setting without a declared upper bound (epochs, batch size, trials, retries) stays below this: a
# larger one is a typo, and some (10^20) would overflow the C integers downstream.
MAX_INT = 10**6
# Seeds: what numpy and torch generators take.
SEED_RANGE = {"low": 0, "high": 2**32 - 1}


def number_text(value) -> str:
    """1000000, 4294967295, 0.5, 1e-05: whole numbers in full, the rest as %g."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else f"{value:g}"


@dataclass(frozen=True)
class Param:
    help: str
    choices: tuple | None = None
    low: float | None = None  # inclusive, unless above_low
    high: float | None = None  # inclusive
    above_low: bool = False
    searchable: bool = False  # may be a distribution in a space file's `params`
    name: str | None = None  # the public name, when not the field's
    aliases: tuple[str, ...] = ()  # further command-line flags

    def range_text(self) -> str:
        """The allowed values in words: 'one of a, b', '[0, 1]', '> 0', '>= 1'."""
        if self.choices is not None:
            also = getattr(self.choices, "also", "")  # choices that admit more than they list
            return f"one of {', '.join(map(str, self.choices))}" + (f", or {also}" if also else "")
        if self.low is not None and self.high is not None:
            return f"{'(' if self.above_low else '['}{number_text(self.low)}, {number_text(self.high)}]"
        if self.low is not None:
            return f"{'>' if self.above_low else '>='} {number_text(self.low)}"
        return f"<= {number_text(self.high)}" if self.high is not None else "any value"

    def problem(self, value) -> str | None:
        """What is wrong with a value of the right type ('must be >= 1, got 0'), or None."""
        if self.choices is not None and value not in self.choices:
            if hasattr(self.choices, "problem"):  # choices that say why themselves (models.ModelNames)
                return self.choices.problem(value)
            return f"must be {self.range_text()}, got {value!r}"
        outside = (self.low is not None and (value <= self.low if self.above_low else value < self.low)
                   or self.high is not None and value > self.high)
        return f"must be {self.range_text()}, got {value}" if outside else None


def setting(default, help: str, **declaration) -> Any:
    """A dataclass field that is a run parameter (see Param for the declaration's keywords)."""
    return field(default=default, metadata={"param": Param(help, **declaration)})


@dataclass(frozen=True)
class Setting:
    """A declared field found in a config tree."""

    name: str  # public name
    path: tuple[str, ...]  # field names from the root config down to this one
    kind: type  # int, float or str (None allowed where the default is None)
    default: Any
    param: Param

    def coerce(self, value):
        """`value` as this setting's type (an int is a fine float), or a TypeError saying what was expected."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if value is None and self.default is None:
            return None
        if not isinstance(value, self.kind) or isinstance(value, bool):
            raise TypeError(f"must be {KINDS[self.kind]}, got {value!r}")
        if self.kind is float and not math.isfinite(value):
            raise TypeError(f"must be a finite number, got {value!r}")
        return value


def _is_config(kind) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def settings(config_class: type, *, searchable: bool | None = None) -> list[Setting]:
    """The declared settings of a config class and of the config classes nested in it, in declaration order.
    `searchable`: only those a sweep may (True) or may not (False) search."""
    found = []
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        kind = hints[f.name]
        if _is_config(kind):
            found += [dataclasses.replace(s, path=(f.name, *s.path)) for s in settings(kind, searchable=searchable)]
        elif "param" in f.metadata:
            param = f.metadata["param"]
            if searchable is None or param.searchable == searchable:
                basic = next(k for k in KINDS if k in typing.get_args(kind) or k is kind)
                if basic is int and param.high is None and param.choices is None:
                    param = dataclasses.replace(param, high=MAX_INT)
                found.append(Setting(param.name or f.name, (f.name,), basic, f.default, param))
    return found


def check(config) -> None:
    """Raise ValueError for the first declared field of `config` (not of its nested configs, which check
    themselves) whose value is outside its declared range; called by each config's __post_init__."""
    for s in settings(type(config)):
        value = getattr(config, s.path[0])
        if len(s.path) == 1 and value is not None:  # None: "not set", where the default is None
            finite = not isinstance(value, float) or math.isfinite(value)
            problem = s.param.problem(value) if finite else f"must be a finite number, got {value}"
            if problem:
                raise ValueError(f"{s.name} {problem}")


def build(config_class: type, values: dict[str, Any]):
    """A config from public names -> values (nested configs included); what is not given keeps its default."""
    own = {}
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        if _is_config(hints[f.name]):
            nested = {s.name for s in settings(hints[f.name])}
            if nested & values.keys():
                own[f.name] = build(hints[f.name], {k: v for k, v in values.items() if k in nested})
        elif "param" in f.metadata:
            name = f.metadata["param"].name or f.name
            if name in values:
                own[f.name] = values[name]
    return config_class(**own)


def declared_values(config) -> dict[str, Any]:
    """The declared settings of a config (nested ones included) by public name: what a user set or could have."""
    out = {}
    for s in settings(type(config)):
        value = config
        for name in s.path:
            value = getattr(value, name)
        out[s.name] = value
    return out


def flatten(config) -> dict[str, Any]:
    """Every field of a config (nested ones included) by public name: declared settings and internal fields."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value))
        else:
            out[f.metadata["param"].name or f.name if "param" in f.metadata else f.name] = value
    return out


# ---------------------------------------------------------------------------------------------- command line


def add_flags(group, config_class: type, prefix: str = "") -> None:
    """One argparse flag per declared setting of `config_class`: ``--{prefix}{name}`` (underscores as dashes) plus
    its aliases as written, with its type, choices, default and help. The value lands in ``{prefix}{name}``."""
    for s in settings(config_class):
        dest = f"{prefix}{s.name}".replace("-", "_")
        flags = [f"--{dest.replace('_', '-')}"] + [f"--{alias}" for alias in s.param.aliases]
        many = s.param.choices is not None and len(s.param.choices) > 6  # listed in the help, not the usage line
        allowed = "" if s.param.choices is not None and not many or s.param.range_text() == "any value" else \
            f"; {s.param.range_text()}"
        choices, kind = s.param.choices, s.kind
        if hasattr(choices, "problem"):  # choices that say why a value is not one (models.ModelNames)
            choices, kind = None, _checked_by(s.param.choices)
        group.add_argument(*flags, dest=dest, default=s.default, choices=choices, type=kind,
                           metavar=s.name.upper() if s.param.choices is None or many else None,
                           help=(s.param.help + allowed).replace("%", "%%"))


def _checked_by(choices):
    """argparse's type for a flag whose choices say why a value is not one of them."""
    import argparse

    def check(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(choices.problem(text))
        return text

    return check


def from_flags(args, config_class: type, prefix: str = ""):
    """The config from the flags `add_flags` made (ranges checked by the config itself: ValueError)."""
    return build(config_class, {s.name: getattr(args, f"{prefix}{s.name}".replace("-", "_"))
                                for s in settings(config_class)})
