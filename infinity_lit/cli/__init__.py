"""``infinity-lit`` command line: one entry point, one sub-command group per part of the toolkit.

    infinity-lit data openmoji|folder ...          build webdataset shards
    infinity-lit tokenizer fit|validate|test ...   LightningCLI for the tokenizer
    infinity-lit generator fit|validate|test ...   LightningCLI for the generator
    infinity-lit eval sample|score|recon|report    evaluation suite (sampling images is 'eval sample')
    infinity-lit sample ...                        alias of 'eval sample'
    infinity-lit quickstart                        the whole method on OpenMoji, end to end
    infinity-lit study run|status|report|check     studies over arms × seeds

This package is the top floor: argv only, one module per command group (``train``, ``data``, ``eval``,
``quickstart``, ``study``), each calling library functions; nothing in the library imports it. A group is
imported only when used, so ``--help`` of one group does not pay for the imports of the others.

Errors. A mistake in what was asked for (a bad option or value, a missing file or folder, a file that is
not a checkpoint, a bad config or study spec) prints ``error: <message>`` (and at most one hint line) on
stderr and exits with status 2; any other exception is a bug and shows its traceback. ``infinity-lit
--debug GROUP …`` (or ``INFINITY_LIT_DEBUG=1``) shows the traceback of every error, and jsonargparse's full
usage on a bad option.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import Any

from .common import DEBUG_ENV, debug_enabled, one_line, show_warning

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
    lines = ["usage: infinity-lit [--debug] GROUP [ARGS...]", "", "groups:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in GROUPS.items()]
    lines += [
        "",
        "Run 'infinity-lit GROUP --help' for a group's options.",
        f"--debug (or {DEBUG_ENV}=1): show the traceback of an error.",
    ]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> Any:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to the group's function; returns its result."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return None
    group, rest = argv[0], argv[1:]
    if group not in GROUPS:
        print(
            f"error: unknown group {group!r} (choose from {', '.join(GROUPS)})\nsee `infinity-lit --help`",
            file=sys.stderr,
        )
        raise SystemExit(2)
    module, _, function = GROUPS[group][0].partition(":")
    return getattr(importlib.import_module(module), function)(rest)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is a mistake in what the user asked for rather than a bug.

    User errors: a parse error (``argparse.ArgumentError``, which jsonargparse raises too), a path that does
    not exist or cannot be used (``FileNotFoundError``, ``FileExistsError`` such as ``runs.RunExistsError``,
    ``NotADirectoryError``, ``IsADirectoryError``, ``PermissionError``), Lightning's
    ``MisconfigurationException`` (e.g. an accelerator the machine lacks), this package's ``OSError`` classes
    (``training.checkpointing.CheckpointWriteError``: a full disk), this package's ``ValueError``
    classes (``checkpoints.CheckpointError``, ``studies.spec.StudyError``) and a ``ValueError`` raised by
    this package's own checks (a bad value). A ``ValueError`` raised inside another library (torch,
    numpy …) is not: it is a bug here.
    """
    if isinstance(
        err,
        (
            argparse.ArgumentError,
            FileNotFoundError,
            FileExistsError,
            NotADirectoryError,
            IsADirectoryError,
            PermissionError,
        ),
    ):
        return True
    if isinstance(err, OSError) and type(err).__module__.startswith("infinity_lit."):
        return True  # e.g. training.checkpointing.CheckpointWriteError (a full disk)
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    if lightning is not None and isinstance(err, lightning.MisconfigurationException):
        return True
    if not isinstance(err, ValueError):
        return False
    if type(err).__module__.startswith("infinity_lit."):  # CheckpointError, StudyError, …
        return True
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("infinity_lit.")


def main(argv: list[str] | None = None) -> None:
    """The ``infinity-lit`` console script: ``run`` without a return value.

    A user error (``is_user_error``) prints ``error: <message>`` on one line of stderr and exits with
    status 2; ``--debug`` before the group (or ``INFINITY_LIT_DEBUG=1``) lets it propagate with its
    traceback. Any other exception propagates as it is (a bug: its traceback is the report). A fit
    stopped by SIGTERM or Ctrl+C (after writing ``last.ckpt``) exits with status 143 or 130; one whose data
    loader worker died prints one line saying so and how to resume, and exits with status 1. Output cut
    short by its reader (a closed pipe: ``… | head``) ends quietly with status 141 (128 + SIGPIPE).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--debug"]:
        argv = argv[1:]
        os.environ[DEBUG_ENV] = "1"  # also seen by the parsers and by processes this one starts
    import warnings

    python_format = warnings.showwarning
    if not debug_enabled():
        warnings.showwarning = show_warning  # "warning: …" lines, as the toolkit's own
    try:
        try:
            run(argv)
        finally:
            sys.stdout.flush()  # here, where a closed pipe is caught below, rather than at exit
    except SystemExit as err:
        if type(err).__name__ != "SIGTERMException":
            raise
        # A fit stopped by SIGTERM or Ctrl+C after saving last.ckpt (training.checkpointing): the shell's
        # convention for a process ended by that signal, 128 + its number.
        from infinity_lit.training.checkpointing import stop_signal

        raise SystemExit(128 + int(stop_signal() or signal.SIGTERM)) from None
    except BrokenPipeError:
        # The reader of stdout went away (`infinity-lit study status DIR | head`): what it read was
        # whole; stop quietly, as a shell tool does, with the status of a process ended by SIGPIPE.
        # stdout goes to /dev/null so that the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(128 + signal.SIGPIPE) from None
    except Exception as err:
        if not debug_enabled() and _is_dead_worker(err):
            # Not a bug here and not a user's mistake: the machine took a loader process away (most often
            # the out-of-memory killer). The checkpoints written so far are whole (AtomicCheckpointIO).
            print(
                f"error: {one_line(str(err))}: a data loader worker process died, most often killed for "
                "memory; lower --data.init_args.num_workers or the batch size, then resume with --ckpt_path "
                "pointing at the run folder (--debug shows the traceback)",
                file=sys.stderr,
            )
            raise SystemExit(1) from None
        if debug_enabled() or not is_user_error(err):
            raise
        print(f"error: {one_line(str(err)) or type(err).__name__}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        warnings.showwarning = python_format


def _is_dead_worker(err: BaseException) -> bool:
    """Whether ``err`` is torch's DataLoader error for a worker process that died (killed, crashed)."""
    return isinstance(err, RuntimeError) and str(err).startswith("DataLoader worker (pid")
