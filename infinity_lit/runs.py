"""The run-folder layout: where every run, checkpoint and done marker lives (the one home of these paths).

runs/<model>/<name>/                 ``infinity-lit MODEL fit`` with ``run_name: <name>`` (TensorBoard events,
                                     config.yaml, hparams.yaml); no ``version_<n>`` level: one name, one run
<run>/checkpoints/last.ckpt          the latest state (always written); best checkpoints beside it
<run>/validate/, <run>/test/         ``infinity-lit MODEL validate|test`` logged beside the run they check
<run>/eval/<what>/                   the run's evaluation outputs (``eval/configs``: samples, metrics.json)
OUT/<model>/run/                     a study's or the quickstart's training run of one stage
OUT/<stage>/DONE.json                the marker of a finished stage (what it produced, how long it took)
OUT/<stage>.stale-<n>/               a stage set aside because its inputs changed (``set_aside``)

A run's name is the recipe's top-level ``run_name`` (``--run_name``), by default the stem of the first
``--config`` file. Wherever a checkpoint is asked for, a run folder stands for its
``checkpoints/last.ckpt`` (``resolve_checkpoint``). ``fit`` into a run folder that already holds
checkpoints is refused unless it resumes from one of them (``check_new_run``): a re-run never silently
replaces earlier weights, and no config is left pointing at a stale ``version_<n>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path, PurePath
from typing import Any

#: Root of all runs, relative to the working directory.
RUNS_ROOT = Path("runs")
#: Sub-folder of a run holding its checkpoints.
CHECKPOINTS = "checkpoints"
#: The checkpoint that always holds a run's latest state.
LAST = "last.ckpt"
#: Logger version (folder name) of a stage's training run.
STAGE_RUN = "run"
#: File that marks a finished stage.
DONE = "DONE.json"
#: Top-level recipe key (and ``--run_name`` option) naming the run folder of ``infinity-lit MODEL fit``.
RUN_NAME_KEY = "run_name"
#: Run name when neither ``run_name`` nor a config file names the run.
DEFAULT_RUN_NAME = "default"
#: Logger ``version`` of a named run: no version level (``runs/<model>/<name>/`` is the run).
RUN_VERSION = ""
#: Sub-folder of a run holding its evaluation outputs.
EVAL = "eval"
#: ``ckpt_path`` values that Lightning resolves itself (not file paths; also ``registry…``).
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc")


def is_lightning_keyword(ckpt_path: str | Path) -> bool:
    """Whether ``ckpt_path`` is one of Lightning's own ``ckpt_path`` values rather than a file path."""
    return str(ckpt_path) in LIGHTNING_CKPT_KEYWORDS or str(ckpt_path).startswith("registry")


class RunExistsError(FileExistsError):
    """``fit`` would write into a run folder that already holds checkpoints without resuming from them."""


def model_runs_dir(model: str) -> Path:
    """Default TensorBoard ``save_dir`` of ``infinity-lit MODEL fit`` (``runs/<model>``)."""
    return RUNS_ROOT / model


def run_dir(model: str, name: str) -> Path:
    """The folder of the run ``name`` of ``model``: ``runs/<model>/<name>``."""
    return model_runs_dir(model) / check_run_name(name)


def logger_run_dir(save_dir: str | Path, name: str | None, version: int | str | None) -> Path | None:
    """The folder a TensorBoard/CSV logger writes to, as Lightning lays it out (``save_dir/name/version``,
    an int version as ``version_<n>``); None for an auto-incremented version (a fresh folder each run)."""
    if version is None:
        return None
    version = version if isinstance(version, str) else f"version_{version}"
    return Path(save_dir, name or "", version)


def checkpoint_dir(run: str | Path) -> Path:
    """``<run>/checkpoints``."""
    return Path(run) / CHECKPOINTS


def last_checkpoint(run_dir: str | Path) -> Path:
    """``<run_dir>/checkpoints/last.ckpt`` (whether or not it exists)."""
    return checkpoint_dir(run_dir) / LAST


def eval_dir(run: str | Path, what: str) -> Path:
    """``<run>/eval/<what>``: where an evaluation of the run writes (samples, metrics.json)."""
    return Path(run) / EVAL / what


def check_run_name(name: str) -> str:
    """``name`` if it can name a run folder (a relative path without ``..``), else ValueError."""
    parts = PurePath(name).parts
    if not name or not name.strip() or PurePath(name).is_absolute() or ".." in parts:
        raise ValueError(f"run_name must be a folder name such as 'openmoji64', got {name!r}")
    return name


def default_run_name(config_files: Iterable[str | os.PathLike] = ()) -> str:
    """The run name when the recipe sets none: the stem of the first config file, else ``default``."""
    for path in config_files:
        stem = Path(os.fspath(path)).stem
        if stem:
            return stem
    return DEFAULT_RUN_NAME


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint path as given by a user or a config: a ``.ckpt`` file as is, or a run folder
    (``runs/<model>/<name>/…``), which stands for its ``checkpoints/last.ckpt``.

    Raises:
        FileNotFoundError: nothing at ``path``, or a folder without ``checkpoints/last.ckpt``.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        last = last_checkpoint(path)
        if last.is_file():
            return last
        found = sorted(str(p.relative_to(path)) for p in path.rglob("*.ckpt"))[:5]
        raise FileNotFoundError(
            f"run folder {str(path)!r} has no {CHECKPOINTS}/{LAST}"
            + (
                f" (checkpoints found: {', '.join(found)}); pass one of them"
                if found
                else "; has it been trained?"
            )
        )
    raise FileNotFoundError(f"no checkpoint or run folder at {str(path)!r}")


def run_of_checkpoint(ckpt_path: str | Path | None) -> Path | None:
    """The run folder a ``--ckpt_path`` belongs to: ``<run>`` for ``<run>/checkpoints/<file>.ckpt``, or a run
    folder given as itself (one holding ``checkpoints/last.ckpt``); None for no path, one of Lightning's
    keywords, a checkpoint outside the run layout, or nothing at the path."""
    if ckpt_path is None or is_lightning_keyword(ckpt_path):
        return None
    path = Path(ckpt_path)
    if path.is_dir():
        return path if last_checkpoint(path).is_file() else None
    if path.is_file() and path.parent.name == CHECKPOINTS:
        return path.parent.parent
    return None


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def check_new_run(
    checkpoints: str | Path, ckpt_path: str | Path | None = None, new_name_hint: str = "--run_name"
) -> None:
    """Refuse a ``fit`` that would write into ``checkpoints`` (a run's checkpoint folder) when it already
    holds checkpoints, unless the fit resumes from one of them (``ckpt_path`` inside it, or one of
    Lightning's ``last``/``best``/``hpc``).

    Args:
        checkpoints: the checkpoint folder the fit writes to (``<run>/checkpoints``).
        ckpt_path: the fit's ``--ckpt_path`` (None: a fresh start).
        new_name_hint: the option that picks another run folder, for the message.

    Raises:
        RunExistsError: with a one-line message naming the ``--ckpt_path`` that resumes the run.
    """
    checkpoints = Path(checkpoints)
    if ckpt_path is not None and (
        is_lightning_keyword(ckpt_path) or _is_within(Path(ckpt_path), checkpoints)
    ):
        return
    existing = sorted(checkpoints.glob("*.ckpt"), key=lambda p: (p.name != LAST, -p.stat().st_mtime_ns))
    if not existing:
        return
    run = checkpoints.parent
    resume = existing[0]
    other = f" and --ckpt_path {ckpt_path} is not one of its checkpoints" if ckpt_path is not None else ""
    raise RunExistsError(
        f"run folder {run} already holds a trained run ({resume.relative_to(run)}){other}; to resume it "
        f"pass --ckpt_path {resume}, to start a new run pass a new {new_name_hint} (or delete {run})"
    )


def logger_args(save_dir: str | Path, name: str, version: str) -> list[str]:
    """LightningCLI arguments that put the TensorBoard run (and so its checkpoints) at
    ``save_dir/name/version`` (the logger is the CLI's default ``TensorBoardLogger``)."""
    return [
        "--trainer.logger.init_args.save_dir",
        str(save_dir),
        "--trainer.logger.init_args.name",
        name,
        "--trainer.logger.init_args.version",
        version,
    ]


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old or the new
    file, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


#: Suffix of a stage folder set aside because its inputs changed (``set_aside``): ``<stage>.stale-<n>``.
STALE = ".stale-"


def set_aside(folder: str | Path) -> Path:
    """Rename ``folder`` to ``<folder>.stale-<n>`` (the first free n ≥ 1), keeping everything in it, so a
    stage whose inputs changed reruns in a fresh folder without losing what was computed. Returns the new
    path."""
    folder = Path(folder)
    n = 1
    while (aside := folder.with_name(f"{folder.name}{STALE}{n}")).exists():
        n += 1
    folder.rename(aside)
    return aside


def read_done(stage_dir: str | Path) -> dict[str, Any] | None:
    """The done record of a finished stage, or None when it has not finished."""
    path = Path(stage_dir) / DONE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def mark_done(stage_dir: str | Path, record: dict[str, Any]) -> Path:
    """Mark a stage finished with ``record`` (written atomically)."""
    return atomic_write_text(Path(stage_dir) / DONE, json.dumps(record, indent=2, default=str))
