"""``OptimizerConfig``: the AdamW and learning-rate schedule settings both LightningModules take.

In a recipe it is the ``model.optimizer`` group (each module keeps its own defaults):

    model:
      optimizer:
        learning_rate: 1.0e-3
        betas: [0.9, 0.97]
        weight_decay: 0.05
        warmup_steps: 100
        lr_schedule: cosine
        decay_steps: 2400      # null: the trainer's total steps
        min_lr_ratio: 0.1

The schedule itself is ``infinity_lit.training.schedules.lr_factor``; ``horizon`` resolves the cosine
horizon against the trainer and ``scheduler`` builds the ``LambdaLR``. ``trainable_parameters`` gives a
module's parameters as a strategy (DDP, FSDP) has wrapped them, named as before the wrapping.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import torch
from torch import nn

from .schedules import warmup_cosine

LRSchedule = Literal["cosine", "constant"]


def trainable_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters of ``module`` that train (``requires_grad``), in ``named_parameters`` order, each
    named as in the unwrapped module.

    Call it from ``configure_optimizers``: Lightning runs that hook after the strategy has wrapped the model,
    so these are the parameter objects the strategy manages. DDP leaves them as they are. FSDP (with
    ``use_orig_params``, Lightning's default and required here) keeps the same objects but points each one's
    data at a flat 1-D piece of this rank's shard, so a parameter's shape no longer tells a matrix from a
    vector: decide anything shape-based before the wrapping. FSDP also inserts its wrapper modules into the
    names (``blocks.0.attn._fsdp_wrapped_module.qkv.weight``), as activation checkpointing
    (``_checkpoint_wrapped_module``) and ``torch.compile`` (``_orig_mod``) do; those name parts start with
    ``_`` and are dropped, so a name means the same before and after the wrapping.

    Args:
        module: the (sub-)module whose parameters one optimiser updates.

    Returns:
        ``(name, parameter)`` pairs.
    """
    out = []
    for name, param in module.named_parameters():
        if param.requires_grad:
            out.append((".".join(part for part in name.split(".") if not part.startswith("_")), param))
    return out


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyper-parameters and the warm-up + cosine / constant learning-rate schedule.

    The field defaults are the generator's; ``TokenizerModule`` and ``GeneratorModule`` each pass their own
    default instance. Which parameters receive ``weight_decay`` is the module's choice (stated in its
    docstring).

    Raises:
        ValueError: a value out of range (the message names the field and what to set).
    """

    learning_rate: float = 3e-4
    """Peak AdamW learning rate (> 0), reached at the end of the warm-up."""
    betas: tuple[float, float] = (0.9, 0.97)
    """AdamW (β1, β2), each in [0, 1)."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay (>= 0)."""
    warmup_steps: int = 100
    """Linear warm-up from lr/warmup_steps to lr, in optimiser steps (training batches); 0 = none."""
    lr_schedule: LRSchedule = "cosine"
    """After the warm-up: ``cosine`` decay to ``min_lr_ratio``·lr at the horizon, or ``constant``."""
    decay_steps: int | None = None
    """Horizon of the cosine decay in optimiser steps (> warmup_steps); null = the trainer's total steps
    (``trainer.max_steps``, or max_epochs × batches per epoch). Not used by ``constant``."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine decay as a fraction of the peak, in [0, 1]."""
    fused: bool | None = None
    """torch's fused AdamW kernel (one kernel over all parameters): null = fused where every parameter is on
    a CPU or CUDA device (measured on an idle 2-core CPU: 3× faster than the multi-tensor ``foreach`` update,
    10 against 31 ms for 7.1 M parameters, 114 against 378 ms for 142 M; ``benchmarks/README.md``), false = the ``foreach`` update. The same update to float rounding."""

    def __post_init__(self) -> None:
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)):
            raise ValueError(f"optimizer.learning_rate must be a finite number, got {self.learning_rate!r}")
        if self.learning_rate <= 0:
            raise ValueError(
                f"optimizer.learning_rate must be > 0 (the peak learning rate, e.g. 3.0e-4), got {self.learning_rate}"
            )
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"optimizer.betas must be two numbers in [0, 1), e.g. [0.9, 0.99], got {list(self.betas)}"
            )
        object.__setattr__(self, "betas", betas)
        if self.weight_decay < 0:
            raise ValueError(f"optimizer.weight_decay must be >= 0 (0 = no decay), got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"optimizer.warmup_steps must be >= 0 (0 = no warm-up), got {self.warmup_steps}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(
                f"optimizer.lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}"
            )
        if self.decay_steps is not None:
            if self.decay_steps < 1:
                raise ValueError(
                    f"optimizer.decay_steps must be >= 1, got {self.decay_steps}; set it to null to decay "
                    "over the trainer's total steps"
                )
            if self.lr_schedule == "cosine" and self.decay_steps <= self.warmup_steps:
                raise ValueError(
                    f"optimizer.decay_steps ({self.decay_steps}) must be larger than optimizer.warmup_steps "
                    f"({self.warmup_steps}): the cosine decay runs between them; raise decay_steps, lower "
                    "warmup_steps, or set decay_steps to null (the trainer's total steps)"
                )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optimizer.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    # ------------------------------------------------------------------ plain types
    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict (``betas`` as a list) for hyper-parameters, checkpoints and YAML."""
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], defaults: OptimizerConfig | None = None) -> OptimizerConfig:
        """Build from a mapping of fields (as stored in checkpoints); missing fields come from ``defaults``
        (default: the field defaults above).

        Raises:
            ValueError: keys that are not fields (named in the message), or values out of range.
        """
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown optimizer config keys {unknown}; known: {names}")
        return replace(defaults if defaults is not None else cls(), **dict(data))

    @classmethod
    def coerce(
        cls, value: OptimizerConfig | Mapping[str, Any] | None, defaults: OptimizerConfig
    ) -> OptimizerConfig:
        """``value`` as an ``OptimizerConfig``: an instance as is, a mapping over ``defaults``, None = ``defaults``.

        Raises:
            TypeError: another type. ValueError: see ``from_dict``.
        """
        if value is None:
            return defaults
        if isinstance(value, OptimizerConfig):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value, defaults)
        raise TypeError(
            f"optimizer must be an OptimizerConfig or a mapping of its fields, got {type(value).__name__}"
        )

    # ------------------------------------------------------------------ optimiser and schedule
    def adamw(self, params: Any, learning_rate: float | None = None) -> torch.optim.AdamW:
        """``torch.optim.AdamW`` over ``params`` (parameters, or param groups whose own ``weight_decay``
        takes precedence) with these settings.

        Args:
            params: what ``torch.optim.AdamW`` takes.
            learning_rate: another peak learning rate (e.g. a discriminator's); default ``learning_rate``.
        """
        lr = self.learning_rate if learning_rate is None else learning_rate
        groups = [
            {**g, "params": [g["params"]] if isinstance(g["params"], torch.Tensor) else list(g["params"])}
            if isinstance(g, dict)
            else g
            for g in ([params] if isinstance(params, torch.Tensor) else params)
        ]
        params = groups
        fused = self.fused
        if fused is None:
            tensors = [t for g in groups for t in (g["params"] if isinstance(g, dict) else [g])]
            fused = bool(tensors) and all(
                t.device.type in ("cpu", "cuda") and t.is_floating_point() for t in tensors
            )
        return torch.optim.AdamW(
            params, lr=lr, betas=self.betas, weight_decay=self.weight_decay, fused=fused or None
        )

    def horizon(self, trainer: Any | None) -> int | None:
        """The cosine horizon T in optimiser steps: ``decay_steps``, else the trainer's total steps
        (``trainer.estimated_stepping_batches``: ``max_steps``, or max_epochs × batches per epoch); None for
        the constant schedule.

        Args:
            trainer: the Lightning ``Trainer`` fitting the module (None: not attached).

        Raises:
            ValueError: a cosine schedule without ``decay_steps`` and without a finite trainer horizon.
        """
        if self.lr_schedule == "constant":
            return None
        if self.decay_steps is not None:
            return self.decay_steps
        estimated = trainer.estimated_stepping_batches if trainer is not None else math.inf
        if not math.isfinite(estimated) or estimated <= 0:
            raise ValueError(
                "the cosine schedule needs a horizon: set model.optimizer.decay_steps, or trainer.max_steps "
                "(or trainer.max_epochs), or use model.optimizer.lr_schedule: constant"
            )
        return int(estimated)

    def scheduler(
        self, optimizer: torch.optim.Optimizer, total_steps: int | None
    ) -> torch.optim.lr_scheduler.LambdaLR:
        """The warm-up + cosine / constant ``LambdaLR`` for ``optimizer``; step it once per training batch.

        Args:
            optimizer: the optimiser whose learning rates it scales.
            total_steps: the horizon, as ``horizon`` gives it (None: constant after the warm-up).
        """
        return warmup_cosine(optimizer, self.warmup_steps, total_steps, self.min_lr_ratio)
