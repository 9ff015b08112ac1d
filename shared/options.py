"""Typed settings from one table: command-line flags, environment, TOML file.

Each program declares its options once, in an :class:`OptionTable`; the
argument parser, the environment variable names (``{prefix}{NAME}``) and the
TOML keys all come from that table, so they cannot drift apart. Precedence,
highest first: flag, environment, TOML file (``--config`` or
``{prefix}CONFIG``), default. Every bad value becomes one
:class:`~shared.errors.ConfigError` that names the setting, where the value
came from, and the flag and variable that set it.

Secrets: an option marked ``secret`` (a token) or with a ``redact`` function
(a URL that may carry a password) is refused as a command-line flag, which
every local user can read through ``ps``; it comes from the environment of the
process that needs it, from a TOML file that only its owner may read (mode
0600, checked), or, for a ``secret`` option, from a file of its own named by the
``NAME_file`` option the table adds (``--read-token-file``). Errors never echo
a secret, and :meth:`OptionTable.redacted_repr` shows settings without them.

No I/O beyond reading the TOML file and the secret files it is pointed at.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shared.endpoint import redact_url
from shared.errors import ConfigError
from shared.secret_file import check_private, read_secret_file

__all__ = [
    "Option",
    "OptionTable",
    "boolean",
    "broker_options",
    "choice",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "str_list",
    "unit_float",
]


_N = TypeVar("_N", int, float)


def _number(kind: type[_N], text: str, rule: str) -> _N:
    """``kind(text)``; a text that is not one says so with ``rule`` (not Python's
    "could not convert string to float: 'abc'").

    >>> _number(float, "abc", "must be a number > 0")
    Traceback (most recent call last):
    ...
    ValueError: not a number; must be a number > 0
    """
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"not {'an integer' if kind is int else 'a number'}; {rule}") from None


def positive_int(text: str) -> int:
    rule = "must be an integer >= 1"
    value = _number(int, text, rule)
    if value < 1:
        raise ValueError(rule)
    return value


def non_negative_int(text: str) -> int:
    rule = "must be an integer >= 0"
    value = _number(int, text, rule)
    if value < 0:
        raise ValueError(rule)
    return value


def positive_float(text: str) -> float:
    rule = "must be a number > 0"
    value = _number(float, text, rule)
    if not 0.0 < value < float("inf"):
        raise ValueError(rule)
    return value


def non_negative_float(text: str) -> float:
    rule = "must be a number >= 0"
    value = _number(float, text, rule)
    if not 0.0 <= value < float("inf"):
        raise ValueError(rule)
    return value


def unit_float(text: str) -> float:
    rule = "must be a number between 0 and 1"
    value = _number(float, text, rule)
    if not 0.0 <= value <= 1.0:
        raise ValueError(rule)
    return value


def boolean(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


def str_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def broker_options(
    prefix: str, default: str, url_help: str, password_help: str
) -> tuple[Option, Option]:
    """``broker`` (a URL, refused as a flag when it holds a password) and ``broker_password``
    (a secret, so also ``broker_password_file``), for table ``prefix``."""
    return (
        Option(
            "broker",
            str,
            default,
            url_help,
            "URL",
            redact=redact_url,
            secret_hint="or leave the password out of the URL and put it in a file named by "
            f"--broker-password-file or in {prefix}BROKER_PASSWORD",
        ),
        Option("broker_password", str, None, password_help, "PASSWORD", secret=True),
    )


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its name, how to parse it from text, its default and its help."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str = ""
    prefix: str = ""
    """The environment prefix, filled in by the table."""
    secret: bool = False
    """The value is a secret: never a flag, never echoed; the table adds a ``NAME_file`` option."""
    redact: Callable[[str], str] | None = None
    """For a value that may hold a secret (a URL with a password): the text with the secret
    replaced by ``***``. A value it changes is treated as a secret."""
    secret_hint: str = ""
    """Where else the secret may be given, for the error that refuses it as a flag."""
    repeat: bool = False
    """The flag may be given more than once; its values are joined with commas for
    ``parse`` (as in the environment and a TOML list)."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return self.prefix + self.name.upper()

    @property
    def how_to_set(self) -> str:
        """How to set it, for the end of an error: a secret never as a flag."""
        if self.secret:
            return f"(set {self.flag}-file or {self.env})"
        return f"(set {self.flag} or {self.env})"

    def holds_secret(self, text: str) -> bool:
        return self.secret or (self.redact is not None and self.redact(text) != text)

    def shown(self, text: str) -> str:
        """``text`` as errors and logs may show it."""
        if self.secret:
            return "***"
        return self.redact(text) if self.redact is not None else text


def _file_option(opt: Option) -> Option:
    """The ``NAME_file`` option that names a file holding secret option ``opt``."""
    return Option(
        f"{opt.name}_file",
        Path,
        None,
        f"file holding the {opt.name.replace('_', ' ')} ({opt.help}); only its owner may "
        "read it (chmod 600)",
        "FILE",
    )


class OptionTable:
    """The options of one program, with the prefix of their environment variables."""

    def __init__(self, prefix: str, options: Sequence[Option]) -> None:
        self.prefix = prefix
        with_files: list[Option] = []
        for o in options:
            with_files.append(o)
            if o.secret:
                with_files.append(_file_option(o))
        self.options = tuple(dataclasses.replace(o, prefix=prefix) for o in with_files)
        self._by_name = {o.name: o for o in self.options}

    def __iter__(self) -> Any:
        return iter(self.options)

    def __getitem__(self, name: str) -> Option:
        return self._by_name[name]

    @property
    def config_env(self) -> str:
        return self.prefix + "CONFIG"

    def add_to(
        self, parser: argparse.ArgumentParser, only: Sequence[str] | None = None
    ) -> argparse.ArgumentParser:
        """Add ``--config`` and every option, or the options named in ``only`` (default
        None: resolution fills it). Options left off still resolve from the environment,
        the TOML file and their defaults, so one file serves several commands."""
        unknown = sorted(set(only or ()) - set(self._by_name))
        if unknown:
            raise ValueError(f"add_to: no option {unknown[0]!r} in this table")
        parser.add_argument(
            "--config",
            type=Path,
            default=None,
            metavar="FILE",
            help=f"TOML file of settings (keys as the option names with '_'); env {self.config_env}",
        )
        for opt in self.options:
            if only is not None and opt.name not in only:
                continue
            default = opt.default
            shown = ",".join(default) if isinstance(default, tuple) else default
            suffix = (
                f" (default: {shown}; env {opt.env})"
                if shown not in (None, "")
                else f" (env {opt.env})"
            )
            if opt.secret:
                suffix = f" (env {opt.env}, or {opt.flag}-file; refused as a flag: ps shows flags)"
            elif opt.redact is not None:
                suffix += "; a secret in it is refused as a flag: ps shows flags"
            parser.add_argument(
                opt.flag,
                dest=opt.name,
                default=None,
                action="append" if opt.repeat else "store",
                metavar=opt.metavar or None,
                help=opt.help + suffix,
            )
        return parser

    def fail(self, name: str, why: str) -> ConfigError:
        """An error about setting ``name`` that says how to set it."""
        opt = self._by_name[name]
        return ConfigError(f"setting {name!r} {why} {opt.how_to_set}", setting=name)

    def read_toml(self, path: Path) -> dict[str, Any]:
        hint = f"(set --config or {self.config_env})"
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                f"setting 'config': cannot read settings file {path}: {exc.strerror} {hint}",
                setting="config",
            ) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"setting 'config': settings file {path} is not valid UTF-8 TOML: {exc} {hint}",
                setting="config",
            ) from None
        unknown = sorted(set(data) - set(self._by_name))
        if unknown:
            raise ConfigError(
                f"setting 'config': settings file {path} has unknown key {unknown[0]!r}; known "
                f"keys: {', '.join(sorted(self._by_name))} {hint}",
                setting=unknown[0],
            )
        return data

    def resolve(
        self, args: argparse.Namespace, env: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Values of every option, and where each came from (flag, env, file, default)."""
        config_path = getattr(args, "config", None) or (
            Path(env[self.config_env]) if env.get(self.config_env) else None
        )
        toml = self.read_toml(config_path) if config_path else {}
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for opt in self.options:
            raw: Any
            if getattr(args, opt.name, None) is not None:
                raw, where = getattr(args, opt.name), f"flag {opt.flag}"
            elif env.get(opt.env) is not None:
                raw, where = env[opt.env], f"env {opt.env}"
            elif opt.name in toml:
                raw, where = toml[opt.name], f"{config_path} key {opt.name!r}"
            else:
                values[opt.name], origin[opt.name] = opt.default, "default"
                continue
            text = ",".join(map(str, raw)) if isinstance(raw, list) else str(raw)
            if opt.holds_secret(text):
                if where.startswith("flag"):
                    raise self._secret_as_flag(opt)
                if config_path is not None and where.startswith(str(config_path)):
                    check_private(config_path, what=f"setting {opt.name!r}", setting=opt.name)
            try:
                values[opt.name] = opt.parse(text)
            except Exception as exc:  # every parser error becomes one clear message
                raise ConfigError(
                    f"setting {opt.name!r} (from {where}) = {opt.shown(text)!r} is invalid: "
                    f"{opt.shown(str(exc))} {opt.how_to_set}",
                    setting=opt.name,
                ) from None
            origin[opt.name] = where
        for opt in self.options:
            if opt.secret:
                self._read_secret_file(opt, values, origin)
        return values, origin

    def _secret_as_flag(self, opt: Option) -> ConfigError:
        where = f"the environment variable {opt.env} or a --config file of mode 0600"
        if opt.secret:
            where = f"a file named by {opt.flag}-file (mode 0600), " + where.replace(
                " or ", ", or "
            )
        hint = f"; {opt.secret_hint}" if opt.secret_hint else ""
        return ConfigError(
            f"setting {opt.name!r} holds a secret and was given as the flag {opt.flag}, where "
            f"every local user can read it (ps); give it in {where}{hint}",
            setting=opt.name,
        )

    def _read_secret_file(
        self, opt: Option, values: dict[str, Any], origin: dict[str, str]
    ) -> None:
        file_opt = self._by_name[f"{opt.name}_file"]
        path = values.get(file_opt.name)
        if path is None:
            return
        if values[opt.name] is not None:
            raise ConfigError(
                f"setting {opt.name!r} is given twice: {origin[opt.name]} and the file {path} "
                f"({origin[file_opt.name]}); keep one",
                setting=opt.name,
            )
        secret = read_secret_file(
            path, what=f"setting {opt.name!r} ({file_opt.flag})", setting=opt.name
        )
        try:
            values[opt.name] = opt.parse(secret)
        except Exception as exc:  # every parser error becomes one clear message
            raise ConfigError(
                f"setting {opt.name!r} (from the file {path}) is invalid: {exc}",
                setting=opt.name,
            ) from None
        origin[opt.name] = f"file {path}"

    def redacted_repr(self, obj: Any) -> str:
        """``repr`` of settings dataclass ``obj`` with every secret value shown as ``***``."""
        parts = []
        for f in dataclasses.fields(obj):
            if not f.repr:
                continue
            value = getattr(obj, f.name)
            opt = self._by_name.get(f.name)
            shown = repr(value)
            if opt is not None and isinstance(value, str):
                shown = repr(opt.shown(value))
            parts.append(f"{f.name}={shown}")
        return f"{type(obj).__name__}({', '.join(parts)})"
