"""The LightningCLI shared by ``infinity-lit tokenizer`` and ``infinity-lit generator``.

Both are LightningCLI over one LightningModule and any LightningDataModule (``data: class_path: …``),
with an always-on ``RunCheckpoint`` (``--checkpoint.*``: ``last.ckpt`` always the latest state; with
``--checkpoint.monitor``, a separate ``best.ckpt``; written by Lightning), a TensorBoard logger (no ``hp_metric`` placeholder) and ``HParamsWithFinalMetrics``, so
TensorBoard's HParams tab lists every run of a parent log folder with its hyper-parameters and final
metrics (``--hparams_session false`` leaves that session out: a study writes one per arm and seed of its
own); seed 0 by default; ``trainer.precision`` by default the one that is fast on this machine
(``precision.default_training_precision``: bf16-mixed on CUDA or an AMX CPU, 32-true elsewhere; a config that
names it pins it); attribute docstrings in ``--help`` / ``--print_config``.

Where a run goes is ``infinity_lit.runs``: ``fit`` writes ``runs/<model>/<run_name>/`` (no version level;
``run_name`` is a top-level recipe key, default the stem of the first ``--config`` file), ``validate`` /
``test`` log into its ``validate/`` / ``test/`` sub-folder. A ``fit`` into a run folder that already
holds checkpoints is refused unless ``--ckpt_path`` resumes from one of them; ``--ckpt_path`` also takes
a run folder (its ``checkpoints/last.ckpt``). An explicit ``trainer.logger`` ``save_dir`` / ``name`` /
``version`` (as the study stages give) takes precedence over ``run_name``.

Options are never abbreviated (``--trainer.max_step`` is an error, not ``max_steps``); a ``--ckpt_path`` that
is no readable checkpoint stops with one line before Lightning reads it; the training progress bar counts
steps up to ``max_steps`` on a step-bounded run (``progress.StepProgressBar``); Lightning's messages that
this set-up causes and no user can act on are silenced (``QUIET_WARNINGS``, ``QUIET_INFO``).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace, set_parsing_settings
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ProgressBar, Timer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from infinity_lit import runs
from infinity_lit.checkpoints import CheckpointError, CheckpointKind, check_kind, load_file
from infinity_lit.precision import default_training_precision

from .callbacks import HParamsWithFinalMetrics, SkippedSamplesText
from .checkpointing import AtomicCheckpointIO, DiscardUnstartedRun, RunCheckpoint
from .finite import NonFiniteGuard
from .progress import step_progress_bar


def _config_files(*configs: Namespace) -> list[str]:
    """The ``--config`` files of the parsed configs, in the order they were given."""
    files: list[str] = []
    for config in configs:
        for path in config.get("config") or []:
            files.append(os.fspath(path) if isinstance(path, os.PathLike) else str(path))
    return files


def _as_list(value: Any) -> list[Any]:
    """A trainer option that takes one item or a list of them (``callbacks``, ``plugins``) as a list."""
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def _logger_folder(config: Namespace, args: Namespace) -> Path | None:
    """The run folder a logger with ``init_args`` ``args`` writes to (``runs.logger_run_dir``; its
    ``save_dir`` defaulting as Lightning's does), None for an auto-incremented version."""
    return runs.logger_run_dir(
        args.get("save_dir") or config.get("trainer.default_root_dir") or os.getcwd(),
        args.get("name"),
        args.get("version"),
    )


def _loggers(config: Namespace) -> list[Any]:
    loggers = config.get("trainer.logger")
    return list(loggers) if isinstance(loggers, list) else [loggers]


def _logger_args(logger: Any) -> Namespace | None:
    """The ``init_args`` of a logger given as ``class_path`` + ``init_args`` (else None)."""
    if isinstance(logger, Namespace) and isinstance(logger.get("init_args"), Namespace):
        return logger.init_args
    return None


def _follow_the_checkpoint(config: Namespace, loggers: list[Any]) -> None:
    """A ``--ckpt_path`` inside a run folder (``runs.run_of_checkpoint``) puts the first logger in that run
    folder, wherever it now is and whatever ``run_name`` says: a resumed fit continues its own run (also one
    that was moved or copied), a ``validate`` / ``test`` logs into that run's sub-folder. Explicit
    ``--checkpoint.dirpath`` settings are left alone."""
    resumed = runs.run_of_checkpoint(config.get("ckpt_path"))
    if resumed is None or config.get("checkpoint.dirpath") is not None or not loggers:
        return
    args = _logger_args(loggers[0])
    if args is None or "save_dir" not in args:
        return
    folder = _logger_folder(config, args)
    if folder is not None and folder.resolve() == resumed.resolve():
        return
    args.save_dir, args.name, args.version = str(resumed.parent), resumed.name, runs.RUN_VERSION
    config[runs.RUN_NAME_KEY] = resumed.name


def configure_run(config: Namespace, subcommand: str | None, top: Namespace | None = None) -> Path | None:
    """Put the parsed run ``config`` of ``subcommand`` into the layout of ``infinity_lit.runs``.

    A logger whose ``name`` is unset is named by ``run_name`` (default: the stem of the first config
    file); ``validate`` / ``test`` with a fixed logger folder log into its ``<subcommand>/`` sub-folder, so
    they never replace the fit's ``config.yaml`` / ``hparams.yaml``. A ``--ckpt_path`` inside a run folder
    puts the run there (``_follow_the_checkpoint``). For ``fit``, the run's checkpoint folder is checked by
    ``runs.check_new_run``.

    Returns:
        the checkpoint folder of a ``fit`` (None when the logger picks a fresh versioned folder itself).

    Raises:
        runs.RunExistsError: ``fit`` into a run folder holding checkpoints, without resuming from one.
        ValueError: a ``run_name`` that cannot name a folder.
    """
    explicit = config.get(runs.RUN_NAME_KEY)
    name = runs.check_run_name(
        explicit
        if explicit is not None
        else runs.default_run_name(_config_files(*filter(None, (top, config))))
    )
    config[runs.RUN_NAME_KEY] = name
    loggers = _loggers(config)
    named = False
    for logger in loggers:
        args = _logger_args(logger)
        if args is None:
            continue
        if "name" in args and args.name is None:
            args.name = name
            named = True
        if (
            subcommand not in (None, "fit")
            and "sub_dir" in args
            and args.sub_dir is None
            and isinstance(args.get("version"), str)
        ):
            args.sub_dir = subcommand
    _follow_the_checkpoint(config, loggers)
    if subcommand != "fit":
        return None

    first = loggers[0]
    dirpath = config.get("checkpoint.dirpath")
    if dirpath is not None:
        checkpoints, hint = Path(dirpath), "--checkpoint.dirpath"
    elif (args := _logger_args(first)) is not None:
        folder = _logger_folder(config, args)
        if folder is None:
            return None  # an auto-incremented version_<n>: a fresh folder
        checkpoints = runs.checkpoint_dir(folder)
        hint = (
            f"--{runs.RUN_NAME_KEY}"
            if named
            else "--trainer.logger.init_args.version"
            if args.get("version")
            else "--trainer.logger.init_args.name"
        )
    elif first is False:
        checkpoints = runs.checkpoint_dir(config.get("trainer.default_root_dir") or os.getcwd())
        hint = "--trainer.default_root_dir"
    else:
        return None  # Lightning's own default logger: a fresh version_<n>
    runs.check_new_run(checkpoints, config.get("ckpt_path"), hint)
    return checkpoints


#: Lightning's messages that the way this package calls it causes and that no user can act on (message
#: regular expressions, matched at the start): passing ``args`` to LightningCLI from the ``infinity-lit``
#: entry point; torch's deprecation of the ``LeafSpec`` that Lightning's own pytree helper builds; the
#: ``IterableDataset`` length caveat, which ``ShardDataset`` meets (it splits its samples over workers and
#: ranks, so its ``__len__`` is exact); a non-empty checkpoint folder, which ``configure_run`` allows only
#: to a fit that resumes from one of its checkpoints.
QUIET_WARNINGS = (
    r"LightningCLI's args parameter is intended to run from within Python",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Your `IterableDataset` has `__len__` defined",
    r"Checkpoint directory .* exists and is not empty",
)
#: Lightning's info lines of the same kind (an advertisement for a cloud logger).
QUIET_INFO = ("💡 Tip: For seamless cloud logging",)


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(QUIET_INFO)


def quiet_lightning() -> None:
    """Silence ``QUIET_WARNINGS`` and ``QUIET_INFO`` (only those: every other warning still shows)."""
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropInfo) for f in logger.filters):
        logger.addFilter(_DropInfo())


def check_ckpt_path(ckpt_path: str, kind: CheckpointKind | None = None) -> None:
    """Stop with one line (``_user_error``) unless ``ckpt_path`` is a checkpoint file that loads
    (``infinity_lit.checkpoints.load_file``) and, with ``kind``, is one of that model's
    (``checkpoints.check_kind``, on the content read once), before Lightning reads it: its errors for a missing, truncated or
    non-checkpoint file are a traceback ending in e.g. ``KeyError: 101``, and another model's checkpoint
    fails on its hyper-parameters with an error about options."""
    what = "--ckpt_path checkpoint"
    try:
        content = load_file(
            ckpt_path, what, missing_hint="pass a .ckpt file or a run folder (its checkpoints/last.ckpt)"
        )
        if kind is not None:
            check_kind(ckpt_path, kind, content)
    except (FileNotFoundError, CheckpointError, PermissionError, IsADirectoryError) as err:
        _user_error(str(err))
    except Exception as err:  # the unpickler's own failures on a file that is no checkpoint at all
        _user_error(
            f"{what} {ckpt_path!r} is not a checkpoint file ({type(err).__name__} while reading it); pass a "
            "checkpoint written by fit (a .ckpt) or its run folder"
        )


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    """A parsed config section as ``{"model.optimizer.learning_rate": 0.0004, ...}``."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}"))
        return out
    return {prefix: value}


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _same_setting(a: Any, b: Any) -> bool:
    """Equal values (lists and tuples alike), or two spellings of one existing file (a relative and an
    absolute checkpoint path)."""
    if _tuples(a) == _tuples(b):
        return True
    if isinstance(a, (str, os.PathLike)) and isinstance(b, (str, os.PathLike)):
        try:
            return os.path.samefile(a, b)
        except OSError:
            return False
    return False


def resume_conflicts(requested: Any, resumed: Any) -> list[str]:
    """The model settings of a resumed fit that differ from what the command asked for, as
    ``"KEY VALUE (checkpoint: VALUE)"`` lines (``requested`` / ``resumed``: the parsed ``model`` sections
    before and after LightningCLI applied the checkpoint's hyper-parameters). A setting the command leaves
    unset (None: filled in from elsewhere, as the generator's codebook dimension from its tokenizer) asks
    for nothing."""
    asked, stored = _flat(requested, "model"), _flat(resumed, "model")
    return [
        f"{key} {asked[key]!r} (checkpoint: {stored.get(key)!r})"
        for key in sorted(asked)
        if asked[key] is not None and not _same_setting(asked[key], stored.get(key))
    ]


def _warn_on_new_step_budget(run: Path | None, max_steps: Any) -> None:
    """Warn when a resumed fit's ``trainer.max_steps`` differs from the one in its run's ``config.yaml`` (the
    command that ran last): a schedule that follows ``max_steps`` (the cosine decay without
    ``decay_steps``) changes course from the resumed step on."""
    config = run / "config.yaml" if run is not None else None
    if config is None or not config.is_file() or max_steps is None:
        return
    import yaml

    try:
        before = (
            (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("trainer", {}).get("max_steps")
        )
    except (OSError, yaml.YAMLError, AttributeError):
        return
    if isinstance(before, int) and before != max_steps and max_steps > 0:
        warnings.warn(
            f"resuming with trainer.max_steps {max_steps}, the run last ran with {before} ({config}): a learning "
            "rate schedule that follows max_steps (the cosine decay without decay_steps) changes from this "
            "step on; set model.optimizer.decay_steps to keep it",
            stacklevel=2,
        )


def _own_value_error(err: BaseException) -> ValueError | None:
    """The ``ValueError`` raised by this package's own code among ``err`` and its causes, if any."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ValueError):
            tb = current.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("infinity_lit."):
                return current
        current = current.__cause__ or current.__context__
    return None


def _user_error(message: str) -> None:
    """Stop with ``message`` on one line of stderr and exit status 2, as for a bad option (no traceback:
    nothing has been built or written yet)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


#: Top-level option: log the run's HParams session (``HParamsWithFinalMetrics``) at the end of fit / test.
HPARAMS_SESSION_KEY = "hparams_session"


class RunCLI(LightningCLI):
    """LightningCLI with an always-on ``RunCheckpoint`` (``--checkpoint.*``) that keeps ``last.ckpt``, a
    top-level ``run_name`` and ``hparams_session``, and the run-folder layout of ``infinity_lit.runs``."""

    #: Subcommands offered (None: all of LightningCLI's).
    allowed_subcommands: tuple[str, ...] | None = None
    #: The run folder of a ``fit`` that did not exist when the command started (``DiscardUnstartedRun``).
    _new_run_folder: Path | None = None

    @classmethod
    def subcommands(cls) -> dict[str, set[str]]:
        commands = LightningCLI.subcommands()
        if cls.allowed_subcommands is None:
            return commands
        return {k: v for k, v in commands.items() if k in cls.allowed_subcommands}

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # No abbreviations: "--trainer.max_step" is an error, not max_steps.
        kwargs.setdefault("allow_abbrev", False)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.set_defaults({"checkpoint.save_last": True})
        # A config that names no precision trains in the one that is fast here: bf16-mixed on a CUDA device
        # or a CPU with AMX tiles, 32-true elsewhere (where bf16 autocast is several times slower).
        parser.set_defaults({"trainer.precision": default_training_precision()})
        parser.add_argument(
            f"--{runs.RUN_NAME_KEY}",
            type=str | None,
            default=None,
            help="Name of the run folder: fit writes runs/<model>/<run_name>/ (default: the stem of the first "
            "--config file, else 'default'). An explicit trainer.logger name takes precedence.",
        )
        parser.add_argument(
            f"--{HPARAMS_SESSION_KEY}",
            type=bool,
            default=True,
            help="At the end of fit (test), log the run's hyper-parameters with its final val/ (test/) metrics "
            "as a TensorBoard HParams session. The study runner turns it off: a study logs one session per "
            "arm and seed of its own.",
        )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI (``_parse_ckpt_path``) replaces the command's model settings by the checkpoint's
        # hyper-parameters, so a fit resumed with other settings (a learning rate, a width) would silently
        # train with the old ones, and restoring the optimiser and schedule would undo them anyway. A fit
        # that resumes must ask for the settings it was trained with.
        subcommand = self.config.get("subcommand")
        section = self.config[subcommand] if subcommand else None
        requested = section.get("model").clone() if subcommand == "fit" and section.get("model") else None
        super()._parse_ckpt_path()
        if requested is None or not section.get("ckpt_path"):
            return
        conflicts = resume_conflicts(requested, self.config[subcommand].get("model"))
        run = runs.run_of_checkpoint(section.ckpt_path)
        _warn_on_new_step_budget(run, section.get("trainer.max_steps"))
        if conflicts:
            own = f"--config {run / 'config.yaml'}" if run is not None else "the config it was trained with"
            shown = "; ".join(conflicts[:4]) + (
                f"; and {len(conflicts) - 4} more" if len(conflicts) > 4 else ""
            )
            _user_error(
                f"--ckpt_path resumes a run with the model settings it was trained with, but this command asks "
                f"for others: {shown}. Resume with the run's own settings ({own}), or train a new run with "
                "these (another --run_name)"
            )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        # A run folder as --ckpt_path stands for its checkpoints/last.ckpt (resolved before LightningCLI
        # reads the checkpoint's hyper-parameters).
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if ckpt_path is not None and not runs.is_lightning_keyword(ckpt_path):
            if Path(ckpt_path).is_dir():
                try:
                    config.ckpt_path = str(runs.resolve_checkpoint(ckpt_path))
                except FileNotFoundError as err:
                    _user_error(f"--ckpt_path: {err}")
            check_ckpt_path(config.ckpt_path, getattr(self.model_class, "checkpoint_kind", None))

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        if self._get(self.config_init, HPARAMS_SESSION_KEY, default=True) is False:
            # No HParams session of this run (the default callback; one the config names is kept).
            self.trainer_defaults = {
                **self.trainer_defaults,
                "callbacks": [
                    c
                    for c in _as_list(self.trainer_defaults.get("callbacks"))
                    if not isinstance(c, HParamsWithFinalMetrics)
                ],
            }
        # The default progress bar is StepProgressBar, unless the config names a progress bar or disables it.
        trainer = self._get(self.config_init, "trainer", default={})
        given = _as_list(trainer.get("callbacks"))
        defaults = _as_list(self.trainer_defaults.get("callbacks"))
        bar = step_progress_bar()
        if (
            "callbacks" not in kwargs
            and bar is not None
            and trainer.get("enable_progress_bar") is not False
            and not any(isinstance(c, ProgressBar) for c in given + defaults)
        ):
            kwargs["callbacks"] = [*given, bar]
        # A fit into a new run folder that fails before training (a configuration refused in setup) leaves
        # no folder behind.
        if self._new_run_folder is not None:
            kwargs["callbacks"] = [*kwargs.get("callbacks", given), DiscardUnstartedRun(self._new_run_folder)]
        # Checkpoints are written atomically on their own file system (AtomicCheckpointIO), unless the config
        # names a checkpoint IO plugin of its own.
        plugins = _as_list(trainer.get("plugins"))
        if "plugins" not in kwargs and not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        trainer = super().instantiate_trainer(**kwargs)
        # Every fit keeps its training time in its checkpoints (Lightning's Timer, which a max_time adds
        # already; without one, a Timer that never stops the fit), so that a resumed fit knows the time the
        # earlier attempts spent (``training_seconds``).
        if not any(isinstance(c, Timer) for c in trainer.callbacks):
            trainer.callbacks.append(Timer(duration=None, verbose=False))
        return trainer

    def instantiate_classes(self) -> None:
        # A bad value that one of the toolkit's own classes refuses while jsonargparse builds it (a width the
        # number of heads does not divide, a batch size of 0) reaches here wrapped in jsonargparse's error,
        # whose last frame is jsonargparse's. Raised again as it is, the toolkit's own error reads as a user
        # error (one line; ``--debug`` shows its traceback).
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            own = _own_value_error(err)
            if own is None or own is err:
                raise
            raise own from None

    def before_instantiate_classes(self) -> None:
        subcommand = self.subcommand
        config = self.config[subcommand] if subcommand else self.config
        try:
            configure_run(config, subcommand, top=self.config if subcommand else None)
        except (runs.RunExistsError, ValueError) as err:
            _user_error(str(err))
        self._new_run_folder = None
        if subcommand == "fit" and (args := _logger_args(_loggers(config)[0])) is not None:
            folder = _logger_folder(config, args)
            if folder is not None and not folder.exists():
                self._new_run_folder = folder


def training_seconds(trainer: Any) -> tuple[float, float] | None:
    """(all attempts, earlier attempts) training seconds of a finished ``fit``, from its ``Timer`` callback
    (``RunCLI`` gives every fit one; its time is saved in each checkpoint and restored on resume): the time
    from the start to the end of training (validation within it included) of this attempt plus the earlier
    attempts' time up to the checkpoint this one resumed from; work an interruption lost after that
    checkpoint is not counted, as it was done again. A resume from a checkpoint that had reached the end
    (killed after its last save) trains nothing: this attempt adds 0. None without a Timer."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if timer is None:
        return None
    total = float(timer.time_elapsed("train"))  # the restored time alone when training did not start
    start, end = timer.start_time("train"), timer.end_time("train")
    this_attempt = float(end - start) if start is not None and end is not None else 0.0
    return total, max(0.0, total - this_attempt)


def run_cli(
    model_class: type[LightningModule],
    argv: list[str] | None,
    runs_dir: str,
    subcommands: Iterable[str] | None = None,
    prog: str | None = None,
    description: str | None = None,
    **kwargs: Any,
) -> LightningCLI:
    """Run LightningCLI for ``model_class`` on ``argv`` (e.g. ``["fit", "--config", "recipe.yaml"]``).

    Args:
        model_class: the LightningModule.
        argv: command-line arguments (default ``sys.argv[2:]`` semantics of LightningCLI).
        runs_dir: default TensorBoard ``save_dir`` (``runs.model_runs_dir(model)``: runs are written to
            ``runs_dir/<run_name>/``).
        subcommands: the subcommands offered (default: all).
        prog: the command named in usage lines and error hints (``infinity-lit tokenizer``; default the
            script's name).
        description: the first line of ``--help`` (default Lightning's).
        **kwargs: further ``LightningCLI`` arguments (not ``auto_configure_optimizers``: the generic
            ``--optimizer`` / ``--lr_scheduler`` are always off; the optimiser is ``--model.optimizer.*``).

    Returns:
        the CLI object (its ``trainer`` and ``model`` hold the run's state).
    """
    if torch.cuda.is_available():
        # TF32 matmuls on GPUs; CPU fp32 matmuls stay exact fp32.
        torch.set_float32_matmul_precision("high")
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    quiet_lightning()
    parser_kwargs = {k: v for k, v in (("prog", prog), ("description", description)) if v is not None}
    parser_kwargs.update(kwargs.pop("parser_kwargs", None) or {})
    cli_class = type(
        "RunCLI", (RunCLI,), {"allowed_subcommands": tuple(subcommands) if subcommands is not None else None}
    )
    trainer_defaults = {
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            # name None: named by run_name (RunCLI); version "": no version_<n> level.
            "init_args": {
                "save_dir": runs_dir,
                "name": None,
                "version": runs.RUN_VERSION,
                "default_hp_metric": False,
            },
        },
        # LightningCLI adds default callbacks to those of the config.
        "callbacks": [HParamsWithFinalMetrics(), SkippedSamplesText()],
    }
    return cli_class(
        model_class,
        LightningDataModule,
        subclass_mode_data=True,
        args=argv,
        parser_kwargs=parser_kwargs,
        trainer_defaults=trainer_defaults,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        # No generic --optimizer / --lr_scheduler: each module builds its own from model.optimizer
        # (Lightning's would replace it, frozen stages and per-batch schedule included).
        auto_configure_optimizers=False,
        **kwargs,
    )
