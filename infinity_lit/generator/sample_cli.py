"""``infinity-lit sample``: images for a prompt file from a trained generator checkpoint.

    infinity-lit sample --checkpoint runs/generator/openmoji64/version_0/checkpoints/last.ckpt \\
        --prompts prompts.txt --out samples/ [--cfg 4.0] [--tau 1.0] [--top_p 1.0] [--seed 0]

``--cfg`` and ``--tau`` take a number or a per-scale list (``--cfg [1,1,2,3,3]``). The prompt file holds
one prompt per line (blank lines are skipped). ``--out`` receives ``00000.png``, ``00001.png``, … (RGB,
uint8) and ``metadata.jsonl`` with one line per image: file, prompt, seed and the settings. Image i uses
seed ``seed + i``, so any single image can be reproduced alone.

``load_generator`` rebuilds the transformer, the frozen tokenizer and the text encoder from a generator
checkpoint without importing Lightning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from infinity_lit.tokenizer import BitwiseTokenizer, load_tokenizer

from .sampling import sample
from .text_encoders import TextEncoder, build_text_encoder
from .transformer import BitwiseTransformer, TransformerConfig


class LoadedGenerator(NamedTuple):
    """Everything ``sample`` needs, rebuilt from a generator checkpoint.

    Attributes:
        model: the ``BitwiseTransformer`` (eval mode, frozen).
        tokenizer: the frozen ``BitwiseTokenizer`` named by the checkpoint.
        text_encoder: the frozen text encoder named by the checkpoint.
        hparams: the checkpoint's hyper-parameters.
    """

    model: BitwiseTransformer
    tokenizer: BitwiseTokenizer
    text_encoder: TextEncoder
    hparams: dict[str, Any]


def load_generator(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    use_ema: bool = True,
    tokenizer_checkpoint: str | Path | None = None,
    text_encoder_path: str | Path | None = None,
) -> LoadedGenerator:
    """Rebuild a trained generator from a ``GeneratorModule`` checkpoint (no Lightning import).

    The checkpoint holds the transformer's weights; the tokenizer and the text encoder are loaded from
    the references in its hyper-parameters (overridable, e.g. after moving files).

    Args:
        path: a ``.ckpt`` from ``infinity-lit generator fit``.
        map_location: device of the returned modules.
        use_ema: prefer the EMA weights when the run used ``EMAWeightAveraging`` (else the raw ones).
        tokenizer_checkpoint: override of the tokenizer checkpoint path stored in the checkpoint.
        text_encoder_path: override of the text encoder path stored in the checkpoint.

    Raises:
        FileNotFoundError: no file at ``path`` (or at the tokenizer path).
        ValueError: not a generator checkpoint, or a tokenizer that does not fit the transformer.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no generator checkpoint at {str(path)!r}; pass the .ckpt written by 'infinity-lit generator fit' "
            "(e.g. runs/generator/<name>/version_<n>/checkpoints/last.ckpt)"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, Mapping) else None
    if not isinstance(hp, Mapping) or not isinstance(hp.get("transformer"), Mapping):
        raise ValueError(
            f"{str(path)!r} is not a generator checkpoint (no 'transformer' hyper-parameters); pass a checkpoint "
            "written by 'infinity-lit generator fit'"
        )
    hp = dict(hp)
    tokenizer = load_tokenizer(tokenizer_checkpoint or hp["tokenizer_checkpoint"], map_location=map_location)
    text_encoder = build_text_encoder(
        hp.get("text_encoder", "minilm"),
        text_encoder_path if text_encoder_path is not None else hp.get("text_encoder_path"),
        hp.get("text_max_length", 64),
        cache=True,
    ).to(map_location)
    config = TransformerConfig(**dict(hp["transformer"]))
    config = config.complete(tokenizer.codebook_dim, tokenizer.scale_schedule, text_encoder.dim)
    model = BitwiseTransformer(config)
    state = ckpt["state_dict"]
    if not use_ema and "current_model_state" in ckpt:
        state = ckpt["current_model_state"]
    prefix = "transformer."
    model.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    model.to(map_location).eval().requires_grad_(False)
    return LoadedGenerator(model, tokenizer, text_encoder, hp)


def read_prompts(path: str | Path) -> list[str]:
    """Non-blank lines of a UTF-8 text file, stripped.

    Raises:
        FileNotFoundError / ValueError: missing or empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prompt file at {str(path)!r}; pass a text file with one prompt per line")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{str(path)!r} holds no prompts; write one prompt per line")
    return prompts


def sample_to_folder(
    checkpoint: str,
    prompts: str,
    out: str,
    cfg: float | list[float] = 4.0,
    tau: float | list[float] = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    device: str = "cpu",
    use_ema: bool = True,
    tokenizer_checkpoint: str | None = None,
) -> Path:
    """Sample one image per prompt and write PNGs plus ``metadata.jsonl``.

    Args:
        checkpoint: generator ``.ckpt``.
        prompts: text file, one prompt per line.
        out: output directory (created).
        cfg: guidance scale, a number or one per scale (1 = no unconditional pass).
        tau: temperature, a number or one per scale.
        top_p: nucleus mass in (0, 1] (1 = off).
        seed: image i uses seed + i.
        batch_size: prompts per forward pass (does not change the images).
        device: torch device, e.g. ``cpu`` or ``cuda``.
        use_ema: use the EMA weights when the checkpoint has them.
        tokenizer_checkpoint: override of the tokenizer path stored in the checkpoint.

    Returns:
        the output directory.
    """
    from PIL import Image

    gen = load_generator(checkpoint, device, use_ema=use_ema, tokenizer_checkpoint=tokenizer_checkpoint)
    texts = read_prompts(prompts)
    result = sample(
        gen.model,
        gen.tokenizer,
        gen.text_encoder,
        texts,
        cfg=cfg,
        tau=tau,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
    )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = ((result.images.cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # [-1,1] → uint8
    with open(out_dir / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for i, (prompt, image_seed) in enumerate(zip(texts, result.seeds)):
            name = f"{i:05d}.png"
            Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(out_dir / name)
            record = {
                "file": name,
                "prompt": prompt,
                "seed": image_seed,
                "cfg": cfg,
                "tau": tau,
                "top_p": top_p,
                "checkpoint": str(checkpoint),
            }
            meta.write(json.dumps(record) + "\n")
    return out_dir


def main(argv: list[str] | None = None) -> Path:
    """``infinity-lit sample …``: parse ``argv`` (jsonargparse, from ``sample_to_folder``'s signature)."""
    from jsonargparse import CLI

    return CLI(sample_to_folder, args=argv, as_positional=False)


if __name__ == "__main__":
    main()
