"""The one warm-up + cosine / constant learning-rate factor, against values worked out by hand."""

from __future__ import annotations

import io
import math

import pytest
import torch

from infinity_lit.training.schedules import lr_factor, warmup_cosine


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.25),  # warm-up: (0 + 1) / 4
        (2, 0.75),  # (2 + 1) / 4
        (3, 1.0),  # last warm-up step reaches the peak
        (4, 1.0),  # cosine starts at progress 0
        (6, 0.2 + 0.8 * 0.5 * (1 + math.cos(0.2 * math.pi))),  # progress (6 − 4) / (14 − 4) = 0.2: 0.92361
        (9, 0.6),  # half-way: 0.2 + 0.8 · ½ · (1 + cos π/2)
        (14, 0.2),  # the horizon: min_lr_ratio
        (1000, 0.2),  # beyond it: stays at min_lr_ratio
    ],
)
def test_warmup_then_cosine(step, expected):
    assert lr_factor(step, warmup_steps=4, total_steps=14, min_lr_ratio=0.2) == pytest.approx(
        expected, abs=1e-12
    )


def test_warmup_then_constant():
    assert [lr_factor(s, 4, None, 0.2) for s in (0, 1, 3, 4, 10_000)] == [0.25, 0.5, 1.0, 1.0, 1.0]


def test_no_warmup():
    assert lr_factor(0, 0, 10, 0.0) == 1.0
    assert lr_factor(5, 0, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(10, 0, 10, 0.0) == pytest.approx(0.0)
    assert lr_factor(0, 0, None, 0.5) == 1.0


def test_values_of_the_two_former_module_schedules():
    # The hand values the tokenizer's and the generator's own schedules were tested with before they merged.
    assert [lr_factor(s, 10, 110, 0.1) for s in (0, 9, 10, 60, 110, 500)] == pytest.approx(
        [0.1, 1.0, 1.0, 0.55, 0.1, 0.1]
    )
    assert lr_factor(500, 10, None, 0.1) == 1.0
    assert lr_factor(200, 0, 100, 0.0) == pytest.approx(0.0)


def test_warmup_cosine_drives_lambda_lr_per_step():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=2, total_steps=6, min_lr_ratio=0.5)
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # 2 · [1/2, 1, cosine from 1 at step 2 to 0.5 at step 6, then 0.5]
    expected = [2 * lr_factor(s, 2, 6, 0.5) for s in range(8)]
    assert lrs == pytest.approx(expected)
    assert (
        lrs[0] == pytest.approx(1.0) and lrs[4] == pytest.approx(1.5) and lrs[6:] == pytest.approx([1.0, 1.0])
    )

    # Its state goes into checkpoints: it must survive a weights-only load and restore the step.
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    other = warmup_cosine(torch.optim.SGD([param], lr=2.0), 2, 6, 0.5)
    other.load_state_dict(state)
    assert other.last_epoch == scheduler.last_epoch == 8
    assert other.get_last_lr() == pytest.approx(scheduler.get_last_lr())
