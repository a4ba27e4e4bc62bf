"""One command-line convention for every command of the project.

A command's flags are the fields of its config dataclasses: each field declared with
:func:`option` becomes a flag (``--field-name``, or the name given), with its type, its
default in the help text and its help; a field that holds another config dataclass
(:func:`options_of`) adds that one's flags. The dataclasses check their own values in
``__post_init__`` and raise :class:`~fit3d_hub.errors.UsageError` naming the flag, so a
library caller gets the same checks as the command line.

One error path (:func:`run`): a refusal is one line on stderr, ``PROG: error: MESSAGE``;
the exit status is 2 for bad usage (a flag, a name, changed settings on resume) and 1 for
bad data (a file, a scene, a checkpoint, a disk); 130 on Ctrl-C.

(tyro builds parsers from dataclasses too, but its usage errors are boxes of nine lines and
its booleans come as ``--x/--no-x`` pairs, which would rename ``--no-hflip``; this module
is the small part of it the project needs.)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, dataclass
from typing import Any

from fit3d_hub.errors import FiT3DError, UsageError

CLI_KEY = "fit3d_hub.cli"
NESTED = "nested"


@dataclass(frozen=True)
class Option:
    """How one dataclass field appears on the command line."""

    help: str
    flag: str | None = None
    """``--name`` (default: the field name with dashes); a bool defaulting to True gets
    ``--no-name`` and stores False."""
    positional: bool = False
    choices: tuple[Any, ...] | Callable[[], Sequence[Any]] | None = None
    """The allowed values, or a function giving them when the parser is built (a registry
    that may grow after import)."""
    metavar: str | None = None
    show_default: bool = True


def option(default: Any = MISSING, *, help: str, flag: str | None = None,
           positional: bool = False,
           choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
           metavar: str | None = None, default_factory: Any = MISSING,
           show_default: bool = True) -> Any:
    """A dataclass field that is also a command-line flag (no default: a required one)."""
    if choices is not None and not callable(choices):
        choices = tuple(choices)
    meta = Option(help, flag, positional, choices, metavar, show_default)
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={CLI_KEY: meta})


def options_of(factory: Callable[[], Any]) -> Any:
    """A field holding a nested config dataclass whose own options join the command's."""
    return dataclasses.field(default_factory=factory, metadata={CLI_KEY: NESTED})


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``PROG: error: MESSAGE``), exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


def new_parser(prog: str, description: str | None = None) -> OneLineParser:
    """An empty parser of the project's kind (one-line errors, descriptions as written)."""
    return OneLineParser(prog=prog, description=description, formatter_class=_HelpFormatter)


def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """(T, True) for ``T | None``; (kind, False) otherwise."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0], True
    return kind, False


def _default_of(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value) if value else "none"
    return str(value)


def _walk(cls: type, prefix: str = ""):
    """(dest, field, Option, type) of every option of ``cls``, nested ones included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(CLI_KEY)
        if meta is None:
            continue
        dest = f"{prefix}{f.name}"
        if meta == NESTED:
            yield from _walk(hints[f.name], dest + "__")
            continue
        yield dest, f, meta, hints[f.name]


def add_options(parser: argparse.ArgumentParser, *classes: type) -> argparse.ArgumentParser:
    """Add the flags of each config dataclass in ``classes`` to ``parser``."""
    for cls in classes:
        for dest, f, meta, kind in _walk(cls):
            _add(parser, dest, f, meta, kind)
    return parser


def _add(parser: argparse.ArgumentParser, dest: str, f: Field, meta: Option, kind: Any) -> None:
    default = _default_of(f)
    base, _ = _unwrap_optional(kind)
    flag = meta.flag or f"--{f.name.replace('_', '-')}"
    help_text = meta.help
    if default is not MISSING and meta.show_default:
        help_text = f"{help_text} (default: {_show(default)})" if help_text \
            else f"(default: {_show(default)})"
    kwargs: dict[str, Any] = {"help": help_text}
    if meta.metavar:
        kwargs["metavar"] = meta.metavar
    if base is bool:
        if default is MISSING:
            raise TypeError(f"{dest}: a bool option needs a default")
        action = "store_false" if default else "store_true"
        if default and not meta.flag:
            flag = f"--no-{f.name.replace('_', '-')}"
        parser.add_argument(flag, dest=dest, action=action, default=default, help=help_text)
        return
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        kwargs.update(nargs="*", type=item)
    else:
        kwargs["type"] = base
    if meta.choices is not None:
        kwargs["choices"] = tuple(meta.choices() if callable(meta.choices) else meta.choices)
    if meta.positional:
        if default is not MISSING:
            kwargs.update(nargs="?", default=default)
        parser.add_argument(dest, **kwargs)
        return
    if default is MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    parser.add_argument(flag, dest=dest, **kwargs)


def build(cls: type, values: argparse.Namespace, prefix: str = "") -> Any:
    """An instance of ``cls`` from parsed ``values`` (its checks run); fields without an
    option keep their defaults."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(CLI_KEY)
        if meta is None or not f.init:
            continue
        dest = f"{prefix}{f.name}"
        if meta == NESTED:
            kwargs[f.name] = build(hints[f.name], values, dest + "__")
            continue
        value = getattr(values, dest)
        if isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None, *classes: type
          ) -> list[Any]:
    """Parse ``argv`` into one instance per class; a check that fails is a usage error
    (one line, exit 2)."""
    values = parser.parse_args(argv)
    try:
        return [build(cls, values) for cls in classes]
    except UsageError as err:
        parser.error(str(err))


def command(prog: str, description: str | None, *classes: type,
            argv: Sequence[str] | None = None) -> list[Any]:
    """Build the parser of ``classes`` and parse ``argv``: the usual first line of a main."""
    return parse(add_options(new_parser(prog, description), *classes), argv, *classes)


def exit_status(err: BaseException) -> int:
    """2 for bad usage, 1 for bad data (see the module docstring)."""
    if isinstance(err, FiT3DError):
        return err.exit_status
    if isinstance(err, ValueError):  # a value the caller passed that a library refused
        return 2
    return 1


def run(prog: str, body: Callable[[], Any]) -> int:
    """Run a command's body through the one error path; returns the exit status (the body's
    own when it returns an int, else 0)."""
    try:
        result = body()
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    except (FiT3DError, ValueError, OSError) as err:
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return exit_status(err)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())
