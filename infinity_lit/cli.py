"""``infinity-lit`` command line: one entry point, one sub-command group per part of the toolkit.

    infinity-lit data openmoji|folder ...          build webdataset shards
    infinity-lit tokenizer fit|validate|test ...   LightningCLI for the tokenizer
    infinity-lit generator fit|validate|test|predict ...   LightningCLI for the generator
    infinity-lit sample --prompts FILE --out DIR   text-to-image sampling
    infinity-lit eval sample|score|recon|report    evaluation suite
    infinity-lit quickstart                        the whole method on OpenMoji, end to end

Each group lives beside the code it drives and is imported only when used, so ``--help`` of one group
does not pay for the imports of the others.
"""

from __future__ import annotations

import importlib
import sys

GROUPS: dict[str, tuple[str, str]] = {
    "data": ("infinity_lit.data.cli", "build webdataset shards (openmoji, folder)"),
    "tokenizer": (
        "infinity_lit.tokenizer.cli",
        "train / validate / test the bitwise tokenizer (LightningCLI)",
    ),
    "generator": (
        "infinity_lit.generator.cli",
        "train / validate / test the bitwise generator (LightningCLI)",
    ),
    "sample": ("infinity_lit.generator.sample_cli", "sample images for prompts with a trained generator"),
    "eval": ("infinity_lit.evaluation.cli", "evaluation suite: sample, score, recon, report"),
    "quickstart": ("infinity_lit.quickstart", "tokenizer + generator + evaluation on OpenMoji, end to end"),
}


def _usage() -> str:
    lines = ["usage: infinity-lit GROUP [ARGS...]", "", "groups:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in GROUPS.items()]
    lines += ["", "Run 'infinity-lit GROUP --help' for a group's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to the group's ``main(argv)``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    group, rest = argv[0], argv[1:]
    if group not in GROUPS:
        print(f"infinity-lit: unknown group {group!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(GROUPS[group][0])
    module.main(rest)


if __name__ == "__main__":
    main()
