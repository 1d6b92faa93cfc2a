"""Dataclass configs loaded from YAML, with `a.b=c` command-line overrides.

Strict on purpose: an unknown key, a wrong type or a missing field is a ConfigError naming the file
and the dotted key, so a typo in a sweep fails at startup instead of silently training the default.
YAML is read with YAML 1.2 scalar rules that PyYAML (1.1) lacks: `3e-4` is a float, not a string;
only true/false are booleans (`no`, `on`, `yes` stay strings) and dates stay strings. So no value
changes type behind the author's back, and everything loaded is JSON-able (see `config_hash`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be loaded; the message names the file (when there is one) and the key."""

    key: str | None = None  # the dotted key a type error is about, so unions can tell shallow from deep


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        # PyYAML keeps the last of two equal keys; a duplicated key is almost always an editing slip.
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if (key_node.tag, key_node.value) in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add((key_node.tag, key_node.value))
        return super().construct_mapping(node, deep=deep)


_DROP = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in rs if tag not in _DROP] for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
# YAML 1.1 floats need a dot and a signed exponent; this adds `3e-4`, `1e5`, `1.5E3`.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _yaml_load(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: invalid YAML{at}: {getattr(e, 'problem', None) or e}") from None


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if args:
        return f"{getattr(origin, '__name__', origin)}[{', '.join('...' if a is ... else _type_name(a) for a in args)}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _got(value: Any) -> str:
    text = repr(value)
    return f"{text if len(text) <= 80 else text[:77] + '...'} ({type(value).__name__})"


def _convert(tp: Any, value: Any, key: str, where: str) -> Any:
    def bad(expected: str | None = None) -> ConfigError:
        err = ConfigError(f"{where}: key '{key}' expects {expected or _type_name(tp)}, got {_got(value)}")
        err.key = key
        return err

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        deeper: list[ConfigError] = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, key, where)
            except ConfigError as e:
                # A failure below this key means the value had this option's shape (say, a typo inside a
                # sub-config): that message is the useful one, not "expects Sub | None".
                if e.key != key:
                    deeper.append(e)
        raise deeper[0] if deeper else bad()
    if origin is Literal:
        # `True == 1`, so compare types too or a bool would satisfy Literal[1].
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise bad("one of " + ", ".join(map(repr, args)))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise bad(f"a mapping for {tp.__name__}")
        return from_dict(tp, value, where=where, prefix=key)
    if tp in (list, tuple, dict):
        origin, args = tp, ()
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise bad()
        if origin is tuple and args and args[-1] is not ...:  # fixed-length tuple[int, int, int]
            if len(value) != len(args):
                raise bad(f"{_type_name(tp)} ({len(args)} items)")
            return tuple(_convert(a, v, f"{key}[{i}]", where) for i, (a, v) in enumerate(zip(args, value)))
        items = [_convert(args[0] if args else Any, v, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise bad()
        kt, vt = args or (Any, Any)
        return {_convert(kt, k, f"{key} (key {k!r})", where): _convert(vt, v, _key(key, str(k)), where)
                for k, v in value.items()}
    if tp is float and isinstance(value, str):  # a quoted "3e-4", or data read by a plain YAML 1.1 loader
        try:
            return float(value)
        except ValueError:
            raise bad() from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Path and isinstance(value, str):
        return Path(value)
    if not isinstance(tp, type):
        raise ConfigError(f"{where}: key '{key}' has unsupported type {_type_name(tp)}")
    # bool is an int subclass, but `flag: 1` or `steps: true` is a mistake, not a value.
    if not isinstance(value, tp) or (isinstance(value, bool) and tp is not bool):
        raise bad()
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "<config>", prefix: str = "") -> T:
    """Build dataclass `cls` from plain data, checking every key and type against its annotations."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: key '{prefix or '<top level>'}' expects a mapping, got {_got(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in fields:
            close = difflib.get_close_matches(str(name), list(fields), n=1)
            hint = f" (did you mean '{_key(prefix, close[0])}'?)" if close else ""
            under = f"under '{prefix}'" if prefix else "at top level"
            raise ConfigError(f"{where}: unknown key '{_key(prefix, str(name))}'{hint}; "
                              f"valid keys {under}: {', '.join(sorted(fields))}")
        kwargs[name] = _convert(hints[name], value, _key(prefix, name), where)
    missing = [_key(prefix, n) for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key " + ", ".join(f"'{m}'" for m in missing))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:  # the dataclass's own __post_init__ validation
        raise ConfigError(f"{where}: invalid '{prefix}': {e}" if prefix else f"{where}: {e}") from e


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain YAML/JSON-able dict (tuples become lists); inverse of `from_dict`."""
    if not (isinstance(obj, Mapping) or (dataclasses.is_dataclass(obj) and not isinstance(obj, type))):
        raise TypeError(f"to_dict expects a dataclass instance or a mapping, got {type(obj).__name__}")
    return _plain(obj)


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # init=False fields are derived; from_dict could not accept them back.
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.lr=3e-4"` -> `(["train", "lr"], 0.0003)`; the value is YAML, an empty value is `""`."""
    key, sep, raw = text.partition("=")
    path = [p.strip() for p in key.split(".")]
    if not sep or not all(path):
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE")
    if not raw.strip():
        return path, ""
    return path, _yaml_load(raw, f"override {text!r} (quote the value if it is a plain string)")


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Deep-set each `a.b=c` into a copy of `data`, creating intermediate mappings as needed."""
    out = _plain(data)  # a deep copy: the caller's dict may be a cached base config
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            if node.get(part) is None:  # absent, or an Optional sub-config left at null
                node[part] = {}
            elif not isinstance(node[part], dict):
                raise ConfigError(f"override {text!r}: key '{'.'.join(path[:i + 1])}' is not a mapping")
            node = node[part]
        node[path[-1]] = value
    return out


def _merge(base: dict, own: Mapping) -> dict:
    out = dict(base)
    for k, v in own.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, Mapping) else v
    return out


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a YAML mapping; a top-level `base: other.yaml` (relative to this file) is merged underneath."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _chain:
        raise ConfigError(f"{path}: 'base' cycle: {' -> '.join(str(p) for p in (*_chain, resolved))}")
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from None
    data = _yaml_load(text, str(path))
    data = {} if data is None else data  # an empty file is an empty config: all defaults
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: key 'base' expects a file path (str), got {_got(base)}")
    base_path = path.parent / base  # an absolute `base` wins the join
    if not base_path.is_file():
        raise ConfigError(f"{path}: key 'base': file not found: {base_path}")
    return _merge(load_yaml(base_path, (*_chain, resolved)), data)


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """The one entry point commands use: YAML file (or none: all defaults) + overrides -> checked `cls`."""
    data = load_yaml(path) if path is not None else {}
    where = str(path) if path is not None else "<overrides>"
    return from_dict(cls, apply_overrides(data, overrides), where=where)


def config_hash(obj: Any) -> str:
    """Stable short id of a config (first 16 hex of sha256 over canonical JSON), for run dirs and caches."""
    canon = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def fill(cls: type[T], template: Any, **values: Any) -> T:
    """A `cls` from `template`, an instance of a dataclass derived from `cls` that leaves some of its fields open
    (a pipeline stage's config: the job's config less the paths the stage fills in), with `values` set."""
    if not isinstance(template, cls):
        raise TypeError(f"fill({cls.__name__}, ...) expects a {cls.__name__} template, got {type(template).__name__}")
    return cls(**{f.name: getattr(template, f.name) for f in dataclasses.fields(cls) if f.init} | values)
