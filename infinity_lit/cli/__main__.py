"""``python -m infinity_lit.cli …`` = ``infinity-lit …``."""

from infinity_lit.cli import main

main()
