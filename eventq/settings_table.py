"""One record per setting: its field, its ``EVENTQ_*`` variable, how it is parsed, its bounds and help.

Each settings class declares a :class:`Table` of :class:`Setting` records next to it, and
everything that names a variable comes from that table (docs/adr/0013-settings-and-secrets.md):

- ``from_env`` is :meth:`Table.read`: each field from its variable unless overridden
  (an overridden field's variable is not even parsed); unset or empty means the default;
  a bad value is a :class:`~eventq.errors.ConfigError` naming the variable;
- the bounds and choices in ``__post_init__`` are :meth:`Table.check`, so a value built
  in code meets the same bounds as one read from the environment (rules that relate
  two fields stay hand-written, naming the variables through :meth:`Table.variable`);
- the CLI options are :func:`eventq.clikit.option` of a record (type, range, help);
- README's Configuration section is tested against :func:`variables`.

The default stays on the dataclass field, where a reader of the class looks for it; the
table reads it from there. Plain data and functions: no metaclass, nothing generated as text.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from eventq.errors import ConfigError

T = TypeVar("T")

# The longest duration a setting may have: aiokafka passes timeouts to the broker as
# milliseconds in a signed 32-bit int, so about 24.8 days is the most any of them can mean.
MAX_SECONDS = (2**31 - 1) // 1000
MAX_INT = 2**31 - 1

Kind = Literal["str", "raw", "upper", "int", "float", "seconds", "bool", "csv", "choice"]
"""How a variable's text becomes the field's value:

``str``: stripped text; ``raw``: the text as given, even empty or with spaces (a password);
``upper``: stripped and upper-cased (its ``choices``, if any, are checked on construction only);
``int``, ``float``: a number within ``minimum``..``maximum``; ``seconds``: a finite float from
``minimum`` (default 0) to :data:`MAX_SECONDS`; ``bool``: true/1/yes or false/0/no;
``csv``: a comma-separated list, as a tuple; ``choice``: one of ``choices``, in any case.
"""

_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class Setting:
    """One setting: which field, which variable, how it is parsed and checked, and a line of help."""

    field: str
    variable: str
    kind: Kind = "str"
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    default_text: str | None = None  # what the default means when it is not a plain value ("the App's name")

    @property
    def lowest(self) -> float:
        """The smallest value the variable may have (an integer is never negative unless declared so)."""
        return self.minimum if self.minimum is not None else 0

    @property
    def highest(self) -> float:
        """The largest value the variable may have."""
        if self.maximum is not None:
            return self.maximum
        return MAX_SECONDS if self.kind in ("seconds", "float") else MAX_INT


@dataclass(frozen=True)
class Table(Generic[T]):
    """A settings class's records, with the class's defaults; built by :func:`table`."""

    cls: Callable[..., T]
    settings: tuple[Setting, ...]
    defaults: Mapping[str, Any]

    def __iter__(self) -> Iterator[Setting]:
        return iter(self.settings)

    def __getitem__(self, field: str) -> Setting:
        for setting in self.settings:
            if setting.field == field:
                return setting
        raise KeyError(field)

    def variable(self, field: str) -> str:
        """The variable of ``field``: for messages of hand-written checks."""
        return self[field].variable

    def default_text(self, setting: Setting) -> str | None:
        """The default as the help and README say it; None when the default is "unset"."""
        if setting.default_text is not None:
            return setting.default_text
        default = self.defaults[setting.field]
        if isinstance(default, bool):
            return str(default).lower()
        if isinstance(default, float):
            return f"{default:g}"
        return None if default in (None, ()) else str(default)

    def read(
        self,
        env: Mapping[str, str] | None,
        overrides: Mapping[str, Any],
        **nested: Callable[[Mapping[str, str]], Any],
    ) -> T:
        """``cls(**fields)``: each field from its variable (``nested`` ones from their factory, given the
        environment) unless ``overrides`` gives it, in which case it is not read."""
        e = os.environ if env is None else env
        values = {s.field: parse(s, e, self.defaults[s.field]) for s in self.settings if s.field not in overrides}
        values.update({name: make(e) for name, make in nested.items() if name not in overrides})
        return self.cls(**values, **overrides)

    def check(self, obj: object) -> None:
        """Raise ConfigError naming the field and its variable if a field of ``obj`` is out of its bounds."""
        for setting in self.settings:
            value = getattr(obj, setting.field)
            if value is None and self.defaults[setting.field] is None:
                continue  # an optional setting left unset
            _check(setting, value)


def table(cls: type[T], *settings: Setting) -> Table[T]:
    """The table of ``cls`` (a dataclass); a record naming no field of it is an error at import."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    defaults: dict[str, Any] = {}
    for setting in settings:
        if setting.field not in fields:
            raise TypeError(f"{cls.__name__} has no field {setting.field!r} (variable {setting.variable})")
        f = fields[setting.field]
        factory = f.default_factory
        defaults[setting.field] = f.default if factory is dataclasses.MISSING else factory()
    return Table(cls, settings, defaults)


def variables(*tables: Table[Any]) -> set[str]:
    """Every variable the tables declare."""
    return {setting.variable for t in tables for setting in t}


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """Return the non-empty value of ``name`` in ``env``, else ``default``."""
    value = env.get(name, "").strip()
    return value or default


def parse(setting: Setting, env: Mapping[str, str], default: Any) -> Any:
    """The value of ``setting``'s variable in ``env`` (``default`` if unset or empty); ConfigError naming it."""
    name = setting.variable
    if setting.kind == "raw":
        raw_value = env.get(name)
        return default if raw_value is None else raw_value
    raw = env_str(env, name)
    if raw is None:
        return default
    if setting.kind == "upper":
        return raw.upper()
    if setting.kind == "int":
        return _int(name, raw, int(setting.lowest), int(setting.highest))
    if setting.kind in ("float", "seconds"):
        return _float(name, raw, setting.lowest, setting.highest)
    if setting.kind == "bool":
        if raw.lower() not in _BOOLEANS:
            raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false")
        return _BOOLEANS[raw.lower()]
    if setting.kind == "csv":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if setting.kind == "choice":
        for choice in setting.choices:
            if raw.lower() == choice.lower():
                return choice
        unset = " (or unset)" if default is None else ""
        raise ConfigError(f"{name}={raw!r} is unknown; use {choices_text(setting.choices)}{unset}")
    return raw


def choices_text(choices: tuple[str, ...]) -> str:
    """``a or b``; ``one of a, b, c``."""
    return " or ".join(choices) if len(choices) == 2 else f"one of {', '.join(choices)}"


def _int(name: str, raw: str, minimum: int, maximum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; set it to a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum of {minimum}")
    if value > maximum:
        raise ConfigError(f"{name}={value} is above the maximum of {maximum}")
    return value


def _float(name: str, raw: str, minimum: float, maximum: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number; set it to e.g. 2.5") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not a finite number; set it to e.g. 2.5")
    if value < minimum:
        raise ConfigError(f"{name}={value:g} is below the minimum of {minimum:g}")
    if value > maximum:
        raise ConfigError(f"{name}={value:g} is above the maximum of {maximum:g}")
    return value


def _check(setting: Setting, value: Any) -> None:
    """The constructor's check of one value: below the minimum says the minimum, above the maximum the range."""
    field, where = setting.field, f"({setting.variable})"
    kind = setting.kind
    if kind in ("choice", "upper"):
        if setting.choices and value not in setting.choices:
            raise ConfigError(f"{field} {value!r} {where} is unknown; use {choices_text(setting.choices)}")
        return
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{field} must be true or false {where}")
        return
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{field} must be a whole number {where}")
        if value < setting.lowest:
            raise ConfigError(f"{field} must be at least {_num(setting.lowest)} {where}")
        if value > setting.highest:
            top = _num(setting.highest)
            span = f"{_num(setting.lowest)}-{top}" if setting.minimum is not None else f"at most {top}"
            raise ConfigError(f"{field} must be {span} {where}")
        return
    if kind in ("float", "seconds"):
        unit = " s" if kind == "seconds" else ""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{field} must be a finite number{' of seconds' if unit else ''} {where}")
        if value < setting.lowest:
            raise ConfigError(f"{field} must be at least {_num(setting.lowest)}{unit} {where}")
        if value > setting.highest:
            span = f"from {_num(setting.lowest)} to {_num(setting.highest)}" if unit else (
                f"between {_num(setting.lowest)} and {_num(setting.highest)}")
            raise ConfigError(f"{field} must be {span}{unit} {where}")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
