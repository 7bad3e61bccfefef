"""SLURM parameters of a study's jobs: the spec's (study-wide, per arm) and the command line's, merged, checked,
kept out of the stage keys, and handed to the submitit executor of each stage (no SLURM cluster needed)."""

from __future__ import annotations

import pytest
import submitit
from test_study import recipes, write_spec  # noqa: F401  (recipes: a fixture)

from infinity_lit import runs
from infinity_lit.studies import runner
from infinity_lit.studies.spec import StudyError, load_study

ARMS = [
    {"name": "p00", "value": 0.0, "generator": {"model": {"max_flip_prob": 0.0}}},
    {
        "name": "p30",
        "value": 0.3,
        "generator": "p30.yaml",
        "slurm": {
            "slurm_partition": "gpu",
            "gpus_per_node": 1,
            "timeout_min": 240,
            "additional_parameters": {"reservation": "r1"},
        },
    },
]
STUDY_SLURM = {
    "partition": "cpu",
    "timeout_min": 60,
    "mem_gb": 16,
    "additional_parameters": {"constraint": "a100"},
}


@pytest.fixture
def slurm_spec(recipes, openmoji_shards):  # noqa: F811
    return write_spec(recipes, openmoji_shards, arms=ARMS, slurm=STUDY_SLURM)


@pytest.fixture
def fake_slurm(monkeypatch):
    """submitit's SLURM executor believes it is on a cluster (``srun`` found)."""
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))


def test_parameters_merge_study_then_arm_then_command_line(slurm_spec):
    study = load_study(slurm_spec)
    assert study.slurm_parameters("p00") == STUDY_SLURM
    assert study.slurm_parameters("p30") == {
        "partition": "gpu",  # the arm's (given with the slurm_ prefix) over the study's
        "timeout_min": 240,
        "mem_gb": 16,
        "gpus_per_node": 1,
        "additional_parameters": {"constraint": "a100", "reservation": "r1"},  # merged key by key
    }
    command_line = {
        "timeout_min": 30,
        "slurm_account": "lab",
        "additional_parameters": {"constraint": "h100"},
    }
    assert study.slurm_parameters("p30", command_line) == {
        "partition": "gpu",
        "timeout_min": 30,  # the command line over both
        "mem_gb": 16,
        "gpus_per_node": 1,
        "account": "lab",
        "additional_parameters": {"constraint": "h100", "reservation": "r1"},
    }
    with pytest.raises(
        StudyError, match=r"^--slurm\.acount: unknown SLURM parameter \(did you mean 'account'"
    ):
        study.slurm_parameters("p00", {"acount": "lab"})


def test_slurm_parameters_are_in_no_stage_key(recipes, openmoji_shards, slurm_spec):  # noqa: F811
    plain = load_study(
        write_spec(
            recipes, openmoji_shards, arms=[{k: v for k, v in a.items() if k != "slurm"} for a in ARMS]
        )
    )
    with_slurm = load_study(slurm_spec)
    assert with_slurm.slurm and with_slurm.arm("p30").slurm and not plain.slurm
    assert [(t.folder, t.key, t.owner) for t in runner.plan(with_slurm)] == [
        (t.folder, t.key, t.owner) for t in runner.plan(plain)
    ]


def test_each_stage_executor_gets_its_arms_merged_parameters(slurm_spec, tmp_path, fake_slurm):
    study = load_study(slurm_spec)
    executor_for = runner.stage_executors(tmp_path, "slurm", 4, study, {"account": "lab"})
    tasks = {(t.arm, t.seed, t.stage): t for t in runner.plan(study)}
    p00, p30 = executor_for(tasks[("p00", 0, "generator")]), executor_for(tasks[("p30", 1, "generator")])
    assert executor_for(tasks[("p00", 1, "score")]) is p00  # one executor per distinct parameter set
    assert p00._executor.parameters["partition"] == "cpu" and p30._executor.parameters["partition"] == "gpu"
    sbatch = p30._executor._make_submission_file_text("python job.py", "0")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=240",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --mem=16GB",
        "#SBATCH --account=lab",
        "#SBATCH --constraint=a100",
        "#SBATCH --reservation=r1",
        "#SBATCH --cpus-per-task=4",
    ):
        assert line in sbatch, (line, sbatch)
    sbatch = p00._executor._make_submission_file_text("python job.py", "0")
    assert (
        "#SBATCH --partition=cpu" in sbatch
        and "#SBATCH --time=60" in sbatch
        and "gpus-per-node" not in sbatch
    )
    # A bad command-line parameter is refused before any executor is made.
    with pytest.raises(StudyError, match=r"--slurm\.gpus: unknown SLURM parameter"):
        runner.stage_executors(tmp_path, "slurm", 4, study, {"gpus": 2})


def test_run_study_submits_each_stage_with_its_owner_arms_parameters(
    slurm_spec, tmp_path, monkeypatch, fake_slurm
):
    """``run_study --launcher slurm`` end to end, with submission faked: every stage is submitted once, as its
    owner (the first arm in spec order that needs it), with that arm's merged SLURM parameters."""
    submitted = {}

    class DoneJob:
        job_id = "1"

        def __init__(self, state):
            self.state = state

        def done(self):
            return True

        def result(self):
            return self.state

    def submit(self, fn, spec_path, out, task, *args):
        submitted[task.folder] = dict(self._executor.parameters)
        runs.mark_done(tmp_path / "out" / task.owner, {"seconds": 0.0})
        return DoneJob({"state": "done"})

    monkeypatch.setattr(submitit.AutoExecutor, "submit", submit)
    result = runner.run_study(
        slurm_spec,
        out=tmp_path / "out",
        launcher="slurm",
        jobs=2,
        slurm={"timeout_min": 90},
        check=False,
        report=False,
    )
    assert result["failed"] == 0 and {r["state"] for r in result["status"]} == {"done"}
    owners = [t for t in runner.plan(load_study(slurm_spec)) if not t.shared]
    assert sorted(submitted) == sorted(
        t.folder for t in owners
    )  # shared stages: submitted once, by their owner
    # p30 shares p00's tokenizer and reconstruction: they run with p00's parameters (the first arm needing them).
    assert "p30/seed_0/tokenizer" not in submitted and submitted["p00/seed_0/tokenizer"]["partition"] == "cpu"
    assert submitted["p30/seed_0/generator"]["partition"] == "gpu"
    assert submitted["p30/seed_1/score"]["gpus_per_node"] == 1
    assert "gpus_per_node" not in submitted["p00/seed_1/samples"]
    assert {p["time"] for p in submitted.values()} == {90}  # the command line over the spec's and the arm's


def test_run_study_refuses_an_unknown_slurm_parameter_before_anything_runs(slurm_spec, tmp_path):
    with pytest.raises(StudyError, match=r"^--slurm\.partiton: unknown SLURM parameter"):
        runner.run_study(
            slurm_spec, out=tmp_path / "out", launcher="slurm", slurm={"partiton": "gpu"}, check=False
        )
    assert not (tmp_path / "out").exists()


def test_check_lists_each_arms_slurm_parameters_and_who_runs_a_shared_stage(slurm_spec, capsys):
    from infinity_lit.cli import run

    run(["study", "check", str(slurm_spec), "--deltas", "false", "--slurm", "{account: lab}"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("spec OK")
    assert (
        "slurm: p00: account=lab, additional_parameters={'constraint': 'a100'}, mem_gb=16, partition=cpu, "
        "timeout_min=60" in lines
    )
    assert any(line.startswith("slurm: p30: account=lab,") and "partition=gpu" in line for line in lines)
    assert "slurm: the tokenizer stage p00 shares with p30 runs with p00's parameters" in lines
    with pytest.raises(SystemExit) as info:
        run(["study", "check", str(slurm_spec), "--deltas", "false", "--slurm", "{partiton: gpu}"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: --slurm.partiton: unknown SLURM parameter")
