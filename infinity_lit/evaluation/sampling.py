"""Sampling to a folder: prompts → ``NNNNNN.png`` files + ``metadata.jsonl``, resumable.

The generator is reached through one callable, ``sample_fn(prompts, seeds) -> images``, images
(B, 3, H, W) float in [-1, 1] (saved as uint8 [0, 255] PNGs through ``to_uint8``), so ``sample_to_folder`` does
not depend on how a generator is built; ``sample_checkpoint`` (``infinity-lit eval sample``) wraps
``infinity_lit.generator.sampling.sample`` of a loaded checkpoint in it.

Reproducibility: image i is sampled with seed ``seed + i`` (the generator's convention: each image draws
from its own ``torch.Generator``, so it depends on its prompt, its seed and the settings, not on the
batch it was sampled in). Resuming: images whose PNG and metadata line both exist are not regenerated;
the missing ones are sampled with their own seeds, so a resumed folder equals an uninterrupted one. A
folder whose existing settings differ from the requested ones is refused rather than mixed.

Several processes (``torchrun --nproc_per_node N -m infinity_lit.cli eval sample …``, see
``infinity_lit.evaluation.ranks``): the missing images are dealt out to the ranks in turn, image i still
with seed ``seed + i``, so the folder equals a one-process one; each rank records its images in a file of its own, merged into
``metadata.jsonl`` (in image order) by rank 0 at the end or on the next start.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from infinity_lit.metrics.reconstruction import to_uint8

from .images import METADATA, read_metadata, write_png
from .ranks import ranks

#: ``sample_fn(prompts, seeds)`` → (B, 3, H, W) float in [-1, 1], B = len(prompts) = len(seeds).
SampleFn = Callable[[list[str], list[int]], Tensor]


def image_name(index: int) -> str:
    return f"{index:06d}.png"


def _prompt_line(line: str) -> str | None:
    """One line of a ``.txt`` prompts file → its prompt, or None for a blank or comment line."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith(("\\#", "\\\\")):  # "\#…" is the prompt "#…", "\\…" the prompt "\…"
        text = text[1:]
    return text


def read_prompts(path: str | Path) -> list[str]:
    r"""Prompts from a file, in file order, by suffix.

    ``.txt`` (or any other suffix): UTF-8 text (a leading byte-order mark is ignored), one prompt per line,
    surrounding whitespace stripped. Blank lines are ignored; a line whose first non-blank character is
    ``#`` is a comment. To start a prompt with ``#``, escape it with a backslash: ``\#1 on the chart`` is
    the prompt ``#1 on the chart``, and ``\\#`` gives ``\#`` (a leading ``\\`` stands for one
    backslash; a backslash anywhere else is kept as is). ``#`` after the start of a line is part of the
    prompt.

    ``.jsonl``: one JSON object per non-blank line with a ``prompt`` (or ``caption``) string.
    ``.json``: a list of strings. Prompts from JSON files are taken exactly (no stripping, no comments).

    Returns:
        The prompts (non-empty list of str).

    Raises:
        FileNotFoundError: no such file. ValueError: the file is not UTF-8, a JSON line lacks its field, or
            the file holds no prompts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: prompts files must be UTF-8 text ({exc})") from exc
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
        prompts = [p for p in map(_prompt_line, text.splitlines()) if p is not None]
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


#: Settings that say where a file was read, not what it held: its content is compared instead (the weights
#: digests; each image's own prompt), so a folder sampled from files that were moved (or named by another
#: path) resumes.
_LOCATIONS = ("checkpoint", "tokenizer_checkpoint", "prompts")


#: ``explain(setting, folder's value, requested value)`` → (what differs, what to do) for the refusal of a
#: folder sampled with other settings, or None for the plain wording.
ConflictExplainer = Callable[[str, Any, Any], tuple[str, str] | None]


def _settings_conflict(existing: list[dict], settings: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first setting recorded in ``existing`` with another value than in ``settings``: (key, the folder's
    value, the requested value), or None."""
    for rec in existing:
        for key, value in settings.items():
            if key in rec and key not in _LOCATIONS and rec[key] != value:
                return key, rec[key], value
    return None


def sample_to_folder(
    sample_fn: SampleFn,
    prompts: Sequence[str],
    out_dir: str | Path,
    seed: int = 0,
    batch_size: int = 8,
    settings: Mapping[str, Any] | None = None,
    progress: bool = True,
    explain_conflict: ConflictExplainer | None = None,
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
        explain_conflict: words the refusal of a folder sampled with other settings: called with (setting,
            the folder's value, the requested value), returns (what differs, what to do), or None for
            "SETTING: folder has X, requested Y" and "use a new output folder".

    Returns:
        {"written": n, "skipped": n already present, "total": len(prompts)}.

    Raises:
        ValueError: no prompts, a result of the wrong shape, a folder sampled with other settings, or one
            holding images for more prompts than given.
    """
    from tqdm import tqdm

    if not prompts:
        raise ValueError("no prompts to sample")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    group = ranks()
    if group.main:
        merge_rank_metadata(out_dir)  # what an interrupted multi-process run left per rank
    group.barrier()
    record_settings = {**dict(settings or {}), "seed": int(seed)}
    existing = read_metadata(out_dir)
    conflict = _settings_conflict(existing, record_settings)
    if conflict:
        key, found, wanted = conflict
        explained = explain_conflict(key, found, wanted) if explain_conflict is not None else None
        what, advice = explained or (
            f"{key}: folder has {found!r}, requested {wanted!r}",
            "use a new output folder",
        )
        raise ValueError(f"{out_dir} already holds samples made with other settings ({what}); {advice}")
    beyond = sorted(
        {
            rec["index"]
            for rec in existing
            if isinstance(rec.get("index"), int)
            and rec["index"] >= len(prompts)
            and (out_dir / rec.get("file", "")).is_file()
        }
    )
    if beyond:
        raise ValueError(
            f"{out_dir} already holds {len(beyond)} more images than the {len(prompts)} asked for (images "
            f"{beyond[0]}…{beyond[-1]}), which scoring the folder would count; use a new output folder"
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
    # Several processes: each samples its share and records it in its own metadata file, merged below.
    missing = group.share([i for i in range(len(prompts)) if i not in done])
    meta_path = out_dir / (METADATA if group.world_size == 1 else rank_metadata_name(group.rank))
    written = 0
    with (
        tqdm(
            total=len(done) + len(missing),
            initial=len(done),
            desc="sampling" if group.world_size == 1 else f"sampling (rank 0 of {group.world_size})",
            unit="img",
            disable=not progress or not group.main,
        ) as bar,
        open(meta_path, "a", encoding="utf-8") as meta,
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
    if group.world_size > 1:
        group.barrier()
        if group.main:
            merge_rank_metadata(out_dir)
        written = sum(group.gather(written))
        group.barrier()
    return {"written": written, "skipped": len(prompts) - written, "total": len(prompts)}


#: Per-rank metadata files of a multi-process ``sample_to_folder`` (``rank_metadata_name``).
RANK_METADATA_GLOB = ".metadata.rank*.jsonl"


def rank_metadata_name(rank: int) -> str:
    """File in which rank ``rank`` of a multi-process ``sample_to_folder`` records its images."""
    return RANK_METADATA_GLOB.replace("*", str(rank))


def merge_rank_metadata(out_dir: Path) -> int:
    """Append the per-rank metadata files of ``out_dir`` to its ``metadata.jsonl`` in image order (an
    image already recorded there is not repeated) and delete them. Returns the number of records added."""
    parts = sorted(out_dir.glob(RANK_METADATA_GLOB))
    if not parts:
        return 0
    known = {rec.get("index") for rec in read_metadata(out_dir)}
    records = []
    for part in parts:
        with open(part, encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    unique = {r.get("index"): r for r in records if r.get("index") not in known}
    records = sorted(unique.values(), key=lambda r: (r.get("index", -1), r["file"]))
    with open(out_dir / METADATA, "a", encoding="utf-8") as meta:
        for rec in records:
            meta.write(json.dumps(rec, ensure_ascii=False) + "\n")
    for part in parts:
        part.unlink()
    return len(records)


def sample_checkpoint(
    checkpoint: Path,
    out: Path,
    prompts: Path | None = None,
    captions_from: Path | None = None,
    split: str = "val",
    num_images: int | None = None,
    seed: int = 0,
    cfg: float | list[float] = 4.0,
    tau: float | list[float] = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    device: str = "cpu",
    use_ema: bool = True,
    tokenizer_checkpoint: Path | None = None,
    aspect_ratio: float | None = None,
    precision: Literal["auto", "bf16", "fp32"] = "auto",
) -> dict[str, int]:
    """Sample images for prompts with a trained generator into a folder of PNGs + metadata.jsonl.

    Args:
        checkpoint: generator checkpoint (.ckpt from 'infinity-lit generator fit'), or its run folder
            (``runs/generator/<name>``: its checkpoints/last.ckpt).
        out: sample folder to write (resumed if it exists with the same settings).
        prompts: prompts file: .txt UTF-8, one prompt per line, blank lines ignored, lines starting with
            '#' are comments, '\\#' starts a prompt with '#'; or .jsonl objects with "prompt"; or a .json
            list of strings (see read_prompts).
        captions_from: instead of a prompts file, a shard directory whose captions are the prompts.
        split: shard split of captions_from.
        num_images: at most this many prompts, >= 1 (default: all).
        seed: run seed; image i uses seed + i.
        cfg: classifier-free guidance scale, one value or one per scale (1 skips the unconditional pass;
            reference 4 for evaluation).
        tau: sampling temperature τ > 0, one value or one per scale (reference 1).
        top_p: nucleus mass over the two bit values, in (0, 1] (1 keeps both).
        batch_size: images per sampling call (does not change the images).
        device: where the generator runs.
        use_ema: prefer EMA weights in the checkpoint.
        tokenizer_checkpoint: override of the tokenizer path stored in the generator checkpoint (a .ckpt
            or a run folder).
        aspect_ratio: sample at this aspect ratio h/w, one of the method's templates the generator was
            trained on (``data folder --aspect_ratios``; e.g. 2.0 gives images twice as high as wide);
            default: the generator's own (square) schedule.
        precision: ``auto``: bf16 (weights cast once for the folder, channels-last decoder convolutions)
            where the device runs bf16 fast (CUDA, a CPU with AMX), else fp32; ``bf16``; ``fp32``: the plain
            reference path (``infinity_lit.precision``). What it ran as is recorded in metadata.jsonl
            (``precision``), so a folder is not resumed in another one.

    Returns:
        {"written": n, "skipped": n already present, "total": number of prompts}.

    Raises:
        ValueError: neither or both of ``prompts`` / ``captions_from``, ``num_images`` < 1, a folder sampled
            with other settings (another precision: the message names the precision as requested, what it
            runs as on ``device`` and the ``--precision`` that finishes the folder), or an aspect ratio that
            is no template (the message names the nearest) or that the generator was not trained on (the
            message lists those it was).
        FileNotFoundError: no checkpoint (or run folder with a ``checkpoints/last.ckpt``) at ``checkpoint``.
    """
    import torch

    from infinity_lit.generator.checkpoint import load_generator
    from infinity_lit.generator.sampling import check_trained
    from infinity_lit.generator.sampling import sample as generate
    from infinity_lit.precision import describe_precision, inference_precision
    from infinity_lit.runs import resolve_checkpoint

    if (prompts is None) == (captions_from is None):
        raise ValueError("give exactly one of --prompts FILE or --captions_from SHARD_DIR")
    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}; leave it unset for all prompts")
    checkpoint = resolve_checkpoint(checkpoint)  # a run folder stands for its checkpoints/last.ckpt
    if tokenizer_checkpoint is not None:
        tokenizer_checkpoint = resolve_checkpoint(tokenizer_checkpoint)
    if prompts is not None:
        texts = read_prompts(prompts)
        source = str(Path(prompts).resolve())  # the file that was read, wherever the command ran
    else:
        from infinity_lit.data.shards import iter_samples

        texts = [caption for _, _, caption in iter_samples(captions_from, split)]
        source = f"{Path(captions_from).resolve()} ({split} captions)"
    texts = texts[:num_images] if num_images is not None else texts
    device = ranks().device(device)  # several processes on one machine: one GPU each
    gen = load_generator(checkpoint, device, use_ema=use_ema, tokenizer_checkpoint=tokenizer_checkpoint)
    schedule = None
    if aspect_ratio is not None:  # refused here, before a folder is made, if the generator cannot sample it
        schedule = gen.tokenizer.schedule_for_aspect_ratio(aspect_ratio)
        check_trained(gen.model, schedule)

    def sample_fn(batch_prompts: list[str], seeds: list[int]) -> torch.Tensor:
        return generate(
            gen.model,
            gen.tokenizer,
            gen.text_encoder,
            batch_prompts,
            cfg=cfg,
            tau=tau,
            top_p=top_p,
            seed=seeds,
            schedule=schedule,
            precision=precision,
        ).images

    settings = {
        # The files that were read (absolute), not the paths as given or as the generator recorded them, and
        # what the weights are: a file replaced by another model is refused.
        "checkpoint": gen.identity["path"],
        "checkpoint_step": gen.identity["step"],
        "generator_weights_sha256": gen.identity["weights_sha256"],
        "tokenizer_checkpoint": gen.tokenizer_identity["path"],
        "tokenizer_weights_sha256": gen.tokenizer_identity["weights_sha256"],
        "use_ema": use_ema,
        "cfg": cfg,
        "tau": tau,
        "top_p": top_p,
        "aspect_ratio": aspect_ratio,
        "precision": describe_precision(precision, device),
        "prompts": source,
    }

    def explain_conflict(key: str, found: Any, wanted: Any) -> tuple[str, str] | None:
        if key != "precision":
            return None
        return precision_conflict(found, precision, str(device))

    # The weights are cast once for the whole folder (``sample`` finds them cast and casts nothing per batch).
    with inference_precision([gen.model, gen.tokenizer.decoder], precision, device):
        return sample_to_folder(
            sample_fn,
            texts,
            out,
            seed=seed,
            batch_size=batch_size,
            settings=settings,
            explain_conflict=explain_conflict,
        )


def precision_conflict(found: Any, requested: str, device: str) -> tuple[str, str]:
    """Why a sample folder whose images ran as ``found`` (its metadata's ``precision``, e.g.
    ``bf16+channels_last``) is not finished with ``--precision requested`` on ``device``, and what to do:
    (what differs, what to do), for ``sample_to_folder``'s refusal. The request is named as given, with what
    it runs as on ``device`` when that is not the same word (``auto``, ``bf16`` → ``bf16+channels_last``).

    Raises:
        ValueError: ``requested`` is no precision (``infinity_lit.precision.resolve_precision``).
    """
    from infinity_lit.precision import PRECISIONS, describe_precision

    runs_as = describe_precision(requested, device)
    asked = (
        repr(requested)
        if runs_as == requested
        else f"{requested!r}, which runs as {runs_as!r} on {device} here"
    )
    # What the folder's value was asked as: "bf16+channels_last" was --precision bf16 (on any device).
    finish = found.partition("+")[0] if isinstance(found, str) else None
    advice = "choose another --out"
    if finish in PRECISIONS and finish != "auto":
        advice = f"pass --precision {finish} to finish it, or {advice}"
    return f"precision: folder has {found!r}, requested {asked}", advice
