"""``infinity-lit study run|status|report|check``: studies over arms × seeds (``infinity_lit.studies``).

    infinity-lit study check  experiments/studies/bit_flip_rate.yaml          validate the spec (and every delta)
                              [--slurm '{partition: gpu}']
    infinity-lit study run    experiments/studies/bit_flip_rate.yaml [--out runs/studies/bit_flip_rate]
                              [--launcher local|parallel|slurm] [--jobs N] [--threads T] [--slurm '{partition: gpu}']
    infinity-lit study status runs/studies/bit_flip_rate                      done / running / interrupted / failed, times
    infinity-lit study report runs/studies/bit_flip_rate                      rebuild the comparison page

``run`` first checks, as ``check`` does, that every arm's deltas parse against their stage (a bad one stops it
with one line before anything is trained), then resumes: finished stages are skipped, interrupted fits
resume from ``last.ckpt``, failed stages are retried. It exits with status 1 when an (arm, seed) failed (the
others still ran; the report lists it).

SLURM parameters (``--launcher slurm``) come from the spec's ``slurm`` (study-wide), each arm's ``slurm``, then
``--slurm``, each stacked on the one before; ``check`` lists what each arm's jobs get.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def check(spec: Path, deltas: bool = True, slurm: dict[str, Any] | None = None) -> str:
    """Validate a study spec: keys, arms, seeds, files, SLURM parameters, and (``deltas``) that every arm's
    config parses. With SLURM parameters (the spec's or ``slurm``), also what each arm's jobs get under
    ``study run --launcher slurm``, and which shared stage runs with another arm's.

    Args:
        spec: the study YAML.
        deltas: also parse every arm's stacked config with its stage's LightningCLI (a few seconds per arm).
        slurm: the ``--slurm`` parameters ``study run`` would be given (stacked on the spec's).
    """
    from infinity_lit.studies.runner import plan
    from infinity_lit.studies.spec import check_deltas, check_slurm, load_study

    study = load_study(spec)
    check_slurm(slurm, "--slurm")
    if deltas:
        check_deltas(study)
    tasks = plan(study)
    unique = {t.key for t in tasks}
    shared = len(tasks) - len(unique)
    lines = [
        f"{study.path}: study {study.name!r}, {len(study.arms)} arms × {len(study.seeds)} seeds, "
        f"{len(tasks)} stages, "
        + (f"{len(unique)} to run ({shared} shared with another arm's)" if shared else "none shared")
        + "; spec OK"
    ]
    if study.slurm or slurm or any(arm.slurm for arm in study.arms):
        lines += slurm_summary(study, tasks, slurm)
    return "\n".join(lines)


def slurm_summary(study: Any, tasks: list[Any], slurm: dict[str, Any] | None) -> list[str]:
    """Lines saying which SLURM parameters each arm's jobs get, and which shared stages run with another
    arm's (the first arm in spec order that needs a stage computes it, with its own parameters)."""
    params = {arm.name: study.slurm_parameters(arm.name, slurm) for arm in study.arms}
    groups: dict[str, list[str]] = {}
    for arm, values in params.items():
        text = ", ".join(f"{k}={v}" for k, v in sorted(values.items())) or "(none)"
        groups.setdefault(text, []).append(arm)
    lines = [f"slurm: {', '.join(arms)}: {text}" for text, arms in groups.items()]
    owner_arm = {t.folder: t.arm for t in tasks}
    others: dict[tuple[str, str], set[str]] = {}
    for task in tasks:
        if task.shared and params[task.arm] != params[owner_arm[task.owner]]:
            others.setdefault((task.stage, owner_arm[task.owner]), set()).add(task.arm)
    lines += [
        f"slurm: the {stage} stage {owner} shares with {', '.join(sorted(arms))} runs with {owner}'s parameters"
        for (stage, owner), arms in others.items()
    ]
    return lines


def status(out: Path) -> list[dict[str, Any]]:
    """What is done, running, interrupted (its process gone: ``study run`` resumes it), failed or pending in
    a study's output folder, with the stages' times.

    Args:
        out: the study output folder (``runs/studies/<name>``).
    """
    from infinity_lit.studies.runner import status as study_status

    return study_status(out)


def report(out: Path) -> tuple[Path, Path]:
    """Rebuild the comparison page of a study's output folder from what has finished.

    Args:
        out: the study output folder (``runs/studies/<name>``).
    """
    from infinity_lit.studies.runner import write_report

    return write_report(out)


COMMANDS = {
    "run": "infinity_lit.studies.runner:run_study",
    "status": status,
    "report": report,
    "check": check,
}
POSITIONAL = {"run": ("spec",), "status": ("out",), "report": ("out",), "check": ("spec",)}


def main(argv: list[str] | None = None) -> Any:
    """Run ``infinity-lit study …`` on ``argv``; returns the sub-command's result (exit 1 if an arm failed)."""
    from infinity_lit.studies.runner import format_status
    from infinity_lit.studies.spec import StudyError

    from .common import run_function_group

    try:
        name, _, result = run_function_group(
            "infinity-lit study",
            "Studies over arms × seeds: run, status, report, check.",
            COMMANDS,
            argv,
            POSITIONAL,
        )
    except (StudyError, FileNotFoundError) as err:  # a bad spec or folder: one line, not a traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if name == "check":
        print(result)
    elif name == "status":
        print(format_status(result))
    elif name == "report":
        print(f"wrote {result[0]} and {result[1]}")
    elif name == "run":
        print(format_status(result["status"]))
        if result["report"]:
            print(f"report: {result['report'][0]}")
        if result["failed"]:
            print(f"{result['failed']} (arm, seed) failed; see the errors above", file=sys.stderr)
            raise SystemExit(1)
    return result
