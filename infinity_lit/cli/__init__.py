"""``infinity-lit`` command line: one entry point, one sub-command group per part of the toolkit.

    infinity-lit data openmoji|folder ...          build webdataset shards
    infinity-lit tokenizer fit|validate|test ...   LightningCLI for the tokenizer
    infinity-lit generator fit|validate|test|predict ...   LightningCLI for the generator
    infinity-lit eval sample|score|recon|report    evaluation suite
    infinity-lit sample ...                        alias of 'eval sample'
    infinity-lit quickstart                        the whole method on OpenMoji, end to end
    infinity-lit study run|status|report|check     studies over arms × seeds
    infinity-lit study run|status|report|check     studies over arms × seeds

This package is the top floor: argv only, one module per command group (``train``, ``data``, ``eval``,
``quickstart``), each calling library functions; nothing in the library imports it. A group is imported
only when used, so ``--help`` of one group does not pay for the imports of the others.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

#: group → ("module:function" called with the remaining argv, one-line help).
GROUPS: dict[str, tuple[str, str]] = {
    "data": ("infinity_lit.cli.data:main", "build webdataset shards (openmoji, folder)"),
    "tokenizer": (
        "infinity_lit.cli.train:tokenizer",
        "train / validate / test the bitwise tokenizer (LightningCLI)",
    ),
    "generator": (
        "infinity_lit.cli.train:generator",
        "train / validate / test the bitwise generator (LightningCLI)",
    ),
    "eval": ("infinity_lit.cli.eval:main", "evaluation suite: sample, score, recon, report"),
    "sample": ("infinity_lit.cli.eval:sample", "alias of 'eval sample' (the same function and options)"),
    "quickstart": (
        "infinity_lit.cli.quickstart:main",
        "tokenizer + generator + evaluation on OpenMoji, end to end",
    ),
    "study": ("infinity_lit.cli.study:main", "studies over arms × seeds: run, status, report, check"),
}


def _usage() -> str:
    lines = ["usage: infinity-lit GROUP [ARGS...]", "", "groups:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in GROUPS.items()]
    lines += ["", "Run 'infinity-lit GROUP --help' for a group's options."]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> Any:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to the group's function; returns its result."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return None
    group, rest = argv[0], argv[1:]
    if group not in GROUPS:
        print(f"infinity-lit: unknown group {group!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    module, _, function = GROUPS[group][0].partition(":")
    return getattr(importlib.import_module(module), function)(rest)


def main(argv: list[str] | None = None) -> None:
    """The ``infinity-lit`` console script: ``run`` without a return value (a group that fails exits with a
    non-zero status itself)."""
    run(argv)
