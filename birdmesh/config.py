"""Typed job configs: YAML files loaded into frozen dataclasses, with validated ``--set a.b=value`` overrides.

Every job defines its config as nested frozen dataclasses with documented defaults. ``load_config`` starts from
those defaults, merges the YAML file, then the command-line overrides; an unknown key, a value of the wrong type or
out of its range (``Annotated[int, Bounds(...)]``, e.g. ``Count``) is a ``UserError`` naming the key and the file.
Floats must be finite: NaN never passes, infinity only where a field's ``Bounds(allow_inf=True)`` says so (a NaN
learning rate or loss weight passes every range check and ruins a run only later).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

from .errors import UserError

T = TypeVar("T")


class OutOfRange(UserError):
    """A value of the right type outside its ``Bounds``."""


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Allowed range of a numeric config value, attached to its type with ``typing.Annotated``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: ``low`` itself is excluded
    allow_inf: bool = False  # True: +-inf is a valid value of the field (meaning documented beside it)

    def check(self, value: float, key: str, source: str) -> None:
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        if too_low or (self.high is not None and value > self.high):
            low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
            high = "" if self.high is None else f"<= {self.high:g}"
            raise OutOfRange(f"{source}: key '{key}' must be {' and '.join(filter(None, (low, high)))}, got {value!r}")


Count = Annotated[int, Bounds(low=1)]  # sizes, steps per batch, numbers of things: at least 1
NonNegativeInt = Annotated[int, Bounds(low=0)]  # counts where 0 means "none" or "off"
Positive = Annotated[float, Bounds(low=0, low_open=True)]  # learning rates, temperatures, scales
NonNegative = Annotated[float, Bounds(low=0)]  # loss weights, margins
Fraction = Annotated[float, Bounds(low=0, high=1)]
# Frame sizes the pipeline works on: propagation matches on a 4- or 8-pixel grid and needs some cells across
# (at 16 px a small bird already vanishes from the propagation); the predictor's crops are resampled from the frame.
FrameSide = Annotated[int, Bounds(low=64)]
RenderSide = Annotated[int, Bounds(low=8)]  # sides of soft renders compared with labels (a few pixels per part)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str, allow_inf: bool = False) -> Any:
    """Check ``value`` against the annotation ``tp``; ints and numeric strings are accepted where floats are
    expected, and floats must be finite (``allow_inf``: infinities pass, NaN never)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        bounds = [b for b in extras if isinstance(b, Bounds)]
        value = _coerce(value, base, key, source, allow_inf=any(b.allow_inf for b in bounds))
        for b in bounds:
            b.check(value, key, source)
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(map(str, typing.get_args(tp)))
            raise UserError(f"{source}: key '{key}' expects one of {choices}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, source)
            except OutOfRange:
                raise  # the type matched: the range is what to report
            except UserError:
                pass
        raise UserError(f"{source}: key '{key}' expects {' or '.join(map(_type_name, options))}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{source}: key '{key}' expects a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise UserError(f"{source}: key '{key}' expects {len(args)} values, got {len(value)}")
            items = [_coerce(v, a, key, source) for v, a in zip(value, args)]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, key, source) for v in value]
        return tuple(items) if origin is tuple else items
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise UserError(f"{source}: key '{key}' is a section, got {value!r}")
        return _build(tp, value, key + ".", source)
    if tp is float:
        return _finite_float(value, key, source, allow_inf)
    if tp is bool and not isinstance(value, bool):
        raise UserError(f"{source}: key '{key}' expects true/false, got {value!r}")
    if tp in (int, float, str) and (not isinstance(value, tp) or isinstance(value, bool)):
        raise UserError(f"{source}: key '{key}' expects {tp.__name__}, got {value!r}")
    return value


def _finite_float(value: Any, key: str, source: str, allow_inf: bool) -> float:
    if isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(value, str):
        # YAML 1.1 reads exponents without a dot (1e-3, 5E4) as strings; users write them for learning rates
        with contextlib.suppress(ValueError):
            value = float(value)
    if not isinstance(value, float):
        raise UserError(f"{source}: key '{key}' expects float, got {value!r}")
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise OutOfRange(f"{source}: key '{key}' must be a finite number, got {value!r}")
    return value


def _build(cls: type[T], values: dict, prefix: str, source: str, base: T | None = None) -> T:
    """Build dataclass ``cls`` from ``base`` (or its defaults) updated with ``values``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in values:
        if name not in fields:
            raise UserError(f"{source}: unknown key '{prefix}{name}' (known: {', '.join(fields)})")
    current = base if base is not None else cls()
    kwargs = {}
    for name in fields:
        old = getattr(current, name)
        if name not in values:
            kwargs[name] = old
        elif _is_dataclass_type(hints[name]) and isinstance(values[name], dict):
            kwargs[name] = _build(hints[name], values[name], f"{prefix}{name}.", source, old)
        else:
            kwargs[name] = _coerce(values[name], hints[name], prefix + name, source)
    return cls(**kwargs)


def _nest(dotted: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple = ()) -> T:
    """Defaults of ``cls`` <- YAML file ``path`` <- ``overrides`` (``"a.b=value"``, value parsed as YAML).

    Raises:
        UserError: missing/unparsable file, unknown key, wrong type, malformed override.
    """
    cfg = cls()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: expected a mapping of keys at the top level")
        cfg = _build(cls, values, "", str(path), cfg)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        cfg = _build(cls, _nest(key.strip(), value), "", "--set", cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) of a config dataclass, for YAML, JSON and checkpoints."""

    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(cfg)


def config_from_dict(cls: type[T], values: dict, source: str = "checkpoint") -> T:
    """Rebuild a config saved by ``config_to_dict`` (e.g. from a checkpoint)."""
    return _build(cls, values, "", source)


def format_config(cfg: Any) -> str:
    """YAML text of a config, as printed at the start of every job."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, folder: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config beside a job's outputs."""
    path = Path(folder) / name
    path.write_text(format_config(cfg))
    return path


def add_config_arguments(parser, default_config: str | None) -> None:
    """Add the common ``--config FILE`` and repeated ``--set key=value`` options to an argparse parser."""
    parser.add_argument("--config", default=default_config, help="YAML config file (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set train.lr=3e-4 (repeatable)")
