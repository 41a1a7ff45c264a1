"""Generic machinery that turns plain mappings into typed dataclasses and back.

Kept apart from the schema itself (``distill.config``) so the schema reads as a list of
documented fields. Every error names the dotted key, what was given and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Union

from distill.errors import UserError, quote


def meta(help: str, *, choices: tuple[str, ...] | None = None,
         min: float | None = None, max: float | None = None,
         nonfinite: bool = False) -> dict[str, Any]:
    """Field metadata: the documentation and the allowed range of one recipe key. NaN and
    infinities are refused (NaN passes every comparison, so no range would stop it) unless
    ``nonfinite`` says the field means something by them; no field does today."""
    return {"help": help, "choices": choices, "min": min, "max": max, "nonfinite": nonfinite}


def suggest(name: str, allowed: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _describe(value: Any) -> str:
    return f"{quote(value)} ({type(value).__name__})"


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) for ``X | None``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _type_name(tp: Any) -> str:
    inner, optional = _split_optional(tp)
    if dataclasses.is_dataclass(inner):
        name = "a mapping"
    elif typing.get_origin(inner) is list:
        (item_type,) = typing.get_args(inner)
        name = {str: "a list of strings", int: "a list of integers"}.get(
            item_type, "a list of mappings")
    elif typing.get_origin(inner) is dict:
        name = "a mapping"
    else:
        name = {int: "an integer", float: "a number", bool: "true or false",
                str: "a string"}.get(inner, str(inner))
    return f"{name} or null" if optional else name


def _convert(value: Any, tp: Any, key: str) -> Any:
    inner, optional = _split_optional(tp)
    if value is None:
        if optional:
            return None
        raise UserError(f"{key}: null is not allowed; expected {_type_name(tp)}.")
    if dataclasses.is_dataclass(inner):
        # A bare number for a schedule means a constant schedule: `temperature: 2.0`.
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and "start" in {f.name for f in dataclasses.fields(inner)}:
            value = {"kind": "constant", "start": float(value)}
        if not isinstance(value, dict):
            raise UserError(f"{key}: got {_describe(value)}; expected {_type_name(tp)}.")
        return build(inner, value, key)
    if inner is bool:
        if isinstance(value, bool):
            return value
    elif inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif inner is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(inner) is list:
        (item_type,) = typing.get_args(inner)
        if dataclasses.is_dataclass(item_type) and isinstance(value, list):
            return [_convert(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
        items = [value] if isinstance(value, (str, int)) and not isinstance(value, bool) \
            else value
        if isinstance(items, list) and all(isinstance(v, item_type) and not isinstance(v, bool)
                                           for v in items):
            return list(items)
    elif typing.get_origin(inner) is dict:
        if isinstance(value, dict):
            return dict(value)
    raise UserError(f"{key}: got {_describe(value)}; expected {_type_name(tp)}.")


def _refuse_nonfinite(value: Any, key: str) -> None:
    """NaN or an infinity anywhere in ``value`` (a number, or nested in a mapping such as
    ``student.overrides``) stops here, named by its dotted key."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{key}: got {value!r}; must be a finite number.")
    if isinstance(value, dict):
        for name, item in value.items():
            _refuse_nonfinite(item, f"{key}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_nonfinite(item, f"{key}[{i}]")


def _check_range(value: Any, info: dict[str, Any], key: str) -> None:
    if value is None:
        return
    if not info.get("nonfinite"):
        _refuse_nonfinite(value, key)
    choices = info.get("choices")
    if choices and value not in choices:
        allowed = ", ".join(choices)
        raise UserError(f"{key}: got {quote(value)}; allowed: {allowed}."
                        f"{suggest(str(value)[:100], choices)}")
    low, high = info.get("min"), info.get("max")
    if low is not None and value < low:
        raise UserError(f"{key}: got {quote(value)}; must be >= {low}.")
    if high is not None and value > high:
        raise UserError(f"{key}: got {quote(value)}; must be <= {high}.")


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys, wrong types and ranges."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    moved = getattr(cls, "moved", {})
    for name in data:
        if name not in fields:
            key = f"{prefix}.{name}" if prefix else str(name)
            where = f" in '{prefix}'" if prefix else ""
            if name in moved:
                new = f"{prefix}.{moved[name]}" if prefix else moved[name]
                raise UserError(f"unknown key '{key}'{where}: it moved to '{new}'. Did you "
                                f"mean '{new}'?")
            raise UserError(f"unknown key '{key}'{where}.{suggest(str(name), fields)} "
                            f"Allowed: {', '.join(fields)}.")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        choices = fields[name].metadata.get("choices") or ()
        if isinstance(value, bool) and {"on", "off"} <= set(choices):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        kwargs[name] = _convert(value, hints[name], key)
        _check_range(kwargs[name], dict(fields[name].metadata), key)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """The plain-data form of a recipe dataclass (what config.yaml holds)."""
    return dataclasses.asdict(obj)


def flatten(value: Any, prefix: str = "", keep_empty: bool = False) -> dict[str, Any]:
    """Nested mappings -> dotted keys (``loss.soft_weight.start``). An empty mapping
    vanishes, or with ``keep_empty`` stays one key holding ``{}`` (so that a diff sees
    ``student.overrides`` go from empty to set)."""
    if not isinstance(value, dict) or (keep_empty and not value):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key), keep_empty))
    return flat


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.max_steps=50`` -> (['train', 'max_steps'], 50); the value is parsed as YAML,
    by the recipe's own rules (no aliases, no duplicate keys)."""
    import yaml

    from distill.recipe_yaml import RefusedYAML, load_yaml

    if "=" not in text:
        raise UserError(f"override {quote(text)} is not of the form key=value "
                        "(for example train.max_steps=50).")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"override {quote(text)}: the key {quote(key)} has an empty part.")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except RefusedYAML as exc:
        raise UserError(f"override {quote(key)}: {exc}") from None
    except yaml.YAMLError:
        value = raw  # not YAML: the text itself, e.g. a path with a colon
    return parts, value


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            # A scalar schedule (`temperature: 2.0`) may be refined key by key.
            if isinstance(child, (int, float)) and not isinstance(child, bool):
                child = {"kind": "constant", "start": float(child)}
                node[part] = child
            else:
                raise UserError(f"{'.'.join(parts[:i + 1])} is {_describe(child)}, "
                                f"so '{'.'.join(parts)}' cannot be set inside it.")
        node = child
    node[parts[-1]] = value


def reference_markdown(cls: type, prefix: str = "") -> str:
    """Markdown table rows documenting every field of ``cls`` (recursively)."""
    rows: list[str] = []
    hints = typing.get_type_hints(cls)
    defaults = cls()
    nested: list[tuple[str, type]] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        inner, _ = _split_optional(hints[f.name])
        info = f.metadata
        allowed = []
        if info.get("choices"):
            allowed.append(" / ".join(f"`{c}`" for c in info["choices"]))
        if info.get("min") is not None:
            allowed.append(f">= {info['min']}")
        if info.get("max") is not None:
            allowed.append(f"<= {info['max']}")
        default = getattr(defaults, f.name)
        if dataclasses.is_dataclass(default):
            if hasattr(default, "start"):  # a schedule: show what differs from a bare one
                bare = to_dict(type(default)())
                shown = "`" + ", ".join(f"{k}: {v}" for k, v in to_dict(default).items()
                                        if v != bare[k] or k in ("kind", "start")) + "`"
            else:
                shown = "(section)"
        else:
            shown = "null" if default is None else f"`{default!r}`"
        meaning = info.get("help", "") + (f" Allowed: {', '.join(allowed)}." if allowed else "")
        rows.append(f"| `{key}` | {_type_name(hints[f.name])} | {shown} | {meaning} |")
        if dataclasses.is_dataclass(inner) and not hasattr(inner, "start"):
            nested.append((key, inner))
        elif typing.get_origin(inner) is list and dataclasses.is_dataclass(
                typing.get_args(inner)[0]):
            nested.append((f"{key}[]", typing.get_args(inner)[0]))
    text = "\n".join(rows)
    for key, inner in nested:
        text += "\n" + reference_markdown(inner, prefix=f"{key}.")
    return text
