"""Study specs, the runner (shared stages, failures, resume, the submitit path) and the study CLI."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import TINY_TOKENIZER as TINY_ARCHITECTURE
from conftest import TINY_TRANSFORMER

from infinity_lit.studies.runner import STAGES, plan, run_study, seed_major, status
from infinity_lit.studies.spec import StudyError, check_deltas, load_study, merge, stacked_config, stage_key

# A tokenizer and a generator small enough to fit in seconds on 32² shards.
TINY_TOKENIZER = {
    "seed_everything": 0,
    "trainer": {
        "max_steps": 2,
        "val_check_interval": 2,
        "check_val_every_n_epoch": None,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    },
    "model": {
        "tokenizer": TINY_ARCHITECTURE,
        "gan_weight": 0.0,
        "perceptual_weight": 0.0,
        "num_log_images": 0,
    },
    "data": {
        "class_path": "infinity_lit.data.ShardDataModule",
        "init_args": {"data_dir": "unset", "resolution": 32, "batch_size": 4, "num_workers": 0},
    },
}
TINY_GENERATOR = {
    "seed_everything": 0,
    "trainer": {**TINY_TOKENIZER["trainer"], "max_steps": 2},
    "model": {
        "tokenizer_checkpoint": "unset",
        "transformer": TINY_TRANSFORMER,
        "text_max_length": 8,
        "val_prompts": [],
        "optimizer": {"warmup_steps": 1, "decay_steps": 10},
    },
    "data": TINY_TOKENIZER["data"],
}


@pytest.fixture(scope="module")
def recipes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("recipes")
    (folder / "tok.yaml").write_text(yaml.safe_dump(TINY_TOKENIZER))
    (folder / "gen.yaml").write_text(yaml.safe_dump(TINY_GENERATOR))
    (folder / "p30.yaml").write_text(yaml.safe_dump({"model": {"max_flip_prob": 0.3}}))
    return folder


def write_spec(folder: Path, shards: Path, **changes) -> Path:
    spec = {
        "name": "tiny_bsc",
        "variable": "max_flip_prob",
        "baseline": "p00",
        "seeds": [0, 1],
        "data": {"dir": str(shards), "resolution": 32},
        "stages": {"tokenizer": {"recipe": "tok.yaml"}, "generator": {"recipe": "gen.yaml"}},
        "evaluation": {"num_images": 4, "cfg": 2.0},
        "arms": [
            {"name": "p00", "value": 0.0, "generator": {"model": {"max_flip_prob": 0.0}}},
            {"name": "p30", "value": 0.3, "generator": "p30.yaml"},
        ],
    }
    spec.update(changes)
    path = folder / f"spec_{len(list(folder.glob('spec_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------ the spec


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arm": []}, r"spec_\d+\.yaml: arm: unknown key"),
        ({"seeds": []}, r"seeds: must be a non-empty list"),
        ({"baseline": "p99"}, r"baseline: 'p99' is not an arm"),
        (
            {"arms": [{"name": "a", "value": 0}, {"name": "a", "value": 1}]},
            r"arms\[1\]\.name: duplicate arm name 'a'",
        ),
        (
            {"arms": [{"name": "p00", "value": 0, "evaluation": {"cfg": 1.0}}]},
            r"arms\[p00\]\.evaluation: arms may not",
        ),
        # A missing delta file: the arm by its name (not its index), the file as looked for beside the spec.
        (
            {
                "arms": [
                    {"name": "p00", "value": 0},
                    {"name": "p30", "value": 0.3, "generator": "missing.yaml"},
                ]
            },
            r"spec_\d+\.yaml: arms\[p30\]\.generator: delta file not found: missing\.yaml: "
            r"no file missing\.yaml beside the spec, and no shipped recipe missing\.yaml",
        ),
        (
            {
                "arms": [
                    {"name": "p00", "value": 0},
                    {"name": "p30", "value": 0.3, "generator": ["p30.yaml", "deltas/./nope.yaml"]},
                ]
            },
            r"arms\[p30\]\.generator\[1\]: delta file not found: deltas/\./nope\.yaml: "
            r"no file deltas/nope\.yaml beside the spec",
        ),
        (
            {"arms": [{"name": "p00", "value": 0, "generator": "../elsewhere/nope.yaml"}]},
            r"arms\[p00\]\.generator: .*no file \.\./elsewhere/nope\.yaml beside the spec, "
            r"and it names no shipped recipe",
        ),
        ({"arms": [{"name": "p00", "value": 0, "genrator": {}}]}, r"arms\[p00\]\.genrator: unknown key"),
        ({"arms": [{"value": 0}]}, r"arms\[0\]\.name: missing"),
        # SLURM parameters: checked against submitit's names and types, study-wide and per arm.
        (
            {"slurm": {"partiton": "gpu"}},
            r"spec_\d+\.yaml: slurm\.partiton: unknown SLURM parameter \(did you mean 'partition'\? "
            r"submitit takes: .*gpus_per_node",
        ),
        (
            {"arms": [{"name": "p00", "value": 0, "slurm": {"gpus_per_nod": 1}}]},
            r"spec_\d+\.yaml: arms\[p00\]\.slurm\.gpus_per_nod: unknown SLURM parameter",
        ),
        ({"slurm": {"timeout_min": "10:00:00"}}, r"slurm\.timeout_min: expected int, got '10:00:00'"),
        ({"slurm": {"gpus_per_node": True}}, r"slurm\.gpus_per_node: expected int, got True"),
        ({"slurm": {"partition": ["a", "b"]}}, r"slurm\.partition: expected a single value"),
        ({"slurm": ["partition"]}, r"slurm: expected a mapping of SLURM parameters"),
        (
            {"slurm": {"partition": "a", "slurm_partition": "b"}},
            r"slurm\.slurm_partition: 'partition' is given twice",
        ),
        ({"evaluation": {"num_imgs": 3}}, r"evaluation\.num_imgs: unknown key"),
        ({"stages": {"tokenizer": {"recipe": "tok.yaml"}}}, r"stages\.generator: missing"),
    ],
)
def test_spec_errors_name_the_file_and_the_key(recipes, openmoji_shards, changes, message):
    spec = write_spec(recipes, openmoji_shards, **changes)
    with pytest.raises(StudyError, match=message) as info:
        load_study(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("arm", "changes", "message"),
    [
        (  # an unknown key
            {"generator": {"model": {"max_flip_probability": 0.1}}},
            {},
            "arms[p30].generator: does not parse: model.max_flip_probability = 0.1 "
            "(set by this arm's generator delta): model has no option 'max_flip_probability'",
        ),
        (  # a wrong type inside a class_path (the parser also tried None: not reported)
            {"tokenizer": {"model": {"tokenizer": {"codebook_dim": "eight"}}}},
            {},
            'arms[p30].tokenizer: does not parse: model.tokenizer.codebook_dim = "eight" '
            "(set by this arm's tokenizer delta): expected int, got eight "
            "(in infinity_lit.tokenizer.TokenizerConfig)",
        ),
        (  # the study's own overrides are at fault, not the arm that first reads them
            {},
            {
                "stages": {
                    "tokenizer": {"recipe": "tok.yaml"},
                    "generator": {
                        "recipe": "gen.yaml",
                        "overrides": {"data": {"init_args": {"batch_size": "x"}}},
                    },
                }
            },
            'arms[p00].generator: does not parse: data.init_args.batch_size = "x" '
            "(set by stages.generator.overrides): expected int, got x (in infinity_lit.data.ShardDataModule)",
        ),
    ],
)
def test_a_delta_that_does_not_parse_against_its_stage(recipes, openmoji_shards, arm, changes, message):
    spec = write_spec(
        recipes,
        openmoji_shards,
        seeds=[0],
        arms=[{"name": "p00", "value": 0.0}, {"name": "p30", "value": 0.3, **arm}],
        **changes,
    )
    study = load_study(spec)  # the keys of a delta are the stage's business: checked by check_deltas
    with pytest.raises(StudyError) as info:
        check_deltas(study)
    text = str(info.value)
    # One line: the file, the arm by name, the stage, the key, its value and who set it; no usage text.
    assert text == f"{spec}: {message}"
    assert "usage:" not in text and "tip:" not in text and "--help" not in text and "\n" not in text


def test_the_parser_error_is_the_key_and_the_reason_without_the_usage_text():
    from infinity_lit.studies.spec import parser_error

    usage = (
        "usage: infinity-lit [-c CONFIG] [--print_config[=flags]]\n       [--trainer.max_steps MAX_STEPS]\n"
    )
    tip = "tip: For details of accepted options run: infinity-lit fit --help\n"
    assert parser_error(usage + tip + "error: Option 'modle.x' is not accepted\n") == (
        "modle.x",
        "no such option",
    )
    assert parser_error(
        usage
        + tip
        + "error: Parser key \"trainer.max_steps\":\n  Expected a <class 'int'>. Got value: many\n"
    ) == (
        "trainer.max_steps",
        "expected int, got many",
    )
    # Without an error line, what is left once the usage text is dropped.
    assert parser_error(usage + "something else went wrong\n") == (None, "something else went wrong")


def test_the_resolved_spec_reads_back_to_an_equal_study(recipes, openmoji_shards, tmp_path):
    from infinity_lit.studies.spec import resolved_spec

    arms = [
        {"name": "p00", "value": 0.0, "generator": {"model": {"max_flip_prob": 0.0}}},
        {"name": "p30", "value": 0.3, "generator": "p30.yaml", "slurm": {"slurm_partition": "gpu"}},
    ]
    study = load_study(write_spec(recipes, openmoji_shards, arms=arms, slurm={"timeout_min": 60}))
    assert study.slurm == {"timeout_min": 60} and study.arm("p30").slurm == {"partition": "gpu"}
    copy = tmp_path / "study.yaml"  # elsewhere: no relative recipe or delta file can resolve from here
    copy.write_text(yaml.safe_dump(resolved_spec(study)))
    again = load_study(copy)
    assert [(a.name, a.value, a.deltas) for a in again.arms] == [
        (a.name, a.value, a.deltas) for a in study.arms
    ]
    assert (
        again.stages == study.stages and again.evaluation == study.evaluation and again.seeds == study.seeds
    )
    assert again.slurm == study.slurm and [a.slurm for a in again.arms] == [a.slurm for a in study.arms]
    assert [stage_key(again, a, 0, "generator") for a in again.arms] == [
        stage_key(study, a, 0, "generator") for a in study.arms
    ]


def test_equal_stages_share_a_key_and_different_ones_do_not(recipes, openmoji_shards):
    study = load_study(write_spec(recipes, openmoji_shards))
    p00, p30 = study.arms
    assert stage_key(study, p00, 0, "tokenizer") == stage_key(study, p30, 0, "tokenizer")
    assert stage_key(study, p00, 0, "tokenizer") != stage_key(study, p00, 1, "tokenizer")
    tok = stage_key(study, p00, 0, "tokenizer")
    assert stage_key(study, p00, 0, "generator", [tok]) != stage_key(study, p30, 0, "generator", [tok])
    tasks = plan(study)
    assert len(tasks) == len(STAGES) * 2 * 2
    shared = {(t.arm, t.seed, t.stage) for t in tasks if t.shared}
    # p30 shares p00's tokenizer and its reconstruction metrics, seed by seed; nothing else is shared.
    assert shared == {("p30", s, stage) for s in (0, 1) for stage in ("tokenizer", "recon")}


def test_removing_an_arm_or_editing_comments_keeps_the_other_stages_keys(recipes, openmoji_shards):
    """A study cut down to fewer arms, or a spec whose comments changed, resumes the stages it has: an arm's
    stage keys depend on its own configuration, seed, data and upstream stages, not on the other arms."""

    def keys(path: Path) -> dict[tuple[str, int, str], str]:
        return {(t.arm, t.seed, t.stage): t.key for t in plan(load_study(path))}

    both = keys(write_spec(recipes, openmoji_shards))
    p30 = {k: v for k, v in both.items() if k[0] == "p30"}
    assert (
        keys(
            write_spec(
                recipes,
                openmoji_shards,
                arms=[{"name": "p30", "value": 0.3, "generator": "p30.yaml"}],
                baseline="p30",
            )
        )
        == p30
    )
    commented = write_spec(recipes, openmoji_shards)
    commented.write_text(
        "# a note on the study\n"
        + commented.read_text().replace("\nseeds:", "  # the arms' seeds\nseeds:", 1)
    )
    assert keys(commented) == both
    # …while a changed value of an arm changes that arm's generator keys and no other.
    changed = keys(
        write_spec(
            recipes,
            openmoji_shards,
            arms=[
                {"name": "p00", "value": 0.0, "generator": {"model": {"max_flip_prob": 0.1}}},
                {"name": "p30", "value": 0.3, "generator": "p30.yaml"},
            ],
        )
    )
    assert {k for k in both if changed[k] != both[k]} == {
        ("p00", s, st) for s in (0, 1) for st in ("generator", "samples", "score")
    }


def test_a_study_runs_seed_by_seed_and_stage_by_stage_within_a_seed(recipes, openmoji_shards):
    study = load_study(write_spec(recipes, openmoji_shards, seeds=[1, 0]))
    order = [(t.seed, t.stage, t.arm) for t in seed_major(list(reversed(plan(study))), study.seeds)]
    # The spec's first seed (1) comes first whatever order the tasks come in; stages in pipeline order.
    expected = [(seed, stage, arm) for seed in (1, 0) for stage in STAGES for arm in ("p30", "p00")]
    assert order == expected  # arms in the order given (reversed here): the sort keeps it


def test_a_training_stage_key_says_the_machines_default_precision(recipes, openmoji_shards, monkeypatch):
    """A recipe that names no precision trains in the machine's fast one: the key differs between a machine
    where that is bf16-mixed and one where it is 32-true, and not where the spec pins it."""
    from infinity_lit import precision

    study = load_study(write_spec(recipes, openmoji_shards))
    arm = study.arms[0]
    keys = {}
    for fast in (False, True):
        monkeypatch.setattr(precision, "bf16_is_fast", lambda device, fast=fast: fast)
        keys[fast] = (stage_key(study, arm, 0, "tokenizer"), stage_key(study, arm, 0, "recon", ["x"]))
    assert "precision" not in stacked_config(study, arm, "tokenizer").get("trainer", {})
    assert keys[False][0] != keys[True][0]
    assert keys[False][1] == keys[True][1]  # an evaluation stage's key follows its upstream keys only
    pinned = replace(
        study,
        stages={
            **study.stages,
            "tokenizer": replace(
                study.stages["tokenizer"],
                overrides=merge(study.stages["tokenizer"].overrides, {"trainer": {"precision": "32-true"}}),
            ),
        },
    )
    pinned_keys = []
    for fast in (False, True):
        monkeypatch.setattr(precision, "bf16_is_fast", lambda device, fast=fast: fast)
        pinned_keys.append(stage_key(pinned, pinned.arms[0], 0, "tokenizer"))
    assert pinned_keys[0] == pinned_keys[1]


def test_shards_changed_under_the_same_path_change_every_key(recipes, openmoji_shards, tmp_path):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(openmoji_shards, shards)
    study = load_study(write_spec(recipes, shards))
    before = [t.key for t in plan(study)]
    assert [t.key for t in plan(study)] == before  # the same bytes, the same keys
    # One shard rewritten with other samples (a rebuild into the same folder): every stage is new.
    (shards / "val-000000.tar").write_bytes((shards / "val-000001.tar").read_bytes())
    after = [t.key for t in plan(study)]
    assert all(a != b for a, b in zip(before, after, strict=True))


# ------------------------------------------------------------------------------------------ the runner


@pytest.fixture(scope="module")
def finished_study(recipes, openmoji_shards, tmp_path_factory, inception_weights):
    """A tiny study (3 arms × 2 seeds, the third arm failing) run once with the local launcher."""
    arms = [
        {"name": "p00", "value": 0.0, "generator": {"model": {"max_flip_prob": 0.0}}},
        {"name": "p30", "value": 0.3, "generator": "p30.yaml"},
        # Not a multiple of 0.01: the generator refuses it when the stage builds the module.
        {"name": "broken", "value": 0.005, "generator": {"model": {"max_flip_prob": 0.005}}},
    ]
    spec = write_spec(
        recipes,
        openmoji_shards,
        arms=arms,
        evaluation={"num_images": 4, "inception_weights": str(inception_weights)},
    )
    out = tmp_path_factory.mktemp("study")
    env = pytest.MonkeyPatch()
    env.setenv("INFINITY_LIT_CACHE", str(tmp_path_factory.mktemp("cache")))  # Inception feature cache
    result = run_study(spec, out=out)
    yield spec, out, result
    env.undo()


def test_study_runs_shares_and_reports(finished_study):
    _, out, result = finished_study
    rows = {(r["arm"], r["seed"]): r for r in result["status"]}
    assert {k: r["state"] for k, r in rows.items()} == {
        ("p00", 0): "done",
        ("p00", 1): "done",
        ("p30", 0): "done",
        ("p30", 1): "done",
        ("broken", 0): "failed",
        ("broken", 1): "failed",
    }
    assert result["failed"] == 2
    assert "max_flip_prob" in rows[("broken", 0)]["error"] and rows[("broken", 0)]["error"].startswith(
        "generator"
    )
    # The shared tokenizer ran once: the other arms' folders link to p00's, and only one run folder exists.
    for arm in ("p30", "broken"):
        link = out / arm / "seed_0" / "tokenizer"
        assert link.is_symlink() and link.resolve() == (out / "p00" / "seed_0" / "tokenizer").resolve()
    assert len(list(out.glob("*/seed_0/tokenizer/run/checkpoints/last.ckpt"))) == 3  # 1 real + 2 links
    assert len({p.resolve() for p in out.glob("*/seed_0/tokenizer/run/checkpoints/last.ckpt")}) == 1
    # Each arm's generator was trained with its own flip probability.
    for arm, p in (("p00", 0.0), ("p30", 0.3)):
        done = json.loads((out / arm / "seed_1" / "generator" / "DONE.json").read_text())
        assert done["global_step"] == 2
        config = yaml.safe_load((out / arm / "seed_1" / "generator" / "run" / "config.yaml").read_text())
        assert config["model"]["max_flip_prob"] == p and config["seed_everything"] == 1
    assert len(list((out / "p30" / "seed_1" / "samples").glob("*.png"))) == 4
    # Seed by seed: every stage of seed 0 ended before any of seed 1 (DONE.json written as a stage ends).
    ended = {
        seed: [
            p.stat().st_mtime_ns for p in out.glob(f"*/seed_{seed}/*/DONE.json") if not p.parent.is_symlink()
        ]
        for seed in (0, 1)
    }
    assert len(ended[0]) == len(ended[1]) == 8 and max(ended[0]) < min(
        ended[1]
    )  # 5 + 3 stages of p30 per seed
    # The comparison: per-arm statistics over two seeds with intervals, the failed arm named with its error.
    html_path, md_path = map(Path, result["report"])
    page, md = html_path.read_text(), md_path.read_text()
    assert "p30" in page and "broken/seed 0" in page and "max_flip_prob" in page
    assert "data:image/png;base64," in page and "(n=2)" in md and "[" in md
    assert "± 0 " not in md and "± 0.0 " not in md
    # p30 reads p00's tokenizer seed by seed: its PSNR is "shared", not put through a t-test.
    psnr_row = next(line for line in md.splitlines() if line.startswith("| tokenizer PSNR (dB) |"))
    effects = md[md.index("## Effects") :]
    psnr_effect = next(line for line in effects.splitlines() if line.startswith("| tokenizer PSNR (dB) |"))
    assert "(n=2)" in psnr_row and "shared with the baseline" in psnr_effect and "p =" not in psnr_effect


def test_study_fingerprints_are_contents_and_hparams_are_one_session_per_run(finished_study):
    import hashlib

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from infinity_lit.evaluation.tensorboard import read_scalars
    from infinity_lit.studies.runner import collect_records

    _, out, _ = finished_study
    records = [r for r in collect_records(out) if r["status"] == "done"]
    assert len(records) == 4
    fingerprint = records[0]["fingerprint"]
    weights = Path(
        json.loads((out / "p00" / "seed_0" / "score" / "metrics.json").read_text())["weights"]["inception"]
    )
    assert fingerprint["inception_weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert len(fingerprint["reference_sha256"]) == 64 and fingerprint["generated_sizes"] == ["32x32"]
    assert fingerprint["generated_format"] == "PNG files" and "path" not in fingerprint["reference"]
    # Every (arm, seed) scored against the same reference: one hash, other checkpoints.
    assert len({r["fingerprint"]["reference_sha256"] for r in records}) == 1
    assert len({r["fingerprint"]["checkpoint"] for r in records}) == 4
    # Paths under the study folder read relative to it, in the page and in records.json.
    p30 = next(r for r in records if (r["arm"], r["seed"]) == ("p30", 1))
    assert p30["fingerprint"]["checkpoint"] == "p30/seed_1/generator/run/checkpoints/last.ckpt"
    saved = (out / "report" / "records.json").read_text()
    assert str(out) not in saved and str(out.resolve()) not in saved
    assert "p30/seed_1/samples" in saved
    assert records[0]["metrics"]["tokens_per_image"] == sum(h * w for h, w in ((1, 1), (2, 2), (4, 4)))
    # TensorBoard: one HParams session per finished (arm, seed), the studied variable as a number.
    run = out / "p30" / "seed_1" / "hparams"
    acc = EventAccumulator(str(run))
    acc.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    )
    hp = start.session_start_info.hparams
    assert sorted(hp) == ["arm", "max_flip_prob", "seed"]
    assert hp["max_flip_prob"].number_value == pytest.approx(0.3) and hp["arm"].string_value == "p30"
    fid = next(r["metrics"]["fid"] for r in records if (r["arm"], r["seed"]) == ("p30", 1))
    assert read_scalars(run)["study/fid"] == [(0, pytest.approx(fid))]
    assert not (out / "broken" / "seed_0" / "hparams").exists()


def test_tensorboard_holds_one_hparams_session_per_arm_and_seed(finished_study):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    _, out, result = finished_study
    sessions = []
    for folder, _, files in os.walk(out):  # links not followed: a shared stage's run counts once
        for name in files:
            if name.startswith("events.out.tfevents"):
                for event in EventFileLoader(os.path.join(folder, name)).Load():
                    if any(v.tag == "_hparams_/session_start_info" for v in event.summary.value):
                        sessions.append(Path(folder).relative_to(out).as_posix())
    done = sorted(f"{r['arm']}/seed_{r['seed']}/hparams" for r in result["status"] if r["state"] == "done")
    assert len(done) == 4 and sorted(sessions) == done
    # The fits, run without a session of their own, still log their curves (the final metrics come from them).
    config = yaml.safe_load((out / "p00" / "seed_0" / "generator" / "run" / "config.yaml").read_text())
    assert config["hparams_session"] is False
    assert list((out / "p00" / "seed_0" / "generator" / "run").glob("events.out.tfevents*"))


def test_rerun_skips_finished_stages_and_retries_failed_ones(finished_study):
    spec, out, _ = finished_study
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("p*/seed_*/*/DONE.json")}
    failed_before = (out / "broken" / "seed_0" / "generator" / "FAILED.json").stat().st_mtime_ns
    again = run_study(spec, out=out, report=False)
    assert {p: p.stat().st_mtime_ns for p in out.glob("p*/seed_*/*/DONE.json")} == stamps
    assert (out / "broken" / "seed_0" / "generator" / "FAILED.json").stat().st_mtime_ns > failed_before
    assert again["failed"] == 2


def test_the_submitit_local_executor_runs_a_stage(finished_study):
    spec, out, _ = finished_study
    # Forget one score: it is to do again, and it runs as a submitit job in its own process.
    (out / "p30" / "seed_0" / "score" / "DONE.json").unlink()
    result = run_study(spec, out=out, launcher="submitit-local", report=False)
    assert (out / "p30" / "seed_0" / "score" / "DONE.json").is_file()
    # One job per stage to run: that score, and the failing arm's generator for 2 seeds (retried); its
    # samples and scores are marked failed without a job, their upstream stage having failed.
    logs = list((out / "_submitit").rglob("*_log.out"))
    assert len(logs) == 1 + 2, logs
    assert {(r["arm"], r["seed"]) for r in result["status"] if r["state"] == "done"} == {
        (a, s) for a in ("p00", "p30") for s in (0, 1)
    }


def test_study_cli_status_report_and_exit_code(finished_study, capsys):
    from infinity_lit.cli import run

    spec, out, _ = finished_study
    rows = run(["study", "status", str(out)])
    printed = capsys.readouterr().out
    assert "broken" in printed and "failed" in printed and "error: generator" in printed
    assert rows == status(out)
    run(["study", "report", str(out)])
    assert "comparison.html" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        run(["study", "run", str(spec), "--out", str(out)])
    assert info.value.code == 1
    assert os.path.isfile(out / "report" / "comparison.html")


def test_the_parallel_launcher_runs_two_stages_at_once_each_on_its_own_device(finished_study, monkeypatch):
    spec, out, _ = finished_study
    # The spec without its failing arm (whose generators would be retried): two scores to redo, nothing else.
    healthy = spec.with_name("healthy.yaml")
    data = yaml.safe_load(spec.read_text())
    data["arms"] = [a for a in data["arms"] if a["name"] != "broken"]
    healthy.write_text(yaml.safe_dump(data))
    for arm, seed in (("p00", 0), ("p30", 1)):
        (out / arm / f"seed_{seed}" / "score" / "DONE.json").unlink()
    before = set((out / "_submitit").rglob("*_log.out"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # two devices to hand out (the stages run on the CPU)
    result = run_study(healthy, out=out, launcher="parallel", jobs=2, threads=1, report=False, check=False)
    assert result["failed"] == 0
    for arm, seed in (("p00", 0), ("p30", 1)):
        assert (out / arm / f"seed_{seed}" / "score" / "DONE.json").is_file()
    logs = [p.read_text() for p in set((out / "_submitit").rglob("*_log.out")) - before]
    devices = [line.rsplit(" ", 1)[1] for text in logs for line in text.splitlines() if "CUDA device" in line]
    # One job per score, both in flight at once (else the second would have reused slot 0's device).
    assert len(logs) == 2 and sorted(devices) == ["3", "5"], logs


def test_an_edited_spec_reruns_the_stages_it_changes(finished_study, capsys):
    spec, out, _ = finished_study
    # Same spec but p30's generator now flips at 0.2: its generator, samples and score are recomputed (the
    # old ones are kept aside), everything else is reused.
    edited = spec.with_name("edited.yaml")
    data = yaml.safe_load(spec.read_text())
    data["arms"] = [a for a in data["arms"] if a["name"] != "broken"]
    data["arms"][1]["generator"] = {"model": {"max_flip_prob": 0.2}}
    edited.write_text(yaml.safe_dump(data))
    stamp = (out / "p00" / "seed_0" / "generator" / "DONE.json").stat().st_mtime_ns
    result = run_study(edited, out=out, report=False)
    assert result["failed"] == 0
    assert (out / "p00" / "seed_0" / "generator" / "DONE.json").stat().st_mtime_ns == stamp
    config = yaml.safe_load((out / "p30" / "seed_0" / "generator" / "run" / "config.yaml").read_text())
    assert config["model"]["max_flip_prob"] == 0.2
    assert list((out / "p30" / "seed_0").glob("generator.stale-*"))


def test_a_bad_spec_is_one_line_from_the_cli(recipes, openmoji_shards, capsys):
    from infinity_lit.cli import run

    spec = write_spec(recipes, openmoji_shards, arms=[{"name": False, "value": 0}])
    with pytest.raises(SystemExit) as info:
        run(["study", "check", str(spec), "--deltas", "false"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "arms[0].name: must be a string" in err and "quote it" in err


def test_run_refuses_a_delta_that_does_not_parse_before_training_anything(
    recipes, openmoji_shards, tmp_path, capsys
):
    from infinity_lit.cli import run

    spec = write_spec(
        recipes,
        openmoji_shards,
        seeds=[0],
        arms=[
            {"name": "p00", "value": 0.0},
            {"name": "bad", "value": 0.1, "generator": {"model": {"max_flip_probability": 0.1}}},
        ],
    )
    out = tmp_path / "study"
    with pytest.raises(
        StudyError, match=r"arms\[bad\]\.generator: does not parse.*max_flip_probability"
    ) as info:
        run_study(spec, out=out)
    assert "\n" not in str(info.value)
    assert not out.exists()  # checked before the output folder, let alone a tokenizer, was made
    with pytest.raises(SystemExit) as exit_:
        run(["study", "run", str(spec), "--out", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "arms[bad].generator: does not parse" in err
    assert "usage:" not in err and "model.max_flip_probability = 0.1" in err
    assert not out.exists()


def test_a_stage_records_its_process_and_status_tells_a_killed_one(
    recipes, openmoji_shards, tmp_path, capsys
):
    import socket
    import subprocess
    import sys

    from infinity_lit import runs
    from infinity_lit.cli import run
    from infinity_lit.studies import runner

    spec = write_spec(recipes, openmoji_shards)
    study = load_study(spec)
    out = tmp_path / "study"
    tasks = plan(study)
    runner._prepare(study, out, tasks)
    tokenizer, recon = (
        next(t for t in tasks if (t.arm, t.seed, t.stage) == ("p00", 0, s)) for s in ("tokenizer", "recon")
    )

    # While a stage runs, its marker names the process (and host) running it; it is gone afterwards.
    seen = {}

    def reconstruction(*args, **kwargs):
        seen.update(json.loads((out / recon.owner / runner.RUNNING).read_text()))
        raise RuntimeError("stop here")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("infinity_lit.studies.stages.reconstruction", reconstruction)
        runs.mark_done(out / tokenizer.owner, {"seconds": 1.0})
        state = runner.execute(str(spec), str(out), recon, str(openmoji_shards))
    assert state["state"] == "failed" and "stop here" in state["error"]
    assert seen["pid"] == os.getpid() and seen["host"] == socket.gethostname() and seen["since"]
    assert not (out / recon.owner / runner.RUNNING).exists()

    # A stage stopped by a signal (Ctrl+C here) keeps its marker: once its process is gone, it is interrupted.
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("infinity_lit.studies.stages.reconstruction", interrupted)
        with pytest.raises(KeyboardInterrupt):
            runner.execute(str(spec), str(out), recon, str(openmoji_shards))
    assert json.loads((out / recon.owner / runner.RUNNING).read_text())["pid"] == os.getpid()
    assert runner.stage_state(out, recon)["state"] == "running"  # this process still runs
    (out / recon.owner / runner.RUNNING).unlink()

    # A study process that marked its stage and was then killed: "running" while it lives, "interrupted" after.
    # Its fit had logged steps 10, 20 and 30 of the 50 its saved config asks for: status says how far it got.
    (out / tokenizer.owner / "DONE.json").unlink()
    from torch.utils.tensorboard import SummaryWriter

    fit_run = out / tokenizer.owner / runs.STAGE_RUN
    with SummaryWriter(str(fit_run)) as writer:
        for step in (10, 20, 30):
            writer.add_scalar("train/loss", 1.0 / step, step)
        writer.add_scalar("val/loss", 0.5, 20)
    (fit_run / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_steps": 50}}))
    assert runner.fit_progress(fit_run) == (30, 50)
    code = (
        "import sys, time; from pathlib import Path; from infinity_lit.studies.runner import mark_running; "
        "mark_running(Path(sys.argv[1])); print('marked', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(out / tokenizer.owner)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "marked"
        state = runner.stage_state(out, tokenizer)
        assert state["state"] == "running" and state["pid"] == proc.pid
        assert {(r["arm"], r["seed"]): r["state"] for r in status(out, study)}[("p00", 0)] == "running"
        assert "tokenizer running at step 30 of 50\n" in runner.format_status(status(out, study))
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert runner.stage_state(out, tokenizer)["state"] == "interrupted"
    rows = run(["study", "status", str(out)])
    printed = capsys.readouterr().out
    states = {(r["arm"], r["seed"]): r["state"] for r in rows}
    assert states[("p00", 0)] == states[("p30", 0)] == "interrupted"  # p30 shares that tokenizer
    assert states[("p00", 1)] == "pending"
    assert "tokenizer interrupted at step 30 of 50 (re-run `study run` to resume)" in printed
    # An unbounded fit (max_steps -1) gives the step alone; a run with no logged step yet gives nothing.
    (fit_run / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_steps": -1}}))
    assert runner.fit_progress(fit_run) == (30, None)
    assert "tokenizer interrupted at step 30 (re-run" in runner.format_status(status(out, study))
    assert runner.fit_progress(out / "no-such-run") is None

    # A marker from another machine cannot be checked from here: it still reads "running".
    marker = out / tokenizer.owner / runner.RUNNING
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "host": "another-host.invalid"}))
    assert runner.stage_state(out, tokenizer)["state"] == "running"


def test_status_names_the_host_of_a_stage_running_elsewhere(recipes, openmoji_shards, tmp_path, capsys):
    """A RUNNING marker from another host cannot be checked from here: status says where, which pid and since
    when; a marker of this host whose process is gone still reads "interrupted", a live one "running"."""
    import subprocess
    import sys

    from infinity_lit.cli import run
    from infinity_lit.studies import runner

    spec = write_spec(recipes, openmoji_shards)
    study = load_study(spec)
    out = tmp_path / "study"
    tasks = plan(study)
    runner._prepare(study, out, tasks)
    task = {(t.arm, t.seed, t.stage): t for t in tasks}
    remote = {
        "since": "2025-03-01T10:00:00",
        "pid": 4242,
        "host": "node042.cluster.invalid",
        "process_start": "7",
    }
    (out / task[("p00", 0, "tokenizer")].owner / runner.RUNNING).write_text(json.dumps(remote))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process of this host that has ended
    dead = runner.mark_running(out / task[("p00", 1, "tokenizer")].owner)
    (out / task[("p00", 1, "tokenizer")].owner / runner.RUNNING).write_text(
        json.dumps({**dead, "pid": gone.pid, "process_start": None})
    )
    runner.mark_running(out / task[("p30", 1, "generator")].owner)  # this process: alive

    state = runner.stage_state(out, task[("p00", 0, "tokenizer")])
    assert state["state"] == "running" and state["checked"] is False and state["host"] == remote["host"]
    assert runner.stage_state(out, task[("p00", 1, "tokenizer")])["state"] == "interrupted"
    live = runner.stage_state(out, task[("p30", 1, "generator")])
    assert live["state"] == "running" and live["checked"] is True

    rows = run(["study", "status", str(out)])
    printed = capsys.readouterr().out
    states = {(r["arm"], r["seed"]): r["state"] for r in rows}
    assert states == {
        ("p00", 0): "running",
        ("p30", 0): "running",
        ("p00", 1): "interrupted",
        ("p30", 1): "interrupted",
    }
    line = "tokenizer running on node042.cluster.invalid (pid 4242, since 2025-03-01T10:00:00; cannot check from here)"
    assert printed.count(line) == 2  # p00's row and p30's, which shares that tokenizer
    assert printed.count("tokenizer interrupted (re-run `study run` to resume)") == 2
    assert "generator running on" not in printed  # checked here, alive: no note

    # An old marker that names no process (only a time) cannot be checked either, and says so.
    (out / task[("p00", 0, "tokenizer")].owner / runner.RUNNING).write_text("2025-03-01T09:00:00")
    text = runner.format_status(status(out, study))
    assert (
        "tokenizer running (since 2025-03-01T09:00:00; the marker names no process: cannot check from here)"
        in text
    )
