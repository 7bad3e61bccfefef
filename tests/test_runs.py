"""The run-folder layout (``infinity_lit.runs``) and how the LightningCLI set-up applies it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_SCHEDULE_ARG, TINY_TOKENIZER_ARGS

from infinity_lit import runs
from infinity_lit.training import lightning_cli
from infinity_lit.training.lightning_cli import RunCLI

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "experiments" / "tokenizer" / "openmoji64.yaml"

#: A tokenizer small enough to fit in seconds on 32² shards.
TINY_ARGS = [*TINY_TOKENIZER_ARGS, TINY_SCHEDULE_ARG]


# ---------------------------------------------------------------- layout


def test_layout_paths():
    assert runs.model_runs_dir("tokenizer") == Path("runs/tokenizer")
    assert runs.run_dir("generator", "openmoji64") == Path("runs/generator/openmoji64")
    run = runs.run_dir("tokenizer", "openmoji64")
    assert runs.checkpoint_dir(run) == run / "checkpoints"
    assert runs.last_checkpoint(run) == Path("runs/tokenizer/openmoji64/checkpoints/last.ckpt")
    assert runs.eval_dir(run, "recon") == Path("runs/tokenizer/openmoji64/eval/recon")
    # The stages' layout: OUT/<model>/run.
    assert runs.last_checkpoint(Path("out") / "tokenizer" / runs.STAGE_RUN) == Path(
        "out/tokenizer/run/checkpoints/last.ckpt"
    )


def test_logger_run_dir_follows_lightning():
    assert runs.logger_run_dir("runs/tokenizer", "openmoji64", runs.RUN_VERSION) == Path(
        "runs/tokenizer/openmoji64"
    )
    assert runs.logger_run_dir("out", "tokenizer", "run") == Path("out/tokenizer/run")
    assert runs.logger_run_dir("runs/x", "y", 3) == Path("runs/x/y/version_3")
    assert runs.logger_run_dir("runs/x", "y", None) is None  # auto-incremented: a fresh folder


def test_logger_args_put_the_run_at_save_dir_name_version():
    assert runs.logger_args("out", "tokenizer", "run") == [
        "--trainer.logger.init_args.save_dir",
        "out",
        "--trainer.logger.init_args.name",
        "tokenizer",
        "--trainer.logger.init_args.version",
        "run",
    ]


def test_run_names():
    assert runs.default_run_name(["experiments/tokenizer/openmoji64.yaml", "delta.yaml"]) == "openmoji64"
    assert runs.default_run_name([]) == runs.DEFAULT_RUN_NAME == "default"
    assert runs.check_run_name("study/arm_a") == "study/arm_a"
    for bad in ("", " ", "/abs", "../up", "a/../../b"):
        with pytest.raises(ValueError, match="run_name must be a folder name"):
            runs.check_run_name(bad)


def test_resolve_checkpoint(tmp_path):
    run = tmp_path / "runs" / "tokenizer" / "openmoji64"
    with pytest.raises(FileNotFoundError, match="no checkpoint or run folder at"):
        runs.resolve_checkpoint(run)
    run.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"has no checkpoints/last.ckpt; has it been trained\?"):
        runs.resolve_checkpoint(run)
    best = runs.checkpoint_dir(run) / "epoch=0-step=400.ckpt"
    best.parent.mkdir()
    best.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"checkpoints found: checkpoints/epoch=0-step=400.ckpt"):
        runs.resolve_checkpoint(run)
    assert runs.resolve_checkpoint(best) == best  # a file as is
    last = runs.last_checkpoint(run)
    last.write_bytes(b"")
    assert runs.resolve_checkpoint(run) == last
    assert runs.resolve_checkpoint(str(run)) == last


def test_check_new_run(tmp_path):
    run = tmp_path / "runs" / "tokenizer" / "openmoji64"
    checkpoints = runs.checkpoint_dir(run)
    runs.check_new_run(checkpoints)  # nothing there yet
    checkpoints.mkdir(parents=True)
    runs.check_new_run(checkpoints)  # an empty folder
    last = runs.last_checkpoint(run)
    last.write_bytes(b"")
    with pytest.raises(runs.RunExistsError) as refused:
        runs.check_new_run(checkpoints)
    message = str(refused.value)
    assert "\n" not in message
    assert f"--ckpt_path {last}" in message and "a new --run_name" in message
    # Resuming from one of the run's own checkpoints (or Lightning's keywords) is allowed.
    runs.check_new_run(checkpoints, last)
    runs.check_new_run(checkpoints, "last")
    # Resuming another run's weights into this folder would overwrite it.
    other = tmp_path / "elsewhere.ckpt"
    other.write_bytes(b"")
    with pytest.raises(
        runs.RunExistsError, match=r"--ckpt_path .*elsewhere.ckpt is not one of its checkpoints"
    ):
        runs.check_new_run(checkpoints, other, "--trainer.logger.init_args.version")
    # Best checkpoints alone count too: the newest is the one to resume.
    last.unlink()
    (checkpoints / "epoch=0-step=2.ckpt").write_bytes(b"")
    with pytest.raises(runs.RunExistsError, match=r"--ckpt_path \S+epoch=0-step=2.ckpt"):
        runs.check_new_run(checkpoints)


def test_done_markers(tmp_path):
    assert runs.read_done(tmp_path / "stage") is None
    runs.mark_done(tmp_path / "stage", {"checkpoint": Path("a/last.ckpt")})
    assert runs.read_done(tmp_path / "stage") == {"checkpoint": "a/last.ckpt"}
    assert json.loads((tmp_path / "stage" / runs.DONE).read_text()) == {"checkpoint": "a/last.ckpt"}


# ---------------------------------------------------------------- the LightningCLI set-up


class _Stop(Exception):
    """Raised instead of instantiating the model, data and trainer: the test only needs the parsed run."""


@pytest.fixture
def parsed(monkeypatch):
    """``parsed(model, argv)``: the config of ``argv`` after ``RunCLI``'s hooks, without building anything."""
    from infinity_lit.cli import train

    seen = {}

    def stop(self):
        seen["config"] = self.config[self.subcommand]
        raise _Stop

    monkeypatch.setattr(RunCLI, "instantiate_classes", stop)

    def run(model: str, argv: list[str]):
        with pytest.raises(_Stop):
            getattr(train, model)(argv)
        return seen.pop("config")

    return run


def _refusal(model: str, argv: list[str], capsys) -> str:
    from infinity_lit.cli import train

    with pytest.raises(SystemExit) as exit_info:
        getattr(train, model)(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def _fake_checkpoint(path: Path) -> Path:
    """A stand-in for a tokenizer fit's checkpoint: the recipe's tokenizer settings as its hyper-parameters
    (what ``--ckpt_path`` checks: the kind of model, and that the command asks for the same settings)."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = yaml.safe_load(RECIPE.read_text())["model"]["tokenizer"]
    torch.save({"hyper_parameters": {"tokenizer": tokenizer}}, path)
    return path


@pytest.mark.parametrize("model", ["tokenizer", "generator"])
def test_fit_writes_runs_model_name_without_a_version(model, parsed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = REPO / "experiments" / model / "openmoji64.yaml"
    config = parsed(model, ["fit", "-c", str(recipe)])
    assert config.run_name == "openmoji64"
    logger = config.trainer.logger.init_args
    assert (logger.save_dir, logger.name, logger.version) == (f"runs/{model}", "openmoji64", "")
    assert logger.default_hp_metric is False
    assert runs.logger_run_dir(logger.save_dir, logger.name, logger.version) == runs.run_dir(
        model, "openmoji64"
    )
    config = parsed(model, ["fit", "-c", str(recipe), "--run_name", "mine"])
    assert config.trainer.logger.init_args.name == "mine"


def test_run_name_defaults_to_the_config_stem(parsed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "my_recipe.yaml"
    recipe.write_text(
        "\n".join(ln for ln in RECIPE.read_text().splitlines() if not ln.startswith("run_name:"))
    )
    config = parsed("tokenizer", ["fit", "-c", str(recipe)])
    assert config.run_name == "my_recipe" and config.trainer.logger.init_args.name == "my_recipe"
    config = parsed("tokenizer", ["fit", "--data=infinity_lit.data.ShardDataModule", "--data.data_dir=x"])
    assert config.run_name == runs.DEFAULT_RUN_NAME
    # A stacked arm delta names its own run.
    delta = REPO / "experiments" / "tokenizer" / "openmoji64_scale_drop.yaml"
    config = parsed("tokenizer", ["fit", "-c", str(RECIPE), "-c", str(delta)])
    assert config.trainer.logger.init_args.name == "openmoji64_scale_drop"


def test_fit_into_an_existing_run_is_refused_unless_it_resumes(parsed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = runs.run_dir("tokenizer", "openmoji64")
    last = _fake_checkpoint(runs.last_checkpoint(run))
    err = _refusal("tokenizer", ["fit", "-c", str(RECIPE)], capsys)
    message = err.strip().splitlines()[-1]
    assert message == (
        "error: run folder runs/tokenizer/openmoji64 already holds a trained run (checkpoints/last.ckpt); "
        "to resume it pass --ckpt_path runs/tokenizer/openmoji64/checkpoints/last.ckpt, to start a new run "
        "pass a new --run_name (or delete runs/tokenizer/openmoji64)"
    )
    assert "Traceback" not in err
    # Resuming: the checkpoint file, or the run folder (standing for its last.ckpt).
    assert parsed("tokenizer", ["fit", "-c", str(RECIPE), "--ckpt_path", str(last)]).ckpt_path == str(last)
    assert parsed("tokenizer", ["fit", "-c", str(RECIPE), "--ckpt_path", str(run)]).ckpt_path == str(last)
    # Another run name is another folder.
    assert parsed("tokenizer", ["fit", "-c", str(RECIPE), "--run_name", "again"]).run_name == "again"
    # Validating / testing the run logs into a sub-folder: the fit's config.yaml and hparams.yaml stay.
    config = parsed("tokenizer", ["validate", "-c", str(RECIPE), "--ckpt_path", str(run)])
    assert config.trainer.logger.init_args.sub_dir == "validate" and config.ckpt_path == str(last)


def test_a_run_folder_without_checkpoint_as_ckpt_path_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "tokenizer" / "empty").mkdir(parents=True)
    err = _refusal("tokenizer", ["test", "-c", str(RECIPE), "--ckpt_path", "runs/tokenizer/empty"], capsys)
    assert "--ckpt_path: run folder 'runs/tokenizer/empty' has no checkpoints/last.ckpt" in err


def test_stage_layout_and_its_resume(parsed, tmp_path, capsys):
    """The stages' explicit logger settings (``runs.logger_args``) win over run_name: OUT/<model>/run."""
    out = tmp_path / "qs"
    stage = [*runs.logger_args(out, "tokenizer", runs.STAGE_RUN)]
    config = parsed("tokenizer", ["fit", "-c", str(RECIPE), *stage])
    logger = config.trainer.logger.init_args
    assert runs.logger_run_dir(logger.save_dir, logger.name, logger.version) == out / "tokenizer" / "run"
    last = _fake_checkpoint(runs.last_checkpoint(out / "tokenizer" / runs.STAGE_RUN))
    err = _refusal("tokenizer", ["fit", "-c", str(RECIPE), *stage], capsys)
    assert f"--ckpt_path {last}" in err and "a new --trainer.logger.init_args.version" in err
    assert parsed("tokenizer", ["fit", "-c", str(RECIPE), *stage, "--ckpt_path", str(last)]).ckpt_path == str(
        last
    )


def test_configure_run_leaves_other_loggers_alone():
    from jsonargparse import Namespace

    config = Namespace(
        run_name=None,
        config=None,
        ckpt_path=None,
        checkpoint=Namespace(dirpath=None),
        trainer=Namespace(logger=True, default_root_dir=None),
    )
    assert lightning_cli.configure_run(config, "fit") is None  # Lightning's default: a fresh version_<n>
    assert config.run_name == runs.DEFAULT_RUN_NAME


def test_two_step_fit_then_the_same_fit_is_refused(openmoji_shards, tmp_path, monkeypatch, capsys):
    """A real fit writes runs/tokenizer/<name>/ (no version level); the identical second fit is refused."""
    from infinity_lit.cli import train

    monkeypatch.chdir(tmp_path)
    argv = [
        "fit",
        "-c",
        str(RECIPE),
        "--run_name=tiny",
        f"--data.init_args.data_dir={openmoji_shards}",
        "--data.init_args.resolution=32",
        "--data.init_args.batch_size=4",
        "--trainer.precision=32-true",
        "--trainer.max_steps=2",
        "--trainer.max_time=null",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--model.num_log_images=2",
        *TINY_ARGS,
    ]
    train.tokenizer(argv)
    run = tmp_path / "runs" / "tokenizer" / "tiny"
    assert runs.last_checkpoint(run).is_file() and (run / "config.yaml").is_file()
    assert not list(run.glob("version_*"))
    assert list(run.glob("events.out.tfevents.*"))
    capsys.readouterr()
    stamp = runs.last_checkpoint(run).stat().st_mtime_ns
    err = _refusal("tokenizer", argv, capsys)
    assert "--ckpt_path runs/tokenizer/tiny/checkpoints/last.ckpt" in err
    assert runs.last_checkpoint(run).stat().st_mtime_ns == stamp
    shutil.rmtree(run)


def test_a_moved_run_folder_resumes_and_is_tested_where_it_is(parsed, tmp_path, monkeypatch):
    """``--ckpt_path`` inside a run folder puts the run there, whatever the recipe's run_name: a moved
    folder's fit continues in it (no stray runs/tokenizer/openmoji64 beside), and ``test`` of another run's
    checkpoint logs into that run's test/ sub-folder."""
    monkeypatch.chdir(tmp_path)
    moved = tmp_path / "elsewhere" / "om_tok"
    last = _fake_checkpoint(runs.last_checkpoint(moved))
    for ckpt in (moved, last):
        config = parsed("tokenizer", ["fit", "-c", str(RECIPE), "--ckpt_path", str(ckpt)])
        logger = config.trainer.logger.init_args
        assert runs.logger_run_dir(logger.save_dir, logger.name, logger.version) == moved
        assert config.run_name == "om_tok" and config.ckpt_path == str(last)
    config = parsed("tokenizer", ["test", "-c", str(RECIPE), "--ckpt_path", str(moved)])
    logger = config.trainer.logger.init_args
    assert runs.logger_run_dir(logger.save_dir, logger.name, logger.version) == moved
    assert logger.sub_dir == "test"
    # a checkpoint outside the run layout leaves the run where run_name puts it
    loose = _fake_checkpoint(tmp_path / "loose.ckpt")
    config = parsed("tokenizer", ["fit", "-c", str(RECIPE), "--ckpt_path", str(loose)])
    assert config.run_name == "openmoji64"
    assert not (tmp_path / "runs").exists()
