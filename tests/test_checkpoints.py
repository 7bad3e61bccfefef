"""``infinity_lit.checkpoints``: the one reader/writer of the checkpoint layout, and both loaders on it."""

from __future__ import annotations

import pickle
from pathlib import Path, PurePosixPath

import pytest
import torch

from infinity_lit import checkpoints
from infinity_lit.checkpoints import (
    GENERATOR,
    TOKENIZER,
    CheckpointError,
    load_file,
    read_checkpoint,
    write_checkpoint,
)
from infinity_lit.generator.checkpoint import load_generator
from infinity_lit.tokenizer import BitwiseTokenizer, load_tokenizer


def _tokenizer(config, seed: int) -> BitwiseTokenizer:
    torch.manual_seed(seed)
    return BitwiseTokenizer(config)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- reading: errors


def test_missing_file_and_run_folders(tmp_path, tiny_tokenizer_ckpt):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer checkpoint at .*'infinity-lit tokenizer fit'"):
        load_tokenizer(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match=r"no generator checkpoint at .*'infinity-lit generator fit'"):
        load_generator(tmp_path / "nope.ckpt")
    run = tmp_path / "runs" / "tokenizer" / "tiny"
    run.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"has no checkpoints/last\.ckpt"):
        load_tokenizer(run)
    # A run folder stands for its checkpoints/last.ckpt.
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(tiny_tokenizer_ckpt.read_bytes())
    assert read_checkpoint(run, TOKENIZER).path == run / "checkpoints" / "last.ckpt"
    assert _same(load_tokenizer(run).state_dict(), load_tokenizer(tiny_tokenizer_ckpt).state_dict())


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99], ids=["empty", "half", "tail_missing"])
def test_truncated_file_is_a_clear_error(tmp_path, tiny_tokenizer_ckpt, tiny_generator_ckpt, keep):
    for source, loader, kind in (
        (tiny_tokenizer_ckpt, load_tokenizer, "tokenizer"),
        (tiny_generator_ckpt, load_generator, "generator"),
    ):
        data = source.read_bytes()
        cut = tmp_path / f"{kind}.ckpt"
        cut.write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(CheckpointError, match=rf"{kind} checkpoint .* is truncated or corrupt .*re-run"):
            loader(cut)


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("not a checkpoint\n" * 50)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_tokenizer(path)
    with pytest.raises(ValueError):  # CheckpointError is a ValueError, as the loaders documented before
        load_file(path)
    # Bytes that torch's legacy (non-zip) reader trips over with a KeyError / IndexError.
    for i, junk in enumerate((b"e", b"\x80\x02K\x65.", b"PK")):
        other = tmp_path / f"junk{i}.ckpt"
        other.write_bytes(junk)
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_file(other)


class _Custom:
    pass


def test_objects_a_weights_only_load_refuses(tmp_path):
    path = tmp_path / "pickled.ckpt"
    torch.save({"hyper_parameters": {"tokenizer": {}, "thing": _Custom()}, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=r"holds a .*_Custom object, which a weights-only load refuses"):
        load_tokenizer(path)


def test_wrong_kind(tmp_path, tiny_tokenizer_ckpt, tiny_generator_ckpt):
    with pytest.raises(
        CheckpointError, match=r"is not a tokenizer checkpoint \(it is a generator checkpoint\)"
    ):
        load_tokenizer(tiny_generator_ckpt)
    with pytest.raises(
        CheckpointError, match=r"is not a generator checkpoint \(it is a tokenizer checkpoint\)"
    ):
        load_generator(tiny_tokenizer_ckpt)
    other = tmp_path / "other.ckpt"
    write_checkpoint(other, {"lr": 1.0}, {"w": torch.zeros(1)})
    with pytest.raises(
        CheckpointError, match=r"not a tokenizer checkpoint \(it has no 'tokenizer' hyper-param"
    ):
        load_tokenizer(other)
    plain_state = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(1)}, plain_state)  # a bare state dict
    with pytest.raises(CheckpointError, match="not a generator checkpoint"):
        load_generator(plain_state)


def test_hyper_parameters_without_weights(tmp_path, tiny_tokenizer_config):
    path = write_checkpoint(
        tmp_path / "t.ckpt",
        {"tokenizer": tiny_tokenizer_config.to_dict()},
        {"discriminator.w": torch.ones(1)},
    )
    with pytest.raises(CheckpointError, match=r"tokenizer hyper-parameters but no 'tokenizer\.\*' weights"):
        load_tokenizer(path)


# ---------------------------------------------------------------- reading: paths, EMA vs raw, prefixes


def test_path_hyper_parameters_load_in_both_loaders(tmp_path, tiny_tokenizer_ckpt, tiny_generator_ckpt):
    tok = read_checkpoint(tiny_tokenizer_ckpt, TOKENIZER)
    gen = read_checkpoint(tiny_generator_ckpt, GENERATOR)
    # A data module stores paths among its init args; Lightning keeps them as pathlib objects.
    tok_path = write_checkpoint(
        tmp_path / "tok.ckpt",
        {**tok.hyper_parameters, "data_dir": tmp_path / "shards"},
        tok.weights(prefix=""),
    )
    gen_hparams = {
        **gen.hyper_parameters,
        "tokenizer_checkpoint": tok_path,  # a Path, not a str
        "data_dir": PurePosixPath("data/openmoji64"),
    }
    gen_path = write_checkpoint(tmp_path / "gen.ckpt", gen_hparams, gen.weights(prefix=""))
    # The test means something: a bare weights-only load refuses these files.
    for path in (tok_path, gen_path):
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)

    assert load_tokenizer(tok_path).codebook_dim == 6
    loaded = load_generator(gen_path)
    assert loaded.hparams["tokenizer_checkpoint"] == tok_path and isinstance(
        loaded.hparams["data_dir"], PurePosixPath
    )
    expected = {k: v for k, v in gen.weights().items()}
    assert _same(loaded.model.state_dict(), expected)


def test_ema_or_raw_weights(tmp_path, tiny_tokenizer_config):
    ema, raw = _tokenizer(tiny_tokenizer_config, 1), _tokenizer(tiny_tokenizer_config, 2)
    path = write_checkpoint(
        tmp_path / "ema.ckpt",
        {"tokenizer": tiny_tokenizer_config.to_dict()},
        ema.state_dict(),
        prefix="tokenizer.",
        current_model_state=raw.state_dict(),
    )
    ckpt = read_checkpoint(path, TOKENIZER)
    assert ckpt.has_ema
    assert _same(ckpt.weights(), ema.state_dict()) and _same(ckpt.weights(use_ema=False), raw.state_dict())
    assert _same(load_tokenizer(path).state_dict(), ema.state_dict())
    assert _same(load_tokenizer(path, use_ema=False).state_dict(), raw.state_dict())
    assert set(ckpt.weights(prefix="")) == {f"tokenizer.{k}" for k in ema.state_dict()}

    # Without EMA there are only raw weights, in state_dict, whichever is asked for.
    plain = write_checkpoint(
        tmp_path / "plain.ckpt",
        {"tokenizer": tiny_tokenizer_config.to_dict()},
        raw.state_dict(),
        prefix="tokenizer.",
    )
    assert not read_checkpoint(plain, TOKENIZER).has_ema
    assert _same(load_tokenizer(plain, use_ema=False).state_dict(), raw.state_dict())


def test_prefix_is_stripped_and_other_sub_modules_left_out(tmp_path, tiny_tokenizer_config):
    tok = _tokenizer(tiny_tokenizer_config, 0)
    state = {**{f"tokenizer.{k}": v for k, v in tok.state_dict().items()}, "discriminator.w": torch.ones(3)}
    path = write_checkpoint(tmp_path / "t.ckpt", {"tokenizer": tiny_tokenizer_config.to_dict()}, state)
    weights = read_checkpoint(path, TOKENIZER).weights()
    assert _same(weights, tok.state_dict())
    assert read_checkpoint(path, TOKENIZER).weights(prefix="discriminator.").keys() == {"w"}


# ---------------------------------------------------------------- writing


def test_write_then_read_round_trip(tmp_path, tiny_tokenizer_config):
    tok = _tokenizer(tiny_tokenizer_config, 0)
    path = write_checkpoint(
        tmp_path / "deep" / "t.ckpt",
        {"tokenizer": tiny_tokenizer_config.to_dict()},
        tok.state_dict(),
        prefix="tokenizer.",
        global_step=7,
    )
    ckpt = read_checkpoint(path, TOKENIZER)
    assert ckpt.content["global_step"] == 7
    assert ckpt.hyper_parameters == {"tokenizer": tiny_tokenizer_config.to_dict()}
    assert _same(load_tokenizer(path).state_dict(), tok.state_dict())
    assert [p.name for p in path.parent.iterdir()] == ["t.ckpt"]  # no temporary file left


def test_failed_write_leaves_the_old_file(tmp_path, tiny_tokenizer_config, monkeypatch):
    old = _tokenizer(tiny_tokenizer_config, 0)
    hparams = {"tokenizer": tiny_tokenizer_config.to_dict()}
    path = write_checkpoint(tmp_path / "t.ckpt", hparams, old.state_dict(), prefix="tokenizer.")
    before = path.read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(10)}, f)  # some bytes reach the temporary file…
        raise OSError(28, "No space left on device")  # …then the write fails

    monkeypatch.setattr(checkpoints.torch, "save", disk_full)
    new = _tokenizer(tiny_tokenizer_config, 1)
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(path, hparams, new.state_dict(), prefix="tokenizer.")
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.ckpt"]
    assert _same(load_tokenizer(path).state_dict(), old.state_dict())


def test_non_plain_hyper_parameters_are_refused_before_writing(tmp_path, tiny_tokenizer_config):
    path = tmp_path / "t.ckpt"
    hparams = {"tokenizer": tiny_tokenizer_config}  # the dataclass itself, not its to_dict()
    with pytest.raises(
        TypeError, match=r"checkpoint\['hyper_parameters'\]\['tokenizer'\] is a .*TokenizerConfig.*to_dict"
    ):
        write_checkpoint(path, hparams, {})
    assert not path.exists() and not list(tmp_path.iterdir())


def test_untrained_twin_is_written_through_the_format(tmp_path, tiny_generator_ckpt):
    from infinity_lit.studies.stages import untrained_twin

    twin = untrained_twin(tiny_generator_ckpt, tmp_path / "eval" / "untrained.ckpt", seed=3)
    trained, fresh = load_generator(tiny_generator_ckpt), load_generator(twin)
    assert fresh.hparams == trained.hparams
    assert not _same(fresh.model.state_dict(), trained.model.state_dict())
    again = untrained_twin(tiny_generator_ckpt, tmp_path / "again.ckpt", seed=3)
    assert _same(load_generator(again).model.state_dict(), fresh.model.state_dict())  # seeded
    assert read_checkpoint(twin, GENERATOR).path == Path(twin)


def test_every_torch_load_in_the_package_is_weights_only():
    """Checkpoints and weights files may come from anywhere: every ``torch.load`` call of the package passes
    ``weights_only=True`` (no pickled code runs), found by walking the syntax trees of its modules."""
    import ast

    package = Path(__file__).resolve().parents[1] / "infinity_lit"
    calls, unsafe = 0, []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = f"{getattr(func.value, 'id', '')}.{func.attr}" if isinstance(func, ast.Attribute) else ""
            if name != "torch.load":
                continue
            calls += 1
            safe = any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            )
            if not safe:
                unsafe.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    assert calls > 0  # the walk finds the loaders
    assert unsafe == [], unsafe
