"""``infinity-lit eval sample|score|recon|report``: the evaluation suite's command line.

    infinity-lit eval sample --checkpoint GEN.ckpt --prompts eval/prompts/openmoji.txt --out runs/x/eval/samples
    infinity-lit eval score  --generated runs/x/eval/samples --reference data/openmoji --out runs/x/eval/samples/metrics.json
    infinity-lit eval score  --generated samples_wide --generated samples_tall --reference data/openmoji64_ar --out pooled.json
    infinity-lit eval recon  --tokenizer TOK.ckpt --data data/openmoji --out runs/tok/eval/recon
    infinity-lit eval report runs/study/arm_a runs/study/arm_b --out reports/study

Each sub-command's options are the typed signature of its library function (``--help`` prints them; any
option can also come from a YAML file via ``--config``):

    sample  infinity_lit.evaluation.sampling.sample_checkpoint   resumable PNGs + metadata.jsonl
    score   infinity_lit.evaluation.scoring.score_folder         FID / KID / CLIP score → metrics.json
    recon   infinity_lit.evaluation.recon.reconstruction_record  PSNR / SSIM / per-scale PSNR / rFID
    report  infinity_lit.evaluation.report.make_report           HTML + Markdown comparison of runs

This module only parses and prints.
"""

from __future__ import annotations

import sys
from typing import Any

DESCRIPTION = "Evaluation suite: sample, score, recon, report."
COMMANDS = {
    "sample": "infinity_lit.evaluation.sampling:sample_checkpoint",
    "score": "infinity_lit.evaluation.scoring:score_folder",
    "recon": "infinity_lit.evaluation.recon:reconstruction_record",
    "report": "infinity_lit.evaluation.report:make_report",
}


#: Sub-commands whose first options are positional.
POSITIONAL = {"report": ("run_dirs+",)}


def build_parser():
    """The ``infinity-lit eval`` parser: one sub-command per function of ``COMMANDS``."""
    from .common import group_parser

    return group_parser("infinity-lit eval", DESCRIPTION, COMMANDS, POSITIONAL)[0]


def print_record(record: dict) -> None:
    """Print a metrics record's numbers, its text values ("not computed …") and its warnings."""
    from infinity_lit.training.callbacks import numeric_metrics

    for key, value in numeric_metrics(record.get("metrics", {})).items():
        print(f"{key}: {value:.4f}")
    for key, value in record.get("metrics", {}).items():
        if isinstance(value, str):
            print(f"{key}: {value}")
    from .common import SHOWN_WARNINGS, one_line

    for w in record.get("warnings", []):
        if one_line(w) not in SHOWN_WARNINGS:  # not printed already when it was raised
            print(f"warning: {w}", file=sys.stderr)


def repeated_generated(argv: list[str]) -> list[str]:
    """``eval score --generated A --generated B``: every ``--generated`` after the first becomes
    ``--generated+`` (append), so that the folders are pooled instead of the last one silently winning."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command != "score":
        return argv
    out, seen = [], False
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name == "--generated":
            if seen:
                arg = f"--generated+{eq}{value}"
            seen = True
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> Any:
    """Run ``infinity-lit eval`` on ``argv`` (default ``sys.argv[1:]``); returns the sub-command's result."""
    from .common import run_function_group

    argv = repeated_generated(list(sys.argv[1:] if argv is None else argv))
    name, kwargs, result = run_function_group("infinity-lit eval", DESCRIPTION, COMMANDS, argv, POSITIONAL)
    from infinity_lit.evaluation.ranks import ranks

    if not ranks().main:  # several processes (torchrun): rank 0 speaks for all
        return result
    if name == "sample":
        print(
            f"{kwargs['out']}: {result['written']} written, {result['skipped']} already present, "
            f"{result['total']} in all"
        )
    elif name in ("score", "recon"):
        print_record(result)
        if result.get("reused"):
            print(f"{result['path']} already holds these results (use --overwrite to recompute)")
        else:
            print(f"wrote {result['path']}")
    else:
        html_path, md_path = result
        print(f"wrote {html_path} and {md_path}")
    return result


def sample(argv: list[str] | None = None) -> Any:
    """``infinity-lit sample …``: the alias of ``infinity-lit eval sample …`` (same function, same options)."""
    return main(["sample", *(sys.argv[1:] if argv is None else argv)])
