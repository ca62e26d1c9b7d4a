"""Config parsing: the stage's JSON text into a dataclass, with errors that name the field.

Supported field types: ``str``, ``int``, ``float``, ``bool``, ``list[T]``, ``dict[str, T]``,
``Optional[T]``, ``Literal[...]`` and nested dataclasses. Unknown fields are rejected (a typo in
a pipeline file fails at load time); fields without a default are required.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Optional

from ._errors import InvalidConfig

_JSON_TYPE = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(value: Any, ty: Any, path: str) -> Any:
    where = path or "config"
    origin = typing.get_origin(ty)
    args = typing.get_args(ty)
    if ty is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], path)
        for a in inner:
            try:
                return _convert(value, a, path)
            except InvalidConfig:
                pass
        raise InvalidConfig(f"{where}: unexpected {_describe(value)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise InvalidConfig(f"{where}: expected one of {', '.join(json.dumps(a) for a in args)}, got {json.dumps(value)}")
    if origin is list or ty is list:
        if not isinstance(value, list):
            raise InvalidConfig(f"{where}: expected an array, got {_describe(value)}")
        item = args[0] if args else Any
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or ty is dict:
        if not isinstance(value, dict):
            raise InvalidConfig(f"{where}: expected an object, got {_describe(value)}")
        item = args[1] if len(args) == 2 else Any
        return {k: _convert(v, item, _at(path, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(ty):
        return _dataclass(value, ty, path)
    if ty is bool:
        if isinstance(value, bool):
            return value
    elif ty is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif ty is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif ty is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"config field {where}: unsupported type {ty!r}")
    raise InvalidConfig(f"{where}: expected {_JSON_TYPE[ty]}, got {_describe(value)}")


# (type hints, init fields) per config dataclass. Resolving the hints evaluates the
# annotations (strings under `from __future__ import annotations`): ~40 µs natively for a
# four-field class, several times that in a component. `prepare` fills this when a plugin
# registers itself, which in a component happens at build time, so the snapshot every call
# starts from already holds it.
_SHAPES: dict = {}


def _shape(cls: type) -> tuple:
    shape = _SHAPES.get(cls)
    if shape is None:
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        shape = _SHAPES[cls] = (hints, fields)
    return shape


def prepare(cls: Optional[type]) -> None:
    """Resolves the field types of the config dataclass ``cls`` and of the dataclasses nested
    in them, ahead of the first :func:`parse_config`. Errors are left for that call."""
    if cls is None or not dataclasses.is_dataclass(cls) or cls in _SHAPES:
        return
    try:
        hints, fields = _shape(cls)
    except Exception:
        return
    for name in fields:
        _prepare_type(hints.get(name))


def _prepare_type(ty: Any) -> None:
    if isinstance(ty, type) and dataclasses.is_dataclass(ty):
        prepare(ty)
    for arg in typing.get_args(ty):
        _prepare_type(arg)


def _dataclass(value: Any, cls: type, path: str) -> Any:
    if not isinstance(value, dict):
        raise InvalidConfig(f"{path or 'config'}: expected an object, got {_describe(value)}")
    hints, fields = _shape(cls)
    unknown = [k for k in value if k not in fields]
    if unknown:
        expected = ", ".join(f"`{n}`" for n in fields) or "none"
        raise InvalidConfig(f"{_at(path, unknown[0])}: unknown field `{unknown[0]}`, expected one of {expected}")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(value[name], hints[name], _at(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InvalidConfig(f"{_at(path, name)}: missing field `{name}`")
    return cls(**kwargs)


def parse_config(text: str, cls: Optional[type] = None) -> Any:
    """Parses a stage's JSON config (empty text means ``{}``) into ``cls`` (a dataclass), or a
    ``dict`` when ``cls`` is None. Raises :class:`InvalidConfig` naming the bad field."""
    if not text.strip():
        text = "{}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidConfig(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if cls is None:
        if not isinstance(value, dict):
            raise InvalidConfig(f"config: expected an object, got {_describe(value)}")
        return value
    return _dataclass(value, cls, "")
