"""A finished stage is reused only while its inputs (by content) are unchanged; otherwise it reruns and the
earlier run is set aside, never deleted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infinity_lit import runs
from infinity_lit.studies import stages


@pytest.fixture()
def fake_fit(monkeypatch):
    """``stages.fit`` replaced by one that records its calls and writes a checkpoint + done marker."""
    calls: list[dict] = []

    def fit(model, out, **kwargs):
        calls.append({"model": model, **kwargs})
        last = runs.last_checkpoint(out / model / runs.STAGE_RUN)
        last.parent.mkdir(parents=True, exist_ok=True)
        last.write_bytes(f"weights after call {len(calls)}".encode())
        runs.mark_done(out / model, {"checkpoint": str(last)})
        return last

    monkeypatch.setattr(stages, "fit", fit)
    return calls


def _shards(folder: Path, payload: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-000000.tar").write_bytes(payload)
    (folder / "val-000000.tar").write_bytes(payload)
    manifest = {
        "counts": {"train": 1, "val": 1},
        "splits": {
            s: {"count": 1, "shards": [{"name": f"{s}-000000.tar", "count": 1}]} for s in ("train", "val")
        },
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_content_of_names_files_and_shards_by_content(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("x: 1\n")
    b = tmp_path / "elsewhere" / "b.yaml"
    b.parent.mkdir()
    b.write_text("x: 1\n")
    assert stages.content_of(a) == stages.content_of(b) and stages.content_of(a).startswith("sha256:")
    b.write_text("x: 2\n")
    assert stages.content_of(a) != stages.content_of(b)
    one, two = _shards(tmp_path / "d1", b"tar"), _shards(tmp_path / "d2", b"tar")
    assert stages.content_of(one) == stages.content_of(two) and stages.content_of(one).startswith("shards-")
    assert stages.content_of(_shards(tmp_path / "d3", b"other")) != stages.content_of(one)
    assert stages.content_of("--model.x") == "--model.x"


def test_a_stage_is_reused_only_while_its_inputs_are_unchanged(tmp_path, fake_fit, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("trainer: {max_steps: 10}\n")
    data = _shards(tmp_path / "data", b"first")
    out = tmp_path / "out"
    args = {"recipe": recipe, "data_dir": data, "resolution": 64, "max_steps": 5}

    first = stages.fit_once("tokenizer", out, **args)
    assert len(fake_fit) == 1
    assert stages.fit_once("tokenizer", out, **args) == first and len(fake_fit) == 1  # unchanged: reused
    assert "tokenizer: done" in capsys.readouterr().out

    stages.fit_once("tokenizer", out, **{**args, "max_steps": 6})  # another budget
    assert len(fake_fit) == 2
    assert "max_steps changed; rerunning" in capsys.readouterr().out
    assert (
        out / "tokenizer.stale-1" / "run" / "checkpoints" / "last.ckpt"
    ).read_bytes() == b"weights after call 1"

    _shards(data, b"second")  # same folder, other samples
    stages.fit_once("tokenizer", out, **{**args, "max_steps": 6})
    assert len(fake_fit) == 3 and "data changed" in capsys.readouterr().out

    recipe.write_text("trainer: {max_steps: 20}\n")  # the recipe file edited in place
    stages.fit_once("tokenizer", out, **{**args, "max_steps": 6})
    assert len(fake_fit) == 4 and "configs changed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "tokenizer",
        "tokenizer.stale-1",
        "tokenizer.stale-2",
        "tokenizer.stale-3",
    ]


def test_a_generator_reruns_when_its_tokenizer_checkpoint_changes(tmp_path, fake_fit):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")
    data = _shards(tmp_path / "data", b"d")
    tok = tmp_path / "tok.ckpt"
    tok.write_bytes(b"tokenizer A")
    args = {
        "recipe": recipe,
        "data_dir": data,
        "resolution": 64,
        "overrides": ["--model.tokenizer_checkpoint", str(tok)],
    }
    stages.fit_once("generator", tmp_path / "out", **args)
    stages.fit_once("generator", tmp_path / "out", **args)
    assert len(fake_fit) == 1
    tok.write_bytes(b"tokenizer B")  # retrained in place
    stages.fit_once("generator", tmp_path / "out", **args)
    assert len(fake_fit) == 2


def test_an_interrupted_stage_with_the_same_inputs_resumes_in_place(tmp_path, fake_fit):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")
    args = {"recipe": recipe, "data_dir": _shards(tmp_path / "data", b"d"), "resolution": 64}
    out = tmp_path / "out"
    (out / "tokenizer").mkdir(parents=True)
    identity = stages.fit_identity("tokenizer", **args)
    (out / "tokenizer" / stages.IDENTITY).write_text(json.dumps(identity))  # started, never finished
    stages.fit_once("tokenizer", out, **args)
    assert len(fake_fit) == 1 and not (out / "tokenizer.stale-1").exists()
    assert runs.read_done(out / "tokenizer")["identity"] == identity


def test_a_stage_reruns_when_the_machines_default_precision_differs(tmp_path, fake_fit, monkeypatch):
    """A recipe that names no precision trains in the machine's fast one (bf16-mixed with AMX or CUDA, else
    32-true): a finished stage is not reused where that default differs, and is where a config pins it."""
    from infinity_lit import precision

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("trainer: {max_steps: 3}\n")
    args = {"recipe": recipe, "data_dir": _shards(tmp_path / "data", b"d"), "resolution": 64}
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device: False)
    assert stages.fit_identity("tokenizer", **args)["precision"] == "32-true"
    stages.fit_once("tokenizer", tmp_path / "out", **args)
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device: True)
    assert stages.fit_identity("tokenizer", **args)["precision"] == "bf16-mixed"
    stages.fit_once("tokenizer", tmp_path / "out", **args)
    assert len(fake_fit) == 2 and (tmp_path / "out" / "tokenizer.stale-1").is_dir()
    # Pinned by a stacked config, or on the command line: the same identity on either machine.
    pinned = tmp_path / "pin.yaml"
    pinned.write_text("trainer: {precision: 32-true}\n")
    for extra in ({"configs": [pinned]}, {"overrides": ["--trainer.precision=32-true"]}):
        ids = []
        for fast in (False, True):
            monkeypatch.setattr(precision, "bf16_is_fast", lambda device, fast=fast: fast)
            ids.append(stages.fit_identity("tokenizer", **args, **extra))
        assert ids[0] == ids[1] and ids[0]["precision"] == "32-true", extra
