"""Sampling to a folder: prompts → ``NNNNNN.png`` files + ``metadata.jsonl``, resumable.

The generator is reached through one callable, ``sample_fn(prompts, seeds) -> images``, images
(B, 3, H, W) float in [-1, 1] (saved as uint8 [0, 255] PNGs through ``to_uint8``), so this module does
not depend on how a generator is built; ``eval sample`` wraps ``infinity_lit.generator.sampling.sample``
in it.

Reproducibility: image i is sampled with seed ``seed + i`` (the generator's convention: each image draws
from its own ``torch.Generator``, so it depends on its prompt, its seed and the settings, not on the
batch it was sampled in). Resuming: images whose PNG and metadata line both exist are not regenerated;
the missing ones are sampled with their own seeds, so a resumed folder equals an uninterrupted one. A
folder whose existing settings differ from the requested ones is refused rather than mixed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from .images import METADATA, read_metadata, write_png
from .reconstruction import to_uint8

#: ``sample_fn(prompts, seeds)`` → (B, 3, H, W) float in [-1, 1], B = len(prompts) = len(seeds).
SampleFn = Callable[[list[str], list[int]], Tensor]


def image_name(index: int) -> str:
    return f"{index:06d}.png"


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: ``.txt`` one per line (blank lines and lines starting with ``#`` skipped),
    ``.jsonl`` objects with a ``prompt`` (or ``caption``) field, or ``.json`` a list of strings.

    Raises:
        FileNotFoundError: no such file. ValueError: unknown format or no prompts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        prompts = json.loads(text)
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{path}: a .json prompts file must hold a list of strings")
    elif path.suffix == ".jsonl":
        prompts = []
        for line in text.splitlines():
            if line.strip():
                rec = json.loads(line)
                prompts.append(rec.get("prompt", rec.get("caption")))
        if any(p is None for p in prompts):
            raise ValueError(f"{path}: every .jsonl line needs a 'prompt' (or 'caption') field")
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def _settings_conflict(existing: list[dict], settings: Mapping[str, Any]) -> str | None:
    for rec in existing:
        for key, value in settings.items():
            if key in rec and rec[key] != value:
                return f"{key}: folder has {rec[key]!r}, requested {value!r}"
    return None


def sample_to_folder(
    sample_fn: SampleFn,
    prompts: Sequence[str],
    out_dir: str | Path,
    seed: int = 0,
    batch_size: int = 8,
    settings: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Sample one image per prompt into ``out_dir`` (resumable).

    Args:
        sample_fn: (prompts, seeds) → (B, 3, H, W) float in [-1, 1].
        prompts: the prompts; image i is for prompt i, with seed ``seed + i``.
        out_dir: the sample folder (created).
        seed: run seed.
        batch_size: images per ``sample_fn`` call (does not change the images).
        settings: sampling settings recorded on every metadata line (checkpoint, cfg, tau, ...).
        progress: show a tqdm bar.

    Returns:
        {"written": n, "skipped": n already present, "total": len(prompts)}.

    Raises:
        ValueError: no prompts, a result of the wrong shape, or a folder sampled with other settings.
    """
    from tqdm import tqdm

    if not prompts:
        raise ValueError("no prompts to sample")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_settings = {**dict(settings or {}), "seed": int(seed)}
    existing = read_metadata(out_dir)
    conflict = _settings_conflict(existing, record_settings)
    if conflict:
        raise ValueError(
            f"{out_dir} already holds samples made with other settings ({conflict}); use a new output folder"
        )
    done: set[int] = set()
    for rec in existing:
        i = rec.get("index")
        if (
            not isinstance(i, int)
            or not 0 <= i < len(prompts)
            or not (out_dir / rec.get("file", "")).is_file()
        ):
            continue
        if rec.get("prompt") != prompts[i]:
            raise ValueError(
                f"{out_dir} holds image {i} for prompt {rec.get('prompt')!r}, but prompt {i} is now "
                f"{prompts[i]!r}; use a new output folder"
            )
        done.add(i)
    missing = [i for i in range(len(prompts)) if i not in done]
    written = 0
    with (
        tqdm(total=len(prompts), initial=len(done), desc="sampling", unit="img", disable=not progress) as bar,
        open(out_dir / METADATA, "a", encoding="utf-8") as meta,
    ):
        for start in range(0, len(missing), batch_size):
            indices = missing[start : start + batch_size]
            images = sample_fn([prompts[i] for i in indices], [seed + i for i in indices])
            if images.dim() != 4 or images.shape[0] != len(indices) or images.shape[1] != 3:
                raise ValueError(
                    f"sample_fn returned shape {tuple(images.shape)} for {len(indices)} prompts; expected "
                    f"({len(indices)}, 3, H, W) float in [-1, 1]"
                )
            pixels = to_uint8(images.detach().cpu())  # [-1, 1] → uint8 [0, 255]
            for j, i in enumerate(indices):
                write_png(pixels[j], out_dir / image_name(i))
                rec = {
                    "file": image_name(i),
                    "index": i,
                    "prompt": prompts[i],
                    "image_seed": seed + i,
                    **record_settings,
                }
                meta.write(json.dumps(rec, ensure_ascii=False) + "\n")
                meta.flush()
                written += 1
                bar.update(1)
    return {"written": written, "skipped": len(prompts) - written, "total": len(prompts)}
