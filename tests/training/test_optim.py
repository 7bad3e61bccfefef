"""``OptimizerConfig``: validation, plain types, the cosine horizon rule, and the CLI that takes it."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import yaml

from infinity_lit.training.optim import OptimizerConfig
from infinity_lit.training.schedules import lr_factor


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"learning_rate": 0.0}, r"learning_rate must be > 0"),
        ({"learning_rate": math.nan}, r"learning_rate must be a finite number"),
        ({"betas": (0.9, 1.0)}, r"betas must be two numbers in \[0, 1\), e\.g\. \[0\.9, 0\.99\]"),
        ({"betas": (0.9,)}, r"betas must be two numbers"),
        ({"weight_decay": -0.1}, r"weight_decay must be >= 0 \(0 = no decay\)"),
        ({"warmup_steps": -1}, r"warmup_steps must be >= 0"),
        ({"lr_schedule": "linear"}, r"lr_schedule must be 'cosine' or 'constant', got 'linear'"),
        ({"decay_steps": 0}, r"decay_steps must be >= 1, got 0; set it to null"),
        (
            {"warmup_steps": 100, "decay_steps": 100},
            r"decay_steps \(100\) must be larger than .*warmup_steps \(100\)",
        ),
        ({"min_lr_ratio": 1.5}, r"min_lr_ratio must be in \[0, 1\], got 1\.5"),
    ],
)
def test_invalid_values_say_how_to_fix(fields, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**fields)


def test_valid_edge_values():
    OptimizerConfig(betas=(0.0, 0.0), weight_decay=0.0, warmup_steps=0, min_lr_ratio=0.0)
    OptimizerConfig(min_lr_ratio=1.0, decay_steps=101)
    # decay_steps is the cosine's horizon only; a constant schedule does not compare it with the warm-up.
    OptimizerConfig(lr_schedule="constant", warmup_steps=100, decay_steps=10)


def test_plain_types_round_trip():
    config = OptimizerConfig(learning_rate=1e-3, betas=[0.5, 0.9], decay_steps=2400)
    assert config.betas == (0.5, 0.9)  # stored as a tuple whatever the input
    plain = config.to_dict()
    assert plain == {
        "learning_rate": 1e-3,
        "betas": [0.5, 0.9],
        "weight_decay": 0.05,
        "warmup_steps": 100,
        "lr_schedule": "cosine",
        "decay_steps": 2400,
        "min_lr_ratio": 0.1,
        "fused": None,
    }
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain
    assert OptimizerConfig.from_dict(plain) == config


def test_from_dict_fills_from_the_given_defaults_and_rejects_unknown_keys():
    defaults = OptimizerConfig(learning_rate=1e-4, betas=(0.5, 0.9), weight_decay=0.0, warmup_steps=0)
    assert OptimizerConfig.from_dict({"warmup_steps": 7}, defaults) == OptimizerConfig(
        learning_rate=1e-4, betas=(0.5, 0.9), weight_decay=0.0, warmup_steps=7
    )
    assert OptimizerConfig.coerce(None, defaults) is defaults
    assert OptimizerConfig.coerce(defaults, OptimizerConfig()) is defaults
    with pytest.raises(ValueError, match=r"unknown optimizer config keys \['lr'\]; known: \['learning_rate'"):
        OptimizerConfig.from_dict({"lr": 1.0})
    with pytest.raises(TypeError, match="OptimizerConfig or a mapping"):
        OptimizerConfig.coerce(0.1, defaults)


def test_horizon_rule():
    trainer = SimpleNamespace(estimated_stepping_batches=40)
    assert OptimizerConfig(decay_steps=2400).horizon(trainer) == 2400  # decay_steps wins
    assert OptimizerConfig(warmup_steps=10).horizon(trainer) == 40  # else the trainer's total steps
    assert OptimizerConfig(lr_schedule="constant").horizon(None) is None
    for unbounded in (None, SimpleNamespace(estimated_stepping_batches=math.inf)):
        with pytest.raises(
            ValueError, match=r"needs a horizon: set model\.optimizer\.decay_steps, or trainer\.max_steps"
        ):
            OptimizerConfig().horizon(unbounded)


def test_adamw_and_scheduler():
    params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
    config = OptimizerConfig(learning_rate=2e-3, betas=(0.8, 0.95), weight_decay=0.1, warmup_steps=3)
    optimizer = config.adamw(params)
    assert optimizer.defaults["lr"] == 2e-3 and optimizer.defaults["betas"] == (0.8, 0.95)
    assert optimizer.defaults["weight_decay"] == 0.1
    assert config.adamw(params, learning_rate=5e-4).defaults["lr"] == 5e-4
    grouped = config.adamw([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}])
    assert [g["weight_decay"] for g in grouped.param_groups] == [0.1, 0.0]
    scheduler = config.scheduler(optimizer, total_steps=13)
    assert [scheduler.lr_lambdas[0](s) for s in range(20)] == [lr_factor(s, 3, 13, 0.1) for s in range(20)]


def test_fused_adamw_is_the_default_and_takes_the_same_steps_as_foreach():
    """The fused kernel (default on CPU / CUDA) against the foreach update (``fused: false``) and against
    AdamW written out by hand (Loshchilov & Hutter, decoupled decay), 20 steps with weight decay."""
    torch.manual_seed(0)
    init = [torch.randn(64, 32), torch.randn(32)]
    grads = [[torch.randn_like(t) for t in init] for _ in range(20)]
    config = OptimizerConfig(learning_rate=1e-2, betas=(0.9, 0.97), weight_decay=0.05)

    def run(fused):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        opt = replace(config, fused=fused).adamw([{"params": iter(params)}])  # an iterator is read once
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            opt.step()
        return opt, [p.detach() for p in params]

    fused_opt, fused = run(None)
    foreach_opt, foreach = run(False)
    assert fused_opt.param_groups[0]["fused"] is True and not foreach_opt.param_groups[0]["fused"]
    # By hand: m, v moments with bias correction; decay applied to the weights before the update.
    lr, (b1, b2), wd, eps = 1e-2, config.betas, 0.05, 1e-8
    for k, t in enumerate(init):
        w, m, v = t.clone().double(), torch.zeros_like(t).double(), torch.zeros_like(t).double()
        for n, step in enumerate(grads, start=1):
            g = step[k].double()
            w *= 1 - lr * wd
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            w -= lr * (m / (1 - b1**n)) / ((v / (1 - b2**n)).sqrt() + eps)
        torch.testing.assert_close(fused[k].double(), w, rtol=0, atol=1e-5)
        torch.testing.assert_close(fused[k], foreach[k], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- the CLI


@pytest.mark.parametrize("group", ["tokenizer", "generator"])
@pytest.mark.parametrize(
    "option", [["--optimizer", "torch.optim.SGD"], ["--lr_scheduler", "torch.optim.lr_scheduler.StepLR"]]
)
def test_generic_optimizer_options_are_rejected(group, option, tiny_tokenizer_ckpt, capsys):
    from infinity_lit.cli import main

    model = ["--model.tokenizer_checkpoint", str(tiny_tokenizer_ckpt)] if group == "generator" else []
    # --print_config would print and exit 0 if the option were accepted.
    with pytest.raises(SystemExit) as exit_info:
        main([group, "fit", *model, *option, "--print_config"])
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert option[0].lstrip("-") in err and "nrecognized" in err


@pytest.mark.parametrize("group", ["tokenizer", "generator"])
def test_model_optimizer_group_is_parsed_over_the_module_defaults(group, tiny_tokenizer_ckpt, capsys):
    from infinity_lit.cli import main

    model = ["--model.tokenizer_checkpoint", str(tiny_tokenizer_ckpt)] if group == "generator" else []
    with pytest.raises(SystemExit):
        main([group, "fit", *model, "--model.optimizer.warmup_steps=7", "--print_config"])
    optimizer = yaml.safe_load(capsys.readouterr().out)["model"]["optimizer"]
    assert optimizer["warmup_steps"] == 7
    # Each module keeps its own defaults for the rest.
    expected_lr = {"tokenizer": 1e-4, "generator": 3e-4}[group]
    assert optimizer["learning_rate"] == expected_lr
    assert optimizer["lr_schedule"] == {"tokenizer": "constant", "generator": "cosine"}[group]
