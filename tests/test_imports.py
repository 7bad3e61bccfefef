"""The floors of the package: the import-linter contract in pyproject.toml, and which modules load Lightning.

The contract (``[tool.importlinter]``) says cli > studies > evaluation > generator > tokenizer > ground
(quantizer, data, metrics, training, runs, checkpoints) and that the pure-torch modules import no Lightning.
It is checked statically on the source tree, and a copy of the tree with a planted upward import and a
planted Lightning import must fail it. The runtime check imports the pure-torch modules in a fresh
interpreter and looks at ``sys.modules``, which also covers imports done when a package is imported.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "infinity_lit"

#: Modules that must load without Lightning (what `import` of each pulls in, parents included).
PURE_TORCH = [
    "infinity_lit.quantizer",
    "infinity_lit.metrics.reconstruction",
    "infinity_lit.metrics.fid",
    "infinity_lit.metrics.inception",
    "infinity_lit.metrics.clip_score",
    "infinity_lit.data",
    "infinity_lit.data.images",
    "infinity_lit.tokenizer",
    "infinity_lit.generator",
    "infinity_lit.generator.transformer",
    "infinity_lit.generator.self_correction",
    "infinity_lit.generator.sampling",
    "infinity_lit.generator.text_encoders",
    "infinity_lit.generator.checkpoint",
    "infinity_lit.checkpoints",
    "infinity_lit.recipes",
    "infinity_lit.runs",
    "infinity_lit.cli.data",
]


def _lint_imports(root: Path, env_path: Path) -> subprocess.CompletedProcess:
    """Run import-linter with ``root/pyproject.toml`` in a fresh interpreter that imports from ``env_path``."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports('pyproject.toml', no_cache=True))"
    env = {"PYTHONPATH": str(env_path), "PATH": "/usr/bin:/bin", "HOME": str(root)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_import_contract_holds_on_the_source_tree():
    result = _lint_imports(REPO, REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """A copy of the package and its pyproject.toml in ``tmp_path``."""
    shutil.copytree(PACKAGE, tmp_path / "infinity_lit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _plant(path: Path, line: str) -> None:
    text = path.read_text(encoding="utf-8")
    marker = "from __future__ import annotations\n"
    assert marker in text
    path.write_text(text.replace(marker, marker + "\n" + line + "\n", 1), encoding="utf-8")


def test_contract_fails_on_a_planted_upward_import(tree_copy: Path):
    # The tokenizer (floor 2) reaching up into the evaluation suite (floor 4).
    _plant(tree_copy / "infinity_lit" / "tokenizer" / "model.py", "import infinity_lit.evaluation.report")
    result = _lint_imports(tree_copy, tree_copy)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert "infinity_lit.tokenizer.model -> infinity_lit.evaluation.report" in result.stdout


def test_contract_fails_on_a_planted_circle_and_a_planted_lightning_import(tree_copy: Path):
    # The quantizer (ground) importing Lightning, and the ground importing the CLI.
    _plant(tree_copy / "infinity_lit" / "quantizer" / "bsq.py", "import lightning.pytorch")
    _plant(tree_copy / "infinity_lit" / "runs.py", "import infinity_lit.cli.eval")
    result = _lint_imports(tree_copy, tree_copy)
    assert result.returncode != 0
    out = result.stdout
    assert "Contracts: 0 kept, 2 broken." in out
    assert "infinity_lit.quantizer.bsq -> lightning" in out
    assert "infinity_lit.runs -> infinity_lit.cli.eval" in out


@pytest.mark.parametrize("module", PURE_TORCH)
def test_pure_torch_module_does_not_load_lightning(module: str):
    code = textwrap.dedent(
        f"""
        import sys
        import {module}
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning"))
        print(loaded[:3])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {module} loaded {out.strip()}"


def test_lightning_modules_are_where_the_layout_says():
    """The Lightning shells do load Lightning (so the check above is not vacuous)."""
    code = "import sys, infinity_lit.tokenizer.module; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
