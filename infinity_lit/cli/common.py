"""The one parser style of the command groups that are not LightningCLI (``data``, ``eval``, ``quickstart``).

A group maps sub-command names to library functions (``"module:function"``, imported on use); each
sub-command's options are that function's typed signature, with its defaults and its docstring's argument
help (jsonargparse), and ``--config FILE.yaml`` supplies any of them. No default is restated here.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

#: Environment variable that shows the full traceback of a user error (as ``infinity-lit --debug …`` does) and
#: jsonargparse's full usage on a bad option.
DEBUG_ENV = "INFINITY_LIT_DEBUG"


def debug_enabled() -> bool:
    """Whether ``DEBUG_ENV`` is set to anything but "", "0", "false" or "no"."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


#: The texts of the warnings ``show_warning`` printed in this process (so a record's list of warnings does not
#: print them a second time).
SHOWN_WARNINGS: set[str] = set()


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` of the command line: ``warning: <message>`` on one line of stderr, without the
    source file and line of the code that warned (``--debug`` keeps Python's own format)."""
    text = one_line(str(message))
    SHOWN_WARNINGS.add(text)
    print(f"warning: {text}", file=file if file is not None else sys.stderr)


def one_line(message: str) -> str:
    """``message`` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(str(message).split())


class ShortErrors:
    """Mixin for a jsonargparse parser: a bad option or value prints two lines on stderr (the error, and the
    command whose ``--help`` lists the options) and exits with status 2, instead of the whole usage.

    A parser built with ``exit_on_error=False`` raises as jsonargparse does; with ``DEBUG_ENV`` set, the
    error is jsonargparse's own (full usage).
    """

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or debug_enabled():
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {short_parse_error(message)}\nsee `{prog} --help`\n")
        self.exit(2)


def short_parse_error(message: str) -> str:
    """jsonargparse's error on one line; for an unknown option inside a nested config (a dataclass or a
    class behind a Union, such as ``--model.tokenizer.base_channel``), just the key and the option instead of
    the list of Union subtypes and the value that was given."""
    import re

    text = one_line(message)
    key = re.search(r'Parser key "([^"]+)"', text)
    options = re.findall(r"Option '([^']+)' is not accepted", text)
    if key and options:
        unknown = ", ".join(dict.fromkeys(f"{key.group(1)}.{o}" for o in options))
        return f"{unknown}: no such option under {key.group(1)} (a typo?)"
    return text


@functools.cache
def short_errors(base: type | None = None) -> type:
    """``base`` (a jsonargparse ``ArgumentParser`` class, default that class itself) with ``ShortErrors``."""
    if base is None:
        from jsonargparse import ArgumentParser

        base = ArgumentParser
    return type(base.__name__, (ShortErrors, base), {})


def resolve(target: str | Callable) -> Callable:
    """``"package.module:function"`` → the function (callables pass through)."""
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def function_parser(prog: str, fn: Callable, positional: tuple[str, ...] = ()):
    """A jsonargparse parser for ``fn``: ``--config`` plus one option per parameter (``positional``: those
    parameters as positional arguments; a name ending in "+" takes one or more values)."""
    from jsonargparse import ActionConfigFile

    parser = short_errors()(prog=prog, description=(fn.__doc__ or "").split("\n")[0], allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    names = []
    for name in positional:
        many = name.endswith("+")
        name = name.rstrip("+")
        names.append(name)
        parser.add_argument(
            name,
            nargs="+" if many else None,
            help=f"{name.replace('_', ' ')}" + (" (one or more)" if many else ""),
        )
    parser.add_function_arguments(fn, skip=set(names), as_group=False)
    return parser


def _kwargs(namespace: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(namespace).items() if k != "config" and not k.startswith("__")}


def run_function(prog: str, fn: str | Callable, argv: list[str] | None) -> tuple[dict[str, Any], Any]:
    """Parse ``argv`` against ``fn``'s signature and call it; returns (kwargs, result)."""
    fn = resolve(fn)
    cfg = function_parser(prog, fn).parse_args(list(sys.argv[1:] if argv is None else argv))
    kwargs = _kwargs(cfg)
    return kwargs, fn(**kwargs)


def group_parser(
    prog: str,
    description: str,
    commands: Mapping[str, str | Callable],
    positional: Mapping[str, tuple[str, ...]] | None = None,
):
    """A parser with one sub-command per function of ``commands``; returns (parser, {name: function})."""
    positional = positional or {}
    parser = short_errors()(prog=prog, description=description, allow_abbrev=False)
    subcommands = parser.add_subcommands(dest="command")
    functions = {name: resolve(target) for name, target in commands.items()}
    for name, fn in functions.items():
        sub = function_parser(f"{prog} {name}", fn, positional.get(name, ()))
        subcommands.add_subcommand(name, sub, help=(fn.__doc__ or "").split("\n")[0])
    return parser, functions


def run_function_group(
    prog: str,
    description: str,
    commands: Mapping[str, str | Callable],
    argv: list[str] | None,
    positional: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[str, dict[str, Any], Any]:
    """Parse ``argv`` as ``SUBCOMMAND OPTIONS`` over ``commands`` and call the chosen function.

    Returns:
        (sub-command name, its keyword arguments, the function's result).
    """
    parser, functions = group_parser(prog, description, commands, positional)
    cfg = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    name = cfg.command
    kwargs = _kwargs(cfg[name])
    return name, kwargs, functions[name](**kwargs)
