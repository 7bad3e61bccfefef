"""Loading a trained generator: ``load_generator`` rebuilds the transformer, the frozen tokenizer and the
text encoder from a ``GeneratorModule`` checkpoint without importing Lightning.

The checkpoint holds the transformer's weights (EMA and raw when the run averaged them); the tokenizer and
the text encoder are named by reference in its hyper-parameters and loaded from there (or from overrides).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from infinity_lit.checkpoints import GENERATOR, TOKENIZER, TRAINED_SCHEDULES, locate_frozen, read_checkpoint
from infinity_lit.tokenizer import BitwiseTokenizer, load_tokenizer

from .text_encoders import TextEncoder, build_text_encoder
from .transformer import BitwiseTransformer, TransformerConfig


class LoadedGenerator(NamedTuple):
    """Everything ``sample`` needs, rebuilt from a generator checkpoint.

    Attributes:
        model: the ``BitwiseTransformer`` (eval mode, frozen).
        tokenizer: the frozen ``BitwiseTokenizer`` named by the checkpoint.
        text_encoder: the frozen text encoder named by the checkpoint.
        hparams: the checkpoint's hyper-parameters.
        identity: path, step and weights digest of the generator (``Checkpoint.identity``).
        tokenizer_identity: the same for the tokenizer that was loaded.
    """

    model: BitwiseTransformer
    tokenizer: BitwiseTokenizer
    text_encoder: TextEncoder
    hparams: dict[str, Any]
    identity: dict[str, Any]
    tokenizer_identity: dict[str, Any]


def load_generator(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    use_ema: bool = True,
    tokenizer_checkpoint: str | Path | None = None,
    text_encoder_path: str | Path | None = None,
) -> LoadedGenerator:
    """Rebuild a trained generator from a ``GeneratorModule`` checkpoint (no Lightning import).

    The model's ``trained_schedules`` are those the checkpoint records (``checkpoints.TRAINED_SCHEDULES``;
    its own schedule for a checkpoint from before they were recorded), so ``sample`` refuses other ones.
    The checkpoint (read by ``infinity_lit.checkpoints``: weights-only) holds the transformer's weights; the
    tokenizer and the text encoder are loaded from the references in it (overridable, e.g. after moving
    files). The tokenizer is looked for beside the checkpoint (the path recorded relative to its folder),
    at its absolute path, then at the hyper-parameter's path (``checkpoints.locate_frozen``), and must hold
    the weights the generator was trained on (their recorded digest).

    Args:
        path: a ``.ckpt`` from ``infinity-lit generator fit``, or its run folder (which stands for
            ``checkpoints/last.ckpt``).
        map_location: device of the returned modules.
        use_ema: prefer the EMA weights when the run used ``EMAWeightAveraging`` (else the raw ones).
        tokenizer_checkpoint: override of the tokenizer checkpoint path stored in the checkpoint.
        text_encoder_path: override of the text encoder path stored in the checkpoint.

    Raises:
        FileNotFoundError: no file at ``path``, or the tokenizer at none of its paths (the message names
            ``--tokenizer_checkpoint``).
        ValueError: (``infinity_lit.checkpoints.CheckpointError``) a truncated or corrupt file, not a
            generator checkpoint, a tokenizer file holding other weights than the generator was trained
            on, or a tokenizer that does not fit the transformer.
    """
    ckpt = read_checkpoint(path, GENERATOR)
    hp = ckpt.hyper_parameters
    tokenizer_source = locate_frozen(
        ckpt, "tokenizer", TOKENIZER, hp.get("tokenizer_checkpoint"), override=tokenizer_checkpoint
    )
    tokenizer = load_tokenizer(tokenizer_source, map_location=map_location)
    text_encoder = build_text_encoder(
        hp.get("text_encoder", "minilm"),
        text_encoder_path if text_encoder_path is not None else hp.get("text_encoder_path"),
        hp.get("text_max_length", 64),
        cache=True,
    ).to(map_location)
    config = TransformerConfig(**dict(hp["transformer"]))
    config = config.complete(tokenizer.codebook_dim, tokenizer.scale_schedule, text_encoder.dim)
    model = BitwiseTransformer(config)
    model.load_state_dict(ckpt.weights(use_ema=use_ema))
    # The schedules it was trained on (several for aspect-ratio buckets; before they were recorded: its own).
    recorded = ckpt.content.get(TRAINED_SCHEDULES) or [config.scale_schedule]
    model.trained_schedules = [[(int(h), int(w)) for h, w in t] for t in recorded]
    model.to(map_location).eval().requires_grad_(False)
    return LoadedGenerator(
        model, tokenizer, text_encoder, hp, ckpt.identity(use_ema=use_ema), tokenizer_source.identity()
    )
