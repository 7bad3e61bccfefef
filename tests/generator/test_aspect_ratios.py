"""Training and sampling across aspect ratios: a tokenizer and a generator fit on bucketed shards (one
template per batch), the generator's checkpoint records the schedules it saw, and sampling refuses others."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY_SCHEDULE_ARG, TINY_TOKENIZER_ARGS
from PIL import Image

from infinity_lit.checkpoints import TRAINED_SCHEDULES
from infinity_lit.generator import load_generator, sample
from infinity_lit.tokenizer import BitwiseTokenizer, TokenizerConfig

REPO = Path(__file__).resolve().parents[2]
#: The method's 3-scale templates at a 4×4 square latent (stride 8, 32 px): h/w 0.5, 1 and 2.
WIDE, SQUARE, TALL = [(1, 1), (2, 2), (2, 4)], [(1, 1), (2, 2), (4, 4)], [(1, 1), (2, 2), (4, 2)]
#: The schedule the fixture's tokenizer is configured with for h/w 0.5 instead of the template
#: (``TokenizerConfig.aspect_ratio_schedules``): 1, 2 and 8 tokens per scale instead of 1, 4 and 8.
WIDE_CONFIGURED = [(1, 1), (1, 2), (2, 4)]


def test_the_tokenizer_picks_the_template_of_each_shape() -> None:
    torch.manual_seed(0)
    config = TokenizerConfig(
        codebook_dim=4, scale_schedule=SQUARE, base_channels=4, channel_multipliers=[1, 1, 1, 1], num_groups=2
    )
    tokenizer = BitwiseTokenizer(config).eval()
    assert tokenizer.schedule_for(32, 32) == SQUARE
    assert tokenizer.schedule_for(16, 32) == WIDE and tokenizer.schedule_for(32, 16) == TALL
    assert (
        tokenizer.schedule_for_aspect_ratio(2.0) == TALL and tokenizer.schedule_for_aspect_ratio(1) == SQUARE
    )
    with torch.no_grad():
        recon, out = tokenizer(torch.rand(2, 3, 16, 32) * 2 - 1)
    assert recon.shape == (2, 3, 16, 32) and [tuple(c.shape[-2:]) for c in out.codes] == WIDE
    assert tokenizer.schedule_for(16, 24) == [(1, 1), (2, 2), (2, 3)]  # the 2/3 template
    with pytest.raises(ValueError, match=r"template for h/w ≈ 0\.25 with 3 scales at 2×6.*32×32 or 16×48"):
        tokenizer.schedule_for(8, 32)
    with pytest.raises(ValueError, match="no scale schedule template"):
        tokenizer.schedule_for_aspect_ratio(1.1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bucketed_shards) -> dict[str, Path]:
    """A tiny tokenizer, then a tiny generator on it, each fit for a few steps on the bucketed shards; the
    tokenizer has its own schedule for h/w 0.5 (``WIDE_CONFIGURED``) and the method's template for h/w 2."""

    data, _ = bucketed_shards
    root = tmp_path_factory.mktemp("ar_runs")
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    data_args = [
        f"--data.init_args.data_dir={data}",
        "--data.init_args.resolution=32",
        "--data.init_args.batch_size=2",
    ]
    steps = [
        "--trainer.max_time=null",
        "--trainer.limit_val_batches=null",
        "--trainer.num_sanity_val_steps=0",
    ]
    cwd = os.getcwd()
    os.chdir(root)  # runs/<model>/<run_name>/ under it
    try:
        return _fit_both(root, data_args + quiet + steps)
    finally:
        os.chdir(cwd)


def _fit_both(root: Path, common: list[str]) -> dict[str, Path]:
    from infinity_lit import runs
    from infinity_lit.cli import train

    tokenizer_run = train.tokenizer(
        ["fit", "-c", str(REPO / "experiments/tokenizer/openmoji64.yaml"), "--run_name=tok",
         *common, *TINY_TOKENIZER_ARGS, TINY_SCHEDULE_ARG, "--trainer.max_steps=4",
         "--model.tokenizer.aspect_ratio_schedules=[[[1, 1], [1, 2], [2, 4]]]",
         "--trainer.val_check_interval=4", "--model.num_log_images=0"]
    )  # fmt: skip
    tokenizer = runs.last_checkpoint(root / "runs" / "tokenizer" / "tok")
    # 17 training batches per epoch (4 of h/w 0.5, 9 square, 4 of h/w 2 at batch 2): all buckets are seen.
    generator_run = train.generator(
        ["fit", "-c", str(REPO / "experiments/generator/openmoji64.yaml"), "--run_name=gen",
         *common, f"--model.tokenizer_checkpoint={tokenizer}", "--model.transformer.depth=1",
         "--model.transformer.width=32", "--model.transformer.num_heads=2", "--model.text_max_length=16",
         "--trainer.max_steps=18", "--trainer.val_check_interval=18", "--model.optimizer.decay_steps=18", "--model.optimizer.warmup_steps=2",
         "--model.val_prompts=[shape 0 number 1]"]
    )  # fmt: skip
    return {
        "tokenizer": tokenizer,
        "tokenizer_metrics": {k: float(v) for k, v in tokenizer_run.trainer.callback_metrics.items()},
        "generator": runs.last_checkpoint(root / "runs" / "generator" / "gen"),
        "generator_metrics": {k: float(v) for k, v in generator_run.trainer.callback_metrics.items()},
    }


def test_both_models_train_and_validate_on_every_bucket(trained) -> None:
    tok, gen = trained["tokenizer_metrics"], trained["generator_metrics"]
    assert all(
        torch.isfinite(torch.tensor(tok[k])) for k in ("val/psnr", "val/psnr_scale_1", "val/psnr_scale_3")
    )
    assert 0 < gen["val/loss"] < 1 and "val/bit_acc_scale_3" in gen
    ckpt = torch.load(trained["generator"], map_location="cpu", weights_only=True)
    # The schedules of the batches it was trained on, ascending h/w.
    assert ckpt[TRAINED_SCHEDULES] == [[list(hw) for hw in s] for s in (WIDE_CONFIGURED, SQUARE, TALL)]


def test_sampling_at_a_trained_aspect_ratio_and_refusing_others(trained) -> None:
    gen = load_generator(trained["generator"])
    assert gen.model.trained_schedules == [WIDE_CONFIGURED, SQUARE, TALL]
    assert gen.tokenizer.aspect_ratio_schedules == [WIDE_CONFIGURED]  # the generator's copy of the tokenizer
    args = (gen.model, gen.tokenizer, gen.text_encoder, ["shape 2 number 0"])
    tall = sample(*args, aspect_ratio=2.0, seed=1)
    assert tall.images.shape == (1, 3, 32, 16) and [b.shape[1] for b in tall.bits] == [1, 4, 8]
    wide = sample(*args, aspect_ratio=0.5, seed=1)
    assert wide.images.shape == (1, 3, 16, 32) and [b.shape[1] for b in wide.bits] == [1, 2, 8]
    # The same image whether named by its aspect ratio or its schedule, cached or not.
    again = sample(*args, schedule=WIDE_CONFIGURED, seed=1, use_cache=False)
    assert all(torch.equal(a, b) for a, b in zip(wide.bits, again.bits))
    with pytest.raises(
        ValueError, match=r"not trained on the scale schedule ending at 4×3 \(h/w = 1\.33\).*0\.5"
    ):
        sample(*args, aspect_ratio=4 / 3)
    # The template of h/w 0.5 is not what it was trained on at that shape.
    with pytest.raises(ValueError, match=r"not trained on the scale schedule"):
        sample(*args, schedule=WIDE)
    with pytest.raises(ValueError, match=r"no scale schedule template for h/w = 1\.1"):
        sample(*args, aspect_ratio=1.1)


def test_a_generator_from_before_the_record_samples_its_own_schedule_only(tiny_generator_ckpt) -> None:
    gen = load_generator(tiny_generator_ckpt)
    assert gen.model.trained_schedules == [SQUARE]
    args = (gen.model, gen.tokenizer, gen.text_encoder, ["a"])
    assert sample(*args, aspect_ratio=1.0).images.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"checkpoint records training on h/w = 1 \(last grid 4×4\)"):
        sample(*args, aspect_ratio=2.0)


def test_eval_sample_at_an_aspect_ratio(trained, tmp_path, capsys) -> None:
    from infinity_lit.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("shape 0 number 1\nshape 2 number 3\n")
    common = ["eval", "sample", "--checkpoint", str(trained["generator"]), "--prompts", str(prompts)]
    main([*common, "--out", str(tmp_path / "tall"), "--aspect_ratio", "2", "--cfg", "2"])
    records = [json.loads(line) for line in (tmp_path / "tall" / "metadata.jsonl").read_text().splitlines()]
    assert [r["aspect_ratio"] for r in records] == [2.0, 2.0]
    with Image.open(tmp_path / "tall" / records[0]["file"]) as im:
        assert im.size == (16, 32)  # (width, height): twice as high as wide
    # Another aspect ratio into the same folder is refused, as any other setting.
    with pytest.raises(SystemExit) as exc:
        main([*common, "--out", str(tmp_path / "tall"), "--aspect_ratio", "0.5", "--cfg", "2"])
    assert exc.value.code == 2 and "aspect_ratio: folder has 2.0, requested 0.5" in capsys.readouterr().err
    # One it was not trained on: one line, and no folder made.
    with pytest.raises(SystemExit) as exc:
        main([*common, "--out", str(tmp_path / "untrained"), "--aspect_ratio", "1.333"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (after the text encoder's loading bar)
    assert (
        exc.value.code == 2
        and last.startswith("error: this generator was not trained")
        and "Traceback" not in err
    )
    assert not (tmp_path / "untrained").exists()
