"""Compute precision: which dtype is fast here, for training (``default_training_precision``: the
``trainer.precision`` a fit gets when its config names none) and for the inference paths (sampling,
decoding; weights cast once).

Three settings, for ``generator.sample(precision=…)`` and ``infinity-lit eval sample --precision``:

- ``auto`` (default): ``bf16`` where this device runs bf16 matrix products fast (a CUDA device with bf16, a
  CPU with AMX tiles), ``fp32`` elsewhere. (Channels-last fp32 convolutions were measured level with the
  contiguous ones on a CPU without AMX, and the per-call weight reorder cost more than it saved on small
  images, so fp32 stays contiguous.)
- ``bf16``: bf16 autocast, convolutions in channels-last layout (on a CPU without AMX it runs, but slower
  than fp32: measured there, a 4096² bf16 GEMM reached 150 GFLOP/s on 2 cores against 281 in fp32;
  ``benchmarks/README.md``).
- ``fp32``: the plain fp32 path, contiguous layout: the reference the fast paths are checked against.

The bf16 path is autocast with the matrix weights (``nn.Linear``, ``nn.Conv2d``) cast to bf16 once on
entry, instead of again at every call as autocast does for weights that need no gradient: the numbers are
autocast's own, and norms, embeddings and the quantizer stay fp32 (the quantizer also turns autocast off
itself). The weights are restored on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Literal

import torch
from torch import nn

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS = ("auto", "bf16", "fp32")


def bf16_is_fast(device: torch.device | str) -> bool:
    """True where bf16 matrix products beat fp32: CUDA with bf16 support, or a CPU with AMX bf16 tiles."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        caps = getattr(torch.cpu, "get_capabilities", None)
        if caps is not None:
            return bool(caps().get("amx_bf16", False))
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(amx()) if amx is not None else False
    return False


#: Lightning ``trainer.precision`` values of the two training paths.
TRAINING_BF16, TRAINING_FP32 = "bf16-mixed", "32-true"


def default_training_precision(accelerator: str = "auto") -> str:
    """The ``trainer.precision`` a fit gets when its config names none: ``"bf16-mixed"`` where bf16 is fast
    (``bf16_is_fast``) on the device ``accelerator`` trains on, ``"32-true"`` elsewhere.

    ``accelerator`` is Lightning's ``trainer.accelerator``: ``"auto"`` (and ``"gpu"`` / ``"cuda"``) stand for
    a CUDA device when one is available, else the CPU; anything else for the CPU. Measured on an idle 2-core
    CPU without AMX, a bf16-mixed training step of the OpenMoji 64² tokenizer took 1.3× as long as in fp32
    (0.53 against 0.40 s; 4× once while another job shared the cores; ``benchmarks/README.md``), so there
    the default is fp32. Name ``trainer.precision`` in a config to pin
    the arithmetic on every machine.
    """
    cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return TRAINING_BF16 if bf16_is_fast("cuda" if cuda else "cpu") else TRAINING_FP32


def training_precision_of(trainer: dict | None) -> str:
    """The ``trainer.precision`` a fit of the stacked ``trainer`` settings (plain data: a config's
    ``trainer`` section, or None) trains in: the one it names, else ``default_training_precision`` of its
    accelerator. For records and keys that must tell runs in different arithmetic apart."""
    trainer = trainer or {}
    named = trainer.get("precision")
    if named is not None:
        return str(named)
    return default_training_precision(str(trainer.get("accelerator") or "auto"))


def resolve_precision(precision: str, device: torch.device | str) -> tuple[torch.dtype, bool]:
    """``precision`` on ``device`` → (compute dtype, channels-last convolutions).

    Raises:
        ValueError: not one of ``auto``, ``bf16``, ``fp32``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return torch.float32, False
    if precision == "bf16" or bf16_is_fast(device):
        return torch.bfloat16, True
    return torch.float32, False


def describe_precision(precision: str, device: torch.device | str) -> str:
    """What ``precision`` runs as on ``device``, for records: ``bf16`` / ``fp32``, ``+channels_last``."""
    dtype, channels_last = resolve_precision(precision, device)
    return ("bf16" if dtype == torch.bfloat16 else "fp32") + ("+channels_last" if channels_last else "")


@contextlib.contextmanager
def inference_precision(
    modules: Iterable[nn.Module], precision: str = "auto", device: torch.device | str = "cpu"
) -> Iterator[torch.dtype]:
    """Run the enclosed inference in ``precision`` (see the module docstring); yields the compute dtype.

    On entry the weights of every ``nn.Linear`` / ``nn.Conv2d`` in ``modules`` are cast once to the compute
    dtype (convolution weights in channels-last layout), and bf16 autocast is entered for bf16; on exit the
    original tensors are put back. For inference only (no gradients flow to the cast copies).

    Raises:
        ValueError: an unknown precision.
    """
    dtype, channels_last = resolve_precision(precision, device)
    saved: list[tuple[nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for module in modules:
                for layer in module.modules():
                    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
                        continue
                    conv = isinstance(layer, nn.Conv2d)
                    for p in (layer.weight, layer.bias):
                        if p is None or not p.is_floating_point():
                            continue
                        fmt = torch.channels_last if conv and channels_last and p.dim() == 4 else None
                        if p.dtype == dtype and (fmt is None or p.is_contiguous(memory_format=fmt)):
                            continue  # already cast (e.g. by an enclosing ``inference_precision``)
                        saved.append((p, p.data))
                        cast = p.data.to(dtype)
                        p.data = cast.contiguous(memory_format=fmt) if fmt is not None else cast
        if dtype == torch.float32:
            yield dtype
        else:
            device_type = torch.device(device).type
            with torch.autocast(device_type, dtype=dtype):
                yield dtype
    finally:
        for p, data in reversed(saved):
            p.data = data
