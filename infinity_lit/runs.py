"""The run-folder layout: where every run, checkpoint and done marker lives (the one home of these paths).

runs/<model>/<name>/version_<n>/     ``infinity-lit MODEL fit`` (TensorBoard events, config.yaml)
<run>/checkpoints/last.ckpt          the latest state (always written); best checkpoints beside it
OUT/<stage>/run/                     a study's or the quickstart's training run of one stage
OUT/<stage>/DONE.json                the marker of a finished stage (what it produced, how long it took)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
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


def model_runs_dir(model: str) -> Path:
    """Default TensorBoard ``save_dir`` of ``infinity-lit MODEL fit`` (``runs/<model>``)."""
    return RUNS_ROOT / model


def last_checkpoint(run_dir: str | Path) -> Path:
    """``<run_dir>/checkpoints/last.ckpt`` (whether or not it exists)."""
    return Path(run_dir) / CHECKPOINTS / LAST


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


def read_done(stage_dir: str | Path) -> dict[str, Any] | None:
    """The done record of a finished stage, or None when it has not finished."""
    path = Path(stage_dir) / DONE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def mark_done(stage_dir: str | Path, record: dict[str, Any]) -> Path:
    """Mark a stage finished with ``record`` (written atomically)."""
    return atomic_write_text(Path(stage_dir) / DONE, json.dumps(record, indent=2, default=str))
