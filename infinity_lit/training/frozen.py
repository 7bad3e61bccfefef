"""Frozen stages saved by reference: one mechanism for every LightningModule that holds pre-trained,
never-trained sub-modules (the tokenizer's LPIPS network; the generator's tokenizer and text encoder).

A module lists them by attribute name in ``frozen_stages`` and builds them from paths in its own
hyper-parameters. ``FrozenStages`` then keeps them frozen in the open, and out of the checkpoint:

- ``freeze_stages()`` (call it once they are built; it runs again at each training epoch start, after
  Lightning has put the whole module in train mode): ``.eval()`` and ``requires_grad_(False)``.
- ``state_dict()`` leaves their entries out. Lightning's checkpoint ``state_dict`` comes from it, and so does
  ``EMAWeightAveraging``'s averaged copy (a deep copy of the module). The raw ``current_model_state``
  that this callback keeps is the module's ``state_dict`` too, so no checkpoint holds them.
- ``load_state_dict()`` and ``on_load_checkpoint`` put the module's own frozen weights back before anything
  is loaded (the second for loaders that go around ``load_state_dict``, such as the EMA callback's
  averaged copy on resume). Frozen weights stored in a checkpoint are ignored: the reference wins.

Frozen sub-modules are not given to the optimiser; that stays the module's job (it builds its optimisers
from the trainable sub-modules).

Under FSDP (``experiments/trainer/fsdp.yaml``) the frozen stages stay out of the sharded units: ``setup``
adds them to the strategy's ``ignored_states``, so every rank holds them whole, on its device. They have
nothing to reduce or to save. Sharded, they would cost an all-gather at every step, break the checkpoint
(FSDP expects each of its parameters in the state dict, which ``state_dict()`` leaves them out of), and
break every use outside a forward of the wrapped model (``tokenizer.decode`` while sampling).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor, nn


class FrozenStages:
    """Mixin for a ``LightningModule`` (list it first: ``class M(FrozenStages, pl.LightningModule)``).

    Attributes:
        frozen_stages: names of the sub-modules that are frozen and saved by reference. An attribute set
            to None (a stage that is switched off) is skipped.
    """

    frozen_stages: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ freezing
    def frozen_modules(self) -> dict[str, nn.Module]:
        """The frozen sub-modules that exist, by name.

        Raises:
            AttributeError: a name in ``frozen_stages`` that is not an attribute of the module.
            TypeError: a name that is neither an ``nn.Module`` nor None.
        """
        out = {}
        for name in self.frozen_stages:
            if not hasattr(self, name):
                raise AttributeError(
                    f"{type(self).__name__}.frozen_stages names {name!r}, which is not an attribute; build "
                    "the sub-module before freeze_stages() or remove the name"
                )
            module = getattr(self, name)
            if module is None:
                continue
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"{type(self).__name__}.{name} is listed in frozen_stages but is a {type(module).__name__}, "
                    "not an nn.Module"
                )
            out[name] = module
        return out

    def freeze_stages(self) -> None:
        """Put every frozen stage in eval mode with ``requires_grad`` False."""
        for module in self.frozen_modules().values():
            module.eval().requires_grad_(False)

    def setup(self, stage: str) -> None:
        """Keep the frozen stages out of FSDP's sharded units (see the module docstring); a subclass that
        overrides ``setup`` calls this first. Lightning calls it before the strategy wraps the model."""
        trainer = getattr(self, "_trainer", None)
        strategy = trainer.strategy if trainer is not None else None
        if isinstance(strategy, FSDPStrategy):
            self._exclude_from_fsdp(strategy)
        super().setup(stage)

    def _exclude_from_fsdp(self, strategy: FSDPStrategy) -> None:
        # FSDP takes either ignored_modules or ignored_states; add to whichever the strategy was given.
        key = "ignored_modules" if "ignored_modules" in strategy.kwargs else "ignored_states"
        ignored = list(strategy.kwargs.get(key) or [])
        for module in self.frozen_modules().values():
            if not any(module is m for m in ignored):
                ignored.append(module)
            # FSDP moves only what it manages to the device.
            module.to(strategy.root_device)
        strategy.kwargs[key] = ignored

    def on_train_epoch_start(self) -> None:
        # Lightning puts the whole module in train mode when fitting starts; the frozen stages go back to
        # eval (dropout in a text encoder would make its features random).
        self.freeze_stages()
        super().on_train_epoch_start()

    # ------------------------------------------------------------------ checkpoints
    def frozen_state(self, prefix: str = "") -> dict[str, Tensor]:
        """The frozen stages' current weights, keyed as in the module's full state dict (``prefix`` first)."""
        out = {}
        for name, module in self.frozen_modules().items():
            out.update({f"{prefix}{name}.{k}": v for k, v in module.state_dict().items()})
        return out

    def _is_frozen_key(self, key: str, prefix: str = "") -> bool:
        return key.startswith(tuple(f"{prefix}{name}." for name in self.frozen_stages))

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The module's state without the frozen stages (``nn.Module.state_dict`` arguments)."""
        state = super().state_dict(*args, **kwargs)
        # nn.Module.state_dict(destination, prefix, keep_vars): the prefix is set when this module is a child
        # of another one (EMAWeightAveraging's AveragedModel calls it with prefix "module.").
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for key in [k for k in state if self._is_frozen_key(k, prefix)]:
            del state[key]
        return state

    def _with_frozen(self, state: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in state.items() if not self._is_frozen_key(k)}
        out.update(self.frozen_state())
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load the trainable state; the frozen stages keep the weights they were built with."""
        return super().load_state_dict(self._with_frozen(state_dict), strict=strict, assign=assign)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for key in ("state_dict", "current_model_state"):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint[key] = self._with_frozen(checkpoint[key])
        super().on_load_checkpoint(checkpoint)
