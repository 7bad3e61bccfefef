"""The one parser style of the command groups that are not LightningCLI (``data``, ``eval``, ``quickstart``).

A group maps sub-command names to library functions (``"module:function"``, imported on use); each
sub-command's options are that function's typed signature, with its defaults and its docstring's argument
help (jsonargparse), and ``--config FILE.yaml`` supplies any of them. No default is restated here.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def resolve(target: str | Callable) -> Callable:
    """``"package.module:function"`` → the function (callables pass through)."""
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def function_parser(prog: str, fn: Callable, positional: tuple[str, ...] = ()):
    """A jsonargparse parser for ``fn``: ``--config`` plus one option per parameter (``positional``: those
    parameters as positional arguments; a name ending in "+" takes one or more values)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=(fn.__doc__ or "").split("\n")[0])
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
    from jsonargparse import ArgumentParser

    positional = positional or {}
    parser = ArgumentParser(prog=prog, description=description)
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
