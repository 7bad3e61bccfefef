"""``NonFiniteGuard``: a NaN/Inf loss term or gradient stops training (or skips the step) before the update.

A non-finite value that reaches an optimiser step spreads into every weight and into the Adam moments, and
the next periodic checkpoint saves the ruined state as ``last.ckpt``. The guard looks at each optimiser
step just before it is applied (``on_before_optimizer_step``, after clipping, for automatic and manual
optimisation alike, so for both of the tokenizer's GAN optimisers too):

- the loss terms the module published for this step (``pl_module.loss_terms``: a ``{name: tensor}``
  mapping such as ``{"l1": …, "entropy": …}``; every module of the toolkit sets it in ``training_step``),
- the gradients of the optimiser's parameters.

``action="stop"`` (default) raises ``NonFiniteError`` naming the step, the optimiser, the non-finite loss
terms and the first parameters with non-finite gradients; nothing of the step is applied, no checkpoint is
written on the way out (``RunCheckpoint`` saves only on a signal), so ``last.ckpt`` stays the last good
state. ``action="skip"`` drops the step's gradients instead (``param.grad = None``: the optimiser leaves
those weights and their moments as they were; the step still counts towards ``max_steps`` and the
learning-rate schedule), warns, and counts it (``train/nonfinite_skipped``, saved with the checkpoint).
Under DDP the decision is taken over all ranks (gradients are already averaged; loss terms are per rank).
With fp16's ``GradScaler`` non-finite gradients are the scaler's business (it skips such steps and lowers
its scale): the guard then only checks the loss terms.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

#: How many parameter names a message lists.
_NAMES_SHOWN = 4


class NonFiniteError(ValueError):
    """A loss term or gradient was NaN or infinite; training stopped before applying the step."""


def nonfinite_terms(terms: Mapping[str, Any]) -> dict[str, float]:
    """The entries of ``terms`` (tensors or numbers) that are not finite, as floats (NaN/±inf): the first
    non-finite element of a tensor. One device sync for all the tensors (more only when one is not finite)."""
    out: dict[str, float] = {}
    tensors = {name: value.detach() for name, value in terms.items() if isinstance(value, Tensor)}
    if tensors:
        device = next(iter(tensors.values())).device
        finite = torch.stack([torch.isfinite(v).all().to(device) for v in tensors.values()]).tolist()
        for (name, value), ok in zip(tensors.items(), finite, strict=True):
            if not ok:
                out[name] = float(value[~torch.isfinite(value)].flatten()[0])
    for name, value in terms.items():
        if isinstance(value, (int, float)) and not math.isfinite(value):
            out[name] = float(value)
    return {name: out[name] for name in terms if name in out}  # in the order of ``terms``


def _nonfinite_gradients(named: list[tuple[str, Tensor]]) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or an infinity (one device sync)."""
    if not named:
        return []
    norms = torch._foreach_norm([g.detach() for _, g in named], ord=math.inf)
    finite = torch.isfinite(torch.stack([n.float() for n in norms])).tolist()
    return [name for (name, _), ok in zip(named, finite, strict=True) if not ok]


class NonFiniteGuard(Callback):
    """Stop (or skip the step) on a non-finite loss term or gradient (see the module docstring).

    Args:
        action: ``"stop"`` (raise ``NonFiniteError``) or ``"skip"`` (drop the step's gradients and count it).
        check_gradients: also check gradients (one ``_foreach_norm`` and one sync per optimiser step).
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", check_gradients: bool = True) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard action must be 'stop' or 'skip', not {action!r}")
        self.action = action
        self.check_gradients = check_gradients
        #: Optimiser steps skipped so far (``action="skip"``), over the whole run (resumes included).
        self.skipped = 0

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        terms = nonfinite_terms(getattr(pl_module, "loss_terms", None) or {})
        params = {id(p) for group in optimizer.param_groups for p in group["params"]}
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        bad_grads: list[str] = []
        if self.check_gradients and not scaled:
            named = [
                (name, p.grad)
                for name, p in pl_module.named_parameters()
                if id(p) in params and p.grad is not None
            ]
            bad_grads = _nonfinite_gradients(named)
        found = bool(terms or bad_grads)
        if trainer.world_size > 1:
            found = trainer.strategy.reduce_boolean_decision(found, all=False)
        if not found:
            return
        what = self._describe(trainer, pl_module, optimizer, terms, bad_grads)
        if self.action == "stop":
            raise NonFiniteError(
                f"{what}; training stopped before applying it (last.ckpt is the last good state). Lower "
                "the learning rate, check the data, or pass --nonfinite.action skip to skip such steps"
            )
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped += 1
        warnings.warn(f"{what}; step skipped ({self.skipped} so far)", RuntimeWarning, stacklevel=2)
        pl_module.log("train/nonfinite_skipped", float(self.skipped), rank_zero_only=True)

    @staticmethod
    def _describe(
        trainer: Trainer,
        pl_module: LightningModule,
        optimizer: torch.optim.Optimizer,
        terms: dict[str, float],
        bad_grads: list[str],
    ) -> str:
        optimizers = [getattr(o, "optimizer", o) for o in trainer.optimizers]
        index = next(
            (i for i, o in enumerate(optimizers) if o is getattr(optimizer, "optimizer", optimizer)), 0
        )
        which = f" (optimiser {index})" if len(optimizers) > 1 else ""
        parts = []
        if terms:
            parts.append("loss " + ", ".join(f"{k} = {v}" for k, v in terms.items()))
        if bad_grads:
            names = ", ".join(bad_grads[:_NAMES_SHOWN]) + (
                f" and {len(bad_grads) - _NAMES_SHOWN} more" if len(bad_grads) > _NAMES_SHOWN else ""
            )
            parts.append(f"non-finite gradients in {names}")
        return f"non-finite values after {trainer.global_step} training steps{which}: " + "; ".join(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
