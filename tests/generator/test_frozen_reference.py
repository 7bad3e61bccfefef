"""A generator names its tokenizer by path and content: it is found from anywhere (moved run folders
included) and a tokenizer file replaced by other weights is an error, when sampling and when resuming."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import MINILM_DIM, TINY_TOKENIZER

from infinity_lit.checkpoints import (
    FROZEN_STAGES,
    GENERATOR,
    TOKENIZER,
    CheckpointError,
    frozen_reference,
    read_checkpoint,
    weights_digest,
    write_checkpoint,
)
from infinity_lit.generator.checkpoint import load_generator
from infinity_lit.generator.module import GeneratorModule, transformer_config_to_dict
from infinity_lit.generator.transformer import BitwiseTransformer, TransformerConfig
from infinity_lit.tokenizer import BitwiseTokenizer, TokenizerConfig


def _tokenizer(path: Path, seed: int) -> Path:
    """A random tiny tokenizer checkpoint (``seed`` picks its weights, same shape for every seed)."""
    config = TokenizerConfig.from_dict(TINY_TOKENIZER)
    torch.manual_seed(seed)
    weights = BitwiseTokenizer(config).state_dict()
    return write_checkpoint(
        path, {"tokenizer": config.to_dict()}, weights, prefix=TOKENIZER.prefix, global_step=10 + seed
    )


def _generator(path: Path, tokenizer: Path, stored_path: str, seed: int = 1) -> Path:
    """A random tiny generator checkpoint over ``tokenizer``, naming it as ``GeneratorModule`` does."""
    config = TransformerConfig.preset("tiny")
    schedule = [tuple(hw) for hw in TINY_TOKENIZER["scale_schedule"]]
    torch.manual_seed(seed)
    model = BitwiseTransformer(config.complete(TINY_TOKENIZER["codebook_dim"], schedule, MINILM_DIM))
    hparams = {
        "transformer": transformer_config_to_dict(config),
        "tokenizer_checkpoint": stored_path,
        "text_encoder": "minilm",
        "text_max_length": 16,
    }
    identity = read_checkpoint(tokenizer, TOKENIZER).identity()
    reference = {"tokenizer": frozen_reference(identity, path.parent)}
    return write_checkpoint(
        path,
        hparams,
        model.state_dict(),
        prefix=GENERATOR.prefix,
        global_step=7,
        **{FROZEN_STAGES: reference},
    )


def test_weights_digest_is_content_only():
    a = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.bfloat16)}
    same = {"b": torch.zeros(3, dtype=torch.bfloat16), "w": torch.arange(6.0).reshape(2, 3).clone()}
    assert weights_digest(a) == weights_digest(same)  # order and storage do not matter
    changed = {**a, "w": a["w"].clone()}
    changed["w"][1, 2] = torch.nextafter(changed["w"][1, 2], torch.tensor(10.0))
    assert weights_digest(changed) != weights_digest(a)  # one ulp of one entry does
    assert weights_digest({**a, "w": a["w"].reshape(3, 2)}) != weights_digest(a)  # so does the shape
    assert weights_digest({**a, "b": a["b"].float()}) != weights_digest(a)  # and the dtype


def test_a_moved_run_folder_finds_its_tokenizer_from_any_working_directory(tmp_path, monkeypatch):
    project = tmp_path / "project"
    tokenizer = _tokenizer(project / "tok" / "checkpoints" / "last.ckpt", seed=0)
    monkeypatch.chdir(project)
    # As trained from the project folder: the hyper-parameter is relative to that working directory.
    _generator(project / "gen" / "checkpoints" / "last.ckpt", tokenizer, "tok/checkpoints/last.ckpt")
    shutil.move(project, tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    gen = load_generator(tmp_path / "moved" / "gen")
    assert gen.tokenizer_identity["path"] == str(tmp_path / "moved" / "tok" / "checkpoints" / "last.ckpt")
    assert gen.tokenizer_identity["step"] == 10
    assert gen.identity["step"] == 7


def test_a_replaced_tokenizer_is_an_error_naming_both_files_and_the_override(tmp_path):
    tokenizer = _tokenizer(tmp_path / "tok.ckpt", seed=0)
    generator = _generator(tmp_path / "gen" / "gen.ckpt", tokenizer, str(tokenizer))
    load_generator(generator)  # the right weights: loads
    _tokenizer(tmp_path / "tok.ckpt", seed=3)  # same shape, other weights, same file name
    with pytest.raises(CheckpointError) as err:
        load_generator(generator)
    message = str(err.value)
    assert str(generator) in message and str(tokenizer) in message
    assert "at step 10" in message and "step 13" in message and "--tokenizer_checkpoint" in message
    # The override is checked too; the original weights under another name are accepted.
    with pytest.raises(CheckpointError, match="other weights"):
        load_generator(generator, tokenizer_checkpoint=tmp_path / "tok.ckpt")
    original = _tokenizer(tmp_path / "copy" / "tok.ckpt", seed=0)
    assert load_generator(generator, tokenizer_checkpoint=original).tokenizer_identity["path"] == str(
        original
    )


def test_a_missing_tokenizer_names_the_paths_tried_and_the_override(tmp_path):
    tokenizer = _tokenizer(tmp_path / "tok.ckpt", seed=0)
    generator = _generator(tmp_path / "gen" / "gen.ckpt", tokenizer, str(tokenizer))
    os.remove(tokenizer)
    with pytest.raises(FileNotFoundError, match=r"not at .*tok\.ckpt.*pass --tokenizer_checkpoint"):
        load_generator(generator)


def test_resuming_on_other_tokenizer_weights_is_refused(tmp_path):
    tokenizer = _tokenizer(tmp_path / "tok.ckpt", seed=0)
    module = GeneratorModule(str(tokenizer), transformer=TransformerConfig.preset("tiny"), text_max_length=16)
    saved: dict = {}
    module.on_save_checkpoint(saved)  # no trainer: no relative path, the rest as in a fit
    recorded = saved[FROZEN_STAGES]["tokenizer"]
    assert recorded["path"] == str(tokenizer.resolve()) and recorded["step"] == 10
    assert recorded["weights_sha256"] == weights_digest(read_checkpoint(tokenizer, TOKENIZER).weights())
    module.on_load_checkpoint({**saved, "state_dict": module.state_dict()})  # same tokenizer: fine
    other = GeneratorModule(
        str(_tokenizer(tmp_path / "other.ckpt", seed=4)),
        transformer=TransformerConfig.preset("tiny"),
        text_max_length=16,
    )
    with pytest.raises(
        CheckpointError, match=r"trained on the tokenizer .*tok\.ckpt at step 10.*other weights"
    ):
        other.on_load_checkpoint({**saved, "state_dict": other.state_dict()})


def test_a_sample_folder_refuses_a_replaced_generator(tmp_path):
    from infinity_lit.evaluation.sampling import sample_checkpoint

    tokenizer = _tokenizer(tmp_path / "tok.ckpt", seed=0)
    generator = _generator(tmp_path / "gen.ckpt", tokenizer, str(tokenizer), seed=1)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red apple\ngrinning face\n")
    out = tmp_path / "samples"
    sample_checkpoint(generator, out, prompts=prompts, num_images=1, cfg=1.0)
    record = json.loads((out / "metadata.jsonl").read_text().splitlines()[0])
    assert (
        record["generator_weights_sha256"]
        == read_checkpoint(generator, GENERATOR).identity()["weights_sha256"]
    )
    assert record["checkpoint_step"] == 7
    _generator(tmp_path / "gen.ckpt", tokenizer, str(tokenizer), seed=2)  # another model, same file
    with pytest.raises(ValueError, match=r"other settings .*generator_weights_sha256"):
        sample_checkpoint(generator, out, prompts=prompts, cfg=1.0)
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 1  # nothing mixed in
