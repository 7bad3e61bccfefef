"""The YAML recipes and study specs that ship with the package (the repository's ``experiments/``).

The repository keeps them at its top level, in ``experiments/``. A wheel ships that folder inside the
package as ``infinity_lit.experiments`` (``package-dir`` and ``package-data`` in pyproject.toml), and an
editable install maps the same package name onto the source folder, so ``recipe_path`` finds a recipe
from any working directory, in an installed wheel and in a checkout alike:

    recipe_path("tokenizer/openmoji64.yaml")   # …/infinity_lit/experiments/tokenizer/openmoji64.yaml
    recipe_names()                             # ["generator/openmoji64.yaml", "tokenizer/openmoji64.yaml", …]
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path, PurePosixPath

#: The package the ``experiments/`` folder is installed as.
PACKAGE = "infinity_lit.experiments"
#: File suffixes of recipes and study specs.
SUFFIXES = (".yaml", ".yml")


def recipes_dir() -> Path:
    """The installed ``experiments/`` folder (``infinity_lit/experiments`` in a wheel).

    Raises:
        ModuleNotFoundError: an installation without the recipes (an editable install made before they
            were packaged: reinstall with ``pip install -e .``).
        RuntimeError: the package is not on the file system (e.g. imported from a zip).
    """
    try:
        root = files(PACKAGE)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"the recipes package {PACKAGE!r} is not installed; reinstall infinity-lit "
            "(pip install -e . in a checkout, or pip install infinity-lit)",
            name=PACKAGE,
        ) from err
    if not isinstance(root, Path):
        raise RuntimeError(f"the recipes of {PACKAGE!r} are not on the file system ({root!r})")
    return root


def recipe_names() -> list[str]:
    """Every shipped recipe and study spec, as ``"<folder>/<file>.yaml"`` relative to ``recipes_dir()``."""
    root = recipes_dir()
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file()
    )


def recipe_path(name: str | os.PathLike) -> Path:
    """The file of the shipped recipe ``name``, e.g. ``"tokenizer/openmoji64.yaml"``.

    Raises:
        ValueError: ``name`` is absolute or leaves the recipes folder.
        FileNotFoundError: no such recipe (the message lists the shipped ones).
    """
    rel = PurePosixPath(Path(name).as_posix())
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(
            f"a recipe name is relative to the recipes folder (e.g. 'tokenizer/x.yaml'), got {name!r}"
        )
    path = recipes_dir().joinpath(*rel.parts)
    if not path.is_file():
        raise FileNotFoundError(
            f"no recipe {str(name)!r} in {recipes_dir()}; shipped: {', '.join(recipe_names()) or 'none'}"
        )
    return path
