"""Typed settings from plain data: the machinery behind params.yaml and FrontendConfig (standard library only).

A settings class is a frozen dataclass whose fields are declared with `setting(default, check, doc)`. `build`
turns a mapping (parsed YAML, a model file's saved config) into an instance: a key that is not a field is
unknown, a value of the wrong type is refused, each field's `check` says which values are possible, and a class
may add checks across fields with a `problems()` method. Every refusal is one LeaflabError naming the key, the
value and what is allowed: `params.yaml: train.lr = -1.0: expected a finite number > 0`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any, Callable, Iterator

from leaflab.errors import LeaflabError

Check = Callable[[Any], "str | None"]   # None when the value is fine, else what is allowed
REQUIRED = dataclasses.MISSING          # a setting without a default must be given


def setting(default: Any = REQUIRED, check: Check | None = None, doc: str = "") -> Any:
    """A dataclass field with a validity check and a one-line doc (lists are written as tuples)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for list defaults")
    metadata = {"check": check, "doc": doc}
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---- checks ----------------------------------------------------------------------------------------------------
def positive(value) -> str | None:
    return None if value > 0 else "a number > 0"


def non_negative(value) -> str | None:
    return None if value >= 0 else "a number >= 0"


def fraction(value) -> str | None:
    return None if 0 <= value <= 1 else "a number in [0, 1]"


def in_range(low: float, high: float, unit: str = "", low_open: bool = False, high_open: bool = False) -> Check:
    """low ≤ value ≤ high (open ends excluded), described with brackets as it is checked."""
    text = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}" + (f" {unit}" if unit else "")

    def check(value):
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return None if above and below else f"a number in {text}"
    return check


def at_most(high: float, unit: str = "") -> Check:
    return lambda value: None if value <= high else f"a number <= {high:g}" + (f" {unit}" if unit else "")


def at_least(low: float, unit: str = "") -> Check:
    return lambda value: None if value >= low else f"a number >= {low:g}" + (f" {unit}" if unit else "")


def one_of(*allowed: str) -> Check:
    return lambda value: None if value in allowed else "one of " + ", ".join(allowed)


def each(check: Check, what: str = "") -> Check:
    """Every element of a non-empty list passes `check`."""
    def check_all(values):
        if len(values) == 0:
            return "a non-empty list" + (f" of {what}" if what else "")
        for value in values:
            problem = check(value)
            if problem:
                return f"a non-empty list of {what or problem}"
        return None
    return check_all


def distinct(check: Check | None = None, what: str = "values") -> Check:
    """A non-empty list of distinct elements, each passing `check`."""
    def check_list(values):
        if len(values) == 0:
            return f"a non-empty list of distinct {what}"
        if len(set(values)) != len(values):
            return f"a list of distinct {what}"
        if check is not None and any(check(v) for v in values):
            return f"a non-empty list of distinct {what}"
        return None
    return check_list


def ordered_pair(low: float | None = None, high: float | None = None) -> Check:
    """[lo, hi] with lo ≤ hi inside [low, high]."""
    def check(value):
        lo, hi = value
        if lo > hi:
            return "[low, high] with low <= high"
        if (low is not None and lo < low) or (high is not None and hi > high):
            return f"[low, high] within [{low:g}, {high:g}]"
        return None
    return check


def subset_of(allowed: tuple[str, ...]) -> Check:
    def check(value):
        if not value or any(v not in allowed for v in value):
            return "a non-empty list from " + ", ".join(allowed)
        return None
    return check


# ---- building instances ----------------------------------------------------------------------------------------
def child(where: str, key: str) -> str:
    """'params.yaml:' + 'data' → 'params.yaml: data'; 'params.yaml: data' + 'seed' → 'params.yaml: data.seed'."""
    if not where:
        return key
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


def refusal(where: str, value, allowed: str) -> LeaflabError:
    return LeaflabError(f"{where} = {value!r}: expected {allowed}")


def fields(cls) -> list[dataclasses.Field]:
    """The settings of a class: its fields declared with `setting` (not bookkeeping such as a source path)."""
    return [f for f in dataclasses.fields(cls) if "check" in f.metadata]


def coerce(tp, value, where: str, require_all: bool = False):
    """Check `value` against the annotation `tp`: YAML lists become tuples, ints become floats where a float is
    expected; NaN and ±inf are refused (no setting means them)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            value = as_dict(value)
        if not isinstance(value, dict):
            raise refusal(where, value, f"a mapping of {', '.join(f.name for f in fields(tp))}")
        return build(tp, value, where, require_all)
    if tp is bool:
        if not isinstance(value, bool):
            raise refusal(where, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise refusal(where, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
            raise refusal(where, value, "a number; YAML reads 1e-3 as text, write 1.0e-3")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise refusal(where, value, "a number")
        if not math.isfinite(value):
            raise refusal(where, value, "a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise refusal(where, value, "a string")
        return value
    if origin is typing.Union:
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        return coerce(options[0], value, where, require_all)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise refusal(where, value, "a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(args[0], v, f"{where}[{i}]", require_all) for i, v in enumerate(value))
        if len(value) != len(args):
            raise refusal(where, value, f"a list of {len(args)} values")
        return tuple(coerce(a, v, f"{where}[{i}]", require_all) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise refusal(where, value, "a mapping")
        return dict(value)
    raise TypeError(f"unsupported annotation {tp} at {where}")


def build(cls, mapping: dict, where: str = "", require_all: bool = False):
    """An instance of the settings class `cls` from `mapping`, every key checked (see the module docstring).

    require_all: every field must be given (params.yaml: a knob DVC does not see would silently take a code
    default); else missing fields take their defaults (a model file written before a field existed)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in mapping:
        if key not in names:
            raise LeaflabError(f"{child(where, str(key))}: unknown key; allowed keys here: {', '.join(sorted(names))}")
    values = {}
    for f in fields(cls):
        key_where = child(where, f.name)
        if f.name not in mapping:
            if require_all or (f.default is REQUIRED and f.default_factory is REQUIRED):
                if dataclasses.is_dataclass(hints[f.name]):
                    raise LeaflabError(f"{key_where}: missing; add the block with its keys "
                                       f"({', '.join(x.name for x in fields(hints[f.name]))})")
                raise LeaflabError(f"{key_where}: missing; add it{_documented(f)}")
            continue
        value = coerce(hints[f.name], mapping[f.name], key_where, require_all)
        check = f.metadata.get("check")
        problem = check(value) if check and value is not None else None
        if problem:
            raise refusal(key_where, mapping[f.name], problem)
        values[f.name] = value
    instance = cls(**values)
    raise_first_problem(instance, where)
    return instance


def _documented(f: dataclasses.Field) -> str:
    doc = f.metadata.get("doc")
    default = f.default if f.default is not REQUIRED else None
    parts = [f"e.g. {f.name}: {as_dict(default)!r}" if default is not None else "", doc or ""]
    text = "; ".join(p for p in parts if p)
    return f" ({text})" if text else ""


def problems(instance) -> Iterator[tuple[str, Any, str]]:
    """(key, value, what is allowed) for every invalid value of an instance built in code: the field checks of it
    and its nested settings, then their cross-field `problems()`."""
    hints = typing.get_type_hints(type(instance))
    for f in fields(type(instance)):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            for key, bad, allowed in problems(value):
                yield f"{f.name}.{key}", bad, allowed
            continue
        try:
            coerce(hints[f.name], value, f.name)
        except LeaflabError as err:
            yield f.name, value, str(err).split(": expected ", 1)[-1]
            continue
        check = f.metadata.get("check")
        problem = check(value) if check and value is not None else None
        if problem:
            yield f.name, value, problem
    own = getattr(instance, "problems", None)
    if callable(own):
        yield from own()


def raise_first_problem(instance, where: str) -> None:
    for key, value, allowed in problems(instance):
        raise refusal(child(where, key), value, allowed)


def as_dict(obj) -> Any:
    """A settings instance as plain data (tuples become lists), for YAML, JSON, MLflow and hashing."""
    if dataclasses.is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in fields(type(obj))}
    if isinstance(obj, (tuple, list)):
        return [as_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    return obj


def deep_merge(base: dict, overrides: dict) -> dict:
    """base with overrides applied key by key; nested mappings merge."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out
