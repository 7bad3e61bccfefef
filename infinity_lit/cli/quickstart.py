"""``infinity-lit quickstart [--out DIR] [--data DIR] …``: options from ``studies.quickstart.quickstart``."""

from __future__ import annotations

from typing import Any


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the quickstart on ``argv`` (default ``sys.argv[1:]``); returns its summary."""
    from .common import run_function

    _, summary = run_function("infinity-lit quickstart", "infinity_lit.studies.quickstart:quickstart", argv)
    return summary
