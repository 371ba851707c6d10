"""``pgblobs serve --config FILE``: the options of ``serve`` from a TOML file.

One key per long option of ``serve``, spelt as the option without ``--``
(``pool-size = 16``, ``listen = ["tcp:9000"]``, ``access-log = true``); a
repeatable option is an array. Each value goes through the very argument
type (and choices) its option has, so a file accepts exactly what the
command line does. The file's values become the parser's defaults, and the
command line is parsed again over them: what it gives wins, and a repeatable
option it gives replaces the file's list rather than adding to it. Between
the two, $PGBLOBS_DSN wins over the file's ``dsn``.

``--print-config`` writes the effective configuration back as such a file,
with the passwords of connection strings and URLs masked.
"""

import argparse
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pgblobs import settings

# The options that steer the command rather than name a setting: no file
# sets them, and they are no field of ServeOptions (tests/test_cli.py).
STEERING = frozenset({"config", "print_config"})
MASK = "***"

# user:password@ in any URL (postgresql://..., couchdb:http://...).
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^@\s/]*@")
# password=... (or sslpassword=...) in a libpq key/value string, quoted or
# not, or in a URL's query, where it ends at the next "&".
_KEYWORD_PASSWORD = re.compile(r"((?<![A-Za-z])(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]+)")


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the file,
    and the key and its line where there is one."""


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get(settings.CONFIG_VARIABLE) or None,
        help="a TOML file of these options: one key per long option without '--' "
        '(listen = ["tcp:9000"], pool-size = 16, access-log = true), a repeatable option '
        "as an array; the command line overrides the file, and a repeatable option given "
        f"on the command line replaces the file's list; ${settings.DSN_VARIABLE} overrides "
        f"its dsn (default: ${settings.CONFIG_VARIABLE})",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration (file, command line and defaults) as a "
        "file --config accepts, passwords masked, and exit",
    )


def settable(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options a file may set, by key: every long option, but for help,
    the hidden ones and the STEERING ones."""
    found = {}
    # argparse lists its actions nowhere public; typeshed declares _actions.
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or action.dest in STEERING | {"help"}:
            continue
        for flag in action.option_strings:
            if flag.startswith("--"):
                found[flag[2:]] = action
    return found


def with_file(
    parser: argparse.ArgumentParser, args: argparse.Namespace, command_line: Sequence[str]
) -> argparse.Namespace:
    """``args`` again, parsed from ``command_line`` over the defaults that the
    file of ``args.config`` (if any) gives. A file that cannot be used is a
    usage error (exit 2), before anything starts."""
    if not args.config:
        return args
    try:
        values = read(args.config, settable(parser))
    except ConfigError as error:
        parser.error(str(error))
    # The environment's DSN and token source (secrets kept out of the file)
    # win over the file's.
    if settings.dsn_from_environment():
        values.pop("dsn", None)
    if os.environ.get(settings.USER_TOKENS_VARIABLE):
        values.pop("user_tokens", None)
    repeatable = {dest for dest, value in values.items() if isinstance(value, list)}
    parser.set_defaults(**{dest: v for dest, v in values.items() if dest not in repeatable})
    reparsed = parser.parse_args(command_line)
    for dest in repeatable:
        if not getattr(reparsed, dest):  # not given on the command line
            setattr(reparsed, dest, values[dest])
    return reparsed


def read(path: str, options: Mapping[str, argparse.Action]) -> dict[str, Any]:
    """The values of the file at ``path`` by destination, each converted as
    its option in ``options`` (by key) converts its argument."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the configuration file {path}: {error}") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not TOML: {error}") from None
    lines = text.splitlines()
    values = {}
    for key, value in table.items():
        where = f"{path}, line {_line_of(lines, key)}, key {key!r}"
        action = options.get(key)
        if action is None:
            raise ConfigError(
                f"{where}: unknown key: the keys are the long options of `pgblobs serve` "
                "without '--' (see its --help), at the top level of the file"
            )
        try:
            values[action.dest] = _converted(action, value)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
            raise ConfigError(f"{where}: {error}") from None
    return values


def _line_of(lines: Sequence[str], key: str) -> int | str:
    """The number of the line that sets the top-level ``key`` (bare or
    quoted; or the table or dotted key it begins), or '?'."""
    name = "|".join(re.escape(spelling) for spelling in (key, f'"{key}"', f"'{key}'"))
    assignment = re.compile(rf"\s*(?:{name})\s*[=.]")
    table = re.compile(rf"\s*\[\[?\s*(?:{name})\s*[\].]")
    for number, line in enumerate(lines, start=1):
        if assignment.match(line) or table.match(line):
            return number
    return "?"


def _converted(action: argparse.Action, value: Any) -> Any:
    if action.nargs == 0:  # a switch: store_true
        if not isinstance(value, bool):
            raise TypeError("must be true or false")
        return value
    if isinstance(action.default, list):  # a repeatable option (action="append")
        if not isinstance(value, list):
            raise TypeError('must be an array, e.g. ["..."]: the option is repeatable')
        return [_converted_one(action, item) for item in value]
    return _converted_one(action, value)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _converted_one(action: argparse.Action, value: Any) -> Any:
    """``value`` through the option's own argument type and choices."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"must be a string or a number, not {_toml_type(value)}")
    if action.type is None and not isinstance(value, str):
        raise TypeError(f"must be a string, not {_toml_type(value)}")
    if action.type is not None and isinstance(value, str) and _looks_numeric(value):
        # pool-size = "16": a number must be written as one.
        raise TypeError("must be a number, not a string")
    if action.type is None:
        converted: Any = value
    else:
        try:
            converted = action.type(str(value))  # type: ignore[operator]
        except (TypeError, ValueError):  # as argparse words it
            name = getattr(action.type, "__name__", "")
            raise ValueError(f"invalid {name} value: {value!r}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{value!r} is none of {', '.join(map(repr, action.choices))}")
    return converted


def _toml_type(value: Any) -> str:
    kinds = {bool: "a boolean", list: "an array", dict: "a table"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), "a date")


def mask(text: str) -> str:
    """``text`` with the passwords of URLs and of libpq keywords masked."""
    return _KEYWORD_PASSWORD.sub(rf"\g<1>{MASK}", _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text))


def render(settings: Iterator[tuple[str, Any, Any]]) -> str:
    """A file --config accepts, of (name, value, declared default) triples;
    a setting left to be worked out at start (None by default) is a comment."""
    lines = []
    for name, value, default in settings:
        key = name.replace("_", "-")
        if value is None and default is None:
            lines.append(f"# {key}: not set, worked out at start (see --help)")
        else:
            lines.append(f"{key} = {_toml_value('unlimited' if value is None else value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # TOML spells inf, -inf and nan as Python does
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    # JSON's escapes are TOML's; DEL, which JSON leaves raw, TOML wants escaped.
    return json.dumps(mask(str(value)), ensure_ascii=False).replace("\x7f", "\\u007f")
