"""The option machinery: settings described once, as dataclass fields carrying help text and limits
(``option``), and everything made from that one description: the command-line flags
(``add_arguments``), the YAML reader (``from_mapping``) with one-line errors that name the key,
``--set key=value`` overrides, validation, and the argparse types of the other commands' flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import reprlib
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import UserError

_NONE_TYPE = type(None)

# Values in messages: short and on one line, however large or odd the value is (a YAML alias
# bomb must not hang the error message, a newline must not break it).
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel = 60, 60, 2
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4


def _show(value: Any, limit: int = 100) -> str:
    """A short one-line repr of ``value`` for messages."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _name(key: str) -> str:
    """``key`` for messages: as is when printable, else with escapes (one line)."""
    return key if key.isprintable() else repr(key)[1:-1]


def option(default: Any = None, help: str = "", *, choices: tuple | None = None, minimum: float | None = None,
           maximum: float | None = None, exclusive_minimum: bool = False, required: bool = False,
           key: str | None = None, cli: bool = True, path: bool = False) -> Any:
    """A dataclass field with what the CLI and the validator need to know about it.

    ``key``: the name users write (YAML key, and ``--key`` on the command line) when it cannot be
    the attribute's (``from`` is a Python keyword). ``path``: the value names a file or folder (it
    may differ when a run folder is moved and resumed).
    """
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum,
            "exclusive_minimum": exclusive_minimum, "required": required, "key": key, "cli": cli,
            "path": path}
    return dataclasses.field(default=default, metadata=meta)


def user_key(f: dataclasses.Field) -> str:
    """The name users write for a field: its ``key``, else the attribute name."""
    return f.metadata.get("key") or f.name


def flag_of(f: dataclasses.Field) -> str:
    return "--" + user_key(f).replace("_", "-")


def defaults(**changes: Any):
    """Class decorator (under ``@dataclass``): new defaults for inherited options of one stage.

    Each value is the new default, or ``Changed(default, help, type=...)`` to also change the help
    text or type. Limits, choices and the flag stay those of the option group, declared once.
    """

    def wrap(cls):
        inherited = {f.name: f for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)
                     for f in reversed(dataclasses.fields(base))}
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        for name, value in changes.items():
            base = inherited[name]
            new = value if isinstance(value, Changed) else Changed(value)
            hint = new.type if new.type is not None else _hints(_owner(cls, name))[name]
            meta = dict(base.metadata)
            if new.help is not None:
                meta["help"] = new.help
            annotations[name] = hint
            setattr(cls, name, dataclasses.field(default=new.default, metadata=meta))
        cls.__annotations__ = annotations
        return cls

    return wrap


@dataclasses.dataclass(frozen=True)
class Changed:
    """A changed default for ``defaults``: the value, and optionally new help text or type."""

    default: Any
    help: str | None = None
    type: Any = None



def _owner(cls, name: str):
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base) and name in base.__dict__.get("__annotations__", {}):
            return base
    raise KeyError(name)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(hint) -> tuple[Any, bool]:
    if typing.get_origin(hint) is Union:
        args = [a for a in typing.get_args(hint) if a is not _NONE_TYPE]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _type_name(hint) -> str:
    base, optional = _unwrap_optional(hint)
    if typing.get_origin(base) is list:
        name = f"a list of {typing.get_args(base)[0].__name__}"
    else:
        name = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                dict: "a mapping of settings"}.get(base, str(base))
    return name + (" or null" if optional else "")


def coerce(value: Any, hint, where: str) -> Any:
    """Check ``value`` against a type hint; ints pass for floats, nothing else is converted."""
    base, optional = _unwrap_optional(hint)
    if value is None:
        if optional:
            return None
        raise UserError(f"{where} must be {_type_name(hint)}, not null")
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise UserError(f"{where} must be {_type_name(hint)}, got {_show(value)}")
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond float range
                number = math.inf
            if not math.isfinite(number):
                raise UserError(f"{where} must be a finite number, got {_show(value)}")
            return number
    elif base is dict:
        if isinstance(value, dict):
            return value
    elif base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # YAML reads `head_layer: 1` as an int
    raise UserError(f"{where} must be {_type_name(hint)}, got {_show(value)}")


def _check_limits(value: Any, meta: dict, where: str) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v is None:
            continue
        if meta["choices"] and v not in meta["choices"]:
            raise UserError(f"{where} must be one of {', '.join(map(str, meta['choices']))}; got {_show(v)}")
        lo, hi = meta["minimum"], meta["maximum"]
        if lo is not None and (v < lo or (meta["exclusive_minimum"] and v == lo)):
            raise UserError(f"{where} must be {'>' if meta['exclusive_minimum'] else '>='} {lo}; got {_show(v)}")
        if hi is not None and v > hi:
            raise UserError(f"{where} must be <= {hi}; got {_show(v)}")


def validate(cfg: Any, prefix: str = "") -> Any:
    """Type- and range-check every field of a config dataclass in place; returns it."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        where = f"config key '{prefix}{user_key(f)}'"
        value = coerce(getattr(cfg, f.name), hints[f.name], where)
        _check_limits(value, f.metadata, where)
        if f.metadata.get("required") and value in (None, ""):
            raise UserError(f"{where} is required (on the command line: {flag_of(f)})")
        setattr(cfg, f.name, value)
    check = getattr(cfg, "check", None)
    if check is not None:
        check()
    return cfg


def unknown_key_error(key: str, known: list[str], prefix: str = "") -> UserError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '{prefix}{close[0]}'?" if close else f"known keys: {', '.join(sorted(known))}"
    return UserError(f"unknown config key '{_name(prefix + key)}': {hint}")


def from_mapping(cls, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build and validate a config dataclass from a dict (YAML); unknown keys are errors."""
    if data is not None and not isinstance(data, dict):
        where = f"config section '{_name(prefix.rstrip('.'))}'" if prefix else "a config"
        raise UserError(f"{where} must be a mapping of keys to values, got {_show(data)}")
    data = dict(data or {})
    attribute = {user_key(f): f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in attribute:
            raise unknown_key_error(str(key), list(attribute), prefix)
    return validate(cls(**{attribute[k]: v for k, v in data.items()}), prefix)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain data under the users' keys (for YAML files and checkpoints)."""
    return {user_key(f): getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


MAX_DEPTH = 32  # nesting of YAML lists and mappings; no setting comes near it
_OPEN = (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken, yaml.BlockSequenceStartToken,
         yaml.BlockMappingStartToken)
_CLOSE = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)


def safe_load(text: str, what: str) -> Any:
    """``yaml.safe_load`` of text nested at most ``MAX_DEPTH`` deep: PyYAML composes nested values by
    recursion, and a deeper text (``[[[[...`` thousands deep) would exhaust Python's stack. The depth is
    measured first by the scanner, which does not recurse."""
    depth = 0
    for token in yaml.scan(text):
        depth += isinstance(token, _OPEN) - isinstance(token, _CLOSE)
        if depth > MAX_DEPTH:
            raise UserError(f"{what} nests lists or mappings more than {MAX_DEPTH} deep (line {token.start_mark.line + 1}): "
                            "no setting is nested like that; fix the value")
    return yaml.safe_load(text)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist: check the path")
    try:
        data = safe_load(path.read_text(), f"config file {path}")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"config file {path} is not valid YAML{where}: fix its syntax") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not a text file: pass a YAML file") from None
    except ValueError as exc:  # what the scanner lets through, e.g. an escape past the last code point
        raise UserError(f"config file {path} is not valid YAML ({exc}): fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], value parsed as YAML)."""
    if "=" not in text:
        raise UserError(f"--set {text!r} must look like key=value (e.g. --set pretrain.epochs=10)")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise UserError(f"--set {text!r} has no key before '='")
    try:
        value = safe_load(raw, f"--set {key.strip()}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set key=value`` overrides to a nested mapping (creating sections as needed)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field: ``--field-name`` (or ``--key``), booleans as --x/--no-x.

    Defaults are suppressed so that only flags the user gave override a config file.
    """
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        flag = flag_of(f)
        base, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = meta.get("help", "")
        if not meta.get("required") and not (default is None and "default:" in help_text):
            help_text += f" (default: {default})"
        help_text = help_text.replace("%", "%%")  # argparse formats help strings with %
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(base) is list:
            kwargs["nargs"] = "+"
            base = typing.get_args(base)[0]
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        kwargs["type"] = base
        kwargs["metavar"] = f.name.upper()
        parser.add_argument(flag, **kwargs)


def from_args(cls, args: argparse.Namespace, config_path: str | None = None,
              overrides: list[str] | None = None) -> Any:
    """Config from an optional YAML file, then ``--set`` overrides, then explicit flags."""
    data = load_yaml(config_path) if config_path else {}
    data = apply_overrides(data, overrides or [])
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            data[user_key(f)] = getattr(args, f.name)
    return from_mapping(cls, data)


def save_yaml(data: dict[str, Any], path: str | Path) -> None:
    from ..checkpoint import atomic_write_bytes

    atomic_write_bytes(path, yaml.safe_dump(data, sort_keys=False).encode())


MAX_IMAGE_SIZE = 2048  # a 100,000 px side would be killed by the kernel, not refused


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (``--top-k 0`` is a usage error, exit code 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    if value > 1 << 20:
        raise argparse.ArgumentTypeError(f"must be at most {1 << 20}, got {value}")
    return value


def image_side(text: str) -> int:
    """An argparse type: an image side from 8 to MAX_IMAGE_SIZE pixels."""
    value = positive_int(text)
    if not 8 <= value <= MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be from 8 to {MAX_IMAGE_SIZE} pixels, got {value}")
    return value
