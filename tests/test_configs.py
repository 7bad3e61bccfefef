"""Every YAML file of the repository parses through the parser that reads it, and the recipes ship.

Each YAML file has a kind, from where it lives:

- ``experiments/{tokenizer,generator}/**``: a LightningCLI recipe (a base, with ``data.class_path``) or a delta
  stacked over its model's base (``-c base -c delta``), parsed by ``infinity-lit MODEL fit --print_config``;
- ``experiments/studies/**``: a study spec, read by ``studies.spec.load_study`` and ``check_deltas``;
- any other ``experiments/<folder>/**``: a trainer overlay, stacked over every model's base;
- ``eval/configs/<command>/**``: options of ``infinity-lit eval <command>`` (``cli.eval.build_parser``).

``test_every_yaml_file_is_tested`` checks that the files these tests parse are exactly the YAML files of
the repository, so a new YAML file in an unknown place fails until it gets a parser here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infinity_lit import recipes, runs

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
MODELS = ("tokenizer", "generator")
#: Folders that hold no repository files (runs, data, environments, build outputs).
SKIP_DIRS = {".git", ".venv", "venv", "runs", "data", "build", "dist", "lightning_logs", "node_modules"}


def _yaml_files() -> list[Path]:
    """The repository's YAML files: ``git ls-files`` (tracked and not ignored), else a walk of the tree."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "--", "*.yaml", "*.yml"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        return sorted(REPO / p for p in listed if p and (REPO / p).is_file())
    except (OSError, subprocess.CalledProcessError):
        found = []
        for root, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
            found += [Path(root) / f for f in files if f.endswith((".yaml", ".yml"))]
        return sorted(found)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _kind(path: Path) -> str | None:
    rel = path.relative_to(REPO).parts
    if rel[0] == "experiments" and len(rel) >= 3:
        if rel[1] in MODELS:
            # A base names its data module; a delta may change a data option (a resolution) only.
            return "base" if "class_path" in (_load(path).get("data") or {}) else "delta"
        return "study" if rel[1] == "studies" else "overlay"
    if rel[:2] == ("eval", "configs") and len(rel) >= 4:
        return "eval"
    return None


FILES = _yaml_files()
KINDS = {p: _kind(p) for p in FILES}


def _of(kind: str) -> list[Path]:
    return [p for p, k in KINDS.items() if k == kind]


def _id(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _model(path: Path) -> str:
    return path.relative_to(EXPERIMENTS).parts[0]


def _base_of(delta: Path) -> Path:
    """The base recipe a delta is stacked on: the base of its model whose stem begins its stem, else the
    model's only base."""
    bases = [p for p in _of("base") if _model(p) == _model(delta)]
    prefixed = sorted((p for p in bases if delta.stem.startswith(p.stem)), key=lambda p: -len(p.stem))
    if prefixed:
        return prefixed[0]
    assert len(bases) == 1, f"cannot tell which base recipe {_id(delta)} stacks on (bases: {bases})"
    return bases[0]


def _print_config(model: str, files: list[Path], capsys) -> dict:
    """``infinity-lit MODEL fit -c FILE … --print_config``: the merged config it prints."""
    from infinity_lit.cli import train

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        getattr(train, model)(["fit", *[a for f in files for a in ("-c", str(f))], "--print_config"])
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), out.err
    return yaml.safe_load(out.out)


def _run_folders() -> dict[Path, Path]:
    """The run folder each recipe (and recipe + delta) writes: ``runs/<model>/<run_name>``."""
    folders = {}
    for base in _of("base"):
        folders[base] = runs.run_dir(_model(base), _load(base).get(runs.RUN_NAME_KEY) or base.stem)
    for delta in _of("delta"):
        name = _load(delta).get(runs.RUN_NAME_KEY)
        folders[delta] = runs.run_dir(_model(delta), name) if name else folders[_base_of(delta)]
    return folders


# ---------------------------------------------------------------- coverage


def test_every_yaml_file_is_tested():
    unknown = sorted(_id(p) for p, k in KINDS.items() if k is None)
    assert not unknown, f"YAML files with no parser test in tests/test_configs.py: {unknown}"
    assert FILES, "no YAML files found"
    parametrised = set(_of("base") + _of("delta") + _of("study") + _of("overlay") + _of("eval"))
    assert parametrised == set(FILES)


def test_the_repository_has_recipes_and_eval_configs():
    assert {_model(p) for p in _of("base")} == set(MODELS)
    assert {p.parent.name for p in _of("eval")} == {"sample", "score", "recon"}


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize("path", _of("base"), ids=_id)
def test_base_recipe_parses(path, capsys):
    config = _print_config(_model(path), [path], capsys)
    assert config[runs.RUN_NAME_KEY] == _load(path)[runs.RUN_NAME_KEY]  # a recipe names its run
    assert config["data"]["class_path"]
    assert config["trainer"]["logger"]["init_args"]["default_hp_metric"] is False


@pytest.mark.parametrize("path", _of("delta"), ids=_id)
def test_delta_parses_over_its_base(path, capsys):
    base = _base_of(path)
    config = _print_config(_model(path), [base, path], capsys)
    delta = _load(path)

    def check(merged: dict, part: dict, where: str) -> None:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                check(merged[key], value, f"{where}{key}.")
            elif not isinstance(value, (dict, list)):
                assert merged.get(key) == value, f"{where}{key}"

    check(config, delta, "")


@pytest.mark.parametrize("path", _of("overlay"), ids=_id)
def test_overlay_parses_over_every_base(path, capsys):
    for base in _of("base"):
        _print_config(_model(base), [base, path], capsys)


@pytest.mark.parametrize("path", _of("study"), ids=_id)
def test_study_spec_loads_and_its_deltas_parse(path):
    from infinity_lit.studies.spec import check_deltas, load_study

    check_deltas(load_study(path))


def test_recipes_name_runs_not_logger_folders():
    """The layout lives in ``infinity_lit.runs``: no recipe or delta sets a logger, no YAML a version."""
    for path in FILES:
        assert "version_" not in path.read_text(encoding="utf-8"), _id(path)
    for path in _of("base") + _of("delta") + _of("overlay"):
        assert "logger" not in (_load(path).get("trainer") or {}), _id(path)


def test_recipes_are_bounded_by_steps_not_by_wall_clock_time():
    """A time budget trains a different model on a busy or slower machine: every recipe sets max_steps, none
    max_time, and no study stage lifts that."""
    for path in _of("base"):
        trainer = _load(path).get("trainer") or {}
        assert isinstance(trainer.get("max_steps"), int) and trainer["max_steps"] > 0, _id(path)
        assert trainer.get("max_time") is None, _id(path)
    for path in _of("delta") + _of("overlay"):
        assert (_load(path).get("trainer") or {}).get("max_time") is None, _id(path)
    for path in _of("study"):
        for stage in (_load(path).get("stages") or {}).values():
            assert (stage.get("overrides", {}).get("trainer") or {}).get("max_time") is None, _id(path)


def test_generator_recipe_reads_the_tokenizer_recipe_run():
    folders = set(_run_folders().values())
    for path in (p for p in _of("base") if _model(p) == "generator"):
        assert Path(_load(path)["model"]["tokenizer_checkpoint"]) in folders, _id(path)


# ---------------------------------------------------------------- evaluation configs


@pytest.mark.parametrize("path", _of("eval"), ids=_id)
def test_eval_config_parses(path):
    from infinity_lit.cli.eval import COMMANDS, build_parser

    command = path.relative_to(REPO / "eval" / "configs").parts[0]
    assert command in COMMANDS
    cfg = build_parser().parse_args([command, "--config", str(path)])
    assert cfg.command == command
    # Its run paths are the run folders the recipes or the quickstart write, their eval/ sub-folders, or the
    # quickstart's data.
    import inspect

    from infinity_lit.studies.quickstart import quickstart

    quick = Path(inspect.signature(quickstart).parameters["out"].default)
    folders = set(_run_folders().values()) | {
        quick / model / runs.STAGE_RUN for model in ("tokenizer", "generator")
    }
    for key, value in _load(path).items():
        if isinstance(value, str) and value.startswith(f"{runs.RUNS_ROOT}/"):
            value = Path(value)
            assert (
                value in folders
                or any(value.is_relative_to(runs.eval_dir(run, "")) for run in folders)
                or value.is_relative_to(quick / "data")
            ), f"{_id(path)}: {key}: {value} is not a run folder, under its eval/, or the quickstart's data"


# ---------------------------------------------------------------- packaging


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_pyproject_lists_every_package_and_recipe_folder():
    """The package list is spelled out (``package-dir`` maps experiments/ into the package): it must name
    every package of infinity_lit/ and every folder of experiments/."""
    setuptools = _pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"] == {recipes.PACKAGE: "experiments"}
    expected = set()
    for root, top in ((REPO / "infinity_lit", "infinity_lit"), (EXPERIMENTS, recipes.PACKAGE)):
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
            if any(f.endswith((".py", ".yaml", ".yml")) for f in files):
                rel = Path(folder).relative_to(root).parts
                expected.add(".".join((top, *rel)))
    assert set(setuptools["packages"]) == expected


def test_recipes_resolve_through_the_package():
    names = recipes.recipe_names()
    assert names == sorted(
        p.relative_to(EXPERIMENTS).as_posix() for p in FILES if p.is_relative_to(EXPERIMENTS)
    )
    path = recipes.recipe_path("tokenizer/openmoji64.yaml")
    assert path.is_file() and _load(path)[runs.RUN_NAME_KEY] == "openmoji64"
    with pytest.raises(FileNotFoundError, match=r"no recipe 'tokenizer/nope.yaml' .* shipped: generator/"):
        recipes.recipe_path("tokenizer/nope.yaml")
    with pytest.raises(ValueError, match="relative to the recipes folder"):
        recipes.recipe_path("../pyproject.toml")


def test_quickstart_finds_its_recipes_in_the_package():
    from infinity_lit.studies import quickstart

    assert quickstart._recipe(None, quickstart.TOKENIZER_RECIPE) == recipes.recipe_path(
        "tokenizer/openmoji64.yaml"
    )
    assert quickstart._recipe(None, quickstart.GENERATOR_RECIPE).is_file()
    with pytest.raises(FileNotFoundError, match=r"recipe 'nope\.yaml' not found"):
        quickstart._recipe(Path("nope.yaml"), quickstart.TOKENIZER_RECIPE)


@pytest.mark.slow
def test_an_installed_wheel_finds_its_recipes(tmp_path):
    """Build a wheel (offline), install it outside the repository and read the recipes from there."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "infinity_lit", "experiments"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(
            REPO / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src], check=True
    )
    (wheel,) = (tmp_path / "dist").glob("infinity_lit-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True)
    code = (
        "import json, infinity_lit, infinity_lit.recipes as r\n"
        "from infinity_lit.studies import quickstart as q\n"
        "print(json.dumps({'package': infinity_lit.__file__, 'names': r.recipe_names(),\n"
        "    'recipe': str(r.recipe_path('tokenizer/openmoji64.yaml')),\n"
        "    'quickstart': str(q._recipe(None, q.GENERATOR_RECIPE))}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    found = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    for key in ("package", "recipe", "quickstart"):
        assert Path(found[key]).resolve().is_relative_to(site.resolve()), (key, found[key])
    assert found["names"] == recipes.recipe_names()
    recipe = Path(found["recipe"])
    assert recipe.read_bytes() == (EXPERIMENTS / "tokenizer" / "openmoji64.yaml").read_bytes()
    assert _load(recipe)[runs.RUN_NAME_KEY] == "openmoji64"
    # The installed recipe parses through the installed CLI, from outside the repository.
    parse = (
        "import sys, infinity_lit.recipes as r\nfrom infinity_lit.cli import main\n"
        "main(['tokenizer', 'fit', '-c', str(r.recipe_path('tokenizer/openmoji64.yaml')), '--print_config'])\n"
    )
    printed = subprocess.run(
        [sys.executable, "-c", parse], cwd=work, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert yaml.safe_load(printed)[runs.RUN_NAME_KEY] == "openmoji64"
